"""create: asynchronous creates acknowledged per second on one node.

``create_object_async`` returns once the id is validated, routed and the
operation recorded; the creation runs in a detached greenlet. The bench
issues creates in bursts of 1,000 without yielding (the acknowledgement
rate counts the time inside the calls), then waits for the burst's
operations (the completion rate counts the wall time of everything).
Create-to-first-call latency is measured one object at a time: create,
then call it at once. The baseline is Ray actor creation, each actor
answering one call, in the child process of ``ray-call``.
"""

from __future__ import annotations

import time

import gevent
from google.protobuf.wrappers_pb2 import Int64Value

import goverse

from .harness import Outcome, Run, percentile, start_node
from .ray_call import ray_results

NAME = "create"
TITLE = "async creates/s and create-to-first-call latency, vs Ray actors"
BURST = 1000
GOAL = 10_000


def create_rates(count: int) -> tuple[float, float]:
    """(acknowledged creates/s, completed creates/s)."""
    acknowledging = 0.0
    started = time.perf_counter()
    for first in range(0, count, BURST):
        burst_started = time.perf_counter()
        ops = [goverse.create_object_async("BenchCounter", "n%d" % n)
               for n in range(first, min(count, first + BURST))]
        acknowledging += time.perf_counter() - burst_started
        for op in ops:
            op.wait(timeout=60)
    return count / acknowledging, count / (time.perf_counter() - started)


def first_call_latency(count: int) -> list[float]:
    request = Int64Value(value=1)
    samples = []
    for n in range(count):
        started = time.perf_counter()
        object_id = goverse.create_object("BenchCounter", "f%d" % n)
        goverse.call_object("BenchCounter", object_id, "Add", request)
        samples.append(time.perf_counter() - started)
        if n % 100 == 99:
            gevent.idle()  # let the detached creates and the lease renewal run
    return samples


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    count, latency_count = (20_000, 2_000) if ctx.short else (100_000, 10_000)
    node = start_node(ctx, ctx.prefix(NAME))
    try:
        acked, completed = create_rates(count)
        samples = first_call_latency(latency_count)
    finally:
        node.stop(grace=1)

    ray = ray_results(ctx)
    ray_rate = ray.get("create_rate")
    ray_latency = ray.get("create_latency") or []
    name = "Ray %s actor created and answered" % ray.get("version", "?")
    out.add("creates acknowledged", acked, "creates/s", ray_rate, name,
            goal=">= %d creates/s" % GOAL, met=acked >= GOAL)
    out.add("creates completed", completed, "creates/s", ray_rate, name)
    out.add("create-to-first-call p50", percentile(samples, 0.5) * 1e3, "ms",
            percentile(ray_latency, 0.5) * 1e3 if ray_latency else None,
            "Ray create-to-first-answer p50")
    out.add("create-to-first-call p99", percentile(samples, 0.99) * 1e3, "ms",
            percentile(ray_latency, 0.99) * 1e3 if ray_latency else None,
            "Ray create-to-first-answer p99")
    out.note("%d creates in bursts of %d; %d create-then-call samples, one at a "
             "time." % (count, BURST, latency_count))
    if "error" in ray:
        out.note("Ray baseline not measured: %s" % ray["error"])
    else:
        out.note("Ray: %d actors created at once for the rate, %d one at a time for "
                 "the latency (each actor is a worker process)." % (
                     ray["creates"], len(ray_latency)))
    return out
