"""Fixtures of the rollout integration tests: a rollout server (small model) beside a real data plane,
both on loopback port 0 and registered where the rollout server resolves its peers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from clients.dataplane import DataPlaneClient
from clients.rollout import RolloutClient
from services.common.redis_meta import RedisMeta, ServiceRegistry
from services.common.server import GrpcServer
from services.dataplane.config import DataPlaneConfig
from services.dataplane.server import create_server as create_dataplane
from services.rollout.config import RolloutConfig
from services.rollout.server import create_server as create_rollout

torch.set_num_threads(1)

SMALL_MODEL = json.dumps(
    {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "max_position_embeddings": 256}
)


def rollout_config(redis_url: str, **overrides: Any) -> RolloutConfig:
    """A small, fast rollout server on loopback port 0."""
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "port": 0,
        "host": "127.0.0.1",
        "grace_s": 0.2,
        "model_config_json": SMALL_MODEL,
        "max_batch_size": 16,
        "max_context_tokens": 256,
        "max_new_tokens": 128,
        "max_samples_per_prompt": 8,
        "max_sequences_per_request": 64,
        "code_timeout_s": 2.0,
        "weights_bind_host": "127.0.0.1",
    }
    fields.update(overrides)
    return RolloutConfig(**fields)


@dataclass
class Stack:
    """Running servers and clients of one test."""

    rollout: RolloutClient
    rollout_server: GrpcServer
    dataplane: DataPlaneClient
    registry: ServiceRegistry


async def register(registry: ServiceRegistry, name: str, port: int) -> None:
    """Make ``name`` resolvable through the registry, as ``run_service`` does for a real process."""
    await registry.register(name, f"127.0.0.1:{port}", ttl_s=60.0, info={"tls": 0})


@pytest.fixture
async def dataplane_server(redis_url: str) -> AsyncIterator[GrpcServer]:
    server = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await server.server.start()
    yield server
    await server.stop(0.2)


@pytest.fixture
async def registry(redis_url: str) -> AsyncIterator[ServiceRegistry]:
    meta = RedisMeta.from_url(redis_url, "registry")
    reg = ServiceRegistry(meta)
    yield reg
    await reg.deregister_all()
    await meta.close()


@pytest.fixture
async def stack(redis_url: str, dataplane_server: GrpcServer, registry: ServiceRegistry) -> AsyncIterator[Stack]:
    await register(registry, "dataplane", dataplane_server.port)
    server = await create_rollout(rollout_config(redis_url))
    await server.server.start()
    async with (
        RolloutClient(f"127.0.0.1:{server.port}") as rollout,
        DataPlaneClient(f"127.0.0.1:{dataplane_server.port}") as dataplane,
    ):
        yield Stack(rollout, server, dataplane, registry)
    await server.stop(0.2)
