"""Process set-up for gevent and grpc: the one place that patches.

Patching belongs to the process entry (the launcher, the test conftest, the
gunicorn worker). Library code only *checks* that it happened, through
:func:`require_patched`, and fails with an error that says what to do.
"""

from __future__ import annotations

#: Threads grpc may hold at once under gevent. Every blocking gRPC operation
#: in flight (a unary call waiting, an open stream, an etcd watch) holds one
#: native thread of the hub's threadpool; the default of 10 deadlocks a node.
HUB_THREADPOOL_SIZE = 512

_initialised = False


def patch() -> None:
    """Monkey-patch the process for gevent and set grpc up to run on it.

    Call this first thing in a process, before importing anything that
    opens sockets or threads. Calling it again is harmless.
    """
    global _initialised
    if _initialised:
        return
    import os

    from gevent import monkey

    monkey.patch_all()
    # grpc's fork support restarts its pollers in a forked child, and
    # gevent's subprocess then closes their descriptors before exec: the
    # child aborts. goverse forks (etcd, node processes) after channels
    # exist, so the support is off unless the user asked for it.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    init_grpc()


def init_grpc() -> None:
    """Enlarge the hub threadpool and start grpc's gevent integration.

    For processes patched by someone else (a gunicorn gevent worker, an
    application that patches itself): call this before the first channel.
    """
    global _initialised
    if _initialised:
        return
    require_patched()
    import gevent
    from grpc.experimental import gevent as grpc_gevent

    gevent.get_hub().threadpool.maxsize = HUB_THREADPOOL_SIZE
    grpc_gevent.init_gevent()
    _initialised = True


def is_patched() -> bool:
    from gevent import monkey

    return monkey.is_module_patched("socket") and monkey.is_module_patched("threading")


def require_patched() -> None:
    """Raise :class:`NotPatched` unless gevent patched this process."""
    if not is_patched():
        from .errors import NotPatched

        raise NotPatched(
            "goverse runs on gevent: call goverse.runtime.patch() (or "
            "gevent.monkey.patch_all() and then goverse.runtime.init_grpc()) "
            "at the very start of the process, before other imports"
        )


def greenlet_counts() -> dict[str, int]:
    """Greenlet objects the garbage collector holds, and the hub threadpool's threads.

    Dead greenlets that something still references count too: a number
    that keeps growing is what a leak of greenlets looks like. Each native
    thread of the threadpool is one greenlet of the count; threads come
    and go with blocking work (gevent ends one that idled for
    ``threadpool_idle_task_timeout``, 5 s by default). This walks every
    tracked object: a probe for leak hunts (a few milliseconds per 100,000
    objects), not for a hot path.
    """
    import gc

    import gevent
    import greenlet

    count = sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet))
    return {"greenlets": count, "threadpool_threads": gevent.get_hub().threadpool.size}
