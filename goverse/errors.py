"""The goverse exception tree and its mapping to gRPC status codes.

Every error goverse raises derives from :class:`GoverseError`. Errors cross
node boundaries by *kind* (the class name) so that the caller re-raises the
same class the remote side raised; unknown kinds arrive as
:class:`RemoteError`.
"""

from __future__ import annotations

import grpc


class GoverseError(Exception):
    """Root of every error goverse raises."""

    #: gRPC status used when this error answers a unary RPC.
    grpc_code = grpc.StatusCode.UNKNOWN


class ConfigError(GoverseError, ValueError):
    """A setting has a value that cannot be used."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidObjectId(GoverseError, ValueError):
    """An object id is empty, too long, or not valid text."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class UnknownObjectType(GoverseError, LookupError):
    """No object class is registered under the given type name."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class UnknownMethod(GoverseError, LookupError):
    """The object type has no exposed method of the given name."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class WrongMessageType(GoverseError, TypeError):
    """A request or response is not the protobuf message the method declares."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ObjectTypeMismatch(GoverseError):
    """An object exists under the id with a different type."""

    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class ObjectNotFound(GoverseError, LookupError):
    """The object does not exist (and was not to be created)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class ObjectCreationFailed(GoverseError):
    """The object's ``on_created`` hook raised; the object was discarded."""

    grpc_code = grpc.StatusCode.ABORTED


class NoRoute(GoverseError):
    """No node currently owns the object's shard, or its node is unknown."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class NotOwner(GoverseError):
    """This node does not own the object; the message names the owner it knows."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ShardMoved(NotOwner):
    """The shard's owner changed since the caller routed the request."""


class CallTimeout(GoverseError, TimeoutError):
    """A call, create or delete did not finish before its deadline."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class NodeStopped(GoverseError):
    """The node is stopping or stopped and takes no more work."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class PeerUnavailable(GoverseError):
    """The connection to another node failed or broke."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class PeerUnreachable(PeerUnavailable):
    """Another node could not be reached at all: the request was never delivered.

    Unlike other connection failures this one is safe to retry elsewhere.
    """


class PeerOverloaded(GoverseError):
    """Too many requests are already in flight to another node."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class MessageTooLarge(GoverseError, ValueError):
    """A request or response exceeds the configured message size."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class EtcdUnavailable(GoverseError):
    """etcd could not be reached or did not answer in time."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class NotPatched(GoverseError, RuntimeError):
    """The process was not monkey-patched by gevent before starting a node."""


class OperationCancelled(GoverseError):
    """An asynchronous create or delete was cancelled (its node stopped)."""

    grpc_code = grpc.StatusCode.CANCELLED


class RemoteError(GoverseError):
    """An error of a kind this side does not know, raised by another node."""


class ObjectMethodError(GoverseError):
    """A user method raised an exception that is not a goverse error."""

    grpc_code = grpc.StatusCode.INTERNAL


def _error_classes() -> dict[str, type[GoverseError]]:
    found: dict[str, type[GoverseError]] = {}
    pending: list[type[GoverseError]] = [GoverseError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


_BY_KIND = _error_classes()

#: gRPC status code -> error class, for answers from nodes that carry no kind.
_BY_GRPC_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidObjectId,
    grpc.StatusCode.NOT_FOUND: ObjectNotFound,
    grpc.StatusCode.ALREADY_EXISTS: ObjectTypeMismatch,
    grpc.StatusCode.FAILED_PRECONDITION: NotOwner,
    grpc.StatusCode.DEADLINE_EXCEEDED: CallTimeout,
    grpc.StatusCode.UNAVAILABLE: PeerUnavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: PeerOverloaded,
    grpc.StatusCode.CANCELLED: OperationCancelled,
}

#: Metadata key under which a node names the error kind of a failed RPC.
ERROR_KIND_METADATA = "goverse-error-kind"


def error_kind(exc: BaseException) -> str:
    """The wire name of an exception: its class name if it is a goverse error."""
    if isinstance(exc, GoverseError):
        return type(exc).__name__
    return ObjectMethodError.__name__


def error_from_kind(kind: str, message: str) -> GoverseError:
    """Rebuild the exception a remote node reported as ``kind``."""
    cls = _BY_KIND.get(kind)
    if cls is None:
        return RemoteError("%s: %s" % (kind, message))
    return cls(message)


def error_from_rpc(exc: grpc.RpcError) -> GoverseError:
    """Map a failed gRPC call to the goverse error it carries."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    kind = None
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == ERROR_KIND_METADATA:
            kind = value
    if kind:
        return error_from_kind(kind, details)
    cls = _BY_GRPC_CODE.get(code, RemoteError)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        # gRPC's own size limit, not a busy node: retrying cannot help.
        cls = MessageTooLarge
    return cls("%s: %s" % (code.name if code else "UNKNOWN", details))
