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

class Algorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALGORITHM_UNSPECIFIED: _ClassVar[Algorithm]
    ALGORITHM_GRPO: _ClassVar[Algorithm]
    ALGORITHM_DAPO: _ClassVar[Algorithm]
    ALGORITHM_VAPO: _ClassVar[Algorithm]

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_STARTING: _ClassVar[RunState]
    RUN_STATE_WARM_START: _ClassVar[RunState]
    RUN_STATE_TRAINING: _ClassVar[RunState]
    RUN_STATE_STOPPING: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
ALGORITHM_UNSPECIFIED: Algorithm
ALGORITHM_GRPO: Algorithm
ALGORITHM_DAPO: Algorithm
ALGORITHM_VAPO: Algorithm
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_STARTING: RunState
RUN_STATE_WARM_START: RunState
RUN_STATE_TRAINING: RunState
RUN_STATE_STOPPING: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_FAILED: RunState

class OptimizerConfig(_message.Message):
    __slots__ = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_steps")
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    warmup_steps: int
    def __init__(self, learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., warmup_steps: _Optional[int] = ...) -> None: ...

class PolicyLossConfig(_message.Message):
    __slots__ = ("clip_epsilon_low", "clip_epsilon_high", "token_level_loss", "kl_coef", "entropy_coef", "max_importance_weight")
    CLIP_EPSILON_LOW_FIELD_NUMBER: _ClassVar[int]
    CLIP_EPSILON_HIGH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LEVEL_LOSS_FIELD_NUMBER: _ClassVar[int]
    KL_COEF_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_COEF_FIELD_NUMBER: _ClassVar[int]
    MAX_IMPORTANCE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    clip_epsilon_low: float
    clip_epsilon_high: float
    token_level_loss: bool
    kl_coef: float
    entropy_coef: float
    max_importance_weight: float
    def __init__(self, clip_epsilon_low: _Optional[float] = ..., clip_epsilon_high: _Optional[float] = ..., token_level_loss: _Optional[bool] = ..., kl_coef: _Optional[float] = ..., entropy_coef: _Optional[float] = ..., max_importance_weight: _Optional[float] = ...) -> None: ...

class DapoConfig(_message.Message):
    __slots__ = ("max_completion_tokens", "overlong_buffer_tokens", "overlong_penalty", "dynamic_sampling")
    MAX_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_BUFFER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVERLONG_PENALTY_FIELD_NUMBER: _ClassVar[int]
    DYNAMIC_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    max_completion_tokens: int
    overlong_buffer_tokens: int
    overlong_penalty: float
    dynamic_sampling: bool
    def __init__(self, max_completion_tokens: _Optional[int] = ..., overlong_buffer_tokens: _Optional[int] = ..., overlong_penalty: _Optional[float] = ..., dynamic_sampling: _Optional[bool] = ...) -> None: ...

class VapoConfig(_message.Message):
    __slots__ = ("value_learning_rate", "value_pretrain_steps", "gae_lambda_critic", "gae_lambda_policy", "length_adaptive_alpha", "positive_lm_loss_coef", "discount")
    VALUE_LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_PRETRAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    GAE_LAMBDA_CRITIC_FIELD_NUMBER: _ClassVar[int]
    GAE_LAMBDA_POLICY_FIELD_NUMBER: _ClassVar[int]
    LENGTH_ADAPTIVE_ALPHA_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_LM_LOSS_COEF_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    value_learning_rate: float
    value_pretrain_steps: int
    gae_lambda_critic: float
    gae_lambda_policy: float
    length_adaptive_alpha: float
    positive_lm_loss_coef: float
    discount: float
    def __init__(self, value_learning_rate: _Optional[float] = ..., value_pretrain_steps: _Optional[int] = ..., gae_lambda_critic: _Optional[float] = ..., gae_lambda_policy: _Optional[float] = ..., length_adaptive_alpha: _Optional[float] = ..., positive_lm_loss_coef: _Optional[float] = ..., discount: _Optional[float] = ...) -> None: ...

