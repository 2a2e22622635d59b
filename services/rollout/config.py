"""Configuration of the rollout server: environment variables prefixed ``SEEDSTACK_ROLLOUT_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class RolloutConfig(ServerConfig):
    """Settings of the rollout server and verifiers service."""

    port: int = 50054
    """TCP port to serve gRPC on; 0 picks a free one."""
