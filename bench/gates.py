"""A gate and its nodes in child processes, for the scenarios that go through gates.

:class:`GateChild` runs ``bin/goverse-gate`` on free loopback ports and
waits until its HTTP status says it is ready and settled. :func:`start_cluster`
starts node processes and the gate side by side (the gate waits for the
nodes itself), which keeps the short runs short; :func:`close_all` stops
them all at once. :func:`cpu_seconds` reads what a child has spent so far.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from typing import Any, Sequence

import gevent

from goverse.testing import NodeProcess, free_port, wait_until

from .harness import ROOT, STABILITY_WINDOW, Run

GATE_LAUNCHER = os.path.join(ROOT, "bin", "goverse-gate")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The nodes stop together with their gate, with nothing left to hand over.
SHUTDOWN_GRACE = 0.5


class GateChild:
    """A ``bin/goverse-gate`` child process of the bench run."""

    def __init__(self, run: Run, prefix: str, name: str,
                 extra_args: Sequence[str] = ()) -> None:
        self.address = "127.0.0.1:%d" % free_port()
        self.http_address = "127.0.0.1:%d" % free_port()
        self.command = [sys.executable, GATE_LAUNCHER, "--listen", self.address,
                        "--http-listen", self.http_address,
                        "--etcd-endpoints", run.etcd_endpoint, "--etcd-prefix", prefix,
                        "--stability-window", str(STABILITY_WINDOW), *extra_args]
        self.log_path = run.log_path("%s-gate.log" % (name,))
        self.process: subprocess.Popen | None = None
        self._log: Any = None

    def __repr__(self) -> str:
        return "<GateChild %s pid=%s>" % (self.address, self.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> GateChild:
        self._log = open(self.log_path, "ab")
        # A session of its own, as NodeProcess does: a Ctrl-C meant for the
        # bench must not stop the gate before the bench closes it.
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                        stdout=self._log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, PYTHONPATH=ROOT),
                                        start_new_session=True)
        return self

    def status(self) -> dict:
        url = "http://%s/api/v1/status" % (self.http_address,)
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError("%r exited with %s (log: %s)" % (
                    self, self.process.returncode, self.log_path))
            status = self.status()
            return status["ready_reason"] is None and status["settled"]
        wait_until(ready, timeout, interval=0.05, message="%r ready" % (self,))

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def start_cluster(run: Run, prefix: str, nodes: int, name: str,
                  gate_args: Sequence[str] = ()) -> tuple[list[NodeProcess], GateChild]:
    """``nodes`` node processes hosting the bench types and one gate, all ready."""
    procs = [NodeProcess(run.etcd_endpoint, prefix=prefix, objects=["bench.objects"],
                         extra_args=["--stability-window", str(STABILITY_WINDOW),
                                     "--shutdown-grace", str(SHUTDOWN_GRACE)],
                         env={"PYTHONPATH": ROOT},
                         log_path=run.log_path("%s-%d.log" % (name, n)))
             for n in range(nodes)]
    gate = GateChild(run, prefix, name, gate_args)
    try:
        for proc in procs:
            proc.start(wait=False)
        gate.start()
        for proc in procs:
            proc.wait_serving(60)
        gate.wait_ready(60)
    except BaseException:
        close_all(procs, gate)
        raise
    return procs, gate


def close_all(procs: list[NodeProcess], gate: GateChild | None) -> None:
    """Stop the gate and the nodes together rather than one after another."""
    if gate is not None:
        gate.terminate()
    gevent.joinall([gevent.spawn(proc.close) for proc in procs]
                   + ([gevent.spawn(gate.wait, 15)] if gate is not None else []))


def cpu_seconds(pid: int | None = None) -> float:
    """User plus system CPU seconds of a process so far (this one without ``pid``)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    with open("/proc/%d/stat" % (pid,), encoding="ascii") as stat:
        # The command name, in parentheses, may hold spaces: split after it.
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
