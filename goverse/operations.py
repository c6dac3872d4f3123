"""Handles for asynchronous creates and deletes.

``create_object`` and ``delete_object`` return at once; the work runs in a
detached greenlet owned by the node. Each gets an :class:`Operation`: an
id, a status, the result or the error, and done-callbacks. The node keeps
finished records for a bounded time and count so that
``goverse.operation_status(op_id)`` answers for recent operations.
"""

from __future__ import annotations

import copy
import enum
import itertools
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable

from gevent.event import AsyncResult

from .errors import CallTimeout, GoverseError, OperationCancelled

log = logging.getLogger(__name__)


class OperationStatus(str, enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


_ids = itertools.count(1)
_prefix = "%x" % (os.getpid() ^ (time.monotonic_ns() & 0xFFFFFF))


class Operation:
    """One asynchronous create or delete, followed from start to end."""

    __slots__ = ("id", "kind", "object_id", "status", "error", "started", "finished",
                 "_result", "_callbacks", "_spawn")

    def __init__(self, kind: str, object_id: str, spawn: Callable[..., Any]) -> None:
        self.id = "op-%s-%d" % (_prefix, next(_ids))
        self.kind = kind
        self.object_id = object_id
        self.status = OperationStatus.PENDING
        self.error: str | None = None
        self.started = time.monotonic()
        self.finished: float | None = None
        self._result: AsyncResult = AsyncResult()
        self._callbacks: list[Callable[[Operation], Any]] = []
        self._spawn = spawn

    def __repr__(self) -> str:
        return "<Operation %s %s %s %s>" % (self.id, self.kind, self.object_id,
                                            self.status.value)

    def done(self) -> bool:
        return self.status is not OperationStatus.PENDING

    def wait(self, timeout: float | None = None) -> Any:
        """The result, or raise the operation's error; CallTimeout if not done in time."""
        self._result.wait(timeout)
        if not self._result.ready():
            raise CallTimeout("%s of %r not finished after %.3gs" % (
                self.kind, self.object_id, timeout or 0))
        error = self._result.exception
        if error is not None:
            # A copy each time: raised, the stored error would take the
            # frames of this waiter (and all its callers) with it.
            raise _bare(error)
        return self._result.value

    def add_done_callback(self, fn: Callable[[Operation], Any]) -> None:
        """Call ``fn(operation)`` once it is done, in its own greenlet."""
        if self.done():
            self._run_callback(fn)
        else:
            self._callbacks.append(fn)

    def as_dict(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started
        return {"id": self.id, "kind": self.kind, "object_id": self.object_id,
                "status": self.status.value, "error": self.error,
                "elapsed_seconds": round(elapsed, 6)}

    # ---- completion (called by the node) ---------------------------------

    def succeed(self, value: Any) -> None:
        self._finish(OperationStatus.SUCCEEDED, None)
        self._result.set(value)
        self._fire()

    def fail(self, exc: BaseException) -> None:
        status = (OperationStatus.CANCELLED if isinstance(exc, OperationCancelled)
                  else OperationStatus.FAILED)
        self._finish(status, "%s: %s" % (type(exc).__name__, exc))
        error = exc if isinstance(exc, GoverseError) else GoverseError(
            "%s: %s" % (type(exc).__name__, exc))
        # The record outlives the call by minutes: it keeps the error, not
        # the traceback, whose frames hold the whole stack that ran the
        # operation (a server call's state among it).
        self._result.set_exception(_bare(error))
        self._fire()

    def _finish(self, status: OperationStatus, error: str | None) -> None:
        self.status = status
        self.error = error
        self.finished = time.monotonic()

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            self._run_callback(fn)

    def _run_callback(self, fn: Callable[[Operation], Any]) -> None:
        self._spawn(_guarded_callback, fn, self)


def _bare(exc: GoverseError) -> GoverseError:
    """A copy of ``exc`` with no traceback, cause or context (the same error if it cannot be)."""
    try:
        return copy.copy(exc)
    except Exception:  # an error class that cannot be rebuilt from its args
        return exc.with_traceback(None)


def _guarded_callback(fn: Callable[[Operation], Any], op: Operation) -> None:
    try:
        fn(op)
    except Exception:
        log.exception("done-callback %r of %r raised", fn, op)


class OperationLog:
    """Recent operations by id, bounded in count and age."""

    def __init__(self, max_records: int = 10000, max_age: float = 600.0) -> None:
        self._records: OrderedDict[str, Operation] = OrderedDict()
        self._max_records = max_records
        self._max_age = max_age

    def __len__(self) -> int:
        return len(self._records)

    def add(self, op: Operation) -> None:
        self._records[op.id] = op
        self._trim()

    def get(self, op_id: str) -> Operation | None:
        self._trim()
        return self._records.get(op_id)

    def pending(self) -> list[Operation]:
        return [op for op in self._records.values() if not op.done()]

    def recent_failures(self, limit: int = 20) -> list[Operation]:
        failed = [op for op in reversed(self._records.values())
                  if op.status is OperationStatus.FAILED]
        return failed[:limit]

    def _trim(self) -> None:
        """Drop finished records past the age limit, and the oldest past the count limit.

        A pending record is never dropped, and never holds up the finished
        ones behind it either: one whose greenlet died inside it (a caller
        that waited under a ``gevent.Timeout``, say) stays pending for good.
        It goes to the back instead; each record is looked at once at most.
        """
        now = time.monotonic()
        records = self._records
        for _ in range(len(records)):
            op_id, op = next(iter(records.items()))
            if not op.done():
                records.move_to_end(op_id)
                continue
            too_many = len(records) > self._max_records
            too_old = now - (op.finished or now) > self._max_age
            if not (too_many or too_old):
                break
            records.popitem(last=False)
