"""The memory probe's child: activates N idle objects and reports its RSS.

``python -m bench.memory_child --etcd HOST:PORT --prefix P --count N
--kind goverse|plain`` starts a node in this process, reads VmRSS, then
activates N objects directly on the node's host (``goverse``) or puts N
plain Python objects with the same field in a dict under the same ids
(``plain``), collects garbage, reads VmRSS again and prints one JSON line.
"""

from goverse import runtime

runtime.patch()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

import goverse  # noqa: E402

from bench.objects import BenchIdle  # noqa: E402,F401  (registers the type)

#: Activations between two gevent.idle(): the lease renewal must keep running
#: (sleep(0) is not enough: see bench.harness.drive).
YIELD_EVERY = 1000


class PlainIdle:
    """The baseline: an ordinary object with the same single field."""

    def __init__(self) -> None:
        self.value = 0


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def activate_goverse(node: goverse.Node, ids: list[str]) -> int:
    for n, object_id in enumerate(ids):
        node.create_owned("BenchIdle", object_id, epoch=0)
        if n % YIELD_EVERY == YIELD_EVERY - 1:
            gevent.idle()
    return len(node.host)


def activate_plain(ids: list[str], keep: list) -> int:
    objects = {}
    for n, object_id in enumerate(ids):
        objects[object_id] = PlainIdle()
        if n % YIELD_EVERY == YIELD_EVERY - 1:
            gevent.idle()
    keep.append(objects)
    return len(objects)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--kind", choices=("goverse", "plain"), required=True)
    args = parser.parse_args()

    node = goverse.Node(goverse.Settings.from_mapping(dict(
        etcd_endpoints=[args.etcd], etcd_prefix=args.prefix, listen="127.0.0.1:0",
        stability_window=0.2))).start(timeout=60)
    node.create_owned("BenchIdle", "warm-up", epoch=0)
    # Ids are made before the first reading: both kinds pay for them alike
    # and they are not part of what an activation costs.
    ids = ["idle-%d" % n for n in range(args.count)]
    gc.collect()
    before = rss_bytes()

    started = time.perf_counter()
    keep: list = []
    if args.kind == "goverse":
        active = activate_goverse(node, ids)
    else:
        active = activate_plain(ids, keep)
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()

    print(json.dumps({"kind": args.kind, "count": args.count, "active": active,
                      "before": before, "after": after, "seconds": seconds,
                      "max_stall": node.loop_monitor.max_stall,
                      "lease_losses": node.cluster.statistics.get("lease_losses", 0)}),
          flush=True)
    node.stop(grace=1)


if __name__ == "__main__":
    main()
