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
