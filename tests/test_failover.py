"""Failover of a live cluster: joins, graceful leaves, crashes, stalls, etcd restarts.

Every test runs real ``bin/goverse-node`` processes on etcd plus one
in-process node that observes the cluster and makes the calls. The
properties checked are the ones a user relies on: shards stay balanced,
a join moves few of them, calls keep succeeding while shards move, a
crashed or stalled node's objects come back elsewhere within a lease, and
no object is ever active on two nodes at once (checked from the activation
log every node writes when ``GOVERSE_TEST_ACTIVATION_LOG`` is set).

The kill-and-restart loop runs ``GOVERSE_KILL_CYCLES`` cycles (5 by
default); the full run uses 50::

    GOVERSE_KILL_CYCLES=50 .venv/bin/python -m pytest tests/test_failover.py \
        -k kill_and_restart
"""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import time
from typing import Any, Iterable

import gevent
import grpc
import pytest
from gevent.pool import Group
from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse
from goverse._pb import goverse_pb2 as pb
from goverse.errors import PeerUnavailable
from goverse.etcd import EtcdClient
from goverse.etcd_server import EtcdServer
from goverse.sharding import placement
from goverse.testing import NodeProcess, wait_until
from tests.faults.harness import (
    activation_intervals,
    double_activations,
    etcd_shard_owners,
    read_activation_log,
)

pytestmark = pytest.mark.slow

#: Few shards keep claims and moves quick; every node must use the same count.
SHARDS = 256

#: The default lease: the failover bounds below are stated against it.
LEASE_TTL = 3

#: How long a settled cluster may take to form or re-form on a busy machine.
SETTLE_TIMEOUT = 45

NODE_ARGS = ["--num-shards", str(SHARDS), "--stability-window", "0.2",
             "--shutdown-grace", "5", "--lease-ttl", str(LEASE_TTL)]

OBSERVER_SETTINGS = {"num_shards": SHARDS, "stability_window": 0.2,
                     "lease_ttl": LEASE_TTL, "call_timeout": 10.0}


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def spawn_nodes(etcd_endpoint, cluster_prefix, tmp_path):
    """Start node processes of this test's cluster; SIGKILLed at teardown.

    Teardown kills rather than terminates: the cluster prefix is unique to
    the test, so nothing needs a graceful leave, and it saves seconds.
    """
    procs: list[NodeProcess] = []
    serial = itertools.count()

    def start(count: int = 1, *, endpoint: str | None = None, port: int | None = None,
              activation_log: str | None = None) -> list[NodeProcess]:
        env = {"GOVERSE_TEST_ACTIVATION_LOG": activation_log} if activation_log else None
        started = []
        for _ in range(count):
            proc = NodeProcess(endpoint or etcd_endpoint, prefix=cluster_prefix,
                               objects=["tests.sample_objects"], port=port,
                               extra_args=NODE_ARGS, env=env,
                               log_path=str(tmp_path / ("node-%d.log" % next(serial))))
            procs.append(proc)
            started.append(proc.start(wait=False))
        for proc in started:
            proc.wait_serving()
        return started

    yield start
    for proc in procs:
        proc.signal(signal.SIGCONT)
        proc.kill()
        proc.close()


@pytest.fixture
def start_observer(etcd_endpoint, cluster_prefix):
    """Start the in-process node that observes the cluster and makes the calls."""
    from tests import sample_objects  # noqa: F401  (registers the test types)

    nodes: list[goverse.Node] = []
    sinks: list[Any] = []

    def start(*, endpoint: str | None = None, activation_log: str | None = None,
              wait_ready: bool = True) -> goverse.Node:
        settings = goverse.Settings.from_mapping(dict(
            OBSERVER_SETTINGS, etcd_endpoints=[endpoint or etcd_endpoint],
            etcd_prefix=cluster_prefix, listen="127.0.0.1:0"))
        hook = None
        if activation_log:
            sink = open(activation_log, "a", buffering=1, encoding="utf-8")
            sinks.append(sink)

            def hook(obj: Any, event: str) -> None:
                log_activation(sink, node, obj, event)
        node = goverse.Node(settings, activation_hook=hook)
        nodes.append(node)
        return node.start(wait_ready=wait_ready)

    yield start
    for node in reversed(nodes):
        node.stop(grace=2)
    for sink in sinks:
        sink.close()


