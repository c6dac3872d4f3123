"""A steady mixed load through a gate, with the outcome of every operation kept.

:class:`Workload` runs greenlets that, until stopped, call counters,
make spawners call counters (object to object), push to this client
through a ``Pusher``, and create and delete objects synchronously (the
gate waits for the real outcome). Each operation is an :class:`Op`: its
kind, target, start, end and the class of the error it failed with.

Created and deleted ids are never called: a call creates its object,
which would blur what an acknowledged delete promises. Each lifecycle
worker owns its ids, so operations on one id never overlap, and an id
whose last operation failed rests for a deadline before it is used again
(the failed request may still run on its node until then).
"""

from __future__ import annotations

import collections
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

import gevent
from gevent.pool import Group
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.client import Client
from goverse.errors import GoverseError

from .harness import OP_TIMEOUT

#: An operation still running this long after its deadline is recorded as stuck.
STUCK_AFTER = 10.0

#: The error of an operation recorded as stuck, and how the error of one
#: that failed with an exception goverse does not raise begins.
STUCK = "Stuck"
NOT_GOVERSE = "not a goverse error"

CALL_IDS = ["load-%d" % n for n in range(200)]
SPAWNER_IDS = ["spawner-%d" % n for n in range(20)]
PUSHER_IDS = ["pusher-%d" % n for n in range(8)]

#: Greenlets per kind of operation (the machine may have two cores).
WORKERS = {"call": 4, "call_other": 2, "push": 2, "lifecycle": 6}

#: Ids each lifecycle worker creates and deletes.
LIFECYCLE_IDS_PER_WORKER = 20


@dataclass
class Op:
    """One operation and how it ended (``error`` is None on success)."""

    kind: str
    target: str
    started: float
    ended: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class Workload:
    """The driver: greenlets making operations through one gate client."""

    def __init__(self, gate_address: str, *, seed: int = 1, timeout: float = OP_TIMEOUT,
                 keep_all: bool = True) -> None:
        self.timeout = timeout
        self.client = Client([gate_address], timeout=timeout)
        #: Every operation, or with ``keep_all=False`` (a long soak, whose
        #: memory is measured) only those the deadline check can fault: ran
        #: past their deadline, stuck, or failed with an error that is not
        #: goverse's. Failures within the deadline are counted, not kept:
        #: a soak meets thousands of them, and kept they grow with its length.
        self.ops: list[Op] = []
        self.total = 0
        self.slowest = 0.0
        self._keep_all = keep_all
        self._counts: dict[str, dict[str, Any]] = {}
        self.pushes_sent = 0
        self.pushes_received = 0
        self._seed = seed
        self._running = False
        self._group = Group()

    def __repr__(self) -> str:
        return "<Workload ops=%d running=%s>" % (self.total, self._running)

    # ---- life cycle

    def start(self) -> Workload:
        self.client.register(self._on_push)
        self._running = True
        rng = random.Random(self._seed)
        for kind, count in WORKERS.items():
            for n in range(count):
                worker = getattr(self, "_" + kind)
                self._group.spawn(worker, random.Random(rng.random()), n)
        return self

    def stop(self) -> None:
        self._running = False
        self._group.join(timeout=self.timeout + STUCK_AFTER + 5)
        self._group.kill(timeout=5)
        self.client.close()

    def _on_push(self, message: Any) -> None:
        self.pushes_received += 1

    # ---- one operation

    def run(self, kind: str, target: str, work: Callable[[], Any]) -> Op:
        """Run ``work`` and record how it ended; never raises, never hangs."""
        started = time.monotonic()
        error = None
        try:
            with gevent.Timeout(self.timeout + STUCK_AFTER):
                work()
        except gevent.Timeout:
            error = STUCK
        except GoverseError as exc:
            error = type(exc).__name__
        except Exception as exc:  # recorded: any non-goverse error fails the checks
            error = "%s: %s" % (NOT_GOVERSE, type(exc).__name__)
        op = Op(kind, target, started, time.monotonic(), error)
        self._count(op)
        if self._keep_all or self._may_fault_deadlines(op):
            self.ops.append(op)
        return op

    def _may_fault_deadlines(self, op: Op) -> bool:
        if op.ended - op.started > self.timeout:
            return True
        return op.error is not None and (op.error == STUCK or
                                         op.error.startswith(NOT_GOVERSE))

    def _count(self, op: Op) -> None:
        self.total += 1
        self.slowest = max(self.slowest, op.ended - op.started)
        row = self._counts.setdefault(op.kind, {"ok": 0, "failed": collections.Counter()})
        if op.ok:
            row["ok"] += 1
        else:
            row["failed"][op.error] += 1

    def _pace(self, rng: random.Random) -> None:
        gevent.sleep(rng.uniform(0.005, 0.03))

    # ---- workers

    def _call(self, rng: random.Random, _: int) -> None:
        while self._running:
            target = rng.choice(CALL_IDS)
            self.run("call", target, lambda: self.client.call(
                "Counter", target, "Add", Int64Value(value=1), Int64Value))
            self._pace(rng)

    def _call_other(self, rng: random.Random, _: int) -> None:
        while self._running:
            spawner, target = rng.choice(SPAWNER_IDS), rng.choice(CALL_IDS)
            self.run("call_other", spawner, lambda: self.client.call(
                "Spawner", spawner, "CallOther", StringValue(value=target), Int64Value))
            self._pace(rng)

    def _push(self, rng: random.Random, _: int) -> None:
        while self._running:
            pusher = rng.choice(PUSHER_IDS)

            def push() -> None:
                taken = self.client.call("Pusher", pusher, "ToCaller",
                                         StringValue(value="push"), Int64Value)
                self.pushes_sent += taken.value

            self.run("push", pusher, push)
            self._pace(rng)

    def _lifecycle(self, rng: random.Random, worker: int) -> None:
        ids = ["life-%d-%d" % (worker, n) for n in range(LIFECYCLE_IDS_PER_WORKER)]
        exists: dict[str, bool] = {}
        resting: dict[str, float] = {}
        while self._running:
            now = time.monotonic()
            ready = [i for i in ids if resting.get(i, 0) <= now]
            if not ready:
                gevent.sleep(0.1)
                continue
            target = rng.choice(ready)
            if exists.get(target, False):
                op = self.run("delete", target,
                              lambda: self.client.delete("Counter", target))
            else:
                op = self.run("create", target,
                              lambda: self.client.create("Counter", target))
            if op.ok:
                exists[target] = op.kind == "create"
            else:
                exists[target] = rng.random() < 0.5
                resting[target] = op.ended + self.timeout
            self._pace(rng)

    # ---- results

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per kind of operation: how many succeeded, and failures by error class."""
        return {kind: {"ok": row["ok"], "failed": dict(row["failed"])}
                for kind, row in sorted(self._counts.items())}

    def succeeded(self) -> int:
        return sum(row["ok"] for row in self._counts.values())

    def wait_progress(self, ops: int, timeout: float = 30.0) -> None:
        """Wait until ``ops`` more operations have succeeded."""
        goal = self.succeeded() + ops
        deadline = time.monotonic() + timeout
        while self.succeeded() < goal:
            if time.monotonic() > deadline:
                raise AssertionError("%r: fewer than %d more successful operations in %.0fs; "
                                     "counts: %s" % (self, ops, timeout, self.counts()))
            gevent.sleep(0.1)
