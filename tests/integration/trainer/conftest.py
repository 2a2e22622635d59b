"""A trainer server on port 0 whose runs live under the test's tmp dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clients.trainer import TrainerClient
from services.trainer.config import TrainerConfig
from services.trainer.server import create_server

TINY_MODEL = (
    '{"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, '
    '"num_key_value_heads": 2}'
)


@pytest.fixture
async def trainer(redis_url: str, tmp_path: Path) -> AsyncIterator[TrainerClient]:
    """A client of a running trainer; closing the server ends every run's process group."""
    config = TrainerConfig(
        redis_url=redis_url, port=0, host="127.0.0.1", runs_dir=tmp_path / "runs", grace_s=0.5, stop_timeout_s=60
    )
    server = await create_server(config)
    await server.server.start()
    try:
        async with TrainerClient(f"127.0.0.1:{server.port}") as client:
            yield client
    finally:
        await server.stop(0.5)