@pytest.fixture
def own_etcd():
    """An etcd for one test alone, so the test may kill and restart it."""
    server = EtcdServer(name="goverse-failover-etcd").start()
    yield server
    server.stop()


def log_activation(sink: Any, node: goverse.Node, obj: Any, event: str) -> None:
    """Write the observer's activations in the launcher's activation-log format."""
    shard = placement(obj.id, SHARDS).shard
    epoch = node.cluster.owned.get(shard, 0) if node.cluster is not None else 0
    sink.write("%d %s %s %d %s\n" % (time.monotonic_ns(), node.address, event, epoch,
                                      obj.id))


# -- helpers ------------------------------------------------------------------


def members(observer: goverse.Node) -> set[str]:
    return set(observer.cluster.state.nodes)


def wait_settled(observer: goverse.Node, expected: Iterable[str],
                 timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until exactly ``expected`` are members and the cluster is settled."""
    expected = set(expected)

    def settled() -> bool:
        return members(observer) == expected and observer.cluster.is_settled()

    try:
        wait_until(settled, timeout, message="cluster settled with %s" % sorted(expected))
    except AssertionError as exc:
        raise AssertionError("%s; members now %s, not ready because: %s" % (
            exc, sorted(members(observer)), observer.cluster.ready_reason())) from None


def start_cluster(spawn_nodes, start_observer, count: int = 3,
                  **kwargs: Any) -> tuple[goverse.Node, list[NodeProcess]]:
    procs = spawn_nodes(count, **kwargs)
    observer = start_observer(endpoint=kwargs.get("endpoint"),
                              activation_log=kwargs.get("activation_log"))
    wait_settled(observer, [p.address for p in procs] + [observer.address])
    return observer, procs


def shard_of(object_id: str) -> int:
    return placement(object_id, SHARDS).shard


def owner_of(observer: goverse.Node, object_id: str) -> str | None:
    return observer.cluster.route(shard_of(object_id))[0]


def ids_owned_by(observer: goverse.Node, address: str, stem: str,
                 count: int) -> list[str]:
    """The first ``count`` ids ``<stem>-<n>`` whose shard ``address`` owns."""
    found = []
    for n in itertools.count():
        object_id = "%s-%d" % (stem, n)
        if owner_of(observer, object_id) == address:
            found.append(object_id)
            if len(found) == count:
                return found


def targets(observer: goverse.Node) -> list[str | None]:
    return [view.target for view in observer.cluster.state.shards]


def owner_counts(observer: goverse.Node) -> dict[str, int]:
    """Shards owned per member, members owning none included."""
    owned = observer.cluster.view()["shards_owned"]
    return {address: owned.get(address, 0) for address in members(observer)}


def where(observer: goverse.Node, object_id: str, timeout: float | None = None) -> str:
    return observer.call_object("Counter", object_id, "Where", StringValue(),
                                timeout=timeout).value


def add(observer: goverse.Node, object_id: str, value: int = 1) -> int:
    request = Int64Value(value=value)
    return observer.call_object("Counter", object_id, "Add", request).value


def total(observer: goverse.Node, object_id: str) -> int:
    return observer.call_object("Counter", object_id, "Get", Int64Value()).value


def epochs_owned_by(observer: goverse.Node, address: str) -> dict[int, int]:
    """The epoch of every shard ``address`` owns, as the observer sees it."""
    return {shard: view.epoch for shard, view in enumerate(observer.cluster.state.shards)
            if view.owner == address}


def reclaimed(observer: goverse.Node, shard: int, epoch: int) -> bool:
    """Whether ``shard`` has an owner again, by a claim made after ``epoch``."""
    view = observer.cluster.state.shards[shard]
    return view.owner is not None and view.epoch > epoch


def direct_total(proc: NodeProcess, object_id: str) -> int | None:
    """``Counter.Get`` sent straight to ``proc``; None when it refuses the shard."""
    request = any_pb2.Any()
    request.Pack(Int64Value())
    try:
        reply = proc.stub().CallObject(pb.CallObjectRequest(
            id=object_id, type="Counter", method="Get", request=request), timeout=5)
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.FAILED_PRECONDITION, exc
        return None
    value = Int64Value()
    assert reply.response.Unpack(value)
    return value.value


class CallLoad:
    """Greenlets calling ``Counter.Add`` on random ids until stopped.

    Every outcome is kept: ``done`` holds ``(id, started, ended)`` of each
    successful call, ``failures`` holds ``(id, started, exception)``.
    """

    def __init__(self, node: goverse.Node, ids: Iterable[str], workers: int = 16) -> None:
        self.node = node
        self.ids = list(ids)
        self.workers = workers
        self.done: list[tuple[str, float, float]] = []
        self.failures: list[tuple[str, float, BaseException]] = []
        self._running = False
        self._group = Group()

    def __enter__(self) -> CallLoad:
        self._running = True
        for seed in range(self.workers):
            self._group.spawn(self._work, random.Random(seed))
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _work(self, rng: random.Random) -> None:
        while self._running:
            object_id = rng.choice(self.ids)
            started = time.monotonic()
            try:
                add(self.node, object_id)
            except Exception as exc:  # every failure is the test's business
                self.failures.append((object_id, started, exc))
            else:
                self.done.append((object_id, started, time.monotonic()))
            # Calls to objects of the observer itself never block: yield so
            # the other workers and the test's waits get their turn.
            gevent.sleep(0)

    def wait_progress(self, calls: int, timeout: float = 20.0) -> None:
        """Wait until ``calls`` more calls have succeeded."""
        goal = len(self.done) + calls
        wait_until(lambda: len(self.done) >= goal, timeout,
                   message="%d more successful calls (failures so far: %d)" % (
                       calls, len(self.failures)))

    def stop(self) -> None:
        self._running = False
        self._group.join(timeout=15)
        self._group.kill()

    def failure_summary(self) -> str:
        kinds = collections.Counter(type(exc).__name__ for _, _, exc in self.failures)
        first = self.failures[0] if self.failures else None
        return "%d failed calls by kind %s; first: %r" % (
            len(self.failures), dict(kinds), first)


# -- balance and joins --------------------------------------------------------


def test_initial_assignment_is_balanced(spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer)

    counts = owner_counts(observer)
    assert set(counts) == {p.address for p in procs} | {observer.address}
    assert sum(counts.values()) == SHARDS
    assert max(counts.values()) - min(counts.values()) <= 1, counts

    process_counts = [counts[p.address] for p in procs]
    assert max(process_counts) - min(process_counts) <= 1, counts
    nodes, owners = etcd_shard_owners(observer.settings.etcd_endpoints[0],
                                      observer.settings.etcd_prefix)
    assert nodes == set(counts)
    assert collections.Counter(owners.values()) == counts


def test_join_moves_a_fair_share_and_keeps_unmoved_objects(spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer)
    ids = ["join-%d" % n for n in range(400)]
    for object_id in ids:
        assert add(observer, object_id, 7) == 7
    before = targets(observer)

    newcomer, = spawn_nodes(1)
    after_members = [p.address for p in procs] + [observer.address, newcomer.address]
    wait_settled(observer, after_members)
    after = targets(observer)

    counts = owner_counts(observer)
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    moved = {shard for shard in range(SHARDS) if before[shard] != after[shard]}
    # Only the newcomer's fair share moves, and only to the newcomer.
    fair_share = SHARDS / len(after_members)
    assert fair_share - 1 <= len(moved) <= fair_share + 0.05 * SHARDS, counts
    assert {after[shard] for shard in moved} == {newcomer.address}

    for object_id in ids:
        value = total(observer, object_id)
        if shard_of(object_id) in moved:
            # A moved object was deactivated on its old node: it starts anew.
            assert value == 0, object_id
        else:
            assert value == 7, object_id
    assert any(shard_of(object_id) in moved for object_id in ids)


def test_a_join_moves_one_batch_at_a_time_until_each_lands(make_node, monkeypatch):
    """A moved shard counts as moving until its new owner has claimed it."""
    from goverse.cluster import MOVE_BATCH, Cluster

    many = 6 * MOVE_BATCH
    first = make_node(num_shards=many, stability_window=0.2)
    second = make_node(num_shards=many, stability_window=0.2)
    wait_until(lambda: first.cluster.is_settled() and len(first.cluster.state.nodes) == 2, 30)
    unowned_at_once = [0]
    # A claimer slower than the leader (a loaded node): released shards wait.
    claim_batch = Cluster._claim_batch

    def slow_claim(cluster: Cluster, batch: list[int]) -> None:
        gevent.sleep(0.3)
        claim_batch(cluster, batch)
    monkeypatch.setattr(Cluster, "_claim_batch", slow_claim)

    def watch() -> None:
        while True:
            shards = first.cluster.state.shards
            unowned_at_once[0] = max(unowned_at_once[0],
                                     sum(view.owner is None for view in shards))
            first.cluster.wait_changed(0.05)

    watcher = gevent.spawn(watch)
    try:
        third = make_node(num_shards=many, stability_window=0.2)
        wait_until(lambda: first.cluster.is_settled()
                   and len(first.cluster.state.nodes) == 3, 60)
    finally:
        watcher.kill()
    counts = collections.Counter(view.owner for view in first.cluster.state.shards)
    assert counts[third.address] >= many // 3 - 1, counts
    # The leader sends the next batch only once the last one is owned again:
    # between release and claim a shard answers nobody.
    assert 0 < unowned_at_once[0] <= MOVE_BATCH, unowned_at_once


def test_a_settled_leader_does_not_walk_its_shards_on_a_timer(make_node, monkeypatch):
    from goverse.cluster import Cluster

    first = make_node(num_shards=1024, stability_window=0.2)
    second = make_node(num_shards=1024, stability_window=0.2)
    wait_until(lambda: first.cluster.is_settled() and len(first.cluster.state.nodes) == 2, 30)
    leader = first if first.cluster.is_leader else second
    walks = []
    plan = Cluster._targets_for_planning

    def counted(cluster: Cluster) -> list:
        walks.append(cluster.address)
        return plan(cluster)
    monkeypatch.setattr(Cluster, "_targets_for_planning", counted)
    # Past the stability window, nothing is left to wait for.
    wait_until(lambda: not leader.cluster._waiting_on_time(time.monotonic()), 10)
    walks.clear()
    gevent.sleep(2.5)  # an idle stretch: what is asserted is that nothing ran
    assert walks == []
    # A change in etcd still gets its step at once.
    third = make_node(num_shards=1024, stability_window=0.2)
    wait_until(lambda: leader.address in walks, 10)
    wait_until(lambda: any(v.owner == third.address for v in leader.cluster.state.shards), 30)


class ShardWatch:
    """Records when the observer saw each shard leave its initial owner."""

    def __init__(self, observer: goverse.Node) -> None:
        self.observer = observer
        self.initial = [view.owner for view in observer.cluster.state.shards]
        self.left: dict[int, float] = {}
        self.arrived: dict[int, float] = {}
        self._running = True
        self._greenlet = gevent.spawn(self._watch)

    def _watch(self) -> None:
        while self._running:
            now = time.monotonic()
            for shard, view in enumerate(self.observer.cluster.state.shards):
                if view.owner != self.initial[shard]:
                    self.left.setdefault(shard, now)
                if shard in self.left and view.owner not in (None, self.initial[shard]):
                    self.arrived.setdefault(shard, now)
            self.observer.cluster.wait_changed(0.05)

    def stop(self) -> None:
        self._running = False
        self._greenlet.join(timeout=2)
        self._greenlet.kill()


def test_calls_meeting_a_moving_shard_succeed(spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer)
    ids = ["shard#%d/moving" % shard for shard in range(SHARDS)]
    watch = ShardWatch(observer)

    with CallLoad(observer, ids, workers=24) as load:
        load.wait_progress(200)
        newcomer, = spawn_nodes(1)
        wait_settled(observer, [p.address for p in procs] + [observer.address,
                                                              newcomer.address])
        load.wait_progress(200)
    watch.stop()

    assert not load.failures, load.failure_summary()
    assert watch.arrived, "no shard moved during the join"
    # Calls in flight while their shard had left its old owner and not yet
    # reached the new one: these had to wait for, or follow, the move.
    met = [(object_id, started, ended) for object_id, started, ended in load.done
           if shard_of(object_id) in watch.arrived
           and started <= watch.arrived[shard_of(object_id)]
           and ended >= watch.left[shard_of(object_id)]]
    assert met, "no call was in flight while its shard moved"
    for shard in watch.arrived:
        assert where(observer, "shard#%d/moving" % shard) == newcomer.address


# -- leaving, crashing, stalling ----------------------------------------------


def test_graceful_leave_under_load_fails_no_call(spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer)
    leaving = procs[0]
    ids = ["leave-%d" % n for n in range(300)]
    assert any(owner_of(observer, object_id) == leaving.address for object_id in ids)

    with CallLoad(observer, ids) as load:
        load.wait_progress(300)
        status = leaving.terminate(timeout=30)
        stay = [p.address for p in procs[1:]] + [observer.address]
        wait_settled(observer, stay)
        load.wait_progress(300)

    assert status == 0
    assert not load.failures, load.failure_summary()
    assert leaving.address not in targets(observer)
    for object_id in ids:
        assert where(observer, object_id) in stay


def test_killed_node_objects_come_back_within_a_lease(spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer)
    victim = procs[1]
    ids = ids_owned_by(observer, victim.address, "crash", 20)
    for object_id in ids:
        assert where(observer, object_id) == victim.address

    answered: dict[str, tuple[float, str]] = {}
    unavailable: list[tuple[str, float]] = []

    def call_until_answered(object_id: str) -> None:
        while True:
            started = time.monotonic()
            try:
                answer = where(observer, object_id)
            except PeerUnavailable:
                # Sent on the connection that died, before the observer saw
                # it break: the caller cannot know it did not run.
                unavailable.append((object_id, started - killed_at))
                continue
            answered[object_id] = (time.monotonic() - killed_at, answer)
            return

    killed_at = time.monotonic()
    victim.kill()
    callers = [gevent.spawn(call_until_answered, object_id) for object_id in ids]
    gevent.joinall(callers, raise_error=True)

    first_after = min(after for after, _ in answered.values())
    all_after = max(after for after, _ in answered.values())
    print("\nkill -9 failover: first call answered after %.2fs, all %d after %.2fs; "
          "%d calls failed as sent to the dead node" % (
              first_after, len(ids), all_after, len(unavailable)))
    live = {p.address for p in procs if p is not victim} | {observer.address}
    assert {answer for _, answer in answered.values()} <= live
    assert first_after < LEASE_TTL + 3, first_after
    assert all_after < LEASE_TTL + 3, all_after
    assert all(started < 0.5 for _, started in unavailable), unavailable
    wait_settled(observer, live)


def test_leader_death_elects_a_new_leader(spawn_nodes, start_observer):
    procs = spawn_nodes(3)
    addresses = {p.address for p in procs}
    with EtcdClient([procs[0].etcd_endpoint], timeout=2.0) as client:
        wait_until(lambda: client.get(procs[0].prefix + "/leader"), 20,
                   message="a node process leads")
    observer = start_observer()
    wait_settled(observer, addresses | {observer.address})
    leader = observer.cluster.state.leader
    assert leader in addresses
    doomed = next(p for p in procs if p.address == leader)

    killed_at = time.monotonic()
    doomed.kill()

    def new_leader() -> str | None:
        current = observer.cluster.state.leader
        return current if current not in (None, leader) else None

    elected = wait_until(new_leader, LEASE_TTL + 3, interval=0.02,
                         message="a leader other than %s" % leader)
    elected_after = time.monotonic() - killed_at
    survivors = (addresses - {leader}) | {observer.address}
    wait_until(lambda: members(observer) == survivors and observer.cluster.is_ready(),
               SETTLE_TIMEOUT, message="ready without the old leader")
    ready_after = time.monotonic() - killed_at
    print("\nleader death: new leader after %.2fs, ready after %.2fs"
          % (elected_after, ready_after))

    assert elected in survivors
    wait_settled(observer, survivors)
    assert observer.cluster.state.leader == elected


def test_cluster_converges_after_etcd_restart(own_etcd, spawn_nodes, start_observer):
    observer, procs = start_cluster(spawn_nodes, start_observer,
                                    endpoint=own_etcd.endpoint)
    expected = {p.address for p in procs} | {observer.address}
    ids = ["etcd-%d" % n for n in range(60)]
    for object_id in ids:
        assert add(observer, object_id) == 1

    own_etcd.kill()
    # Down long enough that no node can still trust its lease.
    wait_until(lambda: not observer.cluster.serving(), LEASE_TTL + 5,
               message="the observer's lease lapses while etcd is down")
    own_etcd.restart()
    back_at = time.monotonic()

    prefix = observer.settings.etcd_prefix

    def converged() -> bool:
        # etcd's own keys are the truth; the observer's view must agree.
        nodes, owners = etcd_shard_owners(own_etcd.endpoint, prefix)
        seen = {n: v.owner for n, v in enumerate(observer.cluster.state.shards)}
        return (nodes == expected and set(owners) == set(range(SHARDS))
                and set(owners.values()) <= expected and seen == owners
                and members(observer) == expected and observer.cluster.is_settled())

    wait_until(converged, 60, message="etcd and the observer agree on a settled cluster")
    converged_after = time.monotonic() - back_at
    print("\netcd restart: converged %.2fs after etcd came back" % converged_after)
    nodes, owners = etcd_shard_owners(own_etcd.endpoint, prefix)
    for object_id in ids:
        assert where(observer, object_id) == owners[shard_of(object_id)]
        add(observer, object_id)
    assert all(p.alive() for p in procs)


def test_stalled_node_loses_its_objects_before_serving_again(
        spawn_nodes, start_observer, tmp_path):
    activation_log = str(tmp_path / "activations.log")
    observer, procs = start_cluster(spawn_nodes, start_observer,
                                    activation_log=activation_log)
    stalled = procs[2]
    ids = ids_owned_by(observer, stalled.address, "stall", 12)
    for object_id in ids:
        assert add(observer, object_id, 5) == 5

    new_owner: dict[str, str] = {}

    def keep_calling(object_id: str) -> None:
        while object_id not in new_owner:
            try:
                answer = where(observer, object_id, timeout=1.5)
            except goverse.GoverseError:
                continue  # a call sent to the frozen node waits for it
            if answer != stalled.address:
                new_owner[object_id] = answer

    stalled.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    stopped_ns = time.monotonic_ns()
    callers = Group()
    try:
        for object_id in ids:
            callers.spawn(keep_calling, object_id)
        wait_until(lambda: len(new_owner) == len(ids), LEASE_TTL + 8,
                   message="every object of the stalled node answers elsewhere")
        failover_after = time.monotonic() - stopped_at
        # Stay frozen past the lease whatever the failover took.
        wait_until(lambda: time.monotonic() - stopped_at >= LEASE_TTL + 2, 10)
    finally:
        callers.kill()
        # Taken before the signal: the node may log before this process runs again.
        resumed_ns = time.monotonic_ns()
        stalled.signal(signal.SIGCONT)
    print("\nstalled node: objects answered elsewhere %.2fs after SIGSTOP"
          % failover_after)

    # Asked directly, the resumed node refuses the objects it held, or
    # serves fresh ones; never the instances (total 5) from before.
    for object_id in ids:
        assert direct_total(stalled, object_id) in (None, 0), object_id

    # Calls routed by the observer reach the new owners, whose state is new.
    answers = {object_id: where(observer, object_id) for object_id in ids}
    assert all(total(observer, object_id) == 0 for object_id in ids)
    assert stalled.alive()

    # Its old activations must end in deactivations written after it resumed.
    def deactivated_all() -> bool:
        events = read_activation_log(activation_log)
        gone = {oid for stamp, node, event, _, oid in events
                if node == stalled.address and event == "deactivate"
                and stamp >= resumed_ns}
        return set(ids) <= gone

    wait_until(deactivated_all, 10,
               message="the stalled node deactivated its old objects")

    events = read_activation_log(activation_log)
    activated_since = {oid for stamp, node, event, _, oid in events
                       if node == stalled.address and event == "activate"
                       and stamp >= resumed_ns}
    for object_id, answer in answers.items():
        assert answer != stalled.address or object_id in activated_since, (
            "the resumed node served %s from an activation it held before the stall"
            % object_id)
    assert not [e for e in events
                if e[1] == stalled.address and stopped_ns < e[0] < resumed_ns]
    # A frozen process runs nothing: its activations end, for this check,
    # when it was stopped (that it served none of them later is checked above).
    spans = activation_intervals(events, {stalled.address: [stopped_ns]})
    assert not double_activations(spans)


def test_single_activation_across_kill_and_restart_cycles(
        spawn_nodes, start_observer, tmp_path):
    cycles = int(os.environ.get("GOVERSE_KILL_CYCLES", "5"))
    activation_log = str(tmp_path / "activations.log")
    observer, procs = start_cluster(spawn_nodes, start_observer,
                                    activation_log=activation_log)
    addresses = {p.address for p in procs} | {observer.address}
    ids = ["cycle-%d" % n for n in range(300)]
    rng = random.Random(int(os.environ.get("GOVERSE_KILL_SEED", "7")))
    killed: dict[str, list[int]] = collections.defaultdict(list)
    recoveries = []

    with CallLoad(observer, ids) as load:
        load.wait_progress(200)
        for _ in range(cycles):
            index = rng.randrange(len(procs))
            victim = procs[index]
            held = epochs_owned_by(observer, victim.address)
            victim.kill()
            killed_at = time.monotonic()
            killed[victim.address].append(time.monotonic_ns())
            procs[index], = spawn_nodes(1, port=victim.port,
                                        activation_log=activation_log)
            # The new process has the old address: the cluster has recovered
            # once every shard the dead one held was claimed again.
            wait_until(lambda: all(reclaimed(observer, shard, epoch)
                                   for shard, epoch in held.items()),
                       SETTLE_TIMEOUT, message="shards of the killed node claimed again")
            wait_settled(observer, addresses)
            recoveries.append(time.monotonic() - killed_at)
            load.wait_progress(100)
    print("\nkill-and-restart: %d cycles, settled again after %s s; %s"
          % (cycles, ["%.1f" % r for r in recoveries], load.failure_summary()))

    # A call in flight on a connection that dies may have run: it fails
    # rather than risk running twice. Nothing else may fail, and only calls
    # sent before the caller saw the connection break.
    kinds = {type(exc).__name__ for _, _, exc in load.failures}
    assert kinds <= {"PeerUnavailable"}, load.failure_summary()
    kill_times = [stamp / 1e9 for stamps in killed.values() for stamp in stamps]
    call_timeout = OBSERVER_SETTINGS["call_timeout"]
    late = [(object_id, started) for object_id, started, _ in load.failures
            if not any(kill - call_timeout < started < kill + 1.0 for kill in kill_times)]
    assert not late, late[:5]
    spans = activation_intervals(read_activation_log(activation_log), killed)
    assert len(spans) > len(ids) / 2
    overlaps = double_activations(spans)
    assert not overlaps, overlaps[:5]
