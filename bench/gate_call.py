"""gate-call: calls per second through a gate, against direct unary calls to the nodes.

Two ``bin/goverse-node`` children host 1,000 objects (256 in short mode)
pinned to them by their ids (``<address>/o<n>``, half on each); a
``bin/goverse-gate`` child routes to them. 128 caller greenlets of the bench process each own a
:class:`goverse.client.Client` (so 128 gate connections, as 128 separate
programs would have) and call the objects through the gate.

The baseline is the nodes' own unary ``CallObject`` RPC, sent by 128
callers straight to the node that owns each object, each caller over
connections of its own. It is the fairer comparison: the bench process
does the same work per call on both sides (one unary gRPC call with the
same payload), so the ratio is the price of the gate's hop alone. An
in-process node calling through its batched peer stream would instead
change the client's own cost and load the bench process with routing.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value

from goverse._pb import goverse_pb2 as pb
from goverse._pb import goverse_pb2_grpc as pb_grpc
from goverse.client import Client

from .gates import close_all, cpu_seconds, start_cluster
from .harness import Outcome, Run, drive, percentile

NAME = "gate-call"
TITLE = "calls/s through a gate to 2 node processes, 128 clients, vs direct unary"
OBJECTS = 1000
#: Objects in short mode, where activating all 1,000 would cost seconds.
SHORT_OBJECTS = 256
CALLERS = 128
NODES = 2


def run(ctx: Run) -> Outcome:
    calls, objects = (1_000, SHORT_OBJECTS) if ctx.short else (20_000, OBJECTS)
    procs, gate = start_cluster(ctx, ctx.prefix(NAME), NODES, NAME)
    clients: list[Client] = []
    try:
        ids = ["%s/o%d" % (procs[n % NODES].address, n) for n in range(objects)]
        owners = [procs[n % NODES].address for n in range(objects)]
        request = any_pb2.Any()
        request.Pack(Int64Value(value=1))
        clients = [Client(gate.address, timeout=30) for _ in range(CALLERS)]
        pids = {"gate": gate.pid, "nodes": [proc.pid for proc in procs]}
        gated = _gate_side(clients, ids, request, calls, pids)
        direct = _direct_side(ids, owners, request, calls, pids)
    finally:
        for client in clients:
            client.close()
        close_all(procs, gate)
    return _report(calls, objects, gated, direct)


def _gate_side(clients: list[Client], ids: list[str], request: any_pb2.Any, calls: int,
               pids: dict[str, Any]) -> dict[str, float]:
    def activate(k: int, n: int) -> None:
        clients[k].call("BenchCounter", ids[n * CALLERS + k], "Add", request)

    def call(k: int, n: int) -> None:
        clients[k].call("BenchCounter", ids[(k * 7 + n) % len(ids)], "Add", request)

    # Every object active and every client connected before timing.
    drive(activate, len(ids), CALLERS, latencies=False)
    for object_id in ids[len(ids) // CALLERS * CALLERS:]:
        clients[0].call("BenchCounter", object_id, "Add", request)
    return _timed(call, calls, pids)


def _direct_side(ids: list[str], owners: list[str], request: any_pb2.Any, calls: int,
                 pids: dict[str, Any]) -> dict[str, float]:
    messages = [pb.CallObjectRequest(id=object_id, type="BenchCounter", method="Add",
                                     request=request) for object_id in ids]
    # Connections of its own per caller and node, as each Client has its own.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [{address: grpc.insecure_channel(address, options=options)
                 for address in set(owners)} for _ in range(CALLERS)]
    stubs = [{address: pb_grpc.GoverseStub(channel) for address, channel in own.items()}
             for own in channels]

    def call(k: int, n: int) -> None:
        m = (k * 7 + n) % len(messages)
        stubs[k][owners[m]].CallObject(messages[m], timeout=30)

    try:
        drive(call, CALLERS * 2, CALLERS, latencies=False)  # connect every channel
        return _timed(call, calls, pids)
    finally:
        for own in channels:
            for channel in own.values():
                channel.close()


def _timed(call: Any, calls: int, pids: dict[str, Any]) -> dict[str, float]:
    """Drive ``calls`` and note the CPU each process spent on them."""
    before = _cpu(pids)
    rate, samples = drive(call, calls, CALLERS)
    after = _cpu(pids)
    spent = {key: (after[key] - before[key]) / calls * 1e6 for key in after}
    return {"rate": rate, "p50": percentile(samples, 0.5),
            "p99": percentile(samples, 0.99), **{"cpu_" + k: v for k, v in spent.items()}}


def _cpu(pids: dict[str, Any]) -> dict[str, float]:
    return {"bench": cpu_seconds(), "gate": cpu_seconds(pids["gate"]),
            "nodes": sum(cpu_seconds(pid) for pid in pids["nodes"])}


def _report(calls: int, objects: int, gated: dict[str, float],
            direct: dict[str, float]) -> Outcome:
    out = Outcome(NAME)
    out.add("gate calls", gated["rate"], "calls/s", direct["rate"],
            "unary CallObject straight to the owning node")
    out.add("gate call p50", gated["p50"] * 1e3, "ms", direct["p50"] * 1e3, "direct p50")
    out.add("gate call p99", gated["p99"] * 1e3, "ms", direct["p99"] * 1e3, "direct p99")
    out.note("%d calls per side after a warm-up, %d callers over %d objects pinned half "
             "to each of %d node processes; payload Int64Value both ways. Gate side: "
             "one goverse.client.Client per caller (128 connections to the gate); "
             "direct side: raw Goverse stubs, one connection per caller and node." % (
                 calls, CALLERS, objects, NODES))
    out.note("CPU per call (us), gate side: bench %.0f, gate %.0f, nodes %.0f; direct "
             "side: bench %.0f, nodes %.0f." % (
                 gated["cpu_bench"], gated["cpu_gate"], gated["cpu_nodes"],
                 direct["cpu_bench"], direct["cpu_nodes"]))
    return out
