"""Configuration of the 3D generation service: environment variables prefixed ``SEEDSTACK_GEN3D_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class Gen3DConfig(ServerConfig):
    """Settings of the 3D generation service."""

    port: int = 50056
    """TCP port to serve gRPC on; 0 picks a free one."""
