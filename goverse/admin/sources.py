"""Where the admin plane gets its answers: one node, or a whole cluster.

Both sources answer the same questions with plain dicts, so the WSGI app
does not care which one it has:

* :class:`LocalSource` reads a node of this process directly (the admin
  server embedded in a node, or an app that embeds a node).
* :class:`ClusterSource` holds no node: it reads membership and the shard
  map from etcd and asks every node over gRPC (``Status``, ``ListObjects``)
  with a per-node timeout. A node that does not answer in time is listed
  with an ``error`` instead of its numbers. This is what runs under
  gunicorn.

Neither keeps a copy of the cluster's state between requests.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from ..cluster import reported_unreachable, reporters_by_node, suspects_among
from ..errors import GoverseError, InvalidObjectId
from ..metrics import LoopMonitor, NodeCollector
from ..sharding import placement, validate_id

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..config import Settings
    from ..etcd import EtcdClient
    from ..node import Node

log = logging.getLogger(__name__)

#: Seconds the event loop may fail to tick before ``/healthz`` says so.
STALL_LIMIT = 1.0

#: Largest ``ListObjects`` answer the cluster source accepts from a node.
MAX_LISTING_BYTES = 256 * 1024 * 1024


class NotFound(GoverseError):
    """The admin plane has no record of what was asked for."""


class NodeUnreachable(GoverseError):
    """A node the cluster source had to ask did not answer in time."""


class Source(Protocol):
    """What the admin app asks; both sources answer with JSON-ready dicts."""

    mode: str

    def health(self) -> str | None: ...
    def ready_reason(self) -> str | None: ...
    def status(self) -> dict[str, Any]: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def shards(self) -> dict[str, Any]: ...
    def objects(self, type_name: str, offset: int, limit: int) -> dict[str, Any]: ...
    def describe_object(self, object_id: str) -> dict[str, Any]: ...
    def operation(self, op_id: str) -> dict[str, Any]: ...
    def dashboard(self) -> dict[str, Any]: ...
    def metrics_registry(self) -> CollectorRegistry: ...


# ---- shard arithmetic shared by both sources --------------------------------


def reachability(nodes: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per member: the peers it reports it cannot reach, who reports it, and suspicion."""
    reporters = reporters_by_node(nodes)
    suspects = suspects_among(nodes)
    rows = {}
    for address, info in nodes.items():
        rows[address] = {
            "cannot_reach": reported_unreachable(info),
            "unreachable_to": reporters[address],
            "suspect": address in suspects,
        }
    return rows


def summarize_shards(table: list[dict[str, Any]], members: Iterable[str]) -> dict[str, Any]:
    """Per-node counts of a shard table, and how many shards lack a live owner."""
    members = set(members)
    per_node: dict[str, dict[str, int]] = {
        address: {"owned": 0, "targeted": 0} for address in members}
    unowned = moving = 0
    for row in table:
        owner, target = row["owner"], row["target"]
        if owner in members:
            per_node[owner]["owned"] += 1
        else:
            unowned += 1
        if target in members:
            per_node[target]["targeted"] += 1
        if owner in members and target in members and owner != target:
            moving += 1
    return {"num_shards": len(table), "unowned": unowned, "moving": moving,
            "nodes": dict(sorted(per_node.items()))}


def shard_picture(table: list[dict[str, Any]], members: Iterable[str]) -> dict[str, Any]:
    """The shard map for the dashboard: an owner index per shard (-1: none).

    ``nodes`` lists the addresses the indexes point to; ``per_node`` and
    the totals are those of :func:`summarize_shards`.
    """
    members = set(members)
    summary = summarize_shards(table, members)
    nodes = sorted(members)
    index = {address: n for n, address in enumerate(nodes)}
    return {"num_shards": summary["num_shards"], "unowned": summary["unowned"],
            "moving": summary["moving"], "nodes": nodes, "per_node": summary["nodes"],
            "owners": [index.get(row["owner"], -1) for row in table]}


def page(rows: Iterable[dict[str, Any]], offset: int, limit: int) -> tuple[int, list]:
    """``(total, rows[offset:offset+limit])`` of an iterable, counted in one pass."""
    rows = iter(rows)
    skipped = sum(1 for _ in islice(rows, offset))
    chosen = list(islice(rows, limit))
    return skipped + len(chosen) + sum(1 for _ in rows), chosen


# ---- one node, read directly -------------------------------------------------


