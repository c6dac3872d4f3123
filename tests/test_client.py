"""goverse.client.Client against gates in front of a real cluster."""

from __future__ import annotations

import time
import uuid

import pytest
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse import errors
from goverse.client import Client
from goverse.testing import free_port, wait_until
from tests.gate_cluster import GateProcess, start_nodes, unpack


@pytest.fixture(scope="module")
def cluster(etcd_endpoint, tmp_path_factory):
    prefix = "/goverse-test/%s" % uuid.uuid4().hex
    logs = tmp_path_factory.mktemp("client-cluster")
    nodes = start_nodes(etcd_endpoint, prefix, 2, logs)
    gates = []
    try:
        for n in range(2):
            gates.append(GateProcess(etcd_endpoint, prefix=prefix,
                                     log_path=str(logs / ("gate-%d.log" % n))).start(False))
        for gate in gates:
            gate.wait_ready()
        yield nodes, gates
    finally:
        for proc in gates + nodes:
            proc.close()


@pytest.fixture
def gates(cluster):
    for gate in cluster[1]:
        if gate.process.poll() is not None:  # a test killed it: bring it back
            gate.start()
    return cluster[1]


@pytest.fixture
def client(gates):
    with Client([gates[0].address, gates[1].address], timeout=10) as client:
        yield client


def test_call_returns_any_or_the_given_message(client):
    packed = client.call("Counter", "cl-1", "Add", Int64Value(value=3))
    assert isinstance(packed, any_pb2.Any)
    assert unpack(packed, Int64Value).value == 3
    assert client.call("Counter", "cl-1", "Add", Int64Value(value=2), Int64Value).value == 5
    with pytest.raises(errors.WrongMessageType):
        client.call("Counter", "cl-1", "Add", Int64Value(value=0), StringValue)


def test_create_and_delete(client):
    assert client.create("Counter", "cl-c") == "cl-c"
    assert client.create("Counter").startswith("Counter-")
    client.call("Counter", "cl-c", "Add", Int64Value(value=5))
    client.delete("Counter", "cl-c")
    assert client.call("Counter", "cl-c", "Get", Int64Value(), Int64Value).value == 0


def test_errors_keep_their_goverse_class(client):
    with pytest.raises(errors.UnknownObjectType, match="NoSuchType"):
        client.call("NoSuchType", "x", "Add", Int64Value())
    with pytest.raises(errors.UnknownMethod):
        client.call("Counter", "cl-e", "Nope", Int64Value())
    with pytest.raises(errors.InvalidObjectId):
        client.call("Counter", "", "Add", Int64Value())
    with pytest.raises(errors.ObjectMethodError, match="on purpose"):
        client.call("Pusher", "cl-e", "Fail", StringValue(value="x"))
    client.create("Counter", "cl-typed")
    with pytest.raises(errors.ObjectTypeMismatch):
        client.delete("Slow", "cl-typed")
    with pytest.raises(errors.UnknownObjectType):
        client.create("NoSuchType", "cl-n")


def test_every_call_has_a_timeout(client):
    started = time.monotonic()
    object_id = "cl-slow-%d" % time.monotonic_ns()
    # Whichever deadline fires first, the gate's or the client's own, the
    # error names the call, not only gRPC's status.
    with pytest.raises(errors.CallTimeout, match=r"SlowStart\(%s\)\.IsReady" % (
            object_id,)):
        client.call("SlowStart", object_id, "IsReady", StringValue(), timeout=0.05)
    assert time.monotonic() - started < 2


def test_fails_over_to_the_next_gate_when_one_is_unreachable(gates):
    dead = "127.0.0.1:%d" % free_port()
    with Client([dead, gates[0].address], timeout=10) as client:
        assert client.call("Counter", "cl-f", "Add", Int64Value(value=1), Int64Value).value
        assert client.address == gates[0].address
        assert client.statistics["failovers"] == 1
        assert client.register().startswith(gates[0].address + "/")


def test_no_reachable_gate_is_peer_unavailable():
    addresses = ["127.0.0.1:%d" % free_port() for _ in range(2)]
    with Client(addresses, timeout=5) as client:
        with pytest.raises(errors.PeerUnavailable, match="no gate could be reached"):
            client.call("Counter", "x", "Add", Int64Value())
        with pytest.raises(errors.PeerUnavailable):
            client.register()


