"""``python -m bench --short`` runs every scenario without an error.

Speed is not judged here (figures vary with the machine and its load);
a scenario that raises, or a run that leaves the results file changed
without ``--write``, fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from goverse.testing import ROOT

from bench import SCENARIOS

pytestmark = pytest.mark.slow

RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")


def _stamp(path: str) -> float | None:
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


def test_bench_short_runs_every_scenario_and_leaves_results_alone():
    before = _stamp(RESULTS)
    done = subprocess.run([sys.executable, "-m", "bench", "--short"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=280,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, output[-4000:]
    for name in SCENARIOS:
        assert "| %s |" % name in output, "%s missing from the table:\n%s" % (
            name, output[-4000:])
    assert "| ERROR |" not in output
    assert _stamp(RESULTS) == before, "--short rewrote RESULTS.md without --write"