class LocalSource:
    """Answers from a node running in this process."""

    mode = "node"

    def __init__(self, node: Node) -> None:
        self.node = node

    def __repr__(self) -> str:
        return "<LocalSource %s>" % (self.node.address,)

    def health(self) -> str | None:
        """None when the node can answer, else why not."""
        node = self.node
        # NOTE: ``stopping`` turns on when stop() begins, long before
        # ``stopped``: a load balancer must stop sending during the drain.
        if node.stopped or node.stopping:
            return "node %s is stopping" % (node.address,)
        if not node.loop_monitor.responsive(STALL_LIMIT):
            return "event loop of node %s has not run for over %.3gs" % (
                node.address, STALL_LIMIT)
        return None

    def ready_reason(self) -> str | None:
        cluster = self.node.cluster
        if cluster is None:
            return "node %s has not joined a cluster yet" % (self.node.address,)
        return cluster.ready_reason()

    def status(self) -> dict[str, Any]:
        node, cluster = self.node, self.node.cluster
        view = cluster.view() if cluster is not None else {}
        peers = [{"address": address, "queue_depth": depth}
                 for address, depth in sorted(node.peer_queue_depths().items())]
        return {
            "mode": self.mode,
            "address": node.address,
            "role": "leader" if view.get("is_leader") else "member",
            "leader": view.get("leader"),
            "uptime_seconds": round(node.uptime(), 3),
            "objects": len(node.host),
            "calls_served": node.host.calls_served,
            "shards_owned": len(cluster.owned) if cluster is not None else 0,
            "num_shards": node.settings.num_shards,
            "nodes": len(view.get("nodes", ())),
            "ready": view.get("ready", False),
            "ready_reason": self.ready_reason(),
            "pending_operations": len(node.operations.pending()),
            "peers": peers,
        }

    def nodes(self) -> list[dict[str, Any]]:
        cluster = self.node.cluster
        if cluster is None:
            return []
        state = cluster.state
        counts = summarize_shards(cluster.shard_table(), state.nodes)["nodes"]
        reach = reachability(state.nodes)
        rows = []
        for address, info in sorted(state.nodes.items()):
            here = address == self.node.address
            rows.append({
                "address": address,
                "role": "leader" if address == state.leader else "member",
                "pid": info.get("pid"),
                "started_at": info.get("started"),
                "shards_owned": counts[address]["owned"],
                "shards_targeted": counts[address]["targeted"],
                **reach[address],
                # Other nodes' objects are theirs to report: the cluster
                # source (gunicorn) asks each of them.
                "objects": len(self.node.host) if here else None,
                "objects_by_type": self._objects_by_type() if here else None,
                "uptime_seconds": round(self.node.uptime(), 3) if here else None,
                "this_node": here,
            })
        return rows

    def _objects_by_type(self) -> dict[str, int]:
        counts = self.node.stats.objects_by_type
        return {name: n for name, n in sorted(counts.items()) if n > 0}

    def shards(self) -> dict[str, Any]:
        cluster = self.node.cluster
        if cluster is None:
            return {"num_shards": self.node.settings.num_shards, "unowned": None,
                    "moving": None, "nodes": {}, "shards": []}
        table = cluster.shard_table()
        return dict(summarize_shards(table, cluster.state.nodes), shards=table)

    def objects(self, type_name: str, offset: int, limit: int) -> dict[str, Any]:
        host, address = self.node.host, self.node.address
        # Activation order, not sorted: sorting every id of a large node
        # would stall the event loop this endpoint reports on.
        rows = (_object_row(obj, address) for obj in list(host.objects.values())
                if not type_name or obj._gv_type == type_name)
        total, chosen = page(rows, offset, limit)
        return {"total": total, "offset": offset, "limit": limit, "type": type_name or None,
                "objects": chosen, "errors": {}}

    def describe_object(self, object_id: str) -> dict[str, Any]:
        node = self.node
        obj = node.host.objects.get(object_id)
        if obj is None:
            raise NotFound("object %r is not active on node %s%s" % (
                object_id, node.address, self._owner_note(object_id)))
        return dict(node.host.describe(obj), node=node.address)

    def _owner_note(self, object_id: str) -> str:
        cluster = self.node.cluster
        try:
            place = placement(validate_id(object_id), self.node.settings.num_shards)
        except InvalidObjectId as exc:
            return " (%s)" % (exc,)
        if place.node is not None:
            return "; the id is pinned to node %s" % (place.node,)
        owner = cluster.route(place.shard)[0] if cluster is not None else None
        return "; its shard %d is owned by %s" % (place.shard, owner or "no live node")

    def operation(self, op_id: str) -> dict[str, Any]:
        record = self.node.operation_status(op_id)
        if record is None:
            raise NotFound("operation %r is unknown to node %s (records are kept on the "
                           "node that started them, for ten minutes)" % (
                               op_id, self.node.address))
        return record

    def dashboard(self) -> dict[str, Any]:
        cluster = self.node.cluster
        table = cluster.shard_table() if cluster is not None else []
        members = cluster.state.nodes if cluster is not None else {}
        return {
            "mode": self.mode,
            "status": self.status(),
            "nodes": self.nodes(),
            "shards": shard_picture(table, members),
            "failures": [op.as_dict() for op in self.node.operations.recent_failures()],
        }

    def metrics_registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(self.node))
        return registry


