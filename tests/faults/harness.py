"""A cluster to break on purpose: three node processes, their own etcd, one gate.

:class:`FaultCluster` runs ``bin/goverse-node`` processes with the test
fault switch (``GOVERSE_TEST_FAULTS=1``: SIGUSR1 cuts a node's peer
connections, SIGUSR2 restores them) and the activation log
(``GOVERSE_TEST_ACTIVATION_LOG``), on an etcd of their own so that etcd
itself can be killed and restarted. Clients reach the cluster through one
gate. The gate runs in this process (``gate="inline"``, the default), and
its node is then the observer whose view of the shard map is compared
with etcd's; or it runs as a ``bin/goverse-gate`` child (``gate="process"``),
so that its memory is measured apart from the driver's. A gate-role node
of this process is then the observer, and the gate process must also
report itself ready (push links included) in its HTTP status and show
etcd's shard map on its admin plane (``/shards``); the faults' probe
calls go through its HTTP API. ``GOVERSE_FAULT_GATE=process`` runs the
fault suite that way.

The activation-log helpers here are shared with ``tests/test_failover.py``.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

from google.protobuf import any_pb2

from goverse.config import Settings
from goverse.errors import GoverseError, PeerUnavailable, error_from_kind
from goverse.etcd import EtcdClient
from goverse.etcd_server import EtcdServer
from goverse.testing import GateProcess, NodeProcess, free_port

#: Few shards keep claims and moves quick; every node must use the same count.
SHARDS = 256

#: The default lease; a SIGSTOPped node stays frozen past it.
LEASE_TTL = 3

#: Object modules of the node processes (counters, spawners, pushers).
OBJECTS = "tests.sample_objects,tests.gate_objects"

NODE_ARGS = ["--num-shards", str(SHARDS), "--stability-window", "0.2",
             "--shutdown-grace", "5", "--lease-ttl", str(LEASE_TTL)]

#: Where the gate runs: in this process, or as a ``bin/goverse-gate`` child.
GATE_MODES = ("inline", "process")

#: How long a cluster may take to form or re-form on a busy two-core machine.
SETTLE_TIMEOUT = 60.0

#: Deadline of every operation the driver makes through the gate.
OP_TIMEOUT = 5.0

#: Settings of the gate, the same in both modes.
GATE_SETTINGS = dict(num_shards=SHARDS, stability_window=0.2, lease_ttl=LEASE_TTL,
                     call_timeout=OP_TIMEOUT)


def gate_mode_from_env(default: str = "inline") -> str:
    mode = os.environ.get("GOVERSE_FAULT_GATE", "") or default
    if mode not in GATE_MODES:
        raise ValueError("GOVERSE_FAULT_GATE must be one of %s, not %r" % (GATE_MODES, mode))
    return mode


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
    """Three node processes, their own etcd and a gate (in this process or a child).

    ``ends`` records, per node address, when a process of it was SIGKILLed
    or SIGSTOPped (monotonic ns): activations it still held end there.
    """

    def __init__(self, workdir: str, *, nodes: int = 3, gate: str = "inline") -> None:
        if gate not in GATE_MODES:
            raise ValueError("gate must be one of %s, not %r" % (GATE_MODES, gate))
        self.workdir = workdir
        self.size = nodes
        self.gate_mode = gate
        self.prefix = "/goverse-faults/%s" % uuid.uuid4().hex
        self.activation_log = os.path.join(workdir, "activations.log")
        self.etcd = EtcdServer(name="goverse-faults-etcd",
                               log_path=os.path.join(workdir, "etcd.log"))
        self.procs: list[NodeProcess] = []
        self.ends: dict[str, list[int]] = collections.defaultdict(list)
        #: The gate: a ``goverse.gate.Gate`` (inline) or a ``GateProcess``.
        self.gate: Any = None
        self._observer: Any = None
        self._gate_admin = ""
        self._serial = itertools.count()

    def __repr__(self) -> str:
        return "<FaultCluster %s nodes=%s gate=%s>" % (
            self.prefix, [p.address for p in self.procs], self.gate_mode)

    # ---- life cycle

    def start(self) -> FaultCluster:
        """Start etcd, the nodes and the gate; everything started is closed on failure."""
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.etcd.start()
        self.procs = [self._new_node() for _ in range(self.size)]
        for proc in self.procs:
            proc.start(wait=False)
        for proc in self.procs:
            proc.wait_serving()
        # The inline gate's, or the observer's beside a gate process. The load
        # goes through the gate's gRPC side only: no HTTP port (a fixed
        # default would collide with anything on it).
        settings = Settings.from_mapping(dict(
            listen="127.0.0.1:0", http_listen="", etcd_endpoints=[self.etcd.endpoint],
            etcd_prefix=self.prefix, **GATE_SETTINGS))
        if self.gate_mode == "process":
            self.gate = self._gate_process().start(False)
            # The faults read the shard map, the lease and the reports of
            # unreachable peers of a node in this process: a gate-role node,
            # which hosts nothing and, calling nothing, opens no connection
            # to the nodes.
            from goverse.node import Node

            self._observer = Node(settings, role="gate").start(wait_ready=False)
            self.gate.wait_serving()
        else:
            from goverse.gate import Gate

            self.gate = Gate(settings).start(wait_ready=False)
        self.wait_ready(time.monotonic(), settle=True)

    def _gate_process(self) -> GateProcess:
        # Its HTTP status says whether it is ready (push links included)
        # and settled; its admin plane shows its shard map. It logs what
        # the driver logs: warnings (at INFO it logs every create and delete).
        self._gate_admin = "127.0.0.1:%d" % free_port()
        args = ["--admin-listen", self._gate_admin, "--log-level", "WARNING"]
        for name, value in GATE_SETTINGS.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        return GateProcess(self.etcd.endpoint, prefix=self.prefix, objects=[OBJECTS],
                           extra_args=args, log_path=os.path.join(self.workdir, "gate.log"))

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
        """Stop the gate, the nodes and etcd. Idempotent."""
        if self._observer is not None:
            self._observer.stop(grace=1)
        if self.gate is not None:
            if self.gate_mode == "process":
                self.gate.close()
            else:
                self.gate.stop(grace=1)
        for proc in self.procs:
            proc.signal(signal.SIGCONT)  # a frozen node would not die otherwise
            proc.kill()
            proc.close()
        self.etcd.stop()

    # ---- views

    @property
    def observer(self) -> Any:
        """A node of this process that sees the cluster as every router does.

        The inline gate's own node; beside a gate process, a gate-role node
        of its own (the gate process is then read through its endpoints).
        """
        return self.gate.node if self.gate_mode == "inline" else self._observer

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

    def gate_status(self, **query: Any) -> dict[str, Any]:
        """The gate process's ``/api/v1/status`` (``greenlets=1`` adds its counts)."""
        return self.gate.status(timeout=2.0, **query)

    def _gate_shard_owners(self) -> dict[int, str | None]:
        url = "http://%s/shards" % (self._gate_admin,)
        with urllib.request.urlopen(url, timeout=2.0) as reply:
            return {row["shard"]: row["owner"] for row in json.loads(reply.read())["shards"]}

    def gate_not_ready_reason(self, owners: dict[int, str]) -> str | None:
        """None when the gate serves, reaches every node and routes as etcd says."""
        if self.gate_mode == "inline":
            return self.gate.ready_reason()
        if not self.gate.alive():
            return "the gate process is not running"
        try:
            reason = self.gate_status()["ready_reason"]
            if reason is not None:
                return "gate process: %s" % (reason,)
            seen = self._gate_shard_owners()
        except OSError as exc:
            return "the gate process does not answer: %s" % (exc,)
        if seen != owners:
            differ = sum(1 for s in range(SHARDS) if seen.get(s) != owners.get(s))
            return "the gate process's shard map differs from etcd's at %d shards" % differ
        return None

    def settled(self) -> bool:
        """Ready, and no shard moving, as the observer (and the gate process) see it."""
        if not self.observer.cluster.is_settled():
            return False
        if self.gate_mode == "inline":
            return True
        try:
            return bool(self.gate_status()["settled"])
        except OSError:
            return False

    def call_through_gate(self, type_name: str, object_id: str, method: str, request: Any,
                          response_type: type, *, timeout: float) -> Any:
        """Call an object through the gate, beside the load; raises a GoverseError.

        A gate process is asked over its HTTP API: a connection per call,
        closed after it, so the probe leaves no descriptor open anywhere.
        """
        if self.gate_mode == "inline":
            return self.observer.call_object(type_name, object_id, method, request,
                                             timeout=timeout)
        packed = any_pb2.Any()
        packed.Pack(request)
        url = "%s/api/v1/objects/call/%s" % (self.gate.url, urllib.parse.quote(
            "%s/%s/%s" % (type_name, object_id, method)))
        body = json.dumps({"request": base64.b64encode(packed.SerializeToString()).decode()})
        asked = urllib.request.Request(url, data=body.encode(), method="POST",
                                       headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(asked, timeout=timeout) as reply:
                answer = json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            failure = json.loads(exc.read() or b"{}")
            raise error_from_kind(failure.get("kind", "HTTPError"),
                                  failure.get("error", str(exc))) from None
        except OSError as exc:
            raise PeerUnavailable("gate %s: %s" % (self.gate.http_address, exc)) from None
        response = response_type()
        any_pb2.Any.FromString(base64.b64decode(answer["response"])).Unpack(response)
        return response

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
        return self.gate_not_ready_reason(owners)

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
                if self.settled() and self.not_ready_reason() is None:
                    settled_at = now
                    return ready_at, settled_at
                reason = "ready but not settled"
            time.sleep(0.05)
        raise AssertionError("%r not %s within %.0fs of the fault: %s" % (
            self, "settled" if ready_at else "ready", timeout, reason))
