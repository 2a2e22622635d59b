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

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_STARTUP: _ClassVar[Phase]
    PHASE_DATA: _ClassVar[Phase]
    PHASE_FORWARD_BACKWARD: _ClassVar[Phase]
    PHASE_COLLECTIVE: _ClassVar[Phase]
    PHASE_CHECKPOINT: _ClassVar[Phase]
    PHASE_OPTIMIZER: _ClassVar[Phase]
    PHASE_PUBLISH: _ClassVar[Phase]
    PHASE_GENERATE: _ClassVar[Phase]

class CommandKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMMAND_KIND_UNSPECIFIED: _ClassVar[CommandKind]
    COMMAND_KIND_DUMP_STACKS: _ClassVar[CommandKind]
    COMMAND_KIND_RESTART_PROCESS: _ClassVar[CommandKind]
    COMMAND_KIND_STOP_PROCESS: _ClassVar[CommandKind]
    COMMAND_KIND_ADOPT_RANK: _ClassVar[CommandKind]

class FaultKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAULT_KIND_UNSPECIFIED: _ClassVar[FaultKind]
    FAULT_KIND_CRASH: _ClassVar[FaultKind]
    FAULT_KIND_HANG: _ClassVar[FaultKind]
    FAULT_KIND_NAN: _ClassVar[FaultKind]
    FAULT_KIND_STRAGGLER: _ClassVar[FaultKind]
    FAULT_KIND_LOG_ERROR: _ClassVar[FaultKind]
    FAULT_KIND_LOSS_SPIKE: _ClassVar[FaultKind]
    FAULT_KIND_CORRUPT_CHECKPOINT: _ClassVar[FaultKind]

class RecoveryAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECOVERY_ACTION_UNSPECIFIED: _ClassVar[RecoveryAction]
    RECOVERY_ACTION_RESTART_IN_PLACE: _ClassVar[RecoveryAction]
    RECOVERY_ACTION_REPLACE_NODE: _ClassVar[RecoveryAction]
    RECOVERY_ACTION_ROLLBACK: _ClassVar[RecoveryAction]
    RECOVERY_ACTION_STOP_JOB: _ClassVar[RecoveryAction]

class IncidentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INCIDENT_STATE_UNSPECIFIED: _ClassVar[IncidentState]
    INCIDENT_STATE_OPEN: _ClassVar[IncidentState]
    INCIDENT_STATE_RECOVERING: _ClassVar[IncidentState]
    INCIDENT_STATE_RECOVERED: _ClassVar[IncidentState]
    INCIDENT_STATE_UNRECOVERED: _ClassVar[IncidentState]
PHASE_UNSPECIFIED: Phase
PHASE_STARTUP: Phase
PHASE_DATA: Phase
PHASE_FORWARD_BACKWARD: Phase
PHASE_COLLECTIVE: Phase
PHASE_CHECKPOINT: Phase
PHASE_OPTIMIZER: Phase
PHASE_PUBLISH: Phase
PHASE_GENERATE: Phase
COMMAND_KIND_UNSPECIFIED: CommandKind
COMMAND_KIND_DUMP_STACKS: CommandKind
COMMAND_KIND_RESTART_PROCESS: CommandKind
COMMAND_KIND_STOP_PROCESS: CommandKind
COMMAND_KIND_ADOPT_RANK: CommandKind
FAULT_KIND_UNSPECIFIED: FaultKind
FAULT_KIND_CRASH: FaultKind
FAULT_KIND_HANG: FaultKind
FAULT_KIND_NAN: FaultKind
FAULT_KIND_STRAGGLER: FaultKind
FAULT_KIND_LOG_ERROR: FaultKind
FAULT_KIND_LOSS_SPIKE: FaultKind
FAULT_KIND_CORRUPT_CHECKPOINT: FaultKind
RECOVERY_ACTION_UNSPECIFIED: RecoveryAction
RECOVERY_ACTION_RESTART_IN_PLACE: RecoveryAction
RECOVERY_ACTION_REPLACE_NODE: RecoveryAction
RECOVERY_ACTION_ROLLBACK: RecoveryAction
RECOVERY_ACTION_STOP_JOB: RecoveryAction
INCIDENT_STATE_UNSPECIFIED: IncidentState
INCIDENT_STATE_OPEN: IncidentState
INCIDENT_STATE_RECOVERING: IncidentState
INCIDENT_STATE_RECOVERED: IncidentState
INCIDENT_STATE_UNRECOVERED: IncidentState

