"""A thin etcd v3 client written on the generated gRPC stubs.

goverse keeps membership and the shard map in etcd. This module is the one
place that speaks etcd's wire protocol: key-value reads and writes,
transactions, leases and watches, each failure mapped to a goverse error
that names the endpoint and the operation.

It is written on the stubs in ``pyetcd.etcdrpc`` rather than on a client
class, because the watch of those clients runs in a thread that hides the
death of its stream; here a broken watch always reaches the caller.

Under gevent (the way goverse runs), grpc's gevent integration makes the
blocking calls cooperative, and the ``threading`` primitives used below are
greenlets; unpatched, the same code runs on native threads.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import grpc
from pyetcd.etcdrpc import kv_pb2, rpc_pb2, rpc_pb2_grpc

from .errors import ConfigError, EtcdUnavailable, GoverseError

log = logging.getLogger(__name__)

__all__ = [
    "EtcdAuthError",
    "EtcdClient",
    "EtcdRequestError",
    "KeyValue",
    "PrefixWatcher",
    "TxnResult",
    "WatchCompacted",
    "WatchEvent",
    "WatchStream",
    "cmp_create_revision",
    "cmp_mod_revision",
    "cmp_value",
    "cmp_version",
    "op_delete",
    "op_get",
    "op_put",
    "prefix_range_end",
]


class EtcdRequestError(GoverseError):
    """etcd refused a request as invalid (too many operations, bad range...)."""


class EtcdAuthError(GoverseError):
    """etcd refused the credentials, or the user lacks a permission."""


class WatchCompacted(GoverseError):
    """A watch asked for history that etcd has already compacted away.

    NOTE: this is deliberately not an :class:`EtcdUnavailable`: retrying the
    same watch can never succeed. The remedy is to reload the current state
    and watch from the revision of that snapshot.
    """

    def __init__(self, message: str, compact_revision: int) -> None:
        super().__init__(message)
        self.compact_revision = compact_revision


# -- values ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as etcd stores it, with its revisions and lease."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change seen by a watch.

    ``kind`` is "put" or "delete". For a delete, ``kv`` has an empty value
    and its ``mod_revision`` is the revision of the delete.
    """

    kind: str
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class TxnResult:
    """The outcome of a transaction.

    ``responses`` holds one entry per executed operation: a list of
    :class:`KeyValue` for a get, the revision for a put, and the number of
    deleted keys for a delete.
    """

    succeeded: bool
    revision: int
    responses: list


def _to_bytes(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else bytes(text)


def _key_value(kv: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(
        key=kv.key.decode("utf-8"),
        value=kv.value,
        mod_revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        lease=kv.lease,
    )


def _watch_event(event: kv_pb2.Event) -> WatchEvent:
    kind = "delete" if event.type == kv_pb2.Event.DELETE else "put"
    return WatchEvent(kind=kind, kv=_key_value(event.kv))


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key under ``prefix``."""
    raw = bytearray(_to_bytes(prefix))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        # An empty prefix (or one of only 0xff bytes) means "to the end".
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


# -- transaction builders --------------------------------------------------

_COMPARE_RESULTS = {
    "==": rpc_pb2.Compare.EQUAL,
    "!=": rpc_pb2.Compare.NOT_EQUAL,
    "<": rpc_pb2.Compare.LESS,
    ">": rpc_pb2.Compare.GREATER,
}


def _compare(key: str, op: str, target: int, **field: Any) -> rpc_pb2.Compare:
    try:
        result = _COMPARE_RESULTS[op]
    except KeyError:
        raise ConfigError(
            "etcd compare operator must be one of ==, !=, <, >; got %r" % (op,)
        ) from None
    return rpc_pb2.Compare(result=result, target=target, key=_to_bytes(key), **field)


def cmp_version(key: str, op: str, value: int) -> rpc_pb2.Compare:
    """Compare the key's version (0 when the key does not exist)."""
    return _compare(key, op, rpc_pb2.Compare.VERSION, version=value)


def cmp_mod_revision(key: str, op: str, rev: int) -> rpc_pb2.Compare:
    """Compare the revision of the key's last modification."""
    return _compare(key, op, rpc_pb2.Compare.MOD, mod_revision=rev)


def cmp_create_revision(key: str, op: str, rev: int) -> rpc_pb2.Compare:
    """Compare the revision at which the key was created (0 when absent)."""
    return _compare(key, op, rpc_pb2.Compare.CREATE, create_revision=rev)


def cmp_value(key: str, op: str, value: str | bytes) -> rpc_pb2.Compare:
    """Compare the key's value."""
    return _compare(key, op, rpc_pb2.Compare.VALUE, value=_to_bytes(value))


def cmp_lease(key: str, op: str, lease: int) -> rpc_pb2.Compare:
    """Compare the lease the key is attached to (0: none, or the key is absent)."""
    return _compare(key, op, rpc_pb2.Compare.LEASE, lease=lease)


def op_put(key: str, value: str | bytes, lease: int = 0) -> rpc_pb2.RequestOp:
    """A put inside a transaction."""
    request = rpc_pb2.PutRequest(key=_to_bytes(key), value=_to_bytes(value), lease=lease)
    return rpc_pb2.RequestOp(request_put=request)


def op_delete(key: str) -> rpc_pb2.RequestOp:
    """A delete of one key inside a transaction."""
    request = rpc_pb2.DeleteRangeRequest(key=_to_bytes(key))
    return rpc_pb2.RequestOp(request_delete_range=request)


def op_get(key: str) -> rpc_pb2.RequestOp:
    """A read of one key inside a transaction."""
    return rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=_to_bytes(key)))


