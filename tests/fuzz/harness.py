"""The cluster the fuzz tests attack, and the checks every attack ends with.

:class:`FuzzCluster` is one ``bin/goverse-node`` child process plus one
node in this process, on the shared test etcd. It sends raw bytes to
either node's gRPC service (no client-side serialization, so anything can
be sent), and after an attack it answers three questions: is the node
process alive and serving, did any handler crash (a log line only an
unexpected exception produces), and did greenlets or descriptors leak.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

import gevent
import grpc
from gevent.event import Event
from google.protobuf.wrappers_pb2 import Int64Value
from hypothesis import HealthCheck, settings

import goverse
from goverse._pb import goverse_pb2 as pb
from goverse.errors import ERROR_KIND_METADATA, GoverseError
from goverse.sharding import placement
from goverse.testing import NodeProcess, wait_until
from goverse.transport import pack

#: Examples per property; raise it for a long run (see the package docstring).
EXAMPLES = int(os.environ.get("GOVERSE_FUZZ_EXAMPLES", "50"))

NUM_SHARDS = 64
#: Small, so oversized messages are cheap to build.
MAX_MESSAGE_BYTES = 256 * 1024

SERVICE = "/goverse.Goverse/"
UNARY_METHODS = ("Status", "ListObjects", "CallObject", "CreateObject", "DeleteObject")

#: What grpc answers (INTERNAL) when a request is not a valid protobuf
#: message of the method's type; the servicer never sees such requests.
DESERIALIZE_FAILED = "Exception deserializing request!"

#: Log text that only an exception nobody handled produces: a handler
#: that raised instead of answering, or a greenlet that died.
CRASH_MARKERS = (
    "Exception calling application",
    "Exception iterating responses",
    "unary handler failed",
    "failed serving",
    "> failed with ",
)

#: Status codes a goverse error may map to (see goverse/errors.py).
CLEAR_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _error_kinds() -> frozenset[str]:
    kinds, pending = set(), [GoverseError]
    while pending:
        cls = pending.pop()
        kinds.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(kinds)


#: Names of every goverse error class: the kinds that may cross the wire.
GOVERSE_ERROR_KINDS = _error_kinds()

#: Greenlets of the in-process node that may come and go on their own
#: (etcd keep-alives, watch restarts) between two counts.
GREENLET_SLACK = 2
#: Descriptors the node process may open on its own (etcd reconnects).
FD_SLACK = 4


def fuzz_settings(share: float = 1.0) -> settings:
    """Hypothesis settings for one property: reproducible, no deadline."""
    return settings(
        max_examples=max(1, int(EXAMPLES * share)), deadline=None, derandomize=True,
        database=None, print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                               HealthCheck.function_scoped_fixture,
                               HealthCheck.data_too_large, HealthCheck.large_base_example])


# ---- answers --------------------------------------------------------------------


@dataclass
class Answer:
    """The outcome of one raw unary call."""

    code: grpc.StatusCode
    details: str = ""
    kind: str | None = None
    body: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK

    def __str__(self) -> str:
        return "%s %r (kind %s)" % (self.code.name, self.details[:300], self.kind)


def error_answer(exc: grpc.RpcError) -> Answer:
    kind = None
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_KIND_METADATA:
            kind = value
    return Answer(exc.code(), exc.details() or "", kind)


def assert_clear(answer: Answer, what: Any) -> None:
    """``answer`` is a success or an error a client can act on.

    Clear errors are goverse errors (a known kind, a mapped status and a
    message) and grpc's refusal of bytes that do not parse. An UNKNOWN
    or an INTERNAL of any other origin means a handler raised.
    """
    if answer.ok:
        return
    context = "%r -> %s" % (_clip(what), answer)
    if answer.code == grpc.StatusCode.INTERNAL:
        if answer.details == DESERIALIZE_FAILED:
            return
        # A user method that raised (Counter's total overflowing int64).
        assert answer.kind == "ObjectMethodError" and " raised " in answer.details, context
        return
    assert answer.code in CLEAR_CODES, context
    assert answer.details, context
    if answer.code == grpc.StatusCode.RESOURCE_EXHAUSTED and answer.kind is None:
        return  # grpc's own message-size refusal
    assert answer.kind in GOVERSE_ERROR_KINDS, context


def _clip(value: Any, limit: int = 200) -> Any:
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return "%r... (%d long)" % (value[:limit], len(value))
    return value


# ---- hand-written protobuf --------------------------------------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def wire_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (string, bytes or message), any bytes inside."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


# ---- the peer stream --------------------------------------------------------------


@dataclass
class StreamResult:
    responses: list[pb.PeerResponse] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""

    def tags(self) -> list[int]:
        return sorted(response.tag for response in self.responses)


# ---- crash detection ------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append("%s %s: %s" % (record.levelname, record.name, record.getMessage()))


class CrashWatch:
    """Crash lines logged by either node between ``start`` and ``stop``."""

    def __init__(self, log_path: str) -> None:
        self.log_path = log_path
        self._offset = 0
        self._records = _Records()
        self._hub_stream = io.StringIO()
        self._saved_stream: Any = None

    def start(self) -> CrashWatch:
        self._offset = os.path.getsize(self.log_path)
        logging.getLogger().addHandler(self._records)
        hub = gevent.get_hub()
        self._saved_stream = hub.exception_stream
        hub.exception_stream = self._hub_stream
        return self

    def stop(self) -> list[str]:
        logging.getLogger().removeHandler(self._records)
        hub = gevent.get_hub()
        hub.exception_stream = self._saved_stream
        hub_text = self._hub_stream.getvalue()
        if hub_text and self._saved_stream is not None:
            self._saved_stream.write(hub_text)  # still shown, not swallowed
        with open(self.log_path, "r", encoding="utf-8", errors="replace") as handle:
            handle.seek(self._offset)
            process_text = handle.read()
        lines = (process_text.splitlines() + hub_text.splitlines() + self._records.lines)
        return [line for line in lines if any(marker in line for marker in CRASH_MARKERS)]


# ---- the cluster ------------------------------------------------------------------


class FuzzCluster:
    """A node process and an in-process node, and raw access to both."""

    def __init__(self, node: goverse.Node, proc: NodeProcess, log_path: str) -> None:
        self.node = node
        self.proc = proc
        self.log_path = log_path
        self._channels: dict[str, grpc.Channel] = {}

    def __repr__(self) -> str:
        return "<FuzzCluster process %s, in-process %s>" % (self.proc.address,
                                                            self.node.address)

    @property
    def addresses(self) -> tuple[str, str]:
        return self.proc.address, self.node.address

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    # ---- raw gRPC -------------------------------------------------------------

    def channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            # No receive limit here: the client must see what a node sends.
            channel = grpc.insecure_channel(address, options=[
                ("grpc.max_receive_message_length", -1),
                ("grpc.max_send_message_length", -1)])
            self._channels[address] = channel
        return channel

    def unary(self, address: str, method: str, data: bytes, *, timeout: float = 10.0,
              metadata: Iterable[tuple[str, str]] | None = None) -> Answer:
        call = self.channel(address).unary_unary(
            SERVICE + method, request_serializer=None, response_deserializer=None)
        try:
            body = call(data, timeout=timeout, metadata=metadata)
        except grpc.RpcError as exc:
            return error_answer(exc)
        return Answer(grpc.StatusCode.OK, body=body)

    def register_gate(self, address: str, data: bytes, *, timeout: float) -> Any:
        call = self.channel(address).unary_stream(
            SERVICE + "RegisterGate", request_serializer=None, response_deserializer=None)
        return call(data, timeout=timeout)

    def peer_stream(self, address: str, frames: Iterable[bytes], *, expected: int,
                    timeout: float = 10.0, hold: bool = True) -> StreamResult:
        """Send ``frames`` on a PeerStream and read answers.

        With ``hold`` the sending side stays open until ``expected``
        answers came (or ``timeout``), as a node's own stream does;
        without it the client half-closes right after the last frame.
        """
        answered = Event()
        if expected <= 0:
            answered.set()
        deadline = time.monotonic() + timeout

        def requests() -> Iterable[bytes]:
            yield from frames
            if hold:
                answered.wait(max(0.0, deadline - time.monotonic()))

        call = self.channel(address).stream_stream(
            SERVICE + "PeerStream", request_serializer=None, response_deserializer=None)
        result = StreamResult()
        try:
            for frame in call(requests(), timeout=timeout + 5):
                result.responses.extend(pb.PeerResponseBatch.FromString(frame).responses)
                if len(result.responses) >= expected:
                    answered.set()
        except grpc.RpcError as exc:
            result.code, result.details = exc.code(), exc.details() or ""
        finally:
            answered.set()
        return result

    # ---- state ----------------------------------------------------------------

    def object_ids(self) -> set[str]:
        """Ids active on either node."""
        listing = pb.ListObjectsResponse.FromString(
            self.unary(self.proc.address, "ListObjects", b"").body)
        return {info.id for info in listing.objects} | set(self.node.host.objects)

    def greenlets(self) -> int:
        node = self.node
        return len(node._calls) + len(node._detached) + len(node._background)

    def fds(self) -> int:
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def id_owned_by(self, address: str, prefix: str = "fz") -> str:
        """A fresh hashed (not pinned) id whose shard ``address`` owns now."""
        base = "%s-%s" % (prefix, uuid.uuid4().hex[:8])
        for n in range(10 * NUM_SHARDS):
            object_id = "%s-%d" % (base, n)
            shard = placement(object_id, NUM_SHARDS).shard
            if self.node.cluster.route(shard)[0] == address:
                return object_id
        raise AssertionError("no shard is owned by %s" % (address,))

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Both nodes are members and every shard has one of them as owner."""
        def formed() -> bool:
            owners = [self.node.cluster.route(s)[0] for s in range(NUM_SHARDS)]
            return set(owners) == set(self.addresses)
        wait_until(formed, timeout=timeout, message="both nodes own shards")

    # ---- health -----------------------------------------------------------------

    def check_healthy(self) -> None:
        """The node process runs, answers Status and serves Counter calls right."""
        proc = self.proc
        assert proc.alive(), "%r exited with status %s" % (proc, proc.process.returncode)
        status = proc.status(timeout=5)
        assert status.advertise_addr == proc.address

        # A pinned id: the node process owns it whatever the shard map says.
        pinned = "%s/health-%s" % (proc.address, uuid.uuid4().hex[:8])
        request = pb.CallObjectRequest(id=pinned, type="Counter", method="Add",
                                       request=pack(Int64Value(value=2)))
        answer = self.unary(proc.address, "CallObject", request.SerializeToString())
        assert answer.ok, "Counter call on %s failed: %s" % (proc.address, answer)
        response = pb.CallObjectResponse.FromString(answer.body)
        value = Int64Value()
        assert response.response.Unpack(value) and value.value == 2

        # The same object over the peer stream, then one owned here.
        remote = self.node.call_object("Counter", pinned, "Add", Int64Value(value=3))
        assert remote.value == 5, remote
        local = "%s/health-%s" % (self.node.address, uuid.uuid4().hex[:8])
        assert self.node.call_object("Counter", local, "Add", Int64Value(value=7)).value == 7
        for object_id in (pinned, local):
            self.node.delete_object(object_id, wait=True, timeout=10)

    def baseline(self) -> tuple[int, int]:
        return self.greenlets(), self.fds()

    def check_no_leaks(self, baseline: tuple[int, int], timeout: float = 15.0) -> None:
        greenlets, fds = baseline

        def settled() -> bool:
            return (self.greenlets() <= greenlets + GREENLET_SLACK
                    and self.fds() <= fds + FD_SLACK)

        try:
            wait_until(settled, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                "leak: in-process node greenlets %d -> %d (calls %d, detached %d, "
                "background %d); node process descriptors %d -> %d" % (
                    greenlets, self.greenlets(), len(self.node._calls),
                    len(self.node._detached), len(self.node._background), fds,
                    self.fds())) from None


_UNQUOTED = re.compile(r"[^'\"\\]{4,}")


def names_value(message: str, value: str) -> bool:
    """Does ``message`` quote the start of ``value`` (as %r would)?

    Values whose start holds a quote or a backslash are not checked:
    their repr depends on the rest of the text.
    """
    head = value[:8]
    if not _UNQUOTED.fullmatch(head):
        return True
    return repr(head)[1:-1] in message
