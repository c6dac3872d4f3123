"""Fuzz object ids: empty, oversized, control characters, invalid text, bad forms.

Every malformed id goes through the in-process API (call, create, delete,
sync and async) and through every unary RPC of both nodes, and must be
refused at once with InvalidObjectId (INVALID_ARGUMENT on the wire)
naming the value; an id pinned to a node that is not in the cluster is
refused naming the id. Nothing may be created, and after each test the
``guard`` fixture checks that the nodes still serve and leaked nothing.

Ids that are not valid UTF-8 cannot be sent through a protobuf stub, so
those requests are written byte by byte.

Longer run: ``GOVERSE_FUZZ_EXAMPLES=2000 bin/test tests/fuzz``.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.wrappers_pb2 import Int64Value
from hypothesis import given
from hypothesis import strategies as st

from goverse.errors import InvalidObjectId, NoRoute
from goverse.sharding import MAX_ID_BYTES
from goverse.transport import pack
from tests.fuzz.harness import NUM_SHARDS, assert_clear, fuzz_settings, wire_field, names_value

pytestmark = pytest.mark.fuzz

ADD = pack(Int64Value(value=1))

# ---- strategies -------------------------------------------------------------------

#: Text without control characters or surrogates: the harmless parts of ids.
plain = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=16)
C0_CONTROLS = [chr(code) for code in range(0x20)] + ["\x7f"]
NOT_ASCII_DIGITS = ["٣", "３", "³", "①", "߁", "𝟙", "五"]


def _oversized(head: str, unit: str, extra: int) -> str:
    # Past the limit in UTF-8 bytes, whatever the character count.
    return head + unit * (MAX_ID_BYTES // len(unit.encode()) + 1 + extra)


oversized_ids = st.builds(_oversized, plain, st.sampled_from(["x", "é", "€", "😀"]),
                          st.integers(0, 300))
control_ids = st.builds(lambda a, c, b: a + c + b, plain, st.sampled_from(C0_CONTROLS), plain)
bad_shard_numbers = st.one_of(
    st.integers(NUM_SHARDS, 10 ** 30).map(str),
    st.integers(-10 ** 6, -1).map(str),
    st.sampled_from(["", " 1", "1 ", "+1", "0x1", "1_0", "1e3", "1.0"]),
    st.sampled_from(NOT_ASCII_DIGITS),
    st.lists(st.sampled_from(NOT_ASCII_DIGITS + list("0123")), min_size=2, max_size=4).map(
        "".join).filter(lambda text: not text.isascii()),
)
shard_form_ids = st.builds(lambda n, rest: "shard#%s/%s" % (n, rest), bad_shard_numbers, plain)

#: Malformed ids that still encode as UTF-8 (a protobuf stub can send them).
malformed_text_ids = st.one_of(st.just(""), oversized_ids, control_ids, shard_form_ids)
surrogate_ids = st.builds(lambda a, code, b: a + chr(code) + b, plain,
                          st.integers(0xD800, 0xDFFF), plain)
malformed_ids = st.one_of(malformed_text_ids, surrogate_ids)

#: Ids pinned (``host:port/rest``) to a node that is not in the cluster.
unknown_pinned_ids = st.builds(
    lambda host, port, rest: "%s:%d/%s" % (host, port, rest),
    st.sampled_from(["127.0.0.1", "10.255.255.1", "no-such-host", "[::1]"]),
    st.integers(1, 65535), plain)

#: Byte strings that are not valid UTF-8 (an overlong form, a lone
#: surrogate's encoding, a stray continuation, a cut sequence, 0xff).
INVALID_UTF8 = [b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xe2\x82", b"\xff",
                b"\xf8\x88\x80\x80\x80"]
invalid_utf8_ids = st.builds(lambda a, bad, b: a.encode() + bad + b.encode(),
                             plain, st.sampled_from(INVALID_UTF8), plain)

# ---- hand-written protobuf ----------------------------------------------------------


def requests_for(raw_id: bytes) -> dict[str, bytes]:
    """Each id-carrying request, with ``raw_id`` as the id's bytes."""
    return {
        "CallObject": wire_field(1, raw_id) + wire_field(2, b"Add") + wire_field(3, b"Counter")
        + wire_field(4, ADD.SerializeToString()),
        "CreateObject": wire_field(1, b"Counter") + wire_field(2, raw_id),
        "DeleteObject": wire_field(1, raw_id) + wire_field(2, b"Counter"),
        # Requests without an id: an unknown field carrying it is ignored.
        "Status": wire_field(15, raw_id),
        "ListObjects": wire_field(15, raw_id),
    }


# ---- the in-process API ------------------------------------------------------------


