"""``python -m bench.soak``: mixed load for a long while, a fault every minute.

The cluster of the fault suite (three node processes and their own etcd)
runs the fault suite's mixed load, sent by this process (the driver)
through one gate; every ``--fault-interval`` seconds the next fault of
the rotation (kill, stop, etcd, partition, rolling upgrade) strikes.

The gate runs as its own ``bin/goverse-gate`` process (``--gate process``,
the default), so that its memory is judged alone: the driver process
holds only the load, its client, the bookkeeping for the checks, and a
gate-role node that watches the shard map for the faults (it hosts
nothing and calls nothing). ``--gate inline`` runs the gate in the driver
process instead, as the soak once did.

Every ``--sample-interval`` seconds the soak samples, for each node
process, the gate process and the driver, the resident memory (``VmRSS``
in ``/proc/<pid>/status``) and open descriptors (``/proc/<pid>/fd``); for
the gate and the driver also the number of greenlets (every greenlet
object of the process, the hub threadpool's threads among them) and
the threadpool's size. The driver counts its own; the gate process
answers ``GET /api/v1/status?greenlets=1``.

The verdict, after a warm-up:

- memory growth of every process that lived from the end of the warm-up
  to the end of the run, from its first sample after the warm-up to the
  mean of its last three (goal: under 5%);
- descriptor growth between the same two moments, both taken with the
  cluster settled (goal: none);
- operations still running past their deadline (goal: none).

The gate process and the driver live the whole run and are each judged
on their own. A node restarted by a fault is a new process: it is judged
from the end of its own warm-up, when it lives at least one more warm-up
after that. ``--short`` is one minute with a fault every 20 seconds, for
CI; it judges only stuck calls and single activation (a minute says
nothing about growth). Writes ``test-output/soak-summary.json`` (the
verdict, and every sample of every process under ``samples``) and exits
1 when a judged goal is missed.
"""

from goverse import runtime

runtime.patch()

import os  # noqa: E402

# Set before the first gRPC channel: etcd is forked again after channels
# exist (see tests/conftest.py).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from goverse.runtime import greenlet_counts  # noqa: E402
from tests.faults import checks  # noqa: E402
from tests.faults.harness import GATE_MODES, OP_TIMEOUT, FaultCluster  # noqa: E402
from tests.faults.runner import distribution, machine, output_dir  # noqa: E402
from tests.faults.schedule import FAULTS, Trial  # noqa: E402
from tests.faults.workload import Workload  # noqa: E402

#: Goals of the verdict.
RSS_GROWTH_GOAL = 0.05


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--short", action="store_true",
                        help="CI mode: 1 minute, a fault every 20 s, 10 s warm-up")
    parser.add_argument("--fault-interval", type=float, default=60.0,
                        help="seconds between faults (default 60)")
    parser.add_argument("--warmup", type=float, default=120.0,
                        help="seconds of load before growth is measured (default 120)")
    parser.add_argument("--sample-interval", type=float, default=5.0)
    parser.add_argument("--gate", choices=GATE_MODES, default="process",
                        help="run the gate as a bin/goverse-gate process, judged on its own "
                             "(default), or inline, in the driver process")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--output", default=os.path.join(output_dir(), "soak-summary.json"))
    args = parser.parse_args(argv)
    if args.short:
        args.minutes, args.fault_interval, args.warmup = 1.0, 20.0, 10.0
    return args


# -- sampling -------------------------------------------------------------------


def process_sample(pid: int) -> dict[str, int] | None:
    """RSS in kB and open descriptors of a process; None once it is gone."""
    try:
        with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
            rss = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
        fds = len(os.listdir("/proc/%d/fd" % pid))
    except (OSError, StopIteration):
        return None
    return {"rss_kb": rss, "fds": fds}


