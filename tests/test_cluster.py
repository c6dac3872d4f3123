"""Several nodes on one etcd: placement, routing and the node service over gRPC."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse
from goverse._pb import goverse_pb2 as pb
from goverse.errors import ERROR_KIND_METADATA, NoRoute
from goverse.sharding import placement
from goverse.testing import free_port, wait_until

#: Few shards keep claims quick; every node of a cluster must agree on it.
SHARDS = 64


@pytest.fixture
def cluster(node_processes, make_node):
    """Two node processes and an in-process caller, settled."""
    procs = node_processes(2, extra_args=["--num-shards", str(SHARDS)])
    caller = make_node(num_shards=SHARDS)
    wait_until(lambda: len(caller.cluster.state.nodes) == 3 and caller.cluster.is_settled(),
               30, message="three nodes settled")
    return caller, procs


def owner_of(node, object_id):
    return node.cluster.route(placement(object_id, SHARDS).shard)[0]


def id_owned_by(node, address, stem):
    """The first id ``<stem>-<n>`` whose shard ``address`` owns, as ``node`` sees it."""
    for n in itertools.count():
        object_id = "%s-%d" % (stem, n)
        if owner_of(node, object_id) == address:
            return object_id


def where(node, object_id):
    return node.call_object("Counter", object_id, "Where", StringValue()).value


def listed(proc):
    reply = proc.stub().ListObjects(pb.Empty(), timeout=5)
    return {(info.type, info.id): info for info in reply.objects}


def unary_add(proc, object_id, value=1):
    request = any_pb2.Any()
    request.Pack(Int64Value(value=value))
    return proc.stub().CallObject(pb.CallObjectRequest(
        id=object_id, method="Add", type="Counter", request=request), timeout=5)


# -- placement ----------------------------------------------------------------


def test_objects_land_on_their_shard_owner(cluster):
    caller, procs = cluster
    for node_address in [p.address for p in procs] + [caller.address]:
        object_id = id_owned_by(caller, node_address, "placed")
        assert where(caller, object_id) == node_address

    hashed = ["spread-%d" % n for n in range(24)]
    for object_id in hashed:
        assert where(caller, object_id) == owner_of(caller, object_id)
    remote = set(listed(procs[0])) | set(listed(procs[1]))
    local = {oid for oid in hashed if oid in caller.host.objects}
    assert {oid for _, oid in remote if oid.startswith("spread-")} | local == set(hashed)


def test_pinned_ids_land_on_their_node(cluster):
    caller, procs = cluster
    for node_address in [procs[0].address, procs[1].address, caller.address]:
        object_id = "%s/pinned" % node_address
        assert where(caller, object_id) == node_address
    assert ("Counter", "%s/pinned" % procs[0].address) in listed(procs[0])
    assert ("Counter", "%s/pinned" % procs[0].address) not in listed(procs[1])


def test_pinned_id_for_unknown_node_has_no_route(cluster):
    caller, _ = cluster
    stranger = "127.0.0.1:%d" % free_port()
    with pytest.raises(NoRoute, match=stranger):
        where(caller, "%s/lost" % stranger)
    with pytest.raises(NoRoute, match=stranger):
        caller.create_object("Counter", "%s/lost" % stranger)


# -- the node service over gRPC -----------------------------------------------


def test_unary_call_to_non_owner_is_refused_naming_owner(cluster):
    caller, procs = cluster
    owner, other = procs
    object_id = id_owned_by(caller, owner.address, "unary")

    def refusal():
        with pytest.raises(grpc.RpcError) as info:
            unary_add(other, object_id)
        return info.value

    error = refusal()
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert (ERROR_KIND_METADATA, "ShardMoved") in tuple(error.trailing_metadata())
    # The refusing node names the owner once its view has the final map.
    wait_until(lambda: owner.address in refusal().details(), 5,
               message="refusal names %s" % owner.address)
    assert ("Counter", object_id) not in listed(other)

    answer = unary_add(owner, object_id, 5)
    value = Int64Value()
    assert answer.response.Unpack(value)
    assert value.value == 5
    assert ("Counter", object_id) in listed(owner)


def test_status_and_list_objects_report_hosted_objects(cluster):
    caller, procs = cluster
    target = procs[0]
    started = time.time()
    expected = {("Counter", "%s/c1" % target.address),
                ("Counter", "%s/c2" % target.address),
                ("Slow", "%s/s1" % target.address)}
    for type_name, object_id in sorted(expected):
        caller.create_object(type_name, object_id, wait=True)

    status = target.status()
    assert status.advertise_addr == target.address
    assert status.num_objects == 3
    objects = listed(target)
    assert set(objects) == expected
    for info in objects.values():
        assert started - 2 <= info.creation_time <= time.time() + 2
    assert procs[1].status().num_objects == 0
    assert not set(listed(procs[1])) & expected


# -- calls between nodes ------------------------------------------------------


def test_method_calls_object_on_another_node(cluster):
    caller, procs = cluster
    spawner = "%s/caller" % procs[0].address
    counter = "%s/callee" % procs[1].address
    for expected in (1, 2):
        answer = caller.call_object("Spawner", spawner, "CallOther",
                                    StringValue(value=counter))
        assert answer.value == expected
    assert ("Counter", counter) in listed(procs[1])
    assert ("Counter", counter) not in listed(procs[0])
    assert caller.call_object("Counter", counter, "Get", Int64Value()).value == 2


def test_method_calls_hashed_object_on_another_node(cluster):
    caller, procs = cluster
    spawner = id_owned_by(caller, procs[1].address, "hashed-caller")
    counter = id_owned_by(caller, procs[0].address, "hashed-callee")
    answer = caller.call_object("Spawner", spawner, "CallOther", StringValue(value=counter))
    assert answer.value == 1
    assert ("Spawner", spawner) in listed(procs[1])
    assert ("Counter", counter) in listed(procs[0])


# -- membership ---------------------------------------------------------------


def test_three_nodes_agree_on_leader_and_own_every_shard(make_node):
    nodes = [make_node(num_shards=SHARDS, wait_ready=False) for _ in range(3)]
    addresses = {node.address for node in nodes}

    def settled():
        return all(set(n.cluster.state.nodes) == addresses and n.cluster.is_settled()
                   for n in nodes)
    wait_until(settled, 30, message="three in-process nodes settled")

    leaders = {node.cluster.state.leader for node in nodes}
    assert len(leaders) == 1
    assert leaders <= addresses
    assert sum(node.cluster.is_leader for node in nodes) == 1

    owned = [set(node.cluster.owned) for node in nodes]
    assert set().union(*owned) == set(range(SHARDS))
    assert sum(len(shards) for shards in owned) == SHARDS
    assert all(shards for shards in owned)
    by_address = {node.address: node for node in nodes}
    for node in nodes:
        table = node.cluster.shard_table()
        assert {row["owner"] for row in table} == addresses
        for row in table:
            assert row["shard"] in by_address[row["owner"]].cluster.owned


def test_method_raising_system_exit_fails_the_call_not_the_node(cluster):
    caller, procs = cluster
    object_id = "%s/quitter" % procs[0].address
    with pytest.raises(goverse.ObjectMethodError, match="SystemExit"):
        caller.call_object("Counter", object_id, "Exit", StringValue(), timeout=10)
    assert procs[0].process.poll() is None
    assert where(caller, object_id) == procs[0].address


@pytest.mark.parametrize("raised", ["GreenletExit", "Timeout"])
def test_method_raising_gevent_control_exceptions_is_answered(cluster, raised):
    caller, procs = cluster
    object_id = "%s/raiser" % procs[0].address
    # Unanswered, the call would end as CallTimeout after its 30 s.
    with pytest.raises(goverse.ObjectMethodError, match=raised):
        caller.call_object("Counter", object_id, "Raise", StringValue(value=raised),
                           timeout=30)
    assert caller.call_object("Counter", object_id, "Context",
                              StringValue(value="x"), timeout=10) == StringValue()


def test_answer_over_the_message_limit_fails_alone(cluster):
    caller, procs = cluster
    object_id = "%s/blob" % procs[0].address
    assert where(caller, object_id) == procs[0].address
    streams = caller._peers[procs[0].address].statistics["streams"]
    with pytest.raises(goverse.MessageTooLarge, match="response of Counter.*Blob"):
        caller.call_object("Counter", object_id, "Blob", Int64Value(value=5_000_000),
                           timeout=10)
    # The connection it shared with other calls is still the same one.
    assert where(caller, object_id) == procs[0].address
    assert caller._peers[procs[0].address].statistics["streams"] == streams


def test_grpc_size_refusal_maps_to_message_too_large():
    from goverse.errors import error_from_rpc

    class Refused(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self):
            return "Received message larger than max (5000089 vs. 4194304)"

    assert type(error_from_rpc(Refused())) is goverse.MessageTooLarge