class ProcessGroup(_message.Message):
    __slots__ = ("name", "ranks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    name: str
    ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class RegisterAgentRequest(_message.Message):
    __slots__ = ("request_id", "job_id", "rank", "world_size", "topology", "pid", "groups", "standby")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    STANDBY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    job_id: str
    rank: int
    world_size: int
    topology: _common_pb2.TopologyLabels
    pid: int
    groups: _containers.RepeatedCompositeFieldContainer[ProcessGroup]
    standby: bool
    def __init__(self, request_id: _Optional[str] = ..., job_id: _Optional[str] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., topology: _Optional[_Union[_common_pb2.TopologyLabels, _Mapping]] = ..., pid: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[ProcessGroup, _Mapping]]] = ..., standby: _Optional[bool] = ...) -> None: ...

class RegisterAgentResponse(_message.Message):
    __slots__ = ("agent_id", "heartbeat_interval_s", "generation")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    heartbeat_interval_s: float
    generation: int
    def __init__(self, agent_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ..., generation: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("step", "phase", "startup_progress")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTUP_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    step: int
    phase: Phase
    startup_progress: int
    def __init__(self, step: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., startup_progress: _Optional[int] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "loss", "grad_norm", "has_nan_or_inf", "step_time_s", "compute_time_s")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    HAS_NAN_OR_INF_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    grad_norm: float
    has_nan_or_inf: bool
    step_time_s: float
    compute_time_s: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., grad_norm: _Optional[float] = ..., has_nan_or_inf: _Optional[bool] = ..., step_time_s: _Optional[float] = ..., compute_time_s: _Optional[float] = ...) -> None: ...

class ProcessExit(_message.Message):
    __slots__ = ("exit_code",)
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    def __init__(self, exit_code: _Optional[int] = ...) -> None: ...

class LogMatch(_message.Message):
    __slots__ = ("signature", "line")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    signature: str
    line: str
    def __init__(self, signature: _Optional[str] = ..., line: _Optional[str] = ...) -> None: ...