def api_calls(node, object_id):
    return {
        "call_object": lambda: node.call_object("Counter", object_id, "Add", Int64Value(value=1)),
        "create_object": lambda: node.create_object("Counter", object_id),
        "create_object wait": lambda: node.create_object("Counter", object_id, wait=True),
        "create_object_async": lambda: node.create_object_async("Counter", object_id),
        "delete_object": lambda: node.delete_object(object_id),
        "delete_object_async": lambda: node.delete_object_async(object_id),
    }


@given(object_id=malformed_ids)
@fuzz_settings()
def test_malformed_id_refused_at_once_by_api(guard, object_id):
    node = guard.node
    before, pending = guard.object_ids(), len(node._detached)

    for name, call in api_calls(node, object_id).items():
        started = time.monotonic()
        with pytest.raises(InvalidObjectId) as caught:
            call()
        assert time.monotonic() - started < 1.0, name
        message = str(caught.value)
        assert message and names_value(message, object_id), (name, message)

    assert len(node._detached) == pending
    assert guard.object_ids() == before


@pytest.mark.parametrize("object_id", [None, 7, 1.5, b"bytes-id", ["list"], {"a": 1}],
                         ids=repr)
def test_id_of_wrong_type_refused_by_api(guard, object_id):
    calls = api_calls(guard.node, object_id)
    names = ["call_object", "create_object", "delete_object", "delete_object_async"]
    if object_id is None:
        names.remove("create_object")  # no id: create_object makes one up
    for name in names:
        with pytest.raises(InvalidObjectId, match="must be a str"):
            calls[name]()


@given(object_id=unknown_pinned_ids)
@fuzz_settings(0.5)
def test_id_pinned_to_unknown_node_is_no_route(guard, object_id):
    if object_id.partition("/")[0] in guard.addresses:
        return
    before = guard.object_ids()
    for name, call in api_calls(guard.node, object_id).items():
        with pytest.raises(NoRoute) as caught:
            call()
        assert object_id.partition("/")[0] in str(caught.value), name
    assert guard.object_ids() == before


# ---- over gRPC --------------------------------------------------------------------


@given(object_id=malformed_text_ids, target=st.integers(0, 1))
@fuzz_settings()
def test_malformed_id_refused_by_every_unary_rpc(guard, object_id, target):
    address = guard.addresses[target]
    before = guard.object_ids()

    for method, data in requests_for(object_id.encode()).items():
        answer = guard.unary(address, method, data)
        if method in ("Status", "ListObjects"):
            assert answer.ok, (method, answer)
            continue
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (method, object_id, answer)
        assert answer.kind == "InvalidObjectId", (method, answer)
        assert names_value(answer.details, object_id), (method, answer)

    assert guard.object_ids() == before


@given(object_id=unknown_pinned_ids, target=st.integers(0, 1))
@fuzz_settings(0.5)
def test_id_pinned_to_unknown_node_refused_over_grpc(guard, object_id, target):
    if object_id.partition("/")[0] in guard.addresses:
        return
    address = guard.addresses[target]
    for method in ("CallObject", "CreateObject", "DeleteObject"):
        answer = guard.unary(address, method, requests_for(object_id.encode())[method])
        assert answer.code == grpc.StatusCode.FAILED_PRECONDITION, (method, answer)
        assert answer.kind == "NotOwner", answer
        assert object_id.partition("/")[0] in answer.details, answer


@given(raw_id=invalid_utf8_ids, target=st.integers(0, 1))
@fuzz_settings()
def test_invalid_utf8_id_gets_an_error_over_grpc(guard, raw_id, target):
    address = guard.addresses[target]
    before = guard.object_ids()
    for method, data in requests_for(raw_id).items():
        answer = guard.unary(address, method, data)
        if method in ("Status", "ListObjects"):
            continue  # an unknown field is skipped unparsed
        assert not answer.ok, (method, raw_id)
        assert_clear(answer, (method, raw_id))
    assert guard.object_ids() == before


@pytest.mark.parametrize("method", ["CallObject", "CreateObject", "DeleteObject"])
def test_invalid_utf8_id_is_invalid_argument(fuzz_cluster, method):
    for bad in INVALID_UTF8:
        data = requests_for(b"id-" + bad)[method]
        answer = fuzz_cluster.unary(fuzz_cluster.proc.address, method, data)
        assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, (bad, answer)
        assert "UTF-8" in answer.details, answer


C1_CONTROL_IDS = ["a\x85b", "csi\x9b31m", "\x80", "nel\x85"]


@pytest.mark.parametrize("object_id", C1_CONTROL_IDS, ids=repr)
def test_c1_control_characters_refused(fuzz_cluster, object_id):
    node = fuzz_cluster.node
    with pytest.raises(InvalidObjectId, match="control characters"):
        node.call_object("Counter", object_id, "Add", Int64Value(value=1))
    assert object_id not in node.host.objects
