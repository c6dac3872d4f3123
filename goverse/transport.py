"""The gRPC side of a node: its server, and streams to other nodes.

Between nodes, object calls, creates and deletes travel over one
long-lived bidirectional ``PeerStream`` per pair of nodes. Each frame
carries a batch of tagged requests (or responses): under gevent a gRPC
message costs about a millisecond of CPU whatever its size, so batching is
what makes cross-node calls fast. Requests are handled in greenlets owned
by the node, never inside grpc's server thread pool, so nested calls
(A to B to A) cannot exhaust it.

The plain unary RPCs of the published node protocol stay for tools; they
serve only objects this node owns and refuse the rest naming the owner.
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

import gevent
import grpc
from gevent.event import AsyncResult
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


def pack(message: Any) -> any_pb2.Any:
    if isinstance(message, any_pb2.Any):
        return message
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


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
            _parsing(getattr(servicer, name), request_type),
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


def _parsing(method: Callable[[Any, grpc.ServicerContext], Any],
             request_type: Any) -> Callable[[bytes, grpc.ServicerContext], Any]:
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
        answering: set[gevent.Greenlet] = set()
        try:
            for batch in request_iterator:
                if self.node.partitioned:
                    break
                for request in batch.requests:
                    # The request brings its own context: nothing to copy.
                    working[0] += 1
                    greenlet = self.node.spawn_request(self._answer, request, answers,
                                                       working)
                    answering.add(greenlet)
                    greenlet.link(answering.discard)
            # The caller closed its side: it still waits for the answers.
            gevent.joinall(list(answering))
        except grpc.RpcError as exc:
            log.debug("peer stream to %s ended: %s", self.node.address, exc)
        finally:
            answers.put(_END)

    def _answer(self, request: pb.PeerRequest, answers: Queue, working: list[int]) -> None:
        try:
            answers.put(self.node.handle_peer_request(request))
        finally:
            working[0] -= 1


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


def _batches(queue: Queue, limit: int, batch_type: Any, field: str,
             max_bytes: int, busy: Callable[[], bool] | None = None) -> Iterator[Any]:
    """Drain ``queue`` into frames of up to ``limit`` items until ``_END``.

    A frame also stays under ``max_bytes`` (the peer refuses larger
    messages): an item that would overflow it opens the next frame.

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
        items = [item]
        size = item.ByteSize()
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
            item_size = item.ByteSize()
            if size + item_size > budget:
                carry = item
                break
            items.append(item)
            size += item_size
        yield batch_type(**{field: items})
        if ended:
            return


# ---- the client side: one stream to each peer ------------------------------


class PeerClient:
    """Requests to one other node over a single batched stream.

    At most ``max_inflight`` requests wait for answers at once; past that a
    request fails at once with :class:`PeerOverloaded`. When the stream
    breaks, every request in flight fails at once with
    :class:`PeerUnavailable` and the next request opens a new stream.
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
        self._pending: dict[int, AsyncResult] = {}
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
        if request.ByteSize() > self._max_message_bytes:
            raise MessageTooLarge("request to %s is %d bytes; the limit is %d" % (
                self.address, request.ByteSize(), self._max_message_bytes))
        outbox = self._ensure_stream()
        tag = next(self._tags)
        request.tag = tag
        result = AsyncResult()
        self._pending[tag] = result
        try:
            outbox.put(request)
            self.statistics["sent"] += 1
            return result.get(timeout=max(timeout, 0.0))
        except gevent.Timeout:
            raise CallTimeout("%s of %s(%s)%s: no answer from node %s within %.3gs" % (
                _OP_NAMES.get(request.op, "request"), request.type, request.id,
                "." + request.method if request.method else "", self.address,
                timeout)) from None
        finally:
            self._pending.pop(tag, None)

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
                for response in batch.responses:
                    waiter = self._pending.get(response.tag)
                    if waiter is not None:
                        waiter.set(response)
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
        for tag, waiter in pending.items():
            waiter.set_exception(never_sent if tag in unsent else failure)
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
                tags.add(item.tag)

    def _failure(self, error: Exception | None, reason: str) -> PeerUnavailable:
        # A stream that never carried an answer and ended because the
        # connection could not be made delivered nothing: callers may
        # safely send those requests elsewhere.
        never_connected = (
            not self._confirmed and isinstance(error, grpc.RpcError)
            and error.code() == grpc.StatusCode.UNAVAILABLE
            and "connect" in (reason or "").lower())
        cls = PeerUnreachable if never_connected else PeerUnavailable
        return cls("connection to %s failed: %s" % (self.address, reason))

    def close(self) -> None:
        self._closed = True
        if self._outbox is not None:
            self._outbox.put(_END)
        self._channel.close()
        if self._receiver is not None:
            self._receiver.join(timeout=2)


def response_or_raise(response: pb.PeerResponse) -> pb.PeerResponse:
    if response.error_kind:
        raise error_from_kind(response.error_kind, response.error_message)
    return response


def remaining_or_raise(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout("%s: deadline expired" % (what,))
    return left
