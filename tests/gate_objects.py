"""Object types the gate tests push with (imported by test node processes)."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value, StringValue

import goverse


@goverse.register
class Pusher(goverse.BaseObject):
    """Pushes StringValue messages to clients on request."""

    @goverse.method
    def ToCaller(self, request: StringValue) -> Int64Value:
        """Push the text to the client that made the call."""
        return Int64Value(value=goverse.push_message(goverse.client_id(), request))

    @goverse.method
    def ToClients(self, request: StringValue) -> Int64Value:
        """``"<text>|<client id>,<client id>..."``: push the text to those clients."""
        text, _, ids = request.value.partition("|")
        return Int64Value(value=goverse.push_message(ids.split(","), StringValue(value=text)))

    @goverse.method
    def ToAll(self, request: StringValue) -> Int64Value:
        return Int64Value(value=goverse.broadcast(request))

    @goverse.method
    def Flood(self, request: Int64Value) -> Int64Value:
        """Push ``request.value`` numbered messages to the caller, as fast as possible."""
        client = goverse.client_id()
        for n in range(request.value):
            goverse.push_message(client, StringValue(value="flood-%d" % n))
        return request

    @goverse.method
    def Fail(self, request: StringValue) -> StringValue:
        raise RuntimeError("failing on purpose: %s" % request.value)
