"""memory: resident bytes per idle object on one node.

A child process (``bench.memory_child``) starts a node, reads its VmRSS,
activates N objects straight on its host, and reads VmRSS again. The
baseline child puts N plain Python objects with the same field in a dict
under the same ids. N is 1,000,000 (50,000 in short mode).
"""

from __future__ import annotations

import json
import subprocess

from .harness import ROOT, Outcome, Run, python_command

NAME = "memory"
TITLE = "resident bytes per idle object, 1,000,000 objects on one node"
GOAL_BYTES = 1024


def probe(ctx: Run, kind: str, count: int) -> dict:
    args = ["-m", "bench.memory_child", "--etcd", ctx.etcd_endpoint,
            "--prefix", ctx.prefix(NAME), "--count", str(count), "--kind", kind]
    log_path = ctx.log_path("memory-%s.log" % kind)
    with open(log_path, "wb") as log_file:
        done = subprocess.run(python_command(*args), stdout=subprocess.PIPE,
                              stderr=log_file, timeout=600, cwd=ROOT)
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError("memory child (%s) exited with %s; see %s" % (
            kind, done.returncode, log_path))
    result = json.loads(lines[-1])
    if result["active"] < count:
        raise RuntimeError("memory child (%s) activated %d of %d objects" % (
            kind, result["active"], count))
    return result


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    count = 50_000 if ctx.short else 1_000_000
    measured = probe(ctx, "goverse", count)
    plain = probe(ctx, "plain", count)
    per_object = (measured["after"] - measured["before"]) / count
    per_plain = (plain["after"] - plain["before"]) / count
    out.add("RSS per idle object", per_object, "bytes", per_plain,
            "plain object with the same field in a dict",
            goal="<= %d bytes" % GOAL_BYTES, met=per_object <= GOAL_BYTES)
    out.add("activations per second (memory run)", count / measured["seconds"],
            "objects/s", count / plain["seconds"], "plain dict inserts")
    out.note("%d objects activated with node.create_owned in the child; RSS from "
             "/proc/<pid>/status VmRSS before and after, ids allocated before the "
             "first reading." % count)
    return out
