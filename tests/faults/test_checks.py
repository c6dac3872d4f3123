"""The invariant checks themselves, on made-up logs: they must catch what they claim to."""

from __future__ import annotations

import pytest

from . import checks
from .workload import Op

pytestmark = pytest.mark.faults

A, B = "127.0.0.1:1001", "127.0.0.1:1002"


def write_log(path, lines):
    path.write_text("".join("%d %s %s 1 %s\n" % (int(t * 1e9), node, event, object_id)
                            for t, node, event, object_id in lines))
    return str(path)


def test_lifecycle_accepts_a_create_then_delete(tmp_path):
    log = write_log(tmp_path / "a.log", [(1.0, A, "activate", "x"), (3.0, A, "deactivate", "x")])
    ops = [Op("create", "x", 0.5, 1.5, None), Op("delete", "x", 2.5, 3.5, None)]

    result = checks.lifecycle(ops, log, {}, [], {}, run_end=10.0)

    assert result["passed"], result
    assert result["acked_creates"] == result["acked_deletes"] == 1


def test_lifecycle_flags_an_object_lost_outside_any_fault(tmp_path):
    log = write_log(tmp_path / "a.log", [(1.0, A, "activate", "x"), (2.0, A, "deactivate", "x")])
    ops = [Op("create", "x", 0.5, 1.5, None)]

    assert checks.lifecycle(ops, log, {}, [], {}, run_end=10.0)["lost_outside_faults"] == 1
    excused = checks.lifecycle(ops, log, {}, [(1.8, 2.5)], {}, run_end=10.0)
    assert excused["passed"] and excused["creates_lost_to_faults"] == 1


def test_lifecycle_flags_an_object_alive_after_its_delete(tmp_path):
    log = write_log(tmp_path / "a.log", [(1.0, A, "activate", "x"), (5.0, A, "deactivate", "x")])
    ops = [Op("create", "x", 0.5, 1.5, None), Op("delete", "x", 2.0, 3.0, None)]

    result = checks.lifecycle(ops, log, {}, [], {"x": [A]}, run_end=10.0)

    assert result["active_after_delete"] == 1
    assert result["listed_after_delete"] == 1


def test_lifecycle_flags_a_create_that_activated_nothing(tmp_path):
    log = write_log(tmp_path / "a.log", [])
    ops = [Op("create", "x", 0.5, 1.5, None)]

    assert checks.lifecycle(ops, log, {}, [], {}, run_end=10.0)["created_but_not_active"] == 1


def test_lifecycle_flags_an_active_object_missing_from_the_listing(tmp_path):
    log = write_log(tmp_path / "a.log", [(1.0, A, "activate", "x")])
    ops = [Op("create", "x", 0.5, 1.5, None)]

    assert checks.lifecycle(ops, log, {}, [], {}, run_end=10.0)["missing_at_end"] == 1
    assert checks.lifecycle(ops, log, {}, [], {"x": [A]}, run_end=10.0)["passed"]


def test_single_activation_closes_a_killed_node_at_its_kill(tmp_path):
    log = write_log(tmp_path / "a.log", [(1.0, A, "activate", "x"), (4.0, B, "activate", "x")])

    assert not checks.single_activation(log, {})["passed"]
    assert checks.single_activation(log, {A: [int(3.0e9)]})["passed"]


def test_deadlines_flag_late_stuck_and_foreign_failures():
    ops = [Op("call", "x", 0.0, 1.0, None), Op("call", "y", 0.0, 9.0, "CallTimeout"),
           Op("call", "z", 0.0, 15.0, "Stuck"),
           Op("call", "w", 0.0, 0.1, "not a goverse error: KeyError")]

    result = checks.deadlines(ops, timeout=5.0)

    assert not result["passed"]
    assert (result["late"], result["stuck"], result["not_goverse_errors"]) == (2, 1, 1)
