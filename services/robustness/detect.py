"""Fault detectors: pure logic, fed by the controller, no I/O.

Liveness (is the agent talking?) and progress (is the step counter moving?) are judged apart: a
process whose heartbeat thread runs while its main thread is stuck still beats, and only the
progress timeout sees it. Timeouts depend on the phase and adapt to what the job has shown.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.robustness.model import Phase

# Known error signatures of training logs: name -> pattern. Hardware ones evict the node first.
ERROR_SIGNATURES: dict[str, re.Pattern[str]] = {
    "cuda_error": re.compile(r"CUDA error|cudaError|CUBLAS_STATUS|illegal memory access", re.IGNORECASE),
    "ecc_error": re.compile(r"uncorrectable ECC|ECC error|Xid \d+", re.IGNORECASE),
    "nccl_error": re.compile(r"NCCL (WARN|error)|ncclInternalError|ncclSystemError|Watchdog caught collective"),
    "gloo_error": re.compile(r"Gloo connectFullMesh failed|gloo.*Connection (reset|closed) by peer", re.IGNORECASE),
    "oom": re.compile(r"CUDA out of memory|OutOfMemoryError|Cannot allocate memory|MemoryError"),
    "timeout": re.compile(r"collective operation timeout|Timed out waiting|DistBackendError.*timeout", re.IGNORECASE),
}
HARDWARE_SIGNATURES = frozenset({"cuda_error", "ecc_error", "nccl_error"})
SECONDARY_SIGNATURES = frozenset({"gloo_error", "timeout"})
"""Errors a rank logs when a *peer* failed: they wait a grace period for the primary signal (an exit)."""


def match_signature(line: str) -> str | None:
    """The name of the first known error signature ``line`` matches, or None."""
    for name, pattern in ERROR_SIGNATURES.items():
        if pattern.search(line):
            return name
    return None


@dataclass
class HangTimeouts:
    """Phase-aware, adaptive no-progress timeouts.

    The compute timeout is ``multiplier`` times the longest of the recent step times (and never under
    ``min_timeout_s``); checkpoints have their own, learned from the longest checkpoint seen, so a
    long save is not a hang; start-up has a fixed allowance.
    """

    min_timeout_s: float
    multiplier: float
    checkpoint_min_timeout_s: float
    startup_timeout_s: float
    num_recent: int = 50
    step_times_s: deque[float] = field(default_factory=lambda: deque(maxlen=50))
    longest_phase_s: dict[Phase, float] = field(default_factory=dict)

    def observe_step(self, step_time_s: float) -> None:
        """Learn from one finished step's wall time."""
        if math.isfinite(step_time_s) and step_time_s > 0:
            self.step_times_s.append(step_time_s)

    def observe_phase(self, phase: Phase, duration_s: float) -> None:
        """Learn from one finished phase's duration (a checkpoint save, a data wait)."""
        if math.isfinite(duration_s) and duration_s > self.longest_phase_s.get(phase, 0.0):
            self.longest_phase_s[phase] = duration_s

    def timeout_s(self, phase: Phase) -> float:
        """How long the job may go without progress while its slowest rank is in ``phase``."""
        if phase in (Phase.STARTUP, Phase.UNSPECIFIED):
            return self.startup_timeout_s
        if phase == Phase.CHECKPOINT:
            return max(self.checkpoint_min_timeout_s, self.multiplier * self.longest_phase_s.get(phase, 0.0))
        longest = max(self.step_times_s, default=0.0)
        longest = max(longest, self.longest_phase_s.get(phase, 0.0))
        return max(self.min_timeout_s, self.multiplier * longest)


@dataclass
class StragglerDetector:
    """Finds a rank whose compute time (before the collective) stands out from its group's.

    Per-rank step time hides a straggler (the all-reduce makes everyone wait for it), so compute
    time is compared. Each window of ``window_steps`` steps gives every rank the ratio of its
    median compute time to the median over the group; a rank above ``ratio`` in ``num_windows``
    consecutive windows is a straggler.
    """

    ratio: float
    window_steps: int
    num_windows: int
    _current: dict[int, list[float]] = field(default_factory=dict)
    _window_start: int | None = None
    _slow_windows: dict[int, int] = field(default_factory=dict)
    last_scores: dict[int, float] = field(default_factory=dict)

    def observe(self, rank: int, step: int, compute_time_s: float) -> None:
        """Record one rank's compute time of one step."""
        if not (math.isfinite(compute_time_s) and compute_time_s >= 0):
            return
        if self._window_start is None or step < self._window_start:
            self._window_start = step
        self._current.setdefault(rank, []).append(compute_time_s)

    def close_window_if_due(self, step: int, ranks: Iterable[int]) -> list[int]:
        """When a window is complete at ``step``, score it; returns the ranks now judged stragglers."""
        if self._window_start is None or step - self._window_start < self.window_steps:
            return []
        medians = {r: statistics.median(v) for r, v in self._current.items() if v}
        self._current.clear()
        self._window_start = step
        ranks = [r for r in ranks if r in medians]
        if len(ranks) < 2:
            return []
        group = statistics.median(medians[r] for r in ranks)
        stragglers = []
        for rank in ranks:
            # A floor keeps microsecond-level noise on an idle group from scoring.
            score = medians[rank] / max(group, 1e-4)
            self.last_scores[rank] = score
            self._slow_windows[rank] = self._slow_windows.get(rank, 0) + 1 if score > self.ratio else 0
            if self._slow_windows[rank] >= self.num_windows:
                stragglers.append(rank)
        return stragglers

    def reset(self) -> None:
        """Forget everything (after a restart the ranks may sit on other nodes)."""
        self._current.clear()
        self._window_start = None
        self._slow_windows.clear()
        self.last_scores.clear()


@dataclass
class LossSpikeDetector:
    """A loss far above the median of the recent ones (needs ``min_history`` finite losses first)."""

    ratio: float
    min_history: int = 10
    history: deque[float] = field(default_factory=lambda: deque(maxlen=50))

    def observe(self, loss: float) -> bool:
        """Record the job's loss of one step; True when it is a spike."""
        if not math.isfinite(loss):
            return False
        spike = False
        if len(self.history) >= self.min_history:
            median = statistics.median(self.history)
            spike = median > 0 and loss > self.ratio * median
        if not spike:
            self.history.append(loss)
        return spike


def slowest_phase(phases: Mapping[int, Phase]) -> Phase:
    """The phase whose timeout governs the job: checkpoint beats start-up beats the rest."""
    values = set(phases.values())
    if Phase.CHECKPOINT in values:
        return Phase.CHECKPOINT
    if Phase.STARTUP in values or Phase.UNSPECIFIED in values:
        return Phase.STARTUP
    for phase in (Phase.DATA, Phase.PUBLISH, Phase.GENERATE, Phase.OPTIMIZER, Phase.FORWARD_BACKWARD):
        if phase in values:
            return phase
    return Phase.COLLECTIVE
