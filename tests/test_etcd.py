"""The etcd adapter against a real etcd: key-value, txn, leases, watches."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from goverse.errors import EtcdUnavailable
from goverse.etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdRequestError,
    PrefixWatcher,
    WatchCompacted,
    cmp_create_revision,
    cmp_mod_revision,
    cmp_value,
    cmp_version,
    op_delete,
    op_get,
    op_put,
)
from goverse.etcd_server import EtcdServer, EtcdServerError


def wait_until(condition, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``condition`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail("%s not met within %.1f s" % (message, timeout))
        time.sleep(interval)


@pytest.fixture
def client(etcd_endpoint):
    with EtcdClient([etcd_endpoint], timeout=5.0) as etcd:
        yield etcd


class ViewRecorder:
    """Applies a PrefixWatcher's callbacks to a dict, as a real user would."""

    def __init__(self):
        self.view: dict[str, bytes] = {}
        self.snapshots: list[int] = []
        self.revisions: list[int] = []
        self._busy = threading.Lock()

    def on_snapshot(self, kvs, revision):
        self._enter()
        self.view = {kv.key: kv.value for kv in kvs}
        self.snapshots.append(revision)
        self._busy.release()

    def on_events(self, events, revision):
        self._enter()
        for event in events:
            if event.kind == "put":
                self.view[event.kv.key] = event.kv.value
            else:
                self.view.pop(event.kv.key, None)
        self.revisions.append(revision)
        self._busy.release()

    def _enter(self):
        # Callbacks must never overlap; a second one entering would fail here.
        assert self._busy.acquire(blocking=False), "callbacks ran concurrently"


def test_put_get_delete_roundtrip(client, etcd_prefix):
    key = etcd_prefix + "a"
    assert client.get(key) is None

    revision = client.put(key, "one")
    kv = client.get(key)
    assert (kv.key, kv.value, kv.mod_revision, kv.version) == (key, b"one", revision, 1)

    second = client.put(key, b"two")
    kv = client.get(key)
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        b"two", revision, second, 2
    )

    assert client.delete(key) == 1
    assert client.delete(key) == 0
    assert client.get(key) is None


def test_get_prefix_sorted_and_bounded(client, etcd_prefix):
    for name in ("c", "a", "b"):
        client.put(etcd_prefix + name, name)
    client.put(etcd_prefix[:-1] + "x", "outside")  # shares the text, not the prefix

    kvs, revision = client.get_prefix(etcd_prefix)

    assert [kv.key for kv in kvs] == [etcd_prefix + n for n in ("a", "b", "c")]
    assert revision >= max(kv.mod_revision for kv in kvs)
    assert client.delete_prefix(etcd_prefix) == 3
    assert client.get_prefix(etcd_prefix)[0] == []
    client.delete(etcd_prefix[:-1] + "x")


def test_get_prefix_pages_through_many_keys(client, etcd_prefix):
    client.txn([], [op_put("%s%04d" % (etcd_prefix, i), "v") for i in range(1000)])
    client.txn([], [op_put("%s%04d" % (etcd_prefix, i), "v") for i in range(1000, 1500)])

    kvs, _ = client.get_prefix(etcd_prefix)

    assert [kv.key for kv in kvs] == ["%s%04d" % (etcd_prefix, i) for i in range(1500)]


def test_txn_create_if_absent_then_compare_and_set(client, etcd_prefix):
    key = etcd_prefix + "owner"

    created = client.txn([cmp_create_revision(key, "==", 0)], [op_put(key, "node-1")])
    again = client.txn(
        [cmp_version(key, "==", 0)], [op_put(key, "node-2")], [op_get(key)]
    )

    assert created.succeeded and not again.succeeded
    assert [kv.value for kv in again.responses[0]] == [b"node-1"]

    current = client.get(key)
    moved = client.txn(
        [cmp_mod_revision(key, "==", current.mod_revision), cmp_value(key, "==", "node-1")],
        [op_put(key, "node-3")],
    )
    stale = client.txn([cmp_mod_revision(key, "==", current.mod_revision)], [op_delete(key)])

    assert moved.succeeded and moved.responses == [moved.revision]
    assert not stale.succeeded
    assert client.get(key).value == b"node-3"


def test_txn_batch_of_64_puts_is_one_revision(client, etcd_prefix):
    ops = [op_put("%s%02d" % (etcd_prefix, i), str(i)) for i in range(64)]

    result = client.txn([], ops)

    kvs, _ = client.get_prefix(etcd_prefix)
    assert result.succeeded and len(kvs) == 64
    assert {kv.mod_revision for kv in kvs} == {result.revision}


def test_txn_over_the_server_limit_is_a_request_error(client, etcd_prefix):
    ops = [op_put("%s%04d" % (etcd_prefix, i), "v") for i in range(1025)]

    with pytest.raises(EtcdRequestError, match="too many operations"):
        client.txn([], ops)


