"""A single in-process node on a real etcd: create, call, delete and turns."""

from __future__ import annotations

import logging
import re
import socket

import pytest
from gevent.pool import Group
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse
from goverse.errors import (
    InvalidObjectId,
    ObjectTypeMismatch,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
)
from goverse.etcd import EtcdClient
from goverse.operations import OperationStatus
from goverse.testing import free_port, wait_until
from tests.sample_objects import SlowStart, Tally

#: Few shards keep start-up fast; one test covers the default count.
SHARDS = 64

CLUSTER_REPR = r"Cluster<%s,(leader|member),quorum=\d+>"


@pytest.fixture
def node(make_node):
    return make_node(num_shards=SHARDS)


def add(node, object_id, value=1):
    return node.call_object("Counter", object_id, "Add", Int64Value(value=value)).value


def messages(caplog):
    return [record.getMessage() for record in caplog.records]


def logged(caplog, pattern):
    """The log messages that match ``pattern`` (a regex, searched)."""
    return [m for m in messages(caplog) if re.search(pattern, m)]


# -- creation -----------------------------------------------------------------


def test_call_activates_object_on_first_use(node):
    assert "first-use" not in node.host.objects
    assert add(node, "first-use", 2) == 2
    assert add(node, "first-use", 3) == 5
    assert node.host.objects["first-use"].type == "Counter"


def test_create_twice_is_idempotent(node):
    before = SlowStart.created_count
    assert node.create_object("SlowStart", "twice", wait=True) == "twice"
    first = node.host.objects["twice"]
    assert node.create_object("SlowStart", "twice", wait=True) == "twice"
    assert node.host.objects["twice"] is first
    assert SlowStart.created_count == before + 1


def test_concurrent_creates_make_one_instance(node):
    group = Group()
    creators = [group.spawn(node.create_object, "Tally", "raced", wait=True)
                for _ in range(15)]
    callers = [group.spawn(node.call_object, "Tally", "raced", "Count", StringValue())
               for _ in range(5)]
    group.join(timeout=10, raise_error=True)

    assert [g.value for g in creators] == ["raced"] * 15
    # Every call ran after on_created, so each saw exactly one creation.
    assert [g.value.value for g in callers] == [1] * 5
    assert Tally.instances["raced"] == 1
    assert Tally.creations["raced"] == 1


def test_call_waits_for_on_created(node):
    node.create_object("SlowStart", "slow-start")
    wait_until(lambda: "slow-start" in node.host.objects, 5)
    assert node.host.objects["slow-start"].ready is False

    answer = node.call_object("SlowStart", "slow-start", "IsReady", StringValue())
    assert answer.value == "yes"


def test_other_type_for_existing_id_is_refused(node):
    node.create_object("Counter", "typed", wait=True)
    with pytest.raises(ObjectTypeMismatch, match="'typed'.*'Counter'.*'Slow'"):
        node.call_object("Slow", "typed", "Work", Int64Value(value=1))
    op = node.create_object_async("Slow", "typed")
    wait_until(op.done, 5)
    assert op.status is OperationStatus.FAILED
    assert re.match(r"ObjectTypeMismatch: .*'typed'.*'Counter'.*'Slow'", op.error)
    assert node.host.objects["typed"].type == "Counter"


def test_create_and_wait_with_other_type_for_existing_id_raises(node):
    node.create_object("Counter", "typed-wait", wait=True)
    with pytest.raises(ObjectTypeMismatch, match="'typed-wait'.*'Counter'.*'Slow'"):
        node.create_object("Slow", "typed-wait", wait=True)


def test_create_with_unknown_type_and_wait_raises(node):
    with pytest.raises(UnknownObjectType, match="NoSuchType"):
        node.create_object("NoSuchType", "never", wait=True)
    assert "never" not in node.host.objects


def test_generated_ids_name_the_type(node):
    first = node.create_object("Counter")
    second = node.create_object_async("Counter").object_id
    for object_id in (first, second):
        assert re.fullmatch(r"Counter-[0-9a-f]{32}", object_id), object_id
    assert first != second
    wait_until(lambda: first in node.host.objects and second in node.host.objects, 5)


# -- deletion -----------------------------------------------------------------


def test_delete_of_missing_object_succeeds(node):
    node.delete_object("nobody", wait=True)
    op = node.delete_object_async("nobody-either")
    op.wait(5)
    assert op.status is OperationStatus.SUCCEEDED
    assert op.error is None


def test_call_after_delete_gets_fresh_object(node):
    assert add(node, "reborn", 5) == 5
    old = node.host.objects["reborn"]

    node.delete_object("reborn", wait=True)
    assert "reborn" not in node.host.objects

    assert add(node, "reborn", 1) == 1
    assert node.host.objects["reborn"] is not old


