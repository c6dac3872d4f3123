"""Test helpers for gates: gate processes, push stream readers, Any packing.

:class:`GateProcess` runs ``bin/goverse-gate`` as a child process
(:class:`goverse.testing.GateProcess` with the test nodes' stability
window). :class:`SseReader` and :class:`GrpcPushReader` collect pushed
messages in the background so that tests can wait for them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import Any, Sequence

import grpc
from google.protobuf import any_pb2

from goverse import testing
from goverse._pb import gate_pb2, gate_pb2_grpc
from goverse.testing import GATE_LAUNCHER, NodeProcess, wait_until  # noqa: F401  (re-exported)

#: Object modules the nodes of gate tests load.
OBJECTS = "tests.sample_objects,tests.gate_objects,examples.chat.rooms"

#: Extra flags of the node processes of gate tests.
NODE_ARGS = ["--objects", OBJECTS]


def pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def unpack(packed: any_pb2.Any, cls: type) -> Any:
    message = cls()
    assert packed.Unpack(message), "expected %s, got %s" % (
        cls.DESCRIPTOR.full_name, packed.type_url)
    return message


def b64_any(message: Any) -> str:
    return base64.b64encode(pack(message).SerializeToString()).decode()


def http(method: str, url: str, body: Any = None, headers: dict | None = None,
         raw: bytes | None = None, timeout: float = 10.0) -> tuple[int, dict, Any]:
    """One HTTP request; returns (status, headers, decoded JSON or bytes)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    request = urllib.request.Request(url, data=data, method=method,
                                     headers=dict({"Content-Type": "application/json"},
                                                  **(headers or {})))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            status, head, payload = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        status, head, payload = exc.code, dict(exc.headers), exc.read()
    if head.get("Content-Type", "").startswith("application/json"):
        return status, head, json.loads(payload)
    return status, head, payload


class GateProcess(testing.GateProcess):
    """A ``bin/goverse-gate`` child with the short stability window of the test nodes."""

    def __init__(self, etcd_endpoint: str, *, prefix: str, port: int | None = None,
                 http_port: int | None = None, extra_args: Sequence[str] = (),
                 log_path: str | None = None) -> None:
        super().__init__(etcd_endpoint, prefix=prefix, port=port, http_port=http_port,
                         extra_args=["--stability-window", "0.2", *extra_args],
                         log_path=log_path)


class SseReader:
    """Reads a gate's event stream in a background greenlet."""

    def __init__(self, url: str, headers: dict | None = None) -> None:
        request = urllib.request.Request(url + "/api/v1/events/stream",
                                         headers=headers or {})
        self.response = urllib.request.urlopen(request, timeout=60)
        # Closing the response from another greenlet while the reader is in
        # it is not allowed; shutting the socket down ends the read instead.
        self._socket = self.response.fp.raw._sock
        self.events: list[tuple[str, Any]] = []
        self.comments = 0
        self.client_id: str | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_until(lambda: self.client_id, 10, message="SSE register event")

    def _read(self) -> None:
        event, data = None, []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments += 1
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and event:
                    payload = json.loads("\n".join(data))
                    if event == "register":
                        self.client_id = payload["clientId"]
                    self.events.append((event, payload))
                    event, data = None, []
        except (OSError, ValueError):
            pass  # the stream was closed by the test or the gate
        finally:
            self.response.close()

    def messages(self, cls: type) -> list[Any]:
        found = []
        for event, payload in list(self.events):
            if event == "message":
                packed = any_pb2.Any.FromString(base64.b64decode(payload["payload"]))
                assert payload["type"] == packed.type_url
                found.append(unpack(packed, cls))
        return found

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the gate
        self._thread.join(5)


class GrpcPushReader:
    """Registers at a gate over gRPC and collects pushes in the background."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = gate_pb2_grpc.GateServiceStub(self.channel)
        self.stream = self.stub.Register(gate_pb2.Empty())
        self.client_id = unpack(next(self.stream), gate_pb2.RegisterResponse).client_id
        self.received: list[any_pb2.Any] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.stream:
                self.received.append(message)
        except grpc.RpcError:
            pass  # cancelled by close(), or the gate went away
        finally:
            self.ended.set()

    def messages(self, cls: type) -> list[Any]:
        return [unpack(m, cls) for m in list(self.received)]

    def close(self) -> None:
        self.stream.cancel()
        self.channel.close()


def start_nodes(etcd_endpoint: str, prefix: str, count: int, log_dir: Any) -> list[NodeProcess]:
    """``count`` node processes with the gate tests' objects, serving."""
    procs = [NodeProcess(etcd_endpoint, prefix=prefix, objects=[OBJECTS],
                         extra_args=["--stability-window", "0.2", "--shutdown-grace", "5"],
                         log_path=os.path.join(str(log_dir), "node-%d.log" % n))
             for n in range(count)]
    try:
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_serving()
    except BaseException:
        for proc in procs:
            proc.close()
        raise
    return procs


def start_settled(gate: Any, timeout: float = 30.0) -> Any:
    """Start an in-process gate and wait until no shard is moving any more."""
    gate.start(wait_ready=True, timeout=timeout)
    wait_until(gate.node.cluster.is_settled, timeout, message="%r settled" % (gate,))
    return gate
