"""An independent gate client that drives the chat sample end to end.

It knows goverse only by its published protocols: it compiles its own
``gate.proto`` (and the chat sample's ``chat.proto``) with grpc_tools into
a temporary directory, talks gRPC with plain grpcio (no gevent) and HTTP
with urllib. It imports nothing from goverse.

    python tests/thirdparty/chat_client.py --grpc HOST:PORT --http HOST:PORT

Exits 0 and prints ``chat ok`` when every step worked; otherwise prints
what failed and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import queue
import sys
import tempfile
import threading
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
CHAT_PROTO_DIR = os.path.join(HERE, "..", "..", "examples", "chat")
WAIT = 10.0


def compile_protos(out_dir: str) -> None:
    import grpc_tools
    from grpc_tools import protoc

    includes = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    for source_dir, name, with_grpc in ((HERE, "gate.proto", True),
                                        (CHAT_PROTO_DIR, "chat.proto", False)):
        args = ["protoc", "-I", source_dir, "-I", includes, "--python_out=" + out_dir]
        if with_grpc:
            args.append("--grpc_python_out=" + out_dir)
        if protoc.main(args + [os.path.join(source_dir, name)]) != 0:
            raise SystemExit("protoc failed on %s" % name)
    sys.path.insert(0, out_dir)


def pack(message):
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def unpack(packed, cls):
    message = cls()
    if not packed.Unpack(message):
        raise AssertionError("expected %s, got %s" % (cls.DESCRIPTOR.full_name,
                                                      packed.type_url))
    return message


def check(condition, what):
    if not condition:
        raise AssertionError(what)


class HttpGate:
    """The gate's HTTP API and event stream, over urllib."""

    def __init__(self, address: str) -> None:
        self.base = "http://%s/api/v1" % address
        self.client_id = None
        self.events: queue.Queue = queue.Queue()

    def post(self, path, body=None, client_id=None):
        headers = {"Content-Type": "application/json"}
        if client_id:
            headers["X-Client-ID"] = client_id
        request = urllib.request.Request(self.base + path, method="POST", headers=headers,
                                         data=json.dumps(body or {}).encode())
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def call(self, type_name, object_id, method, message, response_cls):
        body = {"request": base64.b64encode(pack(message).SerializeToString()).decode()}
        status, answer = self.post("/objects/call/%s/%s/%s" % (type_name, object_id, method),
                                   body, self.client_id)
        check(status == 200, "HTTP call %s failed: %s %s" % (method, status, answer))
        from google.protobuf import any_pb2

        packed = any_pb2.Any.FromString(base64.b64decode(answer["response"]))
        return unpack(packed, response_cls)

    def listen(self) -> None:
        response = urllib.request.urlopen(self.base + "/events/stream", timeout=60)
        threading.Thread(target=self._read, args=(response,), daemon=True).start()
        kind, data = self.events.get(timeout=WAIT)
        check(kind == "register", "first event is %r, not register" % (kind,))
        self.client_id = data["clientId"]

    def _read(self, response) -> None:
        kind, data = None, []
        try:
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and kind:
                    self.events.put((kind, json.loads("\n".join(data))))
                    kind, data = None, []
        except OSError:
            pass  # the process is ending