# -- turns --------------------------------------------------------------------


def test_calls_on_one_object_take_turns_in_order(node):
    node.create_object("Slow", "busy", wait=True)
    group = Group()
    calls = [group.spawn(node.call_object, "Slow", "busy", "Work", Int64Value(value=i))
             for i in range(20)]
    group.join(timeout=10, raise_error=True)

    assert [g.value.value for g in calls] == [1] * 20
    assert node.host.objects["busy"].max_active == 1
    order = node.call_object("Slow", "busy", "Order", Int64Value()).value
    assert order == ",".join(str(i) for i in range(20))


# -- bad input ----------------------------------------------------------------


def test_unknown_type_is_refused(node):
    with pytest.raises(UnknownObjectType, match="'Nonexistent'"):
        node.call_object("Nonexistent", "bad-type", "Add", Int64Value(value=1))
    assert len(node.host) == 0


def test_unknown_method_is_refused(node):
    with pytest.raises(UnknownMethod, match="'Counter' has no method 'Subtract'"):
        node.call_object("Counter", "bad-method", "Subtract", Int64Value(value=1))
    assert len(node.host) == 0


def test_wrong_request_type_is_refused(node):
    with pytest.raises(WrongMessageType) as info:
        node.call_object("Counter", "bad-request", "Add", StringValue(value="1"))
    assert "Counter(bad-request).Add" in str(info.value)
    assert "google.protobuf.Int64Value" in str(info.value)
    assert "google.protobuf.StringValue" in str(info.value)
    assert len(node.host) == 0


MALFORMED_IDS = [
    pytest.param("", "must not be empty", id="empty"),
    pytest.param(7, "int 7", id="int"),
    pytest.param("nul\x00id", "'nul\\\\x00id'", id="nul"),
    pytest.param("bad\ud800", "'bad\\\\ud800'", id="lone-surrogate"),
    pytest.param("y" * 1500, "1500 bytes", id="too-long"),
    pytest.param("shard#%d/x" % SHARDS, "shard %d" % SHARDS, id="shard-out-of-range"),
    pytest.param("shard#two/x", "'shard#two/x'", id="shard-not-numeric"),
]


@pytest.mark.parametrize("object_id, named", MALFORMED_IDS + [
    pytest.param(None, "NoneType", id="none")])
def test_call_with_malformed_id_is_refused(node, object_id, named):
    with pytest.raises(InvalidObjectId, match=named):
        node.call_object("Counter", object_id, "Add", Int64Value(value=1))
    assert len(node.host) == 0


@pytest.mark.parametrize("object_id, named", MALFORMED_IDS)
def test_create_with_malformed_id_is_refused(node, object_id, named):
    with pytest.raises(InvalidObjectId, match=named):
        node.create_object("Counter", object_id)
    with pytest.raises(InvalidObjectId, match=named):
        node.delete_object(object_id)
    assert node.operations.pending() == []
    assert len(node.host) == 0


# -- asynchronous create and delete -------------------------------------------


def test_create_returns_before_failing_later(node, caplog):
    caplog.set_level(logging.INFO, logger="goverse.node")
    object_id = node.create_object("NoSuchType", "doomed")
    (op,) = [o for o in node.operations.pending() if o.object_id == "doomed"]
    assert object_id == "doomed"
    assert not op.done()

    wait_until(op.done, 5)
    assert op.status is OperationStatus.FAILED
    assert op.error.startswith("UnknownObjectType")

    prefix = CLUSTER_REPR % re.escape(node.address)
    assert logged(caplog, "^%s: CreateObject doomed initiated asynchronously$" % prefix)
    failed = logged(caplog, "^%s: Async CreateObject doomed failed: " % prefix)
    assert len(failed) == 1
    assert "NoSuchType" in failed[0]
    assert "doomed" not in node.host.objects


def test_create_async_handle_is_pending_at_return(node):
    op = node.create_object_async("SlowStart", "handle")
    assert not op.done()
    assert node.operation_status(op.id)["status"] == "pending"
    assert op.wait(5) == "handle"
    assert node.operation_status(op.id)["status"] == "succeeded"
    assert node.host.objects["handle"].ready is True


def test_delete_logs_start_and_success(node, caplog):
    node.create_object("Counter", "to-delete", wait=True)
    caplog.set_level(logging.INFO, logger="goverse.node")
    node.delete_object("to-delete")
    assert "to-delete" in node.host.objects

    wait_until(lambda: "to-delete" not in node.host.objects, 5)
    prefix = CLUSTER_REPR % re.escape(node.address)
    assert logged(caplog, "^%s: DeleteObject to-delete initiated asynchronously$" % prefix)
    wait_until(lambda: logged(
        caplog, "^%s: Async DeleteObject to-delete completed successfully$" % prefix), 5)


