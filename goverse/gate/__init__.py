"""Gates: how clients outside the cluster reach objects and receive pushes.

:class:`Gate` runs in its own process (``bin/goverse-gate``) or embedded in
a program that patched gevent first. It serves the published gate protocol
(``gate.GateService`` over gRPC) and an HTTP API with Server-Sent Events.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use, so that the launcher in this package can patch
# gevent before grpc or gevent's pools are imported.
_EXPORTS = {"Gate": "server", "ClientRegistry": "clients"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError("module 'goverse.gate' has no attribute %r" % (name,))
    value = getattr(importlib.import_module("." + module, __name__), name)
    globals()[name] = value
    return value
