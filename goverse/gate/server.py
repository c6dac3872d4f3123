"""A gate: the door through which clients outside the cluster reach objects.

A :class:`Gate` wraps a :class:`~goverse.node.Node` of role ``gate``: it
registers in etcd under ``<prefix>/gates/<address>``, watches the shard map
and routes each client request to the owning node over the peer streams,
but never owns shards or hosts objects. Beside the node service its gRPC
server answers ``gate.GateService``; an optional HTTP server offers the
same operations as JSON and pushes as Server-Sent Events.

Pushes flow the other way: the gate keeps one ``RegisterGate`` stream open
to every node (:mod:`goverse.gate.links`) and hands each message to the
addressed clients' bounded buffers (:mod:`goverse.gate.clients`).

A gate never starts an embedded etcd: it joins a cluster that exists.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from gevent.pool import Group, Pool
from gevent.pywsgi import LoggingLogAdapter, WSGIServer

from .. import runtime, tls
from ..config import Settings
from ..errors import CallTimeout, ConfigError, GoverseError
from ..node import Node
from .clients import ClientRegistry
from .http import GateHttpApp
from .links import NodeLinks
from .service import GateServicer, add_gate_service

log = logging.getLogger(__name__)

#: Longest pause between looks at the membership when nothing changes.
_MEMBERSHIP_POLL = 1.0


class Gate:
    """A gate process's share of the cluster: node, links, clients, servers."""

    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        settings = settings or Settings.from_mapping({})
        self.settings = settings.replace(**overrides) if overrides else settings
        if not self.settings.etcd_endpoints:
            raise ConfigError(
                "etcd_endpoints: a gate joins an existing cluster and never starts an "
                "embedded etcd; give the cluster's etcd (e.g. --etcd-endpoints "
                "127.0.0.1:2379)")
        self.node = Node(self.settings, role="gate", services=(self._add_service,))
        self.clients: ClientRegistry | None = None
        self.links: NodeLinks | None = None
        self.http_address: str | None = None
        self._http: WSGIServer | None = None
        self._group = Group()
        self._stopping = False

    def __repr__(self) -> str:
        return "Gate<%s clients=%d links=%d>" % (
            self.address, len(self.clients or ()), len(self.links.addresses())
            if self.links else 0)

    @property
    def address(self) -> str:
        """The gate's gRPC address (client ids start with it)."""
        return self.node.address

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _add_service(self, server: grpc.Server) -> None:
        self._servicer = GateServicer(self)
        add_gate_service(server, self._servicer)

    def require_clients(self, ctx: grpc.ServicerContext) -> ClientRegistry:
        if self.clients is None or self._stopping:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "gate %s is %s" % (
                self.address, "stopping" if self._stopping else "starting"))
        return self.clients

    # ---- lifecycle -----------------------------------------------------------

    def start(self, *, wait_ready: bool = False, timeout: float = 60.0) -> Gate:
        """Serve gRPC (and HTTP), join the cluster, link to every node.

        With ``wait_ready`` it returns once the cluster is ready and a push
        link to every node is open (see :meth:`wait_ready`).
        """
        runtime.require_patched()
        self.node.start(wait_ready=False)
        self.clients = ClientRegistry(self.address, self.settings.client_buffer)
        self.links = NodeLinks(self.address, group=self._group, deliver=self.clients.deliver,
                               max_message_bytes=self.settings.max_message_bytes,
                               credentials=self._link_credentials())
        self._group.spawn(self._follow_membership)
        if self.settings.http_listen:
            try:
                self._start_http()
            except OSError as exc:
                self.stop(grace=0)  # it has joined the cluster: leave it again
                raise GoverseError("gate %s cannot serve HTTP on %s: %s" % (
                    self.address, self.settings.http_listen,
                    exc.strerror or exc)) from exc
        log.info("gate serving gRPC on %s%s", self.address,
                 ", HTTP on %s" % self.http_address if self.http_address else "")
        if wait_ready and not self.wait_ready(timeout):
            raise CallTimeout("gate %s not ready after %.3gs: %s" % (
                self.address, timeout, self.ready_reason()))
        return self

    def _link_credentials(self) -> grpc.ChannelCredentials | None:
        # Nodes that serve TLS want the same certificate from the gate that
        # they want from each other.
        return tls.channel_credentials(self.settings) if tls.enabled(self.settings) else None

    def _start_http(self) -> None:
        host, _, port = self.settings.http_listen.rpartition(":")
        app = GateHttpApp(self, static_dir=self.settings.http_static_dir,
                          static_prefix=self.settings.http_static_prefix,
                          heartbeat=self.settings.sse_heartbeat)
        access_log = LoggingLogAdapter(logging.getLogger("goverse.gate.access"),
                                       logging.DEBUG)
        # Handlers run in a pool the gate owns, so stop() ends open event streams.
        server = WSGIServer((host.strip("[]"), int(port)), app, spawn=Pool(),
                            log=access_log, error_log=log)
        server.start()
        self._http = server
        self.http_address = "%s:%d" % (host, server.server_port)

    def _follow_membership(self) -> None:
        cluster = self.node.cluster
        while True:
            self.links.sync(cluster.state.nodes)
            cluster.wait_changed(_MEMBERSHIP_POLL)

    def ready_reason(self) -> str | None:
        """None when clients can be served and pushes reach them, else why not."""
        if self.links is None or self.node.cluster is None:
            return "not started"
        reason = self.node.cluster.ready_reason()
        if reason is not None:
            return reason
        nodes = self.node.cluster.state.nodes
        if not nodes:
            return "no node in the cluster"
        missing = [a for a in sorted(nodes) if not self.links.all_connected([a])]
        if missing:
            return "no push link yet to %s" % (", ".join(missing),)
        return None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.ready_reason() is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.node.cluster.wait_changed(min(left, 0.05))
        return True

    def stop(self, grace: float | None = None) -> None:
        """Stop intake, end client streams, close links, leave. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        log.info("gate %s stopping", self.address)
        # Ending the clients first lets open event streams finish cleanly.
        if self.clients is not None:
            self.clients.close()
        if self._http is not None:
            self._http.stop(timeout=1)
        if self.links is not None:
            self.links.close()
        self._group.kill(block=True, timeout=2)
        self.node.stop(grace=grace)
        log.info("gate %s stopped", self.address)

    # ---- introspection -------------------------------------------------------

    def statistics(self, *, greenlets: bool = False) -> dict[str, Any]:
        """Links, clients and counters; with ``greenlets``, the process's greenlet count.

        Counting greenlets walks every object of the process (see
        :func:`goverse.runtime.greenlet_counts`), so it is asked for, not default.
        """
        cluster = self.node.cluster
        stats = {
            "address": self.address,
            "http_address": self.http_address,
            "nodes": sorted(cluster.state.nodes) if cluster else [],
            "clients": self.clients.statistics() if self.clients is not None else {},
            "links": self.links.statistics() if self.links is not None else {},
            "ready_reason": self.ready_reason(),
            "settled": bool(cluster and cluster.is_settled()),
        }
        if greenlets:
            stats.update(runtime.greenlet_counts())
        return stats
