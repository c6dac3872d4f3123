"""The gRPC side of a node: its server, and streams to other nodes.

Between nodes, object calls, creates and deletes travel over one
long-lived bidirectional ``PeerStream`` per pair of nodes. Each frame
carries a batch of tagged requests (or responses): under gevent a gRPC
message costs about a millisecond of CPU whatever its size, so batching is
what makes cross-node calls fast. Requests are handled in greenlets owned
by the node, never inside grpc's server thread pool, so nested calls
(A to B to A) cannot exhaust it. The requests of a received batch share a
greenlet until one of them blocks (see :class:`_BatchService`), and each
connection has one deadline sweeper instead of a timer per request.

The plain unary RPCs of the published node protocol stay for tools; they
serve only objects this node owns and refuse the rest naming the owner.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import gevent
import grpc
from gevent.event import Event
from gevent.hub import Waiter
from gevent.queue import Empty as QueueEmpty
from gevent.queue import Queue
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from . import callctx as context
from ._pb import goverse_pb2 as pb
from ._pb import goverse_pb2_grpc as pb_grpc
from .errors import (
    ERROR_KIND_METADATA,
    CallTimeout,
    GoverseError,
    MessageTooLarge,
    NodeStopped,
    ObjectMethodError,
    PeerOverloaded,
    PeerUnavailable,
    PeerUnreachable,
    WrongMessageType,
    error_from_kind,
    error_kind,
)

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger(__name__)

_END = object()

#: What the deadline sweeper answers a request whose time ran out.
_EXPIRED = object()

#: Seconds a frame of a busy connection waits for more items (see _batches).
LINGER = 0.002

_OP_NAMES = {pb.PEER_OP_CALL: "call", pb.PEER_OP_CREATE: "create",
             pb.PEER_OP_DELETE: "delete"}


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10000),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


#: The type URL prefix ``Any.Pack`` uses.
_TYPE_URL_PREFIX = "type.googleapis.com/"


def pack(message: Any) -> any_pb2.Any:
    """``message`` in an ``Any``, as ``Any.Pack`` makes it (an ``Any`` is kept as is)."""
    if isinstance(message, any_pb2.Any):
        return message
    return any_pb2.Any(type_url=_TYPE_URL_PREFIX + message.DESCRIPTOR.full_name,
                       value=message.SerializeToString())


def pack_into(target: any_pb2.Any, message: Any) -> None:
    """Fill ``target`` as :func:`pack` would, without a second ``Any`` to copy."""
    if isinstance(message, any_pb2.Any):
        target.CopyFrom(message)
        return
    target.type_url = _TYPE_URL_PREFIX + message.DESCRIPTOR.full_name
    target.value = message.SerializeToString()


def unpack(packed: any_pb2.Any, message_type: Any) -> Any:
    """The ``message_type`` inside ``packed``, or None when it holds another type."""
    head, slash, name = packed.type_url.rpartition("/")
    if not slash or name != message_type.DESCRIPTOR.full_name:
        return None
    message = message_type()
    message.ParseFromString(packed.value)
    return message


# ---- the server ------------------------------------------------------------


def add_node_service(server: grpc.Server, servicer: NodeServicer) -> None:
    """Register ``goverse.Goverse`` on ``server``, parsing unary requests ourselves.

    grpc's own deserializer answers a request it cannot parse (a string
    field that is not valid UTF-8, say) with INTERNAL and logs a traceback
    per request. The unary methods take raw bytes instead, so that a bad
    request is INVALID_ARGUMENT with a message naming what was wrong.
    """
    unary = {"Status": (pb.Empty, pb.StatusResponse),
             "ListObjects": (pb.Empty, pb.ListObjectsResponse),
             "CallObject": (pb.CallObjectRequest, pb.CallObjectResponse),
             "CreateObject": (pb.CreateObjectRequest, pb.CreateObjectResponse),
             "DeleteObject": (pb.DeleteObjectRequest, pb.DeleteObjectResponse)}
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            parsing(getattr(servicer, name), request_type),
            response_serializer=response_type.SerializeToString)
        for name, (request_type, response_type) in unary.items()}
    handlers["PeerStream"] = grpc.stream_stream_rpc_method_handler(
        servicer.PeerStream, request_deserializer=pb.PeerBatch.FromString,
        response_serializer=pb.PeerResponseBatch.SerializeToString)
    handlers["RegisterGate"] = grpc.unary_stream_rpc_method_handler(
        servicer.RegisterGate, request_deserializer=pb.RegisterGateRequest.FromString,
        response_serializer=pb.GateMessage.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("goverse.Goverse", handlers),))


def parsing(method: Callable[[Any, grpc.ServicerContext], Any],
            request_type: Any) -> Callable[[bytes, grpc.ServicerContext], Any]:
    """``method`` taking the raw request bytes: bad ones are INVALID_ARGUMENT, said so."""
    def handle(raw: bytes, ctx: grpc.ServicerContext) -> Any:
        request = request_type()
        try:
            request.ParseFromString(raw)
        except DecodeError as exc:
            ctx.set_trailing_metadata(((ERROR_KIND_METADATA, WrongMessageType.__name__),))
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, (
                "request is not a valid %s (malformed bytes, or a string field that "
                "is not valid UTF-8): %s" % (request_type.DESCRIPTOR.full_name, exc)))
        return method(request, ctx)
    return handle


class NodeServicer(pb_grpc.GoverseServicer):
    """The ``goverse.Goverse`` service; each method delegates to the node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def Status(self, request: pb.Empty, ctx: grpc.ServicerContext) -> pb.StatusResponse:
        if self.node.partitioned:
            ctx.abort(grpc.StatusCode.UNAVAILABLE,
                      "%s refuses peers (partition fault injected)" % (self.node.address,))
        return pb.StatusResponse(
            advertise_addr=self.node.address,
            num_objects=len(self.node.host),
            uptime_seconds=int(self.node.uptime()))

    def ListObjects(self, request: pb.Empty, ctx: grpc.ServicerContext):
        infos = [pb.ObjectInfo(type=o._gv_type, id=o._gv_id, creation_time=int(o._gv_created))
                 for o in list(self.node.host.objects.values())]
        return pb.ListObjectsResponse(objects=infos)

    def CallObject(self, request: pb.CallObjectRequest, ctx: grpc.ServicerContext):
        def run() -> pb.CallObjectResponse:
            response = self.node.call_owned(request.type, request.id, request.method,
                                            request.request, epoch=0)
            return pb.CallObjectResponse(response=pack(response))
        return _unary(ctx, run, client_id=request.client_id)

    def CreateObject(self, request: pb.CreateObjectRequest, ctx: grpc.ServicerContext):
        def run() -> pb.CreateObjectResponse:
            self.node.create_owned(request.type, request.id, epoch=0)
            return pb.CreateObjectResponse(id=request.id)
        return _unary(ctx, run)

    def DeleteObject(self, request: pb.DeleteObjectRequest, ctx: grpc.ServicerContext):
        def run() -> pb.DeleteObjectResponse:
            self.node.delete_owned(request.id, request.type, epoch=0)
            return pb.DeleteObjectResponse()
        return _unary(ctx, run)

    def PeerStream(self, request_iterator: Iterator[pb.PeerBatch],
                   ctx: grpc.ServicerContext) -> Iterator[pb.PeerResponseBatch]:
        if self.node.partitioned:
            ctx.abort(grpc.StatusCode.UNAVAILABLE,
                      "%s refuses peers (partition fault injected)" % (self.node.address,))
        answers: Queue = Queue()
        working = [0]  # requests of this stream still being served
        reader = self.node.spawn(self._read_requests, request_iterator, answers, working)
        settings = self.node.settings
        try:
            yield from _batches(answers, settings.peer_batch_size, pb.PeerResponseBatch,
                                "responses", settings.max_message_bytes,
                                busy=lambda: working[0] > 0)
        finally:
            reader.kill(block=False)

    def RegisterGate(self, request: pb.RegisterGateRequest,
                     ctx: grpc.ServicerContext) -> Iterator[pb.GateMessage]:
        if not request.gate_addr:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "RegisterGate needs gate_addr")
        # Headers go out at once (not with the first push), so the gate
        # learns that its stream is open before any message flows.
        ctx.send_initial_metadata(())
        yield from self.node.gate_links.stream(request.gate_addr, ctx.is_active)

    def _read_requests(self, request_iterator: Iterator[pb.PeerBatch], answers: Queue,
                       working: list[int]) -> None:
        serving: set[gevent.Greenlet] = set()
        try:
            for batch in request_iterator:
                if self.node.partitioned:
                    break
                if batch.requests:
                    working[0] += len(batch.requests)
                    _BatchService(self.node, batch.requests, answers, working,
                                  serving).start()
            # The caller closed its side: it still waits for the answers.
            # A worker that blocks starts another, so join until none is left.
            while serving:
                gevent.joinall(list(serving))
        except grpc.RpcError as exc:
            log.debug("peer stream to %s ended: %s", self.node.address, exc)
        finally:
            answers.put(_END)