class Sampler:
    """Samples every process of the run; one series per process id.

    Node processes, the gate process (when the gate runs in one) and this
    process, the driver, each give their ``VmRSS`` and descriptors. The
    driver and the gate process also give their greenlet count (greenlet
    objects alive in the process, the hub threadpool's threads among them)
    and their threadpool size: the driver reads its own, the gate process
    answers ``GET /api/v1/status?greenlets=1``.
    """

    def __init__(self, cluster: FaultCluster) -> None:
        self.cluster = cluster
        self.series: dict[int, list[dict[str, Any]]] = {}
        self.labels: dict[int, str] = {}
        #: Processes that live the whole run, judged from the end of the warm-up.
        self.whole_run = {os.getpid()}
        if cluster.gate_mode == "process":
            self.whole_run.add(cluster.gate.pid)

    def targets(self) -> list[tuple[int | None, str]]:
        found = [(proc.pid, "node %s" % proc.address) for proc in self.cluster.procs]
        if self.cluster.gate_mode == "process":
            found.append((self.cluster.gate.pid, "gate %s" % self.cluster.gate.address))
            found.append((os.getpid(), "driver"))
        else:
            found.append((os.getpid(), "driver+gate"))
        return found

    def sample(self, now: float, settled: bool) -> None:
        for pid, label in self.targets():
            if pid is None:
                continue
            found = process_sample(pid)
            if found is None:
                continue
            found.update(t=now, settled=settled)
            if pid == os.getpid():
                found.update(greenlet_counts())
            elif label.startswith("gate"):
                try:
                    status = self.cluster.gate_status(greenlets=1)
                    found.update(greenlets=status["greenlets"],
                                 threadpool_threads=status["threadpool_threads"])
                except (OSError, KeyError, ValueError):
                    pass  # a busy gate answers next time; the memory sample stands
            self.series.setdefault(pid, []).append(found)
            self.labels[pid] = label

    def growth(self, since: float, warmup: float) -> list[dict[str, Any]]:
        """Growth of each process from ``since`` (a node: its own warm-up) to the end."""
        rows = []
        for pid, points in self.series.items():
            start = since if pid in self.whole_run else max(since, points[0]["t"] + warmup)
            later = [p for p in points if p["t"] >= start]
            if len(later) < 4 or later[-1]["t"] - later[0]["t"] < warmup:
                continue  # too short a life to judge
            rows.append(self._row(pid, later))
        return rows

    def table(self, started: float) -> dict[str, dict[str, Any]]:
        """Every sample of every process, by ``"<label> pid <pid>"``, for reading growth later.

        ``columns`` names the values of each row; seconds count from ``started``.
        """
        columns = ["seconds", "rss_kb", "fds", "settled", "greenlets", "threadpool_threads"]
        return {"%s pid %d" % (self.labels[pid], pid): {
                    "columns": columns,
                    "rows": [[round(p["t"] - started, 1)] + [p.get(c) for c in columns[1:]]
                             for p in points]}
                for pid, points in self.series.items()}

    def _row(self, pid: int, points: list[dict[str, Any]]) -> dict[str, Any]:
        first, tail = points[0], points[-3:]
        rss_end = sum(p["rss_kb"] for p in tail) / len(tail)
        row = {"pid": pid, "process": self.labels[pid],
               "seconds": round(points[-1]["t"] - first["t"], 1),
               "rss_start_kb": first["rss_kb"], "rss_end_kb": round(rss_end),
               "rss_growth": round(rss_end / first["rss_kb"] - 1, 4)}
        # Descriptors come and go with peer connections while a fault
        # runs: only samples of a settled cluster are compared.
        settled = [p for p in points if p["settled"]]
        if len(settled) >= 2:
            row["fds_start"], row["fds_end"] = settled[0]["fds"], settled[-1]["fds"]
            row["fd_growth"] = settled[-1]["fds"] - settled[0]["fds"]
        counted = [p for p in points if "greenlets" in p]
        if counted:
            row["greenlets_start"] = counted[0]["greenlets"]
            row["greenlets_end"] = counted[-1]["greenlets"]
            row["greenlets_max"] = max(p["greenlets"] for p in counted)
            row["threadpool_start"] = counted[0]["threadpool_threads"]
            row["threadpool_end"] = counted[-1]["threadpool_threads"]
        return row


# -- the run --------------------------------------------------------------------


