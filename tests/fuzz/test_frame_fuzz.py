"""Fuzz raw gRPC frames: bytes no stub would send, to every RPC of both nodes.

grpc's generic API sends bytes as they are (no serializer), so requests
can be random, truncated, or valid messages of the wrong type. The
bidirectional ``PeerStream`` gets random batches, garbage and truncated
frames, unknown operations, absurd timeouts and context that is not
JSON; ``RegisterGate`` gets garbage and an empty gate address. Every
request must end in an answer a client can act on (a goverse error, or
grpc's refusal of bytes that do not parse) or be ignored; every request
of a stream that parses gets exactly one answer; no handler may crash,
and ``guard`` checks after each test that both nodes serve and that no
greenlet or descriptor leaked.

Longer run: ``GOVERSE_FUZZ_EXAMPLES=2000 bin/test tests/fuzz``.
"""

from __future__ import annotations

import collections
import json
import math
import uuid

import gevent
import grpc
from gevent.event import Event
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from hypothesis import assume, given
from hypothesis import strategies as st

from goverse._pb import goverse_pb2 as pb
from goverse.testing import NodeProcess, wait_until
from goverse.transport import pack
from tests.fuzz.conftest import node_process_args
from tests.fuzz.harness import (
    DESERIALIZE_FAILED,
    GOVERSE_ERROR_KINDS,
    UNARY_METHODS,
    assert_clear,
    fuzz_settings,
)

pytestmark = pytest.mark.fuzz

TYPES_AND_METHODS = {
    "Counter": ["Add", "Get", "Where", "Context"],
    "Slow": ["Work", "Order"],
    "Spawner": ["Create", "Delete", "CallOther"],
    "SlowStart": ["IsReady"],
    "FailingStart": ["Ping"],
    "Tally": ["Count"],
}

#: One valid message of every type in the node protocol.
SAMPLES = {
    "Empty": pb.Empty(),
    "CallObjectRequest": pb.CallObjectRequest(
        id="frame-sample", type="Counter", method="Get", request=pack(Int64Value())),
    "CreateObjectRequest": pb.CreateObjectRequest(type="Counter", id="frame-sample"),
    "DeleteObjectRequest": pb.DeleteObjectRequest(id="frame-sample-gone", type="Counter"),
    "StatusResponse": pb.StatusResponse(advertise_addr="127.0.0.1:1", num_objects=3),
    "ListObjectsResponse": pb.ListObjectsResponse(objects=[pb.ObjectInfo(type="T", id="i")]),
    "PeerBatch": pb.PeerBatch(requests=[pb.PeerRequest(tag=1, op=pb.PEER_OP_CALL, id="p")]),
    "PeerResponseBatch": pb.PeerResponseBatch(responses=[pb.PeerResponse(tag=1)]),
    "RegisterGateRequest": pb.RegisterGateRequest(gate_addr=""),
    "GateMessage": pb.GateMessage(client_ids=["a/b"], broadcast=True),
}

# ---- strategies -------------------------------------------------------------------

wire_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
any_messages = st.one_of(
    st.integers(-2 ** 63, 2 ** 63 - 1).map(lambda n: pack(Int64Value(value=n))),
    wire_text.map(lambda text: pack(StringValue(value=text))),
    st.builds(lambda url, value: any_pb2.Any(type_url=url, value=value), wire_text,
              st.binary(max_size=40)),
)
contexts = st.one_of(
    st.binary(max_size=60),
    st.dictionaries(wire_text, st.one_of(wire_text, st.integers(), st.none()), max_size=3)
    .map(lambda values: json.dumps(values).encode()),
)
timeouts = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                     st.sampled_from([0.0, -1.0, 1e-300, 5.0, 1e308, math.inf, math.nan]))


