"""The object model: BaseObject, exposed methods and the type registry.

An object type is a subclass of :class:`BaseObject` registered under a
type name (the class name unless given). Its exposed methods each take one
protobuf request message and return one protobuf response message; the
types are declared, so a request that arrives as ``google.protobuf.Any``
can be decoded and checked before the method runs.

This module knows nothing about gevent, nodes or the network.
"""

from __future__ import annotations

import inspect
import logging
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from .errors import UnknownMethod, UnknownObjectType, WrongMessageType

_TYPE_NAME_MAX = 200

T = TypeVar("T", bound="BaseObject")


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """What an exposed method accepts and returns, and how it runs."""

    name: str
    request_type: type[Message]
    response_type: type[Message]
    #: Runs without taking the object's turn (concurrently with other calls).
    interleave: bool = False

    def decode(self, request: Any, type_name: str, object_id: str) -> Message:
        """The request as ``request_type``: checked, or unpacked from an Any."""
        if isinstance(request, self.request_type):
            return request
        target = "%s(%s)" % (type_name, object_id)
        if isinstance(request, any_pb2.Any):
            return self._unpack(request, target)
        raise WrongMessageType("%s.%s takes %s, got %s" % (
            target, self.name, self.request_type.DESCRIPTOR.full_name, _describe(request)))

    def check_response(self, response: Any, target: str) -> Message:
        if not isinstance(response, self.response_type):
            raise WrongMessageType("%s.%s must return %s, returned %s" % (
                target, self.name, self.response_type.DESCRIPTOR.full_name,
                _describe(response)))
        return response

    def _unpack(self, packed: any_pb2.Any, target: str) -> Message:
        expected = self.request_type.DESCRIPTOR.full_name
        if packed.type_url.rpartition("/")[2] != expected:
            raise WrongMessageType("%s.%s takes %s, got Any holding %r" % (
                target, self.name, expected, packed.type_url[:200]))
        message = self.request_type()
        try:
            message.ParseFromString(packed.value)
        except DecodeError as exc:
            raise WrongMessageType("%s.%s: request payload is not a valid %s: %s" % (
                target, self.name, expected, exc)) from exc
        return message


def _describe(value: Any) -> str:
    if isinstance(value, Message):
        return value.DESCRIPTOR.full_name
    return type(value).__name__


def method(
    fn: Callable[..., Any] | None = None,
    *,
    request: type[Message] | None = None,
    response: type[Message] | None = None,
    interleave: bool = False,
) -> Any:
    """Expose an object method to callers.

    Request and response types come from the arguments or, when omitted,
    from the annotations ``def Deposit(self, req: DepositRequest) ->
    DepositResponse``. ``interleave=True`` lets the method run alongside
    other calls on the same object (for read-only methods).
    """

    def mark(func: Callable[..., Any]) -> Callable[..., Any]:
        func._goverse_method = _spec_for(func, request, response, interleave)  # type: ignore[attr-defined]
        return func

    return mark(fn) if fn is not None else mark


def _spec_for(
    func: Callable[..., Any],
    request: type[Message] | None,
    response: type[Message] | None,
    interleave: bool,
) -> MethodSpec:
    if request is None or response is None:
        hints = typing.get_type_hints(func)
        params = [p for p in inspect.signature(func).parameters if p != "self"]
        request = request or (hints.get(params[0]) if params else None)
        response = response or hints.get("return")
    for role, kind in (("request", request), ("response", response)):
        if not (isinstance(kind, type) and issubclass(kind, Message)):
            raise TypeError("method %s: the %s type must be a protobuf message class, "
                            "got %r (annotate it or pass %s=...)" % (
                                func.__qualname__, role, kind, role))
    return MethodSpec(func.__name__, request, response, interleave)


class BaseObject:
    """Base class of every goverse object.

    The runtime builds instances itself (``__init__`` takes no arguments)
    and sets the id, type and creation time before ``__init__`` runs.
    Override :meth:`on_created` for work that must finish before the first
    call, and mark exposed methods with :func:`goverse.method`.
    """

    # Runtime state lives in slots: objects are many and mostly idle.
    __slots__ = ("_gv_id", "_gv_type", "_gv_created", "_gv_holder", "_gv_depth",
                 "_gv_waiters", "_gv_dead", "_gv_shard", "_gv_calls", "_gv_node",
                 "__dict__")

    _goverse_type: str = ""
    _goverse_methods: dict[str, tuple[MethodSpec, Callable[..., Any]]] = {}

    @property
    def id(self) -> str:
        return self._gv_id

    @property
    def type(self) -> str:
        return self._gv_type

    @property
    def created_at(self) -> float:
        """Creation time, Unix seconds."""
        return self._gv_created

    @property
    def logger(self) -> logging.LoggerAdapter:
        """A logger whose lines name this object."""
        return _ObjectLogger(logging.getLogger("goverse.object." + self._gv_type), self)

    def on_created(self) -> None:
        """Called once after creation, before any call runs on the object."""

    def __repr__(self) -> str:
        return "%s(%s)" % (self._gv_type, self._gv_id)


class _ObjectLogger(logging.LoggerAdapter):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return "%r: %s" % (self.extra, msg), kwargs


class TypeRegistry:
    """Object types by name."""

    def __init__(self) -> None:
        self._types: dict[str, type[BaseObject]] = {}

    def register(self, cls: type[T] | None = None, *, name: str | None = None) -> Any:
        """Register ``cls`` (usable as a decorator, with or without ``name=``)."""
        if cls is None:
            return lambda c: self.register(c, name=name)
        type_name = name or cls.__name__
        self._check_new(cls, type_name)
        cls._goverse_type = type_name
        cls._goverse_methods = _collect_methods(cls)
        self._types[type_name] = cls
        return cls

    def _check_new(self, cls: type, type_name: str) -> None:
        if not (isinstance(cls, type) and issubclass(cls, BaseObject)):
            raise TypeError("only BaseObject subclasses can be registered, got %r" % (cls,))
        if not type_name or len(type_name) > _TYPE_NAME_MAX or "/" in type_name:
            raise ValueError("invalid object type name %r" % (type_name,))
        known = self._types.get(type_name)
        if known is not None and (known.__module__, known.__qualname__) != (
                cls.__module__, cls.__qualname__):
            raise ValueError("object type %r is already registered for %r" % (type_name, known))

    def get(self, type_name: str) -> type[BaseObject]:
        try:
            return self._types[type_name]
        except (KeyError, TypeError):
            raise UnknownObjectType("unknown object type %r (registered: %s)" % (
                _clip(type_name), ", ".join(sorted(self._types)) or "none")) from None

    def find(self, type_name: str) -> type[BaseObject] | None:
        return self._types.get(type_name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def unregister(self, type_name: str) -> None:
        self._types.pop(type_name, None)


def _collect_methods(cls: type) -> dict[str, tuple[MethodSpec, Callable[..., Any]]]:
    methods = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            spec = getattr(value, "_goverse_method", None)
            if isinstance(spec, MethodSpec):
                methods[attr] = (spec, value)
    return methods


def lookup_method(cls: type[BaseObject], name: str) -> tuple[MethodSpec, Callable[..., Any]]:
    try:
        return cls._goverse_methods[name]
    except (KeyError, TypeError):
        raise UnknownMethod("object type %r has no method %r (methods: %s)" % (
            cls._goverse_type, _clip(name), ", ".join(sorted(cls._goverse_methods)) or "none"
        )) from None


def _clip(value: Any, limit: int = 80) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value


#: The process-wide registry that ``goverse.register`` fills.
registry = TypeRegistry()
register = registry.register