class StackDump(_message.Message):
    __slots__ = ("command_id", "tool", "text")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    tool: str
    text: str
    def __init__(self, command_id: _Optional[str] = ..., tool: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class CheckpointSaved(_message.Message):
    __slots__ = ("step", "path", "sha256")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    sha256: str
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("agent_id", "observed_at", "heartbeat", "step_metrics", "process_exit", "log_match", "stack_dump", "checkpoint_saved", "action_result", "checkpoint_rejected")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STEP_METRICS_FIELD_NUMBER: _ClassVar[int]
    PROCESS_EXIT_FIELD_NUMBER: _ClassVar[int]
    LOG_MATCH_FIELD_NUMBER: _ClassVar[int]
    STACK_DUMP_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    ACTION_RESULT_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_REJECTED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    observed_at: _timestamp_pb2.Timestamp
    heartbeat: Heartbeat
    step_metrics: StepMetrics
    process_exit: ProcessExit
    log_match: LogMatch
    stack_dump: StackDump
    checkpoint_saved: CheckpointSaved
    action_result: ActionResult
    checkpoint_rejected: CheckpointRejected
    def __init__(self, agent_id: _Optional[str] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., step_metrics: _Optional[_Union[StepMetrics, _Mapping]] = ..., process_exit: _Optional[_Union[ProcessExit, _Mapping]] = ..., log_match: _Optional[_Union[LogMatch, _Mapping]] = ..., stack_dump: _Optional[_Union[StackDump, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSaved, _Mapping]] = ..., action_result: _Optional[_Union[ActionResult, _Mapping]] = ..., checkpoint_rejected: _Optional[_Union[CheckpointRejected, _Mapping]] = ...) -> None: ...

class ActionResult(_message.Message):
    __slots__ = ("command_id", "done", "detail", "duration_s")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    done: bool
    detail: str
    duration_s: float
    def __init__(self, command_id: _Optional[str] = ..., done: _Optional[bool] = ..., detail: _Optional[str] = ..., duration_s: _Optional[float] = ...) -> None: ...

class CheckpointRejected(_message.Message):
    __slots__ = ("step", "path", "expected_sha256", "actual_sha256", "fallback_step")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_SHA256_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    expected_sha256: str
    actual_sha256: str
    fallback_step: int
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ..., expected_sha256: _Optional[str] = ..., actual_sha256: _Optional[str] = ..., fallback_step: _Optional[int] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("num_accepted", "num_ignored")
    NUM_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NUM_IGNORED_FIELD_NUMBER: _ClassVar[int]
    num_accepted: int
    num_ignored: int
    def __init__(self, num_accepted: _Optional[int] = ..., num_ignored: _Optional[int] = ...) -> None: ...

class WatchCommandsRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class WatchCommandsResponse(_message.Message):
    __slots__ = ("command_id", "kind", "incident_id", "reason", "resume_step", "skip_data_until_step", "rank", "generation")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RESUME_STEP_FIELD_NUMBER: _ClassVar[int]
    SKIP_DATA_UNTIL_STEP_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    kind: CommandKind
    incident_id: str
    reason: str
    resume_step: int
    skip_data_until_step: int
    rank: int
    generation: int
    def __init__(self, command_id: _Optional[str] = ..., kind: _Optional[_Union[CommandKind, str]] = ..., incident_id: _Optional[str] = ..., reason: _Optional[str] = ..., resume_step: _Optional[int] = ..., skip_data_until_step: _Optional[int] = ..., rank: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class ListIncidentsRequest(_message.Message):
    __slots__ = ("job_id", "since", "max_incidents")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    MAX_INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    since: _timestamp_pb2.Timestamp
    max_incidents: int
    def __init__(self, job_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_incidents: _Optional[int] = ...) -> None: ...

class RecoveryStep(_message.Message):
    __slots__ = ("action", "started_at", "duration_s", "succeeded", "detail")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    action: RecoveryAction
    started_at: _timestamp_pb2.Timestamp
    duration_s: float
    succeeded: bool
    detail: str
    def __init__(self, action: _Optional[_Union[RecoveryAction, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration_s: _Optional[float] = ..., succeeded: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class Incident(_message.Message):
    __slots__ = ("incident_id", "job_id", "fault", "state", "summary", "detected_at", "suspect_ranks", "suspect_hosts", "recovery_steps", "detection_s", "localization_s", "recovery_s", "num_lost_steps")
    INCIDENT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_RANKS_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_HOSTS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    DETECTION_S_FIELD_NUMBER: _ClassVar[int]
    LOCALIZATION_S_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_S_FIELD_NUMBER: _ClassVar[int]
    NUM_LOST_STEPS_FIELD_NUMBER: _ClassVar[int]
    incident_id: str
    job_id: str
    fault: FaultKind
    state: IncidentState
    summary: str
    detected_at: _timestamp_pb2.Timestamp
    suspect_ranks: _containers.RepeatedScalarFieldContainer[int]
    suspect_hosts: _containers.RepeatedScalarFieldContainer[str]
    recovery_steps: _containers.RepeatedCompositeFieldContainer[RecoveryStep]
    detection_s: float
    localization_s: float
    recovery_s: float
    num_lost_steps: int
    def __init__(self, incident_id: _Optional[str] = ..., job_id: _Optional[str] = ..., fault: _Optional[_Union[FaultKind, str]] = ..., state: _Optional[_Union[IncidentState, str]] = ..., summary: _Optional[str] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., suspect_ranks: _Optional[_Iterable[int]] = ..., suspect_hosts: _Optional[_Iterable[str]] = ..., recovery_steps: _Optional[_Iterable[_Union[RecoveryStep, _Mapping]]] = ..., detection_s: _Optional[float] = ..., localization_s: _Optional[float] = ..., recovery_s: _Optional[float] = ..., num_lost_steps: _Optional[int] = ...) -> None: ...

class ListIncidentsResponse(_message.Message):
    __slots__ = ("incidents",)
    INCIDENTS_FIELD_NUMBER: _ClassVar[int]
    incidents: _containers.RepeatedCompositeFieldContainer[Incident]
    def __init__(self, incidents: _Optional[_Iterable[_Union[Incident, _Mapping]]] = ...) -> None: ...

class GetEttrRequest(_message.Message):
    __slots__ = ("job_id", "window_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    window_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, job_id: _Optional[str] = ..., window_s: _Optional[_Iterable[float]] = ...) -> None: ...

class EttrFigure(_message.Message):
    __slots__ = ("wall_s", "productive_s", "ettr")
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    PRODUCTIVE_S_FIELD_NUMBER: _ClassVar[int]
    ETTR_FIELD_NUMBER: _ClassVar[int]
    wall_s: float
    productive_s: float
    ettr: float
    def __init__(self, wall_s: _Optional[float] = ..., productive_s: _Optional[float] = ..., ettr: _Optional[float] = ...) -> None: ...

class GetEttrResponse(_message.Message):
    __slots__ = ("cumulative", "windows")
    CUMULATIVE_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    cumulative: EttrFigure
    windows: _containers.RepeatedCompositeFieldContainer[EttrFigure]
    def __init__(self, cumulative: _Optional[_Union[EttrFigure, _Mapping]] = ..., windows: _Optional[_Iterable[_Union[EttrFigure, _Mapping]]] = ...) -> None: ...
