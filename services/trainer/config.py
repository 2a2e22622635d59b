"""Configuration of the trainer: environment variables prefixed ``SEEDSTACK_TRAINER_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class TrainerConfig(ServerConfig):
    """Settings of the trainer service."""

    port: int = 50055
    """TCP port to serve gRPC on; 0 picks a free one."""