# -- objects that create and delete objects -----------------------------------


def test_method_creates_object(node):
    made = node.call_object("Spawner", "maker", "Create", StringValue(value="made"))
    assert made.value == "made"
    wait_until(lambda: "made" in node.host.objects, 5)
    assert node.host.objects["made"].type == "Counter"

    generated = node.call_object("Spawner", "maker", "Create", StringValue()).value
    assert generated.startswith("Counter-")
    wait_until(lambda: generated in node.host.objects, 5)


def test_method_deletes_object(node):
    assert add(node, "victim") == 1
    gone = node.call_object("Spawner", "killer", "Delete", StringValue(value="victim"))
    assert gone.value == "victim"
    wait_until(lambda: "victim" not in node.host.objects, 5)
    assert add(node, "victim") == 1


def test_on_created_that_creates_does_not_deadlock(node):
    node.create_object("Spawner", "spawn-on-create-1", wait=True, timeout=5)
    wait_until(lambda: "child-of-spawn-on-create-1" in node.host.objects, 5)
    assert add(node, "child-of-spawn-on-create-1") == 1


# -- starting up --------------------------------------------------------------


def test_embedded_etcd_when_no_endpoint(make_node, cluster_prefix):
    port = free_port()
    node = make_node(num_shards=SHARDS, etcd_endpoints=[], embedded_etcd_port=port)
    assert node.cluster.is_ready()
    assert add(node, "on-embedded") == 1

    client = EtcdClient(["127.0.0.1:%d" % port], timeout=2)
    try:
        assert client.get("%s/nodes/%s" % (cluster_prefix, node.address)) is not None
    finally:
        client.close()

    node.stop(grace=1)
    assert node.stopped

    def port_closed():
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) != 0
    wait_until(port_closed, 10)


def test_default_shard_count_all_owned(make_node):
    node = make_node()
    assert node.settings.num_shards == 8192
    table = node.cluster.shard_table()
    assert len(table) == 8192
    assert {row["owner"] for row in table} == {node.address}
    assert node.cluster.is_leader
    # The view can show the last claimed batch before the claim's own
    # bookkeeping does, so the node's owned map may trail readiness briefly.
    wait_until(lambda: len(node.cluster.owned) == 8192, 5, message="all shards claimed")


def test_context_values_reach_the_object(node):
    goverse.context["trace"] = "t-1"
    try:
        answer = node.call_object("Counter", "ctx", "Context", StringValue(value="trace"))
    finally:
        del goverse.context["trace"]
    assert answer.value == "t-1"


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1, 1e300, "5"])
def test_a_timeout_that_is_no_usable_number_is_refused_at_once(node, timeout):
    with pytest.raises(ValueError, match="timeout must be .* got %s" % re.escape(repr(timeout))):
        node.call_object("Counter", "timeouts", "Add", Int64Value(value=1), timeout=timeout)
    with pytest.raises(ValueError, match="timeout must be"):
        node.create_object("Counter", "timeouts-created", timeout=timeout)
    assert "timeouts-created" not in node.host.objects


def test_a_call_that_outlives_the_lease_is_not_passed_off_as_a_success(node):
    # Held past the lease's time to live, the node can no longer be sure
    # that no other node took the shard (and activated the object) meanwhile.
    held = int((node.settings.lease_ttl + 0.5) * 1000)
    with pytest.raises(goverse.PeerUnavailable, match="lost shard .* while it ran"):
        node.call_object("Counter", "spinner", "Spin", Int64Value(value=held), timeout=30)
    # The node registers again and serves the object afresh.
    wait_until(lambda: node.cluster.is_ready(), 20)
    assert node.call_object("Counter", "spinner", "Spin", Int64Value(value=1)).value == 1


@pytest.mark.parametrize("type_name", [None, "", 7, "bad\udc80"])
def test_create_refuses_a_type_that_is_no_name_at_once(node, type_name):
    with pytest.raises(goverse.UnknownObjectType, match="type"):
        node.create_object(type_name, "typed-%d" % id(type_name))
    with pytest.raises(goverse.UnknownObjectType, match="type"):
        node.create_object_async(type_name, "typed-async")


def test_a_node_role_other_than_node_or_gate_is_refused():
    with pytest.raises(goverse.ConfigError, match="role must be 'node' or 'gate', got 'Gate'"):
        goverse.Node(goverse.Settings.from_mapping({}), role="Gate")
