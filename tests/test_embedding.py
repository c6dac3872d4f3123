"""Embedding goverse in an existing gevent WSGI app, and the patching contract."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from goverse.testing import ROOT, free_port, wait_until


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def embedded_app(etcd_endpoint, cluster_prefix, tmp_path):
    """examples/embedded/app.py in a child process, against the test etcd."""
    port = free_port()
    log_path = tmp_path / "embedded-app.log"
    log_file = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.embedded.app", "--http", "127.0.0.1:%d" % port,
         "--listen", "127.0.0.1:0", "--etcd-endpoints", etcd_endpoint,
         "--etcd-prefix", cluster_prefix, "--stability-window", "0.2",
         "--num-shards", "64"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
        stdout=log_file, stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:%d" % port

    def serving():
        if process.poll() is not None:
            raise RuntimeError("the embedded app exited with %s:\n%s" % (
                process.returncode, log_path.read_text()[-3000:]))
        return fetch(base + "/goverse/healthz")[0] == 200
    try:
        wait_until(serving, timeout=60, interval=0.2, message="embedded app serving")
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        log_file.close()


def test_embedded_app_serves_its_handlers_and_the_admin(embedded_app):
    base, process = embedded_app

    for expected in (1, 2, 3):
        status, _, body = fetch(base + "/count/apples")
        assert (status, body) == (200, b"apples %d\n" % expected)
    assert fetch(base + "/count/pears")[2] == b"pears 1\n"
    assert fetch(base + "/count/caf%C3%A9")[2] == "café 1\n".encode()
    assert fetch(base + "/nothing-here")[0] == 404

    status, headers, body = fetch(base + "/goverse/healthz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert headers["Content-Type"] == "application/json"
    assert fetch(base + "/goverse/ready")[0] == 200

    listing = json.loads(fetch(base + "/goverse/objects?type=PathCounter")[2])
    assert sorted(row["id"] for row in listing["objects"]) == ["path:apples", "path:café", "path:pears"]
    detail = json.loads(fetch(base + "/goverse/objects/path:apples")[2])
    assert detail["calls_served"] == 3 and detail["type"] == "PathCounter"

    status, headers, _ = fetch(base + "/goverse/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    status, _, body = fetch(base + "/goverse/no-such-endpoint")
    assert status == 404 and json.loads(body)["code"] == 404

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def run_app(*args, etcd_endpoint, cluster_prefix):
    return subprocess.Popen(
        [sys.executable, "-m", "examples.embedded.app", "--listen", "127.0.0.1:0",
         "--etcd-endpoints", etcd_endpoint, "--etcd-prefix", cluster_prefix,
         "--stability-window", "0.2", "--num-shards", "64", *args],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_embedded_app_with_its_port_taken_exits_with_a_message(etcd_endpoint,
                                                                cluster_prefix):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    process = run_app("--http", "127.0.0.1:%d" % port, etcd_endpoint=etcd_endpoint,
                      cluster_prefix=cluster_prefix)
    try:
        # Before the fix the program never exited: no deadline to meet here,
        # only a bound on how long a hang is waited for.
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail("the app did not exit with its port taken:\n" + output[-3000:])
    finally:
        taken.close()
    assert process.returncode == 1, output
    assert "cannot listen for HTTP on 127.0.0.1:%d" % port in output
    assert "Traceback" not in output


def test_sigterm_while_the_node_starts_stops_it(etcd_endpoint, cluster_prefix):
    # Membership must hold still for 300 s before the node is ready: it
    # stays in its start until the signal.
    process = run_app("--http", "127.0.0.1:0", "--stability-window", "300",
                      etcd_endpoint=etcd_endpoint, cluster_prefix=cluster_prefix)
    try:
        for line in process.stdout:
            if "serving gRPC" in line:  # logged by the node's start
                break
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:  # it did not stop: show what it said
            process.kill()
            print(process.communicate()[0][-3000:])
    assert process.returncode == 0, output
    assert "signal received while the node was starting" in output


UNPATCHED = """
import sys
import goverse
node = goverse.Node(goverse.Settings.from_mapping(
    {"etcd_endpoints": [sys.argv[1]], "listen": "127.0.0.1:0"}))
try:
    node.start()
except goverse.NotPatched as exc:
    print("NotPatched:", exc)
    sys.exit(3)
sys.exit(0)
"""


def test_starting_a_node_in_an_unpatched_process_raises_not_patched(etcd_endpoint):
    result = subprocess.run([sys.executable, "-c", UNPATCHED, etcd_endpoint], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    output = result.stdout.decode()
    assert result.returncode == 3, (output, result.stderr.decode()[-2000:])
    assert "goverse.runtime.patch()" in output
    assert "before other imports" in output


def test_importing_goverse_does_not_patch():
    check = ("import goverse, goverse.admin, goverse.node\n"
             "from gevent import monkey\n"
             "print(monkey.is_module_patched('socket'))\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.stdout.decode().strip() == "False", result.stderr.decode()[-2000:]
