"""Configuration of the weight hub: environment variables prefixed ``SEEDSTACK_WEIGHTHUB_``."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import ServerConfig


@dataclass(frozen=True, kw_only=True)
class WeightHubConfig(ServerConfig):
    """Settings of the weight hub service."""

    port: int = 50051
    """TCP port to serve gRPC on; 0 picks a free one."""