class _BatchService:
    """Serves the requests of one received batch, in as few greenlets as it can.

    A greenlet per request costs more than most requests (its creation,
    its stack, and the garbage collections its allocations trigger), yet
    a request that blocks (waiting for an object's turn, or calling
    another node) must not hold up the ones behind it: one of those may be
    the call that would let it go on (A calls B calls A across nodes).

    So a worker serves the requests one after another and, while it
    serves one, keeps a callback armed in the hub. The hub runs callbacks
    only when the running greenlet yields, so the callback fires exactly
    when a request blocks (or yields), and starts another worker for the
    rest of the batch. A batch whose requests never block is served by
    one greenlet; one whose requests all block gets one per request, as
    before. Workers take requests from a shared index, so each request is
    served once whichever worker gets to it.
    """

    __slots__ = ("_node", "_requests", "_count", "_next", "_answers", "_working",
                 "_serving")

    def __init__(self, node: Node, requests: Any, answers: Queue, working: list[int],
                 serving: set[gevent.Greenlet]) -> None:
        self._node = node
        self._requests = requests
        self._count = len(requests)
        self._next = 0
        self._answers = answers
        self._working = working
        self._serving = serving

    def start(self) -> None:
        # The worker starts in an empty context; each request installs its own.
        worker = self._node.spawn_request(self._serve)
        self._serving.add(worker)
        worker.link(self._serving.discard)

    def _serve(self) -> None:
        loop = gevent.get_hub().loop
        handoff = None
        try:
            while self._next < self._count:
                request = self._requests[self._next]
                self._next += 1
                if handoff is None or not handoff.pending:
                    handoff = loop.run_callback(self._hand_off)
                try:
                    # A context per request: nothing one request sets
                    # (in contextvars) is seen by the next one.
                    answer = contextvars.Context().run(self._node.handle_peer_request,
                                                       request)
                    self._answers.put((answer, answer.ByteSize()))
                finally:
                    self._working[0] -= 1
        finally:
            if handoff is not None:
                handoff.stop()

    def _hand_off(self) -> None:
        """Run by the hub: a worker yielded, so another takes the rest."""
        if self._next < self._count:
            self.start()


