"""The object model, id placement and the turn lock, without a cluster."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent.pool import Group
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.activation import ObjectHost, acquire_turn, release_turn
from goverse.errors import (
    CallTimeout,
    InvalidObjectId,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
)
from goverse.objects import BaseObject, MethodSpec, TypeRegistry, lookup_method, method
from goverse.sharding import MAX_ID_BYTES, Placement, fnv1a_32, placement, validate_id

TARGET = ("Counter", "c1")


def make_object(type_name: str = "Plain", object_id: str = "p1") -> BaseObject:
    """A freshly activated object of a throwaway type, outside any node."""
    registry = TypeRegistry()
    registry.register(type(type_name, (BaseObject,), {}))
    host = ObjectHost(registry, accepts=lambda shard: True)
    return host.create(type_name, object_id, None)


# -- declaring methods --------------------------------------------------------


def test_method_types_from_annotations():
    @method
    def Add(self, request: Int64Value) -> StringValue:
        return StringValue()

    spec = Add._goverse_method
    assert (spec.name, spec.request_type, spec.response_type) == (
        "Add", Int64Value, StringValue)
    assert spec.interleave is False


def test_method_types_from_arguments_override_missing_annotations():
    @method(request=StringValue, response=Int64Value, interleave=True)
    def Peek(self, request):
        return Int64Value()

    spec = Peek._goverse_method
    assert (spec.request_type, spec.response_type, spec.interleave) == (
        StringValue, Int64Value, True)


def test_method_with_non_protobuf_request_is_a_type_error():
    with pytest.raises(TypeError, match=r"Bad.*request type.*int"):
        @method
        def Bad(self, request: int) -> StringValue:
            return StringValue()


def test_method_with_non_protobuf_response_is_a_type_error():
    with pytest.raises(TypeError, match=r"Bad.*response type.*str"):
        @method
        def Bad(self, request: StringValue) -> str:
            return ""


def test_method_without_annotations_is_a_type_error():
    with pytest.raises(TypeError, match="request type"):
        @method
        def Bare(self, request):
            return request


# -- the registry -------------------------------------------------------------


def test_register_under_class_name_collects_methods():
    registry = TypeRegistry()

    @registry.register
    class Wallet(BaseObject):
        @method
        def Balance(self, request: StringValue) -> Int64Value:
            return Int64Value()

    assert registry.get("Wallet") is Wallet
    assert Wallet._goverse_type == "Wallet"
    spec, func = lookup_method(Wallet, "Balance")
    assert spec.request_type is StringValue
    assert func is Wallet.__dict__["Balance"]
    assert registry.names() == ["Wallet"]


def test_register_under_given_name():
    registry = TypeRegistry()

    @registry.register(name="Purse")
    class Wallet(BaseObject):
        pass

    assert registry.get("Purse") is Wallet
    assert registry.find("Wallet") is None
    assert Wallet._goverse_type == "Purse"


def test_register_same_class_twice_is_allowed():
    registry = TypeRegistry()

    class Wallet(BaseObject):
        pass

    registry.register(Wallet)
    registry.register(Wallet)
    assert registry.names() == ["Wallet"]


def test_register_duplicate_name_for_different_class_is_refused():
    registry = TypeRegistry()

    class First(BaseObject):
        pass

    class Second(BaseObject):
        pass

    registry.register(First, name="Shared")
    with pytest.raises(ValueError, match="Shared"):
        registry.register(Second, name="Shared")
    assert registry.get("Shared") is First


def test_register_refuses_non_objects_and_bad_names():
    registry = TypeRegistry()

    class NotAnObject:
        pass

    class Fine(BaseObject):
        pass

    with pytest.raises(TypeError, match="NotAnObject"):
        registry.register(NotAnObject)
    with pytest.raises(ValueError, match="a/b"):
        registry.register(Fine, name="a/b")
    assert registry.names() == []


def test_registry_unknown_type_and_method_name_the_value():
    registry = TypeRegistry()

    @registry.register
    class Wallet(BaseObject):
        pass

    with pytest.raises(UnknownObjectType, match="'Purse'.*Wallet"):
        registry.get("Purse")
    with pytest.raises(UnknownMethod, match="'Wallet' has no method 'Spend'"):
        lookup_method(Wallet, "Spend")


# -- decoding requests --------------------------------------------------------


@pytest.fixture
def add_spec():
    return MethodSpec("Add", Int64Value, Int64Value)


def test_decode_accepts_the_declared_message(add_spec):
    request = Int64Value(value=7)
    assert add_spec.decode(request, *TARGET) is request


def test_decode_unpacks_any_of_the_declared_type(add_spec):
    packed = any_pb2.Any()
    packed.Pack(Int64Value(value=42))
    decoded = add_spec.decode(packed, *TARGET)
    assert isinstance(decoded, Int64Value)
    assert decoded.value == 42


def test_decode_any_of_wrong_type_names_both_types(add_spec):
    packed = any_pb2.Any()
    packed.Pack(StringValue(value="nope"))
    with pytest.raises(WrongMessageType) as info:
        add_spec.decode(packed, *TARGET)
    message = str(info.value)
    assert "Counter(c1).Add" in message
    assert "google.protobuf.Int64Value" in message
    assert "type.googleapis.com/google.protobuf.StringValue" in message


def test_decode_any_with_garbage_payload(add_spec):
    packed = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Int64Value",
                         value=b"\xff\xff\xff")
    with pytest.raises(WrongMessageType, match="not a valid google.protobuf.Int64Value"):
        add_spec.decode(packed, *TARGET)


@pytest.mark.parametrize("request_value, named", [
    ("text", "str"),
    (5, "int"),
    (None, "NoneType"),
    (StringValue(value="x"), "google.protobuf.StringValue"),
])
def test_decode_wrong_python_type_names_it(add_spec, request_value, named):
    with pytest.raises(WrongMessageType) as info:
        add_spec.decode(request_value, *TARGET)
    assert "takes google.protobuf.Int64Value, got %s" % named in str(info.value)


def test_check_response_refuses_other_types(add_spec):
    assert add_spec.check_response(Int64Value(value=1), "Counter(c1)").value == 1
    with pytest.raises(WrongMessageType, match="must return google.protobuf.Int64Value"):
        add_spec.check_response(StringValue(), "Counter(c1)")


# -- placement ----------------------------------------------------------------


@pytest.mark.parametrize("data, expected", [
    (b"", 0x811C9DC5),
    (b"a", 0xE40C292C),
    (b"foobar", 0xBF9CF968),
])
def test_fnv1a_32_known_vectors(data, expected):
    assert fnv1a_32(data) == expected


def test_placement_hashes_utf8_bytes():
    assert placement("a", 8192) == Placement(0xE40C292C % 8192, None)
    assert placement("foobar", 1000) == Placement(0xBF9CF968 % 1000, None)
    text = "z\u00fcrich"
    assert placement(text, 97).shard == fnv1a_32(text.encode("utf-8")) % 97


def test_placement_slash_without_address_is_hashed():
    assert placement("users/42", 64) == Placement(fnv1a_32(b"users/42") % 64, None)
    assert placement("shard#5", 64) == Placement(fnv1a_32(b"shard#5") % 64, None)


@pytest.mark.parametrize("object_id, node", [
    ("127.0.0.1:7000/x", "127.0.0.1:7000"),
    ("node-a.example:50051/chat/room", "node-a.example:50051"),
    ("[::1]:7000/x", "[::1]:7000"),
])
def test_placement_pinned_to_node(object_id, node):
    assert placement(object_id, 64) == Placement(None, node)


def test_placement_explicit_shard():
    assert placement("shard#5/x", 8) == Placement(5, None)
    assert placement("shard#0/a/b", 8) == Placement(0, None)
    assert placement("shard#7/x", 8) == Placement(7, None)


@pytest.mark.parametrize("object_id", [
    "shard#8/x", "shard#100/x", "shard#abc/x", "shard#/x", "shard#-1/x", "shard# 5/x",
])
def test_placement_bad_explicit_shard(object_id):
    with pytest.raises(InvalidObjectId, match="shard"):
        placement(object_id, 8)


@pytest.mark.parametrize("object_id", ["shard#\u00b2/x", "shard#\u0663/x"])
def test_placement_non_ascii_shard_number_is_invalid(object_id):
    with pytest.raises(InvalidObjectId):
        placement(object_id, 8)


# -- validating ids -----------------------------------------------------------


def test_validate_id_accepts_ordinary_ids():
    for object_id in ("a", "user-42", "z\u00fcrich", "\U0001f600", "x" * MAX_ID_BYTES):
        assert validate_id(object_id) == object_id


@pytest.mark.parametrize("object_id, pattern", [
    ("", "must not be empty"),
    (None, "must be a str, got NoneType"),
    (42, "must be a str, got int 42"),
    (b"bytes", "must be a str, got bytes"),
    ("x" * (MAX_ID_BYTES + 1), "1025 bytes long; the limit is 1024"),
    ("\u00e9" * 513, "1026 bytes long"),
    ("a\x00b", "control characters"),
    ("line\nbreak", "control characters"),
    ("tab\there", "control characters"),
    ("del\x7f", "control characters"),
    ("lone\ud800", "not valid UTF-8"),
])
def test_validate_id_refuses(object_id, pattern):
    with pytest.raises(InvalidObjectId, match=pattern):
        validate_id(object_id)


# -- the turn lock ------------------------------------------------------------


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_turn_is_free_then_held():
    obj = make_object()
    assert obj._gv_holder is None
    acquire_turn(obj, "chain-a", soon(), "test")
    assert (obj._gv_holder, obj._gv_depth) == ("chain-a", 1)
    release_turn(obj)
    assert obj._gv_holder is None
    assert obj._gv_waiters is None


def test_turn_handed_over_in_fifo_order():
    obj = make_object()
    acquire_turn(obj, "holder", soon(), "test")
    order = []

    def take(chain):
        acquire_turn(obj, chain, soon(), "test")
        order.append(chain)
        gevent.sleep(0.001)
        release_turn(obj)

    group = Group()
    chains = ["w%d" % i for i in range(6)]
    for count, chain in enumerate(chains, 1):
        group.spawn(take, chain)
        gevent.sleep(0)
        assert len(obj._gv_waiters) == count

    release_turn(obj)
    # The turn goes straight to the head of the queue: nobody can barge in.
    assert obj._gv_holder == "w0"
    late = group.spawn(take, "late")
    group.join(timeout=5)
    assert late.successful()
    assert order == chains + ["late"]
    assert obj._gv_holder is None


def test_turn_is_reentrant_for_its_chain():
    obj = make_object()
    acquire_turn(obj, "chain-a", soon(), "test")
    acquire_turn(obj, "chain-a", soon(0.01), "test")
    assert obj._gv_depth == 2

    other = gevent.spawn(acquire_turn, obj, "chain-b", soon(), "test")
    gevent.sleep(0)
    release_turn(obj)
    assert obj._gv_holder == "chain-a"
    assert not other.ready()

    release_turn(obj)
    other.join(timeout=2)
    assert other.successful()
    assert obj._gv_holder == "chain-b"
    release_turn(obj)


def test_turn_timeout_names_the_object_and_holder():
    obj = make_object("Ledger", "ledger-7")
    acquire_turn(obj, "chain-a", soon(), "test")
    started = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        acquire_turn(obj, "chain-b", soon(0.05), "call to Ledger(ledger-7).Post")
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert "call to Ledger(ledger-7).Post timed out" in message
    assert "Ledger(ledger-7)" in message.split("turn of", 1)[1]
    assert "chain-a" in message

    # The timed-out waiter left the queue: the next release frees the turn.
    assert obj._gv_waiters is None
    release_turn(obj)
    assert obj._gv_holder is None
