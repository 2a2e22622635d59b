from seedstack.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFY_OUTCOME_UNSPECIFIED: _ClassVar[VerifyOutcome]
    VERIFY_OUTCOME_CORRECT: _ClassVar[VerifyOutcome]
    VERIFY_OUTCOME_INCORRECT: _ClassVar[VerifyOutcome]
    VERIFY_OUTCOME_NO_ANSWER: _ClassVar[VerifyOutcome]
    VERIFY_OUTCOME_TIMEOUT: _ClassVar[VerifyOutcome]
    VERIFY_OUTCOME_CRASHED: _ClassVar[VerifyOutcome]
VERIFY_OUTCOME_UNSPECIFIED: VerifyOutcome
VERIFY_OUTCOME_CORRECT: VerifyOutcome
VERIFY_OUTCOME_INCORRECT: VerifyOutcome
VERIFY_OUTCOME_NO_ANSWER: VerifyOutcome
VERIFY_OUTCOME_TIMEOUT: VerifyOutcome
VERIFY_OUTCOME_CRASHED: VerifyOutcome

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_new_tokens", "stop", "n", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    n: int
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., n: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompts", "sampling", "verify", "stream_tokens")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    STREAM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    sampling: SamplingParams
    verify: bool
    stream_tokens: bool
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., verify: _Optional[bool] = ..., stream_tokens: _Optional[bool] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("prompt_id", "sample_index", "token_ids", "text", "logprobs", "weight_version")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    sample_index: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    weight_version: int
    def __init__(self, prompt_id: _Optional[str] = ..., sample_index: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., logprobs: _Optional[_Iterable[float]] = ..., weight_version: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("token_delta", "sample")
    TOKEN_DELTA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    token_delta: TokenDelta
    sample: _common_pb2.Sample
    def __init__(self, token_delta: _Optional[_Union[TokenDelta, _Mapping]] = ..., sample: _Optional[_Union[_common_pb2.Sample, _Mapping]] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("verifier", "answer", "reference", "timeout_s")
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    verifier: _common_pb2.VerifierKind
    answer: str
    reference: str
    timeout_s: float
    def __init__(self, verifier: _Optional[_Union[_common_pb2.VerifierKind, str]] = ..., answer: _Optional[str] = ..., reference: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("score", "outcome", "detail")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    score: float
    outcome: VerifyOutcome
    detail: str
    def __init__(self, score: _Optional[float] = ..., outcome: _Optional[_Union[VerifyOutcome, str]] = ..., detail: _Optional[str] = ...) -> None: ...

class StartRolloutRequest(_message.Message):
    __slots__ = ("request_id", "dataplane_plan_id", "weighthub_model", "model", "sampling", "num_prompts_per_round", "completion_ratio", "max_staleness_versions")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTHUB_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    dataplane_plan_id: str
    weighthub_model: str
    model: _common_pb2.ModelSpec
    sampling: SamplingParams
    num_prompts_per_round: int
    completion_ratio: float
    max_staleness_versions: int
    def __init__(self, request_id: _Optional[str] = ..., dataplane_plan_id: _Optional[str] = ..., weighthub_model: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., num_prompts_per_round: _Optional[int] = ..., completion_ratio: _Optional[float] = ..., max_staleness_versions: _Optional[int] = ...) -> None: ...

class StartRolloutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRolloutRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class StopRolloutResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateWeightsRequest(_message.Message):
    __slots__ = ("request_id", "weighthub_model", "version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTHUB_MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    weighthub_model: str
    version: int
    def __init__(self, request_id: _Optional[str] = ..., weighthub_model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UpdateWeightsResponse(_message.Message):
    __slots__ = ("served_version", "fetch_s", "stall_s")
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    FETCH_S_FIELD_NUMBER: _ClassVar[int]
    STALL_S_FIELD_NUMBER: _ClassVar[int]
    served_version: int
    fetch_s: float
    stall_s: float
    def __init__(self, served_version: _Optional[int] = ..., fetch_s: _Optional[float] = ..., stall_s: _Optional[float] = ...) -> None: ...

class PauseRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class PauseResponse(_message.Message):
    __slots__ = ("num_paused_sequences",)
    NUM_PAUSED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    num_paused_sequences: int
    def __init__(self, num_paused_sequences: _Optional[int] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ResumeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("weighthub_model", "served_version", "pending_version", "last_rejected_version", "last_rejected_reason", "num_weight_swaps", "last_swap_stall_s", "paused", "rollout_running", "num_running_sequences", "num_queued_sequences", "num_partial_samples", "kv_cache_utilization", "decode_tokens_per_s", "idle_fraction", "window_s", "num_tokens_generated", "num_samples_finished", "mean_batch_occupancy")
    WEIGHTHUB_MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_REJECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_REJECTED_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_WEIGHT_SWAPS_FIELD_NUMBER: _ClassVar[int]
    LAST_SWAP_STALL_S_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    NUM_QUEUED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTIAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_FRACTION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FINISHED_FIELD_NUMBER: _ClassVar[int]
    MEAN_BATCH_OCCUPANCY_FIELD_NUMBER: _ClassVar[int]
    weighthub_model: str
    served_version: int
    pending_version: int
    last_rejected_version: int
    last_rejected_reason: str
    num_weight_swaps: int
    last_swap_stall_s: float
    paused: bool
    rollout_running: bool
    num_running_sequences: int
    num_queued_sequences: int
    num_partial_samples: int
    kv_cache_utilization: float
    decode_tokens_per_s: float
    idle_fraction: float
    window_s: float
    num_tokens_generated: int
    num_samples_finished: int
    mean_batch_occupancy: float
    def __init__(self, weighthub_model: _Optional[str] = ..., served_version: _Optional[int] = ..., pending_version: _Optional[int] = ..., last_rejected_version: _Optional[int] = ..., last_rejected_reason: _Optional[str] = ..., num_weight_swaps: _Optional[int] = ..., last_swap_stall_s: _Optional[float] = ..., paused: _Optional[bool] = ..., rollout_running: _Optional[bool] = ..., num_running_sequences: _Optional[int] = ..., num_queued_sequences: _Optional[int] = ..., num_partial_samples: _Optional[int] = ..., kv_cache_utilization: _Optional[float] = ..., decode_tokens_per_s: _Optional[float] = ..., idle_fraction: _Optional[float] = ..., window_s: _Optional[float] = ..., num_tokens_generated: _Optional[int] = ..., num_samples_finished: _Optional[int] = ..., mean_batch_occupancy: _Optional[float] = ...) -> None: ...