def _unary(ctx: grpc.ServicerContext, run: Any, client_id: str = "") -> Any:
    """Run a unary handler inside the caller's context; map errors to statuses."""
    metadata = dict(ctx.invocation_metadata() or ())
    timeout = ctx.time_remaining()
    try:
        context.enter(
            context.decode_values(metadata.get(context.METADATA_VALUES, "")),
            chain=metadata.get(context.METADATA_CHAIN) or None,
            timeout=timeout if timeout is not None and timeout < 1e6 else None,
            caller=metadata.get(context.METADATA_CALLER) or None)
        if client_id:
            context.context["client_id"] = client_id
        return run()
    except GoverseError as exc:
        ctx.set_trailing_metadata(((ERROR_KIND_METADATA, type(exc).__name__),))
        ctx.abort(exc.grpc_code, str(exc))
    except Exception as exc:
        log.exception("unary handler failed")
        ctx.set_trailing_metadata(((ERROR_KIND_METADATA, error_kind(exc)),))
        ctx.abort(grpc.StatusCode.INTERNAL, "%s: %s" % (type(exc).__name__, exc))
    except (gevent.GreenletExit, gevent.Timeout) as exc:
        # gRPC's handler greenlets are never killed and run under no timeout
        # of ours: an object raised this, and the caller is told so at once.
        log.warning("unary handler: the object raised %s", type(exc).__name__, exc_info=True)
        ctx.set_trailing_metadata(((ERROR_KIND_METADATA, ObjectMethodError.__name__),))
        ctx.abort(grpc.StatusCode.INTERNAL, "the object raised %s: %s" % (
            type(exc).__name__, exc))


