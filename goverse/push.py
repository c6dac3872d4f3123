"""Push messages from objects to clients connected to gates.

A client id has the form ``<gate-address>/<unique-id>``. Every gate keeps
one ``RegisterGate`` stream open to every node; :class:`GateLinks` holds,
per connected gate, a bounded queue of :class:`GateMessage` envelopes that
the stream drains. A push to several clients sends one envelope per gate,
not one per client. Delivery is best effort and counted: a push to a gate
that is not connected, or whose queue is full, is dropped, never waited on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from gevent.queue import Empty, Full, Queue

from ._pb import goverse_pb2 as pb
from .errors import InvalidObjectId
from .transport import pack

log = logging.getLogger(__name__)

_CLOSE = object()


def gate_of(client_id: str) -> str:
    """The gate address part of a client id."""
    if not isinstance(client_id, str):
        raise InvalidObjectId("client id %r is not a string" % (client_id,))
    gate, sep, rest = client_id.partition("/")
    if not sep or not gate or not rest:
        raise InvalidObjectId("client id %r is not of the form <gate-address>/<id>" % (
            client_id[:200],))
    return gate


class GateLinks:
    """The gates connected to this node and what waits to be sent to them."""

    def __init__(self, queue_size: int = 10000) -> None:
        self._queues: dict[str, Queue] = {}
        self._queue_size = queue_size
        self.counts = {"sent": 0, "dropped_no_gate": 0, "dropped_full": 0,
                       "dropped_bad_id": 0}

    def gates(self) -> list[str]:
        return sorted(self._queues)

    def stream(self, gate: str, is_active: Any) -> Iterator[pb.GateMessage]:
        """Messages for ``gate`` until it disconnects (a new stream replaces an old one)."""
        queue: Queue = Queue(self._queue_size)
        previous = self._queues.get(gate)
        if previous is not None:
            previous.put(_CLOSE)
        self._queues[gate] = queue
        log.info("gate %s connected for pushes", gate)
        try:
            while is_active():
                # Wake up every second to notice a gate that went away
                # without a word (its pushes then count as undeliverable).
                try:
                    item = queue.get(timeout=1.0)
                except Empty:
                    continue
                if item is _CLOSE:
                    return
                yield item
        finally:
            if self._queues.get(gate) is queue:
                del self._queues[gate]
            log.info("gate %s disconnected", gate)

    def close(self) -> None:
        for queue in list(self._queues.values()):
            queue.put(_CLOSE)

    def push(self, client_ids: Iterable[str], message: Any) -> int:
        """Send ``message`` to each client; returns how many gates took it.

        A malformed client id (client ids come from outside, through the
        gates, unchecked) is dropped and counted like any undeliverable
        push: one bad member must not silence a push to all the others.
        """
        by_gate: dict[str, list[str]] = {}
        for client_id in client_ids:
            try:
                gate = gate_of(client_id)
            except InvalidObjectId as exc:
                self.counts["dropped_bad_id"] += 1
                log.warning("push dropped for one client: %s", exc)
                continue
            by_gate.setdefault(gate, []).append(client_id)
        packed = pack(message)
        return sum(self._offer(gate, pb.GateMessage(client_ids=ids, message=packed), len(ids))
                   for gate, ids in by_gate.items())

    def broadcast(self, message: Any) -> int:
        """Send ``message`` to every client of every connected gate."""
        envelope = pb.GateMessage(message=pack(message), broadcast=True)
        return sum(self._offer(gate, envelope, 1) for gate in list(self._queues))

    def _offer(self, gate: str, envelope: pb.GateMessage, clients: int) -> int:
        queue = self._queues.get(gate)
        if queue is None:
            self.counts["dropped_no_gate"] += clients
            log.debug("push to %d clients of %s dropped: gate not connected", clients, gate)
            return 0
        try:
            queue.put_nowait(envelope)
        except Full:
            self.counts["dropped_full"] += clients
            log.warning("push to %d clients of %s dropped: the gate's queue is full",
                        clients, gate)
            return 0
        self.counts["sent"] += clients
        return 1
