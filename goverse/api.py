"""The module-level API: create, call and delete through this process's node."""

from __future__ import annotations

from typing import Any

from .node import current_node
from .operations import Operation


def call_object(type_name: str, object_id: str, method_name: str, request: Any,
                *, timeout: float | None = None) -> Any:
    """Call a method of an object on whatever node owns it."""
    return current_node().call_object(type_name, object_id, method_name, request,
                                      timeout=timeout)


def create_object(type_name: str, object_id: str | None = None, *, wait: bool = False,
                  timeout: float | None = None) -> str:
    """Create an object; returns its id at once (``wait=True``: once created)."""
    return current_node().create_object(type_name, object_id, wait=wait, timeout=timeout)


def create_object_async(type_name: str, object_id: str | None = None, *,
                        timeout: float | None = None) -> Operation:
    """Create an object and return the handle of the operation."""
    return current_node().create_object_async(type_name, object_id, timeout=timeout)


def delete_object(object_id: str, *, wait: bool = False, timeout: float | None = None) -> None:
    """Delete an object (a missing one is a success); returns at once unless ``wait``."""
    current_node().delete_object(object_id, wait=wait, timeout=timeout)


def delete_object_async(object_id: str, *, timeout: float | None = None) -> Operation:
    """Delete an object and return the handle of the operation."""
    return current_node().delete_object_async(object_id, timeout=timeout)


def operation_status(op_id: str) -> dict[str, Any] | None:
    """Status of an operation this process's node started, or None if unknown."""
    return current_node().operation_status(op_id)


def push_message(client_ids: Any, message: Any) -> int:
    """Push a protobuf message to one client id or a list of them (best effort)."""
    return current_node().push(client_ids, message)


def broadcast(message: Any) -> int:
    """Push a protobuf message to every client of every gate (best effort)."""
    return current_node().broadcast(message)


def client_id() -> str | None:
    """The id of the gate client on whose behalf the current call runs, if any."""
    from .callctx import context

    return context.get("client_id") or None
