"""A gevent WSGI app that runs a goverse node in-process and shows its admin.

Run it from the repository root::

    python -m examples.embedded.app --http 127.0.0.1:8080 \
        --etcd-endpoints 127.0.0.1:2379 --etcd-prefix /demo

``GET /count/<name>`` adds one to the counter object of ``<name>``,
wherever in the cluster it lives, and answers its total. The admin plane
is mounted under ``/goverse/`` (dashboard at ``/goverse/``, health at
``/goverse/healthz``). Every flag other than ``--http`` is a goverse node
setting (``--help-node`` lists them); with no etcd endpoint the node starts
an embedded etcd. SIGTERM or SIGINT stops the HTTP server, then the node
(or the node alone while it starts). A port in use, or a node that cannot
start, ends the program with status 1 and a message saying why.
"""

from __future__ import annotations

# The process entry patches, first and once: goverse itself never does.
from goverse import runtime

runtime.patch()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any, Callable, Iterable  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from gevent.pywsgi import LoggingLogAdapter, WSGIServer  # noqa: E402
from google.protobuf.wrappers_pb2 import Int64Value  # noqa: E402

import goverse  # noqa: E402
import goverse.admin  # noqa: E402
from goverse.config import split_host_port  # noqa: E402
from examples.embedded.counters import PathCounter  # noqa: E402

log = logging.getLogger("examples.embedded")


def counter_app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
    """The application's own handlers, written as any WSGI app would be."""
    # PEP 3333 hands the path over as its bytes read as latin-1; URLs carry UTF-8.
    try:
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
    except UnicodeError:
        return _text(start_response, "400 Bad Request", "the URL path is not UTF-8\n")
    if path == "/":
        return _text(start_response, "200 OK",
                     "GET /count/<name> counts hits; the admin is at /goverse/\n")
    if path.startswith("/count/") and len(path) > len("/count/"):
        name = path[len("/count/"):]
        try:
            total = goverse.call_object(PathCounter.__name__, "path:" + name, "Hit",
                                        Int64Value(value=1), timeout=5).value
        except goverse.GoverseError as exc:
            log.warning("counting %s failed: %s", name, exc)
            return _text(start_response, "503 Service Unavailable", "%s\n" % (exc,))
        return _text(start_response, "200 OK", "%s %d\n" % (name, total))
    return _text(start_response, "404 Not Found", "no page at %s\n" % (path,))


def _text(start_response: Callable, status: str, body: str) -> list[bytes]:
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--http", default="127.0.0.1:8080",
                        help="host:port of the web app (default %(default)s)")
    parser.add_argument("--help-node", action="store_true",
                        help="list the goverse node settings and exit")
    args, node_args = parser.parse_known_args(argv)
    if args.help_node:
        node_args = ["--help"]
    try:
        host, port = split_host_port(args.http)
    except ValueError as exc:
        parser.error("--http %s: %s" % (args.http, exc))
    settings = goverse.Settings.load(node_args, prog="examples.embedded.app")
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    stop = Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop.set)

    node = goverse.Node(settings)
    app = goverse.admin.mount(counter_app, "/goverse", node=node)
    server = WSGIServer((host.strip("[]"), port), app,
                        log=LoggingLogAdapter(log, logging.DEBUG),
                        error_log=LoggingLogAdapter(log, logging.ERROR))
    # Take the port before joining the cluster: a port in use then ends
    # the program before there is a node to stop.
    try:
        server.init_socket()
    except OSError as exc:
        log.error("cannot listen for HTTP on %s: %s", args.http, exc)
        return 1
    try:
        if not _start_node(node, stop):
            return 1 if not stop.is_set() else 0
        return _serve(node, server, stop)
    finally:
        server.close()


def _start_node(node: goverse.Node, stop: Event) -> bool:
    """Start the node; False (node stopped) if it fails or a signal comes first."""
    def start() -> BaseException | None:
        try:
            node.start(wait_ready=True, timeout=60)
        except Exception as exc:
            return exc
        return None

    starting = gevent.spawn(start)
    gevent.wait([starting, stop], count=1)
    if not starting.ready():
        log.info("signal received while the node was starting; stopping it")
        starting.kill()
    elif starting.value is not None:
        log.error("the goverse node did not start: %s", starting.value)
    else:
        return True
    node.stop(grace=0)
    return False


def _serve(node: goverse.Node, server: WSGIServer, stop: Event) -> int:
    try:
        server.start()
        host, port = server.address[:2]
        log.info("serving http://%s:%d/ with node %s; admin at http://%s:%d/goverse/",
                 host, port, node.address, host, port)
        stop.wait()
        log.info("signal received; stopping the web app, then node %s", node.address)
    finally:
        server.stop(timeout=5)
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
