"""Call chains: reentrant cycles complete, true deadlocks time out with names."""

from __future__ import annotations

import gevent
import pytest
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse
from goverse.testing import wait_until
from tests import reentrant_objects  # noqa: F401  (registers the types)


def pinned(node, name):
    return "%s/%s" % (node.address, name)


def test_a_calls_b_calls_a_on_one_node(make_node):
    node = make_node(num_shards=64)
    answer = node.call_object("Hop", "a", "Path", StringValue(value="b,a"), timeout=5)
    assert answer.value == "a>b>a"


def test_self_call_enters_the_callers_turn(make_node):
    node = make_node(num_shards=64)
    answer = node.call_object("Hop", "me", "SelfCall", StringValue(value="x"), timeout=5)
    assert answer.value == "self:x"


def test_three_object_cycle_across_nodes(two_nodes):
    first, second = two_nodes
    a, b, c = pinned(first, "a"), pinned(second, "b"), pinned(first, "c")
    path = ",".join([b, c, a])
    answer = first.call_object("Hop", a, "Path", StringValue(value=path), timeout=5)
    assert answer.value == ">".join([a, b, c, a])


def test_cycle_across_nodes_through_on_created_with_wait(two_nodes):
    """Object 1 on node A creates object 2 on node B and waits; 2 calls back 1."""
    first, second = two_nodes
    creator, child = pinned(first, "creator"), pinned(second, "child-sync")
    first.call_object("Hop", creator, "CreateChild", StringValue(value=child), timeout=5)
    seen = first.call_object("Child", child, "Seen", StringValue(), timeout=5)
    assert seen.value == "|%s|from %s" % (creator, child)


def test_cycle_across_nodes_through_detached_create(two_nodes):
    first, second = two_nodes
    creator, child = pinned(first, "creator2"), pinned(second, "child-async")
    first.call_object("Hop", creator, "CreateChild", StringValue(value=child), timeout=5)

    def child_called_back():
        if child not in second.host.objects:
            return False
        return second.host.objects[child].callback == "from " + child
    wait_until(child_called_back, 10)


def test_independent_chains_that_wait_on_each_other_time_out_with_both_names(make_node):
    node = make_node(num_shards=64)
    results = {}

    def run(name, other):
        try:
            node.call_object("Hop", name, "HoldThenCall", StringValue(value=other), timeout=5)
            results[name] = "ok"
        except goverse.CallTimeout as exc:
            results[name] = str(exc)

    gevent.joinall([gevent.spawn(run, "left", "right"), gevent.spawn(run, "right", "left")])
    failures = [text for text in results.values() if text != "ok"]
    assert failures, results
    for text in failures:
        assert "Hop(left)" in text and "Hop(right)" in text, text


def test_interleaved_method_runs_while_the_turn_is_held(make_node):
    node = make_node(num_shards=64)
    holder = gevent.spawn(node.call_object, "Hop", "busy", "Hold", Int64Value(value=500))
    wait_until(lambda: "busy" in node.host.objects and node.host.objects["busy"]._gv_holder)
    answer = node.call_object("Hop", "busy", "Peek", StringValue(), timeout=5)
    assert answer.value == "peek:busy"
    assert not holder.ready()  # Peek did not wait for the turn
    holder.get(timeout=5)


def test_remaining_deadline_travels_to_another_node(two_nodes):
    first, second = two_nodes
    left = first.call_object("Hop", pinned(second, "clock"), "Remaining", StringValue(),
                             timeout=2.0)
    assert 1.0 < left.value < 2.0


def test_expired_deadline_names_the_object_and_method(two_nodes):
    first, second = two_nodes
    target = pinned(second, "slowpoke")
    with pytest.raises(goverse.CallTimeout) as excinfo:
        first.call_object("Hop", target, "Hold", Int64Value(value=1000), timeout=0.2)
    assert target in str(excinfo.value) and "Hold" in str(excinfo.value)


def test_a_call_in_progress_may_call_out_while_its_node_stops(two_nodes):
    """The grace period lets a running method finish, outgoing calls included."""
    first, second = two_nodes
    holder, echo = pinned(first, "draining"), pinned(second, "echo")
    call = gevent.spawn(first.call_object, "Hop", holder, "SlowRelay",
                        StringValue(value=echo), timeout=8)
    wait_until(lambda: holder in first.host.objects
               and first.host.objects[holder]._gv_holder, 5)
    first.stop(grace=5)
    assert call.get(timeout=8).value == holder
    with pytest.raises(goverse.NodeStopped):
        first.call_object("Hop", echo, "Echo", StringValue())
