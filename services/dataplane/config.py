"""Configuration of the data plane: environment variables prefixed ``SEEDSTACK_DATAPLANE_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class DataPlaneConfig(ServerConfig):
    """Settings of the data plane service."""

    port: int = 50052
    """TCP port to serve gRPC on; 0 picks a free one."""
