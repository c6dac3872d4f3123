"""The context-local dict that follows a call across greenlets and nodes.

``goverse.context`` is a mutable mapping whose contents belong to the
current call: a trace id, the calling client, anything the application
sets. gevent starts every new greenlet with an empty ``contextvars``
context, so goverse never spawns with plain ``gevent.spawn``: it uses
:func:`spawn_in_copy`, which runs the target inside a copy of the
spawner's values. Changes made by the child never leak back.

Three values are kept apart from the user's dict because the runtime owns
them: the call's deadline (a ``time.monotonic()`` instant), its call-chain
id (for reentrancy), and the object the current code runs in (so errors
can name both sides of a call).
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable

log = logging.getLogger(__name__)

_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("goverse_values")
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "goverse_deadline", default=None
)
_chain: contextvars.ContextVar[str | None] = contextvars.ContextVar("goverse_chain", default=None)
#: The object whose code runs now (an object, or a ``Type/id`` label when
#: the call came from another node).
_current_object: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "goverse_current_object", default=None
)


def _current() -> dict[str, Any]:
    try:
        return _values.get()
    except LookupError:
        fresh: dict[str, Any] = {}
        _values.set(fresh)
        return fresh


class ContextDict(MutableMapping):
    """A mapping view of the current call's values.

    Every operation reads or writes the dict of the running greenlet's
    context, so one module-level instance serves all greenlets.
    """

    def __getitem__(self, key: str) -> Any:
        return _current()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        _current()[key] = value

    def __delitem__(self, key: str) -> None:
        del _current()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(_current()))

    def __len__(self) -> int:
        return len(_current())

    def __repr__(self) -> str:
        return "goverse.context(%r)" % (_current(),)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the current values."""
        return dict(_current())


context = ContextDict()


# ---- runtime-owned values -------------------------------------------------


#: The longest timeout a call may ask for, in seconds (about three years):
#: far longer would overflow gRPC's deadline arithmetic, which then expires
#: the call at once.
MAX_TIMEOUT = 1e8


def check_timeout(timeout: Any) -> float:
    """``timeout`` if it is a usable number of seconds; a ValueError naming it if not."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout <= MAX_TIMEOUT:  # NaN fails every comparison
        raise ValueError("timeout must be a number of seconds above 0 and at most %g, "
                         "got %r" % (MAX_TIMEOUT, timeout))
    return timeout


def deadline() -> float | None:
    """The current call's deadline as a ``time.monotonic()`` instant, or None."""
    return _deadline.get()


def remaining(default: float) -> float:
    """Seconds left before the current deadline (``default`` when none is set)."""
    at = _deadline.get()
    if at is None:
        return default
    return at - time.monotonic()


def set_deadline(at: float | None) -> None:
    _deadline.set(at)


def call_chain() -> str | None:
    return _chain.get()


def set_call_chain(chain: str | None) -> None:
    _chain.set(chain)


def ensure_call_chain() -> str:
    """The current call-chain id, starting a new chain when there is none."""
    chain = _chain.get()
    if chain is None:
        chain = uuid.uuid4().hex[:16]
        _chain.set(chain)
    return chain


def current_object() -> str | None:
    """``Type(id)`` of the object whose code is running, or None outside objects."""
    current = _current_object.get()
    return current if current is None or isinstance(current, str) else repr(current)


def set_current_object(label: str | None) -> None:
    _current_object.set(label)


# ---- spawning -------------------------------------------------------------


def run_in_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so that it runs in a copy of the *current* context.

    The copy is taken now, in the caller; the user dict is copied too, so
    a child that changes ``goverse.context`` does not change the parent's.
    """
    parent = contextvars.copy_context()
    values = dict(_current())

    def runner(*args: Any, **kwargs: Any) -> Any:
        _values.set(dict(values))
        return fn(*args, **kwargs)

    def in_copy(*args: Any, **kwargs: Any) -> Any:
        return parent.copy().run(runner, *args, **kwargs)

    return in_copy


def spawn_in_copy(group: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Spawn ``fn`` in ``group`` (a gevent Group or Pool) in a copy of this context."""
    return group.spawn(run_in_copy(fn), *args, **kwargs)


def spawn_fresh(group: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Spawn ``fn`` in ``group`` in an empty context (it installs its own)."""
    return group.spawn(contextvars.Context().run, fn, *args)


# ---- the wire form --------------------------------------------------------

#: gRPC metadata keys that carry the context between processes.
METADATA_VALUES = "goverse-context"
METADATA_CHAIN = "goverse-chain"
METADATA_CALLER = "goverse-caller"


#: Key under which the OpenTelemetry span context travels with the values.
OTEL_KEY = "_otel"

_otel: Any = None


def _opentelemetry() -> Any:
    """OpenTelemetry's context and propagation modules, or False when absent."""
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import propagate as otel_propagate
        except ImportError:
            _otel = False
        else:
            _otel = (otel_context, otel_propagate)
    return _otel


def encode_values() -> bytes:
    """The user values as JSON; values JSON cannot hold are sent as text.

    When OpenTelemetry is installed the active span context rides along
    (W3C trace context), so spans on other nodes join the caller's trace.
    """
    values = _values.get(None)
    otel = _opentelemetry()
    if otel:
        carrier: dict[str, str] = {}
        otel[1].inject(carrier)
        if carrier:
            values = dict(values or {}, **{OTEL_KEY: carrier})
    if not values:
        return b""
    return json.dumps(values, default=str, separators=(",", ":")).encode()


def decode_values(raw: bytes | str) -> dict[str, Any]:
    """Parse values sent by :func:`encode_values`; garbage gives an empty dict."""
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        log.warning("dropping undecodable goverse context: %s", exc)
        return {}
    if not isinstance(values, dict):
        log.warning("dropping goverse context that is not an object: %r", values)
        return {}
    return values


def enter(
    values: dict[str, Any],
    *,
    chain: str | None,
    timeout: float | None,
    caller: str | None = None,
) -> None:
    """Install a received context in the running greenlet's context.

    Every runtime value is overwritten: gRPC's handler greenlets are reused
    between requests, and nothing of one request may leak into the next.
    """
    carrier = values.pop(OTEL_KEY, None)
    otel = _opentelemetry()
    if otel:
        extracted = otel[1].extract(carrier) if isinstance(carrier, dict) else None
        otel[0].attach(extracted if extracted is not None else otel[0].Context())
    _values.set(values)
    _chain.set(chain or None)
    _deadline.set(time.monotonic() + timeout if timeout and timeout > 0 else None)
    _current_object.set(caller)
