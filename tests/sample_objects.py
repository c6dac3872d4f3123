"""Object types used by the test suite (imported by test node processes too)."""

from __future__ import annotations

import time

import gevent
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

import goverse


@goverse.register
class Counter(goverse.BaseObject):
    """Adds numbers; records its node so tests can see where it lives."""

    def __init__(self) -> None:
        self.total = 0

    @goverse.method
    def Add(self, request: Int64Value) -> Int64Value:
        self.total += request.value
        return Int64Value(value=self.total)

    @goverse.method
    def Get(self, request: Int64Value) -> Int64Value:
        return Int64Value(value=self.total)

    @goverse.method
    def Where(self, request: StringValue) -> StringValue:
        return StringValue(value=goverse.current_node().address)

    @goverse.method
    def Context(self, request: StringValue) -> StringValue:
        return StringValue(value=str(goverse.context.get(request.value, "")))

    @goverse.method
    def Blob(self, request: Int64Value) -> BytesValue:
        return BytesValue(value=b"b" * request.value)

    @goverse.method
    def Exit(self, request: StringValue) -> StringValue:
        raise SystemExit(3)  # an object's bug must not end its node

    @goverse.method
    def Spin(self, request: Int64Value) -> Int64Value:
        """Hold the event loop for ``request.value`` ms without yielding (a bug)."""
        end = time.monotonic() + request.value / 1000.0
        while time.monotonic() < end:
            pass
        return request

    @goverse.method
    def Raise(self, request: StringValue) -> StringValue:
        """Raise what is named, from gevent: a bug, not a kill or a caller's timeout."""
        if request.value == "GreenletExit":
            raise gevent.GreenletExit()
        raise gevent.Timeout(0.5)


@goverse.register
class Slow(goverse.BaseObject):
    """Sleeps inside its turn; counts how many calls overlap."""

    def __init__(self) -> None:
        self.active = 0
        self.max_active = 0
        self.order: list[int] = []

    @goverse.method
    def Work(self, request: Int64Value) -> Int64Value:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.order.append(request.value)
        gevent.sleep(0.01)
        self.active -= 1
        return Int64Value(value=self.max_active)

    @goverse.method
    def Order(self, request: Int64Value) -> StringValue:
        return StringValue(value=",".join(map(str, self.order)))


@goverse.register
class Spawner(goverse.BaseObject):
    """Creates and deletes other objects from inside its methods and hooks."""

    def on_created(self) -> None:
        if self.id.startswith("spawn-on-create-"):
            goverse.create_object("Counter", "child-of-" + self.id)

    @goverse.method
    def Create(self, request: StringValue) -> StringValue:
        return StringValue(value=goverse.create_object("Counter", request.value or None))

    @goverse.method
    def Delete(self, request: StringValue) -> StringValue:
        goverse.delete_object(request.value)
        return StringValue(value=request.value)

    @goverse.method
    def CallOther(self, request: StringValue) -> Int64Value:
        return goverse.call_object("Counter", request.value, "Add", Int64Value(value=1))


@goverse.register
class SlowStart(goverse.BaseObject):
    """An on_created that takes a while, to test that calls wait for it."""

    created_count = 0

    def __init__(self) -> None:
        self.ready = False

    def on_created(self) -> None:
        type(self).created_count += 1
        gevent.sleep(0.2)
        self.ready = True

    @goverse.method
    def IsReady(self, request: StringValue) -> StringValue:
        return StringValue(value="yes" if self.ready else "no")


@goverse.register
class FailingStart(goverse.BaseObject):
    def on_created(self) -> None:
        raise RuntimeError("refusing to start")

    @goverse.method
    def Ping(self, request: StringValue) -> StringValue:
        return request


@goverse.register
class Tally(goverse.BaseObject):
    """Counts instances and on_created runs per id, to test creation races."""

    instances: dict[str, int] = {}
    creations: dict[str, int] = {}

    def __init__(self) -> None:
        Tally.instances[self.id] = Tally.instances.get(self.id, 0) + 1

    def on_created(self) -> None:
        gevent.sleep(0.05)
        Tally.creations[self.id] = Tally.creations.get(self.id, 0) + 1

    @goverse.method
    def Count(self, request: StringValue) -> Int64Value:
        return Int64Value(value=Tally.creations.get(self.id, 0))