def test_bad_compare_operator_is_refused(etcd_prefix):
    with pytest.raises(ValueError, match="compare operator"):
        cmp_version(etcd_prefix, "=", 0)


def test_lease_keepalive_extends_and_revoke_deletes(client, etcd_prefix):
    lease, granted = client.grant_lease(5)
    key = etcd_prefix + "member"
    client.put(key, "alive", lease=lease)

    assert granted >= 5
    assert client.get(key).lease == lease
    assert 0 < client.keepalive_once(lease) <= granted
    assert 0 < client.lease_ttl(lease) <= granted

    client.revoke_lease(lease)
    client.revoke_lease(lease)  # already gone: not an error

    assert client.get(key) is None
    assert client.lease_ttl(lease) == -1
    assert client.keepalive_once(lease) == 0


def test_key_on_expired_lease_disappears(client, etcd_prefix):
    lease, granted = client.grant_lease(1)
    key = etcd_prefix + "ephemeral"
    client.put(key, "soon gone", lease=lease)

    wait_until(lambda: client.get(key) is None, timeout=granted + 5, message="lease expiry")

    assert client.lease_ttl(lease) == -1


def test_watch_prefix_delivers_events_in_order(client, etcd_prefix):
    start = client.put(etcd_prefix + "before", "x")
    seen, errors = [], []
    stream = client.watch_prefix(
        etcd_prefix, start + 1, lambda events, rev: seen.extend(events), errors.append
    )
    try:
        wait_until(lambda: stream.created, message="watch created")
        revisions = [client.put(etcd_prefix + "k%d" % i, str(i)) for i in range(5)]
        deleted_at = client.delete(etcd_prefix + "k0") and client.get_prefix(etcd_prefix)[1]

        wait_until(lambda: len(seen) == 6, message="six events")
    finally:
        stream.cancel()

    assert [e.kind for e in seen] == ["put"] * 5 + ["delete"]
    assert [e.kv.mod_revision for e in seen] == revisions + [deleted_at]
    assert seen[-1].kv.key == etcd_prefix + "k0" and seen[-1].kv.value == b""
    assert errors == []  # cancel() is not an error


def test_watch_from_compacted_revision_reports_compaction(client, etcd_prefix):
    first = client.put(etcd_prefix + "a", "1")
    latest = client.put(etcd_prefix + "a", "2")
    client.compact(latest)
    errors = []

    stream = client.watch_prefix(etcd_prefix, first, lambda *a: None, errors.append)
    try:
        wait_until(lambda: errors, message="compaction reported")
    finally:
        stream.cancel()

    assert len(errors) == 1 and isinstance(errors[0], WatchCompacted)
    assert errors[0].compact_revision >= latest


def test_unreachable_endpoint_fails_fast_naming_it():
    with EtcdClient(["127.0.0.1:1"], timeout=2.0) as client:
        started = time.monotonic()
        with pytest.raises(EtcdUnavailable, match="127.0.0.1:1") as raised:
            client.get("/anything")

    assert time.monotonic() - started < 2.5
    assert "get" in str(raised.value)
    assert raised.value.__cause__ is not None


def test_failover_moves_to_the_next_endpoint(etcd_endpoint, etcd_prefix):
    with EtcdClient(["127.0.0.1:1", etcd_endpoint], timeout=2.0) as client:
        with pytest.raises(EtcdUnavailable):
            client.put(etcd_prefix + "k", "v")

        assert client.endpoint == etcd_endpoint
        client.put(etcd_prefix + "k", "v")


# -- recovery, on an etcd of the test's own ---------------------------------


@pytest.fixture
def own_etcd():
    """An etcd only this test uses, so it can be killed and restarted."""
    server = EtcdServer(name="goverse-fault-etcd").start()
    yield server
    server.stop()


def start_watcher(client, prefix, recorder, **options):
    watcher = PrefixWatcher(
        client,
        prefix,
        on_snapshot=recorder.on_snapshot,
        on_events=recorder.on_events,
        name="test",
        **options,
    )
    return watcher.start()


