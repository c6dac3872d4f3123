"""The faults, and how long the cluster takes to be ready again after each.

Each fault function breaks a :class:`FaultCluster`, heals it, and returns
one :class:`Trial` per recovery it measured (a rolling upgrade measures
one per node). Times are ``time.monotonic()`` seconds, the clock of the
activation log.

- ``injected``: the fault began (signal sent, process killed).
- ``healed``: the cause went away (a new process started, SIGCONT,
  etcd back, SIGUSR2).
- ``ready``: every shard has a live owner in etcd, the observer's map
  equals etcd's, the gate can reach every node, and the fault's own
  condition holds (the shards a dead or frozen node held were claimed
  again; after a partition, no node is a suspect any more).
- ``settled``: ready, and no shard is still moving.
- ``failover`` (partition only): seconds from the cut until an object of
  the cut node answered from another node, while the cut lasted.

Recovery is ``ready - healed``; outage is ``ready - injected``.
"""

from __future__ import annotations

import random
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from google.protobuf.wrappers_pb2 import StringValue

from goverse.errors import GoverseError

from .harness import LEASE_TTL, FaultCluster

#: A partition lasts until the cut node's objects answer elsewhere, and at
#: least this long.
PARTITION_SECONDS = 4.0

#: How long a cut node's objects may take to answer from another node.
PARTITION_FAILOVER_LIMIT = 30.0

#: How long past its lease a SIGSTOPped node stays frozen.
STOP_PAST_LEASE = 1.5


@dataclass
class Trial:
    fault: str
    target: str
    injected: float
    healed: float
    ready: float
    settled: float
    exit_status: int | None = None
    failover: float | None = None

    @property
    def recovery(self) -> float:
        return self.ready - self.healed

    @property
    def outage(self) -> float:
        return self.ready - self.injected

    def window(self) -> tuple[float, float]:
        """When objects may legitimately vanish because of this fault."""
        return self.injected - 0.5, self.settled + 2.0

    def as_dict(self) -> dict[str, Any]:
        return dict(asdict(self), recovery=round(self.recovery, 3),
                    outage=round(self.outage, 3))


def kill_and_restart(cluster: FaultCluster, rng: random.Random) -> list[Trial]:
    """SIGKILL a random node, start it again on the same port at once."""
    index = rng.randrange(len(cluster.procs))
    victim = cluster.procs[index]
    held = cluster.epochs_owned_by(victim.address)
    injected = time.monotonic()
    victim.kill()
    # Taken once the process is surely dead: it writes no line after this.
    cluster.ends[victim.address].append(time.monotonic_ns())
    healed = time.monotonic()
    cluster.restart(index)
    ready, settled = cluster.wait_ready(injected, extra=lambda: cluster.reclaimed(held),
                                        settle=True)
    return [Trial("kill", victim.address, injected, healed, ready, settled)]


def stop_past_lease(cluster: FaultCluster, rng: random.Random) -> list[Trial]:
    """SIGSTOP a random node until its lease has lapsed, then SIGCONT it."""
    victim = rng.choice(cluster.procs)
    held = cluster.epochs_owned_by(victim.address)
    injected = time.monotonic()
    victim.signal(signal.SIGSTOP)
    cluster.ends[victim.address].append(time.monotonic_ns())
    try:
        time.sleep(LEASE_TTL + STOP_PAST_LEASE)
    finally:
        healed = time.monotonic()
        victim.signal(signal.SIGCONT)
    ready, settled = cluster.wait_ready(injected, extra=lambda: cluster.reclaimed(held),
                                        settle=True)
    return [Trial("stop", victim.address, injected, healed, ready, settled)]


def etcd_restart(cluster: FaultCluster, rng: random.Random) -> list[Trial]:
    """Kill etcd, keep it down until no node trusts its lease, restart it."""
    injected = time.monotonic()
    cluster.etcd.kill()
    try:
        deadline = injected + LEASE_TTL + 5
        while cluster.observer.cluster.serving() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        healed = time.monotonic()
        cluster.etcd.restart()
    ready, settled = cluster.wait_ready(injected, settle=True)
    return [Trial("etcd", cluster.etcd.endpoint, injected, healed, ready, settled)]


def partition(cluster: FaultCluster, rng: random.Random) -> list[Trial]:
    """Cut a random node's peer connections; its lease lives on.

    Its peers report it, the leader moves its shards, and its objects
    answer from other nodes while the cut lasts; once restored it gets
    shards back by rebalancing.
    """
    victim = rng.choice(cluster.procs)
    probe = _object_owned_by(cluster, victim.address)
    injected = time.monotonic()
    victim.signal(signal.SIGUSR1)
    failover = None
    try:
        deadline = injected + PARTITION_FAILOVER_LIMIT
        while time.monotonic() < deadline:
            where = _answer(cluster, probe)
            if where is not None and where != victim.address:
                failover = time.monotonic() - injected
                break
            time.sleep(0.05)
        time.sleep(max(0.0, injected + PARTITION_SECONDS - time.monotonic()))
    finally:
        healed = time.monotonic()
        victim.signal(signal.SIGUSR2)
    if failover is None:
        raise AssertionError("the objects of %s, cut from its peers, did not answer from "
                             "another node within %.0fs" % (victim.address,
                                                             PARTITION_FAILOVER_LIMIT))
    ready, settled = cluster.wait_ready(
        injected, extra=lambda: not cluster.observer.cluster.suspects()
        and _answer(cluster, probe) is not None, settle=True)
    return [Trial("partition", victim.address, injected, healed, ready, settled,
                  failover=failover)]


def rolling_upgrade(cluster: FaultCluster, rng: random.Random) -> list[Trial]:
    """SIGTERM every node in turn, wait for its clean exit, start it again."""
    trials = []
    for index in range(len(cluster.procs)):
        victim = cluster.procs[index]
        injected = time.monotonic()
        status = victim.terminate(timeout=30)
        healed = time.monotonic()
        cluster.restart(index)
        ready, settled = cluster.wait_ready(injected, settle=True)
        trials.append(Trial("rolling", victim.address, injected, healed, ready, settled,
                            exit_status=status))
    return trials


FAULTS: dict[str, Callable[[FaultCluster, random.Random], list[Trial]]] = {
    "kill": kill_and_restart,
    "stop": stop_past_lease,
    "etcd": etcd_restart,
    "partition": partition,
    "rolling": rolling_upgrade,
}

DESCRIPTIONS = {
    "kill": "kill -9 of a random node, restarted on the same port",
    "stop": "SIGSTOP of a random node for %.1f s (past its %d s lease), then SIGCONT"
            % (LEASE_TTL + STOP_PAST_LEASE, LEASE_TTL),
    "etcd": "etcd killed, kept down until the leases lapse, restarted",
    "partition": "a random node's peer connections cut (lease alive) until its objects "
                 "answer elsewhere, at least %.0f s, then restored" % PARTITION_SECONDS,
    "rolling": "rolling upgrade: SIGTERM each node in turn, clean exit, start again",
}


def _object_owned_by(cluster: FaultCluster, address: str) -> str:
    shard = next(s for s, view in enumerate(cluster.observer.cluster.state.shards)
                 if view.owner == address)
    return "shard#%d/partition-probe" % shard


def _answer(cluster: FaultCluster, object_id: str) -> str | None:
    """The node ``object_id`` answers from, through the gate; None if no answer."""
    try:
        return cluster.call_through_gate("Counter", object_id, "Where", StringValue(),
                                         StringValue, timeout=1.0).value
    except GoverseError:
        return None