class WarmStartConfig(_message.Message):
    __slots__ = ("num_steps", "learning_rate", "batch_size")
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    num_steps: int
    learning_rate: float
    batch_size: int
    def __init__(self, num_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class TaskConfig(_message.Message):
    __slots__ = ("num_terms", "max_terms", "max_value", "ops", "num_warm_start", "num_eval")
    NUM_TERMS_FIELD_NUMBER: _ClassVar[int]
    MAX_TERMS_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    NUM_WARM_START_FIELD_NUMBER: _ClassVar[int]
    NUM_EVAL_FIELD_NUMBER: _ClassVar[int]
    num_terms: int
    max_terms: int
    max_value: int
    ops: str
    num_warm_start: int
    num_eval: int
    def __init__(self, num_terms: _Optional[int] = ..., max_terms: _Optional[int] = ..., max_value: _Optional[int] = ..., ops: _Optional[str] = ..., num_warm_start: _Optional[int] = ..., num_eval: _Optional[int] = ...) -> None: ...

class RolloutConfig(_message.Message):
    __slots__ = ("prompts_per_step", "group_size", "max_new_tokens", "temperature", "colocated")
    PROMPTS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    COLOCATED_FIELD_NUMBER: _ClassVar[int]
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    temperature: float
    colocated: bool
    def __init__(self, prompts_per_step: _Optional[int] = ..., group_size: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., colocated: _Optional[bool] = ...) -> None: ...

class EvalConfig(_message.Message):
    __slots__ = ("path", "num_prompts", "every_steps", "max_new_tokens")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    path: str
    num_prompts: int
    every_steps: int
    max_new_tokens: int
    def __init__(self, path: _Optional[str] = ..., num_prompts: _Optional[int] = ..., every_steps: _Optional[int] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class CheckpointConfig(_message.Message):
    __slots__ = ("dir", "every_steps", "resume_from", "skip_data_until_step")
    DIR_FIELD_NUMBER: _ClassVar[int]
    EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    SKIP_DATA_UNTIL_STEP_FIELD_NUMBER: _ClassVar[int]
    dir: str
    every_steps: int
    resume_from: str
    skip_data_until_step: int
    def __init__(self, dir: _Optional[str] = ..., every_steps: _Optional[int] = ..., resume_from: _Optional[str] = ..., skip_data_until_step: _Optional[int] = ...) -> None: ...

class RunConfig(_message.Message):
    __slots__ = ("algorithm", "model", "num_ranks", "device", "seed", "num_steps", "time_budget_s", "dataplane_plan_id", "weighthub_model", "optimizer", "policy_loss", "dapo", "vapo", "warm_start", "eval", "checkpoint", "task", "rollout", "num_threads", "ppo_epochs", "mini_batch_size")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_RANKS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    DATAPLANE_PLAN_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTHUB_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    POLICY_LOSS_FIELD_NUMBER: _ClassVar[int]
    DAPO_FIELD_NUMBER: _ClassVar[int]
    VAPO_FIELD_NUMBER: _ClassVar[int]
    WARM_START_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    NUM_THREADS_FIELD_NUMBER: _ClassVar[int]
    PPO_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MINI_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    algorithm: Algorithm
    model: _common_pb2.ModelSpec
    num_ranks: int
    device: str
    seed: int
    num_steps: int
    time_budget_s: float
    dataplane_plan_id: str
    weighthub_model: str
    optimizer: OptimizerConfig
    policy_loss: PolicyLossConfig
    dapo: DapoConfig
    vapo: VapoConfig
    warm_start: WarmStartConfig
    eval: EvalConfig
    checkpoint: CheckpointConfig
    task: TaskConfig
    rollout: RolloutConfig
    num_threads: int
    ppo_epochs: int
    mini_batch_size: int
    def __init__(self, algorithm: _Optional[_Union[Algorithm, str]] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., num_ranks: _Optional[int] = ..., device: _Optional[str] = ..., seed: _Optional[int] = ..., num_steps: _Optional[int] = ..., time_budget_s: _Optional[float] = ..., dataplane_plan_id: _Optional[str] = ..., weighthub_model: _Optional[str] = ..., optimizer: _Optional[_Union[OptimizerConfig, _Mapping]] = ..., policy_loss: _Optional[_Union[PolicyLossConfig, _Mapping]] = ..., dapo: _Optional[_Union[DapoConfig, _Mapping]] = ..., vapo: _Optional[_Union[VapoConfig, _Mapping]] = ..., warm_start: _Optional[_Union[WarmStartConfig, _Mapping]] = ..., eval: _Optional[_Union[EvalConfig, _Mapping]] = ..., checkpoint: _Optional[_Union[CheckpointConfig, _Mapping]] = ..., task: _Optional[_Union[TaskConfig, _Mapping]] = ..., rollout: _Optional[_Union[RolloutConfig, _Mapping]] = ..., num_threads: _Optional[int] = ..., ppo_epochs: _Optional[int] = ..., mini_batch_size: _Optional[int] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("request_id", "run_config", "run_config_text")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_TEXT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    run_config: RunConfig
    run_config_text: str
    def __init__(self, request_id: _Optional[str] = ..., run_config: _Optional[_Union[RunConfig, _Mapping]] = ..., run_config_text: _Optional[str] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run_id", "resolved_config")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_CONFIG_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    resolved_config: RunConfig
    def __init__(self, run_id: _Optional[str] = ..., resolved_config: _Optional[_Union[RunConfig, _Mapping]] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("reward_mean", "policy_loss", "value_loss", "kl", "entropy", "clip_fraction", "grad_norm", "logprob_mismatch", "tokens_per_s", "samples_per_s", "step_time_s", "data_wait_s", "forward_backward_s", "optimizer_s", "publish_s", "num_samples", "num_tokens", "truncated_fraction")
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    POLICY_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALUE_LOSS_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_FIELD_NUMBER: _ClassVar[int]
    CLIP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    DATA_WAIT_S_FIELD_NUMBER: _ClassVar[int]
    FORWARD_BACKWARD_S_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_S_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_S_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    reward_mean: float
    policy_loss: float
    value_loss: float
    kl: float
    entropy: float
    clip_fraction: float
    grad_norm: float
    logprob_mismatch: float
    tokens_per_s: float
    samples_per_s: float
    step_time_s: float
    data_wait_s: float
    forward_backward_s: float
    optimizer_s: float
    publish_s: float
    num_samples: int
    num_tokens: int
    truncated_fraction: float
    def __init__(self, reward_mean: _Optional[float] = ..., policy_loss: _Optional[float] = ..., value_loss: _Optional[float] = ..., kl: _Optional[float] = ..., entropy: _Optional[float] = ..., clip_fraction: _Optional[float] = ..., grad_norm: _Optional[float] = ..., logprob_mismatch: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., step_time_s: _Optional[float] = ..., data_wait_s: _Optional[float] = ..., forward_backward_s: _Optional[float] = ..., optimizer_s: _Optional[float] = ..., publish_s: _Optional[float] = ..., num_samples: _Optional[int] = ..., num_tokens: _Optional[int] = ..., truncated_fraction: _Optional[float] = ...) -> None: ...

class EvalResult(_message.Message):
    __slots__ = ("step", "evaluated_at", "accuracy", "num_prompts")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_AT_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    NUM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    step: int
    evaluated_at: _timestamp_pb2.Timestamp
    accuracy: float
    num_prompts: int
    def __init__(self, step: _Optional[int] = ..., evaluated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., accuracy: _Optional[float] = ..., num_prompts: _Optional[int] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "state", "config", "step", "published_version", "started_at", "updated_at", "latest_step", "evals", "failure_reason", "num_skipped_steps", "last_skip_reason", "last_checkpoint", "incarnation", "last_restart_reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LATEST_STEP_FIELD_NUMBER: _ClassVar[int]
    EVALS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    NUM_SKIPPED_STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    LAST_RESTART_REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    config: RunConfig
    step: int
    published_version: int
    started_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    latest_step: StepMetrics
    evals: _containers.RepeatedCompositeFieldContainer[EvalResult]
    failure_reason: str
    num_skipped_steps: int
    last_skip_reason: str
    last_checkpoint: str
    incarnation: int
    last_restart_reason: str
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., config: _Optional[_Union[RunConfig, _Mapping]] = ..., step: _Optional[int] = ..., published_version: _Optional[int] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest_step: _Optional[_Union[StepMetrics, _Mapping]] = ..., evals: _Optional[_Iterable[_Union[EvalResult, _Mapping]]] = ..., failure_reason: _Optional[str] = ..., num_skipped_steps: _Optional[int] = ..., last_skip_reason: _Optional[str] = ..., last_checkpoint: _Optional[str] = ..., incarnation: _Optional[int] = ..., last_restart_reason: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("request_id", "run_id", "save_checkpoint")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SAVE_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    run_id: str
    save_checkpoint: bool
    def __init__(self, request_id: _Optional[str] = ..., run_id: _Optional[str] = ..., save_checkpoint: _Optional[bool] = ...) -> None: ...

class StopRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...
