"""The ``goverse-node`` command: run one node until told to stop.

Order matters. gevent patches the process before anything else is
imported (a socket or lock created earlier would block the whole hub),
then settings are read from the registry (YAML file, ``GOVERSE_*``
environment, flags), the object modules are imported so their classes
register, and the node starts. SIGTERM and SIGINT only set an event; the
main greenlet does the graceful stop.
"""

from __future__ import annotations

import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from . import runtime

    runtime.patch()
    return _run(sys.argv[1:] if argv is None else argv)


def _run(argv: list[str]) -> int:
    import logging
    import os
    import signal

    import gevent
    from gevent.event import Event

    from .config import Settings
    from .errors import GoverseError
    from .node import Node

    try:
        settings = Settings.load(argv)
    except GoverseError as exc:
        sys.stderr.write("goverse-node: %s\n" % (exc,))
        return 2
    _configure_logging(settings.log_level)
    log = logging.getLogger("goverse.launcher")
    if not import_object_modules(settings.objects, log):
        return 2

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)

    node = Node(settings)
    _install_activation_log(node, os.environ.get("GOVERSE_TEST_ACTIVATION_LOG"))
    if os.environ.get("GOVERSE_TEST_FAULTS") == "1":
        # Test hook: SIGUSR1 cuts the node's peer connections, SIGUSR2
        # restores them (the etcd lease stays alive throughout).
        gevent.signal_handler(signal.SIGUSR1, node.set_partitioned, True)
        gevent.signal_handler(signal.SIGUSR2, node.set_partitioned, False)
    try:
        node.start(wait_ready=False)
    except GoverseError as exc:
        log.error("node failed to start: %s", exc)
        node.stop(grace=0)
        return 1
    gevent.spawn(_report_ready, node, log)
    stop.wait()
    log.info("signal received; stopping %r", node)
    node.stop()
    return 0


def import_object_modules(modules: Any, log: Any) -> bool:
    """Import the modules that register object types; False (logged) if one fails.

    They are found like ``python -m`` finds modules: from the current
    directory first.
    """
    import importlib
    import os

    sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            log.error("cannot import object module %r (from --objects): %s", module, exc)
            return False
    return True


def _install_activation_log(node, path: str | None) -> None:
    """Test hook: append every activation and deactivation to ``path``.

    Each line is ``<monotonic ns> <node> <activate|deactivate> <epoch> <id>``;
    CLOCK_MONOTONIC is shared by all processes of a machine, so the lines
    of several nodes can be merged to check that no id was ever active on
    two nodes at once.
    """
    if not path:
        return
    import time

    sink = open(path, "a", buffering=1, encoding="utf-8")

    def record(obj, event: str) -> None:
        epoch = node.cluster.owned.get(obj._gv_shard, 0) if node.cluster else 0
        sink.write("%d %s %s %d %s\n" % (time.monotonic_ns(), node.address, event,
                                          epoch, obj.id))

    node._activation_hook = record


def _report_ready(node, log) -> None:
    if node.wait_ready(timeout=3600):
        log.info("%r ready: %d shards owned here", node, len(node.cluster.owned))


def _configure_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    sys.exit(main())
