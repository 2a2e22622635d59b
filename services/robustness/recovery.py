"""The recovery ladder: which action to try for a fault, when to climb, when to stop.

Rungs, cheapest first: restart in place -> replace the node with a warm standby -> roll back to an
older good checkpoint (skipping the data window for a NaN) -> stop and report. A fault starts on
the rung that can fix it (a NaN is not fixed by a restart, a slow node not by a rollback); a
failed action climbs one rung; a fault that repeats soon after a recovery starts above the rung
that "fixed" it last time; and a job-wide budget bounds the actions, so a fault that keeps coming
back stops the job instead of looping it through restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.robustness.detect import HARDWARE_SIGNATURES
from services.robustness.model import FaultKind, RecoveryAction

_LADDER = [
    RecoveryAction.RESTART_IN_PLACE,
    RecoveryAction.REPLACE_NODE,
    RecoveryAction.ROLLBACK,
    RecoveryAction.STOP_JOB,
]


def first_action(fault: FaultKind, signature: str = "") -> RecoveryAction:
    """The rung a fault starts on."""
    if fault == FaultKind.NAN:
        return RecoveryAction.ROLLBACK
    if fault == FaultKind.STRAGGLER:
        return RecoveryAction.REPLACE_NODE
    if fault == FaultKind.LOG_ERROR and signature in HARDWARE_SIGNATURES:
        return RecoveryAction.REPLACE_NODE
    return RecoveryAction.RESTART_IN_PLACE


def next_action(action: RecoveryAction) -> RecoveryAction:
    """The rung above ``action`` (STOP_JOB stays)."""
    return _LADDER[min(_LADDER.index(action) + 1, len(_LADDER) - 1)]


@dataclass
class RecoveryBudget:
    """Per job: actions taken, and the last recovered fault of each kind (for repeats)."""

    max_attempts: int
    repeat_window_s: float
    num_attempts: int = 0
    last_recovered: dict[int, tuple[float, int]] = field(default_factory=dict)
    """fault kind -> (time recovered, rung index that recovered it)."""

    def start_action(self, fault: FaultKind, now_s: float, signature: str = "") -> RecoveryAction:
        """The action a new incident of ``fault`` starts with (one rung up when it repeats)."""
        action = first_action(fault, signature)
        previous = self.last_recovered.get(int(fault))
        if previous is not None and now_s - previous[0] <= self.repeat_window_s:
            action = max(action, next_action(_LADDER[previous[1]]), key=_LADDER.index)
        return self.admit(action)

    def admit(self, action: RecoveryAction) -> RecoveryAction:
        """Count ``action`` against the budget; STOP_JOB when the budget is spent."""
        if action == RecoveryAction.STOP_JOB:
            return action
        if self.num_attempts >= self.max_attempts:
            return RecoveryAction.STOP_JOB
        self.num_attempts += 1
        return action

    def recovered(self, fault: FaultKind, action: RecoveryAction, now_s: float) -> None:
        """Remember that ``action`` recovered ``fault``."""
        self.last_recovered[int(fault)] = (now_s, _LADDER.index(action))

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {
            "num_attempts": self.num_attempts,
            "last_recovered": {str(k): v for k, v in self.last_recovered.items()},
        }

    def load_json(self, data: dict[str, object]) -> None:
        """Restore what ``to_json`` wrote."""
        self.num_attempts = int(data.get("num_attempts", 0))  # type: ignore[call-overload]
        recovered = data.get("last_recovered", {})
        assert isinstance(recovered, dict)
        self.last_recovered = {int(k): (float(v[0]), int(v[1])) for k, v in recovered.items()}
