"""A client of goverse gates: calls objects and receives their pushes.

:class:`Client` speaks the published gate protocol (``gate.GateService``)
to one of several gates. A request that could not reach a gate (the
connection failed) is sent to the next gate in the list; creates and
deletes, which are idempotent, also move on when a gate dies while they
are in flight. A call that may have reached a gate is never sent twice: it
fails with :class:`~goverse.errors.PeerUnavailable` instead.

Pushes arrive on the stream :meth:`Client.register` opens. When that
stream breaks (its gate stopped), the client registers again, at the next
gate if need be; the new registration has a new client id, announced to
the ``on_register`` callback so the application can tell its objects.

Errors raised by objects come back as the goverse error class they had in
the cluster (``UnknownObjectType``, ``CallTimeout``, ...).

The client works in a process patched by gevent (callbacks then run in a
greenlet) and in a plain threaded one (a daemon thread).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2

from . import runtime
from .callctx import check_timeout
from ._pb import gate_pb2 as gate_pb
from ._pb import gate_pb2_grpc as gate_grpc
from .errors import (
    ERROR_KIND_METADATA,
    CallTimeout,
    ConfigError,
    InvalidObjectId,
    NodeStopped,
    PeerUnavailable,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
    error_from_rpc,
)

__all__ = ["Client"]

log = logging.getLogger(__name__)

#: Longest pause between attempts to register again after the stream broke.
RECONNECT_BACKOFF_MAX = 2.0

_CLOSED = object()

CHANNEL_OPTIONS = [
    # grpc shares connections between channels of a process by default, and
    # with them the reconnect backoff of an address that failed: a new
    # client would then fail at once on a gate that has come back.
    ("grpc.use_local_subchannel_pool", 1),
    # A gate that restarts is retried within seconds, not minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class Client:
    """A connection to a goverse cluster through its gates."""

    def __init__(self, addresses: Sequence[str] | str, *, timeout: float = 10.0,
                 reconnect: bool = True, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        """Connect to the first reachable gate of ``addresses``.

        With ``tls_ca`` the connection uses TLS, checking the gate's
        certificate against that CA file; ``tls_cert``/``tls_key`` add a
        client certificate for gates that require one.
        """
        if isinstance(addresses, str):
            addresses = [addresses]
        if not addresses:
            raise ValueError("Client needs at least one gate address")
        if runtime.is_patched():
            runtime.init_grpc()
        self.addresses = list(addresses)
        self.timeout = check_timeout(timeout)
        self.reconnect = reconnect
        self._current = 0
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, gate_grpc.GateServiceStub] = {}
        self._credentials = _credentials(tls_ca, tls_cert, tls_key)
        self._client_id: str | None = None
        self._stream: Any = None
        self._receiver: threading.Thread | None = None
        self._on_message: Callable[[any_pb2.Any], Any] | None = None
        self._on_register: Callable[[str], Any] | None = None
        self._inbox: queue.Queue = queue.Queue()
        self._registered = threading.Event()
        self._closed = False
        self.statistics = {"failovers": 0, "registrations": 0, "messages": 0}

    def __repr__(self) -> str:
        return "<Client gate=%s id=%s>" % (self.address, self._client_id)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def address(self) -> str:
        """The gate requests go to now."""
        return self.addresses[self._current]

    @property
    def client_id(self) -> str | None:
        """This client's id at its gate, once registered (changes on re-registration)."""
        return self._client_id

    # ---- requests ------------------------------------------------------------

    def call(self, type_name: str, object_id: str, method: str, request: Any,
             response_type: type | None = None, *, timeout: float | None = None) -> Any:
        """Call ``method`` of an object; returns the response Any, or unpacked.

        ``request`` is a protobuf message (packed here) or an Any. With
        ``response_type`` the answer is unpacked into that message class.
        """
        packed = request if isinstance(request, any_pb2.Any) else _pack(request)
        _check_text(type_name, object_id, method)
        message = gate_pb.CallObjectRequest(client_id=self._client_id or "", type=type_name,
                                            id=object_id, method=method, request=packed)
        answer = self._invoke("CallObject", message, timeout, idempotent=False,
                              what="%s(%s).%s" % (type_name, object_id, method))
        if response_type is None:
            return answer.response
        response = response_type()
        if not answer.response.Unpack(response):
            raise WrongMessageType("%s(%s).%s answered %r, not %s" % (
                type_name, object_id, method, answer.response.type_url,
                response_type.DESCRIPTOR.full_name))
        return response

    def create(self, type_name: str, object_id: str = "", *,
               timeout: float | None = None) -> str:
        """Create an object (an empty id asks for a generated one); returns its id."""
        _check_text(type_name, object_id)
        message = gate_pb.CreateObjectRequest(type=type_name, id=object_id)
        return self._invoke("CreateObject", message, timeout, idempotent=True,
                            what="%s(%s)" % (type_name, object_id)).id

    def delete(self, type_name: str, object_id: str, *, timeout: float | None = None) -> None:
        """Delete an object of the given type; deleting a missing one succeeds."""
        _check_text(type_name, object_id)
        message = gate_pb.DeleteObjectRequest(type=type_name, id=object_id)
        self._invoke("DeleteObject", message, timeout, idempotent=True,
                     what="%s(%s)" % (type_name, object_id))

    def _invoke(self, rpc: str, message: Any, timeout: float | None, *,
                idempotent: bool, what: str) -> Any:
        if self._closed:
            raise NodeStopped("client is closed")
        timeout = self.timeout if timeout is None else check_timeout(timeout)
        deadline = time.monotonic() + timeout
        failures = []
        for _ in range(len(self.addresses)):
            address = self.address
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                return getattr(self._stub(address), rpc)(message, timeout=left)
            except grpc.RpcError as exc:
                if not _gate_unreachable(exc, idempotent):
                    error = error_from_rpc(exc)
                    if isinstance(error, CallTimeout) and str(error).startswith(
                            "DEADLINE_EXCEEDED:"):
                        # The client's own deadline: gRPC's words name nothing.
                        error = CallTimeout("%s %s: no answer from gate %s within %.3gs" % (
                            rpc, what, address, timeout))
                    raise error from exc
                failures.append("%s: %s" % (address, exc.details()))
                self._fail_over(address)
        if not failures:
            raise CallTimeout("%s %s did not complete within its %.3gs deadline" % (
                rpc, what, timeout))
        raise PeerUnavailable("%s: no gate could be reached (%s)%s" % (
            rpc, "; ".join(failures), self._tls_hint(failures)))

    def _tls_hint(self, failures: list[str]) -> str:
        # A gate that serves TLS ends a plaintext connection in its handshake,
        # which grpc reports only as a closed socket.
        if self._credentials is None and any("Socket closed" in f for f in failures):
            return ("; the gate may require TLS: a plaintext connection to a TLS "
                    "gate fails like this (pass tls_ca=...)")
        return ""

    def _stub(self, address: str) -> gate_grpc.GateServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            if self._credentials is not None:
                channel = grpc.secure_channel(address, self._credentials,
                                              options=CHANNEL_OPTIONS)
            else:
                channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            self._channels[address] = channel
            stub = self._stubs[address] = gate_grpc.GateServiceStub(channel)
        return stub

    def _fail_over(self, failed: str) -> None:
        if self.address == failed and len(self.addresses) > 1:
            self._current = (self._current + 1) % len(self.addresses)
            self.statistics["failovers"] += 1
            log.warning("gate %s unreachable; using %s", failed, self.address)

    # ---- pushes --------------------------------------------------------------

    def register(self, on_message: Callable[[any_pb2.Any], Any] | None = None, *,
                 on_register: Callable[[str], Any] | None = None) -> str:
        """Open the push stream and return this client's id.

        Each pushed message (a ``google.protobuf.Any``) goes to
        ``on_message``, run in the receiving greenlet (or thread), or, without
        a callback, to :meth:`messages`. ``on_register`` hears every new id
        after a re-registration.
        """
        if self._receiver is not None:
            raise RuntimeError("%r is already registered" % (self,))
        self._on_message = on_message
        self._on_register = on_register
        stream = self._open_stream()
        self._receiver = threading.Thread(target=self._receive, args=(stream,),
                                          name="goverse-client-push", daemon=True)
        self._receiver.start()
        return self._client_id

    def _open_stream(self) -> Any:
        """Register at the current gate, or else at the next ones; returns the stream."""
        failures = []
        for _ in range(len(self.addresses)):
            address = self.address
            try:
                stream = self._stub(address).Register(gate_pb.Empty())
                self._stream = stream
                first = next(stream)
            except grpc.RpcError as exc:
                failures.append("%s: %s" % (address, exc.details()))
                self._fail_over(address)
                continue
            except StopIteration:
                failures.append("%s: the stream ended before registering" % (address,))
                self._fail_over(address)
                continue
            answer = gate_pb.RegisterResponse()
            if not first.Unpack(answer):
                raise WrongMessageType("gate %s opened its stream with %r, not a "
                                       "gate.RegisterResponse" % (address, first.type_url))
            self._client_id = answer.client_id
            self.statistics["registrations"] += 1
            self._registered.set()
            log.info("registered at gate %s as %s", address, answer.client_id)
            return stream
        raise PeerUnavailable("could not register at any gate (%s)%s" % (
            "; ".join(failures), self._tls_hint(failures)))

    def _receive(self, stream: Any) -> None:
        while not self._closed:
            self._drain(stream)
            if self._closed or not self.reconnect:
                break
            stream = self._register_again()
            if stream is None:
                break
        self._inbox.put(_CLOSED)

    def _drain(self, stream: Any) -> None:
        try:
            for message in stream:
                self.statistics["messages"] += 1
                self._dispatch(message)
        except grpc.RpcError as exc:
            if not self._closed:
                log.warning("push stream from gate %s broke: %s", self.address, exc.details())

    def _dispatch(self, message: any_pb2.Any) -> None:
        if self._on_message is None:
            self._inbox.put(message)
            return
        try:
            self._on_message(message)
        except Exception:
            log.exception("on_message callback of %r failed", self)

    def _register_again(self) -> Any:
        self._registered.clear()
        backoff = 0.05
        while not self._closed:
            try:
                stream = self._open_stream()
            except PeerUnavailable as exc:
                log.info("%r: registering again failed (%s); retrying", self, exc)
                time.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, RECONNECT_BACKOFF_MAX)
                continue
            if self._on_register is not None:
                try:
                    self._on_register(self._client_id)
                except Exception:
                    log.exception("on_register callback of %r failed", self)
            return stream
        return None

    def wait_registered(self, timeout: float | None = None) -> str | None:
        """Wait until the push stream is open (after a re-registration too)."""
        self._registered.wait(timeout)
        return self._client_id if self._registered.is_set() else None

    def next_message(self, timeout: float | None = None) -> any_pb2.Any:
        """The next pushed message; raises :class:`CallTimeout` after ``timeout``."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise CallTimeout("no push message within %.3gs" % (timeout,)) from None
        if item is _CLOSED:
            self._inbox.put(_CLOSED)
            raise NodeStopped("the push stream of %r is closed" % (self,))
        return item

    def messages(self) -> Iterator[any_pb2.Any]:
        """Pushed messages (when ``register`` got no callback) until closed."""
        while True:
            try:
                yield self.next_message()
            except NodeStopped:
                return

    # ---- shutdown ------------------------------------------------------------

    def close(self) -> None:
        """End the push stream and close every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stream is not None:
            self._stream.cancel()
        for channel in self._channels.values():
            channel.close()
        if self._receiver is not None and self._receiver is not threading.current_thread():
            self._receiver.join(timeout=5)
        self._inbox.put(_CLOSED)


