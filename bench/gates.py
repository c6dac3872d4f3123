"""A gate and its nodes in child processes, for the scenarios that go through gates.

:func:`start_cluster` starts node processes and a ``bin/goverse-gate``
process side by side (the gate waits for the nodes itself), which keeps the
short runs short, and returns once the gate says it is ready and settled;
:func:`close_all` stops them all at once. :func:`cpu_seconds` reads what a
child has spent so far.
"""

from __future__ import annotations

import os
from typing import Sequence

import gevent

from goverse.testing import GateProcess, NodeProcess

from .harness import ROOT, STABILITY_WINDOW, Run

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The nodes stop together with their gate, with nothing left to hand over.
SHUTDOWN_GRACE = 0.5


def start_cluster(run: Run, prefix: str, nodes: int, name: str,
                  gate_args: Sequence[str] = ()) -> tuple[list[NodeProcess], GateProcess]:
    """``nodes`` node processes hosting the bench types and one gate, all ready."""
    procs = [NodeProcess(run.etcd_endpoint, prefix=prefix, objects=["bench.objects"],
                         extra_args=["--stability-window", str(STABILITY_WINDOW),
                                     "--shutdown-grace", str(SHUTDOWN_GRACE)],
                         env={"PYTHONPATH": ROOT},
                         log_path=run.log_path("%s-%d.log" % (name, n)))
             for n in range(nodes)]
    gate = GateProcess(run.etcd_endpoint, prefix=prefix,
                       extra_args=["--stability-window", str(STABILITY_WINDOW), *gate_args],
                       log_path=run.log_path("%s-gate.log" % (name,)))
    try:
        for proc in procs:
            proc.start(wait=False)
        gate.start(wait=False)
        for proc in procs:
            proc.wait_serving(60)
        gate.wait_ready(60)
    except BaseException:
        close_all(procs, gate)
        raise
    return procs, gate


def close_all(procs: list[NodeProcess], gate: GateProcess | None) -> None:
    """Stop the gate and the nodes together rather than one after another."""
    gevent.joinall([gevent.spawn(child.close)
                    for child in [*procs, *([gate] if gate is not None else [])]])


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of a process so far (this one without ``pid``)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open("/proc/%d/stat" % (pid,), encoding="ascii") as stat:
        # The command name, in parentheses, may hold spaces: split after it.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
