from seedstack.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_FORMAT_UNSPECIFIED: _ClassVar[SourceFormat]
    SOURCE_FORMAT_JSONL: _ClassVar[SourceFormat]
    SOURCE_FORMAT_PARQUET: _ClassVar[SourceFormat]
    SOURCE_FORMAT_GENERATED: _ClassVar[SourceFormat]

class DropReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DROP_REASON_UNSPECIFIED: _ClassVar[DropReason]
    DROP_REASON_DUPLICATE: _ClassVar[DropReason]
    DROP_REASON_STALE: _ClassVar[DropReason]
    DROP_REASON_UNKNOWN_PROMPT: _ClassVar[DropReason]
    DROP_REASON_UNKNOWN_VERSION: _ClassVar[DropReason]
    DROP_REASON_UNIFORM_GROUP: _ClassVar[DropReason]
SOURCE_FORMAT_UNSPECIFIED: SourceFormat
SOURCE_FORMAT_JSONL: SourceFormat
SOURCE_FORMAT_PARQUET: SourceFormat
SOURCE_FORMAT_GENERATED: SourceFormat
DROP_REASON_UNSPECIFIED: DropReason
DROP_REASON_DUPLICATE: DropReason
DROP_REASON_STALE: DropReason
DROP_REASON_UNKNOWN_PROMPT: DropReason
DROP_REASON_UNKNOWN_VERSION: DropReason
DROP_REASON_UNIFORM_GROUP: DropReason

class Preprocessing(_message.Message):
    __slots__ = ("text_field", "completion_field", "reference_field", "verifier", "max_length_tokens", "pack")
    TEXT_FIELD_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PACK_FIELD_NUMBER: _ClassVar[int]
    text_field: str
    completion_field: str
    reference_field: str
    verifier: _common_pb2.VerifierKind
    max_length_tokens: int
    pack: bool
    def __init__(self, text_field: _Optional[str] = ..., completion_field: _Optional[str] = ..., reference_field: _Optional[str] = ..., verifier: _Optional[_Union[_common_pb2.VerifierKind, str]] = ..., max_length_tokens: _Optional[int] = ..., pack: _Optional[bool] = ...) -> None: ...

class SourceSpec(_message.Message):
    __slots__ = ("name", "format", "path", "generator", "generator_options", "weight", "preprocessing", "num_loader_workers")
    class GeneratorOptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NUM_LOADER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    format: SourceFormat
    path: str
    generator: str
    generator_options: _containers.ScalarMap[str, str]
    weight: float
    preprocessing: Preprocessing
    num_loader_workers: int
    def __init__(self, name: _Optional[str] = ..., format: _Optional[_Union[SourceFormat, str]] = ..., path: _Optional[str] = ..., generator: _Optional[str] = ..., generator_options: _Optional[_Mapping[str, str]] = ..., weight: _Optional[float] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., num_loader_workers: _Optional[int] = ...) -> None: ...