def soak(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    from tests import gate_objects, sample_objects  # noqa: F401  (decode their replies)

    # Every child (etcd, nodes, gate) is stopped here on every way out, and
    # dies with this process if it is killed outright.
    cluster = FaultCluster(workdir, gate=args.gate).start()
    try:
        return run(args, cluster)
    finally:
        cluster.close()


def run(args: argparse.Namespace, cluster: FaultCluster) -> dict[str, Any]:
    sampler = Sampler(cluster)
    rng = random.Random(args.seed)
    rotation = list(FAULTS)
    load = Workload(cluster.gate.address, seed=args.seed, keep_all=False).start()
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    next_fault = started + args.fault_interval
    injected = 0
    trials: list[Trial] = []
    # One fault at a time; a finished one leaves its trials, not its
    # greenlet, so that the driver's greenlet count stays flat.
    fault: gevent.Greenlet | None = None
    try:
        while time.monotonic() < stop_at:
            now = time.monotonic()
            if fault is not None and fault.ready():
                trials.extend(fault.get())  # a fault that failed ends the run here
                fault = None
            sampler.sample(now, fault is None and cluster.settled())
            if now >= next_fault and fault is None:
                kind = rotation[injected % len(rotation)]
                print("%6.0fs  %s" % (now - started, kind), flush=True)
                fault = gevent.spawn(FAULTS[kind], cluster, rng)
                injected += 1
                next_fault = now + args.fault_interval
            gevent.sleep(args.sample_interval)
        if fault is not None:
            trials.extend(fault.get())
            fault = None
    finally:
        if fault is not None:
            fault.kill()
        load.stop()
    cluster.wait_ready(time.monotonic(), settle=True)
    sampler.sample(time.monotonic(), True)
    return verdict(args, cluster, sampler, load, trials, started)


def verdict(args: argparse.Namespace, cluster: FaultCluster, sampler: Sampler,
            load: Workload, trials: list[Trial], started: float) -> dict[str, Any]:
    growth = sampler.growth(started + args.warmup, args.warmup)
    deadline_check = checks.deadlines(load.ops, OP_TIMEOUT)
    # Only the failed and the slow operations were kept: totals come from the load.
    deadline_check["ops"], deadline_check["slowest_s"] = load.total, round(load.slowest, 3)
    overlaps = checks.single_activation(cluster.activation_log, cluster.ends)
    worst_rss = max((row["rss_growth"] for row in growth), default=None)
    fd_rows = [row for row in growth if "fd_growth" in row]
    goals = {
        "rss_growth_under_5pct": worst_rss is not None and worst_rss < RSS_GROWTH_GOAL,
        "no_fd_growth": bool(fd_rows) and all(row["fd_growth"] <= 0 for row in fd_rows),
        "no_stuck_calls": deadline_check["stuck"] == 0 and deadline_check["late"] == 0,
        "single_activation": overlaps["passed"],
    }
    # One minute says nothing about leaks: the short mode judges only what
    # must hold at any length.
    judged = (["no_stuck_calls", "single_activation"] if args.short else sorted(goals))
    return {
        "minutes": args.minutes, "fault_interval_s": args.fault_interval, "gate": args.gate,
        "warmup_s": args.warmup, "faults": len(trials),
        "faults_by_kind": {k: sum(1 for t in trials if t.fault == k) for k in FAULTS},
        "recovery_s": distribution([t.recovery for t in trials]),
        "processes": growth, "worst_rss_growth": worst_rss,
        "samples": sampler.table(started),
        "ops": load.counts(), "deadlines": deadline_check, "single_activation": overlaps,
        "pushes": {"acknowledged": load.pushes_sent, "received": load.pushes_received},
        "goals": goals, "passed": all(goals[name] for name in judged),
        "judged": judged, "machine": machine(),
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
    }


def print_report(result: dict[str, Any]) -> None:
    print("\nsoak: %.1f min, %d faults %s, recovery %s" % (
        result["minutes"], result["faults"], result["faults_by_kind"], result["recovery_s"]))
    print("%-28s %8s %11s %11s %8s %10s %10s %10s" % (
        "process", "seconds", "rss start", "rss end", "growth", "fds", "greenlets",
        "threads"))
    for row in result["processes"]:
        fds = "%s->%s" % (row.get("fds_start", "?"), row.get("fds_end", "?"))
        greenlets = threads = ""
        if "greenlets_start" in row:
            greenlets = "%s->%s" % (row["greenlets_start"], row["greenlets_end"])
            threads = "%s->%s" % (row["threadpool_start"], row["threadpool_end"])
        print("%-28s %8.0f %8d kB %8d kB %7.1f%% %10s %10s %10s" % (
            row["process"], row["seconds"], row["rss_start_kb"], row["rss_end_kb"],
            100 * row["rss_growth"], fds, greenlets, threads))
    d = result["deadlines"]
    print("operations: %d, stuck %d, late %d, slowest %.2fs; ops %s" % (
        d["ops"], d["stuck"], d["late"], d["slowest_s"], result["ops"]))
    print("goals: %s; judged %s -> %s" % (result["goals"], result["judged"],
                                          "PASS" if result["passed"] else "FAIL"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workdir = tempfile.mkdtemp(prefix="goverse-soak-")
    # The faults make goverse warn on purpose (streams to killed nodes
    # ending, say): its log goes to a file beside the nodes' logs.
    logging.basicConfig(level=logging.WARNING, filename=os.path.join(workdir, "driver.log"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print("soak for %.1f min, fault every %.0f s, gate %s; logs in %s" % (
        args.minutes, args.fault_interval, args.gate, workdir), flush=True)
    result = soak(args, workdir)
    print_report(result)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1, default=str)
    print("wrote %s" % (args.output,))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
