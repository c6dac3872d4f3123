"""``python -m tests.faults.report``: the fault summary as the table of RELIABILITY.md.

Reads ``test-output/faults-summary.json`` (or the path given) written by
the fault suite and prints Markdown: one row per fault with its trials,
recovery and outage times, the verdict of each invariant, and the
operations by outcome.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .runner import summary_path

ORDER = ["kill", "stop", "etcd", "partition", "rolling"]

CHECKS = [("single_activation", "one activation"), ("deadlines", "deadlines"),
          ("create_delete", "acked create/delete"), ("listed_once", "listed once")]


def seconds(dist: dict[str, Any]) -> str:
    if not dist.get("n"):
        return "-"
    return "%.2f / %.2f" % (dist["p50"], dist["p99"])


def verdicts(checks: dict[str, Any]) -> str:
    marks = []
    for name, label in CHECKS + [("clean_exit", "exit 0")]:
        if name in checks:
            marks.append("%s %s" % (label, "ok" if checks[name]["passed"] else "**FAILED**"))
    return "; ".join(marks)


def operations(ops: dict[str, Any]) -> str:
    ok = sum(kind["ok"] for kind in ops.values())
    failed: dict[str, int] = {}
    for kind in ops.values():
        for error, count in kind["failed"].items():
            failed[error] = failed.get(error, 0) + count
    detail = ", ".join("%s %d" % item for item in sorted(failed.items()))
    return "%d ok; %s" % (ok, detail or "none failed")


def table(summary: dict[str, Any]) -> str:
    faults = summary["faults"]
    lines = ["| fault | trials | recovery p50 / p99 (s) | outage p50 / p99 (s) | invariants "
             "| operations |", "|---|---|---|---|---|---|"]
    for name in sorted(faults, key=lambda n: ORDER.index(n) if n in ORDER else 99):
        entry = faults[name]
        trials = "%d" % entry["trials"]
        if entry["recoveries"] != entry["trials"]:
            trials += " (%d restarts)" % entry["recoveries"]
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            entry["description"], trials, seconds(entry["recovery_s"]),
            seconds(entry["outage_s"]), verdicts(entry["checks"]), operations(entry["ops"])))
    lines.append("")
    lines.append(details(faults))
    machine = summary.get("machine", {})
    lines.append("Machine: %s, %s CPUs (%s), %s GB, Python %s." % (
        machine.get("platform"), machine.get("cpus"), machine.get("cpu") or "cpu unknown",
        machine.get("memory_gb"), machine.get("python")))
    return "\n".join(lines)


def details(faults: dict[str, Any]) -> str:
    rows = []
    for name in sorted(faults, key=lambda n: ORDER.index(n) if n in ORDER else 99):
        checks = faults[name]["checks"]
        lifecycle = checks["create_delete"]
        rows.append("- %s: %d ids checked for overlap, %d operations (slowest %.2f s), "
                    "%d acknowledged creates (%d lost to the fault, %d listed at the end), "
                    "%d acknowledged deletes; pushes %d acknowledged, %d received." % (
                        name, checks["single_activation"]["ids"], checks["deadlines"]["ops"],
                        checks["deadlines"]["slowest_s"], lifecycle.get("acked_creates", 0),
                        lifecycle.get("creates_lost_to_faults", 0),
                        lifecycle.get("creates_listed_at_end", 0),
                        lifecycle.get("acked_deletes", 0),
                        faults[name]["pushes"]["acknowledged"],
                        faults[name]["pushes"]["received"]))
        failover = faults[name].get("failover_s", {})
        if failover.get("n"):
            rows[-1] += (" The cut node's objects answered from another node %s s "
                         "(p50 / p99) after the cut." % seconds(failover))
    return "\n".join(rows) + "\n"


def main(argv: list[str]) -> int:
    path = argv[0] if argv else summary_path()
    with open(path, encoding="utf-8") as handle:
        print(table(json.load(handle)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