def _batches(queue: Queue, limit: int, batch_type: Any, field: str,
             max_bytes: int, busy: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Drain ``queue`` into frames of up to ``limit`` items until ``_END``.

    Items are ``(message, size)`` pairs: the size is measured once, where
    the message is made (a protobuf's ``ByteSize()`` costs about as much
    as encoding it). A frame also stays under ``max_bytes`` (the peer
    refuses larger messages): an item that would overflow it opens the
    next frame.

    A gRPC message costs about as much CPU as the call it carries, so
    while the connection is ``busy`` (more items are surely on their way)
    a frame waits ``LINGER`` seconds for company before it goes. An idle
    connection sends at once: a lone call pays no delay.
    """
    budget = max_bytes - 1024  # room for the frame's own framing
    carry = None
    while True:
        item = carry if carry is not None else queue.get()
        carry = None
        if item is _END:
            return
        message, size = item
        items = [message]
        ended = False
        if busy is not None and queue.empty() and busy():
            gevent.sleep(LINGER)
        while len(items) < limit:
            try:
                item = queue.get_nowait()
            except QueueEmpty:
                break
            if item is _END:
                ended = True
                break
            if size + item[1] > budget:
                carry = item
                break
            items.append(item[0])
            size += item[1]
        yield batch_type(**{field: items})
        if ended:
            return


# ---- the client side: one stream to each peer ------------------------------


#: How gRPC words a call that failed because no connection could be made
#: to any address of the peer (nothing was sent).
_NEVER_CONNECTED = "failed to connect to all addresses"


class PeerClient:
    """Requests to one other node over a single batched stream.

    At most ``max_inflight`` requests wait for answers at once; past that a
    request fails at once with :class:`PeerOverloaded`. When the stream
    breaks, every request in flight fails at once with
    :class:`PeerUnavailable` and the next request opens a new stream.

    Each waiting caller sleeps on a bare gevent ``Waiter``. Whoever takes a
    request out of ``_pending`` answers it (the receiver with the peer's
    response, the sweeper when its deadline passed, a broken stream with
    the failure), so every caller is answered exactly once; answers found
    together are handed over in one hub callback (see :func:`_deliver`).

    Deadlines are kept by one sweeper greenlet per connection rather than
    a gevent ``Timeout`` per request: the sweeper sleeps until the earliest
    deadline of the requests in flight and answers the expired ones, whose
    callers then raise :class:`CallTimeout`.
    """

    def __init__(self, address: str, *, group: Any, batch_size: int, max_inflight: int,
                 max_message_bytes: int, credentials: Any = None) -> None:
        self.address = address
        self._group = group
        self._batch_size = batch_size
        self._max_inflight = max_inflight
        self._max_message_bytes = max_message_bytes
        options = channel_options(max_message_bytes)
        if credentials is not None:
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._stub = pb_grpc.GoverseStub(self._channel)
        self._tags = itertools.count(1)
        #: The callers waiting for an answer, by request tag.
        self._pending: dict[int, Waiter] = {}
        #: (deadline, tag) of requests sent, earliest first. Entries of
        #: answered requests stay until they reach the top or the heap is
        #: rebuilt (see _expire_at).
        self._deadlines: list[tuple[float, int]] = []
        self._sweeper: gevent.Greenlet | None = None
        self._sweep_at = float("inf")  # when the sweeper looks next
        self._sweep_wake = Event()
        self._outbox: Queue | None = None
        self._receiver: gevent.Greenlet | None = None
        self._closed = False
        self._confirmed = False
        #: When the peer last answered on this connection (monotonic).
        self.answered_at = float("-inf")
        self.statistics = {"sent": 0, "failed": 0, "streams": 0}

    def __repr__(self) -> str:
        return "<PeerClient %s inflight=%d>" % (self.address, len(self._pending))

    def status(self, timeout: float) -> pb.StatusResponse:
        """The peer's Status over this connection (a reachability probe)."""
        status = self._stub.Status(pb.Empty(), timeout=timeout)
        self.answered_at = time.monotonic()
        return status

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def request(self, request: pb.PeerRequest, timeout: float) -> pb.PeerResponse:
        """Send ``request`` and wait up to ``timeout`` seconds for its answer."""
        if self._closed:
            raise NodeStopped("connection to %s is closed" % (self.address,))
        if len(self._pending) >= self._max_inflight:
            raise PeerOverloaded("%d requests already in flight to %s" % (
                len(self._pending), self.address))
        tag = next(self._tags)
        request.tag = tag
        # Measured once, with its tag, and carried to the frame (_batches).
        size = request.ByteSize()
        if size > self._max_message_bytes:
            raise MessageTooLarge("request to %s is %d bytes; the limit is %d" % (
                self.address, size, self._max_message_bytes))
        outbox = self._ensure_stream()
        waiter = Waiter()
        self._pending[tag] = waiter
        try:
            self._expire_at(time.monotonic() + max(timeout, 0.0), tag)
            outbox.put((request, size))
            self.statistics["sent"] += 1
            answer = waiter.get()
        finally:
            self._pending.pop(tag, None)
        if type(answer) is pb.PeerResponse:
            return answer
        if answer is _EXPIRED:
            raise CallTimeout("%s of %s(%s)%s: no answer from node %s within %.3gs" % (
                _OP_NAMES.get(request.op, "request"), request.type, request.id,
                "." + request.method if request.method else "", self.address,
                timeout))
        raise answer

    def _expire_at(self, deadline: float, tag: int) -> None:
        """Have the sweeper answer request ``tag`` if it still waits at ``deadline``."""
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._pending) + 64:
            # Mostly answered requests: shrink the heap to what is in flight,
            # so that its size follows the requests waiting, not the rate.
            pending = self._pending
            deadlines[:] = [entry for entry in deadlines if entry[1] in pending]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (deadline, tag))
        if self._sweeper is None:
            self._sweeper = self._group.spawn(self._sweep)
        elif deadline < self._sweep_at:
            self._sweep_wake.set()

    def _sweep(self) -> None:
        """Answer the requests whose deadline passed; sleep until the next one."""
        deadlines = self._deadlines
        while not self._closed:
            now = time.monotonic()
            expired = []
            while deadlines and (deadlines[0][0] <= now
                                 or deadlines[0][1] not in self._pending):
                _, tag = heapq.heappop(deadlines)
                waiter = self._pending.pop(tag, None)
                if waiter is not None:
                    expired.append((waiter, _EXPIRED))
            if expired:
                _deliver_soon(expired)
            self._sweep_at = deadlines[0][0] if deadlines else float("inf")
            self._sweep_wake.clear()
            self._sweep_wake.wait(self._sweep_at - now if deadlines else None)

    def _ensure_stream(self) -> Queue:
        if self._outbox is not None:
            return self._outbox
        # NOTE: the outbox is published before the stream call: opening a
        # stream can yield to other greenlets, and every caller arriving in
        # that gap must use this stream rather than open one of its own.
        outbox: Queue = Queue()
        self._outbox = outbox
        self.statistics["streams"] += 1
        self._receiver = self._group.spawn(self._open_and_receive, outbox)
        return outbox

    def _open_and_receive(self, outbox: Queue) -> None:
        try:
            responses = self._stub.PeerStream(
                _batches(outbox, self._batch_size, pb.PeerBatch, "requests",
                         self._max_message_bytes, busy=self._busy))
        except grpc.RpcError as exc:
            self._stream_ended(outbox, exc)
            return
        self._receive(responses, outbox)

    def _busy(self) -> bool:
        # More than the request being framed is waiting for an answer.
        return len(self._pending) > 1

    def _receive(self, responses: Any, outbox: Queue) -> None:
        error: Exception | None = None
        self._confirmed = False
        try:
            for batch in responses:
                self._confirmed = True
                self.answered_at = time.monotonic()
                pending = self._pending
                answered = []
                for response in batch.responses:
                    waiter = pending.pop(response.tag, None)
                    if waiter is not None:  # None: its caller gave up already
                        answered.append((waiter, response))
                if answered:
                    _deliver_soon(answered)
        except grpc.RpcError as exc:
            error = exc
        finally:
            self._stream_ended(outbox, error)

    def _stream_ended(self, outbox: Queue, error: Exception | None) -> None:
        if self._outbox is outbox:
            self._outbox = None
        unsent = self._drain_unsent(outbox)
        outbox.put(_END)
        reason = error.details() if isinstance(error, grpc.RpcError) else "stream closed"
        failure = self._failure(error, reason)
        # Requests still in the outbox never reached gRPC, so they surely
        # did not run: callers may send them to the shard's next owner.
        never_sent = PeerUnreachable("connection to %s failed before the request was "
                                     "sent: %s" % (self.address, reason))
        pending, self._pending = self._pending, {}
        _deliver_soon([(waiter, never_sent if tag in unsent else failure)
                       for tag, waiter in pending.items()])
        self.statistics["failed"] += len(pending)
        if self._closed and not pending:
            log.debug("stream to %s closed", self.address)
        elif pending:
            log.warning("stream to %s ended (%s); %d requests failed",
                        self.address, reason, len(pending))
        elif error is not None:
            log.info("stream to %s ended (%s); no request was waiting", self.address, reason)

    @staticmethod
    def _drain_unsent(outbox: Queue) -> set[int]:
        tags = set()
        while True:
            try:
                item = outbox.get_nowait()
            except QueueEmpty:
                return tags
            if item is not _END:
                tags.add(item[0].tag)

    def _failure(self, error: Exception | None, reason: str) -> PeerUnavailable:
        # A stream that never carried an answer and ended because no
        # connection could be made delivered nothing: callers may safely
        # send those requests elsewhere. Only gRPC's own words for that
        # count; a connection reset after the stream was open (a peer
        # killed mid-call) may have delivered requests that ran.
        never_connected = (
            not self._confirmed and isinstance(error, grpc.RpcError)
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and _NEVER_CONNECTED in (reason or "").lower())
        cls = PeerUnreachable if never_connected else PeerUnavailable
        return cls("connection to %s failed: %s" % (self.address, reason))

    def close(self) -> None:
        self._closed = True
        if self._outbox is not None:
            self._outbox.put(_END)
        self._channel.close()
        if self._receiver is not None:
            self._receiver.join(timeout=2)
        if self._sweeper is not None:
            self._sweeper.kill(block=False)


def _deliver_soon(answers: list[tuple[Waiter, Any]]) -> None:
    """Hand each waiting caller its answer, from the hub (as ``Waiter`` needs).

    One callback for many answers: the hub switches to each caller in
    turn, and each runs until it blocks again, as it would after a
    callback of its own. A caller no longer waiting keeps the answer
    unread in its ``Waiter``.
    """
    if answers:
        gevent.get_hub().loop.run_callback(_deliver, answers)


def _deliver(answers: list[tuple[Waiter, Any]]) -> None:
    for waiter, answer in answers:
        waiter.switch(answer)


def response_or_raise(response: pb.PeerResponse) -> pb.PeerResponse:
    if response.error_kind:
        raise error_from_kind(response.error_kind, response.error_message)
    return response


def remaining_or_raise(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout("%s: deadline expired" % (what,))
    return left
