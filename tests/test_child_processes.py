"""goverse.testing's child processes end with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from goverse.testing import ROOT, wait_until

# Starts one child of the named kind, prints its pid, then waits to be killed.
PARENT = """
from goverse import runtime
runtime.patch()
import sys, time
from goverse import testing
cls = getattr(testing, sys.argv[1])
child = cls(sys.argv[2], prefix=sys.argv[3], log_path=sys.argv[4]).start()
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
            state = next(line for line in handle if line.startswith("State:"))
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state.split()[1] in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
@pytest.mark.parametrize("kind", ["NodeProcess", "GateProcess"])
def test_child_dies_with_a_parent_killed_outright(kind, etcd_endpoint, cluster_prefix,
                                                  node_processes, tmp_path):
    if kind == "GateProcess":
        node_processes(1)  # a gate is ready only with a node in its cluster
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, kind, etcd_endpoint, cluster_prefix,
         str(tmp_path / "child.log")], cwd=ROOT, stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=ROOT), text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: gone(child), 20, message="%s pid %d ends with its parent" % (
            kind, child))
    finally:
        parent.kill()
        parent.wait(10)
        if child is not None and not gone(child):
            os.kill(child, signal.SIGKILL)
