"""The admin plane as a plain WSGI application.

Every answer is JSON except ``/metrics`` (Prometheus text) and the
dashboard (``/`` and ``/static/...``). Every error, including an unknown
path (404) and a wrong method (405, with ``Allow``), is JSON of the form
``{"error": message, "code": status}``.

The app works at any mount point: the dashboard only uses relative URLs,
and a request for the mount point without its trailing slash is
redirected to it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from ..errors import EtcdUnavailable, InvalidObjectId
from .sources import LocalSource, NodeUnreachable, NotFound, Source

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: Default and largest page of ``/objects``.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8"}
_ALLOWED = ("GET", "HEAD")

Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]


class HTTPError(Exception):
    """An error answer: its status, message and extra headers."""

    def __init__(self, code: int, message: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or []


def json_response(code: int, body: Any, headers: Headers | None = None, *,
                  compact: bool = False) -> Response:
    # Indented for people reading with curl; compact for the dashboard's
    # per-shard arrays, which indenting would make several times larger.
    if compact:
        text = json.dumps(body, default=str, separators=(",", ":"))
    else:
        text = json.dumps(body, default=str, indent=1)
    data = text.encode("utf-8")
    return code, [("Content-Type", "application/json"), ("Cache-Control", "no-store")] + (
        headers or []), data


def error_response(code: int, message: str, headers: Headers | None = None) -> Response:
    return json_response(code, {"error": message, "code": code}, headers)


class AdminApp:
    """Routes admin requests to a :class:`~goverse.admin.sources.Source`."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._static: dict[str, bytes] = {}
        self._routes: list[tuple[re.Pattern[str], Callable[..., Response]]] = [
            (re.compile(pattern), handler) for pattern, handler in (
                (r"/", self.index),
                (r"/static/([A-Za-z0-9_.-]+)", self.static),
                (r"/healthz", self.healthz),
                (r"/ready", self.ready),
                (r"/status", self.status),
                (r"/nodes", self.nodes),
                (r"/shards", self.shards),
                (r"/objects", self.objects),
                (r"/objects/(.+)", self.describe_object),
                (r"/operations/(.+)", self.operation),
                (r"/metrics", self.metrics),
                (r"/api/dashboard", self.dashboard),
            )]

    def __repr__(self) -> str:
        return "<AdminApp %r>" % (self.source,)

    # ---- WSGI ------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        code, headers, body = self.respond(environ)
        headers = headers + [("Content-Length", str(len(body)))]
        if environ.get("REQUEST_METHOD") == "HEAD":
            body = b""
        start_response("%d %s" % (code, HTTPStatus(code).phrase), headers)
        return [body]

    def respond(self, environ: dict[str, Any]) -> Response:
        """Route one request; every failure becomes a JSON error answer."""
        try:
            path = _path(environ)
            if path == "":
                return self._to_mount_point(environ)
            handler, args = self._match(path)
            if environ.get("REQUEST_METHOD", "GET") not in _ALLOWED:
                raise HTTPError(405, "%s is not allowed on %s; use GET" % (
                    environ.get("REQUEST_METHOD"), path), [("Allow", ", ".join(_ALLOWED))])
            return handler(environ, *args)
        except HTTPError as exc:
            return error_response(exc.code, exc.message, exc.headers)
        except (NotFound, InvalidObjectId) as exc:
            return error_response(404 if isinstance(exc, NotFound) else 400, str(exc))
        except NodeUnreachable as exc:
            return error_response(502, str(exc))
        except EtcdUnavailable as exc:
            log.warning("admin: %s answered 503: %s", path, exc)
            return error_response(503, "etcd is unavailable: %s" % (exc,))
        except Exception as exc:
            log.exception("admin: %s failed", path)
            return error_response(500, "%s: %s" % (type(exc).__name__, exc))

    def _match(self, path: str) -> tuple[Callable[..., Response], tuple[str, ...]]:
        for pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match:
                return handler, match.groups()
        raise HTTPError(404, "no admin endpoint at %s" % (path,))

    def _to_mount_point(self, environ: dict[str, Any]) -> Response:
        location = environ.get("SCRIPT_NAME", "") + "/"
        query = environ.get("QUERY_STRING")
        if query:
            location += "?" + query
        return json_response(301, {"location": location}, [("Location", location)])

    # ---- health ------------------------------------------------------------

    def healthz(self, environ: dict[str, Any]) -> Response:
        problem = self.source.health()
        if problem is not None:
            return json_response(503, {"status": "unhealthy", "reason": problem})
        return json_response(200, {"status": "ok"})

    def ready(self, environ: dict[str, Any]) -> Response:
        reason = self.source.ready_reason()
        if reason is not None:
            return json_response(503, {"ready": False, "reason": reason})
        return json_response(200, {"ready": True})

    # ---- state ---------------------------------------------------------------

    def status(self, environ: dict[str, Any]) -> Response:
        return json_response(200, self.source.status())

    def nodes(self, environ: dict[str, Any]) -> Response:
        return json_response(200, {"nodes": self.source.nodes()})

    def shards(self, environ: dict[str, Any]) -> Response:
        return json_response(200, self.source.shards())

    def objects(self, environ: dict[str, Any]) -> Response:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        type_name = query.get("type", [""])[0]
        offset = _int_param(query, "offset", 0, 0, None)
        limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        return json_response(200, self.source.objects(type_name, offset, limit))

    def describe_object(self, environ: dict[str, Any], object_id: str) -> Response:
        return json_response(200, self.source.describe_object(object_id))

    def operation(self, environ: dict[str, Any], op_id: str) -> Response:
        return json_response(200, self.source.operation(op_id))

    def dashboard(self, environ: dict[str, Any]) -> Response:
        data = self.source.dashboard()
        data["ready"] = {"ready": data["status"].get("ready_reason") is None,
                         "reason": data["status"].get("ready_reason")}
        return json_response(200, data, compact=True)

    def metrics(self, environ: dict[str, Any]) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.source.metrics_registry())
        return 200, [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")], body

    # ---- the dashboard's files -------------------------------------------------

    def index(self, environ: dict[str, Any]) -> Response:
        return self.static(environ, "index.html")

    def static(self, environ: dict[str, Any], name: str) -> Response:
        extension = os.path.splitext(name)[1]
        if extension not in _CONTENT_TYPES:
            raise HTTPError(404, "no dashboard file %s" % (name,))
        body = self._static.get(name)
        if body is None:
            try:
                with open(os.path.join(STATIC_DIR, name), "rb") as handle:
                    body = handle.read()
            except FileNotFoundError:
                raise HTTPError(404, "no dashboard file %s" % (name,)) from None
            self._static[name] = body
        return 200, [("Content-Type", _CONTENT_TYPES[extension]),
                     ("Cache-Control", "no-cache")], body


def _path(environ: dict[str, Any]) -> str:
    # PEP 3333: PATH_INFO holds the URL-decoded bytes as latin-1 text.
    raw = environ.get("PATH_INFO", "")
    try:
        data = raw.encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded it already
        return raw
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPError(400, "the URL path is not UTF-8: byte 0x%02x at %d of %r" % (
            data[exc.start], exc.start, data[:80])) from None


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int,
               high: int | None) -> int:
    values = query.get(name)
    if not values or values[0] == "":
        return default
    text = values[0]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise HTTPError(400, "query parameter %s must be a whole number below 10**18, "
                        "got %r" % (name, text[:40]))
    value = int(text)
    if value < low or (high is not None and value > high):
        raise HTTPError(400, "query parameter %s must be between %d and %s, got %d" % (
            name, low, high if high is not None else "any", value))
    return value


def make_app(node: Any = None, *, source: Source | None = None) -> AdminApp:
    """The admin WSGI app for ``node`` (embedded) or for ``source``."""
    if (node is None) == (source is None):
        raise TypeError("make_app needs exactly one of node= or source=")
    return AdminApp(source if source is not None else LocalSource(node))


def mount(app: Callable, prefix: str = "/goverse", *, node: Any = None,
          source: Source | None = None, admin: Callable | None = None) -> Callable:
    """A WSGI app serving the admin plane under ``prefix`` and ``app`` elsewhere.

    ``admin`` is an admin app already made; otherwise one is made for
    ``node`` (or ``source``) with :func:`make_app`.
    """
    prefix = "/" + prefix.strip("/")
    if prefix == "/":
        raise ValueError("mount needs a prefix such as '/goverse', not %r" % (prefix,))
    if admin is None:
        admin = make_app(node, source=source)

    def dispatch(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != prefix and not path.startswith(prefix + "/"):
            return app(environ, start_response)
        environ = dict(environ, SCRIPT_NAME=environ.get("SCRIPT_NAME", "") + prefix,
                       PATH_INFO=path[len(prefix):])
        return admin(environ, start_response)

    return dispatch