def test_register_with_messages_iterator(client, gates):
    client_id = client.register()
    assert client.client_id == client_id and client_id.startswith(gates[0].address + "/")
    client.call("Pusher", "cl-p", "ToCaller", StringValue(value="hi"))
    assert unpack(client.next_message(timeout=10), StringValue).value == "hi"
    client.call("Pusher", "cl-p", "ToCaller", StringValue(value="again"))
    assert unpack(next(client.messages()), StringValue).value == "again"
    client.close()
    assert list(client.messages()) == []


def test_register_with_callback(client):
    got = []
    client.register(lambda message: got.append(unpack(message, StringValue).value))
    for text in ("a", "b", "c"):
        client.call("Pusher", "cl-cb", "ToCaller", StringValue(value=text))
    wait_until(lambda: got == ["a", "b", "c"], 10)


def test_client_registers_again_at_the_next_gate_when_its_gate_dies(gates):
    client = Client([gates[0].address, gates[1].address], timeout=10)
    ids, got = [], []
    try:
        first = client.register(lambda m: got.append(unpack(m, StringValue).value),
                                on_register=ids.append)
        assert first.startswith(gates[0].address + "/")
        client.call("Pusher", "cl-r", "ToCaller", StringValue(value="before"))
        wait_until(lambda: got == ["before"], 10)

        gates[0].kill()
        wait_until(lambda: ids, 20, message="registered again")
        assert ids[0].startswith(gates[1].address + "/") and client.client_id == ids[0]
        # Calls go to the surviving gate and carry the new id.
        client.call("Pusher", "cl-r", "ToCaller", StringValue(value="after"))
        wait_until(lambda: got == ["before", "after"], 10)

        # The killed gate comes back at its address; new clients use it.
        gates[0].start()
        with Client([gates[0].address], timeout=10) as other:
            assert other.register().startswith(gates[0].address + "/")
            other.call("Pusher", "cl-r2", "ToCaller", StringValue(value="back"))
            assert unpack(other.next_message(timeout=10), StringValue).value == "back"
    finally:
        client.close()


# ---- mistakes reported before anything is sent ------------------------------------


def test_a_missing_certificate_file_is_named(tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(errors.ConfigError, match="tls_ca.*nope.pem"):
        Client(["127.0.0.1:1"], tls_ca=missing)


@pytest.mark.parametrize("field", ["type", "id", "method"])
def test_a_name_that_is_not_text_raises_the_fields_error(field):
    names = {"type": "Counter", "id": "cl-ok", "method": "Add"}
    names[field] = "bad\udc80"
    expected = {"type": errors.UnknownObjectType, "id": errors.InvalidObjectId,
                "method": errors.UnknownMethod}[field]
    with Client(["127.0.0.1:1"]) as client:
        with pytest.raises(expected, match=r"'bad\\udc80'"):
            client.call(names["type"], names["id"], names["method"], Int64Value())
        if field != "method":
            with pytest.raises(expected):
                client.create(names["type"], names["id"])
            with pytest.raises(expected):
                client.delete(names["type"], names["id"])


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1, 1e10, True])
def test_timeouts_must_be_finite_and_positive(timeout):
    with pytest.raises(ValueError, match="timeout"):
        Client(["127.0.0.1:1"], timeout=timeout)
    with Client(["127.0.0.1:1"]) as client:
        with pytest.raises(ValueError, match="timeout"):
            client.create("Counter", "x", timeout=timeout)


def test_a_plaintext_client_of_a_tls_gate_is_told_tls_may_be_needed(tmp_path):
    from concurrent import futures

    import grpc

    from tests.test_tls import make_ca

    files = make_ca(tmp_path / "ca", "gate")
    with open(files["tls_key"], "rb") as key, open(files["tls_cert"], "rb") as cert:
        credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        with Client(["127.0.0.1:%d" % port], timeout=10) as client:
            with pytest.raises(errors.PeerUnavailable, match="may require TLS"):
                client.create("Counter", "x")
    finally:
        server.stop(0)


def test_the_clients_own_deadline_names_the_call():
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete, and nothing ever answers
    address = "127.0.0.1:%d" % silent.getsockname()[1]
    try:
        with Client([address], timeout=0.3) as client:
            with pytest.raises(errors.CallTimeout,
                               match=r"CallObject Counter\(quiet\)\.Add: no answer from gate "):
                client.call("Counter", "quiet", "Add", Int64Value(value=1))
    finally:
        silent.close()
