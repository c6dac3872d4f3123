"""The peer stream: batches served without holding each other up, deadlines, limits."""

from __future__ import annotations

from concurrent import futures

import gevent
import grpc
import pytest
from gevent.pool import Group
from gevent.queue import Queue
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

import goverse
from goverse._pb import goverse_pb2 as pb
from goverse.activation import acquire_turn, release_turn
from goverse.errors import PeerUnreachable
from goverse.testing import free_port, wait_until
from goverse.transport import _END, NodeServicer, PeerClient, _batches, pack
from tests import reentrant_objects  # noqa: F401  (registers the types)

# ---- serving a received batch ----------------------------------------------


def call_request(tag, object_id, method="Echo", chain=""):
    return pb.PeerRequest(tag=tag, op=pb.PEER_OP_CALL, type="Hop", id=object_id,
                          method=method, request=pack(StringValue(value="r%d" % tag)),
                          timeout=10.0, chain=chain)


def serve_batches(node, *batches):
    """Feed ``batches`` to the node's stream handler; (answers queue, reader)."""
    answers = Queue()
    reader = gevent.spawn(NodeServicer(node)._read_requests, iter(batches), answers, [0])
    return answers, reader


def next_answer(answers):
    item = answers.get(timeout=10)
    assert item is not _END, "the stream ended before this answer"
    answer, size = item
    assert size == answer.ByteSize()
    return answer


@pytest.fixture
def held(make_node):
    """A node and one of its objects whose turn the test holds (chain "holder")."""
    node = make_node(num_shards=64)
    object_id = "%s/held" % node.address
    node.call_object("Hop", object_id, "Echo", StringValue())
    obj = node.host.objects[object_id]
    acquire_turn(obj, "holder", None, "test")
    return node, object_id, obj


def test_request_waiting_for_a_turn_does_not_hold_up_its_batch(held):
    node, held_id, obj = held
    free_id = "%s/free" % node.address
    answers, reader = serve_batches(node, pb.PeerBatch(requests=[
        call_request(1, held_id), call_request(2, free_id), call_request(3, free_id)]))

    assert [next_answer(answers).tag for _ in range(2)] == [2, 3]
    assert answers.empty()  # the first still waits for the turn

    release_turn(obj)
    first = next_answer(answers)
    assert (first.tag, first.error_kind) == (1, "")
    assert answers.get(timeout=10) is _END
    reader.get(timeout=10)


def test_reentrant_request_behind_a_waiting_one_in_the_same_batch_enters(held):
    """The call that would let a waiting request go on may be right behind it."""
    node, held_id, obj = held
    answers, reader = serve_batches(node, pb.PeerBatch(requests=[
        call_request(1, held_id, chain="other"),
        call_request(2, held_id, chain="holder")]))

    answer = next_answer(answers)
    assert (answer.tag, answer.error_kind) == (2, "")

    release_turn(obj)
    assert next_answer(answers).tag == 1
    reader.get(timeout=10)


def test_every_request_of_a_batch_is_answered_once(make_node):
    node = make_node(num_shards=64)
    ids = ["%s/o%d" % (node.address, n % 7) for n in range(50)]
    requests = [call_request(n + 1, object_id) for n, object_id in enumerate(ids)]
    for request in requests[::5]:  # Hold(0) yields once (a sleep of 0 ms)
        request.method = "Hold"
        request.request.CopyFrom(pack(Int64Value(value=0)))
    answers, reader = serve_batches(node, pb.PeerBatch(requests=requests[:20]),
                                    pb.PeerBatch(requests=requests[20:]))

    tags = [next_answer(answers).tag for _ in requests]
    assert sorted(tags) == list(range(1, 51))
    assert answers.get(timeout=10) is _END
    reader.get(timeout=10)


def test_request_context_does_not_leak_into_the_next_request(make_node):
    node = make_node(num_shards=64)
    target = "%s/ctx" % node.address
    with_values = call_request(1, target, method="ContextValue")
    with_values.request.CopyFrom(pack(StringValue(value="colour")))
    with_values.context = b'{"colour":"blue"}'
    without = call_request(2, target, method="ContextValue")
    without.request.CopyFrom(pack(StringValue(value="colour")))
    answers, reader = serve_batches(node, pb.PeerBatch(requests=[with_values, without]))

    seen = {}
    for _ in range(2):
        answer = next_answer(answers)
        value = StringValue()
        answer.response.Unpack(value)
        seen[answer.tag] = value.value
    assert seen == {1: "blue", 2: ""}
    reader.get(timeout=10)


# ---- framing ----------------------------------------------------------------


def frames_of(items, limit=64, max_bytes=1024 + 100):
    queue = Queue()
    for item in items:
        queue.put(item)
    queue.put(_END)
    return [[r.tag for r in frame.requests]
            for frame in _batches(queue, limit, pb.PeerBatch, "requests", max_bytes)]


def test_frames_hold_at_most_the_batch_size():
    items = [(pb.PeerRequest(tag=n), 2) for n in range(1, 8)]
    assert frames_of(items, limit=3) == [[1, 2, 3], [4, 5, 6], [7]]


def test_frames_stay_within_the_byte_budget_by_the_sizes_given():
    # The budget is max_bytes less 1024 for framing: 100 bytes here.
    items = [(pb.PeerRequest(tag=1), 60), (pb.PeerRequest(tag=2), 40),
             (pb.PeerRequest(tag=3), 1), (pb.PeerRequest(tag=4), 99)]
    assert frames_of(items) == [[1, 2], [3, 4]]


# ---- the client side, against a stand-in peer ------------------------------