def _op_response(response: rpc_pb2.ResponseOp) -> Any:
    which = response.WhichOneof("response")
    if which == "response_range":
        return [_key_value(kv) for kv in response.response_range.kvs]
    if which == "response_put":
        return response.response_put.header.revision
    if which == "response_delete_range":
        return response.response_delete_range.deleted
    return response


# -- errors -----------------------------------------------------------------

_Code = grpc.StatusCode

#: gRPC status of a failed etcd call -> the goverse error raised for it.
#: Transport trouble (and etcd's own "try again" answers) is unavailability.
_ERROR_BY_CODE: dict[grpc.StatusCode, type[GoverseError]] = {
    _Code.UNAVAILABLE: EtcdUnavailable,
    _Code.DEADLINE_EXCEEDED: EtcdUnavailable,
    _Code.CANCELLED: EtcdUnavailable,
    _Code.RESOURCE_EXHAUSTED: EtcdUnavailable,
    _Code.UNKNOWN: EtcdUnavailable,
    _Code.INTERNAL: EtcdUnavailable,
    _Code.UNAUTHENTICATED: EtcdAuthError,
    _Code.PERMISSION_DENIED: EtcdAuthError,
}

#: Answers that mean "your token is no good, authenticate again".
_STALE_TOKEN_DETAILS = (
    "invalid auth token",
    "revision of auth store is old",
    "user name is empty",
)


def _rpc_code(exc: grpc.RpcError) -> grpc.StatusCode:
    code = exc.code() if hasattr(exc, "code") else None
    return code or _Code.UNKNOWN


def _rpc_details(exc: grpc.RpcError) -> str:
    details = exc.details() if hasattr(exc, "details") else None
    return details or str(exc)


def _map_rpc_error(exc: grpc.RpcError, endpoint: str, operation: str) -> GoverseError:
    code = _rpc_code(exc)
    cls = _ERROR_BY_CODE.get(code, EtcdRequestError)
    if _is_stale_token(exc) or "authentication failed" in _rpc_details(exc):
        cls = EtcdAuthError
    return cls(
        "etcd %s at %s failed: %s: %s" % (operation, endpoint, code.name, _rpc_details(exc))
    )


def _is_stale_token(exc: grpc.RpcError) -> bool:
    if _rpc_code(exc) == _Code.UNAUTHENTICATED:
        return True
    details = _rpc_details(exc)
    return any(text in details for text in _STALE_TOKEN_DETAILS)


# -- the client ----------------------------------------------------------------

#: Channel options. Short reconnect backoff so a restarted etcd is found again
#: within a second; keepalive pings so a silently dead peer is noticed
#: (etcd refuses pings more often than every 5 s by default).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]

#: Keys read per request when loading a prefix; pages share one revision.
_PAGE_SIZE = 1000


