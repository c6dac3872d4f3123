"""Object ids and their placement: which shard, or which node, owns an id.

An id maps to one of N shards by the 32-bit FNV-1a hash of its UTF-8 bytes
modulo N. Two forms override the hash: ``<node-address>/<rest>`` is pinned
to that node (the address must look like ``host:port``), and
``shard#<n>/<rest>`` is placed on shard ``n``.
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .errors import InvalidObjectId

#: Longest id accepted, in UTF-8 bytes. Ids travel in every request and
#: key every table; a bound keeps a bad client from growing them unbounded.
MAX_ID_BYTES = 1024

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")
_SHARD_FORM = re.compile(r"^shard#([^/]*)/")


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a of ``data``."""
    value = _FNV_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


class Placement(NamedTuple):
    """Where an id lives: a shard number, or a node it is pinned to."""

    shard: int | None
    node: str | None


def validate_id(object_id: object) -> str:
    """Return ``object_id`` if it is a usable id, else raise InvalidObjectId."""
    if type(object_id) is str and object_id.isascii() and object_id.isprintable() \
            and 0 < len(object_id) <= MAX_ID_BYTES:
        return object_id  # the common case, decided without a regex
    if not isinstance(object_id, str):
        raise InvalidObjectId("object id must be a str, got %s %r" % (
            type(object_id).__name__, _clip(object_id)))
    if not object_id:
        raise InvalidObjectId("object id must not be empty")
    try:
        size = len(object_id.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidObjectId("object id %r is not valid UTF-8 text" % (_clip(object_id),)) from exc
    if size > MAX_ID_BYTES:
        raise InvalidObjectId("object id %r... is %d bytes long; the limit is %d" % (
            object_id[:40], size, MAX_ID_BYTES))
    if _CONTROL.search(object_id):
        raise InvalidObjectId("object id %r contains control characters" % (_clip(object_id),))
    return object_id


@functools.lru_cache(maxsize=65536)
def placement(object_id: str, num_shards: int) -> Placement:
    """Where ``object_id`` lives in a cluster of ``num_shards`` shards.

    The id must already have passed :func:`validate_id`.
    """
    head, sep, _rest = object_id.partition("/")
    if sep:
        if object_id.startswith("shard#"):
            return Placement(_explicit_shard(object_id, num_shards), None)
        if _HOST_PORT.match(head):
            return Placement(None, head)
    return Placement(fnv1a_32(object_id.encode("utf-8")) % num_shards, None)


def _explicit_shard(object_id: str, num_shards: int) -> int:
    match = _SHARD_FORM.match(object_id)
    text = match.group(1) if match else ""
    if not (text.isascii() and text.isdigit()):
        raise InvalidObjectId("object id %r: shard#<n>/ needs a decimal shard number" % (
            _clip(object_id),))
    shard = int(text)
    if shard >= num_shards:
        raise InvalidObjectId("object id %r names shard %d; shards are 0..%d" % (
            _clip(object_id), shard, num_shards - 1))
    return shard


def _clip(value: object, limit: int = 80) -> object:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "..."
    return value
