from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifierKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFIER_KIND_UNSPECIFIED: _ClassVar[VerifierKind]
    VERIFIER_KIND_ARITHMETIC: _ClassVar[VerifierKind]
    VERIFIER_KIND_MATH: _ClassVar[VerifierKind]
    VERIFIER_KIND_CODE: _ClassVar[VerifierKind]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
VERIFIER_KIND_UNSPECIFIED: VerifierKind
VERIFIER_KIND_ARITHMETIC: VerifierKind
VERIFIER_KIND_MATH: VerifierKind
VERIFIER_KIND_CODE: VerifierKind
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason

class TopologyLabels(_message.Message):
    __slots__ = ("host", "rack", "datacenter")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RACK_FIELD_NUMBER: _ClassVar[int]
    DATACENTER_FIELD_NUMBER: _ClassVar[int]
    host: str
    rack: str
    datacenter: str
    def __init__(self, host: _Optional[str] = ..., rack: _Optional[str] = ..., datacenter: _Optional[str] = ...) -> None: ...

class TransportOffer(_message.Message):
    __slots__ = ("carrier", "address")
    CARRIER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    carrier: str
    address: str
    def __init__(self, carrier: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ChunkSpec(_message.Message):
    __slots__ = ("tensor_name", "index", "offset_bytes", "size_bytes", "hash_hex", "hash_algorithm")
    TENSOR_NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HASH_HEX_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    tensor_name: str
    index: int
    offset_bytes: int
    size_bytes: int
    hash_hex: str
    hash_algorithm: str
    def __init__(self, tensor_name: _Optional[str] = ..., index: _Optional[int] = ..., offset_bytes: _Optional[int] = ..., size_bytes: _Optional[int] = ..., hash_hex: _Optional[str] = ..., hash_algorithm: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("model", "version", "tensors", "chunks", "root_hash", "chunk_size_bytes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkSpec]
    root_hash: str
    chunk_size_bytes: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[ChunkSpec, _Mapping]]] = ..., root_hash: _Optional[str] = ..., chunk_size_bytes: _Optional[int] = ...) -> None: ...

class TransferRef(_message.Message):
    __slots__ = ("key", "offers", "tensors", "chunks")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    key: str
    offers: _containers.RepeatedCompositeFieldContainer[TransportOffer]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkSpec]
    def __init__(self, key: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[TransportOffer, _Mapping]]] = ..., tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., chunks: _Optional[_Iterable[_Union[ChunkSpec, _Mapping]]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("config_json", "checkpoint_path", "tokenizer")
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_PATH_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    config_json: str
    checkpoint_path: str
    tokenizer: str
    def __init__(self, config_json: _Optional[str] = ..., checkpoint_path: _Optional[str] = ..., tokenizer: _Optional[str] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("prompt_id", "group_id", "source", "text", "token_ids", "verifier", "reference")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    group_id: str
    source: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    verifier: VerifierKind
    reference: str
    def __init__(self, prompt_id: _Optional[str] = ..., group_id: _Optional[str] = ..., source: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., verifier: _Optional[_Union[VerifierKind, str]] = ..., reference: _Optional[str] = ...) -> None: ...

class VersionSpan(_message.Message):
    __slots__ = ("start_index", "end_index", "weight_version")
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    END_INDEX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    start_index: int
    end_index: int
    weight_version: int
    def __init__(self, start_index: _Optional[int] = ..., end_index: _Optional[int] = ..., weight_version: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("prompt_id", "group_id", "sample_index", "prompt_token_ids", "completion_token_ids", "behaviour_logprobs", "version_spans", "completion_text", "reward", "finished", "finish_reason", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BEHAVIOUR_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    VERSION_SPANS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TEXT_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    group_id: str
    sample_index: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    behaviour_logprobs: _containers.RepeatedScalarFieldContainer[float]
    version_spans: _containers.RepeatedCompositeFieldContainer[VersionSpan]
    completion_text: str
    reward: float
    finished: bool
    finish_reason: FinishReason
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, prompt_id: _Optional[str] = ..., group_id: _Optional[str] = ..., sample_index: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., behaviour_logprobs: _Optional[_Iterable[float]] = ..., version_spans: _Optional[_Iterable[_Union[VersionSpan, _Mapping]]] = ..., completion_text: _Optional[str] = ..., reward: _Optional[float] = ..., finished: _Optional[bool] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...
