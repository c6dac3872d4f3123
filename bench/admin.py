"""admin: ``/healthz`` latency of a node under peer-call load vs unloaded.

The node process of the peer-call layout serves its admin endpoints on a
loopback port. A plain child process (``bench.http_probe``) times GET
``/healthz`` one after another, first with the node idle, then while 128
callers in the bench process keep calling objects on that node. The
scenario reports "not measured" when ``goverse.admin`` is absent.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess

import gevent
from google.protobuf.wrappers_pb2 import Int64Value

import goverse
from goverse.testing import free_port

from .harness import (ROOT, Outcome, Run, percentile, python_command, start_node,
                      start_processes)

NAME = "admin"
TITLE = "/healthz p99 under peer-call load vs unloaded"
OBJECTS = 1000
CALLERS = 128


def probe(url: str, count: int) -> dict:
    done = subprocess.run(python_command("-m", "bench.http_probe", url, str(count)),
                          stdout=subprocess.PIPE, timeout=300, cwd=ROOT, check=True)
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def load(ids: list[str], running: list[bool], counter: list[int]) -> None:
    request = Int64Value(value=1)
    n = 0
    while running[0]:
        goverse.call_object("BenchCounter", ids[n % OBJECTS], "Add", request)
        counter[0] += 1
        n += 7


def run(ctx: Run) -> Outcome:
    out = Outcome(NAME)
    if importlib.util.find_spec("goverse.admin") is None:
        out.note("not measured: admin plane not present (no goverse.admin module)")
        return out
    requests = 200 if ctx.short else 2000
    prefix = ctx.prefix(NAME)
    admin_port = free_port()
    procs = start_processes(ctx, prefix, 1, NAME,
                            ("--admin-listen", "127.0.0.1:%d" % admin_port))
    node = None
    try:
        node = start_node(ctx, prefix)
        url = "http://127.0.0.1:%d/healthz" % admin_port
        ids = ["%s/o%d" % (procs[0].address, n) for n in range(OBJECTS)]
        for object_id in ids:
            goverse.call_object("BenchCounter", object_id, "Add", Int64Value(value=1))
        idle = probe(url, requests)

        running, counter = [True], [0]
        callers = [gevent.spawn(load, ids, running, counter) for _ in range(CALLERS)]
        gevent.sleep(1.0)  # let the load reach its steady rate
        loaded_from = counter[0]
        loaded = probe(url, requests)  # gevent's subprocess: the callers keep running
        calls = counter[0] - loaded_from
        running[0] = False
        gevent.joinall(callers, raise_error=True)
    finally:
        if node is not None:
            node.stop(grace=1)
        for proc in procs:
            proc.close()

    statuses = {**idle["statuses"], **loaded["statuses"]}
    out.add("/healthz p50 under load", percentile(loaded["latencies"], 0.5) * 1e3, "ms",
            percentile(idle["latencies"], 0.5) * 1e3, "unloaded p50")
    out.add("/healthz p99 under load", percentile(loaded["latencies"], 0.99) * 1e3, "ms",
            percentile(idle["latencies"], 0.99) * 1e3, "unloaded p99")
    out.note("%d sequential GET /healthz per phase, a new connection each, from a separate process; %d peer "
             "calls ran during the loaded phase; HTTP statuses seen: %s" % (
                 requests, calls, statuses))
    return out
