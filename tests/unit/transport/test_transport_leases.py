"""Read leases on the holder, destination checks and the no-exposure rule, without a network."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from services.common.transport import (
    ByteRange,
    ByteRangeError,
    HolderBusy,
    IncompleteTransfer,
    LeaseTimeout,
    StaleTensor,
    TensorAssembly,
    UnknownTensor,
    compute_meta,
)
from services.common.transport.buffers import SharedSegment, as_bytes, destination_bytes
from services.common.transport.leases import Entry, LeaseTable, merge_ranges
from services.common.transport.sink import ChunkSink


def table_with(name: str = "w", size: int = 1000, max_reads: int = 8) -> tuple[LeaseTable, Entry]:
    tensor = torch.arange(size, dtype=torch.uint8)
    entry = Entry(meta=compute_meta(name, tensor, chunk_size_bytes=100), tensor=tensor, flat=as_bytes(tensor))
    table = LeaseTable(max_concurrent_reads=max_reads)
    table.add(entry)
    return table, entry


def test_reads_are_refused_with_the_reason() -> None:
    table, entry = table_with()
    with pytest.raises(UnknownTensor, match="'nope'"):
        table.open_read("nope", root_hash=None, ranges=[])
    with pytest.raises(ByteRangeError, match=r"\[900, 1100\) is outside tensor 'w' of 1000 bytes"):
        table.open_read("w", root_hash=None, ranges=[ByteRange(900, 200)])
    with pytest.raises(StaleTensor):
        table.open_read("w", root_hash="not-this-content", ranges=[])
    with table.open_read("w", root_hash=entry.meta.root_hash, ranges=[ByteRange(0, 1000)]):
        assert table.active_reads("w") == 1
    assert table.active_reads() == 0
    with pytest.raises(ValueError, match="already registered"):
        table.add(entry)


def test_a_writer_waits_for_reads_and_turns_new_ones_away() -> None:
    table, _ = table_with()
    lease = table.open_read("w", root_hash=None, ranges=[])
    with pytest.raises(LeaseTimeout, match="1 read"):
        table.acquire_write("w", timeout_s=0.05)
    table.open_read("w", root_hash=None, ranges=[]).close()  # the timed-out writer let reads back in

    acquired = threading.Event()

    def write() -> None:
        entry = table.acquire_write("w", timeout_s=10.0)
        acquired.set()
        table.release_write(entry)

    writer = threading.Thread(target=write)
    writer.start()
    # While the writer waits, new reads are refused so that they cannot starve it.
    refused = False
    deadline = time.monotonic() + 10.0
    while not refused and time.monotonic() < deadline:
        try:
            table.open_read("w", root_hash=None, ranges=[]).close()
        except HolderBusy:
            refused = True
    assert refused
    assert not acquired.is_set()
    lease.close()
    writer.join(10)
    assert acquired.is_set()


def test_concurrent_read_bound() -> None:
    table, _ = table_with(max_reads=2)
    leases = [table.open_read("w", root_hash=None, ranges=[]) for _ in range(2)]
    with pytest.raises(HolderBusy, match="limit"):
        table.open_read("w", root_hash=None, ranges=[])
    for lease in leases:
        lease.close()
    table.open_read("w", root_hash=None, ranges=[]).close()


def test_unregister_removes_after_reads() -> None:
    table, _ = table_with()
    entry = table.acquire_write("w", timeout_s=1.0)
    table.release_write(entry, remove=True)
    assert table.names() == []
    with pytest.raises(UnknownTensor):
        table.open_read("w", root_hash=None, ranges=[])


def test_lease_pieces_merge_adjacent_ranges() -> None:
    assert list(merge_ranges([ByteRange(0, 10), ByteRange(10, 5), ByteRange(30, 5), ByteRange(35, 0)])) == [
        (0, 15),
        (30, 35),
    ]
    table, _ = table_with()
    with table.open_read("w", root_hash=None, ranges=[]) as lease:
        pieces = list(lease.pieces([ByteRange(100, 100), ByteRange(200, 50), ByteRange(500, 10)]))
    assert [bytes(p) for p in pieces] == [bytes(range(100, 250)), bytes(range(244, 254))]


def test_destination_must_match_size_and_dtype() -> None:
    meta = compute_meta("w", torch.zeros(10, dtype=torch.float32))
    with pytest.raises(ValueError, match="holds 36 bytes but the tensor has 40 bytes"):
        destination_bytes(meta, torch.empty(9))
    with pytest.raises(ValueError, match=r"dtype torch.int32 \(40 bytes\) but the tensor is float32 \(40 bytes\)"):
        destination_bytes(meta, torch.empty(10, dtype=torch.int32))
    with pytest.raises(ValueError, match="not contiguous"):
        destination_bytes(meta, torch.empty(10, 2)[:, 0])
    assert destination_bytes(meta, torch.empty(40, dtype=torch.uint8)).numel() == 40  # raw bytes are fine


def test_sink_records_bad_chunks_and_assembly_refuses_them() -> None:
    source = torch.arange(300, dtype=torch.int32).view(torch.uint8)  # 1200 bytes
    meta = compute_meta("w", source, chunk_size_bytes=500)
    assembly = TensorAssembly(meta, torch.empty(1200, dtype=torch.uint8))
    sink = ChunkSink(meta, assembly.flat, [0, 1, 2], on_verified=[assembly.mark_verified])
    for k, r in enumerate(sink.ranges):
        target = sink.host_target(k)
        target[:] = source[r.offset : r.end].numpy().data
        if k == 1:
            target[3] ^= 0xFF  # a flipped byte in flight
        sink.commit(k)
    assert sink.verified == [0, 2] and sink.bad == [1]
    with pytest.raises(IncompleteTransfer, match="missing 1 of 3"):
        assembly.tensor()
    assert assembly.missing_chunks() == [1]


def test_shared_segment_lives_as_long_as_its_tensor() -> None:
    segment, flat = SharedSegment.create(4096, "unit")
    assert segment.alive and segment.fd >= 0
    assert segment.offset_of(flat[100:200]) == 100
    assert segment.offset_of(torch.empty(10, dtype=torch.uint8)) is None
    view = flat[10:20]
    del flat
    assert segment.alive  # a view still maps it
    del view
    assert not segment.alive and segment.fd == -1
