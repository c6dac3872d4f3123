"""The ``gate.GateService`` gRPC service: the published gate protocol.

Each method delegates to the gate's node, on behalf of the client named
in the request: ``goverse.context["client_id"]`` carries that id to the
object, wherever it runs, so methods see it as ``goverse.client_id()``.
Errors keep their goverse class for goverse clients (a trailer names the
kind) and map to gRPC status codes through each class's ``grpc_code`` for
everyone else.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator

import grpc
from google.protobuf import any_pb2

from .. import callctx as context
from .._pb import gate_pb2 as gate_pb
from .._pb import gate_pb2_grpc as gate_grpc
from ..errors import ERROR_KIND_METADATA, GoverseError, error_kind
from ..transport import pack, parsing

if TYPE_CHECKING:
    from .server import Gate

log = logging.getLogger(__name__)

#: Seconds between checks that a push stream's client is still there.
STREAM_POLL = 1.0


def add_gate_service(server: grpc.Server, servicer: GateServicer) -> None:
    """Register ``gate.GateService`` on ``server``, parsing requests ourselves.

    As for the node's service (:func:`goverse.transport.add_node_service`):
    grpc's own deserializer would answer a request it cannot parse with
    INTERNAL and log a traceback per request, which outside clients could
    use to flood the gate's log.
    """
    methods = {
        "Register": (grpc.unary_stream_rpc_method_handler, gate_pb.Empty, any_pb2.Any),
        "CallObject": (grpc.unary_unary_rpc_method_handler, gate_pb.CallObjectRequest,
                       gate_pb.CallObjectResponse),
        "CreateObject": (grpc.unary_unary_rpc_method_handler, gate_pb.CreateObjectRequest,
                         gate_pb.CreateObjectResponse),
        "DeleteObject": (grpc.unary_unary_rpc_method_handler, gate_pb.DeleteObjectRequest,
                         gate_pb.DeleteObjectResponse),
        "ReliableCallObject": (grpc.unary_unary_rpc_method_handler,
                               gate_pb.ReliableCallObjectRequest,
                               gate_pb.ReliableCallObjectResponse),
    }
    handlers = {name: kind(parsing(getattr(servicer, name), request_type),
                           response_serializer=response_type.SerializeToString)
                for name, (kind, request_type, response_type) in methods.items()}
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("gate.GateService", handlers),))


class GateServicer(gate_grpc.GateServiceServicer):
    """Serves clients over gRPC; one instance per gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        #: Open push streams. Each holds one of gRPC's ``server_workers``
        #: for its whole life, so some workers are kept for calls: with
        #: every worker streaming, calls would wait for a free one and
        #: fail at their deadline with no word of why.
        self.streams = 0
        workers = gate.settings.server_workers
        self.max_streams = max(1, workers - max(4, workers // 8))

    def Register(self, request: gate_pb.Empty, ctx: grpc.ServicerContext) -> Iterator[Any]:
        clients = self.gate.require_clients(ctx)
        if self.streams >= self.max_streams:
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "gate %s holds %d push streams, its limit (server_workers %d, less "
                      "the workers kept for calls): register at another gate, or raise "
                      "server_workers" % (self.gate.address, self.streams,
                                          self.gate.settings.server_workers))
        self.streams += 1
        try:
            client = clients.register("grpc")
            try:
                yield pack(gate_pb.RegisterResponse(client_id=client.id))
                yield from client.messages(STREAM_POLL, ctx.is_active)
            finally:
                clients.unregister(client)
        finally:
            self.streams -= 1

    def CallObject(self, request: gate_pb.CallObjectRequest,
                   ctx: grpc.ServicerContext) -> gate_pb.CallObjectResponse:
        def run() -> gate_pb.CallObjectResponse:
            response = self.gate.node.call_object(request.type, request.id, request.method,
                                                  request.request)
            return gate_pb.CallObjectResponse(response=pack(response))
        return _serve(ctx, run, request.client_id, "CallObject %s(%s).%s" % (
            request.type, request.id, request.method))

    def CreateObject(self, request: gate_pb.CreateObjectRequest,
                     ctx: grpc.ServicerContext) -> gate_pb.CreateObjectResponse:
        def run() -> gate_pb.CreateObjectResponse:
            # Clients wait for the real outcome; proto3 cannot tell a missing
            # id from an empty one, so an empty id asks for a generated one.
            object_id = self.gate.node.create_object(request.type, request.id or None,
                                                     wait=True)
            return gate_pb.CreateObjectResponse(id=object_id)
        return _serve(ctx, run, "", "CreateObject %s(%s)" % (request.type, request.id))

    def DeleteObject(self, request: gate_pb.DeleteObjectRequest,
                     ctx: grpc.ServicerContext) -> gate_pb.DeleteObjectResponse:
        if not request.type:
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      "DeleteObject of %r needs the object's type" % (request.id,))

        def run() -> gate_pb.DeleteObjectResponse:
            self.gate.node.delete_object(request.id, wait=True, type_name=request.type)
            return gate_pb.DeleteObjectResponse()
        return _serve(ctx, run, "", "DeleteObject %s(%s)" % (request.type, request.id))

    def ReliableCallObject(self, request: gate_pb.ReliableCallObjectRequest,
                           ctx: grpc.ServicerContext) -> Any:
        ctx.abort(grpc.StatusCode.UNIMPLEMENTED,
                  "ReliableCallObject is not supported by this gate; use CallObject")


def _serve(ctx: grpc.ServicerContext, run: Callable[[], Any], client_id: str,
           what: str) -> Any:
    """Run ``run`` in a fresh context for the client; map errors to statuses."""
    # Handler greenlets are reused between requests: start from a clean
    # context, with the client's deadline.
    metadata = dict(ctx.invocation_metadata() or ())
    left = ctx.time_remaining()
    context.enter(context.decode_values(metadata.get(context.METADATA_VALUES, "")),
                  chain=None, timeout=left if left is not None and left < 1e6 else None)
    if client_id:
        context.context["client_id"] = client_id
    try:
        return run()
    except GoverseError as exc:
        log.debug("%s failed: %s: %s", what, type(exc).__name__, exc)
        ctx.set_trailing_metadata(((ERROR_KIND_METADATA, type(exc).__name__),))
        ctx.abort(exc.grpc_code, str(exc))
    except Exception as exc:
        log.exception("%s failed", what)
        ctx.set_trailing_metadata(((ERROR_KIND_METADATA, error_kind(exc)),))
        ctx.abort(grpc.StatusCode.INTERNAL, "%s: %s" % (type(exc).__name__, exc))
