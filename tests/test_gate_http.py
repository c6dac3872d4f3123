"""The gate's HTTP application on its own, driven as WSGI without a cluster."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value

import goverse
from goverse.gate.http import GateHttpApp, body_limit


class FakeNode:
    """Records what the HTTP API asks of the gate's node."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def create_object(self, type_name, object_id, wait=False):
        self.asked.append(("create", type_name, object_id))
        return object_id

    def delete_object(self, object_id, wait=False, type_name=""):
        self.asked.append(("delete", type_name, object_id))

    def call_object(self, type_name, object_id, method, request):
        self.asked.append(("call", type_name, object_id, method))
        return Int64Value(value=1)


def make_app(**settings) -> tuple[GateHttpApp, FakeNode]:
    node = FakeNode()
    gate = SimpleNamespace(node=node, settings=goverse.Settings.from_mapping(settings),
                           clients=None, stopping=False, address="127.0.0.1:1")
    return GateHttpApp(gate), node


def request(app, method: str, wire_path: bytes, body: bytes = b"",
            headers: dict | None = None) -> tuple[int, dict]:
    """Serve one request whose percent-decoded path has the bytes ``wire_path``."""
    environ = {
        "REQUEST_METHOD": method,
        # PEP 3333: the server hands the path over as bytes read as latin-1.
        "PATH_INFO": wire_path.decode("latin-1"),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    environ.update(headers or {})
    seen = {}

    def start_response(status, response_headers):
        seen["status"] = int(status.split()[0])

    chunks = app(environ, start_response)
    return seen["status"], json.loads(b"".join(chunks))


def body_of(message) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(message)
    return json.dumps({"request": base64.b64encode(packed.SerializeToString()).decode()}
                      ).encode()


def test_non_ascii_ids_types_and_methods_arrive_as_utf8_text():
    app, node = make_app()
    café = "café-42".encode()
    status, answer = request(app, "POST", b"/api/v1/objects/create/Counter/" + café)
    assert (status, answer) == (200, {"id": "café-42"})
    status, _ = request(app, "POST", "/api/v1/objects/call/Zähler/日本/Füge".encode(),
                        body_of(Int64Value(value=3)))
    assert status == 200
    status, _ = request(app, "POST", "/api/v1/objects/delete/Counter/日本".encode())
    assert status == 200
    assert node.asked == [("create", "Counter", "café-42"),
                          ("call", "Zähler", "日本", "Füge"),
                          ("delete", "Counter", "日本")]


def test_a_path_that_is_not_utf8_is_a_bad_request_that_says_so():
    app, node = make_app()
    status, answer = request(app, "POST", b"/api/v1/objects/create/Counter/caf\xe9-42")
    assert status == 400 and answer["kind"] == "BadRequest"
    assert "UTF-8" in answer["error"] and "URL path" in answer["error"]
    assert node.asked == []


def test_the_client_id_header_is_read_as_utf8():
    app, _ = make_app()
    status, answer = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                             body_of(Int64Value(value=3)), {"HTTP_X_CLIENT_ID": "\xff"})
    assert status == 400 and "X-Client-ID" in answer["error"]


def test_the_body_limit_follows_max_message_bytes():
    big = 12 * 1024 * 1024
    app, node = make_app(max_message_bytes=big)
    # A message as large as the setting allows gets through as base64 JSON.
    status, answer = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                             body_of(BytesValue(value=b"x" * (big - 64))))
    assert status == 200, answer
    assert node.asked == [("call", "Counter", "x", "Add")]


def test_a_body_over_the_limit_is_413_naming_the_limit():
    app, node = make_app(max_message_bytes=1024)
    limit = body_limit(1024)
    status, answer = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                             b" " * (limit + 1))
    assert status == 413 and answer["code"] == "RESOURCE_EXHAUSTED"
    assert str(limit) in answer["error"] and "max_message_bytes 1024" in answer["error"]
    status, _ = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                        body_of(BytesValue(value=b"x" * 1000)))
    assert status == 200


def test_a_chunked_body_is_read_and_held_to_the_limit():
    # A server de-chunks the body for the app: wsgi.input ends where it ends,
    # and no Content-Length says how long it is.
    app, node = make_app(max_message_bytes=1024)
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": ""}
    status, answer = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                             body_of(Int64Value(value=3)), chunked)
    assert status == 200, answer
    assert node.asked == [("call", "Counter", "x", "Add")]
    status, answer = request(app, "POST", b"/api/v1/objects/call/Counter/x/Add",
                             b" " * (body_limit(1024) + 1), chunked)
    assert status == 413 and "chunked body of more than" in answer["error"]