def _object_row(obj: Any, address: str) -> dict[str, Any]:
    return {"id": obj._gv_id, "type": obj._gv_type, "node": address,
            "shard": obj._gv_shard, "created_at": obj._gv_created}


# ---- a whole cluster, through etcd and gRPC ----------------------------------


class ClusterView:
    """One read of the cluster's keys in etcd."""

    def __init__(self, prefix: str, kvs: Iterable[Any], revision: int) -> None:
        self.revision = revision
        self.num_shards = 0
        self.leader: str | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        owners: dict[int, tuple[str, int]] = {}
        targets: dict[int, str] = {}
        for kv in kvs:
            parts = kv.key[len(prefix) + 1:].split("/")
            value = kv.value.decode("utf-8", "replace")
            if parts == ["meta", "num_shards"] and value.isdigit():
                self.num_shards = int(value)
            elif parts == ["leader"]:
                self.leader = value
            elif parts[0] == "nodes" and len(parts) == 2:
                self.nodes[parts[1]] = _node_info(parts[1], value)
            elif parts[0] == "shards" and len(parts) == 3 and parts[1].isdigit():
                if parts[2] == "owner":
                    owners[int(parts[1])] = (value, kv.mod_revision)
                elif parts[2] == "target":
                    targets[int(parts[1])] = value
        self.table = [{"shard": n, "target": targets.get(n),
                       "owner": owners.get(n, (None, 0))[0], "epoch": owners.get(n, (None, 0))[1]}
                      for n in range(self.num_shards)]

    def ready_reason(self) -> str | None:
        if not self.num_shards:
            return "no node has initialised this cluster prefix yet"
        if not self.nodes:
            return "no node is registered"
        unowned = sum(1 for row in self.table if row["owner"] not in self.nodes)
        if unowned:
            return "%d of %d shards have no live owner" % (unowned, self.num_shards)
        return None

    def owner_of(self, object_id: str) -> str | None:
        place = placement(validate_id(object_id), self.num_shards or 1)
        if place.node is not None:
            return place.node
        owner = self.table[place.shard]["owner"] if self.num_shards else None
        return owner if owner in self.nodes else None


def _node_info(address: str, value: str) -> dict[str, Any]:
    try:
        info = json.loads(value)
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