class MixtureChange(_message.Message):
    __slots__ = ("start_step", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    START_STEP_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    start_step: int
    weights: _containers.ScalarMap[str, float]
    def __init__(self, start_step: _Optional[int] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class BalanceSpec(_message.Message):
    __slots__ = ("cost_alpha", "cost_beta", "lookahead_batches")
    COST_ALPHA_FIELD_NUMBER: _ClassVar[int]
    COST_BETA_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_BATCHES_FIELD_NUMBER: _ClassVar[int]
    cost_alpha: float
    cost_beta: float
    lookahead_batches: int
    def __init__(self, cost_alpha: _Optional[float] = ..., cost_beta: _Optional[float] = ..., lookahead_batches: _Optional[int] = ...) -> None: ...

class RlSpec(_message.Message):
    __slots__ = ("group_size", "max_staleness_versions", "dynamic_sampling", "max_buffered_samples")
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MAX_BUFFERED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    group_size: int
    max_staleness_versions: int
    dynamic_sampling: bool
    max_buffered_samples: int
    def __init__(self, group_size: _Optional[int] = ..., max_staleness_versions: _Optional[int] = ..., dynamic_sampling: _Optional[bool] = ..., max_buffered_samples: _Optional[int] = ...) -> None: ...

class MixtureSpec(_message.Message):
    __slots__ = ("sources", "schedule", "length_bucket_bounds_tokens", "global_batch_size", "seed", "num_ranks", "tokenizer", "balance", "rl")
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_BUCKET_BOUNDS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    RL_FIELD_NUMBER: _ClassVar[int]
    sources: _containers.RepeatedCompositeFieldContainer[SourceSpec]
    schedule: _containers.RepeatedCompositeFieldContainer[MixtureChange]
    length_bucket_bounds_tokens: _containers.RepeatedScalarFieldContainer[int]
    global_batch_size: int
    seed: int
    num_ranks: int
    tokenizer: str
    balance: BalanceSpec
    rl: RlSpec
    def __init__(self, sources: _Optional[_Iterable[_Union[SourceSpec, _Mapping]]] = ..., schedule: _Optional[_Iterable[_Union[MixtureChange, _Mapping]]] = ..., length_bucket_bounds_tokens: _Optional[_Iterable[int]] = ..., global_batch_size: _Optional[int] = ..., seed: _Optional[int] = ..., num_ranks: _Optional[int] = ..., tokenizer: _Optional[str] = ..., balance: _Optional[_Union[BalanceSpec, _Mapping]] = ..., rl: _Optional[_Union[RlSpec, _Mapping]] = ...) -> None: ...

class SubmitPlanRequest(_message.Message):
    __slots__ = ("request_id", "mixture", "mixture_yaml")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MIXTURE_FIELD_NUMBER: _ClassVar[int]
    MIXTURE_YAML_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    mixture: MixtureSpec
    mixture_yaml: str
    def __init__(self, request_id: _Optional[str] = ..., mixture: _Optional[_Union[MixtureSpec, _Mapping]] = ..., mixture_yaml: _Optional[str] = ...) -> None: ...

class SubmitPlanResponse(_message.Message):
    __slots__ = ("plan_id", "resolved_mixture")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_MIXTURE_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    resolved_mixture: MixtureSpec
    def __init__(self, plan_id: _Optional[str] = ..., resolved_mixture: _Optional[_Union[MixtureSpec, _Mapping]] = ...) -> None: ...

class ClosePlanRequest(_message.Message):
    __slots__ = ("request_id", "plan_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_id: str
    def __init__(self, request_id: _Optional[str] = ..., plan_id: _Optional[str] = ...) -> None: ...

class ClosePlanResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NextPromptsRequest(_message.Message):
    __slots__ = ("request_id", "plan_id", "consumer_id", "num_prompts", "wait_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_id: str
    consumer_id: str
    num_prompts: int
    wait_s: float
    def __init__(self, request_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., consumer_id: _Optional[str] = ..., num_prompts: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class NextPromptsResponse(_message.Message):
    __slots__ = ("prompts", "group_size")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    group_size: int
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., group_size: _Optional[int] = ...) -> None: ...

class PutSamplesRequest(_message.Message):
    __slots__ = ("plan_id", "producer_id", "samples")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    producer_id: str
    samples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    def __init__(self, plan_id: _Optional[str] = ..., producer_id: _Optional[str] = ..., samples: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ...) -> None: ...

class DropCount(_message.Message):
    __slots__ = ("reason", "num_samples")
    REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    reason: DropReason
    num_samples: int
    def __init__(self, reason: _Optional[_Union[DropReason, str]] = ..., num_samples: _Optional[int] = ...) -> None: ...

class PutSamplesResponse(_message.Message):
    __slots__ = ("num_accepted", "dropped")
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    num_accepted: int
    dropped: _containers.RepeatedCompositeFieldContainer[DropCount]
    def __init__(self, num_accepted: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[DropCount, _Mapping]]] = ...) -> None: ...

class NextBatchRequest(_message.Message):
    __slots__ = ("plan_id", "rank", "step", "policy_version")
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    rank: int
    step: int
    policy_version: int
    def __init__(self, plan_id: _Optional[str] = ..., rank: _Optional[int] = ..., step: _Optional[int] = ..., policy_version: _Optional[int] = ...) -> None: ...

class NextBatchResponse(_message.Message):
    __slots__ = ("step", "rank", "num_ranks", "samples", "token_tensors", "num_tokens", "cost")
    STEP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_TENSORS_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    step: int
    rank: int
    num_ranks: int
    samples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    token_tensors: _common_pb2.TransferRef
    num_tokens: int
    cost: float
    def __init__(self, step: _Optional[int] = ..., rank: _Optional[int] = ..., num_ranks: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., token_tensors: _Optional[_Union[_common_pb2.TransferRef, _Mapping]] = ..., num_tokens: _Optional[int] = ..., cost: _Optional[float] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("request_id", "plan_id", "step")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_id: str
    step: int
    def __init__(self, request_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("step", "base_step", "size_bytes")
    STEP_FIELD_NUMBER: _ClassVar[int]
    BASE_STEP_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    step: int
    base_step: int
    size_bytes: int
    def __init__(self, step: _Optional[int] = ..., base_step: _Optional[int] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("request_id", "plan_id", "step", "num_ranks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    plan_id: str
    step: int
    num_ranks: int
    def __init__(self, request_id: _Optional[str] = ..., plan_id: _Optional[str] = ..., step: _Optional[int] = ..., num_ranks: _Optional[int] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("step", "num_ranks", "checkpoint_step")
    STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    num_ranks: int
    checkpoint_step: int
    def __init__(self, step: _Optional[int] = ..., num_ranks: _Optional[int] = ..., checkpoint_step: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("plan_id",)
    PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    plan_id: str
    def __init__(self, plan_id: _Optional[str] = ...) -> None: ...

class SourceStats(_message.Message):
    __slots__ = ("name", "declared_share", "realized_share", "num_records_read", "num_records_skipped", "last_skip_reason", "num_loader_workers", "preprocess_s_per_record")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DECLARED_SHARE_FIELD_NUMBER: _ClassVar[int]
    REALIZED_SHARE_FIELD_NUMBER: _ClassVar[int]
    NUM_RECORDS_READ_FIELD_NUMBER: _ClassVar[int]
    NUM_RECORDS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    LAST_SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_LOADER_WORKERS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_S_PER_RECORD_FIELD_NUMBER: _ClassVar[int]
    name: str
    declared_share: float
    realized_share: float
    num_records_read: int
    num_records_skipped: int
    last_skip_reason: str
    num_loader_workers: int
    preprocess_s_per_record: float
    def __init__(self, name: _Optional[str] = ..., declared_share: _Optional[float] = ..., realized_share: _Optional[float] = ..., num_records_read: _Optional[int] = ..., num_records_skipped: _Optional[int] = ..., last_skip_reason: _Optional[str] = ..., num_loader_workers: _Optional[int] = ..., preprocess_s_per_record: _Optional[float] = ...) -> None: ...

class BufferStats(_message.Message):
    __slots__ = ("num_buffered_samples", "num_prompts_outstanding", "dropped", "policy_version")
    NUM_BUFFERED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_OUTSTANDING_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    num_buffered_samples: int
    num_prompts_outstanding: int
    dropped: _containers.RepeatedCompositeFieldContainer[DropCount]
    policy_version: int
    def __init__(self, num_buffered_samples: _Optional[int] = ..., num_prompts_outstanding: _Optional[int] = ..., dropped: _Optional[_Iterable[_Union[DropCount, _Mapping]]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("next_step", "num_ranks", "num_samples_served", "num_tokens_served", "samples_per_s", "tokens_per_s", "last_cost_imbalance", "sources", "buffer")
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_SERVED_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_SERVED_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    LAST_COST_IMBALANCE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    next_step: int
    num_ranks: int
    num_samples_served: int
    num_tokens_served: int
    samples_per_s: float
    tokens_per_s: float
    last_cost_imbalance: float
    sources: _containers.RepeatedCompositeFieldContainer[SourceStats]
    buffer: BufferStats
    def __init__(self, next_step: _Optional[int] = ..., num_ranks: _Optional[int] = ..., num_samples_served: _Optional[int] = ..., num_tokens_served: _Optional[int] = ..., samples_per_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., last_cost_imbalance: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[SourceStats, _Mapping]]] = ..., buffer: _Optional[_Union[BufferStats, _Mapping]] = ...) -> None: ...