class _Connection:
    """One channel to one endpoint, with the stubs used on it."""

    def __init__(self, endpoint: str, channel: grpc.Channel) -> None:
        self.endpoint = endpoint
        self.channel = channel
        self.kv = rpc_pb2_grpc.KVStub(channel)
        self.lease = rpc_pb2_grpc.LeaseStub(channel)
        self.watch = rpc_pb2_grpc.WatchStub(channel)
        self.auth = rpc_pb2_grpc.AuthStub(channel)


def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError("cannot read etcd %s %r: %s" % (what, path, exc)) from exc


class EtcdClient:
    """A connection to an etcd cluster: key-value, transactions, leases, watches.

    With several endpoints the client uses one at a time and moves to the
    next one after a call finds the current one unavailable; the failed call
    is not retried. Every unary call is bounded by ``timeout`` seconds.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 5.0,
        user: str | None = None,
        password: str | None = None,
        ca_cert: str | None = None,
        cert_key: str | None = None,
        cert_chain: str | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise ConfigError("EtcdClient needs at least one endpoint (host:port)")
        if (user is None) != (password is None):
            raise ConfigError("etcd user and password must be given together")
        self._endpoints = list(endpoints)
        self._timeout = timeout
        self._user = user
        self._password = password
        self._credentials = self._ssl_credentials(ca_cert, cert_key, cert_chain)
        self._lock = threading.Lock()
        self._index = 0
        self._connection: _Connection | None = None
        self._token: tuple[str, str] | None = None  # (endpoint, token)
        self._closed = False

    def __repr__(self) -> str:
        return "<EtcdClient %s%s>" % (self.endpoint, " closed" if self._closed else "")

    @property
    def endpoint(self) -> str:
        """The endpoint the next call goes to."""
        return self._endpoints[self._index]

    @property
    def timeout(self) -> float:
        """The deadline, in seconds, of each unary call."""
        return self._timeout

    # -- key-value

    def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None when it does not exist."""
        request = rpc_pb2.RangeRequest(key=_to_bytes(key))
        response = self._unary("get %r" % key, lambda c: c.kv.Range, request)
        return _key_value(response.kvs[0]) if response.kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix``, sorted by key, and the revision read."""
        kvs: list[KeyValue] = []
        start, revision = _to_bytes(prefix) or b"\0", 0
        while True:
            response = self._range_page(prefix, start, revision)
            revision = revision or response.header.revision
            kvs.extend(_key_value(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                return kvs, revision
            start = response.kvs[-1].key + b"\0"

    def _range_page(self, prefix: str, start: bytes, revision: int) -> Any:
        request = rpc_pb2.RangeRequest(
            key=start,
            range_end=prefix_range_end(prefix),
            limit=_PAGE_SIZE,
            revision=revision,
            sort_order=rpc_pb2.RangeRequest.ASCEND,
            sort_target=rpc_pb2.RangeRequest.KEY,
        )
        return self._unary("get prefix %r" % prefix, lambda c: c.kv.Range, request)

    def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        """Set the key; returns the revision of the write."""
        request = rpc_pb2.PutRequest(key=_to_bytes(key), value=_to_bytes(value), lease=lease)
        response = self._unary("put %r" % key, lambda c: c.kv.Put, request)
        return response.header.revision

    def delete(self, key: str) -> int:
        """Delete the key; returns how many keys were deleted (0 or 1)."""
        request = rpc_pb2.DeleteRangeRequest(key=_to_bytes(key))
        response = self._unary("delete %r" % key, lambda c: c.kv.DeleteRange, request)
        return response.deleted

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many were deleted."""
        request = rpc_pb2.DeleteRangeRequest(
            key=_to_bytes(prefix) or b"\0", range_end=prefix_range_end(prefix)
        )
        response = self._unary("delete prefix %r" % prefix, lambda c: c.kv.DeleteRange, request)
        return response.deleted

    def txn(
        self,
        compare: Iterable[rpc_pb2.Compare],
        success: Iterable[rpc_pb2.RequestOp],
        failure: Iterable[rpc_pb2.RequestOp] = (),
    ) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically."""
        request = rpc_pb2.TxnRequest(compare=compare, success=success, failure=failure)
        response = self._unary("txn", lambda c: c.kv.Txn, request)
        return TxnResult(
            succeeded=response.succeeded,
            revision=response.header.revision,
            responses=[_op_response(op) for op in response.responses],
        )

    def compact(self, revision: int, physical: bool = False) -> None:
        """Discard history before ``revision``; physical waits until it is gone."""
        request = rpc_pb2.CompactionRequest(revision=revision, physical=physical)
        self._unary("compact to %d" % revision, lambda c: c.kv.Compact, request)

    # -- leases

    def grant_lease(self, ttl: int) -> tuple[int, int]:
        """A new lease; returns its id and the TTL etcd granted (may be longer)."""
        request = rpc_pb2.LeaseGrantRequest(TTL=ttl)
        response = self._unary("grant lease", lambda c: c.lease.LeaseGrant, request)
        if response.error:
            raise EtcdRequestError(
                "etcd grant lease at %s refused: %s" % (self.endpoint, response.error)
            )
        return response.ID, response.TTL

    def keepalive_once(self, lease_id: int) -> int:
        """Refresh the lease once; returns its TTL, or 0 when it no longer exists."""

        def call(connection: _Connection, metadata: Any) -> int:
            requests = iter([rpc_pb2.LeaseKeepAliveRequest(ID=lease_id)])
            responses = connection.lease.LeaseKeepAlive(
                requests, timeout=self._timeout, metadata=metadata
            )
            try:
                for response in responses:
                    return max(response.TTL, 0)
            finally:
                responses.cancel()
            raise EtcdUnavailable(
                "etcd keepalive of lease %x at %s: stream ended without an answer"
                % (lease_id, connection.endpoint)
            )

        return self._invoke("keepalive lease %x" % lease_id, call)

    def revoke_lease(self, lease_id: int) -> None:
        """Revoke the lease and delete its keys; a lease already gone is fine."""
        request = rpc_pb2.LeaseRevokeRequest(ID=lease_id)
        try:
            self._unary("revoke lease %x" % lease_id, lambda c: c.lease.LeaseRevoke, request)
        except EtcdRequestError as exc:
            if "lease not found" not in str(exc):
                raise

    def lease_ttl(self, lease_id: int) -> int:
        """The lease's remaining TTL in seconds, or -1 when it no longer exists."""
        request = rpc_pb2.LeaseTimeToLiveRequest(ID=lease_id)
        response = self._unary(
            "lease ttl %x" % lease_id, lambda c: c.lease.LeaseTimeToLive, request
        )
        return response.TTL

    # -- watches

    def watch_prefix(
        self,
        prefix: str,
        start_revision: int,
        on_response: Callable[[list[WatchEvent], int], None],
        on_error: Callable[[GoverseError], None],
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> WatchStream:
        """Watch every key under ``prefix`` from ``start_revision`` on.

        See :class:`WatchStream` for when and where the callbacks run.
        """
        connection = self._current()
        metadata = self._auth_metadata(connection)
        return WatchStream(
            self, connection, prefix, start_revision, on_response, on_error, metadata,
            on_created=on_created,
        )

    def close(self) -> None:
        """Close the channel; open watch streams end and report an error."""
        with self._lock:
            self._closed = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.channel.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- plumbing

    def _unary(self, operation: str, method: Callable[[_Connection], Any], request: Any) -> Any:
        def call(connection: _Connection, metadata: Any) -> Any:
            return method(connection)(request, timeout=self._timeout, metadata=metadata)

        return self._invoke(operation, call)

    def _invoke(self, operation: str, call: Callable[[_Connection, Any], Any]) -> Any:
        """Run ``call`` on the current connection, mapping failures to errors.

        A rejected token is refreshed and the call made once more.
        """
        retried = False
        while True:
            connection = self._current()
            metadata = self._auth_metadata(connection)
            try:
                return call(connection, metadata)
            except grpc.RpcError as exc:
                if self._user and not retried and _is_stale_token(exc):
                    self._forget_token()
                    retried = True
                    continue
                self._note_failure(connection, exc)
                raise _map_rpc_error(exc, connection.endpoint, operation) from exc
            except ValueError as exc:
                # grpc's answer to a call on a channel closed meanwhile.
                if not self._closed:
                    raise
                raise EtcdUnavailable(
                    "etcd %s at %s: the client was closed" % (operation, connection.endpoint)
                ) from exc

    def _current(self) -> _Connection:
        with self._lock:
            if self._closed:
                raise EtcdUnavailable("etcd client for %s is closed" % self.endpoint)
            if self._connection is None:
                endpoint = self._endpoints[self._index]
                self._connection = _Connection(endpoint, self._open_channel(endpoint))
            return self._connection

    def _open_channel(self, endpoint: str) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
        return grpc.secure_channel(endpoint, self._credentials, options=_CHANNEL_OPTIONS)

    @staticmethod
    def _ssl_credentials(
        ca_cert: str | None, cert_key: str | None, cert_chain: str | None
    ) -> grpc.ChannelCredentials | None:
        if ca_cert is None:
            if cert_key or cert_chain:
                raise ConfigError("etcd client certificates need ca_cert as well")
            return None
        if (cert_key is None) != (cert_chain is None):
            raise ConfigError("etcd cert_key and cert_chain must be given together")
        return grpc.ssl_channel_credentials(
            root_certificates=_read_file(ca_cert, "CA certificate"),
            private_key=_read_file(cert_key, "client key"),
            certificate_chain=_read_file(cert_chain, "client certificate"),
        )

    def _note_failure(self, connection: _Connection, exc: grpc.RpcError) -> None:
        """Move to the next endpoint when this one is unreachable."""
        if _rpc_code(exc) != _Code.UNAVAILABLE or len(self._endpoints) < 2:
            return
        with self._lock:
            if self._connection is not connection:
                return  # someone else already moved on
            self._connection = None
            self._index = (self._index + 1) % len(self._endpoints)
            log.warning(
                "etcd endpoint %s unavailable; next calls go to %s",
                connection.endpoint,
                self._endpoints[self._index],
            )
        connection.channel.close()

    def _auth_metadata(self, connection: _Connection) -> list[tuple[str, str]] | None:
        if self._user is None:
            return None
        token = self._token
        if token is None or token[0] != connection.endpoint:
            # Simple tokens are known only to the member that issued them.
            token = (connection.endpoint, self._authenticate(connection))
            self._token = token
        return [("token", token[1])]

    def _authenticate(self, connection: _Connection) -> str:
        request = rpc_pb2.AuthenticateRequest(name=self._user, password=self._password)
        try:
            response = connection.auth.Authenticate(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            self._note_failure(connection, exc)
            operation = "authenticate as %r" % self._user
            raise _map_rpc_error(exc, connection.endpoint, operation) from exc
        return response.token

    def _forget_token(self) -> None:
        self._token = None


# -- watch stream -----------------------------------------------------------


class WatchStream:
    """One open Watch stream on a prefix, read by its own thread or greenlet.

    ``on_response(events, revision)`` is called from the reader for every
    response that carries events, in order; ``revision`` is the response
    header's revision (each event's ``kv.mod_revision`` says where it
    belongs). ``on_error(exc)`` is called exactly once when the stream ends
    for any reason other than :meth:`cancel`; a compacted start revision
    arrives as :class:`WatchCompacted`. ``on_created(revision)``, if given,
    is called when etcd confirms the watch, with etcd's current revision.
    Callbacks must not block.
    """

    def __init__(
        self,
        client: EtcdClient,
        connection: _Connection,
        prefix: str,
        start_revision: int,
        on_response: Callable[[list[WatchEvent], int], None],
        on_error: Callable[[GoverseError], None],
        metadata: Any,
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._connection = connection
        self.prefix = prefix
        self.start_revision = start_revision
        self._on_response = on_response
        self._on_error = on_error
        self._on_created = on_created
        self._cancelled = False
        self._created = threading.Event()
        self._requests: queue.Queue = queue.Queue()
        self._requests.put(self._create_request())
        self._call = connection.watch.Watch(self._request_iterator(), metadata=metadata)
        self._reader = threading.Thread(
            target=self._read, name="etcd-watch %s" % prefix, daemon=True
        )
        self._reader.start()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else ("open" if self.created else "opening")
        return "<WatchStream %r from %d at %s %s>" % (
            self.prefix,
            self.start_revision,
            self._connection.endpoint,
            state,
        )

    @property
    def created(self) -> bool:
        """Whether etcd confirmed the watch."""
        return self._created.is_set()

    def cancel(self, timeout: float | None = 5.0) -> None:
        """End the stream without calling ``on_error``; waits for the reader."""
        self._cancelled = True
        self._requests.put(None)
        self._call.cancel()
        if threading.current_thread() is not self._reader:
            self._reader.join(timeout)

    def _create_request(self) -> rpc_pb2.WatchRequest:
        create = rpc_pb2.WatchCreateRequest(
            key=_to_bytes(self.prefix) or b"\0",
            range_end=prefix_range_end(self.prefix),
            start_revision=self.start_revision,
        )
        return rpc_pb2.WatchRequest(create_request=create)

    def _request_iterator(self) -> Iterable[rpc_pb2.WatchRequest]:
        # Held open until cancel(): ending it would half-close the stream.
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                self._handle(response)
            error: GoverseError = EtcdUnavailable(
                "etcd watch of %r at %s: the stream ended"
                % (self.prefix, self._connection.endpoint)
            )
        except grpc.RpcError as exc:
            error = self._rpc_failure(exc)
        except GoverseError as exc:
            self._call.cancel()
            error = exc
        except Exception as exc:
            log.exception("%r: reading the stream failed", self)
            self._call.cancel()
            error = EtcdRequestError("etcd watch of %r: bad response: %s" % (self.prefix, exc))
            error.__cause__ = exc
        finally:
            self._requests.put(None)
        if not self._cancelled:
            self._on_error(error)

    def _rpc_failure(self, exc: grpc.RpcError) -> GoverseError:
        client = self._client
        if _is_stale_token(exc):
            client._forget_token()
        client._note_failure(self._connection, exc)
        operation = "watch of %r" % self.prefix
        error = _map_rpc_error(exc, self._connection.endpoint, operation)
        error.__cause__ = exc
        return error

    def _handle(self, response: rpc_pb2.WatchResponse) -> None:
        if response.compact_revision:
            raise WatchCompacted(
                "etcd watch of %r at %s from revision %d: history compacted up to %d"
                % (
                    self.prefix,
                    self._connection.endpoint,
                    self.start_revision,
                    response.compact_revision,
                ),
                response.compact_revision,
            )
        if response.canceled:
            raise EtcdRequestError(
                "etcd watch of %r at %s was cancelled by etcd: %s"
                % (self.prefix, self._connection.endpoint, response.cancel_reason or "no reason")
            )
        if response.created:
            self._created.set()
            if self._on_created is not None:
                self._on_created(response.header.revision)
        if response.events:
            events = [_watch_event(event) for event in response.events]
            try:
                self._on_response(events, response.header.revision)
            except Exception:
                log.exception("%r: on_response failed; the stream goes on", self)


# -- prefix watcher ----------------------------------------------------------

_STOP = object()


@dataclass(frozen=True, slots=True)
class _Created:
    """etcd confirmed a watch; ``revision`` is its current revision then."""

    revision: int


class _HistoryLost(GoverseError):
    """etcd's revision is behind what the watcher has already seen."""


class PrefixWatcher:
    """Keeps a caller's view of a prefix current across etcd restarts.

    :meth:`start` loads the prefix and hands it to ``on_snapshot(kvs,
    revision)``, then follows changes through ``on_events(events,
    revision)``, where ``revision`` is that of the last event. When the
    stream breaks, it watches again from the last revision seen plus one,
    after an exponential backoff with jitter; when etcd has compacted that
    revision, it loads the prefix again and calls ``on_snapshot`` again.

    NOTE: after :meth:`start` returns, callbacks run one at a time, in
    order, on the watcher's own thread or greenlet. They must not block.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        *,
        on_snapshot: Callable[[list[KeyValue], int], None],
        on_events: Callable[[list[WatchEvent], int], None],
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        name: str = "",
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.name = name or prefix
        self._on_snapshot = on_snapshot
        self._on_events = on_events
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._backoff = min_backoff
        self._last_revision = 0
        self._stream: WatchStream | None = None
        self._connected = False
        self._inbox: queue.Queue | None = None
        self._stopping = threading.Event()
        self._runner: threading.Thread | None = None
        self._reconnects = 0
        self._connected_since_break = False
        self._reloads = 0
        self._events = 0

    def __repr__(self) -> str:
        return "<PrefixWatcher %s %r at revision %d%s>" % (
            self.name,
            self.prefix,
            self._last_revision,
            " connected" if self.connected else "",
        )

    @property
    def last_revision(self) -> int:
        """The revision the caller's view is current to."""
        return self._last_revision

    @property
    def connected(self) -> bool:
        """Whether a watch stream is open and confirmed by etcd."""
        return self._connected

    def statistics(self) -> dict[str, int]:
        """Counters for monitoring: reconnects, snapshot reloads, events."""
        return {
            "reconnects": self._reconnects,
            "reloads": self._reloads,
            "events": self._events,
            "last_revision": self._last_revision,
        }

    def start(self) -> PrefixWatcher:
        """Load the snapshot now (errors propagate), then follow changes."""
        if self._runner is not None:
            raise GoverseError("%r was already started" % (self,))
        self._load_snapshot()
        self._runner = threading.Thread(
            target=self._run, name="etcd-watcher %s" % self.name, daemon=True
        )
        self._runner.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop following changes and wait for the watcher to end; idempotent."""
        self._stopping.set()
        inbox = self._inbox
        if inbox is not None:
            inbox.put(_STOP)
        runner = self._runner
        if runner is not None and runner is not threading.current_thread():
            runner.join(timeout)
            if runner.is_alive():
                log.warning("%r did not stop within %s s", self, timeout)

    # -- the loop

    def _run(self) -> None:
        needs_snapshot = False
        while not self._stopping.is_set():
            try:
                if needs_snapshot:
                    self._load_snapshot()
                    needs_snapshot = False
                self._follow()
            except (WatchCompacted, _HistoryLost) as exc:
                log.warning("%r: %s; reloading the snapshot", self, exc)
                needs_snapshot = True
            except GoverseError as exc:
                self._reconnects += 1
                delay = self._next_delay()
                # The first break says why at WARNING; repeats while etcd
                # stays away are one line each, without the traceback.
                first = self._reconnects == 1 or self._connected_since_break
                self._connected_since_break = False
                log.log(logging.WARNING if first else logging.INFO,
                        "etcd watch of %r (%s) broke: %s; watching again from revision %d "
                        "in %.2f s", self.prefix, self.name, exc, self._last_revision + 1,
                        delay)
                self._stopping.wait(delay)

    def _load_snapshot(self) -> None:
        kvs, revision = self._client.get_prefix(self.prefix)
        if self._runner is not None:
            self._reloads += 1
        self._last_revision = revision
        self._deliver(self._on_snapshot, kvs, revision)

    def _follow(self) -> None:
        """Watch until the stream breaks (raises) or the watcher stops."""
        inbox: queue.Queue = queue.Queue()
        self._inbox = inbox
        if self._stopping.is_set():
            return
        self._stream = self._client.watch_prefix(
            self.prefix,
            self._last_revision + 1,
            lambda events, revision: inbox.put((events, revision)),
            inbox.put,
            on_created=lambda revision: inbox.put(_Created(revision)),
        )
        try:
            self._dispatch(inbox)
        finally:
            self._connected = False
            self._stream.cancel()
            self._stream = None

    def _dispatch(self, inbox: queue.Queue) -> None:
        while True:
            item = inbox.get()
            if item is _STOP:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, _Created):
                self._check_history(item.revision)
                self._connected = True
                self._connected_since_break = True
                self._backoff = self._min_backoff
                continue
            events, _ = item
            self._last_revision = events[-1].kv.mod_revision
            self._events += len(events)
            self._deliver(self._on_events, events, self._last_revision)

    def _deliver(self, callback: Callable[..., None], *args: Any) -> None:
        # A failing callback is a bug in the caller; the view must keep
        # moving, so it is logged and the watcher goes on.
        try:
            callback(*args)
        except Exception:
            log.exception("%r: %s failed", self, getattr(callback, "__name__", callback))

    def _check_history(self, current: int) -> None:
        # An etcd whose data was wiped (or another cluster at the same
        # address) answers with a smaller revision; resuming from ours would
        # skip every key it writes until it catches up.
        if current < self._last_revision:
            raise _HistoryLost(
                "etcd revision went back from %d to %d (its data was lost or "
                "replaced)" % (self._last_revision, current)
            )

    def _next_delay(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self._max_backoff)
        return delay * random.uniform(0.5, 1.0)
