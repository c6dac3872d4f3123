"""Shared fixtures for the goverse test suite."""

# Patch first, before any other import: gevent must replace socket, threading
# and friends before pytest plugins, grpc channels or test modules take hold
# of the originals, or half of the process would run on real threads.
from goverse import runtime

runtime.patch()

import os  # noqa: E402

# grpc's fork support restarts its pollers in a forked child; gevent's
# subprocess then closes their descriptors before exec and the child aborts
# (SIGABRT, "epoll_wait error: Bad file descriptor"). Tests fork etcd after
# channels exist (EtcdServer.restart), so it is turned off before the first
# channel is made; grpc reads it then, not at import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import uuid  # noqa: E402

import pytest  # noqa: E402

from goverse.etcd_server import EtcdServer  # noqa: E402


# -- etcd -------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_server():
    """One real etcd for the whole run, on free loopback ports."""
    server = EtcdServer(name="goverse-test-etcd").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_endpoint(etcd_server):
    """The shared etcd's client endpoint, "127.0.0.1:port"."""
    return etcd_server.endpoint


@pytest.fixture
def etcd_prefix():
    """A key prefix no other test uses, so tests can share one etcd."""
    return "/goverse-test/%s/" % uuid.uuid4().hex


# -- nodes ------------------------------------------------------------------

import goverse  # noqa: E402
from goverse.testing import NodeProcess, wait_until  # noqa: E402

#: Fast timings for tests: a shorter membership window than production.
FAST = {"stability_window": 0.2, "lease_ttl": 3, "call_timeout": 10.0}


@pytest.fixture
def cluster_prefix():
    """An etcd prefix for one test's cluster (settings reject a trailing "/")."""
    return "/goverse-test/%s" % uuid.uuid4().hex


@pytest.fixture
def make_node(etcd_endpoint, cluster_prefix):
    """Start in-process nodes sharing this test's cluster; stopped at teardown."""
    from tests import sample_objects  # noqa: F401  (registers the test types)

    nodes = []

    def start(wait_ready=True, **overrides):
        settings = dict(FAST, etcd_endpoints=[etcd_endpoint], etcd_prefix=cluster_prefix,
                        listen="127.0.0.1:0")
        settings.update(overrides)
        node = goverse.Node(goverse.Settings.from_mapping(settings))
        nodes.append(node)
        return node.start(wait_ready=wait_ready)

    yield start
    for node in reversed(nodes):
        node.stop(grace=2)


@pytest.fixture
def two_nodes(make_node):
    """Two in-process nodes of 64 shards, settled (each owns half the shards)."""
    first = make_node(num_shards=64)
    second = make_node(num_shards=64)
    wait_until(lambda: first.cluster.is_settled() and len(first.cluster.state.nodes) == 2, 20)
    return first, second


@pytest.fixture
def node_processes(etcd_endpoint, cluster_prefix, tmp_path):
    """Start ``bin/goverse-node`` child processes in this test's cluster."""
    procs = []

    def start(count=1, **kwargs):
        started = []
        for _ in range(count):
            extra = ["--stability-window", "0.2", "--shutdown-grace", "5"]
            proc = NodeProcess(etcd_endpoint, prefix=cluster_prefix,
                               objects=["tests.sample_objects"],
                               extra_args=extra + list(kwargs.get("extra_args", ())),
                               log_path=str(tmp_path / ("node-%d.log" % len(procs))))
            procs.append(proc)
            started.append(proc.start(wait=False))
        for proc in started:
            proc.wait_serving()
        return started

    yield start
    for proc in procs:
        proc.close()
