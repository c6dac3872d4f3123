"""The Ray baselines, run in a child process that gevent has not patched.

``python -m bench.ray_side --actors A --calls N --creates K --latency L``
starts a local Ray (2 CPUs, no dashboard, bound to 127.0.0.1, usage
reporting off), measures actor creation and actor calls, and prints one
JSON object on its last line of output. The bench process reads it.

Ray runs one worker process per actor, so the call workload uses a few
actors (not 1,000 objects): what is compared is the rate of calls, with
the same 128 concurrent callers.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

# Before ray is imported: no usage report leaves this machine.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import ray  # noqa: E402


@ray.remote
class Counter:
    """The Ray twin of ``BenchCounter``: adds to a total."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, value: int) -> int:
        self.total += value
        return self.total


def create_rate(count: int) -> dict[str, float]:
    """Create ``count`` actors at once; time until every one has answered a call."""
    started = time.perf_counter()
    actors = [Counter.remote() for _ in range(count)]
    ray.get([actor.add.remote(1) for actor in actors])
    elapsed = time.perf_counter() - started
    for actor in actors:
        ray.kill(actor)
    return {"create_rate": count / elapsed, "creates": count}


def create_latency(count: int) -> dict[str, list[float]]:
    """Create-to-first-answer latency, one actor at a time."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        actor = Counter.remote()
        ray.get(actor.add.remote(1))
        samples.append(time.perf_counter() - started)
        ray.kill(actor)
    return {"create_latency": samples}


def call_rates(actors: int, calls: int, callers: int) -> dict[str, object]:
    pool = [Counter.remote() for _ in range(actors)]
    ray.get([actor.add.remote(1) for actor in pool])

    # Synchronous: every caller waits for each answer (ray.get per call).
    samples: list[float] = []
    per_caller = max(1, calls // callers)

    def caller(k: int) -> None:
        for n in range(per_caller):
            started = time.perf_counter()
            ray.get(pool[(k + n) % actors].add.remote(1))
            samples.append(time.perf_counter() - started)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(callers)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sync_rate = per_caller * callers / (time.perf_counter() - started)

    # Pipelined: submit every call, then wait for the list.
    started = time.perf_counter()
    ray.get([pool[n % actors].add.remote(1) for n in range(calls)])
    pipelined_rate = calls / (time.perf_counter() - started)
    return {"sync_rate": sync_rate, "sync_latency": samples,
            "pipelined_rate": pipelined_rate, "actors": actors, "calls": calls,
            "sync_calls": per_caller * callers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=0)
    parser.add_argument("--latency", type=int, default=0)
    parser.add_argument("--actors", type=int, default=0)
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--callers", type=int, default=128)
    args = parser.parse_args()

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    result: dict[str, object] = {"version": ray.__version__,
                                 "init_seconds": time.perf_counter() - started}
    try:
        if args.creates:
            result.update(create_rate(args.creates))
        if args.latency:
            result.update(create_latency(args.latency))
        if args.actors and args.calls:
            result.update(call_rates(args.actors, args.calls, args.callers))
    finally:
        ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
