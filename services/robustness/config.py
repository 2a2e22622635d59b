"""Configuration of the robustness monitor: environment variables prefixed ``SEEDSTACK_ROBUSTNESS_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class RobustnessConfig(ServerConfig):
    """Settings of the robustness monitor service."""

    port: int = 50053
    """TCP port to serve gRPC on; 0 picks a free one."""
