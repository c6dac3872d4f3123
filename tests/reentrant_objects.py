"""Object types for the reentrancy, context and operation tests."""

from __future__ import annotations

import gevent
from google.protobuf.wrappers_pb2 import DoubleValue, Int64Value, StringValue

import goverse
from goverse import callctx


@goverse.register
class Hop(goverse.BaseObject):
    """Calls along a path of ids; each hop appends its own id to the answer."""

    @goverse.method
    def Path(self, request: StringValue) -> StringValue:
        head, _, rest = request.value.partition(",")
        if not head:
            return StringValue(value=self.id)
        answer = goverse.call_object("Hop", head, "Path", StringValue(value=rest))
        return StringValue(value=self.id + ">" + answer.value)

    @goverse.method
    def Echo(self, request: StringValue) -> StringValue:
        return request

    @goverse.method
    def SelfCall(self, request: StringValue) -> StringValue:
        inner = goverse.call_object("Hop", self.id, "Echo", request)
        return StringValue(value="self:" + inner.value)

    @goverse.method
    def HoldThenCall(self, request: StringValue) -> StringValue:
        """Keep the turn a while, then call another object (deadlock bait)."""
        gevent.sleep(0.3)
        return goverse.call_object("Hop", request.value, "Echo", StringValue(value=self.id),
                                   timeout=1.5)

    @goverse.method
    def SlowRelay(self, request: StringValue) -> StringValue:
        """Work a second inside the turn, then call out (while a stop may begin)."""
        gevent.sleep(1.0)
        return goverse.call_object("Hop", request.value, "Echo", StringValue(value=self.id))

    @goverse.method
    def Hold(self, request: Int64Value) -> Int64Value:
        gevent.sleep(request.value / 1000.0)
        return request

    @goverse.method(interleave=True)
    def Peek(self, request: StringValue) -> StringValue:
        return StringValue(value="peek:" + self.id)

    @goverse.method
    def Remaining(self, request: StringValue) -> DoubleValue:
        return DoubleValue(value=callctx.remaining(-1.0))

    @goverse.method
    def ContextValue(self, request: StringValue) -> StringValue:
        return StringValue(value=str(goverse.context.get(request.value, "")))

    @goverse.method
    def TraceId(self, request: StringValue) -> StringValue:
        """The OpenTelemetry trace id this call runs under (hex), or empty."""
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        return StringValue(value="%032x" % context.trace_id if context.is_valid else "")

    @goverse.method
    def CreateChild(self, request: StringValue) -> StringValue:
        """Create ``request.value`` as a Child that calls back into this object."""
        goverse.context["creator"] = self.id
        wait = request.value.endswith("-sync")
        goverse.create_object("Child", request.value, wait=wait)
        return StringValue(value=request.value)


@goverse.register
class Child(goverse.BaseObject):
    """Calls its creator from on_created, and remembers what it saw."""

    def on_created(self) -> None:
        self.trace_id = goverse.context.get("trace_id", "")
        self.creator = goverse.context.get("creator", "")
        self.callback = ""
        if self.creator:
            answer = goverse.call_object("Hop", self.creator, "Echo",
                                         StringValue(value="from " + self.id))
            self.callback = answer.value

    @goverse.method
    def Seen(self, request: StringValue) -> StringValue:
        return StringValue(value="%s|%s|%s" % (self.trace_id, self.creator, self.callback))


@goverse.register
class Sleeper(goverse.BaseObject):
    """An on_created that takes long: its create stays pending."""

    def on_created(self) -> None:
        gevent.sleep(30)

    @goverse.method
    def Ping(self, request: StringValue) -> StringValue:
        return request
