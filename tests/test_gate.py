"""Gates against a real cluster: the gRPC GateService, the HTTP API and pushes.

Two node processes host the objects; gates run in this process (to look at
their counters) or as ``bin/goverse-gate`` processes.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse
from goverse._pb import gate_pb2, gate_pb2_grpc
from goverse.errors import ConfigError
from goverse.gate import Gate
from goverse.testing import wait_until
from tests.gate_cluster import (
    GATE_LAUNCHER,
    NODE_ARGS,
    GateProcess,
    GrpcPushReader,
    SseReader,
    b64_any,
    http,
    pack,
    start_nodes,
    start_settled,
    unpack,
)


@pytest.fixture(scope="module")
def shared_cluster(etcd_endpoint, tmp_path_factory):
    """Two node processes shared by the tests of this module that do not restart them."""
    prefix = "/goverse-test/%s" % uuid.uuid4().hex
    procs = start_nodes(etcd_endpoint, prefix, 2, tmp_path_factory.mktemp("gate-nodes"))
    try:
        yield prefix, procs
    finally:
        for proc in procs:
            proc.close()


@pytest.fixture(scope="module")
def gate(shared_cluster, etcd_endpoint):
    prefix, _ = shared_cluster
    gate = Gate(goverse.Settings.from_mapping(dict(GATE_SETTINGS, etcd_endpoints=[
        etcd_endpoint], etcd_prefix=prefix)))
    try:
        yield start_settled(gate)
    finally:
        gate.stop(grace=1)


@pytest.fixture
def nodes(shared_cluster):
    return shared_cluster[1]


@pytest.fixture
def make_gate(etcd_endpoint, shared_cluster):
    """More in-process gates of the shared cluster, with other settings."""
    gates = []

    def start(**overrides):
        settings = dict(GATE_SETTINGS, etcd_endpoints=[etcd_endpoint],
                        etcd_prefix=shared_cluster[0])
        settings.update(overrides)
        gate = Gate(goverse.Settings.from_mapping(settings))
        gates.append(gate)
        return start_settled(gate)

    yield start
    for gate in gates:
        gate.stop(grace=1)


#: Settings of in-process test gates (fast heartbeats to see them in tests).
GATE_SETTINGS = dict(listen="127.0.0.1:0", http_listen="127.0.0.1:0", stability_window=0.2,
                     sse_heartbeat=0.3, call_timeout=10.0)


@pytest.fixture
def stub(gate):
    channel = grpc.insecure_channel(gate.address)
    yield gate_pb2_grpc.GateServiceStub(channel)
    channel.close()


def call(stub, type_name, object_id, method, request, client_id=""):
    answer = stub.CallObject(gate_pb2.CallObjectRequest(
        client_id=client_id, type=type_name, id=object_id, method=method,
        request=pack(request)), timeout=10)
    return answer.response


def rpc_error(fn, *args):
    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    kinds = dict(info.value.trailing_metadata() or ()).get("goverse-error-kind")
    return info.value.code(), info.value.details(), kinds


# ---- process and settings ----------------------------------------------------


def test_gate_refuses_to_start_without_etcd_endpoints():
    with pytest.raises(ConfigError, match="never starts an embedded etcd"):
        Gate(goverse.Settings.from_mapping({"listen": "127.0.0.1:0"}))
    done = subprocess.run([sys.executable, GATE_LAUNCHER, "--listen", "127.0.0.1:0"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "etcd_endpoints" in done.stderr and "embedded etcd" in done.stderr


def test_gate_registers_as_gate_and_holds_no_shards(gate, nodes):
    cluster = gate.node.cluster
    assert gate.address in cluster.state.gates
    assert gate.address not in cluster.state.nodes
    assert not cluster.owned
    assert all(v.owner != gate.address for v in cluster.state.shards)
    assert sorted(gate.links.addresses()) == sorted(n.address for n in nodes)


# ---- gRPC GateService --------------------------------------------------------


def test_grpc_call_object_returns_the_objects_any(stub):
    response = call(stub, "Counter", "g-1", "Add", Int64Value(value=4))
    assert response.type_url.endswith("google.protobuf.Int64Value")
    assert unpack(response, Int64Value).value == 4
    assert unpack(call(stub, "Counter", "g-1", "Add", Int64Value(value=1)),
                  Int64Value).value == 5


def test_grpc_call_object_sets_the_client_id_for_the_method(stub):
    response = call(stub, "Counter", "g-ctx", "Context", StringValue(value="client_id"),
                    client_id="127.0.0.1:1/abc")
    assert unpack(response, StringValue).value == "127.0.0.1:1/abc"


def test_grpc_call_object_errors_map_to_status_codes(stub):
    def bad(type_name, object_id, method, request):
        return call(stub, type_name, object_id, method, request)

    code, details, kind = rpc_error(bad, "NoSuchType", "x", "Add", Int64Value())
    assert (code, kind) == (grpc.StatusCode.NOT_FOUND, "UnknownObjectType")
    assert "NoSuchType" in details
    code, details, kind = rpc_error(bad, "Counter", "x", "NoSuchMethod", Int64Value())
    assert (code, kind) == (grpc.StatusCode.NOT_FOUND, "UnknownMethod")
    code, _, kind = rpc_error(bad, "Counter", "", "Add", Int64Value())
    assert (code, kind) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidObjectId")
    code, details, kind = rpc_error(bad, "Counter", "x", "Add", StringValue(value="no"))
    assert (code, kind) == (grpc.StatusCode.INVALID_ARGUMENT, "WrongMessageType")
    code, details, kind = rpc_error(bad, "Pusher", "x", "Fail", StringValue(value="boom"))
    assert (code, kind) == (grpc.StatusCode.INTERNAL, "ObjectMethodError")
    assert "boom" in details


def test_grpc_create_and_delete_are_synchronous(stub, gate):
    created = stub.CreateObject(gate_pb2.CreateObjectRequest(type="Counter", id="g-c"),
                                timeout=10)
    assert created.id == "g-c"
    generated = stub.CreateObject(gate_pb2.CreateObjectRequest(type="Counter"), timeout=10)
    assert generated.id.startswith("Counter-")

    code, _, kind = rpc_error(stub.CreateObject,
                              gate_pb2.CreateObjectRequest(type="NoSuchType", id="g-n"))
    assert (code, kind) == (grpc.StatusCode.NOT_FOUND, "UnknownObjectType")
    code, _, kind = rpc_error(stub.CreateObject,
                              gate_pb2.CreateObjectRequest(type="Slow", id="g-c"))
    assert (code, kind) == (grpc.StatusCode.ALREADY_EXISTS, "ObjectTypeMismatch")
    code, details, kind = rpc_error(stub.CreateObject,
                                    gate_pb2.CreateObjectRequest(type="FailingStart",
                                                                 id="g-f"))
    assert (code, kind) == (grpc.StatusCode.ABORTED, "ObjectCreationFailed")

    code, details, _ = rpc_error(stub.DeleteObject, gate_pb2.DeleteObjectRequest(id="g-c"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "type" in details
    code, details, kind = rpc_error(stub.DeleteObject,
                                    gate_pb2.DeleteObjectRequest(id="g-c", type="Slow"))
    assert kind == "ObjectTypeMismatch" and "'Counter'" in details
    stub.DeleteObject(gate_pb2.DeleteObjectRequest(id="g-c", type="Counter"), timeout=10)
    stub.DeleteObject(gate_pb2.DeleteObjectRequest(id="g-missing", type="Counter"),
                      timeout=10)
    # Deleted for real: the next call starts a fresh object.
    assert unpack(call(stub, "Counter", "g-c", "Add", Int64Value(value=1)),
                  Int64Value).value == 1


def test_grpc_reliable_call_is_unimplemented(stub):
    code, details, _ = rpc_error(stub.ReliableCallObject,
                                 gate_pb2.ReliableCallObjectRequest(type="Counter", id="x"))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "CallObject" in details


def test_grpc_client_deadline_is_respected(stub):
    started = time.monotonic()
    code, _, _ = rpc_error(lambda: stub.CallObject(gate_pb2.CallObjectRequest(
        type="SlowStart", id="g-slow-%d" % time.monotonic_ns(), method="IsReady",
        request=pack(StringValue())), timeout=0.05))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2


def test_grpc_register_gives_an_id_of_this_gate_and_removes_it_at_the_end(gate):
    reader = GrpcPushReader(gate.address)
    assert reader.client_id.startswith(gate.address + "/")
    wait_until(lambda: reader.client_id in gate.clients, 5)
    reader.close()
    wait_until(lambda: reader.client_id not in gate.clients, 5,
               message="client removed when its stream ends")


# ---- pushes ------------------------------------------------------------------


def push_to(stub, text, *client_ids):
    request = StringValue(value="%s|%s" % (text, ",".join(client_ids)))
    return unpack(call(stub, "Pusher", "p-%s" % text, "ToClients", request), Int64Value)


def test_push_to_one_several_and_all_clients_over_grpc_and_sse(gate, stub):
    grpc_a, grpc_b = GrpcPushReader(gate.address), GrpcPushReader(gate.address)
    sse = SseReader("http://" + gate.http_address)
    try:
        assert push_to(stub, "one", grpc_a.client_id).value == 1
        # A malformed id among them (ids come from clients, unchecked) is
        # dropped alone: the others still get the push.
        assert push_to(stub, "bad", "bogus", grpc_b.client_id).value == 1
        # Several clients of one gate travel as one envelope.
        assert push_to(stub, "several", grpc_b.client_id, sse.client_id).value == 1
        everyone = call(stub, "Pusher", "p-all", "ToAll", StringValue(value="all"))
        assert unpack(everyone, Int64Value).value >= 1

        texts = lambda reader: [m.value for m in reader.messages(StringValue)]  # noqa: E731
        wait_until(lambda: texts(grpc_a) == ["one", "all"], 10, message="grpc a")
        wait_until(lambda: texts(grpc_b) == ["bad", "several", "all"], 10, message="grpc b")
        wait_until(lambda: texts(sse) == ["several", "all"], 10, message="sse")
        stats = gate.clients.statistics()
        assert stats["delivered"] == 7 and stats["dropped_full"] == 0
    finally:
        for reader in (grpc_a, grpc_b, sse):
            reader.close()


def test_push_to_the_calling_client_from_every_node(gate, stub, nodes):
    reader = GrpcPushReader(gate.address)
    try:
        # Ids pinned to each node: the pushes start on both node processes.
        for node in nodes:
            call(stub, "Pusher", "%s/pin" % node.address, "ToCaller",
                 StringValue(value=node.address), client_id=reader.client_id)
        wait_until(lambda: sorted(m.value for m in reader.messages(StringValue))
                   == sorted(n.address for n in nodes), 10)
    finally:
        reader.close()


def test_push_to_a_client_that_left_is_counted_as_dropped(gate, stub):
    reader = GrpcPushReader(gate.address)
    gone = reader.client_id
    reader.close()
    wait_until(lambda: gone not in gate.clients, 5)
    before = gate.clients.statistics()["dropped_no_client"]
    push_to(stub, "late", gone)
    wait_until(lambda: gate.clients.statistics()["dropped_no_client"] == before + 1, 5)


def test_slow_client_overflow_is_dropped_without_blocking_the_object(nodes, make_gate):
    gate = make_gate(client_buffer=5)
    stuck = gate.clients.register("test")  # never read from
    reader = GrpcPushReader(gate.address)
    channel = grpc.insecure_channel(gate.address)
    stub = gate_pb2_grpc.GateServiceStub(channel)
    try:
        started = time.monotonic()
        call(stub, "Pusher", "flood", "Flood", Int64Value(value=200), client_id=stuck.id)
        assert time.monotonic() - started < 5
        wait_until(lambda: stuck.dropped == 195, 10, message="overflow counted")
        assert stuck.delivered == 5
        assert gate.clients.statistics()["dropped_full"] == 195
        # Another client of the gate still gets its pushes.
        call(stub, "Pusher", "flood", "Flood", Int64Value(value=5),
             client_id=reader.client_id)
        wait_until(lambda: len(reader.received) == 5, 10)
        assert unpack(call(stub, "Counter", "after-flood", "Add", Int64Value(value=1)),
                      Int64Value).value == 1
    finally:
        reader.close()
        channel.close()


# ---- HTTP API ----------------------------------------------------------------


def api(gate, path):
    return "http://%s/api/v1/%s" % (gate.http_address, path)


def test_http_call_create_delete(gate):
    status, headers, body = http("POST", api(gate, "objects/call/Counter/h-1/Add"),
                                 {"request": b64_any(Int64Value(value=7))})
    assert status == 200, body
    assert headers["Access-Control-Allow-Origin"] == "*"
    from google.protobuf import any_pb2
    packed = any_pb2.Any.FromString(base64.b64decode(body["response"]))
    assert unpack(packed, Int64Value).value == 7

    assert http("POST", api(gate, "objects/create/Counter/h-2"))[2] == {"id": "h-2"}
    assert http("POST", api(gate, "objects/delete/Counter/h-2"))[2] == {"success": True}
    # Ids may contain "/": the type is first, the method last.
    status, _, body = http("POST", api(gate, "objects/call/Counter/a/b/c/Add"),
                           {"request": b64_any(Int64Value(value=2))})
    assert status == 200, body


def test_http_ids_are_utf8(gate, stub):
    # What a browser sends for "café-42" and "日本".
    for quoted, object_id in (("caf%C3%A9-42", "café-42"), ("%E6%97%A5%E6%9C%AC", "日本")):
        status, _, body = http("POST", api(gate, "objects/create/Counter/" + quoted))
        assert (status, body) == (200, {"id": object_id})
        status, _, body = http("POST", api(gate, "objects/call/Counter/%s/Add" % quoted),
                               {"request": b64_any(Int64Value(value=5))})
        assert status == 200, body
        # The same object, under its real id, over gRPC.
        assert unpack(call(stub, "Counter", object_id, "Get", Int64Value()),
                      Int64Value).value == 5
    status, _, body = http("POST", api(gate, "objects/create/Counter/caf%E9"))
    assert status == 400 and "UTF-8" in body["error"]


def test_http_client_id_header_reaches_the_method(gate):
    status, _, body = http("POST", api(gate, "objects/call/Counter/h-ctx/Context"),
                           {"request": b64_any(StringValue(value="client_id"))},
                           headers={"X-Client-ID": "gate/xyz"})
    from google.protobuf import any_pb2
    packed = any_pb2.Any.FromString(base64.b64decode(body["response"]))
    assert unpack(packed, StringValue).value == "gate/xyz"


@pytest.mark.parametrize("path, body, raw, status, kind", [
    ("objects/call/Counter/Add", {"request": ""}, None, 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", None, b"{not json", 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", None, b"[1]", 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", None, b'{"request":' + b"[" * 5000 + b"]" * 5000 + b"}",
     400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", {"request": "!!not base64!!"}, None, 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", {"request": base64.b64encode(b"\xff\xff").decode()},
     None, 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", {}, None, 400, "BadRequest"),
    ("objects/call/Counter/{id}/Add", {"request": "PLACEHOLDER_WRONG"}, None, 400,
     "WrongMessageType"),
    ("objects/create/Counter", None, None, 400, "BadRequest"),
    ("objects/call/NoSuchType/{id}/Add", {"request": "PLACEHOLDER_INT"}, None, 404,
     "UnknownObjectType"),
    ("objects/call/Counter/{id}/NoSuchMethod", {"request": "PLACEHOLDER_INT"}, None, 404,
     "UnknownMethod"),
    ("objects/create/NoSuchType/{id}", None, None, 404, "UnknownObjectType"),
    ("no/such/endpoint", None, None, 404, "BadRequest"),
    ("objects/call/Pusher/{id}/Fail", {"request": "PLACEHOLDER_STR"}, None, 500,
     "ObjectMethodError"),
    ("objects/create/FailingStart/h-f", None, None, 500, "ObjectCreationFailed"),
    ("objects/delete/Slow/h-mismatch", None, None, 500, "ObjectTypeMismatch"),
])
def test_http_errors(gate, path, body, raw, status, kind):
    http("POST", api(gate, "objects/create/Counter/h-mismatch"))
    placeholders = {"PLACEHOLDER_WRONG": b64_any(StringValue(value="x")),
                    "PLACEHOLDER_INT": b64_any(Int64Value(value=1)),
                    "PLACEHOLDER_STR": b64_any(StringValue(value="x"))}
    if body and body.get("request") in placeholders:
        body = {"request": placeholders[body["request"]]}
    path = path.format(id="he-%s" % uuid.uuid4().hex[:8])
    got, headers, answer = http("POST", api(gate, path), body, raw=raw)
    assert got == status, answer
    assert answer["kind"] == kind and answer["error"] and answer["code"]
    assert headers["Access-Control-Allow-Origin"] == "*"


def test_http_options_answers_cors_preflight(gate):
    status, headers, _ = http("OPTIONS", api(gate, "objects/call/Counter/x/Add"),
                              headers={"Access-Control-Request-Method": "POST"})
    assert status == 204
    assert "X-Client-ID" in headers["Access-Control-Allow-Headers"]
    assert "POST" in headers["Access-Control-Allow-Methods"]


def test_http_wrong_method_is_refused(gate):
    status, _, body = http("GET", api(gate, "objects/call/Counter/x/Add"))
    assert status == 405 and body["kind"] == "BadRequest"


def test_sse_register_heartbeat_and_removal(gate):
    reader = SseReader("http://" + gate.http_address)
    assert reader.client_id.startswith(gate.address + "/")
    assert gate.clients.get(reader.client_id).kind == "sse"
    wait_until(lambda: reader.comments >= 2, 5, message="heartbeats")
    reader.close()
    # The gate notices at its next write (a heartbeat at the latest).
    wait_until(lambda: reader.client_id not in gate.clients, 5)


def test_static_files_are_served_beside_the_api(nodes, make_gate, tmp_path):
    (tmp_path / "index.html").write_text("<p>hello</p>")
    gate = make_gate(http_static_dir=str(tmp_path), http_static_prefix="/app/")
    base = "http://%s" % gate.http_address
    status, headers, body = http("GET", base + "/app/")
    assert status == 200 and body == b"<p>hello</p>"
    assert headers["Content-Type"].startswith("text/html")
    assert http("GET", base + "/app/../../etc/passwd")[0] == 404
    assert http("GET", base + "/app/missing.js")[0] == 404
    status, headers, body = http("GET", base + "/app/a%00b")
    assert status == 404 and body["code"] == "NOT_FOUND", body


def test_gate_status_endpoint(gate, nodes):
    status, _, body = http("GET", api(gate, "status"))
    assert status == 200
    assert body["address"] == gate.address and body["ready_reason"] is None
    assert sorted(body["links"]) == sorted(n.address for n in nodes)
    # Counting greenlets walks every object: only when asked.
    assert "greenlets" not in body

    status, _, body = http("GET", api(gate, "status") + "?greenlets=1")
    assert status == 200
    # At least the gate's own: one per node link, the membership follower.
    assert body["greenlets"] >= len(nodes) + 1
    assert body["threadpool_threads"] >= 0


# ---- restarts ----------------------------------------------------------------


def test_gate_process_relinks_after_a_node_restart(etcd_endpoint, cluster_prefix,
                                                    node_processes, tmp_path):
    nodes = node_processes(2, extra_args=NODE_ARGS)
    gate = GateProcess(etcd_endpoint, prefix=cluster_prefix,
                       log_path=str(tmp_path / "gate.log")).start()
    reader = None
    try:
        reader = GrpcPushReader(gate.address)
        channel = grpc.insecure_channel(gate.address)
        stub = gate_pb2_grpc.GateServiceStub(channel)
        victim = nodes[0]
        pinned = "%s/pusher" % victim.address
        call(stub, "Pusher", pinned, "ToCaller", StringValue(value="before"),
             client_id=reader.client_id)

        victim.kill()
        victim.start()
        wait_until(lambda: gate.status()["links"].get(victim.address, {}).get("connects", 0)
                   >= 2 and gate.status()["ready_reason"] is None, 30,
                   message="gate linked to the restarted node again")
        wait_until(lambda: call(stub, "Pusher", pinned, "ToCaller",
                                StringValue(value="after"), client_id=reader.client_id),
                   20, message="pinned object reachable again")
        wait_until(lambda: [m.value for m in reader.messages(StringValue)][-1:]
                   == ["after"], 10, message="push from the restarted node")
        assert [m.value for m in reader.messages(StringValue)][0] == "before"
        channel.close()
    finally:
        if reader is not None:
            reader.close()
        gate.close()


def test_push_streams_leave_workers_for_calls(shared_cluster, etcd_endpoint):
    prefix, _ = shared_cluster
    small = Gate(goverse.Settings.from_mapping(dict(
        GATE_SETTINGS, server_workers=8, etcd_endpoints=[etcd_endpoint], etcd_prefix=prefix)))
    start_settled(small)
    readers = []
    channel = grpc.insecure_channel(small.address)
    try:
        limit = small._servicer.max_streams
        assert 0 < limit < 8
        readers = [GrpcPushReader(small.address) for _ in range(limit)]
        # One stream more is refused at once, and says why ...
        extra = GrpcPushReader.__new__(GrpcPushReader)
        with pytest.raises(grpc.RpcError) as info:
            GrpcPushReader.__init__(extra, small.address)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "push streams" in info.value.details() and "server_workers 8" in info.value.details()
        # ... and calls still find a worker.
        stub = gate_pb2_grpc.GateServiceStub(channel)
        answer = call(stub, "Counter", "streams-full", "Add", Int64Value(value=2))
        assert unpack(answer, Int64Value).value == 2
        readers.pop().close()
        wait_until(lambda: small._servicer.streams < limit, 10)
        readers.append(GrpcPushReader(small.address))
    finally:
        for reader in readers:
            reader.close()
        channel.close()
        small.stop(grace=1)


@pytest.mark.parametrize("method", ["CallObject", "CreateObject", "DeleteObject", "Register"])
def test_garbage_request_bytes_are_invalid_argument_naming_the_type(gate, method):
    channel = grpc.insecure_channel(gate.address)
    try:
        path = "/gate.GateService/%s" % (method,)
        if method == "Register":
            send = channel.unary_stream(path, request_serializer=None,
                                        response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                next(send(b"\xff\xff\xff\xff", timeout=5))
        else:
            send = channel.unary_unary(path, request_serializer=None,
                                       response_deserializer=None)
            with pytest.raises(grpc.RpcError) as info:
                send(b"\xff\xff\xff\xff", timeout=5)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request is not a valid gate." in info.value.details()
    finally:
        channel.close()


def test_a_taken_http_port_fails_the_start_and_leaves_the_cluster(shared_cluster,
                                                                  etcd_endpoint):
    import socket

    prefix, _ = shared_cluster
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    http_listen = "127.0.0.1:%d" % taken.getsockname()[1]
    gate = Gate(goverse.Settings.from_mapping(dict(
        GATE_SETTINGS, http_listen=http_listen, etcd_endpoints=[etcd_endpoint],
        etcd_prefix=prefix)))
    try:
        with pytest.raises(goverse.GoverseError,
                           match="cannot serve HTTP on %s: Address already in use" % (
                               http_listen,)):
            gate.start()
        assert gate.node.stopped
    finally:
        taken.close()
        gate.stop(grace=0)


def test_an_id_pinned_to_a_gate_has_no_route(gate, stub):
    code, details, kind = rpc_error(call, stub, "Counter", "%s/pinned" % gate.address, "Add",
                                    Int64Value(value=1))
    assert kind == "NoRoute" and "gates host no objects" in details, (code, details)
