"""The admin plane: every endpoint, embedded in nodes and under gunicorn.

Everything is real: etcd, nodes (in this process and in child processes),
a gunicorn master with its gevent worker, and headless Chromium for the
dashboard. Only loopback addresses are used.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser

import gevent
import pytest
from gevent import monkey
from google.protobuf.wrappers_pb2 import Int64Value
from prometheus_client.parser import text_string_to_metric_families

import goverse
import goverse.admin
from goverse._pb import goverse_pb2 as pb
from goverse.sharding import placement
from goverse.testing import ROOT, free_port, wait_until
from goverse.transport import pack

NUM_SHARDS = 64


# ---- helpers -------------------------------------------------------------------


def fetch(url, method="GET"):
    """``(status, headers, body bytes)`` of one HTTP request; errors are answers too."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def fetch_json(url, method="GET"):
    status, headers, body = fetch(url, method)
    assert headers["Content-Type"] == "application/json", (url, headers, body)
    return status, json.loads(body)


def metric_samples(base):
    status, headers, body = fetch(base + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    return [sample for family in text_string_to_metric_families(body.decode())
            for sample in family.samples]


def calls_served(base, address, type_name="Counter"):
    return sum(s.value for s in metric_samples(base)
               if s.name == "goverse_calls_total" and s.labels["node"] == address
               and s.labels["type"] == type_name and s.labels["outcome"] == "ok")


def admin_node(make_node, **overrides):
    port = free_port()
    node = make_node(num_shards=NUM_SHARDS, admin_listen="127.0.0.1:%d" % port, **overrides)
    return node, "http://127.0.0.1:%d" % port


@pytest.fixture
def two_admins(make_node):
    """Two in-process nodes of one cluster, each with its embedded admin."""
    first, first_url = admin_node(make_node)
    second, second_url = admin_node(make_node)
    wait_until(lambda: first.cluster.is_settled() and second.cluster.is_settled(),
               timeout=20, message="two nodes settled")
    return [(first, first_url), (second, second_url)]


def owner_of(node, object_id):
    return node.cluster.route(placement(object_id, NUM_SHARDS).shard)[0]


# ---- health and readiness --------------------------------------------------------


def test_admin_healthz_and_ready_answer_ok_on_a_ready_node(two_admins):
    for node, base in two_admins:
        assert fetch_json(base + "/healthz") == (200, {"status": "ok"})
        assert fetch_json(base + "/ready") == (200, {"ready": True})


def test_admin_ready_is_503_until_the_cluster_is_ready(make_node):
    port = free_port()
    base = "http://127.0.0.1:%d" % port
    node = make_node(wait_ready=False, num_shards=NUM_SHARDS, stability_window=2.0,
                     admin_listen="127.0.0.1:%d" % port)

    status, body = fetch_json(base + "/ready")
    assert status == 503
    assert body["reason"] and isinstance(body["reason"], str)
    assert fetch_json(base + "/healthz")[0] == 200

    wait_until(lambda: fetch_json(base + "/ready")[0] == 200, timeout=20,
               message="ready after the stability window")
    assert node.cluster.is_ready()


def test_admin_healthz_is_503_when_the_loop_stalls_and_when_stopping(make_node):
    node, base = admin_node(make_node)
    app = goverse.admin.make_app(node)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/healthz"}

    # Block the whole hub, as a CPU-bound handler would: the loop monitor
    # cannot tick, and the next health check must say so.
    monkey.get_original("time", "sleep")(1.3)
    code, _, body = app.respond(environ)
    assert code == 503, body
    assert "event loop" in json.loads(body)["reason"]
    gevent.sleep(0.2)
    assert app.respond(environ)[0] == 200

    node.stop(grace=1)
    code, _, body = app.respond(environ)
    assert code == 503
    assert "stopping" in json.loads(body)["reason"]
    with pytest.raises(OSError):
        urllib.request.urlopen(base + "/healthz", timeout=2)


# ---- state -------------------------------------------------------------------


def test_admin_status_nodes_and_shards_describe_the_cluster(two_admins):
    (first, first_url), (second, _) = two_admins
    addresses = sorted([first.address, second.address])
    first.call_object("Counter", "%s/remote-1" % second.address, "Add", Int64Value(value=1))

    status = fetch_json(first_url + "/status")[1]
    assert status["address"] == first.address
    assert status["role"] in ("leader", "member")
    assert status["leader"] in addresses
    assert (status["role"] == "leader") == (status["leader"] == first.address)
    assert status["uptime_seconds"] > 0
    assert status["shards_owned"] == len(first.cluster.owned)
    assert status["objects"] == len(first.host)
    assert {"address": second.address, "queue_depth": 0} in status["peers"]

    nodes = fetch_json(first_url + "/nodes")[1]["nodes"]
    assert [n["address"] for n in nodes] == addresses
    assert sum(n["shards_owned"] for n in nodes) == NUM_SHARDS
    assert [n["role"] for n in nodes].count("leader") == 1

    shards = fetch_json(first_url + "/shards")[1]
    assert shards["num_shards"] == NUM_SHARDS and shards["unowned"] == 0
    assert len(shards["shards"]) == NUM_SHARDS
    assert set(shards["nodes"]) == set(addresses)
    for row in shards["shards"]:
        assert row["owner"] in addresses and row["target"] in addresses
        assert row["epoch"] > 0
    for address in addresses:
        owned = sum(1 for row in shards["shards"] if row["owner"] == address)
        assert shards["nodes"][address]["owned"] == owned


def test_admin_objects_lists_each_object_on_its_owner(two_admins):
    (first, first_url), (second, second_url) = two_admins
    base_of = {first.address: first_url, second.address: second_url}
    ids = ["admin-object-%d" % n for n in range(12)]
    for object_id in ids:
        goverse.call_object("Counter", object_id, "Add", Int64Value(value=2))
    goverse.call_object("Slow", "admin-slow", "Work", Int64Value(value=1))

    for object_id in ids:
        owner = owner_of(first, object_id)
        listing = fetch_json(base_of[owner] + "/objects?type=Counter&limit=1000")[1]
        rows = {row["id"]: row for row in listing["objects"]}
        assert rows[object_id]["node"] == owner
        assert rows[object_id]["type"] == "Counter"

        status, detail = fetch_json(base_of[owner] + "/objects/" + object_id)
        assert status == 200
        assert detail["type"] == "Counter" and detail["node"] == owner
        assert detail["calls_served"] == 1 and detail["queue_depth"] == 0
        assert detail["created_at"] <= time.time()

        other = first_url if owner == second.address else second_url
        status, error = fetch_json(other + "/objects/" + object_id)
        assert status == 404 and error["code"] == 404
        assert owner in error["error"]

    total = sum(fetch_json(url + "/objects?type=Counter")[1]["total"]
                for url in base_of.values())
    assert total == len(ids)
    slow_owner = owner_of(first, "admin-slow")
    slow = fetch_json(base_of[slow_owner] + "/objects?type=Slow")[1]
    assert [row["id"] for row in slow["objects"]] == ["admin-slow"]


def test_admin_objects_paginates(make_node):
    node, base = admin_node(make_node)
    for n in range(7):
        goverse.call_object("Counter", "%s/page-%d" % (node.address, n), "Add",
                            Int64Value(value=1))

    seen = []
    for offset in range(0, 7, 3):
        page = fetch_json(base + "/objects?limit=3&offset=%d" % offset)[1]
        assert page["total"] == 7 and page["offset"] == offset and page["limit"] == 3
        seen += [row["id"] for row in page["objects"]]
    assert sorted(seen) == sorted("%s/page-%d" % (node.address, n) for n in range(7))
    assert fetch_json(base + "/objects?type=NoSuchType")[1]["total"] == 0

    status, error = fetch_json(base + "/objects?limit=0")
    assert status == 400 and error == {"error": error["error"], "code": 400}
    assert fetch_json(base + "/objects?offset=minus")[0] == 400


def test_admin_objects_accepts_ids_with_slashes_and_hashes(make_node):
    node, base = admin_node(make_node)
    object_id = "shard#3/odd/id"
    goverse.call_object("Counter", object_id, "Add", Int64Value(value=1))
    status, detail = fetch_json(base + "/objects/" + urllib.request.quote(object_id, safe=""))
    assert status == 200 and detail["id"] == object_id and detail["shard"] == 3


def test_admin_operations_report_status_and_failures(two_admins):
    (first, first_url), _ = two_admins
    # Operations are recorded on the node that started them.
    done = first.create_object_async("Counter", "admin-op-ok")
    failed = first.create_object_async("NoSuchType", "admin-op-bad")
    done.wait(10)
    with pytest.raises(goverse.GoverseError):
        failed.wait(10)

    status, record = fetch_json(first_url + "/operations/" + done.id)
    assert status == 200
    assert record["status"] == "succeeded" and record["object_id"] == "admin-op-ok"
    status, record = fetch_json(first_url + "/operations/" + failed.id)
    assert record["status"] == "failed" and "NoSuchType" in record["error"]

    status, error = fetch_json(first_url + "/operations/op-unknown")
    assert status == 404 and error["code"] == 404 and "op-unknown" in error["error"]

    dashboard = fetch_json(first_url + "/api/dashboard")[1]
    assert [op["id"] for op in dashboard["failures"]] == [failed.id]


def test_admin_metrics_parse_and_count_calls(two_admins):
    (first, first_url), _ = two_admins
    object_id = "%s/metered" % first.address
    goverse.call_object("Counter", object_id, "Add", Int64Value(value=1))
    before = calls_served(first_url, first.address)

    for _ in range(5):
        goverse.call_object("Counter", object_id, "Add", Int64Value(value=1))

    assert calls_served(first_url, first.address) == before + 5
    names = {sample.name for sample in metric_samples(first_url)}
    assert {"goverse_objects", "goverse_shards_owned",
            "goverse_call_latency_seconds_bucket"} <= names


def test_admin_errors_are_json(two_admins):
    _, (_, base) = two_admins
    status, error = fetch_json(base + "/no/such/page")
    assert (status, error["code"]) == (404, 404) and "/no/such/page" in error["error"]

    status, headers, body = fetch(base + "/status", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert json.loads(body) == {"error": json.loads(body)["error"], "code": 405}
    assert fetch(base + "/metrics", method="DELETE")[0] == 405
    assert fetch(base + "/static/../admin.py")[0] == 404

    status, headers, body = fetch(base + "/status", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0

    status, error = fetch_json(base + "/objects/bad%FFid")
    assert status == 400 and "not UTF-8: byte 0xff at 12" in error["error"]


def test_admin_mount_sends_only_its_prefix_to_the_admin(make_node):
    node = make_node(num_shards=NUM_SHARDS)

    def user_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"user " + environ["PATH_INFO"].encode()]

    app = goverse.admin.mount(user_app, "/goverse", node=node)

    def call(path):
        answer = {}

        def start_response(status, headers):
            answer.update(status=status, headers=dict(headers))
        body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "",
                             "QUERY_STRING": ""}, start_response))
        return answer["status"], answer["headers"], body

    assert call("/goverse/healthz")[0] == "200 OK"
    assert call("/goverseish")[2] == b"user /goverseish"
    assert call("/other")[2] == b"user /other"
    status, headers, _ = call("/goverse")
    assert status.startswith("301") and headers["Location"] == "/goverse/"
    assert call("/goverse/")[1]["Content-Type"].startswith("text/html")


