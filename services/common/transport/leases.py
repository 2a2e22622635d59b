"""The holder's table of registered tensors and the read leases on them.

A read lease is taken before the first byte of a read leaves the holder and dropped after the last
(or when the reader's connection dies). While any lease on a tensor is open, the holder will not
overwrite or release it: a writer first marks the tensor as being written, which turns away *new*
reads at once with :class:`HolderBusy` (so a stream of readers cannot starve the writer, and the
turned-away readers re-plan to another holder), then waits, with a timeout, for the open leases to
drain.

A tensor may be registered before all of its chunks are in it (a reader that serves what it fetched
while it still fetches the rest): its *pending* chunks are not served until :meth:`LeaseTable.mark_ready`
says they arrived (verified). A read of a pending chunk waits for it, up to a bound the carrier
server passes (0: refused at once with :class:`HolderBusy`). Under the same bound, a read of a name
not registered yet waits briefly (``UNKNOWN_WAIT_S``) for it: a planner may name a reader as the
source of a version it is told of at the same moment as its peers, a few milliseconds before the
reader registers its buffers.

Carrier servers run in threads (and the UCX one on its own event loop), so the table is guarded by
one ``threading.Condition``; every wait on it has a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from services.common.transport.buffers import SharedSegment, host_view, pinned_staging
from services.common.transport.errors import ByteRangeError, HolderBusy, LeaseTimeout, StaleTensor, UnknownTensor
from services.common.transport.meta import ByteRange, TensorMeta

# Pieces handed to one send call: big enough that syscall overhead vanishes, small enough that a
# CUDA tensor's pinned staging buffer stays modest.
_MAX_PIECE_BYTES = 64 << 20
_CUDA_STAGING_BYTES = 8 << 20
UNKNOWN_WAIT_S = 0.5
"""Longest a waiting read (``wait_s`` > 0) waits for its tensor's name to be registered."""


@dataclass(eq=False)
class Entry:
    """One registered tensor."""

    meta: TensorMeta
    tensor: torch.Tensor
    flat: torch.Tensor
    segment: SharedSegment | None = None
    segment_offset: int = 0
    readers: int = 0
    writing: bool = False
    removed: bool = False
    pending: dict[int, threading.Event] | None = None
    """Chunks not in the tensor yet (not served until marked ready), each with the event a read
    waiting for it waits on (one event per chunk: marking a chunk ready wakes only its readers);
    None: every chunk is."""


class ReadLease:
    """An open read of one tensor; the holder keeps the bytes as they are until :meth:`close`."""

    def __init__(self, table: LeaseTable, entry: Entry) -> None:
        self._table = table
        self.entry = entry
        self._closed = False

    @property
    def meta(self) -> TensorMeta:
        """Metadata of the leased tensor."""
        return self.entry.meta

    def pieces(self, ranges: Sequence[ByteRange]) -> Iterator[memoryview]:
        """Host memoryviews covering ``ranges`` in order, adjacent ranges merged into one piece.

        CPU tensors are sent straight from their storage; CUDA tensors are staged through one pinned
        buffer, each piece valid until the next one is requested.
        """
        flat = self.entry.flat
        staging = pinned_staging(_CUDA_STAGING_BYTES) if flat.is_cuda else None
        limit = _CUDA_STAGING_BYTES if staging is not None else _MAX_PIECE_BYTES
        for start, end in merge_ranges(ranges):
            for offset in range(start, end, limit):
                stop = min(offset + limit, end)
                if staging is None:
                    yield host_view(flat[offset:stop])
                else:
                    staging[: stop - offset].copy_(flat[offset:stop])
                    yield host_view(staging[: stop - offset])

    def close(self) -> None:
        """Release the lease (idempotent)."""
        if not self._closed:
            self._closed = True
            self._table.release_read(self.entry)

    def __enter__(self) -> ReadLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def merge_ranges(ranges: Sequence[ByteRange]) -> Iterator[tuple[int, int]]:
    """(start, end) spans of ``ranges`` with back-to-back ranges joined, order kept."""
    start = end = -1
    for r in ranges:
        if r.length == 0:
            continue
        if r.offset == end:
            end = r.end
            continue
        if end > start:
            yield start, end
        start, end = r.offset, r.end
    if end > start:
        yield start, end


