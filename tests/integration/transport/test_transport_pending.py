"""A holder serving a tensor while it is still being filled (chunks pending until marked ready), and
reads that skip the hash of a shared-memory copy: skipped over shm only, kept over a socket.

Holder and reader share this process (the carriers still go through real sockets).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import torch

from services.common.transport import (
    ChunkHashMismatch,
    HolderBusy,
    TensorHolder,
    TensorReader,
    TransferError,
    compute_meta,
)

CHUNK = 64 << 10
NUM_CHUNKS = 4


@pytest.fixture
async def holder() -> AsyncIterator[TensorHolder]:
    async with TensorHolder(
        bind_host="127.0.0.1", carriers=["tcp", "shm"], chunk_size_bytes=CHUNK, pending_wait_s=10.0
    ) as h:
        yield h


def _content() -> torch.Tensor:
    return torch.arange(NUM_CHUNKS * CHUNK // 4, dtype=torch.float32)


async def _register_pending(holder: TensorHolder, pending: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A shared-memory tensor whose ``pending`` chunks are not in it yet; returns it and its content."""
    content = _content()
    meta = compute_meta("w", content, chunk_size_bytes=CHUNK)
    buffer = holder.allocate(tuple(content.shape), torch.float32)
    buffer.copy_(content)
    flat = buffer.view(torch.uint8)
    for chunk in pending:
        flat[chunk * CHUNK : (chunk + 1) * CHUNK] = 0  # not arrived: whatever the memory held
    await holder.register("w", buffer, meta=meta, pending_chunks=pending)
    return buffer, content


@pytest.mark.parametrize("carrier", ["tcp", "shm"])
async def test_a_read_of_a_pending_chunk_waits_until_it_arrives(holder: TensorHolder, carrier: str) -> None:
    buffer, content = await _register_pending(holder, [2, 3])
    ref = holder.ref("w")
    async with TensorReader(host_id=None if carrier == "shm" else "elsewhere") as reader:
        ready = torch.empty_like(content)
        # Chunks already there are served at once.
        await reader.read(ref, ready, chunks=[0, 1], carrier=carrier)
        assert torch.equal(ready[: 2 * CHUNK // 4], content[: 2 * CHUNK // 4])
        waiting = asyncio.create_task(reader.read(ref, ready, chunks=[2, 3], carrier=carrier))
        await asyncio.sleep(0.2)  # nothing to poll for: the read must still be waiting
        assert not waiting.done()
        # The writer fills the chunks, then says so (as a Reader's on_chunk callback does).
        buffer.view(torch.uint8).copy_(content.view(torch.uint8))
        holder.mark_ready("w", [2])
        assert not waiting.done()
        holder.mark_ready("w", [3])
        result = await asyncio.wait_for(waiting, 10)
        assert result.chunks == (2, 3)
        assert torch.equal(ready, content)


async def test_a_pending_chunk_not_arriving_in_time_is_refused() -> None:
    async with TensorHolder(
        bind_host="127.0.0.1", carriers=["tcp", "shm"], chunk_size_bytes=CHUNK, pending_wait_s=0.2
    ) as holder:
        await _register_pending(holder, [1])
        async with TensorReader() as reader:
            with pytest.raises(HolderBusy, match="not arrived"):
                await reader.read(holder.ref("w"), torch.empty(NUM_CHUNKS * CHUNK // 4), chunks=[1], carrier="shm")


async def test_unregistering_wakes_a_read_waiting_for_a_pending_chunk(holder: TensorHolder) -> None:
    await _register_pending(holder, [0])
    async with TensorReader() as reader:
        waiting = asyncio.create_task(
            reader.read(holder.ref("w"), torch.empty(NUM_CHUNKS * CHUNK // 4), chunks=[0], carrier="shm")
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await holder.unregister("w")
        with pytest.raises(TransferError):
            await asyncio.wait_for(waiting, 5)


async def test_pending_chunks_need_metadata_and_valid_indices(holder: TensorHolder) -> None:
    content = _content()
    with pytest.raises(ValueError, match="pending chunks"):
        await holder.register("w", content, pending_chunks=[0])
    with pytest.raises(ValueError, match="pending chunks"):
        await holder.register("w", content, meta=compute_meta("w", content, chunk_size_bytes=CHUNK), pending_chunks=[9])


async def test_verify_false_skips_the_hash_of_a_shared_memory_copy_but_never_over_a_socket(
    holder: TensorHolder,
) -> None:
    content = _content()
    meta = compute_meta("w", content, chunk_size_bytes=CHUNK)
    buffer = holder.allocate(tuple(content.shape), torch.float32)
    buffer.copy_(content)
    await holder.register("w", buffer, meta=meta)
    buffer[0] += 1.0  # the holder's bytes no longer match their hash (a holder that breaks its lease)
    ref = holder.ref("w")
    async with TensorReader(host_id="elsewhere") as remote, TensorReader() as local:
        # Over a socket the hash is always checked, whatever the caller asks.
        with pytest.raises(ChunkHashMismatch):
            await remote.read(ref, torch.empty_like(content), carrier="tcp", verify=False)
        # Over shared memory the default still verifies ...
        with pytest.raises(ChunkHashMismatch):
            await local.read(ref, torch.empty_like(content), carrier="shm")
        # ... and verify=False trusts the leased source: the copy is exact, unhashed.
        copied = torch.empty_like(content)
        result = await local.read(ref, copied, carrier="shm", verify=False)
        assert result.chunks == tuple(range(NUM_CHUNKS))
        assert torch.equal(copied, buffer)


@pytest.mark.parametrize("carrier", ["tcp", "shm"])
async def test_a_read_of_a_name_registered_moments_later_waits_for_it(holder: TensorHolder, carrier: str) -> None:
    # A planner may name a holder for a tensor a few milliseconds before the holder registers it.
    content = _content()
    meta = compute_meta("w", content, chunk_size_bytes=CHUNK)
    buffer = holder.allocate(tuple(content.shape), torch.float32)
    buffer.copy_(content)
    ref = await holder.register("w", buffer, meta=meta)
    await holder.unregister("w")
    async with TensorReader(host_id=None if carrier == "shm" else "elsewhere") as reader:
        got = torch.empty_like(content)
        read = asyncio.create_task(reader.read(ref, got, carrier=carrier))
        await asyncio.sleep(0.05)
        assert not read.done()
        await holder.register("w", buffer, meta=meta)
        await asyncio.wait_for(read, 10)
        assert torch.equal(got, content)
        # A name that never comes is refused (after a short wait).
        await holder.unregister("w")
        with pytest.raises(TransferError, match="no tensor named"):
            await reader.read(ref, got, carrier=carrier)
