"""local-call: calls per second on one node, caller and objects in one process.

100 caller greenlets spread their calls over 1,000 objects through
``goverse.call_object``. The baseline does the least a turn-based call
can do in the same process: a dict lookup, a ``gevent.lock.Semaphore``
and a plain method call. Every caller of both sides sleeps(0) every 100
calls, and every 0.25 s waits for the hub to go idle (``gevent.idle()``):
a call to a local idle object never blocks, so callers that never yield
starve the hub, where the node's lease renewal runs, and ``sleep(0)``
alone does not let that renewal's answer arrive.
"""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value
from gevent.lock import Semaphore

import goverse

from .harness import IDLE_INTERVAL, Outcome, Run, drive, start_node

NAME = "local-call"
TITLE = "calls/s on one node, 100 callers over 1,000 objects"
OBJECTS = 1000
CALLERS = 100
YIELD_EVERY = 100
GOAL = 200_000


class _Plain:
    """The baseline's object: a lock and a method, nothing else."""

    __slots__ = ("lock", "total")

    def __init__(self) -> None:
        self.lock = Semaphore()
        self.total = 0

    def add(self, request: Int64Value) -> Int64Value:
        self.total += request.value
        return Int64Value(value=self.total)


def baseline_rate(total: int) -> float:
    objects = {"b%d" % n: _Plain() for n in range(OBJECTS)}
    ids = list(objects)
    request = Int64Value(value=1)

    def call(k: int, n: int) -> None:
        obj = objects[ids[(k * 7 + n) % OBJECTS]]
        with obj.lock:
            obj.add(request)

    rate, _ = drive(call, total, CALLERS, latencies=False, yield_every=YIELD_EVERY)
    return rate


def goverse_rate(total: int) -> float:
    ids = ["c%d" % n for n in range(OBJECTS)]
    request = Int64Value(value=1)
    for object_id in ids:
        goverse.call_object("BenchCounter", object_id, "Add", request)

    def call(k: int, n: int) -> None:
        goverse.call_object("BenchCounter", ids[(k * 7 + n) % OBJECTS], "Add", request)

    rate, _ = drive(call, total, CALLERS, latencies=False, yield_every=YIELD_EVERY)
    return rate


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    total = 50_000 if ctx.short else 400_000
    node = start_node(ctx, ctx.prefix(NAME))
    try:
        rate = goverse_rate(total)
    finally:
        node.stop(grace=1)
    base = baseline_rate(total)
    out.add("goverse local calls", rate, "calls/s", base,
            "dict + gevent Semaphore + method", goal=">= %d calls/s" % GOAL,
            met=rate >= GOAL)
    out.note("%d calls, %d callers over %d objects; on both sides every caller "
             "sleeps(0) every %d calls and calls gevent.idle() every %.2g s: a "
             "never-blocking caller starves the hub, and with sleep(0) alone the "
             "node's lease renewal never got its answer and the node stopped "
             "serving its shards about 2.7 s into the run." % (
                 total, CALLERS, OBJECTS, YIELD_EVERY, IDLE_INTERVAL))
    return out
