"""The cluster admin for gunicorn: ``gunicorn -c etc/gunicorn.conf.py goverse.admin.wsgi:app``.

The settings come from the environment (``GOVERSE_ETCD_ENDPOINTS``,
``GOVERSE_ETCD_PREFIX`` and the other ``GOVERSE_*`` etcd settings).
Nothing happens at import: gunicorn's gevent worker patches the process
after the master has loaded the config, and grpc must not be set up
before that. The first request in each worker sets grpc up on gevent
and builds the :class:`~goverse.admin.ClusterSource`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

_app: Callable | None = None


def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """The WSGI entry point gunicorn loads."""
    global _app
    # NOTE: building never yields to the hub (no I/O: the etcd client
    # connects on its first call), so two first requests cannot race here.
    if _app is None:
        _app = _build()
    return _app(environ, start_response)


def _build() -> Callable:
    from .. import runtime
    from ..config import Settings
    from ..errors import GoverseError
    from .app import error_response, make_app
    from .sources import ClusterSource

    runtime.init_grpc()
    try:
        source = ClusterSource.from_settings(Settings.load(argv=[]))
    except GoverseError as exc:
        log.error("cluster admin is not configured: %s", exc)
        return _answer_always(error_response(500, "cluster admin is not configured: %s" % (
            exc,)))
    log.info("cluster admin serving %r", source)
    return make_app(source=source)


def _answer_always(response: tuple[int, list, bytes]) -> Callable:
    code, headers, body = response

    def misconfigured(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        start_response("%d Internal Server Error" % code, headers)
        return [body]

    return misconfigured
