"""The ``goverse-gate`` command: run one gate until told to stop.

Like ``goverse-node`` it patches gevent before anything else, reads the
same settings registry (YAML file, ``GOVERSE_*`` environment, flags) and
stops gracefully on SIGTERM or SIGINT. Unlike a node it needs
``etcd_endpoints``: a gate joins a cluster and never starts an etcd.
"""

from __future__ import annotations

import sys

#: A gate's defaults where they differ from a node's: another port, and
#: more handler greenlets, since each client's open push stream holds one.
DEFAULTS = {"listen": "127.0.0.1:7080", "server_workers": 1024}


def main(argv: list[str] | None = None) -> int:
    from .. import runtime

    runtime.patch()
    return _run(sys.argv[1:] if argv is None else argv)


def _run(argv: list[str]) -> int:
    import logging
    import signal

    import gevent
    from gevent.event import Event

    from ..config import Settings
    from ..errors import GoverseError
    from ..launcher import _configure_logging, import_object_modules
    from .server import Gate

    try:
        settings = Settings.load(argv, prog="goverse-gate", defaults=DEFAULTS)
    except GoverseError as exc:
        sys.stderr.write("goverse-gate: %s\n" % (exc,))
        return 2
    _configure_logging(settings.log_level)
    log = logging.getLogger("goverse.gate.launcher")

    # Object modules are optional on a gate: with them, responses are
    # decoded locally; without them they pass through as they came.
    if not import_object_modules(settings.objects, log):
        return 2

    try:
        gate = Gate(settings)
    except GoverseError as exc:
        log.error("goverse-gate: %s", exc)
        return 2

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)
    try:
        gate.start()
    except GoverseError as exc:
        log.error("gate failed to start: %s", exc)
        gate.stop(grace=0)
        return 1
    stop.wait()
    log.info("signal received; stopping %r", gate)
    gate.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
