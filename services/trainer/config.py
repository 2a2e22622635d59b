"""Configuration of the trainer: environment variables prefixed ``SEEDSTACK_TRAINER_``."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(ServerConfig):
    """Settings of the trainer service."""

    port: int = 50055
    """TCP port to serve gRPC on; 0 picks a free one."""
    runs_dir: Path = Path(tempfile.gettempdir()) / "seedstack-trainer"
    """Directory of the runs: each run's spec, status, rank logs and default checkpoints."""
    publish_bind_host: str = "0.0.0.0"
    """Address the ranks' weight publishers serve reads on (loopback in tests)."""
    stop_timeout_s: float = 60.0
    """Seconds a stopped run's ranks get to finish their step before they are terminated."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.stop_timeout_s > 0, "stop_timeout_s", self.stop_timeout_s, "must be > 0")
