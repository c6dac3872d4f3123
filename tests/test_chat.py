"""The chat sample end to end: Python clients, an independent client, a browser.

Two node processes host ``ChatRoom`` objects; a gate in this process serves
gRPC, the HTTP API and the chat page under ``/chat/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

import goverse
from goverse import errors
from goverse.client import Client
from goverse.gate import Gate
from goverse.testing import ROOT, wait_until
from examples.chat import chat_pb2 as chat
from tests.gate_cluster import http, start_nodes, start_settled, unpack

STATIC_DIR = os.path.join(ROOT, "examples", "chat", "static")
THIRDPARTY_CLIENT = os.path.join(ROOT, "tests", "thirdparty", "chat_client.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def gate(etcd_endpoint, tmp_path_factory):
    prefix = "/goverse-test/%s" % uuid.uuid4().hex
    nodes = start_nodes(etcd_endpoint, prefix, 2, tmp_path_factory.mktemp("chat-nodes"))
    gate = None
    try:
        gate = Gate(goverse.Settings.from_mapping({
            "etcd_endpoints": [etcd_endpoint], "etcd_prefix": prefix,
            "listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0", "stability_window": 0.2,
            "http_static_dir": STATIC_DIR, "http_static_prefix": "/chat/"}))
        yield start_settled(gate)
    finally:
        if gate is not None:
            gate.stop(grace=1)
        for node in nodes:
            node.close()


def room_name() -> str:
    return "room-%s" % uuid.uuid4().hex[:8]


def members(gate, room):
    with Client([gate.address]) as client:
        return list(client.call("ChatRoom", room, "Members", chat.MembersRequest(),
                                chat.MembersResponse).names)


def test_chat_between_python_clients(gate):
    room = room_name()
    with Client([gate.address]) as ada, Client([gate.address]) as bob:
        ada.register()
        bob.register()
        assert ada.call("ChatRoom", room, "Join", chat.JoinRequest(name="ada"),
                        chat.JoinResponse).members == 1
        bob.call("ChatRoom", room, "Join", chat.JoinRequest(name="bob"), chat.JoinResponse)
        sent = ada.call("ChatRoom", room, "Send", chat.SendRequest(text="hi bob"),
                        chat.SendResponse)
        assert sent.seq == 1 and sent.delivered == 1  # one envelope: one gate

        for client in (ada, bob):
            message = unpack(client.next_message(timeout=10), chat.ChatMessage)
            assert (message.room, message.name, message.text) == (room, "ada", "hi bob")

        bob.call("ChatRoom", room, "Leave", chat.LeaveRequest(), chat.LeaveResponse)
        ada.call("ChatRoom", room, "Send", chat.SendRequest(text="gone?"), chat.SendResponse)
        assert unpack(ada.next_message(timeout=10), chat.ChatMessage).text == "gone?"
        with pytest.raises(errors.CallTimeout):
            bob.next_message(timeout=0.5)
        with pytest.raises(errors.ObjectMethodError, match="has not joined"):
            bob.call("ChatRoom", room, "Send", chat.SendRequest(text="x"))

        carol = Client([gate.address])
        carol.register()
        history = carol.call("ChatRoom", room, "Join", chat.JoinRequest(name="carol"),
                             chat.JoinResponse).history
        assert [m.text for m in history] == ["hi bob", "gone?"]
        carol.close()


def test_chat_page_is_served_by_the_gate(gate):
    base = "http://%s/chat/" % gate.http_address
    status, headers, body = http("GET", base)
    assert status == 200 and b"goverse chat" in body
    for script in ("chat.js", "proto.js"):
        status, headers, body = http("GET", base + script)
        assert status == 200 and "javascript" in headers["Content-Type"]
    assert http("GET", "http://%s/chat" % gate.http_address)[0] == 200  # redirected


def test_independent_client_drives_the_chat(gate):
    # Its own gate.proto would clash with goverse's in one descriptor pool:
    # it runs in a process of its own, without goverse on its path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, THIRDPARTY_CLIENT, "--grpc", gate.address,
                           "--http", gate.http_address], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(THIRDPARTY_CLIENT), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chat ok" in done.stdout


def output_dir(tmp_path) -> str:
    """Where pictures go: $GOVERSE_TEST_OUTPUT or the test's tmp dir."""
    path = os.path.join(os.environ.get("GOVERSE_TEST_OUTPUT") or str(tmp_path), "test-output")
    os.makedirs(path, exist_ok=True)
    return path


def chromium(tmp_path, url: str, budget_ms: int, *extra: str) -> subprocess.Popen:
    profile = tmp_path / ("chromium-profile-%d" % time.monotonic_ns())
    profile.mkdir()
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-default-apps",
               "--disable-extensions", "--disable-dev-shm-usage", "--no-pings",
               "--user-data-dir=%s" % profile, "--virtual-time-budget=%d" % budget_ms,
               *extra, "--dump-dom", url]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def finish(browser: subprocess.Popen) -> str:
    try:
        out, err = browser.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        browser.kill()
        out, err = browser.communicate()
    assert browser.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs "
                    "Debian's chromium package; locally: apt-get install chromium)")
def test_chat_page_in_headless_chromium(gate, tmp_path):
    room = room_name()
    base = "http://%s/chat/?room=%s" % (gate.http_address, room)
    picture = os.path.join(output_dir(tmp_path), "chat-receiver.png")
    # Each page closes its event stream once it has shown one message
    # (until=1): the browser then sees a finished page and dumps it.
    receiver = chromium(tmp_path, base + "&name=bob&until=1", 10000,
                        "--window-size=900,600", "--screenshot=%s" % picture)
    sender = None
    try:
        wait_until(lambda: members(gate, room) == ["bob"], 60, interval=0.2,
                   message="the receiving page joined")
        sender = chromium(tmp_path, base + "&name=alice&send=hello%20from%20chromium&until=1",
                          5000)
        sent_dom = finish(sender)
        received_dom = finish(receiver)
    finally:
        for browser in (receiver, sender):
            if browser is not None and browser.poll() is None:
                browser.kill()
                browser.wait()

    expected = '<span class="name">alice:</span>hello from chromium'
    assert expected in received_dom, received_dom[-3000:]
    assert expected in sent_dom, sent_dom[-3000:]
    assert 'data-done="true"' in received_dom
    assert os.path.getsize(picture) > 0


def test_run_with_its_port_taken_says_so_and_leaves_nothing_behind(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    address = "127.0.0.1:%d" % taken.getsockname()[1]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "examples.chat.run", "--http", address], cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path)),
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    finally:
        taken.close()
    assert done.returncode == 1, done.stderr
    assert "cannot listen on %s (--http)" % address in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []



def test_run_stops_everything_on_sigterm_and_removes_its_logs(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.chat.run", "--http", "127.0.0.1:0", "--nodes", "1"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp_path)),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if line.startswith("chat is up"):
                break
        assert line.startswith("chat is up"), line
        assert any(tmp_path.iterdir())  # the node logs, while it runs
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            print(process.communicate()[0][-3000:])
    assert process.returncode == 0, output
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("goverse-chat-")] == []
