"""Local activations: the objects one node hosts, and their turns.

An :class:`ObjectHost` creates, calls and deletes objects in this process.
It knows nothing about routing: the node asks it only for ids whose shard
it owns, and the host asks ``accepts(shard)`` once more before it
activates anything, so an object is never activated in a shard that is
moving away.

Turns. One call runs on an object at a time. The turn belongs to a
call-chain id; a call whose chain already holds the turn enters at once
(A calls B calls A completes). Others queue FIFO and the turn is handed
directly to the head of the queue, so a late caller cannot barge in. The
state lives in slots of the object itself and the waiting queue exists
only while someone waits: no greenlet and no lock object per idle object.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable

from gevent.event import Event

from . import callctx as context
from .errors import (
    CallTimeout,
    GoverseError,
    NotOwner,
    ObjectCreationFailed,
    ObjectMethodError,
    ObjectNotFound,
    ObjectTypeMismatch,
)
from .objects import BaseObject, TypeRegistry, lookup_method

log = logging.getLogger(__name__)

#: What an object's code may raise and have reported as its own failure.
#: SystemExit is one of them: raised in a greenlet it would end the whole
#: node process. GreenletExit and gevent.Timeout are not, since they come
#: from outside (a kill at stop, a caller's own timeout) and must go on.
_OBJECT_ERRORS = (Exception, SystemExit)


class _Waiter:
    __slots__ = ("chain", "event", "granted")

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.event = Event()
        self.granted = False


def acquire_turn(obj: BaseObject, chain: str, deadline: float | None, what: str) -> None:
    """Take ``obj``'s turn for ``chain``, waiting FIFO until ``deadline``."""
    holder = obj._gv_holder
    if holder is None:
        obj._gv_holder = chain
        obj._gv_depth = 1
        return
    if holder == chain:
        obj._gv_depth += 1
        return
    _wait_for_turn(obj, chain, deadline, what)


def _wait_for_turn(obj: BaseObject, chain: str, deadline: float | None, what: str) -> None:
    waiter = _Waiter(chain)
    if obj._gv_waiters is None:
        obj._gv_waiters = deque()
    obj._gv_waiters.append(waiter)
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    waiter.event.wait(timeout)
    if waiter.granted:
        return
    obj._gv_waiters.remove(waiter)
    if not obj._gv_waiters:
        obj._gv_waiters = None
    raise CallTimeout("%s timed out after waiting for the turn of %r, held by call chain %s%s" % (
        what, obj, obj._gv_holder, _caller_note()))


def _caller_note() -> str:
    caller = context.current_object()
    return " (the waiting call came from %s)" % caller if caller else ""


def release_turn(obj: BaseObject) -> None:
    """Give back one level of the turn; hand it to the next waiter at zero."""
    obj._gv_depth -= 1
    if obj._gv_depth > 0:
        return
    waiters = obj._gv_waiters
    if not waiters:
        obj._gv_holder = None
        obj._gv_waiters = None
        return
    waiter = waiters.popleft()
    if not waiters:
        obj._gv_waiters = None
    obj._gv_holder = waiter.chain
    obj._gv_depth = 1
    waiter.granted = True
    waiter.event.set()


