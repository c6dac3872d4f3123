"""A gate's push links: one ``RegisterGate`` stream to every node.

Objects push to clients through the node they run on, so a gate listens
to every node of the cluster. :class:`NodeLinks` follows the membership
the gate's cluster view reports: it opens a :class:`NodeLink` for a node
that joins and closes the link of a node that leaves. Each link is one
greenlet that keeps its stream open, reconnecting with exponential backoff
when the stream breaks (a node restarting at the same address comes back
on the same link).
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable

import gevent
import grpc
from gevent.event import Event

from .._pb import goverse_pb2 as pb
from .._pb import goverse_pb2_grpc as pb_grpc
from ..transport import channel_options

log = logging.getLogger(__name__)

#: First and longest pause before reopening a broken stream, in seconds.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 2.0


class NodeLink:
    """The push stream from one node to this gate, kept open until closed."""

    def __init__(self, gate_address: str, node_address: str, *,
                 deliver: Callable[[pb.GateMessage], Any], max_message_bytes: int,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.gate_address = gate_address
        self.node_address = node_address
        self._deliver = deliver
        self._credentials = credentials
        # A channel of its own per attempt, with no reconnect backoff shared
        # with other channels: a node that restarts is linked again at once.
        self._options = channel_options(max_message_bytes) + [
            ("grpc.use_local_subchannel_pool", 1)]
        self._call: Any = None
        self._closed = False
        self.connected = Event()
        self.statistics = {"connects": 0, "messages": 0, "failures": 0}

    def __repr__(self) -> str:
        state = "connected" if self.connected.is_set() else "connecting"
        return "<NodeLink %s->%s %s>" % (self.node_address, self.gate_address, state)

    def run(self) -> None:
        """Keep the stream open until :meth:`close`; the link's greenlet body."""
        backoff = BACKOFF_MIN
        while not self._closed:
            started = time.monotonic()
            self._stream_once()
            if self._closed:
                return
            # A stream that stayed up for a while was healthy: start over
            # with short pauses. One that keeps failing backs off.
            if time.monotonic() - started > BACKOFF_MAX:
                backoff = BACKOFF_MIN
            gevent.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _stream_once(self) -> None:
        if self._credentials is not None:
            channel = grpc.secure_channel(self.node_address, self._credentials,
                                          options=self._options)
        else:
            channel = grpc.insecure_channel(self.node_address, options=self._options)
        try:
            stub = pb_grpc.GoverseStub(channel)
            call = stub.RegisterGate(pb.RegisterGateRequest(gate_addr=self.gate_address))
            self._call = call
            if self._closed:
                return
            # The node sends its headers once it has registered this gate.
            call.initial_metadata()
            self._connected()
            for envelope in call:
                self.statistics["messages"] += 1
                self._deliver(envelope)
            log.info("%r: the node ended the stream", self)
        except grpc.RpcError as exc:
            if not self._closed:
                self.statistics["failures"] += 1
                log.info("%r: stream failed (%s: %s); reconnecting", self,
                         exc.code().name if exc.code() else "?", exc.details())
        finally:
            self.connected.clear()
            self._call = None
            channel.close()

    def _connected(self) -> None:
        self.statistics["connects"] += 1
        self.connected.set()
        log.info("%r: receiving pushes", self)

    def close(self) -> None:
        self._closed = True
        call = self._call
        if call is not None:
            call.cancel()


class NodeLinks:
    """Links to every node the cluster view lists; follows joins and leaves."""

    def __init__(self, gate_address: str, *, group: Any,
                 deliver: Callable[[pb.GateMessage], Any], max_message_bytes: int,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.gate_address = gate_address
        self._group = group
        self._deliver = deliver
        self._max_message_bytes = max_message_bytes
        self._credentials = credentials
        self._links: dict[str, tuple[NodeLink, gevent.Greenlet]] = {}

    def __repr__(self) -> str:
        return "<NodeLinks %s links=%d>" % (self.gate_address, len(self._links))

    def addresses(self) -> list[str]:
        return sorted(self._links)

    def link(self, node_address: str) -> NodeLink | None:
        entry = self._links.get(node_address)
        return entry[0] if entry is not None else None

    def all_connected(self, nodes: Any) -> bool:
        """True when a connected link exists for every address in ``nodes``."""
        for address in nodes:
            link = self.link(address)
            if link is None or not link.connected.is_set():
                return False
        return True

    def sync(self, nodes: Any) -> None:
        """Open links to new nodes in ``nodes`` and close those to departed ones."""
        wanted = set(nodes)
        for address in wanted - set(self._links):
            link = NodeLink(self.gate_address, address, deliver=self._deliver,
                            max_message_bytes=self._max_message_bytes,
                            credentials=self._credentials)
            self._links[address] = (link, self._group.spawn(link.run))
            log.info("gate %s: linking to node %s", self.gate_address, address)
        for address in set(self._links) - wanted:
            self._close(address)
            log.info("gate %s: node %s left; link closed", self.gate_address, address)

    def close(self) -> None:
        for address in list(self._links):
            self._close(address)

    def _close(self, address: str) -> None:
        link, greenlet = self._links.pop(address)
        link.close()
        greenlet.kill(block=True, timeout=2)

    def statistics(self) -> dict[str, Any]:
        return {address: dict(link.statistics, connected=link.connected.is_set())
                for address, (link, _) in sorted(self._links.items())}
