"""Cluster membership, leadership and shard ownership, kept in etcd.

Keys under the cluster prefix ``P``:

``P/meta/num_shards``       the shard count every node must agree on
``P/nodes/<address>``       one per live node, on that node's lease; its JSON
                            value lists the peers the node cannot reach
``P/leader``                the leader's address, on the leader's lease
``P/shards/<n>/target``     where the leader wants shard n
``P/shards/<n>/owner``      the node serving shard n, on the owner's lease

The owner key's ``mod_revision`` is the shard's *epoch*. Ownership only
changes by compare-and-set: a node claims a shard it is the target of when
the owner key is absent, and releases one by deleting its own owner key at
its own epoch. Owner keys ride on the owner's lease, so a node that dies
loses its shards when its lease expires; a node that cannot renew its lease
stops serving before the lease can expire (see :meth:`Cluster.serving`), so
one shard never has two serving owners.

A node that most of its peers report unreachable (while etcd still sees
its lease) is a *suspect*: the leader gives it no shards and retargets the
ones it has, which it then releases like any moved shard. Reports clear
when the peers reach it again, and the shards come back by rebalancing.

Everything this node knows comes from one watch of the prefix; the control
loop (leader duties, claims, releases) runs in one greenlet, woken by
changes of that view and by a timer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent
from gevent.event import Event

from . import assignment
from .errors import ConfigError, GoverseError, NodeStopped
from .etcd import (
    EtcdClient,
    KeyValue,
    PrefixWatcher,
    WatchEvent,
    cmp_lease,
    cmp_mod_revision,
    cmp_value,
    cmp_version,
    op_delete,
    op_put,
)

log = logging.getLogger(__name__)

#: Shards written by one etcd transaction; etcd's default limit is 128 ops.
TXN_BATCH = 64

#: Shards the leader moves per round while rebalancing.
MOVE_BATCH = 512


def reported_unreachable(info: Any) -> list[str]:
    """The peers a member key's value reports unreachable, sorted (garbage: none)."""
    reported = info.get("unreachable") if isinstance(info, dict) else None
    if not isinstance(reported, list):
        return []
    return sorted({peer for peer in reported if isinstance(peer, str)})


def reporters_by_node(nodes: dict[str, Any]) -> dict[str, list[str]]:
    """For each live node, the other live nodes that report they cannot reach it."""
    reporters: dict[str, list[str]] = {address: [] for address in nodes}
    for reporter, info in sorted(nodes.items()):
        for peer in reported_unreachable(info):
            if peer in reporters and peer != reporter:
                reporters[peer].append(reporter)
    return reporters


