from google.protobuf.wrappers_pb2 import Int64Value

from goverse.testing import wait_until


def test_single_node_call(make_node):
    node = make_node()
    assert node.call_object("Counter", "a", "Add", Int64Value(value=2)).value == 2
    assert node.call_object("Counter", "a", "Add", Int64Value(value=3)).value == 5


def test_two_processes(node_processes, make_node):
    procs = node_processes(2)
    node = make_node()
    wait_until(lambda: len(node.cluster.state.nodes) == 3 and node.cluster.is_settled(), 30)
    for i in range(20):
        node.call_object("Counter", "p%d" % i, "Add", Int64Value(value=1))
    assert sum(p.status().num_objects for p in procs) + len(node.host) == 20


def test_second_node_on_the_same_address_refuses_to_start(make_node):
    import pytest

    import goverse

    first = make_node(num_shards=64)
    with pytest.raises(goverse.GoverseError, match="in use"):
        make_node(num_shards=64, listen=first.address)
    assert first.address in first.cluster.state.nodes
    assert first.cluster.is_ready()


def test_member_key_deleted_by_hand_comes_back(make_node):
    node = make_node(num_shards=64)
    node.cluster.client.delete(node.cluster._member_key())
    wait_until(lambda: node.address in node.cluster.state.nodes, 10)


def test_a_listen_address_of_no_local_interface_is_said_so(make_node):
    import pytest

    import goverse

    # A documentation address (TEST-NET-1): binding it fails here, locally.
    with pytest.raises(goverse.GoverseError,
                       match="cannot listen on 192.0.2.1:0: no network interface"):
        make_node(num_shards=64, listen="192.0.2.1:0")
