"""Node statistics: cheap counters on the hot path, Prometheus at scrape time.

A call must not pay for a labelled Prometheus child lookup, so the node
counts into plain dicts and fixed-bucket histograms; :class:`NodeCollector`
turns them into ``prometheus_client`` metric families only when someone
scrapes. :class:`LoopMonitor` measures how late the event loop wakes a
sleeping greenlet: the stall time of the hub, which is what makes a node
slow to answer anything (and what ``/healthz`` reports).
"""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING, Any, Iterator

import gevent

if TYPE_CHECKING:
    from .node import Node

#: Upper bounds (seconds) of the latency histograms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """A fixed-bucket latency histogram (counts per bucket, sum, count)."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        running = 0
        buckets = []
        for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), self.counts):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile (the bucket it falls in)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        running = 0
        for bound, count in zip(LATENCY_BUCKETS + (float("inf"),), self.counts):
            running += count
            if running >= rank:
                return bound
        return float("inf")


class NodeStats:
    """What one node counts while it works.

    Calls are counted by their latency histogram, looked up by (class,
    method name): both hash cheaply, unlike the labels' strings joined.
    Only failures are counted apart, by outcome.
    """

    def __init__(self) -> None:
        self.call_errors: dict[tuple[str, str, str], int] = {}
        self.call_latency: dict[tuple[str, str], Histogram] = {}
        self.latency_by_method: dict[tuple[type, str], Histogram] = {}
        self.operations: dict[tuple[str, str], int] = {}
        self.operation_latency: dict[str, Histogram] = {}
        self.objects_by_type: dict[str, int] = {}

    def latency(self, cls: type, type_name: str, method: str) -> Histogram:
        """The call-latency histogram of one method (made on first use)."""
        histogram = self.call_latency.get((type_name, method))
        if histogram is None:
            histogram = self.call_latency[(type_name, method)] = Histogram()
        self.latency_by_method[(cls, method)] = histogram
        return histogram

    def call_failed(self, type_name: str, method: str, outcome: str) -> None:
        key = (type_name, method, outcome)
        self.call_errors[key] = self.call_errors.get(key, 0) + 1

    def calls(self) -> dict[tuple[str, str, str], int]:
        """Calls served by (type, method, outcome); "ok" for successes."""
        counts = dict(self.call_errors)
        for (type_name, method), histogram in self.call_latency.items():
            failed = sum(n for (t, m, _), n in self.call_errors.items()
                         if (t, m) == (type_name, method))
            counts[(type_name, method, "ok")] = histogram.count - failed
        return counts

    def operation_done(self, kind: str, outcome: str, seconds: float) -> None:
        key = (kind, outcome)
        self.operations[key] = self.operations.get(key, 0) + 1
        histogram = self.operation_latency.get(kind)
        if histogram is None:
            histogram = self.operation_latency[kind] = Histogram()
        histogram.observe(seconds)

    def activated(self, type_name: str, delta: int) -> None:
        self.objects_by_type[type_name] = self.objects_by_type.get(type_name, 0) + delta


class LoopMonitor:
    """Measures event-loop stalls: how late a periodic timer fires."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.stalls = Histogram()
        self.max_stall = 0.0
        self.last_tick = time.monotonic()
        self._greenlet: gevent.Greenlet | None = None

    def start(self, group: Any) -> None:
        self._greenlet = group.spawn(self._run)

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            gevent.sleep(self.interval)
            now = time.monotonic()
            stall = max(0.0, now - before - self.interval)
            self.stalls.observe(stall)
            self.max_stall = max(self.max_stall, stall)
            self.last_tick = now

    def responsive(self, limit: float = 1.0) -> bool:
        """True when the loop ran the monitor within ``limit`` seconds."""
        return time.monotonic() - self.last_tick < limit + self.interval


class NodeCollector:
    """A ``prometheus_client`` collector reading one node's statistics."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        node = self.node
        stats = node.stats
        labels = {"node": node.address}

        objects = GaugeMetricFamily("goverse_objects", "Active objects by type",
                                    labels=["node", "type"])
        for type_name, count in sorted(stats.objects_by_type.items()):
            objects.add_metric([node.address, type_name], count)
        yield objects

        calls = CounterMetricFamily("goverse_calls", "Object calls served by outcome",
                                    labels=["node", "type", "method", "outcome"])
        for (type_name, method, outcome), count in sorted(stats.calls().items()):
            calls.add_metric([node.address, type_name, method, outcome], count)
        yield calls

        latency = HistogramMetricFamily("goverse_call_latency_seconds",
                                        "Time to serve an object call",
                                        labels=["node", "type", "method"])
        for (type_name, method), hist in sorted(stats.call_latency.items()):
            latency.add_metric([node.address, type_name, method], hist.cumulative(),
                               hist.total)
        yield latency

        operations = CounterMetricFamily("goverse_operations",
                                         "Creates and deletes by outcome",
                                         labels=["node", "kind", "outcome"])
        for (kind, outcome), count in sorted(stats.operations.items()):
            operations.add_metric([node.address, kind, outcome], count)
        yield operations

        op_latency = HistogramMetricFamily("goverse_operation_latency_seconds",
                                           "Time from start to end of a create or delete",
                                           labels=["node", "kind"])
        for kind, hist in sorted(stats.operation_latency.items()):
            op_latency.add_metric([node.address, kind], hist.cumulative(), hist.total)
        yield op_latency

        cluster_stats = node.cluster.statistics if node.cluster is not None else {}
        shards = CounterMetricFamily("goverse_shard_changes",
                                     "Shard claims and releases by this node",
                                     labels=["node", "change"])
        for change in ("claims", "releases"):
            shards.add_metric([node.address, change], cluster_stats.get(change, 0))
        yield shards

        owned = GaugeMetricFamily("goverse_shards_owned", "Shards this node owns",
                                  labels=["node"])
        owned.add_metric([node.address], len(node.cluster.owned) if node.cluster else 0)
        yield owned

        depth = GaugeMetricFamily("goverse_peer_queue_depth",
                                  "Requests in flight to each peer", labels=["node", "peer"])
        for peer, value in sorted(node.peer_queue_depths().items()):
            depth.add_metric([node.address, peer], value)
        yield depth

        stall = HistogramMetricFamily("goverse_event_loop_stall_seconds",
                                      "How late the event loop woke a periodic timer",
                                      labels=["node"])
        monitor = node.loop_monitor
        stall.add_metric([labels["node"]], monitor.stalls.cumulative(), monitor.stalls.total)
        yield stall
