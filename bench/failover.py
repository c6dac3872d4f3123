"""failover: from kill -9 of a node to the first answer of its objects elsewhere.

Three ``bin/goverse-node`` children and the bench's in-process node (the
caller, which owns shards too) form a cluster. Each trial picks one child,
activates five of its objects, kills it with SIGKILL and calls those
objects until one answers from another node; then a fresh child replaces
the dead one and the cluster settles before the next trial. The baseline
is the configured lease TTL: a killed node's shards are free once its
lease expires.
"""

from __future__ import annotations

import itertools
import signal
import time

import gevent
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.errors import GoverseError
from goverse.sharding import placement

from .harness import Outcome, Run, percentile, start_node, start_processes, wait_settled

NAME = "failover"
TITLE = "kill -9 of 1 of 3 nodes to the first answer elsewhere"
SHARDS = 256
LEASE_TTL = 3
PROBES = 5
GOAL_P99 = 5.0


def owned_ids(node, address: str, stem: str, count: int) -> list[str]:
    found = []
    for n in itertools.count():
        object_id = "%s-%d" % (stem, n)
        if node.cluster.route(placement(object_id, SHARDS).shard)[0] == address:
            found.append(object_id)
            if len(found) == count:
                return found


def first_answer_after_kill(node, victim, ids: list[str]) -> float:
    """Kill ``victim``; seconds until any of ``ids`` answers from elsewhere."""
    request = Int64Value(value=1)
    answered: list[float] = []

    def call_until_answered(object_id: str) -> None:
        while time.monotonic() - killed_at < 60:
            try:
                node.call_object("BenchCounter", object_id, "Add", request, timeout=10)
            except GoverseError:
                continue  # sent to the dead node, or no owner yet: try again
            answered.append(time.monotonic() - killed_at)
            return

    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    callers = [gevent.spawn(call_until_answered, object_id) for object_id in ids]
    gevent.joinall(callers, raise_error=True)
    victim.wait(10)
    if not answered:
        raise RuntimeError("no object of %r answered within 60 s of its kill" % (victim,))
    return min(answered)


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    trials = 3 if ctx.short else 20
    prefix = ctx.prefix(NAME)
    args = ("--num-shards", str(SHARDS), "--lease-ttl", str(LEASE_TTL))
    procs = start_processes(ctx, prefix, 3, NAME + "-0", args)
    spawned = list(procs)
    node = None
    samples: list[float] = []
    try:
        node = start_node(ctx, prefix, num_shards=SHARDS, lease_ttl=LEASE_TTL,
                          call_timeout=10.0)
        for trial in range(trials):
            wait_settled(node, {p.address for p in procs} | {node.address})
            victim = procs[trial % len(procs)]
            ids = owned_ids(node, victim.address, "t%d" % trial, PROBES)
            for object_id in ids:
                node.call_object("BenchCounter", object_id, "Add", Int64Value(value=1))
            samples.append(first_answer_after_kill(node, victim, ids))
            procs.remove(victim)
            fresh = start_processes(ctx, prefix, 1, "%s-%d" % (NAME, trial + 1), args)
            procs += fresh
            spawned += fresh
    finally:
        if node is not None:
            node.stop(grace=1)
        for proc in spawned:
            proc.kill()
            proc.close()

    p50, p99 = percentile(samples, 0.5), percentile(samples, 0.99)
    out.add("kill -9 to first answer p50", p50, "s", LEASE_TTL, "lease TTL")
    out.add("kill -9 to first answer p99", p99, "s", LEASE_TTL, "lease TTL",
            goal="<= %.0f s" % GOAL_P99, met=p99 <= GOAL_P99)
    out.note("%d trials; 3 node processes and the in-process caller node, %d shards, "
             "lease TTL %d s; %d objects of the victim probed per trial; samples: %s" % (
                 trials, SHARDS, LEASE_TTL, PROBES,
                 ", ".join("%.2f" % s for s in samples)))
    return out