@st.composite
def peer_requests(draw, address):
    type_name = draw(st.one_of(st.sampled_from(sorted(TYPES_AND_METHODS)), wire_text))
    method = draw(st.one_of(st.sampled_from(TYPES_AND_METHODS.get(type_name, ["Add"])),
                            wire_text))
    object_id = draw(st.one_of(
        st.builds(lambda n: "%s/frame-%d" % (address, n), st.integers(0, 5)),
        wire_text, st.just("")))
    return pb.PeerRequest(
        tag=draw(st.integers(0, 2 ** 64 - 1)),
        op=draw(st.one_of(st.integers(0, 3), st.integers(-2 ** 31, 2 ** 31 - 1))),
        type=type_name, id=object_id, method=method, request=draw(any_messages),
        epoch=draw(st.one_of(st.just(0), st.integers(-2 ** 63, 2 ** 63 - 1))),
        timeout=draw(timeouts), context=draw(contexts), client_id=draw(wire_text),
        chain=draw(wire_text), caller=draw(wire_text))


# ---- checks ---------------------------------------------------------------------


def assert_answered(requests, result):
    """Every request got exactly one answer, each a success or a goverse error."""
    assert result.code == grpc.StatusCode.OK, result
    assert collections.Counter(r.tag for r in result.responses) == collections.Counter(
        r.tag for r in requests), (len(requests), len(result.responses))
    for response in result.responses:
        if not response.error_kind:
            continue
        assert response.error_kind in GOVERSE_ERROR_KINDS, response
        assert response.error_message, response
        if response.error_kind == "ObjectMethodError":
            # Only a user method may raise a non-goverse error (an int64 overflow).
            assert " raised " in response.error_message, response


def frames_of(requests, cuts):
    """``requests`` split into PeerBatch frames at the ``cuts`` positions."""
    bounds = [0] + sorted(set(c % (len(requests) + 1) for c in cuts)) + [len(requests)]
    return [pb.PeerBatch(requests=requests[a:b]).SerializeToString()
            for a, b in zip(bounds, bounds[1:])]


def parses(message_type, data):
    try:
        return message_type.FromString(data)
    except DecodeError:
        return None


# ---- unary RPCs -------------------------------------------------------------------


@given(data=st.binary(max_size=300), method=st.sampled_from(UNARY_METHODS),
       target=st.integers(0, 1))
@fuzz_settings(2)
def test_random_bytes_to_unary_rpcs(guard, data, method, target):
    answer = guard.unary(guard.addresses[target], method, data)
    assert_clear(answer, (method, data))


@pytest.mark.parametrize("method", UNARY_METHODS)
@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_message_of_another_type_to_unary_rpcs(guard, method, sample):
    for address in guard.addresses:
        answer = guard.unary(address, method, SAMPLES[sample].SerializeToString())
        assert_clear(answer, (method, sample))


@given(sample=st.sampled_from(sorted(SAMPLES)), cut=st.integers(0, 200),
       method=st.sampled_from(UNARY_METHODS), target=st.integers(0, 1))
@fuzz_settings()
def test_truncated_requests_to_unary_rpcs(guard, sample, cut, method, target):
    data = SAMPLES[sample].SerializeToString()
    data = data[:cut % (len(data) + 1)]
    assert_clear(guard.unary(guard.addresses[target], method, data), (method, data))


# ---- the peer stream ----------------------------------------------------------


@given(data=st.data(), target=st.integers(0, 1))
@fuzz_settings()
def test_random_peer_batches_are_all_answered(guard, data, target):
    address = guard.addresses[target]
    requests = data.draw(st.lists(peer_requests(address), min_size=1, max_size=8))
    cuts = data.draw(st.lists(st.integers(0, 8), max_size=2))
    result = guard.peer_stream(address, frames_of(requests, cuts), expected=len(requests),
                               timeout=15)
    assert_answered(requests, result)


@given(frames=st.lists(st.binary(max_size=200), min_size=1, max_size=3),
       target=st.integers(0, 1))
@fuzz_settings(2)
def test_garbage_peer_frames(guard, frames, target):
    batches = [parses(pb.PeerBatch, frame) for frame in frames]
    expected = sum(len(b.requests) for b in batches if b is not None)
    result = guard.peer_stream(guard.addresses[target], frames, expected=expected, timeout=10)
    if all(batch is not None for batch in batches):
        assert_answered([r for b in batches for r in b.requests], result)
    else:
        assert result.code == grpc.StatusCode.INTERNAL, result
        assert result.details == DESERIALIZE_FAILED, result


