"""The tensor-plane contract, run against every available carrier.

Each test is two real processes on 127.0.0.1: the holder in a spawned child (``HolderProcess``), the
reader here. The ``carrier`` fixture forces the carrier, and every test checks that the carrier the
read reports is the one under test, so a silent fallback cannot make a carrier look tested.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from services.common.transport import (
    ByteRangeError,
    ChunkHashMismatch,
    HolderBusy,
    IncompleteTransfer,
    LeaseTimeout,
    PeerDisconnected,
    StaleTensor,
    TensorAssembly,
    TensorReader,
    TensorRef,
    TransferError,
    TransferTimeout,
    UnknownTensor,
    compute_meta,
)
from services.common.transport.testing import HolderProcess, pattern
from tests.support import assert_eventually

DTYPES = [
    ((1000, 257), torch.float32),
    ((3, 5, 7, 11), torch.bfloat16),
    ((65_537,), torch.int64),
    ((4099,), torch.bool),
    ((512, 512), torch.float16),
    ((0,), torch.float32),
    ((), torch.float64),
]


def _more_than_socket_buffers() -> int:
    """Elements of float32 that loopback socket buffers cannot hold at once, so a holder is still
    sending (and holding its lease) while its reader pauses."""
    size_bytes = 0
    for path in ("/proc/sys/net/ipv4/tcp_rmem", "/proc/sys/net/ipv4/tcp_wmem"):
        try:
            size_bytes += int(Path(path).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            size_bytes += 32 << 20
    return max(64 << 20, 2 * size_bytes) // 4


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (random bit patterns include NaNs, which torch.equal calls unequal)."""
    return a.dtype == b.dtype and torch.equal(_bytes(a.cpu()), _bytes(b))


