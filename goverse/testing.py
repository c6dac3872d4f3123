"""Helpers for testing goverse applications against a real cluster.

:class:`NodeProcess` runs ``bin/goverse-node`` as a child process on a
free loopback port and waits until it answers over gRPC; :func:`free_port`
and :func:`wait_until` are the small tools every cluster test needs.
Nothing here is mocked: the processes, etcd and gRPC are the real ones.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

import grpc

from ._pb import goverse_pb2 as pb
from .etcd_server import _die_with_parent
from ._pb import goverse_pb2_grpc as pb_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, "bin", "goverse-node")


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


class NodeProcess:
    """A goverse node in a child process, started with ``bin/goverse-node``."""

    def __init__(self, etcd_endpoint: str, *, prefix: str, objects: Sequence[str] = (),
                 port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, log_path: str | None = None) -> None:
        self.port = port or free_port()
        self.address = "127.0.0.1:%d" % self.port
        self.etcd_endpoint = etcd_endpoint
        self.prefix = prefix
        self.objects = list(objects)
        self.extra_args = list(extra_args)
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("PYTHONPATH", ROOT)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._log_file: Any = None
        self._channel: grpc.Channel | None = None

    def __repr__(self) -> str:
        return "<NodeProcess %s pid=%s>" % (self.address, self.pid)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        cmd = [sys.executable, LAUNCHER, "--listen", self.address,
               "--etcd-endpoints", self.etcd_endpoint, "--etcd-prefix", self.prefix]
        if self.objects:
            cmd += ["--objects", ",".join(self.objects)]
        return cmd + self.extra_args

    def start(self, *, wait: bool = True, timeout: float = 30.0) -> NodeProcess:
        output = subprocess.DEVNULL
        if self.log_path:
            self._log_file = open(self.log_path, "ab")
            output = self._log_file
        # A session of its own: a Ctrl-C meant for the parent must not
        # kill the node before the parent stops it gracefully.
        self.process = subprocess.Popen(self.command(), env=self.env, cwd=ROOT,
                                        stdin=subprocess.DEVNULL, stdout=output,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=_die_with_parent)
        if wait:
            self.wait_serving(timeout)
        return self

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
            if self.process.poll() is not None:
                raise RuntimeError("%r exited with status %s before serving (log: %s)" % (
                    self, self.process.returncode, self.log_path or "not kept"))
            try:
                if self.status(timeout=1.0).advertise_addr == self.address:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise AssertionError("%r not serving within %.3gs" % (self, timeout))
            time.sleep(0.1)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL: the node dies without leaving the cluster."""
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
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