def suspects_among(nodes: dict[str, Any]) -> frozenset[str]:
    """Members (by their member-key values) that most other members cannot reach.

    A node is a suspect when at least two peers, and more than half of the
    others, report it: one peer's word is not enough, since with two nodes
    each would blame the other. A node's report of itself counts for
    nothing.
    """
    if len(nodes) < 3:
        return frozenset()
    need = max(2, (len(nodes) - 1) // 2 + 1)
    return frozenset(address for address, reporters in reporters_by_node(nodes).items()
                     if len(reporters) >= need)


@dataclass
class ShardView:
    """What this node knows of one shard."""

    target: str | None = None
    owner: str | None = None
    epoch: int = 0


@dataclass
class ClusterState:
    """This node's view of the cluster, as the watch delivered it."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    gates: dict[str, dict[str, Any]] = field(default_factory=dict)
    leader: str | None = None
    shards: list[ShardView] = field(default_factory=list)
    revision: int = 0


class Cluster:
    """One node's membership in a goverse cluster."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        address: str,
        prefix: str,
        num_shards: int,
        lease_ttl: int,
        stability_window: float,
        group: Any,
        on_release: Callable[[set[int], float], None],
        on_lost: Callable[[str], None],
        role: str = "node",
        probe: Callable[[str], bool] | None = None,
    ) -> None:
        self.client = client
        self.address = address
        #: "node" hosts shards; "gate" only watches the map to route clients.
        self.role = role
        #: The leader gives shards only to nodes this says it can reach (a
        #: node with the wrong certificate, or behind a closed port, would
        #: otherwise own shards nobody can call).
        self._probe = probe
        self._reachable: dict[str, bool] = {}
        self._probed_at: dict[str, float] = {}
        #: Peers this node reports it cannot reach (in its member key).
        self.unreachable: tuple[str, ...] = ()
        self._suspects: frozenset[str] = frozenset()
        self.prefix = prefix
        self.num_shards = num_shards
        self.lease_ttl = lease_ttl
        self.stability_window = stability_window
        self._group = group
        self._on_release = on_release
        self._on_lost = on_lost

        self.state = ClusterState(shards=[ShardView() for _ in range(num_shards)])
        #: Shards this node owns, by epoch, as its own claims established.
        self.owned: dict[int, int] = {}
        self.releasing: set[int] = set()
        self.lease_id = 0
        self._lease_valid_until = 0.0
        #: When etcd may expire the lease at the earliest (no renewal since).
        self._lease_expires_at = 0.0
        self._membership_changed = time.monotonic()
        self._changed = Event()
        self._wake = Event()
        self._watcher: PrefixWatcher | None = None
        self._stopping = False
        self._leaving = False
        self._lease_tainted = False
        self._lease_warned_at = 0.0
        self._last_step: tuple[Any, ...] = ()
        self._last_step_at = 0.0
        self._unclaimed_since: dict[int, float] = {}
        #: Seconds a target may leave a shard unclaimed before the leader
        #: gives the shard to another node.
        self.claim_timeout = max(10.0, 3.0 * lease_ttl)
        self._started = time.monotonic()
        self._started_wall = time.time()  # wall clock, shown to people in the member key
        self._greenlets: list[gevent.Greenlet] = []
        self.statistics = {"claims": 0, "releases": 0, "assignments": 0, "lease_losses": 0}

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "member"
        return "Cluster<%s,%s,quorum=%d>" % (self.address, role, len(self.state.nodes))

    # ---- keys ------------------------------------------------------------

    def _key(self, *parts: object) -> str:
        return "/".join((self.prefix,) + tuple(str(p) for p in parts))

    def _member_key(self) -> str:
        return self._key("nodes" if self.role == "node" else "gates", self.address)

    def _owner_key(self, shard: int) -> str:
        return self._key("shards", shard, "owner")

    def _target_key(self, shard: int) -> str:
        return self._key("shards", shard, "target")

    # ---- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Join: check the shard count, take a lease, register, watch."""
        self._check_num_shards()
        self._register()
        self._watcher = PrefixWatcher(
            self.client, self.prefix + "/",
            on_snapshot=self._on_snapshot, on_events=self._on_events,
            name="cluster view of %s" % self.address)
        self._watcher.start()
        self._spawn(self._keepalive_loop)
        self._spawn(self._control_loop)
        log.info("%r joined (lease %x, ttl %ds, %d shards)", self, self.lease_id,
                 self.lease_ttl, self.num_shards)

    def hand_over(self, deadline: float) -> None:
        """Leave gracefully: let other nodes take every shard before ``deadline``.

        The node resigns leadership and removes its node key (keeping its
        lease, so its owner keys stay): the leader then retargets its shards
        and the control loop releases each one after evicting its objects.
        """
        self._leaving = True
        if not self.lease_id:
            return  # never registered: the keys at this address are someone else's
        others = [n for n in self.state.nodes if n != self.address]
        try:
            # Only keys on our own lease are ours to delete.
            self.client.txn([cmp_value(self._key("leader"), "==", self.address),
                             cmp_lease(self._key("leader"), "==", self.lease_id)],
                            [op_delete(self._key("leader"))])
            self.client.txn([cmp_lease(self._member_key(), "==", self.lease_id)],
                            [op_delete(self._member_key())])
        except GoverseError as exc:
            log.warning("%r could not announce that it leaves: %s", self, exc)
            return
        if not others:
            return
        log.info("%r handing %d shards over to %d nodes", self, len(self.owned), len(others))
        while self.owned and time.monotonic() < deadline:
            self._wake.set()
            self.wait_changed(min(0.2, max(0.0, deadline - time.monotonic())))
        if self.owned:
            log.warning("%r still owned %d shards at the end of its grace period",
                        self, len(self.owned))

    def stop(self) -> None:
        """Leave: stop serving, drop the lease (owner and node keys go with it)."""
        if self._stopping:
            return
        self._stopping = True
        self._lease_valid_until = 0.0
        self.owned.clear()
        for greenlet in self._greenlets:
            greenlet.kill(block=True, timeout=2)
        if self._watcher is not None:
            self._watcher.stop()
        try:
            if self.lease_id:
                self.client.revoke_lease(self.lease_id)
        except GoverseError as exc:
            log.warning("%r could not revoke its lease (it will expire): %s", self, exc)
        self._changed.set()
        log.info("%r left the cluster", self)

    def _spawn(self, fn: Callable[[], None]) -> None:
        greenlet = self._group.spawn(fn)
        self._greenlets.append(greenlet)

    def _check_num_shards(self) -> None:
        key = self._key("meta", "num_shards")
        result = self.client.txn([cmp_version(key, "==", 0)],
                                 [op_put(key, str(self.num_shards))])
        if result.succeeded:
            return
        stored = self.client.get(key)
        if stored is not None and stored.value.decode() != str(self.num_shards):
            raise ConfigError(
                "num_shards is %d here but the cluster at %s uses %s; every node of "
                "a cluster must use the same shard count" % (
                    self.num_shards, self.prefix, stored.value.decode()))

    def _register(self) -> None:
        """Take a lease and the member key; refuse an address someone else holds.

        A key left by a predecessor at this address that died is waited out
        (it goes with its lease, within one TTL); a key that outlives that
        belongs to a live process, and starting a second one is refused.
        """
        lease_id, ttl = self.client.grant_lease(self.lease_ttl)
        granted_at = time.monotonic()
        info = self._member_info()
        key = self._member_key()
        give_up = time.monotonic() + ttl + 2.0
        while not self._put_if_absent(key, info, lease_id):
            if time.monotonic() > give_up:
                self.client.revoke_lease(lease_id)
                raise ConfigError(
                    "another %s is registered as %s in %s (its etcd key outlived a lease "
                    "TTL); give this one a different listen/advertise address" % (
                        self.role, self.address, self.prefix))
            gevent.sleep(0.25)
            # The wait can last as long as a TTL: keep the new lease alive
            # meanwhile, or it lapses just as the old key goes.
            renewed_at = time.monotonic()
            if self.client.keepalive_once(lease_id) <= 0:
                lease_id, ttl = self.client.grant_lease(self.lease_ttl)
            granted_at = renewed_at
        self.lease_id = lease_id
        self._lease_valid_until = granted_at + self._safe_ttl(ttl)
        self._lease_expires_at = granted_at + ttl

    def _member_info(self) -> str:
        # "started" is a wall-clock timestamp for people reading the key,
        # never compared with anything (durations use time.monotonic()).
        info: dict[str, Any] = {"address": self.address, "pid": os.getpid(),
                                "started": self._started_wall}
        if self.unreachable:
            info["unreachable"] = list(self.unreachable)
        return json.dumps(info)

    def report_unreachable(self, peers: Any) -> None:
        """Publish the peers this node cannot reach (an empty set clears the report).

        Written into this node's member key only when the set changes. An
        etcd error propagates and leaves the old report in place, so the
        caller's next report tries again.
        """
        report = tuple(sorted(peers))
        if report == self.unreachable or self._leaving or self._stopping or not self.lease_id:
            return
        previous, self.unreachable = self.unreachable, report
        try:
            self.client.put(self._member_key(), self._member_info(), lease=self.lease_id)
        except BaseException:
            self.unreachable = previous
            raise
        if report:
            log.warning("%r reports it cannot reach %s", self, ", ".join(report))
        else:
            log.info("%r reaches every peer again", self)

    def suspects(self) -> frozenset[str]:
        """Live nodes that most of the other live nodes report they cannot reach."""
        return suspects_among(self.state.nodes)

    def _put_if_absent(self, key: str, value: str, lease_id: int) -> bool:
        if self.lease_id:
            # Our own earlier key (a lease being replaced) may be taken over.
            current = self.client.get(key)
            if current is not None and current.lease == self.lease_id:
                self.client.put(key, value, lease=lease_id)
                return True
        result = self.client.txn([cmp_version(key, "==", 0)],
                                 [op_put(key, value, lease=lease_id)])
        return result.succeeded

    def _safe_ttl(self, ttl: int) -> float:
        # Stop serving well before etcd would expire the lease: by then
        # another node may claim our shards.
        return ttl - max(0.5, ttl / 4.0)

    # ---- the view --------------------------------------------------------

    def _on_snapshot(self, kvs: list[KeyValue], revision: int) -> None:
        state = ClusterState(shards=[ShardView() for _ in range(self.num_shards)])
        for kv in kvs:
            self._apply(state, "put", kv)
        if set(state.nodes) != set(self.state.nodes):
            self._membership_changed = time.monotonic()
        state.revision = revision
        self.state = state
        self._drop_lost_claims()
        self._notify()

    def _on_events(self, events: list[WatchEvent], revision: int) -> None:
        before = len(self.state.nodes)
        members = set(self.state.nodes)
        for event in events:
            self._apply(self.state, event.kind, event.kv)
        if len(self.state.nodes) != before or set(self.state.nodes) != members:
            self._membership_changed = time.monotonic()
        self.state.revision = revision
        self._drop_lost_claims()
        self._notify()

    def _apply(self, state: ClusterState, kind: str, kv: KeyValue) -> None:
        rest = kv.key[len(self.prefix) + 1:]
        parts = rest.split("/")
        value = kv.value.decode("utf-8", "replace") if kind == "put" else None
        if parts[0] == "nodes" and len(parts) == 2:
            self._apply_node(state.nodes, parts[1], value)
        elif parts[0] == "gates" and len(parts) == 2:
            self._apply_node(state.gates, parts[1], value)
        elif parts[0] == "leader":
            state.leader = value
        elif parts[0] == "shards" and len(parts) == 3 and parts[1].isdigit():
            shard = int(parts[1])
            if shard < self.num_shards:
                self._apply_shard(state.shards[shard], parts[2], value, kv.mod_revision)

    @staticmethod
    def _apply_node(members: dict[str, Any], address: str, value: str | None) -> None:
        if value is None:
            members.pop(address, None)
            return
        try:
            members[address] = json.loads(value)
        except ValueError:
            members[address] = {"address": address}

    @staticmethod
    def _apply_shard(view: ShardView, which: str, value: str | None, revision: int) -> None:
        if which == "target":
            view.target = value
        elif which == "owner":
            # A delete keeps its revision as the epoch, so a node can tell
            # that an owner key it wrote was removed after its claim.
            view.owner = value
            view.epoch = revision

    def _drop_lost_claims(self) -> None:
        """Forget claims the view says are gone (the lease expired under us)."""
        shards = self.state.shards
        lost = [s for s, epoch in self.owned.items()
                if shards[s].owner != self.address and shards[s].epoch >= epoch
                and s not in self.releasing]
        for shard in lost:
            del self.owned[shard]
        if lost:
            log.warning("%r lost %d shards it owned (its lease expired?)", self, len(lost))
            self._on_release(set(lost), time.monotonic())

    def _notify(self) -> None:
        changed, self._changed = self._changed, Event()
        changed.set()
        self._wake.set()

    def wait_changed(self, timeout: float) -> bool:
        """Block until the view changes or ``timeout`` passes."""
        return self._changed.wait(timeout)

    # ---- queries ---------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.state.leader == self.address

    def serving(self) -> bool:
        """True while this node's lease is surely alive (checked on every call)."""
        return time.monotonic() < self._lease_valid_until and not self._lease_tainted

    def held_throughout(self, shard: int, epoch: int) -> bool:
        """Has this node held ``shard`` at ``epoch`` all along, as far as it can tell?

        Asked when a call ends: the shard must not have been dropped or
        moved meanwhile, and the lease must not have lapsed. The lease is
        judged by when etcd could expire it at the earliest, not by
        :meth:`serving`'s earlier margin: that margin stops new work in
        time, while a call that was inside it when it started and ends
        before the lease can expire overlapped with no other owner.
        """
        return (self.owned.get(shard) == epoch and not self._lease_tainted
                and time.monotonic() < self._lease_expires_at)

    def accepts(self, shard: int | None) -> bool:
        """May this node activate objects of ``shard`` now?"""
        if shard is None:
            return self.serving()
        return shard in self.owned and shard not in self.releasing and self.serving()

    def route(self, shard: int) -> tuple[str | None, int]:
        """The owner of ``shard`` and its epoch, as far as this node knows."""
        if shard in self.owned and self.serving():
            return self.address, self.owned[shard]
        view = self.state.shards[shard]
        if view.owner is not None and view.owner in self.state.nodes:
            return view.owner, view.epoch
        return None, 0

    def is_member(self, address: str) -> bool:
        return address in self.state.nodes

    def ready_reason(self) -> str | None:
        """None when the cluster is ready, else why it is not."""
        if self._stopping:
            return "node is stopping"
        if not self.serving():
            return "this node's etcd lease is not confirmed"
        nodes = self.state.nodes
        unowned = sum(1 for v in self.state.shards if v.owner not in nodes)
        if unowned:
            return "%d of %d shards have no live owner" % (unowned, self.num_shards)
        # The watch can show our own claim before the claim's transaction
        # has returned to us: until then we would refuse those shards.
        unrecorded = sum(1 for n, v in enumerate(self.state.shards)
                         if v.owner == self.address and n not in self.owned)
        if unrecorded:
            return "%d shards claimed here are still being recorded" % (unrecorded,)
        stable_for = time.monotonic() - self._membership_changed
        if stable_for < self.stability_window:
            return "membership changed %.2fs ago (window %.2fs)" % (
                stable_for, self.stability_window)
        if self.role == "node" and self.address in self.suspects():
            return "most peers report they cannot reach this node (its shards move away)"
        return None

    def is_settled(self) -> bool:
        """Ready, balanced, and every shard served by its target (no move pending)."""
        if not self.is_ready():
            return False
        nodes = sorted(self.state.nodes)
        targets = [v.target for v in self.state.shards]
        if assignment.spread(targets, nodes) > 1:
            return False
        return all(v.owner == v.target for v in self.state.shards)

    def is_ready(self) -> bool:
        return self.ready_reason() is None

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.wait_changed(min(left, 0.1))
        return True

    def view(self) -> dict[str, Any]:
        """A plain snapshot of the cluster for tools and the admin plane."""
        owners: dict[str, int] = {}
        targets: dict[str, int] = {}
        for shard in self.state.shards:
            if shard.owner:
                owners[shard.owner] = owners.get(shard.owner, 0) + 1
            if shard.target:
                targets[shard.target] = targets.get(shard.target, 0) + 1
        return {
            "address": self.address,
            "leader": self.state.leader,
            "is_leader": self.is_leader,
            "role": self.role,
            "nodes": sorted(self.state.nodes),
            "gates": sorted(self.state.gates),
            "num_shards": self.num_shards,
            "shards_owned": owners,
            "shards_targeted": targets,
            "owned_here": len(self.owned),
            "ready": self.is_ready(),
            "ready_reason": self.ready_reason(),
            "settled": self.is_settled(),
            "revision": self.state.revision,
            "statistics": dict(self.statistics),
        }

    def shard_table(self) -> list[dict[str, Any]]:
        return [{"shard": n, "target": v.target, "owner": v.owner, "epoch": v.epoch}
                for n, v in enumerate(self.state.shards)]

    # ---- the lease -------------------------------------------------------

    def _keepalive_loop(self) -> None:
        interval = max(0.2, self.lease_ttl / 4.0)
        while not self._stopping:
            try:
                if self._lease_tainted:
                    self._replace_lease()
                else:
                    self._renew_lease()
            except GoverseError as exc:
                self._note_lease_trouble(exc)
                self._check_lease_deadline()
                gevent.sleep(min(interval, 0.25))
                continue
            gevent.sleep(interval)

    def _note_lease_trouble(self, exc: GoverseError) -> None:
        """Log lease trouble at WARNING once every ten seconds, else at DEBUG."""
        now = time.monotonic()
        what = "replace" if self._lease_tainted else "renew"
        if now - self._lease_warned_at >= 10.0:
            self._lease_warned_at = now
            log.warning("%r could not %s its etcd lease: %s", self, what, exc)
        else:
            log.debug("%r could not %s its etcd lease: %s", self, what, exc)

    def _renew_lease(self) -> None:
        sent = time.monotonic()
        remaining = self.client.keepalive_once(self.lease_id)
        if remaining <= 0:
            self._lose_everything("etcd lease expired")
            self._replace_lease()
            return
        self._lease_valid_until = sent + self._safe_ttl(remaining)
        self._lease_expires_at = sent + remaining

    def _check_lease_deadline(self) -> None:
        if not self.serving() and not self._lease_tainted and not self._stopping:
            self._lose_everything("lease renewal overdue")

    def _lose_everything(self, reason: str) -> None:
        """Stop serving every shard; the lease is then replaced before new claims.

        The old lease may still be alive (the renewal was only late, say
        because the event loop stalled): its owner keys would keep the
        shards from anyone else, so :meth:`_replace_lease` revokes it.
        """
        shards = set(self.owned)
        self.owned.clear()
        self._lease_tainted = True
        self._lease_valid_until = 0.0
        self.statistics["lease_losses"] += 1
        if shards:
            log.error("%r stops serving %d shards: %s", self, len(shards), reason)
            self._on_release(shards, time.monotonic())
        else:  # a gate, or a second report of a loss already handled
            log.warning("%r has no lease it can trust (%s); it served no shards", self,
                        reason)
        self._on_lost(reason)

    def _replace_lease(self) -> None:
        old = self.lease_id
        self.client.revoke_lease(old)
        self._register()
        self._lease_tainted = False
        self._wake.set()
        log.warning("%r registered again with lease %x (was %x)", self, self.lease_id, old)

    # ---- the control loop ------------------------------------------------

    def _control_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._control_step()
                backoff = 0.1
            except GoverseError as exc:
                log.warning("%r control step failed: %s", self, exc)
            except Exception:
                # A bug here must not end the loop: the node would never
                # claim or release a shard again.
                log.exception("%r control step failed", self)
            else:
                continue
            self._last_step = ()  # the view may be unchanged: try again anyway
            gevent.sleep(backoff + random.random() * backoff)
            backoff = min(backoff * 2, 2.0)

    def _control_step(self) -> None:
        if not self.serving():
            self._check_lease_deadline()
            return
        if self.address not in self._members() and not self._leaving:
            self._restore_member_key()
        if self.role != "node" or not self._worth_a_step():
            return
        if self.state.leader is None and not self._leaving:
            self._campaign()
        if self.is_leader:
            self._assign()
        self._claim()
        self._release()

    def _members(self) -> dict[str, Any]:
        return self.state.nodes if self.role == "node" else self.state.gates

    def _restore_member_key(self) -> None:
        """Our key went away while our lease lives (deleted by hand?): put it back."""
        if self.state.revision == 0:
            return  # no view yet
        info = self._member_info()
        if self._put_if_absent(self._member_key(), info, self.lease_id):
            log.warning("%r found its member key gone and registered again", self)

    def _worth_a_step(self) -> bool:
        """Skip walking every shard when nothing changed since the last step.

        The view's revision and this node's own claims cover every input of
        a step but time: while a timer may fire (see :meth:`_waiting_on_time`)
        a full step runs at least every second. A settled cluster walks its
        shards only when etcd tells it something: the walk over thousands of
        shards holds the event loop for milliseconds, which calls would see.
        """
        now = time.monotonic()
        marker = (self.state.revision, len(self.owned), self._leaving, self.lease_id)
        if marker == self._last_step and (now - self._last_step_at < 1.0
                                          or not self._waiting_on_time(now)):
            return False
        self._last_step = marker
        self._last_step_at = now
        return True

    def _waiting_on_time(self, now: float) -> bool:
        """Could a step with an unchanged view decide something new now?

        Time enters a step in three places: membership must be stable for
        the window before shards move; the leader gives away shards their
        target left unclaimed past ``claim_timeout``; and it probes again
        nodes it could not reach.
        """
        if now - self._membership_changed <= self.stability_window + 1.0:
            return True
        if not self.is_leader:
            return False
        if self._unclaimed_since:
            return True
        return self._probe is not None and not all(
            self._reachable.get(node) for node in self.state.nodes)

    def _campaign(self) -> None:
        key = self._key("leader")
        result = self.client.txn([cmp_version(key, "==", 0)],
                                 [op_put(key, self.address, lease=self.lease_id)])
        if result.succeeded:
            log.info("%r became leader", self)

    def _assign(self) -> None:
        nodes = self._assignable_nodes()
        if not nodes:
            return
        targets = self._targets_for_planning()
        # Orphaned shards are reassigned at once (failover must not wait).
        # Live shards move only when membership has been stable for the
        # window and the previous batch of moves has landed, so a join
        # moves shards in bounded batches rather than all at once.
        stable = time.monotonic() - self._membership_changed >= self.stability_window
        moves = MOVE_BATCH if stable and not self._moves_in_flight() else 0
        plan = assignment.plan_assignment(targets, nodes, max_moves=moves)
        if not plan:
            return
        leader_key = self._key("leader")
        items = sorted(plan.items())
        for start in range(0, len(items), TXN_BATCH):
            batch = items[start:start + TXN_BATCH]
            ops = [op_put(self._target_key(s), node) for s, node in batch]
            result = self.client.txn([cmp_value(leader_key, "==", self.address)], ops)
            if not result.succeeded:
                log.info("%r is no longer leader; assignment stopped", self)
                return
            for shard, node in batch:
                self.state.shards[shard].target = node
        self.statistics["assignments"] += len(items)
        log.info("%r assigned %d shards over %d nodes", self, len(items), len(nodes))

    def _assignable_nodes(self) -> list[str]:
        """Live nodes the leader has reached at least once, minus suspects.

        A new node is probed before it gets shards (a node with the wrong
        certificate, or behind a closed port, would otherwise own shards
        nobody can call); a node most of its peers report unreachable is
        left out until the reports clear (see :meth:`suspects`).
        """
        nodes = sorted(self.state.nodes)
        suspects = self.suspects()
        if suspects != self._suspects:
            if suspects:
                log.warning("%r: peers report %s unreachable; their shards move",
                            self, ", ".join(sorted(suspects)))
            else:
                log.info("%r: no node is reported unreachable any more", self)
            self._suspects = suspects
        kept = [node for node in nodes if node not in suspects]
        if kept:
            nodes = kept
        if self._probe is None:
            return nodes
        now = time.monotonic()
        for node in nodes:
            if self._reachable.get(node):
                continue
            if now - self._probed_at.get(node, 0.0) < 2.0:
                continue
            self._probed_at[node] = now
            self._reachable[node] = self._probe(node)
        for gone in set(self._reachable) - set(self.state.nodes):
            self._reachable.pop(gone, None)
            self._probed_at.pop(gone, None)
        return [node for node in nodes if self._reachable.get(node)]

    def _targets_for_planning(self) -> list[str | None]:
        """Current targets, with shards stuck unclaimed for too long treated as orphans."""
        now = time.monotonic()
        nodes = self.state.nodes
        targets = []
        stuck = 0
        for shard, view in enumerate(self.state.shards):
            target = view.target
            if target in nodes and view.owner is None:
                since = self._unclaimed_since.setdefault(shard, now)
                if now - since > self.claim_timeout:
                    target = None
                    stuck += 1
                    del self._unclaimed_since[shard]
            else:
                self._unclaimed_since.pop(shard, None)
            targets.append(target)
        if stuck:
            log.warning("%r reassigns %d shards their targets did not claim within %.3gs",
                        self, stuck, self.claim_timeout)
        return targets

    def _moves_in_flight(self) -> bool:
        """Is a shard still on its way to a live target?

        A move lands when the target owns the shard, not when the old owner
        lets go: between the two the shard answers nobody, so the next batch
        waits for the claims (a slow claimer would otherwise leave many
        batches unowned at once). A target that never claims is reassigned
        after ``claim_timeout``, which ends the wait.
        """
        nodes = self.state.nodes
        return any(v.target in nodes and v.owner != v.target for v in self.state.shards)

    def _claim(self) -> None:
        if self._leaving:
            return
        shards = self.state.shards
        wanted = [s for s, v in enumerate(shards)
                  if v.target == self.address and v.owner is None and s not in self.owned]
        for start in range(0, len(wanted), TXN_BATCH):
            self._claim_batch(wanted[start:start + TXN_BATCH])

    def _claim_batch(self, batch: list[int]) -> None:
        compare = [cmp_version(self._owner_key(s), "==", 0) for s in batch]
        ops = [op_put(self._owner_key(s), self.address, lease=self.lease_id) for s in batch]
        result = self.client.txn(compare, ops)
        if result.succeeded:
            for shard in batch:
                self.owned[shard] = result.revision
            self.statistics["claims"] += len(batch)
            log.debug("%r claimed %d shards at epoch %d", self, len(batch), result.revision)
        elif len(batch) > 1:
            for shard in batch:
                self._claim_batch([shard])

    def _release(self) -> None:
        shards = self.state.shards
        moving = {s for s in self.owned
                  if shards[s].target != self.address and shards[s].target in self.state.nodes}
        if not moving:
            return
        self.releasing |= moving
        try:
            self._on_release(moving, time.monotonic() + 5.0)
            self._delete_owner_keys(moving)
        finally:
            self.releasing -= moving

    def _delete_owner_keys(self, moving: set[int]) -> None:
        # Shards lost meanwhile (a lease problem) are no longer ours to delete.
        items = sorted((s, self.owned[s]) for s in moving if s in self.owned)
        for start in range(0, len(items), TXN_BATCH):
            self._delete_batch(items[start:start + TXN_BATCH])
        log.info("%r released %d shards", self, len(items))

    def _delete_batch(self, batch: list[tuple[int, int]]) -> None:
        compare = [cmp_mod_revision(self._owner_key(s), "==", epoch) for s, epoch in batch]
        result = self.client.txn(compare, [op_delete(self._owner_key(s)) for s, _ in batch])
        if not result.succeeded and len(batch) > 1:
            # One key changed under us: release the others one by one, or
            # their owner keys would stay behind on our lease.
            for item in batch:
                self._delete_batch([item])
            return
        for shard, _ in batch:
            self.owned.pop(shard, None)
        if result.succeeded:
            self.statistics["releases"] += len(batch)

    def check_alive(self) -> None:
        if self._stopping:
            raise NodeStopped("%r is stopping" % (self,))
