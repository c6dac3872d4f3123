"""What every scenario shares: the run's settings, figures, timing helpers.

A scenario is a module with ``NAME``, ``TITLE`` and ``run(ctx)``; ``run``
returns a :class:`Outcome` holding its :class:`Figure` rows. The process
is already patched for gevent when a scenario runs (``bench/__main__.py``
patches first), so scenarios use plain gevent and grpc.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent

import goverse
from goverse.testing import NodeProcess, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Settings shared by every node a benchmark starts (in-process or child).
STABILITY_WINDOW = 0.2


@dataclass
class Figure:
    """One row of the results table."""

    name: str
    value: float
    unit: str
    #: The same quantity for the baseline, measured in the same run.
    baseline: float | None = None
    baseline_name: str = ""
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline


@dataclass
class Outcome:
    """What a scenario measured, what it noted, and whether it failed."""

    scenario: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        return figure

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass
class Run:
    """The settings of one ``python -m bench`` run, handed to every scenario."""

    short: bool
    etcd_endpoint: str
    log_dir: str
    #: Results one scenario leaves for another (the Ray figures, say).
    shared: dict[str, Any] = field(default_factory=dict)

    def prefix(self, scenario: str) -> str:
        """An etcd prefix no other cluster of this run uses."""
        return "/goverse-bench/%s-%s" % (scenario, uuid.uuid4().hex[:8])

    def log_path(self, name: str) -> str:
        return os.path.join(self.log_dir, name)


# ---- clusters -------------------------------------------------------------


def start_node(run: Run, prefix: str, **overrides: Any) -> goverse.Node:
    """An in-process node of the cluster under ``prefix``."""
    import bench.objects  # noqa: F401  (registers the bench types)

    settings = dict(etcd_endpoints=[run.etcd_endpoint], etcd_prefix=prefix,
                    listen="127.0.0.1:0", stability_window=STABILITY_WINDOW)
    settings.update(overrides)
    return goverse.Node(goverse.Settings.from_mapping(settings)).start(timeout=60)


def start_processes(run: Run, prefix: str, count: int, name: str,
                    extra_args: tuple[str, ...] = ()) -> list[NodeProcess]:
    """``count`` ``bin/goverse-node`` children hosting the bench types."""
    args = ["--stability-window", str(STABILITY_WINDOW), "--shutdown-grace", "2",
            *extra_args]
    procs = [NodeProcess(run.etcd_endpoint, prefix=prefix, objects=["bench.objects"],
                         extra_args=args, env={"PYTHONPATH": ROOT},
                         log_path=run.log_path("%s-%d.log" % (name, n)))
             for n in range(count)]
    for proc in procs:
        proc.start(wait=False)
    for proc in procs:
        proc.wait_serving(60)
    return procs


def wait_settled(node: goverse.Node, members: set[str], timeout: float = 60) -> None:
    """Wait until ``members`` are exactly the cluster and no shard is moving."""
    def settled() -> bool:
        return set(node.cluster.state.nodes) == members and node.cluster.is_settled()
    wait_until(settled, timeout, message="cluster of %s settled (%s)" % (
        sorted(members), node.cluster.ready_reason()))


# ---- measuring ------------------------------------------------------------


#: Longest a yielding caller goes without letting pending I/O complete.
IDLE_INTERVAL = 0.25


def drive(call: Callable[[int, int], Any], total: int, callers: int, *,
          latencies: bool = True, yield_every: int = 0) -> tuple[float, list[float]]:
    """Run ``total`` calls from ``callers`` greenlets; (calls/s, latencies in s).

    ``call(caller, n)`` makes the n-th call of one caller. With
    ``yield_every``, each caller sleeps(0) after that many calls, so callers
    whose calls never block still let other greenlets run, and waits for
    the hub to go idle once every ``IDLE_INTERVAL`` seconds.
    """
    per_caller = max(1, total // callers)
    samples: list[float] = []
    clock = time.perf_counter

    def caller(k: int) -> None:
        idled = clock()
        for n in range(per_caller):
            if latencies:
                started = clock()
                call(k, n)
                samples.append(clock() - started)
            else:
                call(k, n)
            if yield_every and n % yield_every == yield_every - 1:
                gevent.sleep(0)
                # NOTE: sleep(0) alone is not enough: measured here, a node
                # whose greenlets only sleep(0) runs its timers but never
                # gets the answer of its lease renewal (a gRPC call), and
                # stops serving its shards about 2.7 s later. idle() lets
                # pending I/O complete; it costs much more than sleep(0).
                if clock() - idled > IDLE_INTERVAL:
                    gevent.idle()
                    idled = clock()

    started = clock()
    gevent.joinall([gevent.spawn(caller, k) for k in range(callers)], raise_error=True)
    elapsed = clock() - started
    return per_caller * callers / elapsed, samples


def percentile(samples: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``samples`` (nearest rank)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered))) - 1))
    return ordered[rank]


def python_command(*args: str) -> list[str]:
    return [sys.executable, *args]
