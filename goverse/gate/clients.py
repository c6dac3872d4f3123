"""The clients connected to one gate, each with a bounded push buffer.

A client is registered for as long as its push stream (gRPC ``Register``
or the HTTP event stream) stays open. Messages that nodes push arrive on
the gate's node links and are offered to each addressed client's buffer
without ever waiting: a client that is gone, or whose buffer is full,
loses the message and the loss is counted. A slow reader therefore never
holds up a node's stream, nor the object that pushed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

from gevent.queue import Empty, Full, Queue

from .._pb import goverse_pb2 as pb

log = logging.getLogger(__name__)

_CLOSED = object()


class Client:
    """One registered client: its id and the messages waiting for it."""

    def __init__(self, client_id: str, buffer_size: int, kind: str) -> None:
        self.id = client_id
        self.kind = kind
        self._queue: Queue = Queue(buffer_size)
        self.closed = False
        self.delivered = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return "<Client %s %s queued=%d dropped=%d>" % (
            self.id, self.kind, self._queue.qsize(), self.dropped)

    def offer(self, message: Any) -> bool:
        """Queue ``message`` unless the buffer is full; never blocks."""
        if self.closed:
            return False
        try:
            self._queue.put_nowait(message)
        except Full:
            self.dropped += 1
            return False
        self.delivered += 1
        return True

    def next(self, timeout: float | None) -> Any:
        """The next message; None when ``timeout`` passes first.

        Raises :class:`EOFError` once the client was closed.
        """
        try:
            item = self._queue.get(timeout=timeout)
        except Empty:
            return None
        if item is _CLOSED:
            raise EOFError(self.id)
        return item

    def messages(self, poll: float, is_active: Any = None) -> Iterator[Any]:
        """Messages until the client is closed or ``is_active()`` turns false."""
        while is_active is None or is_active():
            try:
                item = self.next(poll)
            except EOFError:
                return
            if item is not None:
                yield item

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Wake a reader waiting on an empty queue; a full queue needs no
        # wake-up (its reader is not waiting), and ``next`` stops at the marker.
        try:
            self._queue.put_nowait(_CLOSED)
        except Full:
            self._queue = Queue(1)
            self._queue.put_nowait(_CLOSED)


class ClientRegistry:
    """Clients of one gate by id, and what happened to the pushes for them."""

    def __init__(self, gate_address: str, buffer_size: int) -> None:
        self.gate_address = gate_address
        self.buffer_size = buffer_size
        self._clients: dict[str, Client] = {}
        self.counts = {"registered": 0, "delivered": 0, "dropped_no_client": 0,
                       "dropped_full": 0, "envelopes": 0}

    def __len__(self) -> int:
        return len(self._clients)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._clients

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def ids(self) -> list[str]:
        return sorted(self._clients)

    def register(self, kind: str = "grpc") -> Client:
        """A new client with an id ``<gate-address>/<unique>``."""
        client = Client("%s/%s" % (self.gate_address, uuid.uuid4().hex), self.buffer_size,
                        kind)
        self._clients[client.id] = client
        self.counts["registered"] += 1
        log.info("gate %s: client %s registered (%s)", self.gate_address, client.id, kind)
        return client

    def unregister(self, client: Client) -> None:
        client.close()
        if self._clients.get(client.id) is client:
            del self._clients[client.id]
            log.info("gate %s: client %s left (%d delivered, %d dropped)",
                     self.gate_address, client.id, client.delivered, client.dropped)

    def close(self) -> None:
        for client in list(self._clients.values()):
            self.unregister(client)

    def deliver(self, envelope: pb.GateMessage) -> int:
        """Offer a node's envelope to its clients; returns how many took it."""
        self.counts["envelopes"] += 1
        if envelope.broadcast:
            targets = list(self._clients.values())
        else:
            targets = []
            for client_id in envelope.client_ids:
                client = self._clients.get(client_id)
                if client is None:
                    self.counts["dropped_no_client"] += 1
                    log.debug("gate %s: push to %s dropped: no such client",
                              self.gate_address, client_id)
                else:
                    targets.append(client)
        return sum(self._offer(client, envelope.message) for client in targets)

    def _offer(self, client: Client, message: Any) -> int:
        if client.offer(message):
            self.counts["delivered"] += 1
            return 1
        self.counts["dropped_full"] += 1
        if client.dropped == 1 or client.dropped % 1000 == 0:
            log.warning("gate %s: client %s reads too slowly; %d pushes dropped so far "
                        "(buffer of %d)", self.gate_address, client.id, client.dropped,
                        self.buffer_size)
        return 0

    def statistics(self) -> dict[str, Any]:
        return dict(self.counts, clients=len(self._clients))
