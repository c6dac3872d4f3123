"""Fuzz what a call carries: type and method names, ``Any`` payloads, sizes.

Unknown types and methods, requests that are not the declared message
(a wrong ``type_url``, random bytes as the value, an empty ``Any``, a
huge ``type_url``, values that are not protobuf messages at all) and
messages above ``max_message_bytes`` go through the in-process API (to
objects owned here and on the node process) and through the unary RPCs.
Each must end in a goverse error that names the bad value, or in grpc's
RESOURCE_EXHAUSTED for oversized messages; none may create an object,
and the nodes must keep serving (checked by ``guard``).

Longer run: ``GOVERSE_FUZZ_EXAMPLES=2000 bin/test tests/fuzz``.
"""

from __future__ import annotations

import uuid

import grpc
import pytest
from gevent.pool import Group
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from hypothesis import given
from hypothesis import strategies as st

from goverse._pb import goverse_pb2 as pb
from goverse.errors import (
    GoverseError,
    MessageTooLarge,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
)
from goverse.objects import registry
from tests.fuzz.harness import (
    MAX_MESSAGE_BYTES,
    assert_clear,
    wire_field,
    fuzz_settings,
    names_value,
)

pytestmark = pytest.mark.fuzz

INT64 = "type.googleapis.com/google.protobuf.Int64Value"

# ---- strategies -------------------------------------------------------------------

#: Names a protobuf string field can hold (no lone surrogates).
wire_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
unknown_type_names = wire_text.filter(lambda name: registry.find(name) is None)
unknown_method_names = wire_text.filter(lambda name: name not in (
    "Add", "Get", "Where", "Context"))

type_urls = st.one_of(
    st.just(""), wire_text, st.just("type.googleapis.com/google.protobuf.StringValue"),
    st.just("type.googleapis.com/goverse.PeerBatch"), st.just(INT64),
    st.builds(lambda text, n: "type.googleapis.com/" + text * n, wire_text.filter(bool),
              st.integers(1, 2000)),
)
payloads = st.builds(lambda url, value: any_pb2.Any(type_url=url, value=value),
                     type_urls, st.binary(max_size=200))


def fresh(address: str) -> str:
    """A new id pinned to the node at ``address``."""
    return "%s/payload-%s" % (address, uuid.uuid4().hex[:12])


def call_request(object_id: str, type_name: str = "Counter", method: str = "Add",
                 request: any_pb2.Any | None = None) -> bytes:
    message = pb.CallObjectRequest(id=object_id, type=type_name, method=method)
    if request is not None:
        message.request.CopyFrom(request)
    return message.SerializeToString()


# ---- type and method names ------------------------------------------------------


@given(type_name=unknown_type_names, target=st.integers(0, 1))
@fuzz_settings()
def test_unknown_type_is_refused_everywhere(guard, type_name, target):
    address = guard.addresses[target]
    object_id = fresh(address)

    with pytest.raises(UnknownObjectType) as caught:
        guard.node.call_object(type_name, object_id, "Add", Int64Value(value=1))
    assert names_value(str(caught.value), type_name), caught.value
    with pytest.raises(UnknownObjectType):
        guard.node.create_object(type_name, object_id, wait=True)

    for method, data in (
            ("CallObject", call_request(object_id, type_name)),
            ("CreateObject", pb.CreateObjectRequest(type=type_name, id=object_id)
             .SerializeToString())):
        answer = guard.unary(address, method, data)
        assert answer.code == grpc.StatusCode.NOT_FOUND, (method, answer)
        assert answer.kind == "UnknownObjectType", answer
    assert object_id not in guard.object_ids()


@given(method=unknown_method_names, target=st.integers(0, 1))
@fuzz_settings()
def test_unknown_method_is_refused_everywhere(guard, method, target):
    address = guard.addresses[target]
    object_id = fresh(address)

    with pytest.raises(UnknownMethod) as caught:
        guard.node.call_object("Counter", object_id, method, Int64Value(value=1))
    assert names_value(str(caught.value), method), caught.value

    answer = guard.unary(address, "CallObject", call_request(object_id, method=method))
    assert answer.code == grpc.StatusCode.NOT_FOUND and answer.kind == "UnknownMethod", answer
    assert object_id not in guard.object_ids()


# ---- payloads ---------------------------------------------------------------------------


def payload_may_succeed(payload: any_pb2.Any) -> bool:
    """Only an Any that names Int64Value can reach Counter.Add."""
    return payload.type_url.rpartition("/")[2] == "google.protobuf.Int64Value"


