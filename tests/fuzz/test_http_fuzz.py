"""Fuzz HTTP endpoints through WSGI: any app, random methods, paths, headers, bodies.

:func:`fuzz_wsgi` calls a WSGI app directly (no server, no socket) with
environs built by hypothesis and completed by
``wsgiref.util.setup_testing_defaults``, and checks every answer: no
exception escapes the app, ``start_response`` gets a valid HTTP status and
well-formed headers, ``Content-Length`` matches the body, a JSON body
parses, and (by default) errors are JSON ``{"error": ...}`` and never a
500, which means the app met an exception it did not expect.

It is meant for every HTTP surface goverse grows: here it runs against a
small app built on goverse errors and against the admin app
(``goverse.admin.make_app``, alone and mounted). The gate's HTTP app
(``goverse.gate.http``) is the next one to hand it.

Longer run: ``GOVERSE_FUZZ_EXAMPLES=2000 bin/test tests/fuzz``.
"""

from __future__ import annotations

import io
import json
import re
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable, Sequence
from wsgiref.util import is_hop_by_hop, setup_testing_defaults

import gevent
import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from goverse.errors import GoverseError, InvalidObjectId, MessageTooLarge
from goverse.objects import registry
from goverse.sharding import placement, validate_id
from tests.fuzz.harness import NUM_SHARDS, fuzz_settings

pytestmark = pytest.mark.fuzz

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_STATUS = re.compile(r"^(\d{3}) (\S.*)$")

# ---- requests -------------------------------------------------------------------

#: PEP 3333: PATH_INFO is the URL-decoded path, its bytes as latin-1 text.
raw_paths = st.one_of(
    st.binary(max_size=60).map(lambda raw: "/" + raw.decode("latin-1")),
    st.text(max_size=30).map(lambda text: "/" + text.encode("utf-8", "surrogatepass")
                             .decode("latin-1")),
)
numbers = st.one_of(st.integers(-10 ** 6, 10 ** 6).map(str), st.sampled_from(
    ["", "0", "-0", "1e3", "0x10", " 5", "５", "9" * 50, "nan", "1.5"]))