def _credentials(ca: str | None, cert: str | None,
                 key: str | None) -> grpc.ChannelCredentials | None:
    if not ca:
        if cert or key:
            raise ValueError("a client certificate needs tls_ca as well")
        return None
    if bool(cert) != bool(key):
        raise ValueError("tls_cert and tls_key must be given together")

    def read(path: str | None, name: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError("Client %s: cannot read %r: %s" % (
                name, path, exc.strerror or exc)) from exc
    return grpc.ssl_channel_credentials(root_certificates=read(ca, "tls_ca"),
                                        private_key=read(key, "tls_key"),
                                        certificate_chain=read(cert, "tls_cert"))


#: The error a name that is not valid text raises, by the field it is in.
_BAD_TEXT = (("object type", UnknownObjectType), ("object id", InvalidObjectId),
             ("method", UnknownMethod))


def _check_text(*names: str) -> None:
    """Raise the field's error for a name protobuf cannot send (a lone surrogate)."""
    for (what, error), name in zip(_BAD_TEXT, names):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise error("%s %r is not valid UTF-8 text" % (what, name[:200])) from None
        except AttributeError:
            raise error("%s must be a str, got %s %r" % (
                what, type(name).__name__, name)) from None


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _gate_unreachable(exc: grpc.RpcError, idempotent: bool) -> bool:
    """Did the request fail because no gate answered (so another may be tried)?"""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    if any(key == ERROR_KIND_METADATA for key, _ in exc.trailing_metadata() or ()):
        return False  # the gate answered: the cluster is what is unavailable
    if idempotent:
        return True
    # A call is retried elsewhere only when it surely never left: the
    # connection could not be made at all.
    return "connect" in (exc.details() or "").lower()