@given(payload=payloads, target=st.integers(0, 1))
@fuzz_settings()
def test_garbage_any_is_wrong_message_type(guard, payload, target):
    address = guard.addresses[target]
    object_id = fresh(address)

    try:
        guard.node.call_object("Counter", object_id, "Add", payload)
    except WrongMessageType as exc:
        assert "Counter" in str(exc) and "Add" in str(exc), exc
    else:
        assert payload_may_succeed(payload), payload.type_url

    other_id = fresh(address)
    answer = guard.unary(address, "CallObject", call_request(other_id, request=payload))
    assert_clear(answer, payload)
    if not answer.ok:
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer
        assert answer.kind == "WrongMessageType", answer
        assert other_id not in guard.object_ids()
    else:
        assert payload_may_succeed(payload), payload.type_url
    guard.node.delete_object(object_id, wait=True)
    guard.node.delete_object(other_id, wait=True)


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_missing_and_empty_any_are_refused(guard, target):
    address = guard.addresses[target]
    for request in (None, any_pb2.Any(), any_pb2.Any(type_url=INT64[:-1])):
        object_id = fresh(address)
        answer = guard.unary(address, "CallObject", call_request(object_id, request=request))
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (request, answer)
        assert answer.kind == "WrongMessageType", answer
        assert object_id not in guard.object_ids()


NOT_MESSAGES = [None, {"value": 1}, b"\x08\x01", "text", 5]


@pytest.mark.parametrize("request_value", NOT_MESSAGES, ids=repr)
def test_request_that_is_not_a_message_is_refused_here(guard, request_value):
    object_id = fresh(guard.node.address)
    with pytest.raises(WrongMessageType, match="Int64Value"):
        guard.node.call_object("Counter", object_id, "Add", request_value)
    assert object_id not in guard.object_ids()


@pytest.mark.parametrize("args", [
    ("Counter", "Add", None), ("Counter", "Add", {"value": 1}), ("Counter", "Add", b"\x08\x01"),
    (123, "Add", Int64Value(value=1)), ("Counter", 123, Int64Value(value=1)),
    ("Count\ud800", "Add", Int64Value(value=1)),
], ids=["request None", "request dict", "request bytes", "type int", "method int",
        "type surrogate"])
def test_bad_arguments_for_remote_object_raise_goverse_errors(fuzz_cluster, args):
    type_name, method, request = args
    object_id = fresh(fuzz_cluster.proc.address)
    with pytest.raises(GoverseError):
        fuzz_cluster.node.call_object(type_name, object_id, method, request)


# ---- sizes --------------------------------------------------------------------------


def oversized_add() -> any_pb2.Any:
    return any_pb2.Any(type_url=INT64, value=b"\x00" * (MAX_MESSAGE_BYTES + 1))


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_oversized_unary_request_is_resource_exhausted(guard, target):
    address = guard.addresses[target]
    for method, data in (
            ("CallObject", call_request(fresh(address), request=oversized_add())),
            ("CreateObject", pb.CreateObjectRequest(type="x" * (MAX_MESSAGE_BYTES + 1),
                                                    id="big").SerializeToString()),
            ("Status", wire_field(15, b"\x00" * (MAX_MESSAGE_BYTES + 1)))):
        answer = guard.unary(address, method, data)
        assert answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (method, answer)


@pytest.mark.parametrize("target", [0, 1], ids=["process", "in-process"])
def test_oversized_peer_frame_is_resource_exhausted(guard, target):
    request = pb.PeerRequest(tag=1, op=pb.PEER_OP_CALL, type="Counter", method="Add",
                             id=fresh(guard.addresses[target]), request=oversized_add())
    frame = pb.PeerBatch(requests=[request]).SerializeToString()
    result = guard.peer_stream(guard.addresses[target], [frame], expected=1, timeout=5)
    assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, result
    assert not result.responses


def test_oversized_call_to_remote_object_is_message_too_large(guard):
    node = guard.node
    object_id = guard.id_owned_by(guard.proc.address, "oversized")
    with pytest.raises(MessageTooLarge, match=str(MAX_MESSAGE_BYTES)):
        node.call_object("Counter", object_id, "Where",
                         StringValue(value="x" * (MAX_MESSAGE_BYTES + 1)))
    # Refused before sending: the stream to the other node is unharmed.
    assert node.call_object("Counter", object_id, "Add", Int64Value(value=4)).value == 4
    node.delete_object(object_id, wait=True)


def test_concurrent_calls_below_the_limit_succeed(fuzz_cluster):
    node = fuzz_cluster.node
    ids = [fuzz_cluster.id_owned_by(fuzz_cluster.proc.address, "batch") for _ in range(4)]
    payload = StringValue(value="y" * (MAX_MESSAGE_BYTES * 2 // 5))

    def where(object_id):
        try:
            return node.call_object("Counter", object_id, "Where", payload).value
        except GoverseError as exc:
            return exc

    answers = Group().map(where, ids)
    for object_id in ids:
        node.delete_object(object_id, wait=True)
    assert answers == [fuzz_cluster.proc.address] * len(ids), answers
