"""A goverse node: hosts objects, joins the cluster, routes every request.

:class:`Node` composes the parts: the local :class:`ObjectHost`, the
:class:`Cluster` membership in etcd, the gRPC server and one
:class:`PeerClient` per other node. Its public methods create, call and
delete objects wherever they live; the ``*_owned`` methods serve requests
for objects this node owns and refuse the rest.

Every greenlet a node starts belongs to one of its groups and runs in a
copy of its spawner's context. ``stop()`` hands shards over, drains calls
within the grace period, cancels detached operations, leaves the cluster
and only then closes the server.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import time
import uuid
from concurrent import futures
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gevent
import grpc
from gevent.pool import Group
from google.protobuf.message import Message

from . import callctx as context
from . import runtime, tls
from ._pb import goverse_pb2 as pb
from .activation import ObjectHost
from .cluster import Cluster
from .config import Settings
from .errors import (
    CallTimeout,
    ConfigError,
    GoverseError,
    MessageTooLarge,
    NodeStopped,
    NoRoute,
    NotOwner,
    ObjectMethodError,
    OperationCancelled,
    PeerUnavailable,
    PeerUnreachable,
    ShardMoved,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
    error_kind,
)
from .etcd import EtcdClient
from .metrics import LoopMonitor, NodeStats
from .objects import BaseObject, TypeRegistry, lookup_method, registry as default_registry
from .operations import Operation, OperationLog
from .push import GateLinks
from .sharding import Placement, placement, validate_id
from .transport import (
    NodeServicer,
    PeerClient,
    add_node_service,
    channel_options,
    pack,
    pack_into,
    response_or_raise,
    unpack,
)

log = logging.getLogger(__name__)

#: Longest pause between looks at the shard map while a route is missing.
_ROUTE_POLL = 0.25

#: Bytes kept free under max_message_bytes for the envelope around a
#: payload (ids, type names, tags, the frame).
_ENVELOPE_ROOM = 4096

_current_node: Node | None = None

#: gRPC server options on top of the channel options.
SERVER_OPTIONS = [
    # No port sharing: grpc allows it by default, and a second node started
    # on the same address would then take over the first one's membership
    # instead of failing to start.
    ("grpc.so_reuseport", 0),
    # Peers ping idle connections every 10 s (see channel_options); the
    # server's default answer to pings more often than every 5 minutes
    # without data is GOAWAY "too_many_pings", which broke idle streams.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]


def current_node() -> Node:
    """The node the module-level API uses.

    Inside an object's method or hook it is the node hosting that object;
    elsewhere, the node started last in this process.
    """
    running = context._current_object.get()
    node = getattr(running, "_gv_node", None)
    if node is not None and not node.stopped:
        return node
    if _current_node is None or _current_node.stopped:
        raise NodeStopped("no goverse node is running in this process; start one "
                          "with goverse.Node(...).start()")
    return _current_node


class Node:
    """One node process's share of a goverse cluster."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        registry: TypeRegistry | None = None,
        activation_hook: Callable[[BaseObject, str], None] | None = None,
        role: str = "node",
        services: tuple[Callable[[grpc.Server], None], ...] = (),
        **overrides: Any,
    ) -> None:
        settings = settings or Settings.from_mapping({})
        self.settings = settings.replace(**overrides) if overrides else settings
        self.registry = registry or default_registry
        #: "node" hosts objects; "gate" routes requests and hosts none.
        if role not in ("node", "gate"):
            raise ConfigError("role must be 'node' or 'gate', got %r" % (role,))
        self.role = role
        #: Called with the gRPC server before it starts, to add services
        #: (a gate adds its GateService beside the node service).
        self._services = tuple(services)
        self.gate_links = GateLinks()
        self.address = self.settings.advertise or self.settings.listen
        self.cluster: Cluster | None = None
        self.operations = OperationLog()
        self.started_at = time.monotonic()
        self.stopped = False
        self._stopping = False
        self.partitioned = False
        self._activation_hook = activation_hook
        self._peers: dict[str, PeerClient] = {}
        self._server: grpc.Server | None = None
        self._etcd: EtcdClient | None = None
        self._embedded_etcd: Any = None
        self._background = Group()
        self._calls = Group()
        self._detached = Group()
        # Read on every call: kept out of the settings object's lookups.
        self._call_timeout = self.settings.call_timeout
        self._num_shards = self.settings.num_shards
        self._max_message_bytes = self.settings.max_message_bytes
        # Chain ids only need to be unique: a random prefix and a counter
        # are much cheaper than a uuid per call.
        self._chain_prefix = uuid.uuid4().hex[:12]
        self._chain_ids = itertools.count(1)
        if tls.enabled(self.settings):
            tls.check_files(self.settings)
        self._channel_credentials = (tls.channel_credentials(self.settings)
                                     if tls.enabled(self.settings) else None)
        self.stats = NodeStats()
        self.loop_monitor = LoopMonitor()
        #: The embedded admin server (goverse.admin) when admin_listen is set.
        self.admin: Any = None
        self.host = ObjectHost(self.registry, accepts=self._accepts,
                               on_activation=self._on_activation,
                               default_timeout=self.settings.call_timeout,
                               stats=self.stats, owner=self)

    def __repr__(self) -> str:
        return repr(self.cluster) if self.cluster is not None else "Node<%s>" % self.address

    # ---- lifecycle -------------------------------------------------------

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> Node:
        """Serve gRPC, join the cluster and (by default) wait until it is ready."""
        global _current_node
        runtime.require_patched()
        runtime.init_grpc()
        self.loop_monitor.start(self._background)
        self._background.spawn(self._close_departed_peers)
        self._start_server()
        self._etcd = self._connect_etcd()
        self.cluster = Cluster(
            self._etcd, address=self.address, prefix=self.settings.etcd_prefix,
            num_shards=self.settings.num_shards, lease_ttl=self.settings.lease_ttl,
            stability_window=self.settings.stability_window, group=self._background,
            on_release=self._evict_shards, on_lost=self._lease_lost, role=self.role,
            probe=self._probe)
        self.cluster.start()
        if self.role == "node" and self.settings.peer_check_interval > 0:
            self._background.spawn(self._check_peers)
        _current_node = self
        if self.settings.admin_listen:
            from .admin.server import AdminServer
            self.admin = AdminServer(self, self.settings.admin_listen).start()
        if wait_ready and not self.cluster.wait_ready(timeout):
            raise CallTimeout("%r not ready after %.3gs: %s" % (
                self, timeout, self.cluster.ready_reason()))
        return self

    def _start_server(self) -> None:
        executor = futures.ThreadPoolExecutor(max_workers=self.settings.server_workers)
        server = grpc.server(executor, options=channel_options(
            self.settings.max_message_bytes) + SERVER_OPTIONS)
        add_node_service(server, NodeServicer(self))
        for add_service in self._services:
            add_service(server)
        try:
            if tls.enabled(self.settings):
                port = server.add_secure_port(self.settings.listen,
                                              tls.server_credentials(self.settings))
            else:
                port = server.add_insecure_port(self.settings.listen)
        except RuntimeError:  # grpc's way of saying the bind failed
            port = 0
        if port == 0:
            raise GoverseError("cannot listen on %s: %s" % (
                self.settings.listen, _why_no_bind(self.settings.listen)))
        host = self.settings.listen.rpartition(":")[0]
        if not self.settings.advertise:
            self.address = "%s:%d" % (host, port)
        server.start()
        self._server = server
        if host in ("127.0.0.1", "localhost", "[::1]"):
            log.info("node %s serving gRPC on loopback only (%s); set listen to expose it",
                     self.address, self.settings.listen)
        else:
            log.info("node %s serving gRPC on %s", self.address, self.settings.listen)

    def _connect_etcd(self) -> EtcdClient:
        endpoints = list(self.settings.etcd_endpoints)
        if not endpoints:
            endpoints = [self._start_embedded_etcd()]
        s = self.settings
        return EtcdClient(endpoints, timeout=s.etcd_timeout, user=s.etcd_user or None,
                          password=s.etcd_password or None, ca_cert=s.etcd_ca_cert or None,
                          cert_key=s.etcd_key or None, cert_chain=s.etcd_cert or None)

    def _start_embedded_etcd(self) -> str:
        from .etcd_server import EtcdServer

        server = EtcdServer(client_port=self.settings.embedded_etcd_port,
                            data_dir=self.settings.embedded_etcd_data_dir or None)
        server.start()
        self._embedded_etcd = server
        log.info("no etcd endpoint configured: started embedded etcd at %s (data in %s)",
                 server.endpoint, server.data_dir)
        return server.endpoint

    def stop(self, grace: float | None = None) -> None:
        """Leave gracefully: hand shards over, drain, cancel, unregister. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("%r stopping (grace %.3gs)", self, grace)

        if self.cluster is not None:
            self.cluster.hand_over(deadline)
        self._calls.join(timeout=max(0.0, deadline - time.monotonic()))
        self._wait_for_running_calls(deadline)
        self._cancel_detached()
        self.gate_links.close()
        if self.cluster is not None:
            self.cluster.stop()
        self._calls.kill(block=True, timeout=2)
        self._close_transport()
        # Stopped last: /healthz answers 503 while the node drains.
        if self.admin is not None:
            self.admin.stop()
        self._background.kill(block=True, timeout=2)
        if self._etcd is not None:
            self._etcd.close()
        if self._embedded_etcd is not None:
            self._embedded_etcd.stop()
        self.stopped = True
        log.info("node %s stopped", self.address)

    def _wait_for_running_calls(self, deadline: float) -> None:
        """Let methods still executing here (local callers' too) finish."""
        while self.host.running and time.monotonic() < deadline:
            gevent.sleep(0.05)
        if self.host.running:
            log.warning("%r stops with %d calls still running", self, self.host.running)

    def _cancel_detached(self) -> None:
        pending = len(self._detached)
        if pending:
            log.warning("%r cancelling %d pending operations", self, pending)
        self._detached.kill(block=True, timeout=5)

    def _close_transport(self) -> None:
        for peer in list(self._peers.values()):
            # TODO: a channel close was once seen to hang after every peer
            # and etcd had died; bounded here until the cause is found.
            with gevent.Timeout(5, False):
                peer.close()
        self._peers.clear()
        if self._server is not None:
            self._server.stop(grace=1).wait(2)

    def set_partitioned(self, on: bool) -> None:
        """Fault injection for tests: cut (or restore) every peer connection.

        While on, the node refuses peer streams and Status probes and sends
        no peer requests; its etcd lease stays alive: the case of a node
        that etcd can see but its peers cannot. Its peers report it, and
        the leader moves its shards away until the cut is restored.
        """
        self.partitioned = on
        log.warning("%r peer connections %s (fault injection)", self,
                    "cut" if on else "restored")
        if on:
            for peer in list(self._peers.values()):
                peer.close()
            self._peers.clear()

    @property
    def stopping(self) -> bool:
        """True from the moment ``stop()`` begins."""
        return self._stopping

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def wait_ready(self, timeout: float) -> bool:
        return self.cluster is not None and self.cluster.wait_ready(timeout)

    # ---- greenlets -------------------------------------------------------

    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """A background greenlet owned by the node, in a copy of this context."""
        return context.spawn_in_copy(self._background, fn, *args)

    def spawn_request(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """A greenlet serving requests from another node, in an empty context."""
        return context.spawn_fresh(self._calls, fn, *args)

    def spawn_detached(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """A call-serving greenlet owned by the node, in a copy of this context."""
        return context.spawn_in_copy(self._calls, fn, *args)

    # ---- calls -----------------------------------------------------------

    def call_object(self, type_name: str, object_id: str, method: str, request: Any,
                    *, timeout: float | None = None) -> Any:
        """Call ``method`` on the object, wherever it lives (created on first call)."""
        if self._stopping or self.cluster is None:
            self._check_running()
        validate_id(object_id)
        if type(type_name) is not str or type(method) is not str \
                or not isinstance(request, Message) \
                or not (type_name.isascii() and method.isascii()):
            _check_call_arguments(self.registry, type_name, method, request)
        place = placement(object_id, self._num_shards)
        scope = self._enter_call(timeout)
        try:
            # Fast path: the shard is owned here, so skip routing closures.
            if place.shard is not None and place.shard in self.cluster.owned:
                try:
                    return self._call_here(type_name, object_id, method, request, place, 0)
                except NotOwner:
                    pass
            return self._route(place, object_id, scope[0], "call to %s(%s).%s" % (
                type_name, object_id, method),
                local=lambda epoch: self._call_here(type_name, object_id, method,
                                                    request, place, epoch),
                remote=lambda peer, epoch, left: self._call_remote(
                    peer, type_name, object_id, method, request, epoch, left))
        finally:
            self._exit_call(scope)

    def _call_here(self, type_name: str, object_id: str, method: str, request: Any,
                   place: Placement, epoch: int) -> Any:
        owned_epoch = self._check_owner(place, object_id, epoch)
        response = self.host.call(type_name, object_id, method, request, place.shard)
        self._check_kept(place, object_id, owned_epoch, method)
        return response

    def _call_remote(self, peer: PeerClient, type_name: str, object_id: str, method: str,
                     request: Any, epoch: int, left: float) -> Any:
        # Encoded once: the bytes give the size to check and go into the Any
        # as they are (a protobuf's ByteSize() costs as much as encoding it).
        packed = pack(request)
        size = len(packed.value)
        if size > self._max_message_bytes:
            raise MessageTooLarge("request for %s(%s).%s is %d bytes; the limit is %d" % (
                type_name, object_id, method, size, self._max_message_bytes))
        response = self._peer_request(peer, pb.PEER_OP_CALL, left, epoch=epoch,
                                      type=type_name, id=object_id, method=method,
                                      request=packed)
        return self._decode_response(type_name, method, response.response)

    def _decode_response(self, type_name: str, method: str, packed: Any) -> Any:
        cls = self.registry.find(type_name)
        if cls is None or method not in cls._goverse_methods:
            return packed
        spec, _ = lookup_method(cls, method)
        message = unpack(packed, spec.response_type)
        return packed if message is None else message

    def _route(self, place: Placement, object_id: str, deadline: float, what: str,
               *, local: Callable[[int], Any],
               remote: Callable[[PeerClient, int, float], Any]) -> Any:
        """Send a request to the object's owner, following moves until the deadline."""
        last_refusal: Exception | None = None
        while True:
            owner, epoch = self._owner_of(place, object_id)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallTimeout("%s timed out after its deadline: %s" % (
                    what, self._why_no_route(owner, last_refusal)))
            try:
                if owner is None:
                    self._wait_for_route(left)
                elif owner == self.address:
                    return local(epoch)
                else:
                    return remote(self._peer(owner), epoch, left)
            except (NotOwner, PeerUnreachable) as exc:
                # Both mean the request did not run: follow the shard map.
                last_refusal = exc
                log.debug("%s: %s; waiting for a new route", what, exc)
                self._wait_for_route(deadline - time.monotonic())

    def _why_no_route(self, owner: str | None, refusal: Exception | None) -> str:
        """Say why a request found no serving owner in time."""
        if not self.cluster.state.nodes:
            return "no nodes in the cluster (is etcd reachable? %s)" % (
                self.cluster.ready_reason() or "view is current",)
        if owner is None:
            return "no live node owns the object's shard yet"
        if refusal is not None:
            return "the owner %s did not serve it: %s" % (owner, refusal)
        return "the owner %s did not answer in time" % (owner,)

    def _owner_of(self, place: Placement, object_id: str) -> tuple[str | None, int]:
        if place.node is not None:
            if (place.node == self.address and self.role == "node") \
                    or self.cluster.is_member(place.node):
                return place.node, 0
            if place.node == self.address or place.node in self.cluster.state.gates:
                raise NoRoute("object %r is pinned to %s, a gate: gates host no objects" % (
                    object_id, place.node))
            raise NoRoute("object %r is pinned to node %s, which is not in the cluster" % (
                object_id, place.node))
        return self.cluster.route(place.shard)

    def _wait_for_route(self, left: float) -> None:
        if left > 0:
            self.cluster.wait_changed(min(left, _ROUTE_POLL))

    def _peer(self, address: str) -> PeerClient:
        if self.partitioned:
            raise PeerUnreachable("%s cannot reach %s (partition fault injected)" % (
                self.address, address))
        peer = self._peers.get(address)
        if peer is None:
            s = self.settings
            peer = PeerClient(address, group=self._background, batch_size=s.peer_batch_size,
                              max_inflight=s.peer_max_inflight,
                              max_message_bytes=s.max_message_bytes,
                              credentials=self._channel_credentials)
            self._peers[address] = peer
        return peer

    def _probe(self, address: str) -> bool:
        """Can this node reach ``address`` (TLS included)? Asked before a node gets shards."""
        if address == self.address:
            return True
        try:
            self._peer(address).status(timeout=min(2.0, self.settings.etcd_timeout))
        except grpc.RpcError as exc:
            log.warning("%r cannot reach node %s: %s", self, address,
                        exc.details() if hasattr(exc, "details") else exc)
            return False
        return True

    def _check_peers(self) -> None:
        """Find the peers this node cannot reach and report them in etcd.

        Every ``peer_check_interval`` each live peer counts as reached when
        its stream answered anything in that time, else it is probed with
        Status. A peer failing for ``suspect_after`` seconds is reported
        (see :meth:`Cluster.suspects`); the report clears on its own when
        the peer answers again.
        """
        interval = self.settings.peer_check_interval
        failing_since: dict[str, float] = {}
        while True:
            gevent.sleep(interval)
            cluster = self.cluster
            if cluster is None or self._stopping:
                continue
            peers = [a for a in cluster.state.nodes if a != self.address]
            # Peers that answered lately need no probe (nor a greenlet).
            probes = {a: self._background.spawn(self._reaches, a, interval)
                      for a in peers if not self._answered_within(a, interval)}
            gevent.joinall(list(probes.values()), timeout=interval + 1.0)
            now = time.monotonic()
            for address in peers:
                check = probes.get(address)
                if check is None or (check.successful() and check.value):
                    failing_since.pop(address, None)
                else:
                    check.kill(block=False)
                    failing_since.setdefault(address, now)
            for gone in set(failing_since) - set(peers):
                del failing_since[gone]
            after = self.settings.suspect_after
            try:
                cluster.report_unreachable(
                    a for a, since in failing_since.items() if now - since >= after)
            except GoverseError as exc:
                log.debug("%r could not report unreachable peers yet: %s", self, exc)

    def _answered_within(self, address: str, within: float) -> bool:
        """Did ``address`` answer this node in the last ``within`` seconds?"""
        if self.partitioned:
            return False
        peer = self._peers.get(address)
        return peer is not None and time.monotonic() - peer.answered_at < within

    def _reaches(self, address: str, within: float) -> bool:
        """Does ``address`` answer a Status probe within ``within`` seconds?"""
        if self.partitioned:
            return False
        try:
            self._peer(address).status(timeout=within)
        except (grpc.RpcError, GoverseError):
            return False
        return True

    def _close_departed_peers(self, interval: float = 5.0) -> None:
        """Close connections to nodes that left the cluster and are idle."""
        etcd_reported = False
        while True:
            gevent.sleep(interval)
            if self.cluster is None:
                continue
            if self._embedded_etcd is not None and not self._embedded_etcd.running \
                    and not etcd_reported:
                etcd_reported = True
                log.error("%r: the embedded etcd server exited (log: %s); this node "
                          "cannot renew its lease until it is back", self,
                          self._embedded_etcd.log_path)
            for address, peer in list(self._peers.items()):
                if not self.cluster.is_member(address) and not peer.queue_depth:
                    log.info("%r closing the connection to departed node %s", self, address)
                    del self._peers[address]
                    peer.close()

    def _peer_request(self, peer: PeerClient, op: int, left: float, **fields: Any) -> Any:
        values = context._values.get(None)
        request = pb.PeerRequest(
            op=op, timeout=left, chain=context._chain.get() or "",
            caller=context.current_object() or "", **fields)
        if values:
            request.client_id = str(values.get("client_id", ""))
        if values or _tracing():
            request.context = context.encode_values()
        return response_or_raise(peer.request(request, left))

    def _enter_call(self, timeout: float | None) -> tuple[float, Any, Any, Any]:
        """Give a call a chain, a deadline and its own copy of the context values.

        The copy makes a local call behave like a remote one: what the
        callee writes into ``goverse.context`` does not leak back.
        """
        deadline = time.monotonic() + (self._call_timeout if timeout is None
                                       else context.check_timeout(timeout))
        inherited = context._deadline.get()
        if inherited is not None and inherited < deadline:
            deadline = inherited
        chain_token = None
        if context._chain.get() is None:
            chain_token = context._chain.set(self._new_chain())
        values = context._values.get(None)
        values_token = context._values.set(dict(values) if values else {})
        return deadline, context._deadline.set(deadline), chain_token, values_token

    @staticmethod
    def _exit_call(scope: tuple[float, Any, Any, Any]) -> None:
        context._deadline.reset(scope[1])
        if scope[2] is not None:
            context._chain.reset(scope[2])
        context._values.reset(scope[3])

    def _new_chain(self) -> str:
        return "%s#%d" % (self._chain_prefix, next(self._chain_ids))

    @contextmanager
    def _call_scope(self, timeout: float | None) -> Iterator[float]:
        """Give the call a chain and a deadline for its duration, then restore."""
        scope = self._enter_call(timeout)
        try:
            yield scope[0]
        finally:
            self._exit_call(scope)

    # ---- serving requests for owned objects ------------------------------

    def _check_owner(self, place: Placement, object_id: str, epoch: int) -> int:
        """Refuse a request for an object not served here; returns the shard's epoch."""
        if place.node is not None:
            if place.node != self.address:
                raise NotOwner("object %r is pinned to %s, not this node (%s)" % (
                    object_id, place.node, self.address))
            return 0
        cluster = self.cluster
        owned_epoch = cluster.owned.get(place.shard)
        if owned_epoch is None or not cluster.serving():
            owner, known = cluster.route(place.shard)
            raise ShardMoved("shard %d of %r is not owned by %s; owner known here: %s "
                             "(epoch %d)" % (place.shard, object_id, self.address,
                                             owner or "none", known))
        if epoch and epoch != owned_epoch:
            raise ShardMoved("shard %d of %r is owned by %s at epoch %d, not %d" % (
                place.shard, object_id, self.address, owned_epoch, epoch))
        return owned_epoch

    def _check_kept(self, place: Placement, object_id: str, owned_epoch: int,
                    what: str) -> None:
        """After a call ran here: was the shard ours all along?

        A method that held the event loop past the lease's time to live, or
        ran on past its object's eviction while the shard moved (the node
        stopping, say), ran on an activation that another node may have
        replaced meanwhile. Its answer is not passed off as a success: the caller
        learns that the call may have run and its effect may be lost.
        """
        if place.node is not None or self.cluster.held_throughout(place.shard, owned_epoch):
            return
        raise PeerUnavailable(
            "%s ran on %s, which lost shard %d of %r while it ran (its lease lapsed or "
            "the shard moved): it may have taken effect on an activation that is gone, "
            "and the object may have been active elsewhere meanwhile" % (
                what, self.address, place.shard, object_id))

    def call_owned(self, type_name: str, object_id: str, method: str, request: Any,
                   *, epoch: int) -> Any:
        validate_id(object_id)
        return self._call_here(type_name, object_id, method, request,
                               placement(object_id, self._num_shards), epoch)

    def create_owned(self, type_name: str, object_id: str, *, epoch: int) -> str:
        validate_id(object_id)
        place = placement(object_id, self._num_shards)
        self._check_owner(place, object_id, epoch)
        self.host.create(type_name, object_id, place.shard)
        return object_id

    def delete_owned(self, object_id: str, type_name: str = "", *, epoch: int) -> bool:
        validate_id(object_id)
        place = placement(object_id, self._num_shards)
        self._check_owner(place, object_id, epoch)
        return self.host.delete(object_id, type_name)

    def handle_peer_request(self, request: pb.PeerRequest) -> pb.PeerResponse:
        """Serve one request from another node; errors become the answer."""
        answer = pb.PeerResponse(tag=request.tag, id=request.id)
        try:
            context.enter(context.decode_values(request.context), chain=request.chain,
                          timeout=request.timeout, caller=request.caller or None)
            if request.client_id:
                context.context["client_id"] = request.client_id
            self._serve_peer_op(request, answer)
        except GoverseError as exc:
            answer.error_kind = type(exc).__name__
            answer.error_message = str(exc)
        except Exception as exc:
            log.exception("%r failed serving %s for %s", self,
                          pb.PeerOp.Name(request.op), request.id)
            answer.error_kind = error_kind(exc)
            answer.error_message = "%s: %s" % (type(exc).__name__, exc)
        except (gevent.GreenletExit, gevent.Timeout) as exc:
            # Only a stopping node kills its serving greenlets, and nothing
            # here runs under a timeout of its own: otherwise the object
            # raised it, and its caller is answered instead of left waiting.
            if self._stopping:
                raise
            log.warning("%r: %s for %s raised %s", self, pb.PeerOp.Name(request.op),
                        request.id, type(exc).__name__, exc_info=True)
            answer.error_kind = ObjectMethodError.__name__
            answer.error_message = "%s(%s): the object raised %s: %s" % (
                request.type, request.id, type(exc).__name__, exc)
        return answer

    def _serve_peer_op(self, request: pb.PeerRequest, answer: pb.PeerResponse) -> None:
        if request.op == pb.PEER_OP_CALL:
            response = self.call_owned(request.type, request.id, request.method,
                                       request.request, epoch=request.epoch)
            pack_into(answer.response, response)
            # An answer over the limit would break the whole stream (every
            # call sharing it would fail): it fails alone, here.
            size = len(answer.response.value)
            if size > self.settings.max_message_bytes - _ENVELOPE_ROOM:
                answer.ClearField("response")
                raise MessageTooLarge(
                    "response of %s(%s).%s is %d bytes; the limit is %d (max_message_bytes)"
                    % (request.type, request.id, request.method, size,
                       self.settings.max_message_bytes))
        elif request.op == pb.PEER_OP_CREATE:
            self.create_owned(request.type, request.id, epoch=request.epoch)
        elif request.op == pb.PEER_OP_DELETE:
            self.delete_owned(request.id, request.type, epoch=request.epoch)
        else:
            raise GoverseError("unknown peer operation %d" % (request.op,))

    # ---- create and delete -----------------------------------------------

    def create_object(self, type_name: str, object_id: str | None = None, *,
                      wait: bool = False, timeout: float | None = None) -> str:
        """Create an object and return its id at once (``wait=True``: when done)."""
        _check_type_name(type_name)
        op = self._start_operation("CreateObject", _id_or_new(object_id, type_name),
                                   self._create_anywhere, type_name, wait=wait,
                                   timeout=timeout)
        if wait:
            op.wait(0)
        return op.object_id

    def create_object_async(self, type_name: str, object_id: str | None = None, *,
                            timeout: float | None = None) -> Operation:
        """Create an object; the returned handle follows the operation."""
        _check_type_name(type_name)
        return self._start_operation("CreateObject", _id_or_new(object_id, type_name),
                                     self._create_anywhere, type_name, timeout=timeout)

    def delete_object(self, object_id: str, *, wait: bool = False,
                      timeout: float | None = None, type_name: str = "") -> None:
        """Delete an object (a missing one is fine); returns at once unless ``wait``."""
        op = self._start_operation("DeleteObject", object_id, self._delete_anywhere,
                                   type_name, wait=wait, timeout=timeout)
        if wait:
            op.wait(0)

    def delete_object_async(self, object_id: str, *, timeout: float | None = None,
                            type_name: str = "") -> Operation:
        return self._start_operation("DeleteObject", object_id, self._delete_anywhere,
                                     type_name, timeout=timeout)

    def operation_status(self, op_id: str) -> dict[str, Any] | None:
        op = self.operations.get(op_id)
        return op.as_dict() if op is not None else None

    def get_operation(self, op_id: str) -> Operation | None:
        return self.operations.get(op_id)

    def _start_operation(self, kind: str, object_id: str, work: Callable[..., Any],
                         type_name: str, *, wait: bool = False,
                         timeout: float | None = None) -> Operation:
        self._check_running()
        validate_id(object_id)
        if timeout is not None:
            context.check_timeout(timeout)
        place = placement(object_id, self._num_shards)
        self._owner_of(place, object_id)  # an unknown pinned node fails here, at once
        op = Operation(kind, object_id, spawn=self.spawn_detached)
        if wait:
            # The caller holds the only handle and gets the error raised, so
            # the operation stays out of the log that answers status queries,
            # and its failure is news for the caller, not for the operator.
            try:
                self._run_operation(op, work, type_name, place, timeout, waited=True)
            except BaseException:
                if not op.done():  # the caller was killed or interrupted
                    op.fail(OperationCancelled("%s %s cancelled: its caller was interrupted"
                                               % (kind, object_id)))
                raise
            return op
        self.operations.add(op)
        log.info("%r: %s %s initiated asynchronously%s", self, kind, object_id, _trace())
        # A detached operation keeps the caller's values and deadline but
        # starts its own call chain: it runs beside the caller, not inside
        # its turn, so it must queue for any object the caller holds.
        context.spawn_in_copy(self._detached, self._run_detached, op, work, type_name,
                              place, timeout)
        return op

    def _run_detached(self, op: Operation, work: Callable[..., Any], type_name: str,
                      place: Placement, timeout: float | None) -> None:
        context._chain.set(None)
        try:
            self._run_operation(op, work, type_name, place, timeout)
        except gevent.GreenletExit:
            error = OperationCancelled("%s %s cancelled: node %s stopped" % (
                op.kind, op.object_id, self.address))
            log.error("%r: Async %s %s failed: %s%s", self, op.kind, op.object_id, error,
                      _trace())
            op.fail(error)

    def _run_operation(self, op: Operation, work: Callable[..., Any], type_name: str,
                       place: Placement, timeout: float | None, waited: bool = False) -> None:
        try:
            self._do_operation(op, work, type_name, place, timeout, waited)
        finally:
            if not op.done():  # killed: the caller records the cancellation
                op.add_done_callback(self._count_operation)
            else:
                self._count_operation(op)

    def _count_operation(self, op: Operation) -> None:
        self.stats.operation_done(op.kind, op.status.value, (op.finished or 0) - op.started)

    def _do_operation(self, op: Operation, work: Callable[..., Any], type_name: str,
                      place: Placement, timeout: float | None, waited: bool) -> None:
        try:
            with self._call_scope(timeout) as deadline:
                work(type_name, op.object_id, place, deadline)
        except GoverseError as exc:
            log.log(logging.INFO if waited else logging.ERROR, "%r: Async %s %s failed: %s%s",
                    self, op.kind, op.object_id, exc, _trace())
            op.fail(exc)
            return
        except Exception as exc:
            log.exception("%r: Async %s %s failed%s", self, op.kind, op.object_id, _trace())
            op.fail(ObjectMethodError("%s: %s" % (type(exc).__name__, exc)))
            return
        log.log(logging.DEBUG if waited else logging.INFO,
                "%r: Async %s %s completed successfully%s", self, op.kind, op.object_id,
                _trace())
        op.succeed(op.object_id)

    def _create_anywhere(self, type_name: str, object_id: str, place: Placement,
                         deadline: float) -> None:
        def here(epoch: int) -> None:
            self._check_owner(place, object_id, epoch)
            self.host.create(type_name, object_id, place.shard)

        self._route(place, object_id, deadline, "create of %s(%s)" % (type_name, object_id),
                    local=here,
                    remote=lambda peer, epoch, left: self._peer_request(
                        peer, pb.PEER_OP_CREATE, left, epoch=epoch, type=type_name,
                        id=object_id))

    def _delete_anywhere(self, type_name: str, object_id: str, place: Placement,
                         deadline: float) -> None:
        def here(epoch: int) -> None:
            self._check_owner(place, object_id, epoch)
            self.host.delete(object_id, type_name)

        self._route(place, object_id, deadline, "delete of %s" % (object_id,),
                    local=here,
                    remote=lambda peer, epoch, left: self._peer_request(
                        peer, pb.PEER_OP_DELETE, left, epoch=epoch, type=type_name,
                        id=object_id))

    # ---- cluster callbacks -----------------------------------------------

    def _accepts(self, shard: int | None) -> bool:
        if shard is None:
            return not self._stopping or self.cluster is not None
        return self.cluster is not None and self.cluster.accepts(shard)

    def _evict_shards(self, shards: set[int], deadline: float) -> None:
        ids = self.host.ids_in_shards(shards)
        if ids:
            count = self.host.evict(ids, deadline)
            log.info("%r evicted %d objects of %d moving shards", self, count, len(shards))

    def _lease_lost(self, reason: str) -> None:
        # The cluster has logged the shards it dropped (an ERROR when any).
        log.warning("%r lost its lease (%s); it serves nothing until it registers again",
                    self, reason)

    def _on_activation(self, obj: BaseObject, event: str) -> None:
        self.stats.activated(obj._gv_type, 1 if event == "activate" else -1)
        if self._activation_hook is not None:
            self._activation_hook(obj, event)

    def _check_running(self) -> None:
        """Refuse new work once stopping, but let calls in progress finish theirs.

        During the grace period a method still running may call other
        objects (or create and delete them): refusing those would fail the
        very calls the grace period is for. Work from outside any call is
        refused at once.
        """
        if self.cluster is None:
            raise NodeStopped("node %s is not started" % (self.address,))
        if self._stopping and (self.stopped or context.call_chain() is None):
            raise NodeStopped("node %s is stopping" % (self.address,))

    # ---- push --------------------------------------------------------------

    def push(self, client_ids: Any, message: Any) -> int:
        """Push ``message`` to clients (one id or several); best effort, counted."""
        ids = [client_ids] if isinstance(client_ids, str) else list(client_ids)
        return self.gate_links.push(ids, message)

    def broadcast(self, message: Any) -> int:
        """Push ``message`` to every client connected to any gate."""
        return self.gate_links.broadcast(message)

    # ---- introspection ---------------------------------------------------

    def peer_queue_depths(self) -> dict[str, int]:
        return {address: peer.queue_depth for address, peer in self._peers.items()}

    def status(self) -> dict[str, Any]:
        view = self.cluster.view() if self.cluster is not None else {}
        return {"address": self.address, "uptime_seconds": round(self.uptime(), 3),
                "objects": len(self.host), "calls_served": self.host.calls_served,
                "pending_operations": len(self._detached),
                "peers": self.peer_queue_depths(), "cluster": view}


def _check_type_name(type_name: Any) -> None:
    if not isinstance(type_name, str) or not type_name:
        raise UnknownObjectType("an object type must be a non-empty str, got %s %r" % (
            type(type_name).__name__, type_name))
    try:
        type_name.encode("utf-8")
    except UnicodeEncodeError:
        raise UnknownObjectType("object type %r is not valid UTF-8 text" % (
            type_name,)) from None


def _check_call_arguments(registry: TypeRegistry, type_name: Any, method: Any,
                          request: Any) -> None:
    """Refuse what no node could serve, before it is packed for the wire."""
    for role, value, error in (("type", type_name, UnknownObjectType),
                               ("method", method, UnknownMethod)):
        if not isinstance(value, str):
            raise error("object %s must be a str, got %s %r" % (
                role, type(value).__name__, value))
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error("object %s %r is not valid UTF-8 text" % (role, value)) from None
    if isinstance(request, Message):
        return
    expected = "a protobuf message"
    cls = registry.find(type_name)
    if cls is not None and method in cls._goverse_methods:
        spec = cls._goverse_methods[method][0]
        expected = spec.request_type.DESCRIPTOR.full_name
    raise WrongMessageType("%s.%s takes %s, got %s" % (
        type_name, method, expected, type(request).__name__))


def _tracing() -> bool:
    """Has OpenTelemetry anything to propagate (a span, baggage) in this context?

    An empty OpenTelemetry context gives the standard propagators nothing
    to inject, so a call without goverse values and without one sends no
    context at all and skips the JSON encoding.
    """
    otel = context._opentelemetry()
    return bool(otel) and bool(otel[0].get_current())


def _trace() -> str:
    """`` [trace_id=...]`` when the context carries a trace id, else nothing."""
    trace_id = context.context.get("trace_id")
    return " [trace_id=%s]" % (trace_id,) if trace_id else ""


def _why_no_bind(listen: str) -> str:
    """grpc only says that a bind failed: try it with a plain socket to learn why."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return "cannot resolve it (%s)" % (exc,)
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "the address is in use (another node or program serves there)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "no network interface of this machine has that address"
        return exc.strerror or str(exc)
    finally:
        probe.close()
    return "grpc could not bind it (the port looks free now)"


def _id_or_new(object_id: str | None, type_name: str) -> str:
    # Only a missing id is generated: an empty one is a caller's mistake.
    return new_object_id(type_name) if object_id is None else object_id


def new_object_id(type_name: str) -> str:
    """A fresh id ``<Type>-<unique>``."""
    return "%s-%s" % (type_name, uuid.uuid4().hex)