@given(cut=st.integers(1, 10 ** 6), target=st.integers(0, 1))
@fuzz_settings()
def test_truncated_peer_frame(guard, cut, target):
    address = guard.addresses[target]
    requests = [pb.PeerRequest(tag=n, op=pb.PEER_OP_CALL, type="Counter", method="Get",
                               id="%s/truncated-%d" % (address, n), request=pack(Int64Value()),
                               context=b'{"trace_id": "t"}') for n in range(3)]
    frame = pb.PeerBatch(requests=requests).SerializeToString()
    frame = frame[:cut % len(frame)]
    batch = parses(pb.PeerBatch, frame)
    result = guard.peer_stream(address, [frame], expected=len(batch.requests) if batch else 0,
                               timeout=10)
    if batch is not None:
        assert_answered(list(batch.requests), result)
    else:
        assert (result.code, result.details) == (grpc.StatusCode.INTERNAL,
                                                 DESERIALIZE_FAILED), result


def counter_add(address, tag, **fields):
    return pb.PeerRequest(tag=tag, op=pb.PEER_OP_CALL, type="Counter", method="Add",
                          id="%s/odd-%s" % (address, uuid.uuid4().hex[:8]),
                          request=pack(Int64Value(value=1)), **fields)


ODD_FIELDS = {
    "huge timeout": {"timeout": 1e308},
    "infinite timeout": {"timeout": math.inf},
    "nan timeout": {"timeout": math.nan},
    "negative timeout": {"timeout": -30.0},
    "tiny timeout": {"timeout": 5e-324},
    "context not utf-8": {"context": b"\xff\xfe{"},
    "context cut": {"context": b'{"a": '},
    "context a list": {"context": b"[1, 2]"},
    "context null": {"context": b"null"},
    "context a string": {"context": b'"text"'},
    "context huge int": {"context": b'{"n": ' + b"9" * 5000 + b"}"},
    "context otel garbage": {"context": b'{"_otel": 5}'},
    "huge epoch": {"epoch": 2 ** 63 - 1},
    "negative epoch": {"epoch": -1},
    "caller and chain": {"caller": "\x00" * 100, "chain": "\u2028" * 100},
}


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_odd_request_fields_still_answered(guard, target):
    address = guard.addresses[target]
    requests = [counter_add(address, n, **fields) for n, fields in enumerate(ODD_FIELDS.values())]
    result = guard.peer_stream(address, frames_of(requests, [5, 10]), expected=len(requests))
    assert_answered(requests, result)
    failed = {names: r.error_message for names, r in zip(ODD_FIELDS, sorted(
        result.responses, key=lambda r: r.tag)) if r.error_kind}
    assert not failed, failed


@pytest.mark.parametrize("op", [0, 4, 77, -1, 2 ** 31 - 1])
def test_unknown_peer_op_is_named_in_the_answer(guard, op):
    for address in guard.addresses:
        request = pb.PeerRequest(tag=9, op=op, type="Counter", id="%s/op" % address)
        result = guard.peer_stream(address, frames_of([request], []), expected=1)
        assert_answered([request], result)
        (response,) = result.responses
        assert response.error_kind == "GoverseError", response
        assert "unknown peer operation %d" % op in response.error_message, response


def test_stream_cancelled_with_calls_in_flight(guard):
    for address in guard.addresses:
        slow_id = "%s/cancelled-%s" % (address, uuid.uuid4().hex[:8])
        requests = [pb.PeerRequest(tag=n, op=pb.PEER_OP_CALL, type="Slow", method="Work",
                                   id=slow_id, request=pack(Int64Value(value=n)))
                    for n in range(30)]
        never = Event()

        def frames():
            yield from frames_of(requests, [10, 20])
            never.wait(10)  # keep the sending side open until cancelled

        call = guard.channel(address).stream_stream(
            "/goverse.Goverse/PeerStream", request_serializer=None,
            response_deserializer=None)(frames(), timeout=10)
        gevent.sleep(0.05)
        call.cancel()
        never.set()
        assert call.code() == grpc.StatusCode.CANCELLED
        # The calls already queued on the object still run; then it goes.
        guard.node.delete_object(slow_id, wait=True)


# ---- RegisterGate ---------------------------------------------------------------


def register_once(cluster, address, data, timeout=5.0):
    try:
        messages = list(cluster.register_gate(address, data, timeout=timeout))
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, messages


