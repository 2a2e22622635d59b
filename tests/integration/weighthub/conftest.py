"""Fixtures of the weight hub integration tests: a live hub on port 0 over the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from clients.weighthub import WeightHubClient
from services.common.server import GrpcServer
from services.weighthub.config import WeightHubConfig
from services.weighthub.server import create_server


async def start_hub(redis_url: str, **overrides: object) -> tuple[GrpcServer, str]:
    """A started hub on a free loopback port and its address."""
    config = WeightHubConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2, **overrides)  # type: ignore[arg-type]
    server = await create_server(config)
    await server.server.start()
    return server, f"127.0.0.1:{server.port}"


@pytest.fixture
async def hub(redis_url: str) -> AsyncIterator[str]:
    """Address of a running hub (keep the last 2 versions)."""
    server, address = await start_hub(redis_url)
    try:
        yield address
    finally:
        await server.stop(0.2)


@pytest.fixture
async def client(hub: str) -> AsyncIterator[WeightHubClient]:
    """A typed client of ``hub``."""
    async with WeightHubClient(hub) as c:
        yield c


@pytest.fixture
def loopback() -> Callable[..., dict[str, object]]:
    """Keyword arguments that keep a Publisher/Reader on loopback with short leases."""

    def kwargs(**extra: object) -> dict[str, object]:
        return {"transport_bind_host": "127.0.0.1", "lease_ttl_s": 2.0, **extra}

    return kwargs
