import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from seedstack.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Locality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOCALITY_UNSPECIFIED: _ClassVar[Locality]
    LOCALITY_SAME_HOST: _ClassVar[Locality]
    LOCALITY_SAME_RACK: _ClassVar[Locality]
    LOCALITY_SAME_DATACENTER: _ClassVar[Locality]
    LOCALITY_CROSS_DATACENTER: _ClassVar[Locality]

class ReadFailure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    READ_FAILURE_UNSPECIFIED: _ClassVar[ReadFailure]
    READ_FAILURE_UNREACHABLE: _ClassVar[ReadFailure]
    READ_FAILURE_TIMEOUT: _ClassVar[ReadFailure]
    READ_FAILURE_HASH_MISMATCH: _ClassVar[ReadFailure]
    READ_FAILURE_REFUSED: _ClassVar[ReadFailure]
LOCALITY_UNSPECIFIED: Locality
LOCALITY_SAME_HOST: Locality
LOCALITY_SAME_RACK: Locality
LOCALITY_SAME_DATACENTER: Locality
LOCALITY_CROSS_DATACENTER: Locality
READ_FAILURE_UNSPECIFIED: ReadFailure
READ_FAILURE_UNREACHABLE: ReadFailure
READ_FAILURE_TIMEOUT: ReadFailure
READ_FAILURE_HASH_MISMATCH: ReadFailure
READ_FAILURE_REFUSED: ReadFailure

class RegisterHolderRequest(_message.Message):
    __slots__ = ("request_id", "holder_id", "offers", "topology", "lease_ttl_s", "max_concurrent_reads", "transport_host_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_READS_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_HOST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    holder_id: str
    offers: _containers.RepeatedCompositeFieldContainer[_common_pb2.TransportOffer]
    topology: _common_pb2.TopologyLabels
    lease_ttl_s: float
    max_concurrent_reads: int
    transport_host_id: str
    def __init__(self, request_id: _Optional[str] = ..., holder_id: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[_common_pb2.TransportOffer, _Mapping]]] = ..., topology: _Optional[_Union[_common_pb2.TopologyLabels, _Mapping]] = ..., lease_ttl_s: _Optional[float] = ..., max_concurrent_reads: _Optional[int] = ..., transport_host_id: _Optional[str] = ...) -> None: ...

class RegisterHolderResponse(_message.Message):
    __slots__ = ("lease_ttl_s",)
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    lease_ttl_s: float
    def __init__(self, lease_ttl_s: _Optional[float] = ...) -> None: ...

