"""Configuration of the data plane: environment variables prefixed ``SEEDSTACK_DATAPLANE_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class DataPlaneConfig(ServerConfig):
    """Settings of the data plane service."""

    port: int = 50052
    """TCP port to serve gRPC on; 0 picks a free one."""
    max_loader_workers: int = 8
    """Loader worker processes per plan that auto-partitioning may hand out (at least one per source)."""
    retain_steps: int = 64
    """Built global batches kept behind the newest requested step (older ones need a Restore)."""
    max_steps_ahead: int = 256
    """How far past the newest built step a NextBatch or Checkpoint may ask."""
    checkpoint_every_steps: int = 100
    """Automatic checkpoint interval in steps (0 turns it off); a restarted service resumes from the latest."""
    checkpoint_base_every: int = 10
    """Checkpoints between two full bases; the ones between store deltas against the base."""
    prompt_timeout_s: float = 300.0
    """RL: a prompt whose samples have not all arrived after this long is handed out again."""
    max_wait_s: float = 60.0
    """Longest a NextBatch waits for an RL batch to fill when the call has no deadline."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(1 <= self.max_loader_workers <= 256, "max_loader_workers", self.max_loader_workers, "must be 1..256")
        check(self.retain_steps >= 1, "retain_steps", self.retain_steps, "must be >= 1")
        check(self.max_steps_ahead >= 1, "max_steps_ahead", self.max_steps_ahead, "must be >= 1")
        check(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", self.checkpoint_every_steps, "must be >= 0")
        check(self.checkpoint_base_every >= 1, "checkpoint_base_every", self.checkpoint_base_every, "must be >= 1")
        check(self.prompt_timeout_s > 0, "prompt_timeout_s", self.prompt_timeout_s, "must be > 0")
        check(self.max_wait_s > 0, "max_wait_s", self.max_wait_s, "must be > 0")
