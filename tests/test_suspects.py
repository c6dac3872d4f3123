"""Nodes their peers cannot reach lose their shards until they can be reached again."""

from __future__ import annotations

import itertools
import time

import pytest
from google.protobuf.wrappers_pb2 import StringValue

import goverse
from goverse.admin.sources import reachability
from goverse.cluster import Cluster
from goverse.errors import GoverseError
from goverse.sharding import placement
from goverse.testing import wait_until
from tests.conftest import FAST

SHARDS = 32

#: Quick checks and reports, so a cut is noticed within a second or two.
QUICK = {"num_shards": SHARDS, "peer_check_interval": 0.2, "suspect_after": 0.6}


# -- who is a suspect -------------------------------------------------------------


def view(reports: dict[str, list[str]]) -> Cluster:
    """A cluster view (no etcd) whose members report the given peers."""
    cluster = Cluster(None, address="a:1", prefix="/p", num_shards=4, lease_ttl=3,
                      stability_window=0.0, group=None, on_release=None, on_lost=None)
    cluster.state.nodes = {
        address: ({"address": address, "unreachable": peers} if peers else
                  {"address": address})
        for address, peers in reports.items()}
    return cluster


def test_node_reported_by_both_peers_of_three_is_a_suspect():
    cluster = view({"a": ["c"], "b": ["c"], "c": ["a", "b"]})
    assert cluster.suspects() == {"c"}


def test_one_report_is_not_enough():
    assert view({"a": ["c"], "b": [], "c": ["a"]}).suspects() == set()


def test_two_nodes_never_suspect_each_other():
    assert view({"a": ["b"], "b": ["a"]}).suspects() == set()


def test_suspicion_needs_most_of_the_other_nodes():
    five = {"a": ["e"], "b": ["e"], "c": [], "d": [], "e": []}
    assert view(five).suspects() == set()
    five["c"] = ["e"]
    assert view(five).suspects() == {"e"}


def test_reports_of_departed_nodes_and_self_reports_do_not_count():
    cluster = view({"a": ["c", "a"], "b": ["gone:1"], "c": ["c"]})
    assert cluster.suspects() == set()
    cluster.state.nodes["a"]["unreachable"] = "c"  # garbage in a member key
    assert cluster.suspects() == set()


# -- a cut node, three in-process nodes -------------------------------------------------


def id_on(node, address, stem):
    for n in itertools.count():
        object_id = "%s-%d" % (stem, n)
        if node.cluster.route(placement(object_id, SHARDS).shard)[0] == address:
            return object_id


def answers_from(node, object_id):
    try:
        return node.call_object("Counter", object_id, "Where", StringValue(),
                                timeout=1.0).value
    except GoverseError:
        return None


@pytest.mark.timeout(120)
def test_cut_node_loses_its_shards_and_gets_them_back(make_node):
    nodes = [make_node(wait_ready=False, **QUICK) for _ in range(3)]
    first, second, victim = nodes
    wait_until(lambda: all(len(n.cluster.state.nodes) == 3 and n.cluster.is_settled()
                           for n in nodes), 30, message="three nodes settled")
    object_id = id_on(first, victim.address, "cut")
    assert answers_from(first, object_id) == victim.address

    victim.set_partitioned(True)
    # Its peers report it; the leader moves its shards; the object answers
    # from a node the callers can reach, while the cut lasts.
    wait_until(lambda: answers_from(first, object_id) in (first.address, second.address),
               30, message="the cut node's object served elsewhere")
    assert not victim.cluster.owned
    assert first.cluster.suspects() == {victim.address}
    # The cut node is not ready (a load balancer should stop sending it
    # work); the others are.
    assert "cannot reach this node" in victim.cluster.ready_reason()
    assert first.cluster.ready_reason() is None
    assert set(victim.cluster.unreachable) == {first.address, second.address}
    # The cut node itself, reported by one node, is no suspect to the others.
    assert set(first.cluster.unreachable) == {victim.address}
    rows = reachability(second.cluster.state.nodes)
    assert rows[victim.address]["suspect"]
    assert rows[victim.address]["unreachable_to"] == sorted([first.address, second.address])
    assert rows[first.address]["unreachable_to"] == [victim.address]
    assert not rows[first.address]["suspect"]

    victim.set_partitioned(False)
    wait_until(lambda: not first.cluster.suspects() and victim.cluster.owned
               and first.cluster.is_settled(), 30,
               message="the healed node owns shards again, settled")
    wait_until(lambda: not any(n.cluster.unreachable for n in nodes), 10,
               message="every report cleared")
    assert answers_from(second, object_id) in {n.address for n in nodes}



# -- a restart at the address of a node that just died ---------------------------------


def test_node_outwaits_a_predecessor_key_that_lives_longer_than_its_own_lease(
        make_node, etcd_endpoint, cluster_prefix):
    """The predecessor's key goes after more than one TTL; the new lease must not lapse."""
    import gevent

    from goverse.etcd import EtcdClient
    from goverse.testing import free_port

    port = free_port()
    address = "127.0.0.1:%d" % port
    with EtcdClient([etcd_endpoint], timeout=5.0) as etcd:
        old_lease, _ = etcd.grant_lease(3)
        etcd.put("%s/nodes/%s" % (cluster_prefix, address), '{"address": "%s"}' % address,
                 lease=old_lease)

        def predecessor_lingers():
            # Renewed for 1.5 s more, then left to lapse: gone ~4.5 s from now.
            for _ in range(3):
                gevent.sleep(0.5)
                etcd.keepalive_once(old_lease)
        lingering = gevent.spawn(predecessor_lingers)
        started = time.monotonic()
        node = make_node(listen=address, num_shards=SHARDS, lease_ttl=3)
        lingering.join()
    assert time.monotonic() - started > 3.0  # it did wait longer than its own TTL
    assert node.cluster.is_member(address)
    assert node.cluster.serving()


def test_a_node_refused_at_a_taken_address_leaves_the_holder_alone(
        make_node, etcd_endpoint, cluster_prefix):
    from goverse.errors import ConfigError
    from goverse.etcd import EtcdClient

    holder = make_node(num_shards=SHARDS)
    wait_until(lambda: holder.cluster.is_settled(), 20, message="the holder settled")
    key = "%s/nodes/%s" % (cluster_prefix, holder.address)
    with EtcdClient([etcd_endpoint], timeout=5.0) as etcd:
        before = etcd.get(key)
        owned = dict(holder.cluster.owned)
        impostor = goverse.Node(goverse.Settings.from_mapping(dict(
            FAST, etcd_endpoints=[etcd_endpoint], etcd_prefix=cluster_prefix,
            listen="127.0.0.1:0", advertise=holder.address, num_shards=SHARDS,
            lease_ttl=2)))
        with pytest.raises(ConfigError, match="another node is registered as %s"
                           % holder.address):
            impostor.start()
        impostor.stop(grace=2)  # as the launcher does after a failed start
        after = etcd.get(key)
    # The same key, never deleted and put back, and not one shard moved.
    assert after is not None and after.create_revision == before.create_revision
    assert after.lease == holder.cluster.lease_id
    assert holder.cluster.owned == owned
