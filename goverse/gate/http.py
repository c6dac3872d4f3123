"""The gate's HTTP API: calls, creates, deletes and Server-Sent Events.

A plain WSGI application, served by gevent's WSGI server::

    POST /api/v1/objects/call/{type}/{id}/{method}
         {"request": b64 Any}  ->  {"response": b64 Any}
    POST /api/v1/objects/create/{type}/{id}  ->  {"id": ...}
    POST /api/v1/objects/delete/{type}/{id}  ->  {"success": true}
    GET  /api/v1/events/stream
         event: register {"clientId"}, then event: message {"type", "payload"}
    GET  /api/v1/status  ->  the gate's links, clients and counters
         (?greenlets=1 adds the process's greenlet and threadpool thread counts)

``b64 Any`` is the standard base64 of a serialized ``google.protobuf.Any``.
Paths are percent-encoded UTF-8 (``caf%C3%A9`` is ``café``); a path that
is not UTF-8 is a 400. Object ids may contain ``/``: the type is the first path segment after the
verb, the method (for calls) the last one, and the id everything between.
An ``X-Client-ID`` header names the calling client (its push stream's id),
which methods read with ``goverse.client_id()``.

Errors are JSON ``{"error": message, "code": gRPC status name, "kind":
goverse error class}`` with status 400 for a bad path, body, base64 or
protobuf, 404 for an unknown object type or method, 413 for a body larger
than a ``max_message_bytes`` message as base64 in JSON (:func:`body_limit`),
and 500 otherwise.
Every response carries CORS headers, and ``OPTIONS`` answers 204, so a page
served from elsewhere may use the API too.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import mimetypes
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import parse_qs

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from .. import callctx as context
from ..errors import (
    GoverseError,
    InvalidObjectId,
    ObjectNotFound,
    UnknownMethod,
    UnknownObjectType,
    WrongMessageType,
)
from ..transport import pack

if TYPE_CHECKING:
    from .server import Gate

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1/"

#: Room in a request body beyond the base64 of its message: the Any's
#: type URL and the JSON around the string.
BODY_OVERHEAD = 64 * 1024


def body_limit(max_message_bytes: int) -> int:
    """Largest HTTP body accepted: a ``max_message_bytes`` message as base64 in JSON."""
    return 4 * -(-max_message_bytes // 3) + BODY_OVERHEAD

CORS_HEADERS = [
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Content-Type, X-Client-ID"),
    ("Access-Control-Max-Age", "600"),
]

_REASONS = {200: "OK", 204: "No Content", 301: "Moved Permanently", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}

_NOT_FOUND_ERRORS = (UnknownObjectType, UnknownMethod, ObjectNotFound)
_BAD_REQUEST_ERRORS = (InvalidObjectId, WrongMessageType)


class BadRequest(Exception):
    """The request itself is malformed (path, JSON, base64 or protobuf)."""

    def __init__(self, message: str, status: int = 400, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.status = status
        self.code = code


class GateHttpApp:
    """The WSGI application of one gate."""

    def __init__(self, gate: Gate, *, static_dir: str = "", static_prefix: str = "/static/",
                 heartbeat: float = 30.0) -> None:
        self.gate = gate
        self.static_dir = os.path.realpath(static_dir) if static_dir else ""
        self.static_prefix = static_prefix
        self.heartbeat = heartbeat
        self.max_message_bytes = gate.settings.max_message_bytes
        self.max_body = body_limit(self.max_message_bytes)
        self._routes: dict[tuple[str, str], Callable[[dict, str], Any]] = {
            ("POST", "objects/call"): self._call,
            ("POST", "objects/create"): self._create,
            ("POST", "objects/delete"): self._delete,
            ("GET", "events/stream"): self._events,
            ("GET", "status"): self._status,
        }

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        method = environ.get("REQUEST_METHOD", "GET")
        if method == "OPTIONS":
            start_response("204 No Content", list(CORS_HEADERS))
            return [b""]
        try:
            path = _path(environ) or "/"
            if path.startswith(API_PREFIX):
                return self._api(environ, start_response, method, path[len(API_PREFIX):])
            return self._static(environ, start_response, method, path)
        except BadRequest as exc:
            return _json(start_response, exc.status, {
                "error": str(exc), "code": exc.code, "kind": "BadRequest"})

    # ---- the API -----------------------------------------------------------

    def _api(self, environ: dict, start_response: Callable, method: str, rest: str) -> Any:
        verb, _, tail = _split_verb(rest)
        handler = self._routes.get((method, verb))
        if handler is None:
            if any(known == verb for _, known in self._routes):
                raise BadRequest("%s is not allowed on %s%s" % (method, API_PREFIX, verb),
                                 405, "UNIMPLEMENTED")
            raise BadRequest("no API endpoint at %s%s" % (API_PREFIX, rest[:200]), 404,
                             "NOT_FOUND")
        if handler == self._events:
            return self._events(environ, start_response)
        self._enter_context(environ)
        try:
            answer = handler(environ, tail)
        except GoverseError as exc:
            return _json(start_response, _status_of(exc), {
                "error": str(exc), "code": exc.grpc_code.name, "kind": type(exc).__name__})
        except BadRequest:
            raise
        except Exception as exc:
            log.exception("HTTP %s %s%s failed", method, API_PREFIX, rest)
            return _json(start_response, 500, {
                "error": "%s: %s" % (type(exc).__name__, exc), "code": "INTERNAL",
                "kind": "ObjectMethodError"})
        return _json(start_response, 200, answer)

    @staticmethod
    def _enter_context(environ: dict) -> None:
        # pywsgi serves the requests of one connection in one greenlet:
        # every request starts from an empty context.
        context.enter({}, chain=None, timeout=None)
        client_id = _utf8(environ.get("HTTP_X_CLIENT_ID", ""), "the X-Client-ID header")
        client_id = client_id.strip()
        if client_id:
            context.context["client_id"] = client_id

    def _call(self, environ: dict, tail: str) -> dict:
        type_name, object_id, method = _split_call(tail)
        body = _read_json(self._read_body(environ))
        request = _decode_any(body.get("request"), "request")
        response = self.gate.node.call_object(type_name, object_id, method, request)
        return {"response": base64.b64encode(pack(response).SerializeToString()).decode()}

    def _create(self, environ: dict, tail: str) -> dict:
        type_name, object_id = _split_object(tail)
        self._read_body(environ)
        return {"id": self.gate.node.create_object(type_name, object_id, wait=True)}

    def _delete(self, environ: dict, tail: str) -> dict:
        type_name, object_id = _split_object(tail)
        self._read_body(environ)
        self.gate.node.delete_object(object_id, wait=True, type_name=type_name)
        return {"success": True}

    def _status(self, environ: dict, tail: str) -> dict:
        asked = parse_qs(environ.get("QUERY_STRING", "")).get("greenlets", [""])[-1]
        return self.gate.statistics(greenlets=asked in ("1", "true"))

    def _read_body(self, environ: dict) -> bytes:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # No length up front: read one byte past the limit to tell.
            body = environ["wsgi.input"].read(self.max_body + 1)
            if len(body) > self.max_body:
                raise self._too_large("a chunked body of more than %d bytes" % (
                    self.max_body,))
            return body
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if length > self.max_body:
            raise self._too_large("a body of %d bytes" % (length,))
        return environ["wsgi.input"].read(length) if length > 0 else b""

    def _too_large(self, what: str) -> BadRequest:
        return BadRequest("%s exceeds the limit of %d bytes (a message of max_message_bytes "
                          "%d as base64 in JSON)" % (what, self.max_body,
                                                     self.max_message_bytes),
                          413, "RESOURCE_EXHAUSTED")

    # ---- Server-Sent Events -------------------------------------------------

    def _events(self, environ: dict, start_response: Callable) -> Iterator[bytes]:
        clients = self.gate.clients
        if clients is None or self.gate.stopping:
            raise BadRequest("gate %s is not serving" % (self.gate.address,), 503,
                             "UNAVAILABLE")
        client = clients.register("sse")
        start_response("200 OK", CORS_HEADERS + [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ])
        return self._event_stream(clients, client)

    def _event_stream(self, clients: Any, client: Any) -> Iterator[bytes]:
        try:
            yield _event("register", {"clientId": client.id})
            while True:
                try:
                    message = client.next(self.heartbeat)
                except EOFError:
                    return
                if message is None:
                    yield b": heartbeat\n\n"
                    continue
                yield _event("message", {
                    "type": message.type_url,
                    "payload": base64.b64encode(message.SerializeToString()).decode()})
        finally:
            # Runs when the stream ends, the gate stops, or a write to a
            # client that went away fails.
            clients.unregister(client)

    # ---- static files -------------------------------------------------------

    def _static(self, environ: dict, start_response: Callable, method: str,
                path: str) -> Any:
        prefix = self.static_prefix
        if not self.static_dir or method not in ("GET", "HEAD"):
            raise BadRequest("nothing at %s" % (path[:200],), 404, "NOT_FOUND")
        if path in ("/", prefix.rstrip("/")):
            start_response("301 Moved Permanently", CORS_HEADERS + [("Location", prefix)])
            return [b""]
        if not path.startswith(prefix):
            raise BadRequest("nothing at %s" % (path[:200],), 404, "NOT_FOUND")
        relative = path[len(prefix):] or "index.html"
        if "\0" in relative:  # no file name holds a NUL; os calls would raise on it
            raise BadRequest("nothing at %r" % (path[:200],), 404, "NOT_FOUND")
        full = os.path.realpath(os.path.join(self.static_dir, relative))
        if not full.startswith(self.static_dir + os.sep) or not os.path.isfile(full):
            raise BadRequest("nothing at %s" % (path[:200],), 404, "NOT_FOUND")
        with open(full, "rb") as file:
            data = file.read()
        kind = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind == "application/javascript":
            kind += "; charset=utf-8"
        start_response("200 OK", CORS_HEADERS + [
            ("Content-Type", kind), ("Content-Length", str(len(data))),
            ("Cache-Control", "no-cache")])
        return [b"" if method == "HEAD" else data]


# ---- helpers --------------------------------------------------------------


def _path(environ: dict) -> str:
    """PATH_INFO as the text the client meant.

    PEP 3333 hands the URL-decoded path over as its bytes read as latin-1;
    URLs carry UTF-8, so ``caf%C3%A9`` must become ``café``, not ``cafÃ©``.
    """
    return _utf8(environ.get("PATH_INFO", ""), "the URL path")


def _utf8(wsgi_text: str, what: str) -> str:
    """Re-decode a latin-1 WSGI string as UTF-8; 400 when it is not UTF-8."""
    try:
        raw = wsgi_text.encode("latin-1")
    except UnicodeEncodeError:
        return wsgi_text  # a server that already decoded it as text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest("%s is not valid UTF-8 once percent-decoded (byte 0x%02x at "
                         "offset %d of %r)" % (what, raw[exc.start], exc.start,
                                               raw[:200])) from None


def _split_verb(rest: str) -> tuple[str, str, str]:
    """``objects/call/T/I/M`` -> ("objects/call", "/", "T/I/M")."""
    if rest.startswith("objects/"):
        verb, sep, tail = rest[len("objects/"):].partition("/")
        return "objects/" + verb, sep, tail
    return rest.rstrip("/"), "", ""


def _split_object(tail: str) -> tuple[str, str]:
    type_name, _, object_id = tail.partition("/")
    if not type_name or not object_id:
        raise BadRequest("expected .../{type}/{id} in the path, got %r" % (tail[:200],))
    return type_name, object_id


def _split_call(tail: str) -> tuple[str, str, str]:
    head, _, method = tail.rpartition("/")
    type_name, object_id = _split_object(head) if head else ("", "")
    if not method:
        raise BadRequest("expected .../{type}/{id}/{method} in the path, got %r" % (
            tail[:200],))
    return type_name, object_id, method


def _read_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("body is not valid JSON: %s" % (exc,)) from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object, got %s" % (type(body).__name__,))
    return body


def _decode_any(value: Any, field: str) -> any_pb2.Any:
    if value is None:
        raise BadRequest("the body has no %r field (a base64 string of a serialized "
                         "google.protobuf.Any)" % (field,))
    if not isinstance(value, str):
        raise BadRequest("%s must be a base64 string of a serialized "
                         "google.protobuf.Any, got %s" % (field, type(value).__name__))
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("%s is not valid base64: %s" % (field, exc)) from None
    message = any_pb2.Any()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise BadRequest("%s is not a serialized google.protobuf.Any: %s" % (
            field, exc)) from None
    if not message.type_url:
        raise BadRequest("%s is an Any without a type_url" % (field,))
    return message


def _status_of(exc: GoverseError) -> int:
    if isinstance(exc, _NOT_FOUND_ERRORS):
        return 404
    if isinstance(exc, _BAD_REQUEST_ERRORS):
        return 400
    return 500


def _event(name: str, data: dict) -> bytes:
    return ("event: %s\ndata: %s\n\n" % (name, json.dumps(data, separators=(",", ":")))
            ).encode()


def _json(start_response: Callable, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body, separators=(",", ":"), default=str).encode()
    start_response("%d %s" % (status, _REASONS.get(status, "Error")), CORS_HEADERS + [
        ("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
