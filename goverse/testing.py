"""Helpers for testing goverse applications against a real cluster.

:class:`NodeProcess` runs ``bin/goverse-node`` as a child process on a
free loopback port and waits until it answers over gRPC; :class:`GateProcess`
does the same for ``bin/goverse-gate`` and its HTTP status. Both die with
the process that started them. :func:`free_port` and :func:`wait_until`
are the small tools every cluster test needs.
Nothing here is mocked: the processes, etcd and gRPC are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any, Callable, Sequence

import grpc

from ._pb import goverse_pb2 as pb
from ._pb import goverse_pb2_grpc as pb_grpc
from .etcd_server import _die_with_parent

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "bin", "goverse-node")
GATE_LAUNCHER = os.path.join(ROOT, "bin", "goverse-gate")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float = 10.0,
               interval: float = 0.05, message: str = "") -> Any:
    """Poll ``condition`` until it returns a true value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail until it holds
            last_error = exc
        if time.monotonic() >= deadline:
            detail = " (last error: %r)" % (last_error,) if last_error else ""
            raise AssertionError("condition not met within %.3gs: %s%s" % (
                timeout, message or getattr(condition, "__name__", condition), detail))
        time.sleep(interval)


class ChildProcess:
    """A goverse launcher run as a child process on loopback.

    The child gets a session of its own (a Ctrl-C meant for the parent must
    not stop it before the parent does) and dies with its parent: Linux
    sends it SIGTERM when the process that started it ends, however that
    ends. Subclasses say which launcher runs and when it is serving.
    """

    def __init__(self, *, port: int | None = None, env: dict[str, str] | None = None,
                 log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("PYTHONPATH", ROOT)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log_file: Any = None

    def __repr__(self) -> str:
        return "<%s %s pid=%s>" % (type(self).__name__, self.address, self.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def wait_serving(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def start(self, wait: bool = True, *, timeout: float = 30.0) -> ChildProcess:
        """Start the child (again, after it ended); with ``wait``, until it serves."""
        output: Any = subprocess.DEVNULL
        if self.log_path:
            if self._log_file is None:
                self._log_file = open(self.log_path, "ab")
            output = self._log_file
        self.process = subprocess.Popen(self.command(), env=self.env, cwd=ROOT,
                                        stdin=subprocess.DEVNULL, stdout=output,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        if wait:
            self.wait_serving(timeout)
        return self

    def _check_running(self, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError("%r exited with status %s before %s (log: %s)" % (
                self, self.process.returncode, what, self.log_path or "not kept"))

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the child dies without leaving the cluster."""
        self.signal(signal.SIGKILL)
        self.wait(10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM: a graceful leave; returns the exit status."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int | None:
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def close(self) -> None:
        if self.alive():
            self.terminate(15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class NodeProcess(ChildProcess):
    """A goverse node in a child process, started with ``bin/goverse-node``."""

    def __init__(self, etcd_endpoint: str, *, prefix: str, objects: Sequence[str] = (),
                 port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_path: str | None = None) -> None:
        super().__init__(port=port, env=env, log_path=log_path)
        self.etcd_endpoint = etcd_endpoint
        self.prefix = prefix
        self.objects = list(objects)
        self.extra_args = list(extra_args)
        self._channel: grpc.Channel | None = None

    def command(self) -> list[str]:
        cmd = [sys.executable, LAUNCHER, "--listen", self.address,
               "--etcd-endpoints", self.etcd_endpoint, "--etcd-prefix", self.prefix]
        if self.objects:
            cmd += ["--objects", ",".join(self.objects)]
        return cmd + self.extra_args

    def stub(self) -> pb_grpc.GoverseStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.address)
        return pb_grpc.GoverseStub(self._channel)

    def status(self, timeout: float = 2.0) -> pb.StatusResponse:
        return self.stub().Status(pb.Empty(), timeout=timeout)

    def wait_serving(self, timeout: float = 30.0) -> None:
        """Wait until the node answers Status; fail at once if it exits."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_running("serving")
            try:
                if self.status(timeout=1.0).advertise_addr == self.address:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise AssertionError("%r not serving within %.3gs" % (self, timeout))
            time.sleep(0.1)

    def close(self) -> None:
        super().close()
        if self._channel is not None:
            self._channel.close()
            self._channel = None


class GateProcess(ChildProcess):
    """A goverse gate in a child process, started with ``bin/goverse-gate``.

    It serves the gate protocol on ``address`` and its HTTP API on
    ``http_address``, both on free loopback ports; :meth:`status` reads
    ``GET /api/v1/status``.
    """

    def __init__(self, etcd_endpoint: str, *, prefix: str, objects: Sequence[str] = (),
                 port: int | None = None, http_port: int | None = None,
                 extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                 log_path: str | None = None) -> None:
        super().__init__(port=port, env=env, log_path=log_path)
        self.http_port = http_port or free_port()
        self.http_address = "127.0.0.1:%d" % self.http_port
        self.etcd_endpoint = etcd_endpoint
        self.prefix = prefix
        self.objects = list(objects)
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return "http://%s" % (self.http_address,)

    def command(self) -> list[str]:
        cmd = [sys.executable, GATE_LAUNCHER, "--listen", self.address,
               "--http-listen", self.http_address, "--etcd-endpoints", self.etcd_endpoint,
               "--etcd-prefix", self.prefix]
        if self.objects:
            cmd += ["--objects", ",".join(self.objects)]
        return cmd + self.extra_args

    def start(self, wait: bool = True, *, timeout: float = 30.0) -> GateProcess:
        """Start the gate; with ``wait``, until it is ready and settled."""
        super().start(False)
        if wait:
            self.wait_ready(timeout)
        return self

    def status(self, timeout: float = 2.0, **query: Any) -> dict[str, Any]:
        """The gate's ``GET /api/v1/status`` answer (``query`` goes in the URL)."""
        url = self.url + "/api/v1/status"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())

    def wait_serving(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the gate answers over HTTP (its gRPC side serves by then)."""
        return self._wait_status(lambda status: True, timeout, "serving")

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the gate is ready and settled (no shard still moving)."""
        return self._wait_status(
            lambda status: status["ready_reason"] is None and status["settled"], timeout,
            "ready")

    def _wait_status(self, good: Callable[[dict[str, Any]], bool], timeout: float,
                     what: str) -> dict[str, Any]:
        """Poll the status until ``good`` says so; fail at once if the gate exits."""
        deadline = time.monotonic() + timeout
        status: dict[str, Any] | None = None
        while True:
            self._check_running("being " + what)
            try:
                status = self.status(timeout=1.0)
            except OSError:
                pass  # not listening yet
            else:
                if good(status):
                    return status
            if time.monotonic() >= deadline:
                raise AssertionError("%r not %s within %.3gs (last status: %s)" % (
                    self, what, timeout, status))
            time.sleep(0.1)