class UnregisterHolderRequest(_message.Message):
    __slots__ = ("request_id", "holder_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    holder_id: str
    def __init__(self, request_id: _Optional[str] = ..., holder_id: _Optional[str] = ...) -> None: ...

class UnregisterHolderResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("holder_id",)
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    holder_id: str
    def __init__(self, holder_id: _Optional[str] = ...) -> None: ...

class HeldVersion(_message.Message):
    __slots__ = ("model", "version", "num_active_reads", "retired")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_ACTIVE_READS_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    num_active_reads: int
    retired: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., num_active_reads: _Optional[int] = ..., retired: _Optional[bool] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("lease_ttl_s", "held_versions")
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    lease_ttl_s: float
    held_versions: _containers.RepeatedCompositeFieldContainer[HeldVersion]
    def __init__(self, lease_ttl_s: _Optional[float] = ..., held_versions: _Optional[_Iterable[_Union[HeldVersion, _Mapping]]] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("request_id", "holder_id", "manifest", "shard_index", "num_shards")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    holder_id: str
    manifest: _common_pb2.Manifest
    shard_index: int
    num_shards: int
    def __init__(self, request_id: _Optional[str] = ..., holder_id: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., shard_index: _Optional[int] = ..., num_shards: _Optional[int] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("committed", "num_shards_registered", "root_hash")
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    committed: bool
    num_shards_registered: int
    root_hash: str
    def __init__(self, committed: _Optional[bool] = ..., num_shards_registered: _Optional[int] = ..., root_hash: _Optional[str] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("manifest",)
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    manifest: _common_pb2.Manifest
    def __init__(self, manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ...) -> None: ...

class GetPlanRequest(_message.Message):
    __slots__ = ("request_id", "reader_id", "model", "version", "held_version", "chunk_indices", "max_wait_s", "allow_partial", "max_chunks", "serve_in_flight")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    READER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDICES_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SERVE_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reader_id: str
    model: str
    version: int
    held_version: int
    chunk_indices: _containers.RepeatedScalarFieldContainer[int]
    max_wait_s: float
    allow_partial: bool
    max_chunks: int
    serve_in_flight: bool
    def __init__(self, request_id: _Optional[str] = ..., reader_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., held_version: _Optional[int] = ..., chunk_indices: _Optional[_Iterable[int]] = ..., max_wait_s: _Optional[float] = ..., allow_partial: _Optional[bool] = ..., max_chunks: _Optional[int] = ..., serve_in_flight: _Optional[bool] = ...) -> None: ...

class SourceRead(_message.Message):
    __slots__ = ("holder_id", "offer", "locality", "chunk_indices")
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    LOCALITY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDICES_FIELD_NUMBER: _ClassVar[int]
    holder_id: str
    offer: _common_pb2.TransportOffer
    locality: Locality
    chunk_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, holder_id: _Optional[str] = ..., offer: _Optional[_Union[_common_pb2.TransportOffer, _Mapping]] = ..., locality: _Optional[_Union[Locality, str]] = ..., chunk_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class GetPlanResponse(_message.Message):
    __slots__ = ("model", "version", "base_version", "reads", "planned_size_bytes", "deferred_chunk_indices")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    READS_FIELD_NUMBER: _ClassVar[int]
    PLANNED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_CHUNK_INDICES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    base_version: int
    reads: _containers.RepeatedCompositeFieldContainer[SourceRead]
    planned_size_bytes: int
    deferred_chunk_indices: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., base_version: _Optional[int] = ..., reads: _Optional[_Iterable[_Union[SourceRead, _Mapping]]] = ..., planned_size_bytes: _Optional[int] = ..., deferred_chunk_indices: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("request_id", "holder_id", "model", "version", "chunk_indices", "finished_holder_ids")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDICES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_HOLDER_IDS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    holder_id: str
    model: str
    version: int
    chunk_indices: _containers.RepeatedScalarFieldContainer[int]
    finished_holder_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, request_id: _Optional[str] = ..., holder_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., chunk_indices: _Optional[_Iterable[int]] = ..., finished_holder_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("num_chunks_held",)
    NUM_CHUNKS_HELD_FIELD_NUMBER: _ClassVar[int]
    num_chunks_held: int
    def __init__(self, num_chunks_held: _Optional[int] = ...) -> None: ...

class ReportHeldRequest(_message.Message):
    __slots__ = ("request_id", "holder_id", "model", "version", "held", "root_hash")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    holder_id: str
    model: str
    version: int
    held: bool
    root_hash: str
    def __init__(self, request_id: _Optional[str] = ..., holder_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., held: _Optional[bool] = ..., root_hash: _Optional[str] = ...) -> None: ...

class ReportHeldResponse(_message.Message):
    __slots__ = ("num_active_reads",)
    NUM_ACTIVE_READS_FIELD_NUMBER: _ClassVar[int]
    num_active_reads: int
    def __init__(self, num_active_reads: _Optional[int] = ...) -> None: ...

class ReportReadFailureRequest(_message.Message):
    __slots__ = ("request_id", "reader_id", "holder_id", "model", "version", "failure", "detail")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    READER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLDER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reader_id: str
    holder_id: str
    model: str
    version: int
    failure: ReadFailure
    detail: str
    def __init__(self, request_id: _Optional[str] = ..., reader_id: _Optional[str] = ..., holder_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., failure: _Optional[_Union[ReadFailure, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class ReportReadFailureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("request_id", "model", "version", "owner")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: int
    owner: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("request_id", "model", "version", "owner")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: int
    owner: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., owner: _Optional[str] = ...) -> None: ...

class UnpinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchVersionsRequest(_message.Message):
    __slots__ = ("model", "after_version", "include_manifest", "plan_reader_id", "plan_max_chunks")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AFTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PLAN_READER_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    model: str
    after_version: int
    include_manifest: bool
    plan_reader_id: str
    plan_max_chunks: int
    def __init__(self, model: _Optional[str] = ..., after_version: _Optional[int] = ..., include_manifest: _Optional[bool] = ..., plan_reader_id: _Optional[str] = ..., plan_max_chunks: _Optional[int] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("model", "version", "root_hash", "size_bytes", "num_chunks", "num_holders", "pinned", "committed_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NUM_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_AT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    root_hash: str
    size_bytes: int
    num_chunks: int
    num_holders: int
    pinned: bool
    committed_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., root_hash: _Optional[str] = ..., size_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., num_holders: _Optional[int] = ..., pinned: _Optional[bool] = ..., committed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchVersionsResponse(_message.Message):
    __slots__ = ("version_info", "manifest", "plan")
    VERSION_INFO_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    version_info: VersionInfo
    manifest: _common_pb2.Manifest
    plan: GetPlanResponse
    def __init__(self, version_info: _Optional[_Union[VersionInfo, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.Manifest, _Mapping]] = ..., plan: _Optional[_Union[GetPlanResponse, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...
