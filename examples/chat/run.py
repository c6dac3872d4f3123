"""The chat sample on a local cluster: etcd, two nodes and a gate.

``python -m examples.chat.run`` starts an etcd and two node processes
hosting ``ChatRoom`` objects on loopback, then runs a gate in this process
that serves the chat page and the HTTP API on one origin. Open the printed
URL in two browser windows, join the same room and talk. Ctrl-C stops
everything it started. A port in use ends it at once with a message; the
node logs go to a temporary directory removed at exit unless ``--logs DIR``
says where to keep them.
"""

# Patch first: gevent must replace socket and threading before grpc or the
# etcd client are imported.
from goverse import runtime

runtime.patch()

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

import goverse  # noqa: E402
from goverse.config import split_host_port  # noqa: E402
from goverse.etcd_server import EtcdServer  # noqa: E402
from goverse.gate import Gate  # noqa: E402
from goverse.testing import NodeProcess  # noqa: E402

log = logging.getLogger("examples.chat")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
OBJECTS = "examples.chat.rooms"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.chat.run",
        description="Run the goverse chat sample on a local cluster.")
    parser.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT",
                        help="where the gate serves the page and the HTTP API "
                             "(default: %(default)s)")
    parser.add_argument("--grpc", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="the gate's gRPC address for goverse.client.Client "
                             "(default: a free port)")
    parser.add_argument("--nodes", type=int, default=2, help="node processes (default: 2)")
    parser.add_argument("--logs", metavar="DIR", default="",
                        help="keep the node logs in DIR (default: a temporary "
                             "directory, removed at exit)")
    parser.add_argument("--verbose", action="store_true", help="log goverse activity")
    args = parser.parse_args(argv)
    for flag, address in (("--http", args.http), ("--grpc", args.grpc)):
        try:
            split_host_port(address)
        except ValueError as exc:
            parser.error("%s %s: %s" % (flag, address, exc))
    return args


def port_in_use(address: str) -> str | None:
    """Why ``address`` cannot be listened on, or None when it can (now)."""
    host, port = split_host_port(address)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Checked before anything starts; the gate's own bind below still
    # reports a port taken in the meantime.
    for flag, address in (("--http", args.http), ("--grpc", args.grpc)):
        reason = port_in_use(address)
        if reason is not None:
            print("cannot listen on %s (%s): %s; give another one with %s" % (
                address, flag, reason, flag), file=sys.stderr)
            return 1
    logs = args.logs or tempfile.mkdtemp(prefix="goverse-chat-")
    os.makedirs(logs, exist_ok=True)
    try:
        return run(args, logs)
    finally:
        if not args.logs:
            shutil.rmtree(logs, ignore_errors=True)


def run(args: argparse.Namespace, logs: str) -> int:
    """Start etcd, the nodes and the gate; serve until a signal; stop them all."""
    prefix = "/goverse-chat/%s" % uuid.uuid4().hex[:8]
    stop = Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, stop.set)

    etcd = EtcdServer(name="goverse-chat-etcd").start()
    nodes: list[NodeProcess] = []
    gate = None
    try:
        for n in range(args.nodes):
            nodes.append(NodeProcess(
                etcd.endpoint, prefix=prefix, objects=[OBJECTS],
                extra_args=["--stability-window", "0.5", "--shutdown-grace", "3"],
                log_path=os.path.join(logs, "node-%d.log" % n)).start(wait=False))
        for node in nodes:
            node.wait_serving()
        settings = goverse.Settings.from_mapping({
            "etcd_endpoints": [etcd.endpoint], "etcd_prefix": prefix,
            "listen": args.grpc, "http_listen": args.http, "stability_window": 0.5,
            "http_static_dir": STATIC_DIR, "http_static_prefix": "/chat/"})
        gate = Gate(settings)
        try:
            gate.start(wait_ready=True, timeout=60)
        except OSError as exc:
            print("cannot serve the chat on %s: %s" % (args.http, exc), file=sys.stderr)
            return 1
        except goverse.GoverseError as exc:
            print("the gate did not start: %s" % (exc,), file=sys.stderr)
            return 1
        print("chat is up: open http://%s/chat/ (gRPC gate at %s; node logs in %s)"
              % (gate.http_address, gate.address, logs), flush=True)
        stop.wait()
        return 0
    finally:
        if gate is not None:
            gate.stop(grace=2)
        for node in nodes:
            node.close()
        etcd.stop()


if __name__ == "__main__":
    sys.exit(main())
