"""goverse: distributed virtual objects on gevent, etcd and gRPC.

Define object classes, start nodes, and create, call and delete objects by
id from anywhere in the cluster. See README.md for a tour.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are loaded on first use (PEP 562), so that ``from goverse import
# runtime; runtime.patch()`` can run before grpc or gevent's pools are
# imported: patching must come first in a process.
_EXPORTS = {
    "context": "callctx",
    "Settings": "config",
    "Node": "node",
    "current_node": "node",
    "BaseObject": "objects",
    "method": "objects",
    "register": "objects",
    "registry": "objects",
    "Operation": "operations",
    "OperationStatus": "operations",
    "call_object": "api",
    "create_object": "api",
    "create_object_async": "api",
    "delete_object": "api",
    "delete_object_async": "api",
    "operation_status": "api",
    "push_message": "api",
    "broadcast": "api",
    "client_id": "api",
}
_ERRORS = (
    "CallTimeout", "ConfigError", "GoverseError", "InvalidObjectId", "MessageTooLarge",
    "NodeStopped", "NoRoute", "NotOwner", "NotPatched", "ObjectCreationFailed",
    "ObjectMethodError", "ObjectNotFound", "ObjectTypeMismatch", "OperationCancelled",
    "PeerOverloaded", "PeerUnavailable", "RemoteError", "ShardMoved", "UnknownMethod",
    "UnknownObjectType", "WrongMessageType",
)
_EXPORTS.update({name: "errors" for name in _ERRORS})

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'goverse' has no attribute %r" % (name,))
    value = getattr(importlib.import_module("." + module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
