from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PeerOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PEER_OP_UNSPECIFIED: _ClassVar[PeerOp]
    PEER_OP_CALL: _ClassVar[PeerOp]
    PEER_OP_CREATE: _ClassVar[PeerOp]
    PEER_OP_DELETE: _ClassVar[PeerOp]
PEER_OP_UNSPECIFIED: PeerOp
PEER_OP_CALL: PeerOp
PEER_OP_CREATE: PeerOp
PEER_OP_DELETE: PeerOp

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("advertise_addr", "num_objects", "uptime_seconds")
    ADVERTISE_ADDR_FIELD_NUMBER: _ClassVar[int]
    NUM_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    advertise_addr: str
    num_objects: int
    uptime_seconds: int
    def __init__(self, advertise_addr: _Optional[str] = ..., num_objects: _Optional[int] = ..., uptime_seconds: _Optional[int] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("type", "id", "creation_time")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATION_TIME_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    creation_time: int
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., creation_time: _Optional[int] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class CallObjectRequest(_message.Message):
    __slots__ = ("id", "method", "type", "request", "client_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    method: str
    type: str
    request: _any_pb2.Any
    client_id: str
    def __init__(self, id: _Optional[str] = ..., method: _Optional[str] = ..., type: _Optional[str] = ..., request: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., client_id: _Optional[str] = ...) -> None: ...

class CallObjectResponse(_message.Message):
    __slots__ = ("response",)
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    response: _any_pb2.Any
    def __init__(self, response: _Optional[_Union[_any_pb2.Any, _Mapping]] = ...) -> None: ...

class CreateObjectRequest(_message.Message):
    __slots__ = ("type", "id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class CreateObjectResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteObjectRequest(_message.Message):
    __slots__ = ("id", "type")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class DeleteObjectResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerRequest(_message.Message):
    __slots__ = ("tag", "op", "type", "id", "method", "request", "epoch", "timeout", "context", "client_id", "chain", "caller")
    TAG_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    tag: int
    op: PeerOp
    type: str
    id: str
    method: str
    request: _any_pb2.Any
    epoch: int
    timeout: float
    context: bytes
    client_id: str
    chain: str
    caller: str
    def __init__(self, tag: _Optional[int] = ..., op: _Optional[_Union[PeerOp, str]] = ..., type: _Optional[str] = ..., id: _Optional[str] = ..., method: _Optional[str] = ..., request: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., epoch: _Optional[int] = ..., timeout: _Optional[float] = ..., context: _Optional[bytes] = ..., client_id: _Optional[str] = ..., chain: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class PeerResponse(_message.Message):
    __slots__ = ("tag", "response", "error_kind", "error_message", "id")
    TAG_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    tag: int
    response: _any_pb2.Any
    error_kind: str
    error_message: str
    id: str
    def __init__(self, tag: _Optional[int] = ..., response: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., error_kind: _Optional[str] = ..., error_message: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class PeerBatch(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[PeerRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[PeerRequest, _Mapping]]] = ...) -> None: ...

class PeerResponseBatch(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[PeerResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[PeerResponse, _Mapping]]] = ...) -> None: ...

class RegisterGateRequest(_message.Message):
    __slots__ = ("gate_addr",)
    GATE_ADDR_FIELD_NUMBER: _ClassVar[int]
    gate_addr: str
    def __init__(self, gate_addr: _Optional[str] = ...) -> None: ...

class GateMessage(_message.Message):
    __slots__ = ("client_ids", "message", "broadcast")
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BROADCAST_FIELD_NUMBER: _ClassVar[int]
    client_ids: _containers.RepeatedScalarFieldContainer[str]
    message: _any_pb2.Any
    broadcast: bool
    def __init__(self, client_ids: _Optional[_Iterable[str]] = ..., message: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., broadcast: _Optional[bool] = ...) -> None: ...