def test_prefix_watcher_follows_changes(client, etcd_prefix):
    client.put(etcd_prefix + "a", "1")
    recorder = ViewRecorder()
    watcher = start_watcher(client, etcd_prefix, recorder)
    try:
        assert recorder.view == {etcd_prefix + "a": b"1"}
        client.put(etcd_prefix + "b", "2")
        last = client.delete(etcd_prefix + "a") and client.put(etcd_prefix + "c", "3")

        wait_until(lambda: watcher.last_revision == last, message="watcher caught up")
    finally:
        watcher.stop()
        watcher.stop()  # idempotent

    assert recorder.view == {etcd_prefix + "b": b"2", etcd_prefix + "c": b"3"}
    assert watcher.statistics()["events"] == 3
    assert not watcher.connected


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_prefix_watcher_survives_etcd_restart(own_etcd, outage):
    prefix = "/restart/"
    client = EtcdClient([own_etcd.endpoint], timeout=2.0)
    client.put(prefix + "before", "1")
    recorder = ViewRecorder()
    watcher = start_watcher(client, prefix, recorder, min_backoff=0.05, max_backoff=0.5)
    try:
        wait_until(lambda: watcher.connected, message="watcher connected")

        if outage == "stop":
            own_etcd.stop(keep_data=True)
        else:
            own_etcd.kill()
        wait_until(lambda: not watcher.connected, message="watcher saw the outage")
        own_etcd.restart()
        last = [client.put(prefix + "after%d" % i, str(i)) for i in range(3)][-1]

        wait_until(lambda: watcher.last_revision == last, message="events after restart")
    finally:
        watcher.stop()
        client.close()

    assert set(recorder.view) == {prefix + "before"} | {prefix + "after%d" % i for i in range(3)}
    assert watcher.statistics()["reconnects"] >= 1
    assert len(recorder.snapshots) == 1  # resumed from its revision, no reload


def test_prefix_watcher_reloads_after_compaction(own_etcd):
    prefix = "/compact/"
    client = EtcdClient([own_etcd.endpoint], timeout=2.0)
    client.put(prefix + "gone", "1")
    client.put(prefix + "kept", "1")
    recorder = ViewRecorder()
    # A long backoff keeps the watcher away while history is compacted.
    watcher = start_watcher(client, prefix, recorder, min_backoff=4.0, max_backoff=4.0)
    try:
        wait_until(lambda: watcher.connected, message="watcher connected")

        own_etcd.kill()
        wait_until(lambda: not watcher.connected, message="watcher saw the outage")
        own_etcd.restart()
        client.delete(prefix + "gone")
        client.put(prefix + "kept", "2")
        last = client.put(prefix + "new", "3")
        client.compact(last)

        wait_until(lambda: len(recorder.snapshots) == 2, timeout=20, message="reload")
        wait_until(lambda: watcher.connected, message="watching again")
        after = client.put(prefix + "later", "4")
        wait_until(lambda: watcher.last_revision == after, message="events after reload")
    finally:
        watcher.stop()
        client.close()

    assert recorder.snapshots[1] >= last
    assert recorder.view == {prefix + "kept": b"2", prefix + "new": b"3", prefix + "later": b"4"}
    assert watcher.statistics()["reloads"] == 1


def test_prefix_watcher_reloads_when_etcd_lost_its_data(own_etcd):
    prefix = "/wiped/"
    client = EtcdClient([own_etcd.endpoint], timeout=2.0)
    for i in range(5):
        client.put(prefix + "old%d" % i, "1")
    recorder = ViewRecorder()
    watcher = start_watcher(client, prefix, recorder, min_backoff=0.05, max_backoff=0.5)
    try:
        wait_until(lambda: watcher.connected, message="watcher connected")

        own_etcd.kill()
        shutil.rmtree(own_etcd.data_dir)
        own_etcd.restart()
        client.put(prefix + "fresh", "2")

        wait_until(lambda: len(recorder.snapshots) == 2, message="reload")
        wait_until(lambda: prefix + "fresh" in recorder.view, message="fresh key seen")
    finally:
        watcher.stop()
        client.close()

    assert recorder.view == {prefix + "fresh": b"2"}


def test_restart_after_stop_without_keep_data_is_refused():
    server = EtcdServer(name="goverse-short-etcd").start()
    server.stop()
    server.stop()  # idempotent

    assert not os.path.exists(server.data_dir)
    with pytest.raises(EtcdServerError, match="keep_data"):
        server.restart()


def test_auth_token_is_renewed_when_etcd_expires_it():
    from pyetcd.etcdrpc import rpc_pb2

    server = EtcdServer(name="goverse-auth-etcd", extra_args=["--auth-token-ttl", "1"])
    with server, EtcdClient([server.endpoint]) as admin:
        auth = admin._current().auth  # enabling auth has no place in the adapter
        auth.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="secret"))
        auth.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"))
        auth.AuthEnable(rpc_pb2.AuthEnableRequest())

        with EtcdClient([server.endpoint], user="root", password="secret") as client:
            client.put("/auth/k", "1")
            time.sleep(2.5)  # outlive the 1 s token; nothing to poll for
            assert client.get("/auth/k").value == b"1"

        with EtcdClient([server.endpoint], user="root", password="wrong") as client:
            with pytest.raises(EtcdAuthError, match="authenticate"):
                client.get("/auth/k")
        with pytest.raises(EtcdAuthError):
            admin.get("/auth/k")
