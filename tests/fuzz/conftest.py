"""Fixtures of the fuzz suite: one cluster for the whole package, and a guard.

The cluster (a ``bin/goverse-node`` process and a node in this process)
is shared by every fuzz module: starting it costs seconds and the attacks
must leave it as they found it anyway, which is what ``guard`` checks
after each test.
"""

from __future__ import annotations

import uuid

import pytest

import goverse
from goverse.testing import NodeProcess
from tests.fuzz.harness import MAX_MESSAGE_BYTES, NUM_SHARDS, CrashWatch, FuzzCluster

_TIMINGS = {"stability_window": 0.2, "lease_ttl": 3, "call_timeout": 10.0,
            "shutdown_grace": 5}


def node_process_args(**overrides: object) -> list[str]:
    """Launcher flags for a fuzz node process (same shards and limits as here)."""
    options = dict(_TIMINGS, num_shards=NUM_SHARDS, max_message_bytes=MAX_MESSAGE_BYTES)
    options.update(overrides)
    args = []
    for name, value in options.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    return args


@pytest.fixture(scope="package")
def fuzz_cluster(etcd_endpoint, tmp_path_factory):
    from tests import sample_objects  # noqa: F401  (registers the test types)

    prefix = "/goverse-fuzz/%s" % uuid.uuid4().hex
    log_path = str(tmp_path_factory.mktemp("fuzz") / "node.log")
    proc = NodeProcess(etcd_endpoint, prefix=prefix, objects=["tests.sample_objects"],
                       extra_args=node_process_args(), log_path=log_path)
    settings = goverse.Settings.from_mapping(dict(
        _TIMINGS, etcd_endpoints=[etcd_endpoint], etcd_prefix=prefix,
        listen="127.0.0.1:0", num_shards=NUM_SHARDS, max_message_bytes=MAX_MESSAGE_BYTES))
    node = goverse.Node(settings)
    cluster = FuzzCluster(node, proc, log_path)
    try:
        proc.start()
        node.start()
        cluster.wait_formed()
        cluster.check_healthy()
        yield cluster
    finally:
        cluster.close()
        node.stop(grace=2)
        proc.close()


@pytest.fixture
def guard(fuzz_cluster):
    """After the test: no handler crashed, the nodes serve, nothing leaked."""
    baseline = fuzz_cluster.baseline()
    watch = CrashWatch(fuzz_cluster.log_path).start()
    try:
        yield fuzz_cluster
    finally:
        crashes = watch.stop()
    assert not crashes, "handlers crashed:\n" + "\n".join(crashes)
    fuzz_cluster.check_healthy()
    fuzz_cluster.check_no_leaks(baseline)