class ObjectHost:
    """The objects active in this process, keyed by id."""

    def __init__(
        self,
        registry: TypeRegistry,
        *,
        accepts: Callable[[int | None], bool],
        on_activation: Callable[[BaseObject, str], None] | None = None,
        default_timeout: float = 30.0,
        stats: Any = None,
        owner: Any = None,
    ) -> None:
        self.registry = registry
        #: The node these objects belong to (what goverse.call_object uses
        #: from inside their methods).
        self.owner = owner
        self.stats = stats
        self.objects: dict[str, BaseObject] = {}
        self._accepts = accepts
        self._on_activation = on_activation
        self._default_timeout = default_timeout
        self.calls_served = 0
        #: Method calls executing right now (a stopping node waits for them).
        self.running = 0

    def __len__(self) -> int:
        return len(self.objects)

    # ---- create ----------------------------------------------------------

    def create(self, type_name: str, object_id: str, shard: int | None) -> BaseObject:
        """Create the object, or find the one that exists; idempotent.

        Returns once ``on_created`` has finished (in whichever greenlet ran
        it). A different type under the same id is an error.
        """
        while True:
            obj = self.objects.get(object_id)
            if obj is None:
                return self._activate(type_name, object_id, shard)
            if obj._gv_type != type_name:
                raise ObjectTypeMismatch("object %r exists with type %r, not %r" % (
                    object_id, obj._gv_type, type_name))
            if self._await_created(obj):
                return obj

    def _await_created(self, obj: BaseObject) -> bool:
        """Wait until ``obj``'s creation finished; False if it failed meanwhile."""
        if obj._gv_holder is None or obj._gv_holder == context.call_chain():
            return not obj._gv_dead
        chain = context.ensure_call_chain()
        acquire_turn(obj, chain, self._deadline(), "create of %r" % (obj,))
        release_turn(obj)
        return not obj._gv_dead

    def _activate(self, type_name: str, object_id: str, shard: int | None) -> BaseObject:
        cls = self.registry.get(type_name)
        if not self._accepts(shard):
            raise NotOwner("this node does not accept new objects in shard %s (for %r)" % (
                shard, object_id))
        obj = _instantiate(cls, type_name, object_id, shard)
        obj._gv_node = self.owner
        chain = context.ensure_call_chain()

        # NOTE: the object is visible in ``objects`` while on_created runs,
        # with its turn held by the creating chain. Other creators and
        # callers queue on the turn, so nothing runs before on_created ends,
        # and a second create of the same id finds this instance.
        self.objects[object_id] = obj
        obj._gv_holder = chain
        obj._gv_depth = 1
        try:
            self._run_on_created(obj)
        finally:
            release_turn(obj)
        return obj

    def _run_on_created(self, obj: BaseObject) -> None:
        try:
            obj.__init__()
            if self._on_activation is not None:
                self._on_activation(obj, "activate")
            token = context._current_object.set(obj)
            try:
                obj.on_created()
            finally:
                context._current_object.reset(token)
        except BaseException as exc:
            self._discard(obj)
            if isinstance(exc, GoverseError):
                raise
            if not isinstance(exc, _OBJECT_ERRORS):
                raise
            raise ObjectCreationFailed("on_created of %r failed: %s: %s" % (
                obj, type(exc).__name__, exc)) from exc

    # ---- call ------------------------------------------------------------

    def call(
        self,
        type_name: str,
        object_id: str,
        method_name: str,
        request: Any,
        shard: int | None,
    ) -> Any:
        """Run ``method_name`` on the object, activating it when absent."""
        obj = self.objects.get(object_id)
        cls = type(obj) if obj is not None and not type_name else self.registry.get(type_name)
        if obj is not None and type_name and obj._gv_type != type_name:
            raise ObjectTypeMismatch("object %r has type %r, not %r" % (
                object_id, obj._gv_type, type_name))
        spec, func = lookup_method(cls, method_name)
        message = spec.decode(request, cls._goverse_type, object_id)
        stats = self.stats
        if stats is None:
            return self._run_call(obj, cls, object_id, method_name, spec, func, message, shard)
        latency = (stats.latency_by_method.get((cls, method_name))
                   or stats.latency(cls, cls._goverse_type, method_name))
        started = time.monotonic()
        try:
            return self._run_call(obj, cls, object_id, method_name, spec, func, message, shard)
        except GoverseError as exc:
            stats.call_failed(cls._goverse_type, method_name, type(exc).__name__)
            raise
        finally:
            latency.observe(time.monotonic() - started)

    def _run_call(self, obj: BaseObject | None, cls: type[BaseObject], object_id: str,
                  method_name: str, spec: Any, func: Any, message: Any,
                  shard: int | None) -> Any:
        while True:
            if obj is None or obj._gv_dead:
                obj = self.create(cls._goverse_type, object_id, shard)
            if spec.interleave:
                return self._invoke(obj, spec, func, message)
            chain = context._chain.get() or context.ensure_call_chain()
            holder = obj._gv_holder
            if holder is None:
                obj._gv_holder = chain
                obj._gv_depth = 1
            elif holder == chain:
                obj._gv_depth += 1
            else:
                _wait_for_turn(obj, chain, self._deadline(),
                               "call to %r.%s" % (obj, method_name))
            try:
                if not obj._gv_dead:
                    return self._invoke(obj, spec, func, message)
            finally:
                release_turn(obj)
            obj = None

    def _invoke(self, obj: BaseObject, spec: Any, func: Any, message: Any) -> Any:
        obj._gv_calls += 1
        self.calls_served += 1
        self.running += 1
        token = context._current_object.set(obj)
        try:
            response = func(obj, message)
        except GoverseError:
            raise
        except _OBJECT_ERRORS as exc:
            log.warning("%r.%s raised", obj, spec.name, exc_info=True)
            raise ObjectMethodError("%r.%s raised %s: %s" % (
                obj, spec.name, type(exc).__name__, exc)) from exc
        finally:
            context._current_object.reset(token)
            self.running -= 1
        if type(response) is spec.response_type:
            return response
        return spec.check_response(response, repr(obj))

    # ---- delete ----------------------------------------------------------

    def delete(self, object_id: str, type_name: str = "") -> bool:
        """Delete the object once calls in progress end; True if it existed."""
        obj = self.objects.get(object_id)
        if obj is None:
            return False
        if type_name and obj._gv_type != type_name:
            raise ObjectTypeMismatch("object %r has type %r, not %r" % (
                object_id, obj._gv_type, type_name))
        chain = context.ensure_call_chain()
        acquire_turn(obj, chain, self._deadline(), "delete of %r" % (obj,))
        try:
            existed = not obj._gv_dead
            self._discard(obj)
        finally:
            release_turn(obj)
        return existed

    def evict(self, object_ids: list[str], deadline: float | None) -> int:
        """Deactivate objects (their shard moves away); returns how many."""
        count = 0
        for object_id in object_ids:
            obj = self.objects.get(object_id)
            if obj is None:
                continue
            try:
                acquire_turn(obj, "evict", deadline, "eviction of %r" % (obj,))
            except CallTimeout:
                log.warning("evicting %r while a call still runs on it", obj)
                self._discard(obj)
                count += 1
                continue
            try:
                self._discard(obj)
                count += 1
            finally:
                release_turn(obj)
        return count

    def ids_in_shards(self, shards: set[int]) -> list[str]:
        return [oid for oid, obj in self.objects.items() if obj._gv_shard in shards]

    def _discard(self, obj: BaseObject) -> None:
        obj._gv_dead = True
        if self.objects.get(obj._gv_id) is obj:
            del self.objects[obj._gv_id]
            if self._on_activation is not None:
                self._on_activation(obj, "deactivate")

    def _deadline(self) -> float:
        at = context.deadline()
        return at if at is not None else time.monotonic() + self._default_timeout

    # ---- introspection ---------------------------------------------------

    def get(self, object_id: str) -> BaseObject:
        obj = self.objects.get(object_id)
        if obj is None:
            raise ObjectNotFound("object %r is not active on this node" % (object_id,))
        return obj

    def describe(self, obj: BaseObject) -> dict[str, Any]:
        waiters = obj._gv_waiters
        return {
            "id": obj._gv_id,
            "type": obj._gv_type,
            "created_at": obj._gv_created,
            "shard": obj._gv_shard,
            "calls_served": obj._gv_calls,
            "queue_depth": len(waiters) if waiters else 0,
            "busy": obj._gv_holder is not None,
        }


def _instantiate(cls: type[BaseObject], type_name: str, object_id: str, shard: int | None):
    obj = cls.__new__(cls)
    obj._gv_id = object_id
    obj._gv_type = type_name
    obj._gv_created = time.time()  # wall clock: a timestamp for people, not a deadline
    obj._gv_holder = None
    obj._gv_depth = 0
    obj._gv_waiters = None
    obj._gv_dead = False
    obj._gv_shard = shard
    obj._gv_calls = 0
    return obj
