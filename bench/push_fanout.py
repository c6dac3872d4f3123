"""push-fanout: one object pushes a message to 1,000 gate clients, round after round.

A ``bin/goverse-node`` child hosts a ``BenchFanout`` object; a
``bin/goverse-gate`` child has 1,000 clients registered (100 in short
mode): :class:`goverse.client.Client` instances of the bench process, each
with its own connection and gRPC push stream. Each round, the object pushes
one message to every client with a single ``goverse.push_message`` call
(one envelope per gate), and the round ends when the last client has it.
The baseline is the same fan-out done as one ``push_message`` per client
(one envelope per client), in the same run.

The latency of a round runs from the object's first push to the last
arrival, both read from ``time.monotonic()``, which on Linux is one clock
for every process of the machine.

NOTE: under grpc's gevent integration every open push stream holds a
native thread of the hub's threadpool while it waits for its next message.
With goverse's pool of ``runtime.HUB_THREADPOOL_SIZE`` (512) threads, the
streams past the 512th would never be read; the scenario raises the pool
of the bench process, and of it alone, for as long as the clients live.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from google.protobuf.wrappers_pb2 import DoubleValue, Int64Value, StringValue

from goverse.client import Client

from .gates import close_all, cpu_seconds, start_cluster
from .harness import Outcome, Run, percentile

NAME = "push-fanout"
TITLE = "one push to 1,000 gate clients, vs 1,000 single pushes"
CLIENTS = 1000
SHORT_CLIENTS = 100
#: Threads the bench process keeps beside the clients' streams (etcd
#: watches, the trigger calls, grpc's own pollers).
SPARE_THREADS = 128
#: Registrations in flight at once while the clients connect.
REGISTERING = 50
#: Longest wait for a round's last arrival before the run is called failed.
ROUND_TIMEOUT = 30.0


class Arrivals:
    """What the clients received in the current round, and when the last one did."""

    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.round = -1
        self.count = 0
        self.last = 0.0
        self.strays = 0
        self.done = Event()

    def begin(self, number: int) -> None:
        self.round, self.count, self.last = number, 0, 0.0
        self.done.clear()

    def on_message(self, message: Any) -> None:
        now = time.monotonic()
        value = Int64Value()
        if not message.Unpack(value) or value.value != self.round:
            self.strays += 1
            return
        self.count += 1
        self.last = now
        if self.count == self.clients:
            self.done.set()


def run(ctx: Run) -> Outcome:
    clients, rounds = (SHORT_CLIENTS, 10) if ctx.short else (CLIENTS, 40)
    hub_pool = gevent.get_hub().threadpool
    pool_before = hub_pool.maxsize
    procs, gate = start_cluster(ctx, ctx.prefix(NAME), 1, NAME,
                                gate_args=["--server-workers", str(clients + 256)])
    arrivals = Arrivals(clients)
    members: list[Client] = []
    try:
        hub_pool.maxsize = max(pool_before, clients + SPARE_THREADS)
        members = _register(gate.address, clients, arrivals)
        threads = hub_pool.size
        caller = Client(gate.address, timeout=30)
        members.append(caller)
        object_id = "%s/fanout" % (procs[0].address,)
        caller.call("BenchFanout", object_id, "SetMembers",
                    StringValue(value=",".join(m.client_id for m in members[:clients])))
        pids = [gate.pid, procs[0].pid]
        figures = {"one": _rounds(caller, object_id, "PushAll", rounds, arrivals, pids),
                   "each": _rounds(caller, object_id, "PushEach", rounds, arrivals, pids)}
    finally:
        gevent.joinall([gevent.spawn(member.close) for member in members])
        hub_pool.maxsize = pool_before
        close_all(procs, gate)
    return _report(clients, rounds, figures, arrivals, pool_before,
                   max(pool_before, clients + SPARE_THREADS), threads)


def _register(address: str, clients: int, arrivals: Arrivals) -> list[Client]:
    members = [Client(address, timeout=30, reconnect=False) for _ in range(clients)]
    pool = Pool(REGISTERING)
    for member in members:
        pool.spawn(member.register, on_message=arrivals.on_message)
    pool.join(raise_error=True)
    return members


def _rounds(caller: Client, object_id: str, method: str, rounds: int,
            arrivals: Arrivals, pids: list[int]) -> dict[str, Any]:
    """``rounds`` pushes of ``method`` after one warm-up; latencies in seconds."""
    latencies = []
    cpu_before = 0.0
    for number in range(-1, rounds):
        if number == 0:
            cpu_before = _cpu(pids)
        arrivals.begin(number)
        pushed = caller.call("BenchFanout", object_id, method, Int64Value(value=number),
                             DoubleValue).value
        if not arrivals.done.wait(ROUND_TIMEOUT):
            raise AssertionError("%s round %d: %d of %d clients received it within %gs" % (
                method, number, arrivals.count, arrivals.clients, ROUND_TIMEOUT))
        if number >= 0:
            latencies.append(arrivals.last - pushed)
    cpu_spent = _cpu(pids) - cpu_before
    return {"latencies": latencies, "cpu_per_delivery": cpu_spent / (
        rounds * arrivals.clients) * 1e6}


def _cpu(pids: list[int]) -> float:
    return cpu_seconds() + sum(cpu_seconds(pid) for pid in pids)


def _report(clients: int, rounds: int, figures: dict[str, dict[str, Any]],
            arrivals: Arrivals, pool_before: int, pool_raised: int,
            threads: int) -> Outcome:
    out = Outcome(NAME)
    one, each = figures["one"]["latencies"], figures["each"]["latencies"]
    out.add("push to last client p50", percentile(one, 0.5) * 1e3, "ms",
            percentile(each, 0.5) * 1e3, "one push per client p50")
    out.add("push to last client p99", percentile(one, 0.99) * 1e3, "ms",
            percentile(each, 0.99) * 1e3, "one push per client p99")
    out.add("deliveries", clients * len(one) / sum(one), "msgs/s",
            clients * len(each) / sum(each), "one push per client")
    out.note("%d clients (goverse.client.Client, one connection and push stream each) "
             "on one gate, the pushing object on one node process; %d rounds per side "
             "after a warm-up round, each round waiting for its last arrival; "
             "deliveries/s is clients times rounds over the summed round latencies; "
             "%d stray messages." % (clients, rounds, arrivals.strays))
    out.note("hub threadpool of the bench process raised from %d to %d for the run "
             "(each open push stream holds one of its threads); %d threads were "
             "running once the clients had registered." % (pool_before, pool_raised,
                                                            threads))
    out.note("CPU per delivery (us), bench + gate + node: %.0f with one push, %.0f "
             "with one push per client." % (figures["one"]["cpu_per_delivery"],
                                             figures["each"]["cpu_per_delivery"]))
    return out
