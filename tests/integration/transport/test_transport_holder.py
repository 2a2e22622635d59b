"""Holder behaviour a publisher relies on: registration, shared memory, updates and unregistering.

Holder and reader share this process here (the carriers still go through real sockets); the
cross-process contract is in test_transport_contract.py.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import AsyncIterator

import pytest
import torch

from services.common.transport import (
    CarrierUnavailable,
    LeaseTimeout,
    StaleTensor,
    TensorHolder,
    TensorReader,
    UnknownTensor,
    compute_meta,
)
from tests.support import assert_eventually


@pytest.fixture
async def holder() -> AsyncIterator[TensorHolder]:
    async with TensorHolder(bind_host="127.0.0.1", carriers=["tcp", "shm"], chunk_size_bytes=64 << 10) as h:
        yield h


async def test_holder_options_are_checked() -> None:
    with pytest.raises(ValueError, match="must include 'tcp'"):
        TensorHolder(carriers=["shm"])
    with pytest.raises(ValueError, match="unknown carriers"):
        TensorHolder(carriers=["tcp", "smoke-signals"])
    with pytest.raises(ValueError, match="chunk_size_bytes must be > 0, got 0"):
        TensorHolder(chunk_size_bytes=0)
    with pytest.raises(ValueError, match="'md5'"):
        TensorHolder(hash_algo="md5")


async def test_register_with_known_metadata(holder: TensorHolder) -> None:
    tensor = torch.arange(1000, dtype=torch.float32)
    meta = compute_meta("w", tensor, chunk_size_bytes=1024)
    ref = await holder.register("w", tensor, meta=meta)
    assert ref.meta is meta  # trusted, not re-hashed
    with pytest.raises(ValueError, match="does not describe"):
        await holder.register("v", tensor.reshape(10, 100), meta=compute_meta("v", tensor))
    with pytest.raises(ValueError, match="already registered"):
        await holder.register("w", tensor)


async def test_only_allocated_tensors_are_offered_over_shm(holder: TensorHolder) -> None:
    plain = await holder.register("plain", torch.ones(1000))
    shared_tensor = holder.allocate((1000,), torch.float32)
    shared_tensor.fill_(2.0)
    shared = await holder.register("shared", shared_tensor[100:600])  # a view inside the segment works
    assert [c.carrier for c in plain.carriers] == ["tcp"]
    assert [c.carrier for c in shared.carriers] == ["tcp", "shm"]
    async with TensorReader() as reader:
        with pytest.raises(CarrierUnavailable, match="shm"):
            await reader.read(plain, torch.empty(1000), carrier="shm")
        dst = torch.empty(500)
        result = await reader.read(shared, dst)
    assert result.carrier == "shm"
    assert torch.equal(dst, torch.full((500,), 2.0))


async def test_update_rehashes_and_old_references_go_stale(holder: TensorHolder) -> None:
    old_ref = await holder.register("w", holder.allocate((4096,), torch.int64).zero_())
    new_ref = await holder.update("w", torch.arange(4096))
    assert new_ref.meta.root_hash != old_ref.meta.root_hash
    assert new_ref.meta.changed_chunks(old_ref.meta) == list(range(new_ref.meta.num_chunks))
    async with TensorReader() as reader:
        with pytest.raises(StaleTensor):
            await reader.read(old_ref, torch.empty(4096, dtype=torch.int64))
        dst = torch.empty(4096, dtype=torch.int64)
        await reader.read(new_ref, dst)
    assert torch.equal(dst, torch.arange(4096))
    with pytest.raises(ValueError, match="needs 32768 bytes of int64"):
        await holder.update("w", torch.arange(10))


async def test_unregister_waits_for_reads_in_flight(holder: TensorHolder) -> None:
    tensor = holder.allocate((1 << 20,), torch.float32).fill_(1.0)  # 4 MiB, 64 chunks
    ref = await holder.register("w", tensor)
    first_chunk = threading.Event()
    resume = threading.Event()

    def pause(chunk: int) -> None:
        if not first_chunk.is_set():
            first_chunk.set()
            resume.wait(30)

    async with TensorReader() as reader:
        read = asyncio.create_task(reader.read(ref, torch.empty(1 << 20), carrier="shm", on_chunk=pause))
        assert await asyncio.to_thread(first_chunk.wait, 20)
        try:
            with pytest.raises(LeaseTimeout):
                await holder.unregister("w", timeout_s=0.2)
            assert holder.names() == ["w"]
        finally:
            resume.set()
        await read
        await holder.unregister("w", timeout_s=10.0)
        assert holder.names() == []
        with pytest.raises(UnknownTensor):
            await reader.read(ref, torch.empty(1 << 20), carrier="shm")


async def test_unregister_many_waits_for_each_read_and_skips_unknown_names(holder: TensorHolder) -> None:
    ref = await holder.register("a", holder.allocate((1 << 20,), torch.float32).fill_(1.0))
    await holder.register("b", holder.allocate((16,), torch.float32).fill_(2.0))
    first_chunk = threading.Event()
    resume = threading.Event()

    def pause(chunk: int) -> None:
        if not first_chunk.is_set():
            first_chunk.set()
            resume.wait(30)

    async with TensorReader() as reader:
        read = asyncio.create_task(reader.read(ref, torch.empty(1 << 20), carrier="shm", on_chunk=pause))
        assert await asyncio.to_thread(first_chunk.wait, 20)
        try:
            gone = asyncio.create_task(holder.unregister_many(["b", "missing", "a"], timeout_s=30.0))
            # "b" goes at once; "a" stays served until its read in flight ends.
            await assert_eventually(lambda: holder.names() == ["a"])
            assert not gone.done()
        finally:
            resume.set()
        await read
        await gone
        assert holder.names() == []


async def test_shared_memory_is_freed_with_the_tensor(holder: TensorHolder) -> None:
    tensor = holder.allocate((1 << 16,), torch.uint8)
    await holder.register("w", tensor)
    segment = holder._segments[-1]
    await holder.unregister("w")
    del tensor

    async def freed() -> bool:
        # asyncio may hold the last finished future (and so the tensor) until its next iteration.
        gc.collect()
        return not segment.alive

    await assert_eventually(freed, timeout_s=5.0, message="segment unmapped once its tensor is gone")
