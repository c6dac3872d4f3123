"""The soak's short mode: a minute of mixed load with faults, nothing stuck.

``python -m bench.soak --short`` runs as a child process, as a user runs
it (with the gate in a ``bin/goverse-gate`` process of its own); the test
reads the summary it writes. Memory and descriptor growth
are reported but not judged over one minute (see bench/soak.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from goverse.testing import ROOT

pytestmark = pytest.mark.faults


def test_short_soak_leaves_no_call_stuck(tmp_path):
    output = tmp_path / "soak-summary.json"
    run = subprocess.run([sys.executable, "-m", "bench.soak", "--short",
                          "--output", str(output)], cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    result = json.loads(output.read_text())
    assert result["faults"] >= 2, result
    assert result["deadlines"]["stuck"] == 0
    assert result["deadlines"]["late"] == 0
    assert result["single_activation"]["passed"], result["single_activation"]
    # The gate runs in a process of its own, sampled (greenlets too) and
    # judged apart from the driver.
    rows = {row["process"].split()[0]: row for row in result["processes"]}
    assert set(rows) >= {"node", "gate", "driver"}, rows
    assert rows["gate"]["pid"] != rows["driver"]["pid"]
    assert rows["gate"]["greenlets_start"] > 0 and rows["driver"]["greenlets_start"] > 0
    assert sum(kind["ok"] for kind in result["ops"].values()) > 1000, result["ops"]
