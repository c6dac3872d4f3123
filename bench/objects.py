"""Object types the benchmarks host (imported by bench node processes too)."""

from __future__ import annotations

import time

from google.protobuf.wrappers_pb2 import DoubleValue, Int64Value, StringValue

import goverse


@goverse.register
class BenchCounter(goverse.BaseObject):
    """The call target: adds the request to a total and returns it."""

    def __init__(self) -> None:
        self.total = 0

    @goverse.method
    def Add(self, request: Int64Value) -> Int64Value:
        self.total += request.value
        return Int64Value(value=self.total)


@goverse.register
class BenchIdle(goverse.BaseObject):
    """The memory probe: one small field, as a typical idle object has."""

    def __init__(self) -> None:
        self.value = 0

    @goverse.method
    def Get(self, request: Int64Value) -> Int64Value:
        return Int64Value(value=self.value)


@goverse.register
class BenchFanout(goverse.BaseObject):
    """The push source: holds a list of gate clients and pushes rounds to them.

    Each push method answers with the ``time.monotonic()`` taken just before
    its first push, so that the caller, on the same machine, can measure
    from there to each client's arrival (Linux's monotonic clock is the same
    in every process).
    """

    def __init__(self) -> None:
        self.members: list[str] = []

    @goverse.method
    def SetMembers(self, request: StringValue) -> Int64Value:
        """Replace the members with the comma-separated client ids."""
        self.members = [m for m in request.value.split(",") if m]
        return Int64Value(value=len(self.members))

    @goverse.method
    def PushAll(self, request: Int64Value) -> DoubleValue:
        """One push_message for every member: one envelope per gate."""
        started = time.monotonic()
        goverse.push_message(self.members, request)
        return DoubleValue(value=started)

    @goverse.method
    def PushEach(self, request: Int64Value) -> DoubleValue:
        """One push_message per member: one envelope per client."""
        started = time.monotonic()
        for member in self.members:
            goverse.push_message(member, request)
        return DoubleValue(value=started)
