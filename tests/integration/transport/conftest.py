"""Fixtures for the transport contract tests: a holder in another process, carriers to test."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator

import pytest

from services.common.transport import TensorReader
from services.common.transport.testing import HolderProcess

CHUNK_SIZE_BYTES = 256 << 10
"""Small chunks so that modest tensors have many of them (ranges, re-plans, mid-transfer kills)."""


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def carrier_params() -> list[object]:
    """Every carrier this machine can run, each as two real processes on 127.0.0.1."""
    return [
        pytest.param("tcp", id="tcp"),
        pytest.param("shm", id="shm"),
        pytest.param(
            "ucx",
            id="ucx",
            marks=pytest.mark.skipif(not _importable("ucxx"), reason="ucxx not installed (the 'ucx' extra)"),
        ),
        pytest.param(
            "nixl",
            id="nixl",
            marks=pytest.mark.skipif(not _importable("nixl"), reason="nixl not installed (optional carrier)"),
        ),
    ]


def available_carriers() -> list[str]:
    """Carriers a shared holder process offers in these tests."""
    return ["tcp", "shm"] + [c for c in ("ucx", "nixl") if _importable({"ucx": "ucxx", "nixl": "nixl"}[c])]


@pytest.fixture(params=carrier_params())
def carrier(request: pytest.FixtureRequest) -> str:
    """The carrier under test (the contract suite runs once per available carrier)."""
    return str(request.param)


@pytest.fixture(scope="module")
def holder() -> Iterator[HolderProcess]:
    """One holder process per test module, offering every available carrier."""
    with HolderProcess(carriers=available_carriers(), chunk_size_bytes=CHUNK_SIZE_BYTES) as process:
        yield process


@pytest.fixture
async def reader() -> AsyncIterator[TensorReader]:
    """A reader in the test process, with a short default deadline so a hang fails fast."""
    async with TensorReader(timeout_s=20.0) as r:
        yield r