queries = st.one_of(
    st.just(""),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60),
    st.builds(lambda t, o, l: "type=%s&offset=%s&limit=%s" % (t, o, l),
              st.sampled_from(["", "Counter", "%00", "x" * 300]), numbers, numbers),
)
header_names = st.one_of(
    st.sampled_from(["ACCEPT", "ACCEPT_ENCODING", "COOKIE", "AUTHORIZATION", "HOST",
                     "X_FORWARDED_FOR", "IF_NONE_MATCH", "RANGE", "TRANSFER_ENCODING"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12))
latin1 = st.binary(max_size=60).map(lambda raw: raw.decode("latin-1"))


@st.composite
def wsgi_environs(draw, paths: Sequence[str]) -> dict[str, Any]:
    path = draw(st.one_of(st.sampled_from(paths), raw_paths,
                          st.builds(str.__add__, st.sampled_from(paths), raw_paths)))
    body = draw(st.binary(max_size=300))
    environ = {
        "REQUEST_METHOD": draw(st.one_of(st.sampled_from(METHODS),
                                         st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1,
                                                 max_size=10))),
        "PATH_INFO": path,
        "QUERY_STRING": draw(queries),
        "CONTENT_TYPE": draw(st.one_of(st.sampled_from(
            ["", "application/json", "text/plain", "multipart/form-data; boundary=x"]),
            latin1)),
        "CONTENT_LENGTH": draw(st.sampled_from(
            [str(len(body)), "", "-1", "abc", str(10 ** 20), str(len(body) + 7)])),
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in draw(st.dictionaries(header_names, latin1, max_size=4)).items():
        environ["HTTP_" + name] = value
    setup_testing_defaults(environ)
    return environ


# ---- answers -------------------------------------------------------------------


def check_answer(app: Callable, environ: dict[str, Any], *, allow_500: bool = False,
                 json_errors: bool = True) -> tuple[int, dict[str, str], bytes]:
    """Call ``app`` once and check its answer; returns code, headers, body."""
    started: list[tuple[str, list]] = []

    def start_response(status, headers, exc_info=None):
        assert not started or exc_info is not None, "start_response called twice"
        started.append((status, headers))
        return lambda data: pytest.fail("the deprecated write() callable was used")

    what = "%s %r ?%r" % (environ["REQUEST_METHOD"], environ["PATH_INFO"],
                          environ["QUERY_STRING"])
    result = app(environ, start_response)
    try:
        chunks = list(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    assert started, "%s: start_response never called" % what
    assert all(isinstance(chunk, bytes) for chunk in chunks), what
    body = b"".join(chunks)
    status, header_list = started[-1]
    code = _check_status(status, what)
    headers = _check_headers(header_list, what)

    if environ["REQUEST_METHOD"] == "HEAD":
        assert body == b"", "%s: HEAD answered with a body" % what
    elif "content-length" in headers:
        assert int(headers["content-length"]) == len(body), what
    if code == 500:
        assert allow_500, "%s: 500 %r" % (what, body[:500])
    if body and headers.get("content-type", "").startswith("application/json"):
        document = json.loads(body)
        if code >= 500:
            # Health answers say why in their own words ({"reason": ...}).
            assert isinstance(document, dict), (what, document)
        elif code >= 400:
            assert isinstance(document, dict) and isinstance(document.get("error"), str), (
                what, document)
    elif body and code >= 400 and json_errors:
        pytest.fail("%s: error %d is not JSON: %r" % (what, code, body[:200]))
    return code, headers, body


def _check_status(status: Any, what: str) -> int:
    assert isinstance(status, str), (what, status)
    match = _STATUS.match(status)
    assert match, "%s: malformed status line %r" % (what, status)
    code = int(match.group(1))
    assert code in set(HTTPStatus), "%s: unknown status %d" % (what, code)
    return code


def _check_headers(header_list: Any, what: str) -> dict[str, str]:
    assert isinstance(header_list, list), what
    headers = {}
    for item in header_list:
        assert isinstance(item, tuple) and len(item) == 2, (what, item)
        name, value = item
        assert isinstance(name, str) and _TOKEN.match(name), (what, name)
        assert isinstance(value, str) and not re.search(r"[\r\n\x00]", value), (what, item)
        value.encode("latin-1")
        assert not is_hop_by_hop(name), (what, name)
        headers[name.lower()] = value
    return headers


def fuzz_wsgi(app: Callable, paths: Sequence[str] = ("/",), *, share: float = 1.0,
              allow_500: bool = False, json_errors: bool = True) -> None:
    """Throw random requests at ``app``; the first bad answer fails (shrunk)."""

    last_yield = [time.monotonic()]

    @given(environ=wsgi_environs(paths))
    @fuzz_settings(share)
    def run(environ):
        check_answer(app, environ, allow_500=allow_500, json_errors=json_errors)
        # Calling the app directly never blocks, so nothing else would run:
        # let the hub in, or the node in this process misses its etcd lease.
        if time.monotonic() - last_yield[0] > 0.05:
            gevent.sleep(0.001)
            last_yield[0] = time.monotonic()

    run()


# ---- a small app on goverse errors ------------------------------------------------

#: HTTP status of a goverse error, by the gRPC status it maps to.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

ECHO_LIMIT = 256


class HTTPError(Exception):
    def __init__(self, code: int, message: str, headers: Iterable = ()) -> None:
        super().__init__(message)
        self.code, self.headers = code, list(headers)


def placement_app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
    """GET /placement/<id>, GET /types/<name>, POST /echo: answers in JSON."""
    try:
        code, document, headers = 200, _route(environ), []
    except GoverseError as exc:
        code, document, headers = HTTP_STATUS.get(exc.grpc_code, 500), None, []
        document = {"error": str(exc), "kind": type(exc).__name__, "code": code}
    except HTTPError as exc:
        code, headers = exc.code, exc.headers
        document = {"error": str(exc), "code": code}
    body = json.dumps(document).encode()
    start_response("%d %s" % (code, HTTPStatus(code).phrase), headers + [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]


def _route(environ: dict[str, Any]) -> Any:
    method = environ["REQUEST_METHOD"]
    path = environ["PATH_INFO"].encode("latin-1").decode("utf-8", "replace")
    if path == "/echo":
        if method != "POST":
            raise HTTPError(405, "use POST on /echo", [("Allow", "POST")])
        return _echo(environ)
    if method not in ("GET", "HEAD"):
        raise HTTPError(405, "%s is not allowed on %s" % (method, path), [("Allow", "GET, HEAD")])
    if path.startswith("/placement/"):
        object_id = validate_id(path[len("/placement/"):])
        shard, node = placement(object_id, NUM_SHARDS)
        return {"id": object_id, "shard": shard, "node": node}
    if path.startswith("/types/"):
        cls = registry.get(path[len("/types/"):])
        return {"type": cls._goverse_type, "methods": sorted(cls._goverse_methods)}
    raise HTTPError(404, "nothing at %s" % (path,))


def _echo(environ: dict[str, Any]) -> Any:
    text = environ.get("CONTENT_LENGTH") or "0"
    if not (text.isascii() and text.isdigit()):
        raise HTTPError(400, "Content-Length must be a whole number, got %r" % (text,))
    if len(text) > 9 or int(text) > ECHO_LIMIT:
        raise MessageTooLarge("body of %s bytes; the limit is %d" % (text, ECHO_LIMIT))
    raw = environ["wsgi.input"].read(int(text))
    try:
        return {"echo": json.loads(raw)}
    except (ValueError, RecursionError) as exc:
        raise InvalidObjectId("body is not JSON: %s" % (exc,)) from None


SAMPLE_PATHS = ["/placement/", "/placement/shard#3/x", "/placement/shard#99/x",
                "/types/Counter", "/types/", "/echo", "/"]


def test_fuzz_wsgi_app_on_goverse_errors():
    from tests import sample_objects  # noqa: F401  (registers Counter)

    fuzz_wsgi(placement_app, SAMPLE_PATHS, share=4)


def test_fuzz_wsgi_finds_a_broken_app():
    def broken(environ, start_response):
        if environ["REQUEST_METHOD"] == "DELETE":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b"{not json"]
        return placement_app(environ, start_response)

    with pytest.raises(ValueError):
        fuzz_wsgi(broken, SAMPLE_PATHS, share=4)


# ---- the admin app ----------------------------------------------------------------

ADMIN_PATHS = ["/", "/healthz", "/ready", "/status", "/nodes", "/shards", "/objects",
               "/objects/", "/objects/shard#1/x", "/operations/", "/operations/op-1",
               "/metrics", "/api/dashboard", "/static/", "/static/app.js", "/static/../x"]


def test_fuzz_admin_app(guard):
    admin = pytest.importorskip("goverse.admin")
    fuzz_wsgi(admin.make_app(guard.node), ADMIN_PATHS, share=4)


def test_fuzz_admin_mounted_in_an_app(guard):
    admin = pytest.importorskip("goverse.admin")
    app = admin.mount(placement_app, "/goverse", node=guard.node)
    fuzz_wsgi(app, ["/goverse"] + ["/goverse" + path for path in ADMIN_PATHS] + SAMPLE_PATHS,
              share=2)


@pytest.mark.parametrize("query", ["offset=" + "1" * 5000, "limit=" + "9" * 4301])
def test_admin_objects_with_huge_number_is_bad_request(guard, query):
    admin = pytest.importorskip("goverse.admin")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/objects", "QUERY_STRING": query}
    setup_testing_defaults(environ)
    code, _, body = check_answer(admin.make_app(guard.node), environ, allow_500=True)
    assert code == 400, body[:300]