class ClusterSource:
    """Answers for a whole cluster: etcd for the map, gRPC for each node."""

    mode = "cluster"

    def __init__(self, etcd_endpoints: Iterable[str] | EtcdClient, prefix: str = "/goverse",
                 *, node_timeout: float = 2.0, max_message_bytes: int = MAX_LISTING_BYTES,
                 credentials: Any = None) -> None:
        """``credentials``: grpc channel credentials for a cluster whose nodes
        serve TLS (:meth:`from_settings` makes them from the ``tls_*`` settings).
        """
        from ..etcd import EtcdClient

        if isinstance(etcd_endpoints, EtcdClient):
            self.client = etcd_endpoints
        else:
            self.client = EtcdClient(list(etcd_endpoints))
        self.prefix = prefix.rstrip("/")
        self.node_timeout = node_timeout
        self._max_message_bytes = max_message_bytes
        self._channels: dict[str, Any] = {}
        self._credentials = credentials
        self._monitor: LoopMonitor | None = None
        self._group: Any = None

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> ClusterSource:
        """A source for the cluster ``settings`` name (endpoints, prefix, etcd auth).

        With ``tls_cert`` set the nodes are asked over TLS, with that
        certificate as the admin's own (nodes require one signed by ``tls_ca``).
        """
        from .. import tls
        from ..errors import ConfigError
        from ..etcd import EtcdClient

        if not settings.etcd_endpoints:
            raise ConfigError("the cluster admin needs etcd endpoints: set "
                              "GOVERSE_ETCD_ENDPOINTS (host:port[,host:port...])")
        s = settings
        client = EtcdClient(list(s.etcd_endpoints), timeout=s.etcd_timeout,
                            user=s.etcd_user or None, password=s.etcd_password or None,
                            ca_cert=s.etcd_ca_cert or None, cert_key=s.etcd_key or None,
                            cert_chain=s.etcd_cert or None)
        if tls.enabled(s):
            tls.check_files(s)
            kwargs.setdefault("credentials", tls.channel_credentials(s))
        return cls(client, s.etcd_prefix, **kwargs)

    def __repr__(self) -> str:
        return "<ClusterSource %s%s>" % (self.client.endpoint, self.prefix)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._group is not None:
            self._group.kill(block=True, timeout=2)
        self.client.close()

    # ---- health ----------------------------------------------------------

    def health(self) -> str | None:
        monitor = self._loop_monitor()
        if not monitor.responsive(STALL_LIMIT):
            return "event loop of this admin process has not run for over %.3gs" % (
                STALL_LIMIT,)
        return None

    def _loop_monitor(self) -> LoopMonitor:
        # Started on first use: in the gunicorn worker, after gevent patched.
        if self._monitor is None:
            from gevent.pool import Group

            self._group = Group()
            self._monitor = LoopMonitor()
            self._monitor.start(self._group)
        return self._monitor

    def ready_reason(self) -> str | None:
        return self.view().ready_reason()

    # ---- reading the cluster -------------------------------------------------

    def view(self) -> ClusterView:
        kvs, revision = self.client.get_prefix(self.prefix + "/")
        view = ClusterView(self.prefix, kvs, revision)
        for address in set(self._channels) - set(view.nodes):
            self._channels.pop(address).close()
        return view

    def ask_nodes(self, addresses: Iterable[str], *, listing: bool) -> dict[str, dict]:
        """Each node's ``Status`` (and ``ListObjects``), asked in parallel.

        A node that fails or does not answer within ``node_timeout`` gets
        ``{"error": ...}``; the others ``{"status": ..., "objects": ...}``.
        """
        from gevent.pool import Group

        addresses = list(addresses)
        answers: dict[str, dict] = {a: {"error": "no answer within %.3gs" % (
            self.node_timeout,)} for a in addresses}
        group = Group()
        for address in addresses:
            group.spawn(self._ask_one, address, listing, answers)
        group.join(timeout=self.node_timeout * 2 + 1)
        group.kill(block=False)
        return answers

    def _ask_one(self, address: str, listing: bool, answers: dict[str, dict]) -> None:
        import grpc

        from .._pb import goverse_pb2 as pb

        stub = self._stub(address)
        started = time.monotonic()
        try:
            status = stub.Status(pb.Empty(), timeout=self.node_timeout)
            objects = None
            if listing:
                left = max(0.05, self.node_timeout - (time.monotonic() - started))
                objects = stub.ListObjects(pb.Empty(), timeout=left).objects
        except grpc.RpcError as exc:
            log.warning("admin: node %s did not answer: %s", address, _rpc_error(exc))
            answers[address] = {"error": "%s did not answer: %s" % (address, _rpc_error(exc))}
            return
        answers[address] = {"status": status, "objects": objects}

    def _stub(self, address: str) -> Any:
        import grpc

        from .._pb import goverse_pb2_grpc as pb_grpc

        channel = self._channels.get(address)
        if channel is None:
            options = [("grpc.max_receive_message_length", self._max_message_bytes)]
            if self._credentials is not None:
                channel = grpc.secure_channel(address, self._credentials, options=options)
            else:
                channel = grpc.insecure_channel(address, options=options)
            self._channels[address] = channel
        return pb_grpc.GoverseStub(channel)

    # ---- answers -----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        view = self.view()
        rows = self._node_rows(view, listing=False)
        return {
            "mode": self.mode,
            "etcd_prefix": self.prefix,
            "leader": view.leader,
            "num_shards": view.num_shards,
            "objects": sum(row["objects"] or 0 for row in rows),
            "ready": view.ready_reason() is None,
            "ready_reason": view.ready_reason(),
            "nodes": rows,
        }

    def nodes(self) -> list[dict[str, Any]]:
        return self._node_rows(self.view(), listing=False)

    def _node_rows(self, view: ClusterView, *, listing: bool,
                   answers: dict[str, dict] | None = None) -> list[dict[str, Any]]:
        if answers is None:
            answers = self.ask_nodes(view.nodes, listing=listing)
        counts = summarize_shards(view.table, view.nodes)["nodes"]
        reach = reachability(view.nodes)
        rows = []
        for address, info in sorted(view.nodes.items()):
            answer = answers[address]
            status = answer.get("status")
            row = {
                "address": address,
                "role": "leader" if address == view.leader else "member",
                "pid": info.get("pid"),
                "started_at": info.get("started"),
                "shards_owned": counts[address]["owned"],
                "shards_targeted": counts[address]["targeted"],
                **reach[address],
                "objects": status.num_objects if status is not None else None,
                "objects_by_type": _count_types(answer.get("objects")),
                "uptime_seconds": status.uptime_seconds if status is not None else None,
            }
            if "error" in answer:
                row["error"] = answer["error"]
            rows.append(row)
        return rows

    def shards(self) -> dict[str, Any]:
        view = self.view()
        return dict(summarize_shards(view.table, view.nodes), shards=view.table)

    def objects(self, type_name: str, offset: int, limit: int) -> dict[str, Any]:
        view = self.view()
        answers = self.ask_nodes(view.nodes, listing=True)
        total, chosen = page(_listed_objects(answers, type_name), offset, limit)
        errors = {a: answer["error"] for a, answer in answers.items() if "error" in answer}
        return {"total": total, "offset": offset, "limit": limit, "type": type_name or None,
                "objects": chosen, "errors": errors}

    def describe_object(self, object_id: str) -> dict[str, Any]:
        view = self.view()
        owner = view.owner_of(object_id)
        if owner is None:
            raise NotFound("object %r: its shard has no live owner" % (object_id,))
        answer = self.ask_nodes([owner], listing=True)[owner]
        if "error" in answer:
            raise NodeUnreachable(answer["error"])
        for info in answer["objects"]:
            if info.id == object_id:
                return {"id": info.id, "type": info.type, "node": owner,
                        "created_at": info.creation_time,
                        "shard": placement(object_id, view.num_shards).shard}
        raise NotFound("object %r is not active on its owner %s" % (object_id, owner))

    def operation(self, op_id: str) -> dict[str, Any]:
        raise NotFound("operation %r: operations are recorded only on the node that "
                       "started them; ask that node's embedded admin (admin_listen)" % (
                           op_id,))

    def dashboard(self) -> dict[str, Any]:
        view = self.view()
        answers = self.ask_nodes(view.nodes, listing=True)
        rows = self._node_rows(view, listing=True, answers=answers)
        return {
            "mode": self.mode,
            "status": {"mode": self.mode, "etcd_prefix": self.prefix, "leader": view.leader,
                       "num_shards": view.num_shards,
                       "objects": sum(row["objects"] or 0 for row in rows),
                       "ready": view.ready_reason() is None,
                       "ready_reason": view.ready_reason(), "nodes": len(rows)},
            "nodes": rows,
            "shards": shard_picture(view.table, view.nodes),
            # Operation records stay on the node that started them.
            "failures": [],
        }

    def metrics_registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(ClusterCollector(self))
        return registry


