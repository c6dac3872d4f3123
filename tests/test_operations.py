"""Operation handles and the context that travels with detached work."""

from __future__ import annotations

import gc
import logging
import weakref

import gevent
import pytest
from gevent.event import Event
from google.protobuf.wrappers_pb2 import StringValue

import goverse
from goverse import OperationStatus
from goverse.operations import Operation, OperationLog
from goverse.testing import wait_until
from tests import reentrant_objects  # noqa: F401  (registers the types)


def test_handle_reports_success_and_status_by_id(make_node):
    node = make_node(num_shards=64)
    op = node.create_object_async("Hop", "op-ok")
    assert op.wait(5) == "op-ok"
    assert op.status is OperationStatus.SUCCEEDED and op.done()
    assert node.operation_status(op.id)["status"] == "succeeded"
    assert "op-ok" in node.host.objects


def test_handle_reports_the_remote_failure_with_its_reason(two_nodes):
    first, second = two_nodes
    op = first.create_object_async("NoSuchType", "%s/x" % second.address)
    with pytest.raises(goverse.UnknownObjectType, match="NoSuchType"):
        op.wait(5)
    assert op.status is OperationStatus.FAILED
    assert "UnknownObjectType" in op.error and "NoSuchType" in op.error


def test_wait_true_raises_the_real_error(two_nodes):
    first, second = two_nodes
    with pytest.raises(goverse.UnknownObjectType):
        first.create_object("NoSuchType", "%s/y" % second.address, wait=True)


def test_callback_added_after_completion_still_runs(make_node):
    node = make_node(num_shards=64)
    op = node.create_object_async("Hop", "op-late")
    op.wait(5)
    seen = []
    op.add_done_callback(lambda done: seen.append(done.status))
    wait_until(lambda: seen == [OperationStatus.SUCCEEDED], 5)


def test_callback_exceptions_are_logged_not_lost(make_node, caplog):
    node = make_node(num_shards=64)
    op = node.create_object_async("Hop", "op-bad-callback")

    def explode(done):
        raise ValueError("callback exploded")
    op.add_done_callback(explode)
    op.wait(5)
    wait_until(lambda: "callback exploded" in caplog.text, 5)


def test_stopping_the_node_cancels_pending_operations(make_node, caplog):
    node = make_node(num_shards=64)
    op = node.create_object_async("Sleeper", "sleepy")
    wait_until(lambda: "sleepy" in node.host.objects, 5)
    with caplog.at_level(logging.ERROR):
        node.stop(grace=0.1)
    assert op.status is OperationStatus.CANCELLED
    with pytest.raises(goverse.OperationCancelled):
        op.wait(0)
    assert "Async CreateObject sleepy failed" in caplog.text


@goverse.register
class HeldCreate(goverse.BaseObject):
    """An on_created that waits until the test releases it."""

    release = Event()
    started: set[str] = set()
    finished: set[str] = set()

    def on_created(self) -> None:
        HeldCreate.started.add(self.id)
        HeldCreate.release.wait()
        HeldCreate.finished.add(self.id)


def test_create_returns_before_the_work_finishes(make_node):
    """create_object hands on_created to a detached greenlet and returns its id."""
    node = make_node(num_shards=64)
    HeldCreate.release.clear()
    HeldCreate.started.clear()
    HeldCreate.finished.clear()
    try:
        creating = gevent.spawn(lambda: [node.create_object("HeldCreate") for _ in range(20)])
        # Only a create that waited for its on_created could still be running:
        # none of them can finish before the release below.
        creating.join(30)
        assert creating.successful(), "create_object waited for on_created"
        ids = creating.value
        assert len(set(ids)) == 20
        assert HeldCreate.finished == set()
        wait_until(lambda: HeldCreate.started == set(ids), 10, message="on_created started")
        assert HeldCreate.finished == set()
    finally:
        HeldCreate.release.set()
    wait_until(lambda: HeldCreate.finished == set(ids), 10, message="on_created finished")
    assert all(object_id in node.host.objects for object_id in ids)


def test_trace_id_reaches_on_created_on_another_node_and_the_logs(two_nodes, caplog):
    first, second = two_nodes
    child = "%s/traced" % second.address
    goverse.context["trace_id"] = "trace-42"
    try:
        with caplog.at_level(logging.INFO):
            op = first.create_object_async("Child", child)
            op.wait(5)
    finally:
        del goverse.context["trace_id"]
    seen = first.call_object("Child", child, "Seen", StringValue(), timeout=5)
    assert seen.value.startswith("trace-42|")
    assert "CreateObject %s initiated asynchronously [trace_id=trace-42]" % child in caplog.text
    assert "completed successfully [trace_id=trace-42]" in caplog.text


