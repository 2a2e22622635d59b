"""The read planner: which holder each chunk of a version is read from.

Plain code without I/O: the hub calls it with what Redis says, the cluster simulator with what its
model says. Rules, per chunk:

1. only holders that have the chunk, are alive, and were not excluded for this reader count;
2. if some of them are in the reader's datacenter, only those count (a wide-area link is used only
   when the datacenter has no copy at all), and among them the nearest tier wins: same host, then
   same rack, then same datacenter; a nearer holder that is busy gives way to a farther free one
   within the datacenter;
3. a holder never gets more concurrent readers than its bound (a reader reading several chunks
   from one holder takes one slot);
4. across datacenters, one reader per datacenter pulls (the *puller*); the others wait for it to
   finish and become a source in their datacenter;
5. once a reader in the datacenter holds a chunk, publishers (trainer ranks) are spared: later
   readers read it from peers, so the trainer's egress is about one copy per datacenter however
   many readers there are;
6. among equal candidates: a holder this plan already uses, then the least loaded, then a stable
   per-reader order so that readers spread over holders.

Readers that finish report the version held and become holders, so later plans name them: the
fan-out grows as a tree instead of a star on the trainer.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.common.errors import FailedPrecondition, ResourceExhausted


class Locality(enum.IntEnum):
    """Distance from a reader to a source, cheapest first (values match the proto enum)."""

    SAME_HOST = 1
    SAME_RACK = 2
    SAME_DATACENTER = 3
    CROSS_DATACENTER = 4


@dataclass(frozen=True)
class Topology:
    """Where a process runs; empty labels mean "unknown", i.e. a place of its own."""

    host: str = ""
    rack: str = ""
    datacenter: str = ""


def locality(reader: Topology, source: Topology) -> Locality:
    """How far ``source`` is from ``reader``."""
    same_dc = bool(reader.datacenter) and reader.datacenter == source.datacenter
    if reader.host and reader.host == source.host and (same_dc or reader.datacenter == source.datacenter):
        return Locality.SAME_HOST
    if not same_dc:
        return Locality.CROSS_DATACENTER
    if reader.rack and reader.rack == source.rack:
        return Locality.SAME_RACK
    return Locality.SAME_DATACENTER


@dataclass(frozen=True, kw_only=True)
class Source:
    """A live holder of (part of) the version being planned."""

    holder_id: str
    """Holder id."""
    topology: Topology
    """Where it runs."""
    chunks: range | frozenset[int] | None
    """Chunks it holds; None for all of them."""
    active_reads: int
    """Readers holding a read lease on it now (for this version or any other)."""
    max_concurrent_reads: int
    """Its bound on concurrent readers."""
    publisher: bool = False
    """It published the version (a trainer rank) rather than read it."""

    def has(self, chunk: int) -> bool:
        """Whether it holds ``chunk``."""
        return self.chunks is None or chunk in self.chunks


@dataclass(frozen=True, kw_only=True)
class PlannedRead:
    """The chunks a reader reads from one source."""

    holder_id: str
    locality: Locality
    chunk_indices: tuple[int, ...]
    size_bytes: int


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Reads grouped by source; every planned chunk appears exactly once."""

    reads: tuple[PlannedRead, ...]
    size_bytes: int = 0
    cross_datacenter: bool = field(default=False)
    """True when some chunk crosses a wide-area link (the reader is its datacenter's puller)."""
    deferred: tuple[int, ...] = ()
    """Chunks left out because every suitable holder was busy (only with ``defer_busy``): ask again
    for them once a source frees up or another reader reports them."""


