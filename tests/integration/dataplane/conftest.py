"""Fixtures of the data plane integration tests: a corpus on disk and a live server on port 0."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.dataplane import DataPlaneClient
from services.dataplane.config import DataPlaneConfig
from services.dataplane.server import create_server


def write_corpus(root: Path, num_records: int = 300) -> dict[str, Path]:
    """A JSONL source (two shards, one with a bad line in 20) and a Parquet source of different lengths."""
    jsonl = root / "short"
    jsonl.mkdir()
    for shard in range(2):
        lines = [json.dumps({"text": f"short {shard}-{i} " + "x" * (i % 40)}) for i in range(num_records // 2)]
        if shard == 1:
            for bad in range(7, len(lines), 20):
                lines[bad] = "{not json"
        (jsonl / f"part-{shard}.jsonl").write_text("\n".join(lines) + "\n")
    table = pa.table(
        {
            "prompt": [f"long {i} " + "y" * (50 + (i * 37) % 900) for i in range(num_records)],
            "answer": [str(i) for i in range(num_records)],
        }
    )
    parquet = root / "long.parquet"
    pq.write_table(table, parquet, row_group_size=64)
    return {"jsonl": jsonl, "parquet": parquet}


def spec_yaml(corpus: dict[str, Path], **extra: object) -> str:
    """A three-source plan (JSONL, Parquet, generated) with a curriculum change at step 6."""
    text = f"""
sources:
  - name: short
    format: jsonl
    path: {corpus["jsonl"]}
    weight: 2
  - name: long
    format: parquet
    path: {corpus["parquet"]}
    weight: 1
    preprocessing: {{text_field: prompt, max_length_tokens: 600}}
  - name: arith
    format: generated
    generator: arithmetic
    weight: 1
schedule:
  - start_step: 6
    weights: {{short: 1, arith: 3}}
global_batch_size: 24
seed: 7
num_ranks: 4
balance: {{lookahead_batches: 3}}
"""
    for key, value in extra.items():
        text += f"{key}: {json.dumps(value)}\n"
    return text


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """The corpus of ``write_corpus`` under the test's tmp dir."""
    return write_corpus(tmp_path)


@pytest.fixture
def config(redis_url: str) -> DataPlaneConfig:
    """A data plane config on port 0 with small limits so eviction and auto-checkpoints happen."""
    return DataPlaneConfig(
        redis_url=redis_url, port=0, host="127.0.0.1", max_loader_workers=4, checkpoint_every_steps=6, grace_s=0.5
    )


@pytest.fixture
async def client(config: DataPlaneConfig) -> AsyncIterator[DataPlaneClient]:
    """A client of a running data plane server."""
    server = await create_server(config)
    await server.server.start()
    async with DataPlaneClient(f"127.0.0.1:{server.port}") as c:
        yield c
    await server.stop(0.5)