# ---- the dashboard in a real browser -------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's "
    "chromium package; locally: apt-get install chromium)")


def output_dir(tmp_path):
    """Where pictures of the dashboard go: $GOVERSE_TEST_OUTPUT or the test's tmp dir."""
    path = os.path.join(os.environ.get("GOVERSE_TEST_OUTPUT") or str(tmp_path), "test-output")
    os.makedirs(path, exist_ok=True)
    return path


def chromium(tmp_path, *args):
    profile = tmp_path / ("chromium-profile-%d" % time.monotonic_ns())
    profile.mkdir()
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-default-apps",
               "--disable-extensions", "--disable-dev-shm-usage", "--no-pings",
               "--user-data-dir=%s" % profile, "--virtual-time-budget=5000", *args]
    result = subprocess.run(command, capture_output=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


class DomSummary(HTMLParser):
    """The parts of the dumped dashboard the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.node_rows: set[str] = set()
        self.legend: set[str] = set()
        self.canvas: dict[str, str] = {}
        self.errors_count = None
        self._in_errors = False
        self.errors_text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and "data-node" in attrs:
            self.node_rows.add(attrs["data-node"])
        elif tag == "li" and "data-owner" in attrs:
            self.legend.add(attrs["data-owner"])
        elif tag == "canvas" and attrs.get("id") == "shard-map":
            self.canvas = attrs
        elif attrs.get("id") == "errors":
            self.errors_count = attrs.get("data-count")
            self._in_errors = True

    def handle_endtag(self, tag):
        if tag == "div":
            self._in_errors = False

    def handle_data(self, data):
        if self._in_errors:
            self.errors_text += data


def check_dashboard(tmp_path, url, addresses, num_shards, picture):
    dom = DomSummary()
    dom.feed(chromium(tmp_path, "--dump-dom", url))
    assert dom.errors_count == "0" and not dom.errors_text.strip(), dom.errors_text
    assert set(addresses) <= dom.node_rows
    assert set(addresses) <= dom.legend
    assert dom.canvas.get("data-shards") == str(num_shards)
    assert dom.canvas.get("data-drawn") == str(num_shards)

    path = os.path.join(output_dir(tmp_path), picture)
    chromium(tmp_path, "--screenshot=%s" % path, "--window-size=1400,1000",
             "--hide-scrollbars", url)
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


@needs_chromium
def test_admin_dashboard_renders_in_chromium(two_admins, tmp_path):
    (first, first_url), (second, _) = two_admins
    for n in range(5):
        goverse.call_object("Counter", "dash-%d" % n, "Add", Int64Value(value=1))
    check_dashboard(tmp_path, first_url + "/", [first.address, second.address], NUM_SHARDS,
                    "dashboard.png")


# ---- under gunicorn, for the whole cluster ---------------------------------------------


@pytest.fixture
def gunicorn_admin(etcd_endpoint, cluster_prefix, tmp_path):
    """A real gunicorn (gevent worker) serving goverse.admin.wsgi:app for this cluster."""
    port = free_port()
    env = dict(os.environ, GOVERSE_ETCD_ENDPOINTS=etcd_endpoint,
               GOVERSE_ETCD_PREFIX=cluster_prefix,
               GOVERSE_ADMIN_BIND="127.0.0.1:%d" % port, PYTHONPATH=ROOT)
    log_file = open(tmp_path / "gunicorn.log", "wb")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "-c",
         os.path.join(ROOT, "etc", "gunicorn.conf.py"), "goverse.admin.wsgi:app"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
        stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:%d" % port

    def serving():
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited with %s" % process.returncode)
        return fetch(base + "/healthz")[0] == 200
    try:
        wait_until(serving, timeout=30, interval=0.2, message="gunicorn serving")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log_file.close()


def call_pinned(proc, name, value=1):
    """Add to a Counter pinned to a node process, through its own gRPC service."""
    object_id = "%s/%s" % (proc.address, name)
    request = pb.CallObjectRequest(id=object_id, type="Counter", method="Add",
                                   request=pack(Int64Value(value=value)))
    proc.stub().CallObject(request, timeout=10)
    return object_id


def test_admin_under_gunicorn_answers_for_the_whole_cluster(node_processes, gunicorn_admin,
                                                             tmp_path):
    procs = node_processes(2, extra_args=["--num-shards", str(NUM_SHARDS)])
    base = gunicorn_admin
    addresses = sorted(p.address for p in procs)

    def settled():
        shards = fetch_json(base + "/shards")[1]
        owners = {row["owner"] for row in shards["shards"]}
        return (fetch_json(base + "/ready")[0] == 200 and shards["moving"] == 0
                and owners == set(addresses))
    wait_until(settled, timeout=30, message="cluster ready and balanced, through gunicorn")
    ids = {proc.address: call_pinned(proc, "gunicorn-counter") for proc in procs}

    status = fetch_json(base + "/status")[1]
    assert status["mode"] == "cluster" and status["leader"] in addresses
    assert [n["address"] for n in status["nodes"]] == addresses
    assert status["objects"] == 2
    assert fetch_json(base + "/healthz") == (200, {"status": "ok"})

    nodes = fetch_json(base + "/nodes")[1]["nodes"]
    assert all("error" not in n and n["objects"] == 1 for n in nodes)
    assert sum(n["shards_owned"] for n in nodes) == NUM_SHARDS

    shards = fetch_json(base + "/shards")[1]
    assert shards["num_shards"] == NUM_SHARDS and shards["unowned"] == 0
    assert {row["owner"] for row in shards["shards"]} == set(addresses)

    listing = fetch_json(base + "/objects?type=Counter")[1]
    assert {(row["id"], row["node"]) for row in listing["objects"]} == {
        (object_id, address) for address, object_id in ids.items()}
    assert fetch_json(base + "/objects?type=Slow")[1]["total"] == 0
    for address, object_id in ids.items():
        detail = fetch_json(base + "/objects/" + urllib.request.quote(object_id, safe=""))[1]
        assert detail["node"] == address and detail["type"] == "Counter"
    assert fetch_json(base + "/objects/%s/none" % addresses[0])[0] == 404

    samples = metric_samples(base)
    assert [s.value for s in samples if s.name == "goverse_cluster_nodes"] == [2]
    per_node = {s.labels["node"]: s.value for s in samples
                if s.name == "goverse_cluster_node_objects"}
    assert per_node == {address: 1 for address in addresses}

    assert fetch_json(base + "/operations/op-1")[0] == 404
    assert fetch_json(base + "/nowhere")[0] == 404
    assert fetch(base + "/nodes", method="PUT")[0] == 405

    if CHROMIUM is not None:
        check_dashboard(tmp_path, base + "/", addresses, NUM_SHARDS,
                        "dashboard-cluster.png")

    # A node that cannot answer is marked, and the others still are listed.
    procs[1].kill()

    def marked():
        rows = {n["address"]: n for n in fetch_json(base + "/nodes")[1]["nodes"]}
        return "error" in rows.get(procs[1].address, {}) and "error" not in rows[
            procs[0].address]
    wait_until(marked, timeout=10, message="dead node marked with an error")


def test_silent_connections_cannot_hold_every_admin_slot(make_node, monkeypatch, capsys):
    import socket

    from goverse.admin import server as admin_server

    monkeypatch.setattr(admin_server, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(admin_server, "IDLE_TIMEOUT", 0.5)
    _, base = admin_node(make_node)
    port = int(base.rsplit(":", 1)[1])
    silent = []
    for _ in range(admin_server.MAX_CONNECTIONS):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # half a request head
        silent.append(sock)
    try:
        status, _, body = fetch(base + "/healthz")
        assert status == 200, body
        for sock in silent:  # each was closed by the server, not left waiting
            sock.settimeout(5)
            assert sock.recv(100) == b""
        assert "Traceback" not in capsys.readouterr().err
    finally:
        for sock in silent:
            sock.close()
