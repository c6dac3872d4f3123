"""peer-call: cross-node calls per second between two node processes.

The bench process runs an in-process node (the callers' side); a
``bin/goverse-node`` child hosts 1,000 objects pinned to it by their ids
(``<address>/o<n>``). 128 caller greenlets call them through
``goverse.call_object``, which batches the requests on one stream. The
baseline is the node's unary ``CallObject`` RPC from the same process to
the same objects with the same payload: one gRPC call per object call.
Both sides also note the CPU each process spent per call, a figure that
shared cores disturb less than the rates.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value

import goverse
from goverse._pb import goverse_pb2 as pb

from .gates import cpu_seconds
from .harness import Outcome, Run, drive, percentile, start_node, start_processes

NAME = "peer-call"
TITLE = "cross-node calls/s, 2 node processes, 128 callers, vs unary gRPC"
OBJECTS = 1000
CALLERS = 128
GOAL_RATIO = 15
GOAL_P99_MS = 15


def measure(ctx: Run) -> dict[str, Any]:
    """Run both sides once per bench run; later askers get the same figures."""
    if "peer" not in ctx.shared:
        ctx.shared["peer"] = _measure(ctx)
    return ctx.shared["peer"]


def _measure(ctx: Run) -> dict[str, Any]:
    calls, unary_calls = (10_000, 1_000) if ctx.short else (120_000, 6_000)
    prefix = ctx.prefix(NAME)
    procs = start_processes(ctx, prefix, 1, NAME)
    node = None
    try:
        node = start_node(ctx, prefix)
        ids = ["%s/o%d" % (procs[0].address, n) for n in range(OBJECTS)]
        request = Int64Value(value=1)
        for object_id in ids:  # activate them all before timing
            goverse.call_object("BenchCounter", object_id, "Add", request)
        figures = {"calls": calls, "unary_calls": unary_calls}
        pid = procs[0].pid
        figures.update(_stream_side(ids, request, calls, pid))
        figures.update(_unary_side(procs[0].stub(), ids, request, unary_calls, pid))
        return figures
    finally:
        if node is not None:
            node.stop(grace=1)
        for proc in procs:
            proc.close()


def _stream_side(ids: list[str], request: Int64Value, calls: int,
                 pid: int) -> dict[str, float]:
    def call(k: int, n: int) -> None:
        goverse.call_object("BenchCounter", ids[(k * 7 + n) % OBJECTS], "Add", request)

    drive(call, min(calls, 5_000), CALLERS)  # warm the stream
    return _timed(call, calls, pid, "")


def _timed(call: Any, calls: int, pid: int, prefix: str) -> dict[str, float]:
    """Drive ``calls``; their rate, latency and CPU per call of both processes."""
    before = cpu_seconds(), cpu_seconds(pid)
    rate, samples = drive(call, calls, CALLERS)
    after = cpu_seconds(), cpu_seconds(pid)
    done = len(samples)
    return {prefix + "rate": rate, prefix + "p50": percentile(samples, 0.5),
            prefix + "p99": percentile(samples, 0.99),
            prefix + "cpu_bench": (after[0] - before[0]) / done * 1e6,
            prefix + "cpu_node": (after[1] - before[1]) / done * 1e6}


def _unary_side(stub: Any, ids: list[str], request: Int64Value,
                calls: int, pid: int) -> dict[str, float]:
    packed = any_pb2.Any()
    packed.Pack(request)
    messages = [pb.CallObjectRequest(id=object_id, type="BenchCounter", method="Add",
                                     request=packed) for object_id in ids]

    def call(k: int, n: int) -> None:
        stub.CallObject(messages[(k * 7 + n) % OBJECTS], timeout=30)

    drive(call, min(calls, 500), CALLERS)
    return _timed(call, calls, pid, "unary_")


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    m = measure(ctx)
    ratio = m["rate"] / m["unary_rate"]
    out.add("goverse peer calls", m["rate"], "calls/s", m["unary_rate"],
            "unary CallObject, same objects and payload",
            goal=">= %dx unary" % GOAL_RATIO, met=ratio >= GOAL_RATIO)
    p99_ms = m["p99"] * 1e3
    out.add("goverse peer call p50", m["p50"] * 1e3, "ms", m["unary_p50"] * 1e3,
            "unary p50")
    out.add("goverse peer call p99", p99_ms, "ms", m["unary_p99"] * 1e3, "unary p99",
            goal="< %d ms" % GOAL_P99_MS, met=p99_ms < GOAL_P99_MS)
    out.note("%d stream calls and %d unary calls, %d callers over %d objects pinned "
             "to the child node; payload Int64Value both ways." % (
                 m["calls"], m["unary_calls"], CALLERS, OBJECTS))
    out.note("CPU per call (us), stream side: bench %.1f, node %.1f; unary side: "
             "bench %.0f, node %.0f." % (m["cpu_bench"], m["cpu_node"],
                                         m["unary_cpu_bench"], m["unary_cpu_node"]))
    return out