async def test_full_tensors_of_every_dtype(
    holder: HolderProcess, reader: TensorReader, carrier: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.common.transport.reader")
    for i, (shape, dtype) in enumerate(DTYPES):
        ref = holder.register(f"full-{carrier}-{i}", shape, dtype, seed=i)
        # The reference crosses the control plane as JSON.
        ref = TensorRef.from_json(ref.to_json())
        dst = torch.empty(shape, dtype=dtype)
        result = await reader.read(ref, dst, carrier=carrier)
        assert result.carrier == carrier
        assert _same(dst, pattern(shape, dtype, i)), (shape, dtype)
        assert result.size_bytes == ref.meta.size_bytes
    assert f"via {carrier}" in caplog.text  # the carrier actually used is logged


async def test_chunks_land_at_their_offsets_and_nowhere_else(
    holder: HolderProcess, reader: TensorReader, carrier: str
) -> None:
    shape, dtype = (3 << 20,), torch.float32  # 12 MiB, 48 chunks
    ref = holder.register(f"ranges-{carrier}", shape, dtype, seed=7)
    expected = _bytes(pattern(shape, dtype, 7))
    n = ref.meta.num_chunks
    dst = torch.full(shape, -1.0)
    wanted = [0, 5, 6, n - 1]
    result = await reader.read(ref, dst, chunks=wanted, carrier=carrier)
    assert result.chunks == tuple(wanted)
    got = _bytes(dst)
    untouched = _bytes(torch.full(shape, -1.0))
    for i in range(n):
        r = ref.meta.chunk_range(i)
        source = expected if i in wanted else untouched
        assert torch.equal(got[r.offset : r.end], source[r.offset : r.end]), f"chunk {i}"


async def test_read_many_reads_several_tensors_from_one_holder_and_stops_at_the_first_failure(
    holder: HolderProcess, reader: TensorReader, carrier: str
) -> None:
    specs = [((1 << 18,), torch.float32), ((3, 1000), torch.int64), ((4099,), torch.bfloat16)]
    refs = [holder.register(f"many-{carrier}-{i}", shape, dtype, seed=20 + i) for i, (shape, dtype) in enumerate(specs)]
    dsts = [torch.empty(shape, dtype=dtype) for shape, dtype in specs]
    landed: list[tuple[str, int]] = []
    results = await reader.read_many(
        [(ref, dst, None) for ref, dst in zip(refs, dsts, strict=True)],
        carrier=carrier,
        on_chunk=lambda name, chunk: landed.append((name, chunk)),
    )
    assert [r.carrier for r in results] == [carrier] * 3
    for i, ((shape, dtype), dst) in enumerate(zip(specs, dsts, strict=True)):
        assert _same(dst, pattern(shape, dtype, 20 + i))
    assert sorted(landed) == sorted((ref.meta.name, c) for ref in refs for c in range(ref.meta.num_chunks))
    # Some chunks of one tensor only, then a tensor the holder does not have: the items before it
    # are read and verified, the error names the missing one, nothing after it is read.
    partial = torch.full((1 << 18,), -1.0)
    unknown = TensorRef(meta=replace(refs[0].meta, name="no-such-tensor"), carriers=refs[0].carriers)
    untouched = torch.full((1 << 18,), -1.0)
    landed.clear()
    with pytest.raises(UnknownTensor, match="no-such-tensor"):
        await reader.read_many(
            [(refs[0], partial, [1]), (unknown, torch.empty(1 << 18), None), (refs[0], untouched, None)],
            carrier=carrier,
            on_chunk=lambda name, chunk: landed.append((name, chunk)),
        )
    assert landed == [(refs[0].meta.name, 1)]
    r = refs[0].meta.chunk_range(1)
    assert torch.equal(
        _bytes(partial)[r.offset : r.end], _bytes(pattern((1 << 18,), torch.float32, 20))[r.offset : r.end]
    )
    assert torch.equal(untouched, torch.full((1 << 18,), -1.0))
    # One holder per call.
    other = TensorRef(meta=refs[1].meta, carriers=refs[1].carriers[:1])
    with pytest.raises(ValueError, match="one holder"):
        await reader.read_many([(refs[0], dsts[0], None), (other, dsts[1], None)], carrier=carrier)


async def test_assembly_exposes_only_a_complete_tensor(
    holder: HolderProcess, reader: TensorReader, carrier: str
) -> None:
    shape, dtype = (1 << 20,), torch.int32
    ref = holder.register(f"assembly-{carrier}", shape, dtype, seed=8)
    assembly = TensorAssembly(ref.meta, torch.empty(shape, dtype=dtype))
    await reader.read(ref, assembly, chunks=[1, 2], carrier=carrier)
    with pytest.raises(IncompleteTransfer) as info:
        assembly.tensor()
    assert 0 in info.value.missing_chunks and 1 not in info.value.missing_chunks
    await reader.read(ref, assembly, carrier=carrier)  # reads only what is missing
    assert _same(assembly.tensor(), pattern(shape, dtype, 8))


async def test_corrupted_holder_buffer_is_detected(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    shape, dtype = (1 << 20,), torch.float32  # 4 MiB, 16 chunks
    ref = holder.register(f"corrupt-{carrier}", shape, dtype, seed=9)
    bad_chunk = 2
    holder.call("corrupt", name=ref.meta.name, offset=ref.meta.chunk_range(bad_chunk).offset + 17)
    assembly = TensorAssembly(ref.meta, torch.empty(shape, dtype=dtype))
    with pytest.raises(ChunkHashMismatch) as info:
        await reader.read(ref, assembly, carrier=carrier)
    assert info.value.bad_chunks == (bad_chunk,)
    assert bad_chunk in info.value.missing_chunks
    assert len(info.value.verified_chunks) == ref.meta.num_chunks - 1
    with pytest.raises(IncompleteTransfer):
        assembly.tensor()


async def test_read_many_refuses_a_corrupted_chunk_and_reads_nothing_after_it(
    holder: HolderProcess, reader: TensorReader, carrier: str
) -> None:
    shape, dtype = (1 << 20,), torch.float32  # 4 MiB, 16 chunks
    good = holder.register(f"many-good-{carrier}", shape, dtype, seed=11)
    bad = holder.register(f"many-bad-{carrier}", shape, dtype, seed=12)
    holder.call("corrupt", name=bad.meta.name, offset=bad.meta.chunk_range(3).offset + 5)
    first, after = torch.empty(shape, dtype=dtype), torch.full(shape, -1.0)
    with pytest.raises(ChunkHashMismatch) as info:
        await reader.read_many(
            [(good, first, None), (bad, torch.empty(shape, dtype=dtype), None), (good, after, None)],
            carrier=carrier,
            verify=True,
        )
    assert info.value.bad_chunks == (3,)
    assert _same(first, pattern(shape, dtype, 11))
    assert torch.equal(after, torch.full(shape, -1.0))


async def test_unknown_name_is_a_clear_error(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    ref = holder.register(f"known-{carrier}", (1024,), torch.float32, seed=1)
    ghost = TensorRef(meta=replace(ref.meta, name="no-such-tensor"), carriers=ref.carriers, holder_id=ref.holder_id)
    with pytest.raises(UnknownTensor, match="no-such-tensor"):
        await reader.read(ghost, torch.empty(1024), carrier=carrier, timeout_s=10.0)
    # The connection stays usable after an error reply.
    await reader.read(ref, torch.empty(1024), carrier=carrier)


async def test_out_of_range_and_stale_references(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    name = f"small-{carrier}"
    ref = holder.register(name, (256 << 10,), torch.uint8, seed=2)  # one chunk of 256 KiB
    # A manifest that believes the tensor is four times larger (a stale or wrong plan).
    bigger = compute_meta(name, torch.zeros(1 << 20, dtype=torch.uint8), chunk_size_bytes=ref.meta.chunk_size_bytes)
    wrong = TensorRef(meta=bigger, carriers=ref.carriers, holder_id=ref.holder_id)
    with pytest.raises(ByteRangeError, match="outside"):
        await reader.read(wrong, torch.empty(1 << 20, dtype=torch.uint8), chunks=[3], carrier=carrier)
    with pytest.raises(StaleTensor):
        await reader.read(wrong, torch.empty(1 << 20, dtype=torch.uint8), chunks=[0], carrier=carrier)


async def test_many_concurrent_readers(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    shape, dtype = (2 << 20,), torch.float32  # 8 MiB
    ref = holder.register(f"concurrent-{carrier}", shape, dtype, seed=3)
    expected = pattern(shape, dtype, 3)
    async with TensorReader() as second:
        dsts = [torch.empty(shape, dtype=dtype) for _ in range(8)]
        readers = [reader, second] * 4
        results = await asyncio.gather(*(r.read(ref, d, carrier=carrier) for r, d in zip(readers, dsts, strict=True)))
    assert all(r.carrier == carrier for r in results)
    assert all(_same(d, expected) for d in dsts)

    async def no_reads_left() -> bool:
        return bool(await holder.acall("active_reads", name=ref.meta.name) == 0)

    await assert_eventually(no_reads_left, message="holder released every read lease")


async def test_read_lease_blocks_overwrite(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    shape, dtype = (_more_than_socket_buffers(),), torch.float32
    name = f"lease-{carrier}"
    ref = holder.register(name, shape, dtype, seed=4)
    first_chunk = threading.Event()
    resume = threading.Event()

    def pause_after_first(chunk: int) -> None:
        if not first_chunk.is_set():
            first_chunk.set()
            resume.wait(30)

    dst = torch.empty(shape, dtype=dtype)
    read = asyncio.create_task(reader.read(ref, dst, carrier=carrier, on_chunk=pause_after_first))
    try:
        assert await asyncio.to_thread(first_chunk.wait, 20), "first chunk never arrived"
        assert await holder.acall("active_reads", name=name) == 1
        with pytest.raises(LeaseTimeout, match="in flight"):
            await holder.acall("begin_write", name=name, wait_s=0.5)
    finally:
        resume.set()
    await read
    assert _same(dst, pattern(shape, dtype, 4))  # not overwritten under the reader

    await holder.acall("begin_write", name=name, wait_s=10.0)
    with pytest.raises(HolderBusy, match="overwritten"):
        await reader.read(ref, torch.empty(shape, dtype=dtype), carrier=carrier)
    new_ref = TensorRef.from_dict(await holder.acall("end_write", name=name, seed=5))
    with pytest.raises(StaleTensor):
        await reader.read(ref, torch.empty(shape, dtype=dtype), carrier=carrier)
    fresh = torch.empty(shape, dtype=dtype)
    await reader.read(new_ref, fresh, carrier=carrier)
    assert _same(fresh, pattern(shape, dtype, 5))


async def test_cancelled_read_releases_its_lease(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    shape, dtype = (16 << 20,), torch.float32
    ref = holder.register(f"cancel-{carrier}", shape, dtype, seed=12)
    first_chunk = threading.Event()
    resume = threading.Event()
    seen: list[int] = []

    def pause_after_first(chunk: int) -> None:
        seen.append(chunk)
        if not first_chunk.is_set():
            first_chunk.set()
            resume.wait(30)

    read = asyncio.create_task(
        reader.read(ref, torch.empty(shape, dtype=dtype), carrier=carrier, on_chunk=pause_after_first)
    )
    assert await asyncio.to_thread(first_chunk.wait, 20)
    read.cancel()
    resume.set()
    with pytest.raises(asyncio.CancelledError):
        await read
    written = len(seen)
    assert written < ref.meta.num_chunks

    async def lease_released() -> bool:
        return bool(await holder.acall("active_reads", name=ref.meta.name) == 0)

    await assert_eventually(lease_released, message="holder released the cancelled reader's lease")
    assert len(seen) == written, "chunks kept landing after the cancelled read returned"


async def test_holder_stalled_then_killed_mid_transfer(
    holder: HolderProcess, reader: TensorReader, carrier: str
) -> None:
    """A stalled holder times out; a killed one fails the read without exposing the tensor, and the
    missing chunks are re-planned from another holder of the same content."""
    # Larger than what socket buffers hold: a killed holder's unsent bytes are lost for good.
    shape, dtype = (_more_than_socket_buffers(),), torch.float32
    with HolderProcess(
        carriers=[carrier] if carrier == "tcp" else ["tcp", carrier], chunk_size_bytes=256 << 10
    ) as doomed:
        ref = doomed.register("w", shape, dtype, seed=6)

        doomed.pause()  # SIGSTOP: sockets stay open, nothing answers
        try:
            with pytest.raises(TransferTimeout):
                await reader.read(ref, torch.empty(shape, dtype=dtype), carrier=carrier, timeout_s=1.0)
        finally:
            doomed.resume()

        assembly = TensorAssembly(ref.meta, torch.empty(shape, dtype=dtype))

        def kill_at_first_chunk(chunk: int) -> None:
            if len(assembly.verified_chunks) == 1:
                os.kill(doomed.pid, signal.SIGKILL)

        try:
            await reader.read(ref, assembly, carrier=carrier, on_chunk=kill_at_first_chunk)
        except PeerDisconnected as exc:
            assert exc.missing_chunks, "an error must say which chunks are still missing"
            assert set(exc.verified_chunks) == set(assembly.verified_chunks)
            with pytest.raises(IncompleteTransfer):
                assembly.tensor()
        else:
            # Only shared memory may finish: the reader's mapping keeps the dead holder's pages, and
            # every chunk still verified against its hash.
            assert carrier == "shm", f"{carrier} read survived its holder's SIGKILL"
        doomed.kill()

    # Re-plan: the same content from another holder completes the assembly.
    other = holder.register(f"replica-{carrier}", shape, dtype, seed=6)
    replica = TensorRef(
        meta=replace(ref.meta, name=other.meta.name), carriers=other.carriers, holder_id=other.holder_id
    )
    assert replica.meta.root_hash == other.meta.root_hash
    if not assembly.complete:
        await reader.read(replica, assembly, carrier=carrier)
    assert _same(assembly.tensor(), pattern(shape, dtype, 6))

    # A holder that is gone before the read starts: a prompt error, not a hang.
    with pytest.raises(PeerDisconnected):
        await reader.read(ref, torch.empty(shape, dtype=dtype), carrier=carrier, timeout_s=10.0)


async def test_wrong_destination_names_both_sizes(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    ref = holder.register(f"dst-{carrier}", (1000,), torch.float32, seed=1)
    with pytest.raises(ValueError, match=r"3996 bytes.*4000 bytes"):
        await reader.read(ref, torch.empty(999), carrier=carrier)
    with pytest.raises(ValueError, match=r"float64.*float32"):
        await reader.read(ref, torch.empty(500, dtype=torch.float64), carrier=carrier)


async def test_carrier_chosen_by_probe(holder: HolderProcess) -> None:
    ref = holder.register("probe-choice", (1 << 16,), torch.float32, seed=1)
    async with TensorReader() as same_host:
        assert (await same_host.read(ref, torch.empty(1 << 16))).carrier == "shm"
    # Declared another host: no shared memory, and no RDMA/GPU here, so plain TCP.
    async with TensorReader(host_id="some-other-host") as remote:
        result = await remote.read(ref, torch.empty(1 << 16))
    assert result.carrier == "tcp", result.reason
    assert "some-other-host" in result.reason


@pytest.mark.skipif(not os.path.isdir("/sys/class/infiniband"), reason="no RDMA devices under /sys/class/infiniband")
async def test_rdma_is_used_where_the_probe_finds_it(holder: HolderProcess) -> None:
    from services.common.transport import probe_host

    caps = probe_host()
    if not (caps.ucx_rdma or caps.nixl_importable):
        pytest.skip(f"RDMA devices {caps.rdma_devices} but no verbs-capable UCX or NIXL here: {caps.ucx_transports}")
    ref = holder.register("rdma", (1 << 20,), torch.float32, seed=1)
    async with TensorReader(host_id="some-other-host") as remote:
        result = await remote.read(ref, torch.empty(1 << 20))
    assert result.carrier in ("ucx", "nixl"), result.reason
    assert "rdma=yes" in result.detail or result.carrier == "nixl", result.detail


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: reads into a CUDA destination")
async def test_cuda_destination(holder: HolderProcess, reader: TensorReader, carrier: str) -> None:
    shape, dtype = (1 << 20,), torch.float16
    ref = holder.register(f"cuda-{carrier}", shape, dtype, seed=11)
    dst = torch.empty(shape, dtype=dtype, device="cuda")
    result = await reader.read(ref, dst, carrier=carrier)
    assert result.carrier == carrier
    assert _same(dst, pattern(shape, dtype, 11))


def test_transfer_errors_are_typed() -> None:
    for cls in (ChunkHashMismatch, PeerDisconnected, TransferTimeout, UnknownTensor, HolderBusy, LeaseTimeout):
        assert issubclass(cls, TransferError)