def run(grpc_address: str, http_address: str) -> None:
    import grpc

    import chat_pb2
    import gate_pb2
    import gate_pb2_grpc

    room = "thirdparty-%s" % uuid.uuid4().hex[:8]
    channel = grpc.insecure_channel(grpc_address)
    stub = gate_pb2_grpc.GateServiceStub(channel)

    # A gRPC client: register, then read pushes in a thread.
    stream = stub.Register(gate_pb2.Empty())
    grpc_id = unpack(next(stream), gate_pb2.RegisterResponse).client_id
    check(grpc_id.startswith(grpc_address + "/"), "client id %r names its gate" % grpc_id)
    grpc_pushes: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [grpc_pushes.put(m) for m in stream],
                     daemon=True).start()

    def grpc_call(method, message, response_cls):
        answer = stub.CallObject(gate_pb2.CallObjectRequest(
            client_id=grpc_id, type="ChatRoom", id=room, method=method,
            request=pack(message)), timeout=WAIT)
        return unpack(answer.response, response_cls)

    # An HTTP client with its event stream.
    web = HttpGate(http_address)
    web.listen()

    joined = grpc_call("Join", chat_pb2.JoinRequest(name="grace"), chat_pb2.JoinResponse)
    check(joined.members == 1, "first member sees 1 member, saw %d" % joined.members)
    joined = web.call("ChatRoom", room, "Join", chat_pb2.JoinRequest(name="linus"),
                      chat_pb2.JoinResponse)
    check(joined.members == 2, "second member sees 2 members, saw %d" % joined.members)
    names = web.call("ChatRoom", room, "Members", chat_pb2.MembersRequest(),
                     chat_pb2.MembersResponse)
    check(list(names.names) == ["grace", "linus"], "members: %s" % list(names.names))

    grpc_call("Send", chat_pb2.SendRequest(text="hello from grpc"), chat_pb2.SendResponse)
    web.call("ChatRoom", room, "Send", chat_pb2.SendRequest(text="hello from http"),
             chat_pb2.SendResponse)
    expected = [("grace", "hello from grpc"), ("linus", "hello from http")]

    got = [unpack(grpc_pushes.get(timeout=WAIT), chat_pb2.ChatMessage) for _ in expected]
    check([(m.name, m.text) for m in got] == expected, "gRPC pushes: %s" % got)
    sse = []
    for _ in expected:
        kind, data = web.events.get(timeout=WAIT)
        check(kind == "message", "event %r" % kind)
        from google.protobuf import any_pb2

        packed = any_pb2.Any.FromString(base64.b64decode(data["payload"]))
        check(data["type"] == packed.type_url, "type field matches the Any")
        sse.append(unpack(packed, chat_pb2.ChatMessage))
    check([(m.name, m.text) for m in sse] == expected, "SSE pushes: %s" % sse)

    # A newcomer sees the history.
    history = web.call("ChatRoom", room, "Join", chat_pb2.JoinRequest(name="linus"),
                       chat_pb2.JoinResponse).history
    check([m.text for m in history] == ["hello from grpc", "hello from http"],
          "history: %s" % [m.text for m in history])

    # Create and delete, over both APIs, and the errors a client relies on.
    created = stub.CreateObject(gate_pb2.CreateObjectRequest(type="ChatRoom",
                                                             id=room + "-x"), timeout=WAIT)
    check(created.id == room + "-x", "created id")
    stub.DeleteObject(gate_pb2.DeleteObjectRequest(type="ChatRoom", id=room + "-x"),
                      timeout=WAIT)
    check(web.post("/objects/create/ChatRoom/%s-y" % room) == (200, {"id": room + "-y"}),
          "HTTP create")
    check(web.post("/objects/delete/ChatRoom/%s-y" % room) == (200, {"success": True}),
          "HTTP delete")
    status, answer = web.post("/objects/create/NoSuchRoomType/x")
    check(status == 404 and "error" in answer, "unknown type over HTTP: %s" % status)
    for rpc, request, code in (
            (stub.DeleteObject, gate_pb2.DeleteObjectRequest(id=room), "INVALID_ARGUMENT"),
            (stub.ReliableCallObject, gate_pb2.ReliableCallObjectRequest(type="ChatRoom",
                                                                         id=room),
             "UNIMPLEMENTED")):
        try:
            rpc(request, timeout=WAIT)
        except grpc.RpcError as exc:
            check(exc.code().name == code, "%s answered %s" % (code, exc.code()))
        else:
            raise AssertionError("expected %s" % code)
    stream.cancel()
    channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True, help="the gate's gRPC host:port")
    parser.add_argument("--http", required=True, help="the gate's HTTP host:port")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-client-") as out_dir:
        compile_protos(out_dir)
        importlib.invalidate_caches()
        try:
            run(args.grpc, args.http)
        except (AssertionError, queue.Empty) as exc:
            print("chat failed: %s" % (exc or type(exc).__name__))
            return 1
    print("chat ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
