"""A cluster to break on purpose: three node processes, their own etcd, one gate.

:class:`FaultCluster` runs ``bin/goverse-node`` processes with the test
fault switch (``GOVERSE_TEST_FAULTS=1``: SIGUSR1 cuts a node's peer
connections, SIGUSR2 restores them) and the activation log
(``GOVERSE_TEST_ACTIVATION_LOG``), on an etcd of their own so that etcd
itself can be killed and restarted. A gate runs in this process: clients
reach the cluster through it, and its node is the observer whose view of
the shard map is compared with etcd's.

The activation-log helpers here are shared with ``tests/test_failover.py``.
"""

from __future__ import annotations

import collections
import itertools
import os
import signal
import time
import uuid
from typing import Any, Callable

from goverse.config import Settings
from goverse.errors import GoverseError
from goverse.etcd import EtcdClient
from goverse.etcd_server import EtcdServer
from goverse.testing import NodeProcess

#: Few shards keep claims and moves quick; every node must use the same count.
SHARDS = 256

#: The default lease; a SIGSTOPped node stays frozen past it.
LEASE_TTL = 3

#: Object modules of the node processes (counters, spawners, pushers).
OBJECTS = "tests.sample_objects,tests.gate_objects"

NODE_ARGS = ["--num-shards", str(SHARDS), "--stability-window", "0.2",
             "--shutdown-grace", "5", "--lease-ttl", str(LEASE_TTL)]

#: How long a cluster may take to form or re-form on a busy two-core machine.
SETTLE_TIMEOUT = 60.0

#: Deadline of every operation the driver makes through the gate.
OP_TIMEOUT = 5.0


# -- etcd's own view ----------------------------------------------------------


def etcd_shard_owners(endpoint: str, prefix: str) -> tuple[set[str], dict[int, str]]:
    """Live node keys and shard owners as etcd itself holds them."""
    with EtcdClient([endpoint], timeout=2.0) as client:
        kvs, _ = client.get_prefix(prefix + "/")
    nodes, owners = set(), {}
    for kv in kvs:
        parts = kv.key[len(prefix) + 1:].split("/")
        if parts[0] == "nodes":
            nodes.add(parts[1])
        elif parts[0] == "shards" and parts[2] == "owner":
            owners[int(parts[1])] = kv.value.decode()
    return nodes, owners



# -- the activation log -------------------------------------------------------


#: ``(monotonic ns, node, "activate" or "deactivate", epoch, object id)``
LogLine = tuple[int, str, str, int, str]

#: ``(start ns, end ns, node)``: one node held one id active in between.
Span = tuple[int, int, str]


def read_activation_log(path: str) -> list[LogLine]:
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            stamp, node, event, epoch, object_id = line.split()
            assert event in ("activate", "deactivate"), line
            events.append((int(stamp), node, event, int(epoch), object_id))
    events.sort()
    return events


def activation_intervals(events: list[LogLine],
                         ends: dict[str, list[int]]) -> dict[str, list[Span]]:
    """Per id, the ``(start, end, node)`` spans during which a node held it active.

    A node that was SIGKILLed writes no deactivation: ``ends`` gives, per
    node address, the times its process was known dead (or frozen), and an
    activation still open then ends there. A later incarnation on the same
    address starts fresh after that time; a frozen node that resumes may
    still write the deactivation of a span that ended so.
    """
    never = 2 ** 63
    opened: dict[tuple[str, str], int] = {}
    cut: set[tuple[str, str]] = set()
    spans: dict[str, list[Span]] = collections.defaultdict(list)

    def end_of(node: str, start: int, before: int) -> int | None:
        return next((t for t in sorted(ends.get(node, ())) if start <= t <= before), None)

    for stamp, node, event, _, object_id in events:
        key = (node, object_id)
        if key in opened:
            ended = end_of(node, opened[key], stamp)
            if ended is not None:
                spans[object_id].append((opened.pop(key), ended, node))
                cut.add(key)
        if event == "activate":
            assert key not in opened, "%s activated %s twice without deactivating it" % (
                node, object_id)
            opened[key] = stamp
            cut.discard(key)
        elif key in cut:
            cut.discard(key)
        else:
            assert key in opened, "%s deactivated %s, which it had not activated" % (
                node, object_id)
            spans[object_id].append((opened.pop(key), stamp, node))
    for (node, object_id), start in opened.items():
        ended = end_of(node, start, never)
        spans[object_id].append((start, never if ended is None else ended, node))
    return spans


def double_activations(spans: dict[str, list[Span]]) -> list[str]:
    """Descriptions of every pair of spans of one id on two nodes that overlap."""
    found = []
    for object_id, intervals in spans.items():
        intervals = sorted(intervals)
        for i, (start, end, node) in enumerate(intervals):
            for other_start, other_end, other_node in intervals[i + 1:]:
                if other_start >= end:
                    break
                if other_node != node:
                    found.append("%s on %s [%d, %d] and on %s [%d, %d]" % (
                        object_id, node, start, end, other_node, other_start, other_end))
    return found



# -- the cluster ----------------------------------------------------------------


