"""Domain types of the robustness monitor (no grpc): enums numbered as in the proto, incidents, commands."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Phase(enum.IntEnum):
    """What a training process is doing (numbered as ``seedstack.robustness.v1.Phase``)."""

    UNSPECIFIED = 0
    STARTUP = 1
    DATA = 2
    FORWARD_BACKWARD = 3
    COLLECTIVE = 4
    CHECKPOINT = 5
    OPTIMIZER = 6
    PUBLISH = 7
    GENERATE = 8


class FaultKind(enum.IntEnum):
    """Kind of fault (numbered as ``FaultKind``)."""

    UNSPECIFIED = 0
    CRASH = 1
    HANG = 2
    NAN = 3
    STRAGGLER = 4
    LOG_ERROR = 5
    LOSS_SPIKE = 6
    CORRUPT_CHECKPOINT = 7


class RecoveryAction(enum.IntEnum):
    """A rung of the recovery ladder (numbered as ``RecoveryAction``), lowest first."""

    UNSPECIFIED = 0
    RESTART_IN_PLACE = 1
    REPLACE_NODE = 2
    ROLLBACK = 3
    STOP_JOB = 4


class IncidentState(enum.IntEnum):
    """Where an incident stands (numbered as ``IncidentState``)."""

    UNSPECIFIED = 0
    OPEN = 1
    RECOVERING = 2
    RECOVERED = 3
    UNRECOVERED = 4


class CommandKind(enum.IntEnum):
    """What the controller asks an agent to do (numbered as ``CommandKind``)."""

    UNSPECIFIED = 0
    DUMP_STACKS = 1
    RESTART_PROCESS = 2
    STOP_PROCESS = 3
    ADOPT_RANK = 4


@dataclass
class Command:
    """One command for one agent."""

    command_id: str
    kind: CommandKind
    incident_id: str = ""
    reason: str = ""
    resume_step: int = -1
    skip_data_until_step: int = 0
    rank: int = 0
    generation: int = 0


@dataclass
class RecoveryStep:
    """One recovery attempt of an incident."""

    action: RecoveryAction
    started_at_s: float
    duration_s: float = 0.0
    succeeded: bool = False
    detail: str = ""


@dataclass
class Incident:
    """One fault from detection to its end; JSON-serialisable through ``to_json``/``from_json``."""

    incident_id: str
    job_id: str
    fault: FaultKind
    state: IncidentState
    summary: str
    detected_at_s: float
    detection_s: float
    suspect_ranks: list[int] = field(default_factory=list)
    suspect_hosts: list[str] = field(default_factory=list)
    recovery_steps: list[RecoveryStep] = field(default_factory=list)
    localization_s: float = 0.0
    recovery_s: float = 0.0
    num_lost_steps: int = 0
    fault_step: int = -1
    """Step at which the fault was seen (the NaN step; the job's step for the others)."""
    detected_step: int = -1
    """The job's step when the fault was detected."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Incident:
        """The inverse of ``to_json``."""
        data = dict(data)
        data["fault"] = FaultKind(data["fault"])
        data["state"] = IncidentState(data["state"])
        data["recovery_steps"] = [
            RecoveryStep(**{**s, "action": RecoveryAction(s["action"])}) for s in data.get("recovery_steps", [])
        ]
        return cls(**data)


@dataclass
class Heartbeat:
    """Proof of progress: the step the process is in and what it is doing."""

    step: int
    phase: Phase
    startup_progress: int = 0
    """Units of start-up work done (e.g. warm-start steps): a rising value in STARTUP is progress."""


@dataclass
class StepMetrics:
    """Figures of one finished step, sent before the optimizer applies it."""

    step: int
    loss: float
    grad_norm: float
    has_nan_or_inf: bool
    step_time_s: float
    compute_time_s: float


@dataclass
class ProcessExit:
    """The supervised process exited (minus the signal number when killed by one)."""

    exit_code: int


@dataclass
class LogMatch:
    """A log line matched a known error signature."""

    signature: str
    line: str


@dataclass
class StackDump:
    """Stacks of every thread of the process."""

    command_id: str
    tool: str
    text: str


@dataclass
class CheckpointSaved:
    """A checkpoint was written."""

    step: int
    path: str
    sha256: str


@dataclass
class ActionResult:
    """What became of a command."""

    command_id: str
    done: bool
    detail: str
    duration_s: float


@dataclass
class CheckpointRejected:
    """A checkpoint failed its checksum at load; the process fell back to ``fallback_step``."""

    step: int
    path: str
    expected_sha256: str
    actual_sha256: str
    fallback_step: int


ReportItem = (
    Heartbeat | StepMetrics | ProcessExit | LogMatch | StackDump | CheckpointSaved | ActionResult | CheckpointRejected
)