def _rpc_error(exc: Any) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return "%s %s" % (code.name if code is not None else "", details or "")


def _count_types(listing: Any) -> dict[str, int] | None:
    if listing is None:
        return None
    counts: dict[str, int] = {}
    for info in listing:
        counts[info.type] = counts.get(info.type, 0) + 1
    return dict(sorted(counts.items()))


def _listed_objects(answers: dict[str, dict], type_name: str) -> Iterator[dict[str, Any]]:
    for address, answer in sorted(answers.items()):
        for info in answer.get("objects") or ():
            if not type_name or info.type == type_name:
                yield {"id": info.id, "type": info.type, "node": address,
                       "created_at": info.creation_time}


class ClusterCollector:
    """Cluster-level gauges for Prometheus, read from etcd and the nodes."""

    def __init__(self, source: ClusterSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        view = self.source.view()
        answers = self.source.ask_nodes(view.nodes, listing=False)
        counts = summarize_shards(view.table, view.nodes)

        yield _gauge("goverse_cluster_nodes", "Nodes registered in etcd", len(view.nodes))
        yield _gauge("goverse_cluster_ready", "1 when every shard has a live owner",
                     1 if view.ready_reason() is None else 0)
        yield _gauge("goverse_cluster_shards_unowned", "Shards without a live owner",
                     counts["unowned"])

        up = GaugeMetricFamily("goverse_cluster_node_up",
                               "1 when the node answered the admin", labels=["node"])
        objects = GaugeMetricFamily("goverse_cluster_node_objects",
                                    "Active objects per node", labels=["node"])
        shards = GaugeMetricFamily("goverse_cluster_node_shards",
                                   "Shards owned per node", labels=["node"])
        for address in sorted(view.nodes):
            status = answers[address].get("status")
            up.add_metric([address], 0 if status is None else 1)
            if status is not None:
                objects.add_metric([address], status.num_objects)
            shards.add_metric([address], counts["nodes"][address]["owned"])
        yield up
        yield objects
        yield shards


def _gauge(name: str, documentation: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, documentation, value=value)