def test_detached_changes_do_not_leak_back(make_node):
    node = make_node(num_shards=64)
    goverse.context["who"] = "parent"
    try:
        seen = []

        def child():
            seen.append(goverse.context.get("who"))
            goverse.context["who"] = "child"
        node.spawn(child).join(5)
        assert seen == ["parent"]
        assert goverse.context["who"] == "parent"
    finally:
        del goverse.context["who"]


def test_context_values_reach_methods_on_another_node(two_nodes):
    first, second = two_nodes
    goverse.context["tenant"] = "acme"
    try:
        value = first.call_object("Hop", "%s/ctx" % second.address, "ContextValue",
                                  StringValue(value="tenant"), timeout=5)
    finally:
        del goverse.context["tenant"]
    assert value.value == "acme"


def test_opentelemetry_span_context_crosses_nodes(two_nodes):
    trace = pytest.importorskip("opentelemetry.trace")
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    first, second = two_nodes
    tracer = sdk.TracerProvider().get_tracer("goverse-test")
    with tracer.start_as_current_span("caller") as span:
        expected = "%032x" % span.get_span_context().trace_id
        seen = first.call_object("Hop", "%s/otel" % second.address, "TraceId",
                                 StringValue(), timeout=5)
    assert trace is not None and seen.value == expected


def finished_operation(object_id: str) -> Operation:
    op = Operation("CreateObject", object_id, spawn=gevent.spawn)
    op.succeed(object_id)
    return op


def test_an_operation_left_pending_does_not_stop_the_log_from_trimming():
    # A wait=True create whose caller is killed, or times out under a
    # gevent.Timeout, is never finished: its record stays pending.
    log = OperationLog(max_records=5, max_age=600.0)
    abandoned = Operation("CreateObject", "abandoned", spawn=gevent.spawn)
    log.add(abandoned)
    first = finished_operation("first")
    log.add(first)
    for n in range(1000):
        log.add(finished_operation("op-%d" % n))

    assert len(log) <= 6
    assert log.get(abandoned.id) is abandoned and log.pending() == [abandoned]
    assert log.get(first.id) is None


def test_old_finished_operations_go_even_behind_a_pending_one():
    log = OperationLog(max_records=100, max_age=0.0)
    running = Operation("DeleteObject", "running", spawn=gevent.spawn)
    log.add(running)
    log.add(finished_operation("done"))
    gevent.sleep(0.01)

    assert log.get(running.id) is running
    assert len(log) == 1


class Bulky:
    """Stands for what a caller's frame holds: a request, a server call's state."""


def test_a_failed_operation_keeps_its_error_not_the_frames_it_passed_through():
    op = Operation("CreateObject", "x", spawn=gevent.spawn)

    def fail_deep() -> weakref.ref:
        held = Bulky()
        try:
            raise goverse.PeerUnavailable("connection to node n failed")
        except goverse.GoverseError as exc:
            op.fail(exc)
        return weakref.ref(held)

    def wait_in_a_handler() -> weakref.ref:
        held = Bulky()
        with pytest.raises(goverse.PeerUnavailable, match="node n"):
            op.wait(0)
        return weakref.ref(held)

    where_it_failed = fail_deep()
    where_it_was_awaited = [wait_in_a_handler() for _ in range(3)]
    gc.collect()

    # The record lives on (ten minutes, or 10,000 newer ones): it must not
    # keep the stacks alive.
    assert where_it_failed() is None
    assert all(ref() is None for ref in where_it_was_awaited)
    assert op.status is OperationStatus.FAILED and "PeerUnavailable" in op.error


def test_a_waiting_create_whose_caller_is_killed_is_counted_cancelled(make_node):
    node = make_node(num_shards=64)
    waiting = gevent.spawn(node.create_object, "Sleeper", "killed-waiter", wait=True)
    wait_until(lambda: "killed-waiter" in node.host.objects, 5)
    waiting.kill()
    wait_until(lambda: node.stats.operations.get(("CreateObject", "cancelled")) == 1, 5)
    assert node.operations.pending() == []


def test_waited_operations_stay_out_of_the_status_log(make_node):
    node = make_node(num_shards=64)
    node.create_object("Hop", "waited-op", wait=True)
    assert node.stats.operations.get(("CreateObject", "succeeded")) == 1
    assert len(node.operations) == 0
    op = node.create_object_async("Hop", "async-op")
    op.wait(5)
    assert node.operation_status(op.id)["status"] == "succeeded"
