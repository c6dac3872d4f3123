"""The object type of the embedded example: a hit counter per URL path.

Other nodes of the same cluster load it with ``--objects
examples.embedded.counters``.
"""

from __future__ import annotations

from google.protobuf.wrappers_pb2 import Int64Value

import goverse


@goverse.register
class PathCounter(goverse.BaseObject):
    """Counts the hits of one path; one call at a time, so no lock."""

    def __init__(self) -> None:
        self.hits = 0

    @goverse.method
    def Hit(self, request: Int64Value) -> Int64Value:
        self.hits += request.value
        return Int64Value(value=self.hits)
