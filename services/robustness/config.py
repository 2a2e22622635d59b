"""Configuration of the robustness monitor: environment variables prefixed ``SEEDSTACK_ROBUSTNESS_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class RobustnessConfig(ServerConfig):
    """Settings of the robustness monitor service."""

    port: int = 50053
    """TCP port to serve gRPC on; 0 picks a free one."""
    heartbeat_interval_s: float = 1.0
    """How often agents are told to send a heartbeat."""
    liveness_timeout_s: float = 5.0
    """A live process whose agent sent nothing for this long is hung (SIGSTOP, GIL held)."""
    startup_timeout_s: float = 120.0
    """Longest a process may take from launch to its first step before it counts as hung."""
    hang_min_timeout_s: float = 30.0
    """Floor of the no-progress timeout of the compute phases."""
    hang_step_multiplier: float = 5.0
    """No-progress timeout = this many times the longest recent step (or phase) seen, at least the floor."""
    checkpoint_min_timeout_s: float = 120.0
    """Floor of the no-progress timeout while a rank is saving or loading a checkpoint."""
    straggler_ratio: float = 1.5
    """A rank is slow in a window when its median compute time exceeds its group's median by this factor."""
    straggler_window_steps: int = 5
    """Steps per straggler window."""
    straggler_windows: int = 3
    """Consecutive slow windows that make a straggler."""
    loss_spike_ratio: float = 10.0
    """A loss above this many times the recent median is a loss spike (an alert, no recovery)."""
    max_recovery_attempts: int = 6
    """Recovery actions a job may take in all; past it the job is stopped."""
    repeat_window_s: float = 600.0
    """A fault of the same kind within this long after a recovery starts one rung higher."""
    recovery_timeout_s: float = 120.0
    """How long a recovery action has to bring progress back before the next rung is tried."""
    stack_dump_timeout_s: float = 3.0
    """How long localisation waits for stack dumps."""
    check_interval_s: float = 0.2
    """Period of the detection loop."""
    max_agents: int = 10000
    """Registered agents at most; more registrations get RESOURCE_EXHAUSTED."""
    max_report_rate_per_s: float = 500.0
    """Report items per second one stream may send; faster streams are slowed (back-pressure)."""
    max_text_bytes: int = 65536
    """Longest log line or stack dump kept; longer ones are truncated."""
    max_incidents_per_job: int = 1000
    """Incidents kept per job; the oldest are dropped."""
    command_queue_size: int = 64
    """Commands waiting for one agent at most; when full the oldest is dropped and counted."""
    ettr_windows_s: tuple[float, ...] = (300.0, 3600.0)
    """Trailing windows GetEttr reports when the request names none."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "heartbeat_interval_s",
            "liveness_timeout_s",
            "startup_timeout_s",
            "hang_min_timeout_s",
            "checkpoint_min_timeout_s",
            "repeat_window_s",
            "recovery_timeout_s",
            "stack_dump_timeout_s",
            "check_interval_s",
            "max_report_rate_per_s",
        ):
            value = getattr(self, name)
            check(value > 0, name, value, "must be > 0")
        check(
            self.liveness_timeout_s >= 2 * self.heartbeat_interval_s,
            "liveness_timeout_s",
            self.liveness_timeout_s,
            f"must be at least twice heartbeat_interval_s ({self.heartbeat_interval_s})",
        )
        check(self.hang_step_multiplier >= 1, "hang_step_multiplier", self.hang_step_multiplier, "must be >= 1")
        check(self.straggler_ratio > 1, "straggler_ratio", self.straggler_ratio, "must be > 1")
        check(self.straggler_window_steps >= 1, "straggler_window_steps", self.straggler_window_steps, "must be >= 1")
        check(self.straggler_windows >= 1, "straggler_windows", self.straggler_windows, "must be >= 1")
        check(self.loss_spike_ratio > 1, "loss_spike_ratio", self.loss_spike_ratio, "must be > 1")
        check(self.max_recovery_attempts >= 1, "max_recovery_attempts", self.max_recovery_attempts, "must be >= 1")
        check(self.max_agents >= 1, "max_agents", self.max_agents, "must be >= 1")
        check(self.max_text_bytes >= 256, "max_text_bytes", self.max_text_bytes, "must be >= 256")
        check(self.max_incidents_per_job >= 1, "max_incidents_per_job", self.max_incidents_per_job, "must be >= 1")
        check(self.command_queue_size >= 1, "command_queue_size", self.command_queue_size, "must be >= 1")
        check(all(w > 0 for w in self.ettr_windows_s), "ettr_windows_s", self.ettr_windows_s, "windows must be > 0 s")