@pytest.mark.parametrize("data", [b"", pb.RegisterGateRequest(gate_addr="").SerializeToString(),
                                  b"\x12\x03abc", b"\x0a\x00"], ids=repr)
def test_register_gate_without_address_is_invalid_argument(guard, data):
    for address in guard.addresses:
        code, details = register_once(guard, address, data)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "gate_addr" in details


@given(data=st.binary(max_size=100), target=st.integers(0, 1))
@fuzz_settings()
def test_register_gate_with_garbage(guard, data, target):
    request = parses(pb.RegisterGateRequest, data)
    # A parsed address opens a real registration, which waits for pushes.
    assume(request is None or not request.gate_addr)
    code, details = register_once(guard, guard.addresses[target], data)
    if request is None:
        assert (code, details) == (grpc.StatusCode.INTERNAL, DESERIALIZE_FAILED)
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details


def test_cancelled_gate_registration_is_dropped(fuzz_cluster):
    """A gate that goes away without a word is forgotten, its handler freed."""
    node = fuzz_cluster.node
    gate = "fuzz-gate-%s" % uuid.uuid4().hex[:8]
    call = fuzz_cluster.register_gate(
        node.address, pb.RegisterGateRequest(gate_addr=gate).SerializeToString(), timeout=30)
    wait_until(lambda: gate in node.gate_links.gates())
    call.cancel()
    wait_until(lambda: gate not in node.gate_links.gates(), timeout=3)


def test_abandoned_gate_registrations_do_not_starve_the_server(etcd_endpoint, tmp_path):
    """More abandoned registrations than server workers: the node still answers."""
    proc = NodeProcess(etcd_endpoint, prefix="/goverse-fuzz/%s" % uuid.uuid4().hex,
                       objects=["tests.sample_objects"],
                       extra_args=node_process_args(server_workers=8),
                       log_path=str(tmp_path / "starved.log"))
    channel = None
    try:
        proc.start()
        channel = grpc.insecure_channel(proc.address)
        register = channel.unary_stream("/goverse.Goverse/RegisterGate",
                                        request_serializer=None, response_deserializer=None)
        calls = [register(pb.RegisterGateRequest(gate_addr="gate-%d" % n).SerializeToString(),
                          timeout=30) for n in range(10)]
        gevent.sleep(0.5)
        for call in calls:
            call.cancel()
        gevent.sleep(0.5)
        assert proc.status(timeout=3).advertise_addr == proc.address
    finally:
        if channel is not None:
            channel.close()
        proc.close()


# ---- known failures -------------------------------------------------------------


def test_half_closed_stream_answers_requests_in_flight(fuzz_cluster):
    address = fuzz_cluster.node.address
    slow_id = "%s/half-closed-%s" % (address, uuid.uuid4().hex[:8])
    requests = [pb.PeerRequest(tag=n, op=pb.PEER_OP_CALL, type="Slow", method="Work",
                               id=slow_id, request=pack(Int64Value(value=n)))
                for n in range(3)]
    try:
        result = fuzz_cluster.peer_stream(address, frames_of(requests, []), expected=3,
                                          hold=False)
        assert_answered(requests, result)
    finally:
        gevent.sleep(0.2)
        fuzz_cluster.node.delete_object(slow_id, wait=True)


DEEP_JSON = "[" * 5000


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_deeply_nested_context_on_peer_stream_is_answered(fuzz_cluster, target):
    address = fuzz_cluster.addresses[target]
    request = counter_add(address, 1, context=DEEP_JSON.encode())
    result = fuzz_cluster.peer_stream(address, frames_of([request], []), expected=1,
                                      timeout=3)
    assert_answered([request], result)


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_deeply_nested_context_metadata_is_dropped(fuzz_cluster, target):
    address = fuzz_cluster.addresses[target]
    request = pb.CallObjectRequest(id="%s/deep-%s" % (address, uuid.uuid4().hex[:8]),
                                   type="Counter", method="Add",
                                   request=pack(Int64Value(value=1)))
    answer = fuzz_cluster.unary(address, "CallObject", request.SerializeToString(),
                                metadata=[("goverse-context", DEEP_JSON)])
    assert answer.ok, answer
