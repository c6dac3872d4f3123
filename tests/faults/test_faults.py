"""The cluster keeps its guarantees through crashes, stalls, partitions and upgrades.

Each test starts a 3-node cluster with its own etcd and a gate, runs a
mixed load through the gate (creates and deletes that wait, calls,
object-to-object calls, pushes), injects one kind of fault
``GOVERSE_FAULT_TRIALS`` times (1 by default), and checks: no object
active on two nodes at once, every operation answered within its
deadline, acknowledged creates and deletes reflected (see checks.py).
The gate runs in the test process, or with ``GOVERSE_FAULT_GATE=process``
as a ``bin/goverse-gate`` child. Results go to
``test-output/faults-summary.json``; the full run::

    GOVERSE_FAULT_TRIALS=10 .venv/bin/python -m pytest tests/faults -m faults
    .venv/bin/python -m tests.faults.report
"""

from __future__ import annotations

import json

import pytest

from .harness import FaultCluster, gate_mode_from_env
from .runner import failed_checks, run_fault, trials_from_env, write_summary
from .schedule import FAULTS

pytestmark = pytest.mark.faults


@pytest.fixture
def fault_cluster(tmp_path):
    from tests import gate_objects, sample_objects  # noqa: F401  (decode their replies)

    cluster = FaultCluster(str(tmp_path), gate=gate_mode_from_env())
    try:
        yield cluster.start()
    finally:
        cluster.close()


@pytest.mark.parametrize("kind", list(FAULTS))
def test_invariants_hold_through_fault(fault_cluster, kind):
    entry = run_fault(fault_cluster, kind, trials_from_env())
    path = write_summary(entry)
    print("\n%s: recovery %s, ops %s (summary in %s)" % (
        kind, entry["recovery_s"], entry["ops"], path))

    failed = failed_checks(entry)
    assert not failed, json.dumps(failed, indent=1, default=str)
    assert all(counts["ok"] for counts in entry["ops"].values()), entry["ops"]