class LeaseTable:
    """Registered tensors by name, with their read leases and write exclusion."""

    def __init__(self, *, max_concurrent_reads: int) -> None:
        if max_concurrent_reads <= 0:
            raise ValueError(f"max_concurrent_reads must be > 0, got {max_concurrent_reads}")
        self._max_reads = max_concurrent_reads
        self._cond = threading.Condition()
        self._entries: dict[str, Entry] = {}
        self._active_reads = 0

    def add(self, entry: Entry) -> None:
        """Register a tensor; ``ValueError`` if the name is taken."""
        with self._cond:
            if entry.meta.name in self._entries:
                raise ValueError(
                    f"tensor {entry.meta.name!r} is already registered; use writing()/update() to change "
                    "it or unregister() it first"
                )
            self._entries[entry.meta.name] = entry
            self._cond.notify_all()  # reads waiting for the name

    def get(self, name: str) -> Entry:
        """The entry of ``name``; :class:`UnknownTensor` if there is none."""
        with self._cond:
            entry = self._entries.get(name)
        if entry is None:
            raise UnknownTensor(f"no tensor named {name!r} at this holder", name=name)
        return entry

    def names(self) -> list[str]:
        """Registered names."""
        with self._cond:
            return list(self._entries)

    def active_reads(self, name: str | None = None) -> int:
        """Open read leases on ``name`` (or on all tensors)."""
        with self._cond:
            if name is None:
                return self._active_reads
            entry = self._entries.get(name)
            return entry.readers if entry else 0

    def mark_ready(self, name: str, chunks: Iterable[int]) -> None:
        """Chunks of ``name`` that arrived (and verified): serve them, waking reads waiting for them."""
        with self._cond:
            entry = self._entries.get(name)
            if entry is None or entry.pending is None:
                return
            for chunk in chunks:
                event = entry.pending.pop(chunk, None)
                if event is not None:
                    event.set()

    def open_read(
        self, name: str, *, root_hash: str | None, ranges: Sequence[ByteRange], wait_s: float = 0.0
    ) -> ReadLease:
        """Take a read lease, or raise the typed reason why not. Waits only for pending chunks of the
        ranges to arrive, up to ``wait_s`` (then :class:`HolderBusy`)."""
        started = time.monotonic()
        deadline = started + wait_s
        unknown_deadline = started + min(wait_s, UNKNOWN_WAIT_S)
        with self._cond:
            while True:
                entry = self._entries.get(name)
                if entry is None:
                    remaining = unknown_deadline - time.monotonic()
                    if remaining <= 0:
                        raise UnknownTensor(f"no tensor named {name!r} at this holder", name=name)
                    self._cond.wait(remaining)
                    continue
                if entry.writing:
                    raise HolderBusy(
                        f"tensor {name!r} is being overwritten at this holder; read it elsewhere", name=name
                    )
                size = entry.meta.size_bytes
                for r in ranges:
                    if r.end > size:
                        raise ByteRangeError(
                            f"byte range [{r.offset}, {r.end}) is outside tensor {name!r} of {size} bytes", name=name
                        )
                if root_hash and root_hash != entry.meta.root_hash:
                    raise StaleTensor(
                        f"tensor {name!r} at this holder has content {entry.meta.root_hash}, not the requested "
                        f"{root_hash} (updated since the reference was made)",
                        name=name,
                    )
                waiting = self._pending_in(entry, ranges)
                if not waiting:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HolderBusy(
                        f"chunks {sorted(waiting)[:8]} of {name!r} have not arrived at this holder yet; read them "
                        "elsewhere",
                        name=name,
                    )
                # Wait outside the table's lock, on the first missing chunk's own event (a writer
                # or an unregister sets them all, so the checks above run again at once).
                event = waiting[min(waiting)]
                self._cond.release()
                try:
                    event.wait(remaining)
                finally:
                    self._cond.acquire()
            if self._active_reads >= self._max_reads:
                raise HolderBusy(f"holder serves {self._active_reads} reads already (its limit)", name=name)
            entry.readers += 1
            self._active_reads += 1
            return ReadLease(self, entry)

    @staticmethod
    def _pending_in(entry: Entry, ranges: Sequence[ByteRange]) -> dict[int, threading.Event]:
        if not entry.pending:
            return {}
        waiting: dict[int, threading.Event] = {}
        for r in ranges:
            for chunk in entry.meta.chunks_covering(r):
                event = entry.pending.get(chunk)
                if event is not None:
                    waiting[chunk] = event
        return waiting

    def release_read(self, entry: Entry) -> None:
        """Drop one read lease and wake a waiting writer."""
        with self._cond:
            entry.readers -= 1
            self._active_reads -= 1
            self._cond.notify_all()

    def acquire_write(self, name: str, timeout_s: float) -> Entry:
        """Exclusive access to ``name``: refuse new reads, wait for open ones to finish.

        Raises :class:`LeaseTimeout` (and lets reads in again) if they do not finish in ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            entry = self._entries.get(name)
            if entry is None:
                raise UnknownTensor(f"no tensor named {name!r} at this holder", name=name)
            # Writers queue behind each other; readers are turned away while any writer waits.
            while entry.writing:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or entry.removed:
                    raise LeaseTimeout(
                        f"tensor {name!r} is still being written by another writer after {timeout_s} s", name=name
                    )
                self._cond.wait(remaining)
            if entry.removed:
                raise UnknownTensor(f"tensor {name!r} was unregistered", name=name)
            entry.writing = True
            if entry.pending:
                for event in entry.pending.values():
                    event.set()  # reads waiting for pending chunks look again, and give up
                entry.pending = {chunk: threading.Event() for chunk in entry.pending}
            while entry.readers > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    entry.writing = False
                    self._cond.notify_all()
                    raise LeaseTimeout(
                        f"tensor {name!r} still has {entry.readers} read(s) in flight after {timeout_s} s; "
                        "not overwriting or releasing it",
                        name=name,
                    )
                self._cond.wait(remaining)
            return entry

    def release_write(self, entry: Entry, *, meta: TensorMeta | None = None, remove: bool = False) -> None:
        """End exclusive access, with the new metadata of what was written, or removing the tensor."""
        with self._cond:
            if meta is not None:
                entry.meta = meta
                entry.pending = None  # written whole and hashed again: every chunk is what meta says
            if remove:
                entry.removed = True
                self._entries.pop(entry.meta.name, None)
            entry.writing = False
            self._cond.notify_all()
