"""The load's own bookkeeping: what a long soak keeps of each operation."""

from __future__ import annotations

import gevent
import pytest

from goverse.errors import CallTimeout, PeerUnavailable

from . import checks
from .workload import Workload

pytestmark = pytest.mark.faults


def fail_with(exc: BaseException):
    def work() -> None:
        raise exc
    return work


@pytest.fixture
def soak_load():
    # Never started: nothing connects to the address.
    load = Workload("127.0.0.1:9", timeout=0.2, keep_all=False)
    try:
        yield load
    finally:
        load.client.close()


def test_failures_within_the_deadline_are_counted_not_kept(soak_load):
    for n in range(500):
        soak_load.run("call", "load-%d" % n, fail_with(PeerUnavailable("cut")))
        soak_load.run("create", "life-%d" % n, fail_with(CallTimeout("late")))
        soak_load.run("call", "load-%d" % n, lambda: None)

    assert soak_load.ops == []
    assert soak_load.total == 1500
    assert soak_load.counts() == {"call": {"ok": 500, "failed": {"PeerUnavailable": 500}},
                                  "create": {"ok": 0, "failed": {"CallTimeout": 500}}}
    assert checks.deadlines(soak_load.ops, soak_load.timeout)["passed"]


def test_what_fails_the_deadline_check_is_kept(soak_load):
    foreign = soak_load.run("call", "load-1", fail_with(ValueError("bug")))
    late = soak_load.run("call", "load-2", lambda: gevent.sleep(0.3))

    assert soak_load.ops == [foreign, late]
    assert foreign.error.startswith("not a goverse error")
    assert late.ok and late.ended - late.started > soak_load.timeout
    result = checks.deadlines(soak_load.ops, soak_load.timeout)
    assert result["not_goverse_errors"] == 1 and not result["passed"]


def test_a_fault_run_keeps_every_operation():
    load = Workload("127.0.0.1:9", timeout=0.2)
    try:
        load.run("call", "load-1", fail_with(PeerUnavailable("cut")))
        load.run("call", "load-1", lambda: None)
        assert [op.ok for op in load.ops] == [False, True]
    finally:
        load.client.close()