class FaultCluster:
    """Three node processes, their own etcd and an in-process gate.

    ``ends`` records, per node address, when a process of it was SIGKILLed
    or SIGSTOPped (monotonic ns): activations it still held end there.
    """

    def __init__(self, workdir: str, *, nodes: int = 3) -> None:
        self.workdir = workdir
        self.size = nodes
        self.prefix = "/goverse-faults/%s" % uuid.uuid4().hex
        self.activation_log = os.path.join(workdir, "activations.log")
        self.etcd = EtcdServer(name="goverse-faults-etcd",
                               log_path=os.path.join(workdir, "etcd.log"))
        self.procs: list[NodeProcess] = []
        self.ends: dict[str, list[int]] = collections.defaultdict(list)
        self.gate: Any = None
        self._serial = itertools.count()

    def __repr__(self) -> str:
        return "<FaultCluster %s nodes=%s>" % (self.prefix, [p.address for p in self.procs])

    # ---- life cycle

    def start(self) -> FaultCluster:
        from goverse.gate import Gate

        self.etcd.start()
        self.procs = [self._new_node() for _ in range(self.size)]
        for proc in self.procs:
            proc.start(wait=False)
        for proc in self.procs:
            proc.wait_serving()
        settings = Settings.from_mapping(dict(
            # The load goes through the gate's gRPC side only: no HTTP
            # port (a fixed default would collide with anything on it).
            listen="127.0.0.1:0", http_listen="", etcd_endpoints=[self.etcd.endpoint],
            etcd_prefix=self.prefix, num_shards=SHARDS, stability_window=0.2,
            lease_ttl=LEASE_TTL, call_timeout=OP_TIMEOUT))
        self.gate = Gate(settings).start(wait_ready=False)
        self.wait_ready(time.monotonic(), settle=True)
        return self

    def _new_node(self, port: int | None = None) -> NodeProcess:
        env = {"GOVERSE_TEST_FAULTS": "1",
               "GOVERSE_TEST_ACTIVATION_LOG": self.activation_log,
               "GRPC_ENABLE_FORK_SUPPORT": "0"}
        log_path = os.path.join(self.workdir, "node-%d.log" % next(self._serial))
        return NodeProcess(self.etcd.endpoint, prefix=self.prefix, objects=[OBJECTS],
                           port=port, extra_args=NODE_ARGS, env=env, log_path=log_path)

    def restart(self, index: int) -> NodeProcess:
        """Start a new process on the address of ``procs[index]`` (which has ended)."""
        proc = self._new_node(port=self.procs[index].port)
        self.procs[index].close()
        self.procs[index] = proc.start()
        return proc

    def close(self) -> None:
        if self.gate is not None:
            self.gate.stop(grace=1)
        for proc in self.procs:
            proc.signal(signal.SIGCONT)  # a frozen node would not die otherwise
            proc.kill()
            proc.close()
        self.etcd.stop()

    # ---- views

    @property
    def observer(self) -> Any:
        """The gate's node: it sees the cluster as every router does."""
        return self.gate.node

    def addresses(self) -> set[str]:
        return {proc.address for proc in self.procs}

    def epochs_owned_by(self, address: str) -> dict[int, int]:
        return {shard: view.epoch
                for shard, view in enumerate(self.observer.cluster.state.shards)
                if view.owner == address}

    def reclaimed(self, held: dict[int, int]) -> bool:
        """Has every shard of ``held`` been claimed again after its epoch there?"""
        shards = self.observer.cluster.state.shards
        return all(shards[shard].owner is not None and shards[shard].epoch > epoch
                   for shard, epoch in held.items())

    def not_ready_reason(self) -> str | None:
        """None when every shard has a live owner, in etcd and for the observer."""
        dead = [proc.address for proc in self.procs if not proc.alive()]
        if dead:
            return "node processes not running: %s" % dead
        try:
            nodes, owners = etcd_shard_owners(self.etcd.endpoint, self.prefix)
        except GoverseError as exc:
            return "etcd does not answer: %s" % (exc,)
        expected = self.addresses()
        if nodes != expected:
            return "etcd lists nodes %s, not %s" % (sorted(nodes), sorted(expected))
        orphans = [s for s in range(SHARDS) if owners.get(s) not in expected]
        if orphans:
            return "%d shards have no live owner in etcd" % len(orphans)
        cluster = self.observer.cluster
        seen = {n: v.owner for n, v in enumerate(cluster.state.shards)}
        if seen != owners:
            differ = sum(1 for s in range(SHARDS) if seen.get(s) != owners.get(s))
            return "the observer's shard map differs from etcd's at %d shards" % differ
        if set(cluster.state.nodes) != expected:
            return "the observer sees nodes %s" % sorted(cluster.state.nodes)
        return self.gate.ready_reason()

    def wait_ready(self, since: float, *, extra: Callable[[], bool] | None = None,
                   settle: bool = False,
                   timeout: float = SETTLE_TIMEOUT) -> tuple[float, float | None]:
        """Wait until ready (and ``extra``), then settled if asked; returns both times."""
        deadline = since + timeout
        ready_at = settled_at = None
        reason: str | None = "not polled yet"
        while time.monotonic() < deadline:
            now = time.monotonic()
            if ready_at is None:
                reason = self.not_ready_reason()
                if reason is None and (extra is None or extra()):
                    ready_at = now
                elif reason is None:
                    reason = "the fault's own condition does not hold yet"
            if ready_at is not None:
                if not settle:
                    return ready_at, None
                if self.observer.cluster.is_settled() and self.not_ready_reason() is None:
                    settled_at = now
                    return ready_at, settled_at
                reason = "ready but not settled"
            time.sleep(0.05)
        raise AssertionError("%r not %s within %.0fs of the fault: %s" % (
            self, "settled" if ready_at else "ready", timeout, reason))