class StandInPeer:
    """A PeerStream server that echoes requests, except those it is told to keep."""

    def __init__(self):
        self.address = "127.0.0.1:%d" % free_port()
        self.kept = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=pb.PeerBatch.FromString,
            response_serializer=pb.PeerResponseBatch.SerializeToString)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "goverse.Goverse", {"PeerStream": handler}),))
        self.server.add_insecure_port(self.address)
        self.server.start()

    def _stream(self, batches, ctx):
        for batch in batches:
            answers = []
            for request in batch.requests:
                if request.method == "Keep":
                    self.kept.append(request.tag)
                else:
                    answers.append(pb.PeerResponse(tag=request.tag, id=request.id,
                                                   response=request.request))
            if answers:
                yield pb.PeerResponseBatch(responses=answers)

    def stop(self):
        self.server.stop(grace=None)


@pytest.fixture
def stand_in():
    peer = StandInPeer()
    yield peer
    peer.stop()


@pytest.fixture
def make_client():
    group = Group()
    clients = []

    def make(address, **overrides):
        settings = dict(batch_size=64, max_inflight=4096, max_message_bytes=64 * 1024)
        settings.update(overrides)
        client = PeerClient(address, group=group, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
    group.kill(block=True, timeout=2)


def peer_call(method, value="x"):
    return pb.PeerRequest(op=pb.PEER_OP_CALL, type="Hop", id="o", method=method,
                          request=pack(StringValue(value=value)))


def test_answers_reach_their_callers(stand_in, make_client):
    client = make_client(stand_in.address)
    calls = [gevent.spawn(client.request, peer_call("Echo", "v%d" % n), 10)
             for n in range(300)]
    gevent.joinall(calls, timeout=20, raise_error=True)
    for n, call in enumerate(calls):
        value = StringValue()
        call.value.response.Unpack(value)
        assert value.value == "v%d" % n
    assert client.queue_depth == 0


def test_deadline_expires_while_a_longer_one_still_waits(stand_in, make_client):
    client = make_client(stand_in.address)
    patient = gevent.spawn(client.request, peer_call("Keep"), 60)
    wait_until(lambda: len(stand_in.kept) == 1)

    expected = "no answer from node %s" % stand_in.address
    with pytest.raises(goverse.CallTimeout, match=expected):
        client.request(peer_call("Keep"), 0.2)
    assert not patient.ready()
    assert client.queue_depth == 1

    client.close()
    with pytest.raises(goverse.GoverseError):
        patient.get(timeout=10)


def test_deadlines_of_answered_requests_are_not_kept(stand_in, make_client):
    client = make_client(stand_in.address)
    for n in range(1000):
        client.request(peer_call("Echo"), 30)
    assert len(client._deadlines) <= 64 + 1


def test_too_many_requests_in_flight_are_refused(stand_in, make_client):
    client = make_client(stand_in.address, max_inflight=2)
    waiting = [gevent.spawn(client.request, peer_call("Keep"), 60) for _ in range(2)]
    wait_until(lambda: len(stand_in.kept) == 2)

    with pytest.raises(goverse.PeerOverloaded, match="2 requests already in flight"):
        client.request(peer_call("Echo"), 10)
    client.close()
    gevent.joinall(waiting, timeout=10)


def test_request_over_the_message_limit_is_refused_unsent(stand_in, make_client):
    client = make_client(stand_in.address, max_message_bytes=4096)
    big = pb.PeerRequest(op=pb.PEER_OP_CALL, type="Hop", id="o", method="Echo",
                         request=pack(BytesValue(value=b"x" * 5000)))

    with pytest.raises(goverse.MessageTooLarge, match="the limit is 4096"):
        client.request(big, 10)
    assert client.statistics["sent"] == 0


def test_request_to_a_peer_that_cannot_be_reached_was_never_sent(make_client):
    client = make_client("127.0.0.1:%d" % free_port())
    with pytest.raises(PeerUnreachable):
        client.request(peer_call("Echo"), 10)


class StreamError(grpc.RpcError):
    """An RpcError as a broken stream raises it."""

    def __init__(self, code, details):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


@pytest.mark.parametrize("details", [
    "Stream removed (recvmsg:Connection reset by peer (104))",
    "Socket closed",
    "Connection reset",
])
def test_a_stream_broken_before_any_answer_may_have_delivered(make_client, details):
    # The peer died with requests in flight but before answering any: those
    # requests may have run, so they must not be sent anywhere else.
    client = make_client("127.0.0.1:%d" % free_port())
    failure = client._failure(StreamError(grpc.StatusCode.UNAVAILABLE, details), details)
    assert type(failure) is goverse.PeerUnavailable


def test_only_a_connection_never_made_counts_as_unsent(make_client):
    client = make_client("127.0.0.1:%d" % free_port())
    details = ("failed to connect to all addresses; last error: UNKNOWN: "
               "ipv4:127.0.0.1:1: Failed to connect to remote host: Connection refused")
    failure = client._failure(StreamError(grpc.StatusCode.UNAVAILABLE, details), details)
    assert type(failure) is PeerUnreachable


def test_requests_in_flight_to_a_peer_that_dies_fail_as_maybe_delivered(stand_in,
                                                                       make_client):
    client = make_client(stand_in.address)
    waiting = [gevent.spawn(client.request, peer_call("Keep"), 30) for _ in range(3)]
    wait_until(lambda: len(stand_in.kept) == 3)
    stand_in.stop()
    gevent.joinall(waiting, timeout=20)
    for call in waiting:
        assert type(call.exception) is goverse.PeerUnavailable, call.exception
