"""Object types the benchmarks host (imported by bench node processes too)."""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value

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
