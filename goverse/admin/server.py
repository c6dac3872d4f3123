"""The admin plane embedded in a node: gevent's WSGI server on ``admin_listen``.

The node starts it when ``admin_listen`` is set and stops it at the end of
its own stop, so that ``/healthz`` answers 503 while the node drains.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any, Callable

from gevent.pywsgi import WSGIHandler, WSGIServer

from ..errors import ConfigError, GoverseError

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

#: Admin connections served at once; more wait for a free slot.
MAX_CONNECTIONS = 256
#: Seconds a connection may stay silent (idle between keep-alive requests,
#: or partway through a request) before it is closed: otherwise a few
#: hundred idle or slow clients would hold every slot, /healthz included.
IDLE_TIMEOUT = 15.0

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AdminServer:
    """Serves a node's admin app over HTTP on ``listen`` (``host:port``)."""

    def __init__(self, node: Node, listen: str, *, app: Callable | None = None) -> None:
        from .app import make_app

        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError("admin_listen must be host:port, got %r" % (listen,))
        self.node = node
        self.host = host.strip("[]")
        self.port = int(port)
        self.app = app or make_app(node)
        self._server: Any = None
        self._greenlet: Any = None

    def __repr__(self) -> str:
        return "<AdminServer %s for %s>" % (self.url, self.node.address)

    @property
    def url(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d/" % (host, self.port)

    def start(self) -> AdminServer:
        """Bind now (so a taken port fails the node's start), then serve."""
        from gevent.pool import Pool
        from gevent.pywsgi import LoggingLogAdapter

        server = _NoDelayServer((self.host, self.port), self.app, spawn=Pool(MAX_CONNECTIONS),
                            log=LoggingLogAdapter(log, logging.DEBUG),
                            # pywsgi reports malformed requests here: a
                            # client's mistake, not the server's.
                            error_log=LoggingLogAdapter(log, logging.WARNING))
        try:
            server.start()
        except OSError as exc:
            raise GoverseError("node %s cannot serve its admin endpoints on %s:%d: %s" % (
                self.node.address, self.host, self.port, exc)) from exc
        self._server = server
        self.port = server.server_port
        self._greenlet = self.node.spawn(server.serve_forever)
        if self.host in _LOOPBACK:
            log.info("node %s admin at %s (loopback only; set admin_listen to expose it)",
                     self.node.address, self.url)
        else:
            log.info("node %s admin at %s", self.node.address, self.url)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close the listener; requests still running get ``timeout`` seconds."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(timeout=timeout)
        if self._greenlet is not None:
            self._greenlet.join(timeout)
        log.info("node %s admin at %s stopped", self.node.address, self.url)


class _Handler(WSGIHandler):
    def _handle_client_error(self, ex: BaseException) -> Any:
        if isinstance(ex, TimeoutError):  # a request head left unfinished: close quietly
            log.debug("admin: %s sent half a request and fell silent", self.client_address)
            return None
        return super()._handle_client_error(ex)


class _NoDelayServer(WSGIServer):
    """Sends small answers at once (without TCP_NODELAY a keep-alive client
    waits for the delayed ACK, about 40 ms, on every request) and closes
    connections silent for ``IDLE_TIMEOUT``."""

    handler_class = _Handler

    def handle(self, sock: Any, address: Any) -> Any:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(IDLE_TIMEOUT)
        return super().handle(sock, address)
