"""The invariants a run must keep, checked from the operations and the activation log.

Each check returns a dict with ``passed`` and what it found, so that the
summary can show it and a failing test can print it.

Objects live in memory: a node that is killed, or that loses its lease,
loses its objects, and a shard that moves starts its objects afresh on
the new owner. So an acknowledged create does not promise that the object
exists at the end of the run; it promises that the object was active when
the acknowledgment came, and that it stays active until something allowed
ends it: a delete of that id, or a fault (a deactivation inside a fault's
window, from its injection to two seconds after the cluster settled). The
activation log of every node tells when each object was active where, so
both promises can be checked exactly, and the final ``ListObjects`` of
every node must agree with them.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any, Iterable

from goverse._pb import goverse_pb2 as pb
from goverse.testing import NodeProcess

from .harness import Span, activation_intervals, double_activations, read_activation_log
from .workload import Op

#: Slack beyond an operation's deadline for the answer to come back.
DEADLINE_SLACK = 2.0

NEVER = 2 ** 63


def single_activation(log_path: str, ends: dict[str, list[int]]) -> dict[str, Any]:
    """No id was active on two nodes at overlapping times."""
    spans = activation_intervals(read_activation_log(log_path), ends)
    overlaps = double_activations(spans)
    return {"passed": not overlaps, "ids": len(spans), "overlaps": len(overlaps),
            "examples": overlaps[:5]}


def deadlines(ops: Iterable[Op], timeout: float) -> dict[str, Any]:
    """Every operation ended within its deadline plus slack, as success or goverse error."""
    ops = list(ops)
    limit = timeout + DEADLINE_SLACK
    late = [op for op in ops if op.ended - op.started > limit]
    stuck = [op for op in ops if op.error == "Stuck"]
    foreign = [op for op in ops if op.error and op.error.startswith("not a goverse")]
    slowest = max((op.ended - op.started for op in ops), default=0.0)
    return {"passed": not late and not stuck and not foreign, "ops": len(ops),
            "late": len(late), "stuck": len(stuck), "not_goverse_errors": len(foreign),
            "slowest_s": round(slowest, 3), "limit_s": limit,
            "examples": [_describe(op) for op in (late + foreign)[:5]]}


def lifecycle(ops: Iterable[Op], log_path: str, ends: dict[str, list[int]],
              windows: list[tuple[float, float]], listing: dict[str, list[str]],
              run_end: float) -> dict[str, Any]:
    """Acknowledged creates and deletes are reflected in the activation log and at the end.

    ``listing`` maps each id to the nodes whose ListObjects named it at
    ``run_end``, after the load stopped and the cluster settled.
    """
    by_id: dict[str, list[Op]] = collections.defaultdict(list)
    for op in ops:
        if op.kind in ("create", "delete"):
            by_id[op.target].append(op)
    spans = activation_intervals(read_activation_log(log_path), ends)
    found: dict[str, list[str]] = collections.defaultdict(list)
    tally = collections.Counter()
    for object_id, history in by_id.items():
        history.sort(key=lambda op: op.started)
        _check_history(object_id, history, _seconds(spans.get(object_id, [])), windows,
                       listing.get(object_id, []), run_end, found, tally)
    problems = sum(len(v) for v in found.values())
    return {"passed": not problems, "ids": len(by_id), **dict(tally),
            **{kind: len(v) for kind, v in found.items()},
            "examples": [e for v in found.values() for e in v[:3]]}


def _check_history(object_id: str, history: list[Op], spans: list[tuple[float, float, str]],
                   windows: list[tuple[float, float]], listed: list[str], run_end: float,
                   found: dict[str, list[str]], tally: collections.Counter) -> None:
    for n, op in enumerate(history):
        if not op.ok:
            tally["indeterminate"] += 1
            continue
        until = history[n + 1].started if n + 1 < len(history) else run_end
        last = n + 1 == len(history)
        if op.kind == "create":
            _check_create(object_id, op, until, last, spans, windows, listed, found, tally)
        else:
            _check_delete(object_id, op, until, last, spans, listed, found, tally)


def _check_create(object_id: str, op: Op, until: float, last: bool,
                  spans: list[tuple[float, float, str]], windows: list[tuple[float, float]],
                  listed: list[str], found: dict[str, list[str]],
                  tally: collections.Counter) -> None:
    tally["acked_creates"] += 1
    active = [s for s in spans if s[0] <= op.ended and s[1] >= op.ended]
    if not active:
        ended_in_fault = [s for s in spans if s[0] <= op.ended and _in(s[1], windows)
                          and s[1] >= op.started]
        if ended_in_fault:
            tally["creates_lost_to_faults"] += 1
            return
        found["created_but_not_active"].append("%s acknowledged at %.3f, active nowhere" % (
            object_id, op.ended))
        return
    for start, end, node in active:
        if end < until and not _in(end, windows):
            found["lost_outside_faults"].append(
                "%s created at %.3f, deactivated on %s at %.3f with no delete or fault" % (
                    object_id, op.ended, node, end))
        elif end < until:
            tally["creates_lost_to_faults"] += 1
        elif last and end >= NEVER / 1e9 and node not in listed:
            found["missing_at_end"].append("%s active on %s per the log, not listed there" % (
                object_id, node))
        elif last:
            tally["creates_listed_at_end"] += 1


def _check_delete(object_id: str, op: Op, until: float, last: bool,
                  spans: list[tuple[float, float, str]], listed: list[str],
                  found: dict[str, list[str]], tally: collections.Counter) -> None:
    tally["acked_deletes"] += 1
    still = [s for s in spans if s[0] < until and s[1] > op.ended]
    for start, end, node in still:
        found["active_after_delete"].append(
            "%s deleted at %.3f, active on %s over [%.3f, %.3f]" % (
                object_id, op.ended, node, start, end))
    if last and listed:
        found["listed_after_delete"].append("%s deleted at %.3f, listed at the end on %s" % (
            object_id, op.ended, listed))


def list_objects(procs: Iterable[NodeProcess]) -> dict[str, list[str]]:
    """Which node lists each id (ListObjects of every node)."""
    listing: dict[str, list[str]] = collections.defaultdict(list)
    for proc in procs:
        for info in proc.stub().ListObjects(pb.Empty(), timeout=10).objects:
            listing[info.id].append(proc.address)
    return dict(listing)


def listed_once(listing: dict[str, list[str]]) -> dict[str, Any]:
    """At the end no id is listed by two nodes."""
    twice = {object_id: nodes for object_id, nodes in listing.items() if len(nodes) > 1}
    return {"passed": not twice, "ids": len(listing), "twice": len(twice),
            "examples": sorted(twice.items())[:5]}


def _seconds(spans: list[Span]) -> list[tuple[float, float, str]]:
    return [(start / 1e9, end / 1e9, node) for start, end, node in spans]


def _in(moment: float, windows: list[tuple[float, float]]) -> bool:
    starts = [w[0] for w in windows]
    index = bisect.bisect_right(starts, moment)
    return any(start <= moment <= end for start, end in windows[:index])


def _describe(op: Op) -> str:
    return "%s %s took %.2fs: %s" % (op.kind, op.target, op.ended - op.started,
                                       op.error or "ok")


__all__ = ["DEADLINE_SLACK", "deadlines", "lifecycle", "list_objects",
           "listed_once", "single_activation"]
