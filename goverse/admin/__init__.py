"""The admin plane: health, readiness, state, metrics and a dashboard over HTTP.

One WSGI app answers for one node (:class:`LocalSource`, embedded in a
node or in an application that runs one) or for a whole cluster
(:class:`ClusterSource`, under gunicorn: see :mod:`goverse.admin.wsgi`).
To add it to an existing WSGI app::

    app = goverse.admin.mount(app, "/goverse", node=node)
"""

from __future__ import annotations

from .app import AdminApp, make_app, mount
from .server import AdminServer
from .sources import ClusterSource, LocalSource, NodeUnreachable, NotFound

__all__ = ["AdminApp", "AdminServer", "ClusterSource", "LocalSource", "NodeUnreachable",
           "NotFound", "make_app", "mount"]