def plan_reads(
    *,
    reader_id: str,
    reader: Topology,
    chunks: Sequence[int],
    chunk_sizes: Mapping[int, float] | Sequence[float],
    sources: Iterable[Source],
    excluded: Iterable[str] = (),
    datacenter_puller_busy: bool = False,
    spare_publishers: bool = True,
    defer_busy: bool = False,
    max_chunks: int = 0,
) -> Plan:
    """Plan the reads of ``chunks`` for ``reader_id`` at ``reader``.

    With ``defer_busy``, chunks whose suitable holders are all at their bound (or that wait for the
    datacenter's puller) are returned in ``Plan.deferred`` instead of failing the whole plan, so a
    reader can start on what is available now (chunk-level pipelining); ResourceExhausted is then
    raised only when nothing at all can be planned.

    ``max_chunks`` (> 0, with ``defer_busy``) plans at most that many chunks, rarest first (fewest
    holders), ties broken by a per-reader rotation: readers then start on different chunks and
    trade them among themselves, so the fan-out is pipelined chunk by chunk instead of one reader
    taking every source for the whole version. Chunks left out are in ``Plan.deferred``.

    Raises:
        FailedPrecondition: some chunk has no live, non-excluded holder at all.
        ResourceExhausted: every suitable holder of some chunk is at its bound, or the chunk is only
            outside the datacenter and another reader of the datacenter is pulling it already.
    """
    excluded_ids = set(excluded)
    candidates = [s for s in sources if s.holder_id != reader_id and s.holder_id not in excluded_ids]
    places = {s.holder_id: locality(reader, s.topology) for s in candidates}
    free = {s.holder_id: s.max_concurrent_reads - s.active_reads for s in candidates}
    load = {s.holder_id: s.active_reads / max(1, s.max_concurrent_reads) for s in candidates}
    spread = {s.holder_id: zlib.crc32(f"{reader_id}/{s.holder_id}".encode()) for s in candidates}
    chosen: dict[str, list[int]] = {}
    unsourced: list[int] = []
    busy: list[int] = []
    waiting_for_puller: list[int] = []
    order = list(chunks)
    window = max_chunks if defer_busy and max_chunks > 0 else 0
    if window and len(order) > window:
        rotation = zlib.crc32(reader_id.encode())
        wanted = set(order)
        rarity = dict.fromkeys(order, sum(1 for s in candidates if s.chunks is None))
        for s in candidates:
            if s.chunks is not None:
                for c in wanted.intersection(s.chunks):
                    rarity[c] += 1
        order.sort(key=lambda c: (rarity[c], (c + rotation) % max(1, len(order) + 1), c))
    planned = 0
    beyond_window: list[int] = []
    for chunk in order:
        if window and planned >= window:
            beyond_window.append(chunk)
            continue
        holders = [s for s in candidates if s.has(chunk)]
        if not holders:
            unsourced.append(chunk)
            continue
        in_dc = [s for s in holders if places[s.holder_id] != Locality.CROSS_DATACENTER]
        if not in_dc and datacenter_puller_busy:
            waiting_for_puller.append(chunk)
            continue
        pool = in_dc or holders
        if spare_publishers and any(not s.publisher for s in pool):
            pool = [s for s in pool if not s.publisher]
        usable = [s for s in pool if s.holder_id in chosen or free[s.holder_id] > 0]
        if not usable:
            busy.append(chunk)
            continue
        best = min(
            usable,
            key=lambda s: (places[s.holder_id], s.holder_id not in chosen, load[s.holder_id], spread[s.holder_id]),
        )
        if best.holder_id not in chosen:
            chosen[best.holder_id] = []
            free[best.holder_id] -= 1
        chosen[best.holder_id].append(chunk)
        planned += 1
    if unsourced:
        raise FailedPrecondition(
            f"no live holder has chunks {unsourced[:8]}{'...' if len(unsourced) > 8 else ''} "
            f"({len(unsourced)} of {len(chunks)}) for reader {reader_id}"
        )
    deferred = tuple(sorted(busy + waiting_for_puller + beyond_window)) if defer_busy else ()
    if (busy or waiting_for_puller) and (not defer_busy or not chosen):
        parts = []
        if busy:
            parts.append(f"every holder of {len(busy)} chunks is at its concurrent-read bound")
        if waiting_for_puller:
            parts.append(
                f"{len(waiting_for_puller)} chunks exist only outside datacenter {reader.datacenter!r} and "
                "another reader there is pulling them"
            )
        raise ResourceExhausted("; ".join(parts) + ": back off and ask again")

    def size(i: int) -> int:
        return int(chunk_sizes[i])

    reads = tuple(
        PlannedRead(
            holder_id=holder,
            locality=places[holder],
            chunk_indices=tuple(indices),
            size_bytes=sum(size(i) for i in indices),
        )
        for holder, indices in sorted(chosen.items(), key=lambda item: (places[item[0]], item[0]))
    )
    return Plan(
        reads=reads,
        size_bytes=sum(r.size_bytes for r in reads),
        cross_datacenter=any(r.locality == Locality.CROSS_DATACENTER for r in reads),
        deferred=deferred,
    )
