"""Run fault trials under load, check the invariants, and keep a summary.

:func:`run_fault` is what a test (or the soak) calls: it starts the load,
injects one kind of fault ``trials`` times, waits for the cluster to be
ready after each, stops the load, and checks everything. The summary of
every fault kind goes into one JSON file, ``faults-summary.json`` in
``$GOVERSE_TEST_OUTPUT/test-output`` (``test-output`` at the top of the
checkout without it); ``python -m tests.faults.report`` turns it into
the table of RELIABILITY.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import time
from typing import Any

from goverse.testing import ROOT

from . import checks
from .harness import OP_TIMEOUT, FaultCluster
from .schedule import DESCRIPTIONS, FAULTS, Trial
from .workload import Workload

#: Successful operations between two faults, so each meets a loaded cluster.
OPS_BETWEEN_FAULTS = 300


def trials_from_env(default: int = 1) -> int:
    return max(1, int(os.environ.get("GOVERSE_FAULT_TRIALS", str(default))))


def output_dir() -> str:
    return os.path.join(os.environ.get("GOVERSE_TEST_OUTPUT") or ROOT, "test-output")


def summary_path() -> str:
    return os.path.join(output_dir(), "faults-summary.json")


def run_fault(cluster: FaultCluster, kind: str, trials: int, *,
              seed: int = 7) -> dict[str, Any]:
    """Inject ``kind`` ``trials`` times under load; the summary entry of the run."""
    rng = random.Random(seed)
    started = time.monotonic()
    load = Workload(cluster.gate.address, seed=seed).start()
    results: list[Trial] = []
    try:
        load.wait_progress(OPS_BETWEEN_FAULTS)
        for _ in range(trials):
            results.extend(FAULTS[kind](cluster, rng))
            load.wait_progress(OPS_BETWEEN_FAULTS)
    finally:
        load.stop()
    cluster.wait_ready(time.monotonic(), settle=True)
    return summarize(kind, trials, results, load, cluster, time.monotonic() - started)


def summarize(kind: str, trials: int, results: list[Trial], load: Workload,
              cluster: FaultCluster, seconds: float) -> dict[str, Any]:
    run_end = time.monotonic()
    listing = checks.list_objects(cluster.procs)
    windows = sorted(trial.window() for trial in results)
    invariant = {
        "single_activation": checks.single_activation(cluster.activation_log, cluster.ends),
        "deadlines": checks.deadlines(load.ops, OP_TIMEOUT),
        "create_delete": checks.lifecycle(load.ops, cluster.activation_log, cluster.ends,
                                          windows, listing, run_end),
        "listed_once": checks.listed_once(listing),
    }
    if kind == "rolling":
        statuses = [trial.exit_status for trial in results]
        invariant["clean_exit"] = {"passed": all(s == 0 for s in statuses),
                                   "exit_statuses": statuses}
    return {
        "fault": kind,
        "description": DESCRIPTIONS[kind],
        "trials": trials,
        "recoveries": len(results),
        "recovery_s": distribution([t.recovery for t in results]),
        "outage_s": distribution([t.outage for t in results]),
        "failover_s": distribution([t.failover for t in results if t.failover is not None]),
        "settled_s": distribution([t.settled - t.healed for t in results]),
        "checks": invariant,
        "ops": load.counts(),
        "pushes": {"acknowledged": load.pushes_sent, "received": load.pushes_received},
        "seconds": round(seconds, 1),
        "trial_log": [t.as_dict() for t in results],
    }


def distribution(values: list[float]) -> dict[str, Any]:
    """p50, p99 (nearest rank) and max of a few samples."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 3)

    return {"n": len(ordered), "p50": rank(0.5), "p99": rank(0.99),
            "max": round(ordered[-1], 3)}


def failed_checks(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: result for name, result in entry["checks"].items() if not result["passed"]}


def write_summary(entry: dict[str, Any], path: str | None = None) -> str:
    """Merge one fault's entry into the summary file; returns its path."""
    path = path or summary_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        summary = {}
    summary.setdefault("faults", {})[entry["fault"]] = entry
    summary["machine"] = machine()
    summary["trials_per_fault"] = {k: v["trials"] for k, v in summary["faults"].items()}
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
    except OSError:
        pass  # not Linux: the platform string below still says what ran
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu": model,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                               / 2 ** 30, 1)}
