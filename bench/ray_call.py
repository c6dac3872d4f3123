"""ray-call: the peer-call workload on Ray actors, synchronous and pipelined.

Ray runs in a child process (``bench.ray_side``) that gevent has not
patched. The goverse figure is the peer-call rate of the same run (the
peer-call measurement runs here when that scenario was not selected).
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from . import peer_call
from .harness import ROOT, Outcome, Run, percentile, python_command

NAME = "ray-call"
TITLE = "the peer-call workload on Ray actors (sync and pipelined)"
GOAL_RATIO = 10


def ray_results(ctx: Run) -> dict[str, Any]:
    """Run the Ray child once per bench run (create and call figures together)."""
    if "ray" not in ctx.shared:
        ctx.shared["ray"] = _run_ray(ctx)
    return ctx.shared["ray"]


def _run_ray(ctx: Run) -> dict[str, Any]:
    sizes = dict(creates=4, latency=3, actors=4, calls=2_000) if ctx.short else \
        dict(creates=16, latency=10, actors=8, calls=20_000)
    args = ["-m", "bench.ray_side"]
    for key, value in sizes.items():
        args += ["--%s" % key, str(value)]
    log_path = ctx.log_path("ray.log")
    try:
        with open(log_path, "wb") as log_file:
            done = subprocess.run(python_command(*args), stdout=subprocess.PIPE,
                                  stderr=log_file, timeout=600, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": "could not run Ray: %s" % (exc,)}
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": "Ray child exited with %s; see %s: %s" % (
            done.returncode, log_path, _tail(log_path))}
    return json.loads(lines[-1])


def _tail(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return " | ".join(line.strip() for line in handle.readlines()[-3:])


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    ray = ray_results(ctx)
    if "error" in ray:
        out.note("not measured: %s" % (ray["error"],))
        return out
    peer = peer_call.measure(ctx)
    out.add("goverse peer calls vs Ray pipelined", peer["rate"], "calls/s",
            ray["pipelined_rate"], "Ray %s, submit all then ray.get" % ray["version"],
            goal=">= %dx Ray pipelined" % GOAL_RATIO,
            met=peer["rate"] >= GOAL_RATIO * ray["pipelined_rate"])
    out.add("goverse peer calls vs Ray sync", peer["rate"], "calls/s", ray["sync_rate"],
            "Ray, ray.get per call, 128 threads")
    out.add("goverse peer call p99 vs Ray sync p99", peer["p99"] * 1e3, "ms",
            percentile(ray["sync_latency"], 0.99) * 1e3, "Ray sync p99")
    out.note("Ray: %d actors (one worker process each), %d calls per mode, 128 "
             "caller threads for the synchronous mode; the payload is a Python int "
             "(goverse sends an Int64Value)." % (ray["actors"], ray["calls"]))
    return out
