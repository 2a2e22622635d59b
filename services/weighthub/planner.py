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
   per-reader order so that readers spread over holders;
7. a reader that serves chunks as they arrive is a source of the chunks it is *fetching* from a
   holder that has them (``Source.fetching``): a later reader reads such a chunk from it and the read
   waits at that holder until the chunk is there. Followers thus start at once, without waiting for
   progress reports and a new plan, and a chunk in flight from a publisher is not read from the
   publisher a second time (rule 5 spares publishers for it too). A holder that has the chunk is
   preferred to one still fetching it, whatever their tiers within the datacenter (no wait beats
   a nearer wait). Only chunks fetched from a holder that *has* them count, so a chain of waits is
   one hop deep and never a cycle;
8. a holder read over shared memory (``Source.shared_memory``: same host) costs it no copy and no
   NIC -- the reader copies -- so its bound is at least ``shm_max_concurrent_reads``;
9. with ``num_readers`` readers expected to fetch the version, one plan reads at most its share of
   the chunks (chunks wanted / readers) from publishers -- as long as the publishers have read
   slots for that many readers at once: readers then start on different slices (rarest first counts
   chunks in flight too), each slice crosses from the publishers once, and the readers trade the
   slices among themselves. Where the publishers serve fewer readers at once (one trainer NIC with
   one slot), the share is wanted / their slots, so one reader streams from it without gaps;
10. with ``reader_max_sources`` (the hub passes the reader's own read-slot bound), a plan adds new
   sources only while the reader reads from fewer than that many holders at once (those it
   reads already, ``reader_sources``, count, and reading more from one of them takes no new
   source): a reader then takes no more read slots than it gives, so when every reader also
   serves, no reader hoards slots while another waits with none and each reader's inbound
   streams about match what its sources can send (a reader bound to few busy sources gets a
   fraction of its NIC; one holding many gains nothing, its own NIC being full).
"""

from __future__ import annotations

import enum
import math
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
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
    fetching: frozenset[int] = frozenset()
    """Chunks it does not hold yet but is reading from a holder that has them, serving each as it
    arrives (a read of one waits at this holder until it is there)."""
    shared_memory: bool = False
    """The reader would read it over shared memory (same host): the reader copies, the holder's NIC
    carries nothing."""

    def has(self, chunk: int) -> bool:
        """Whether it holds ``chunk``."""
        return self.chunks is None or chunk in self.chunks

    def serves(self, chunk: int) -> bool:
        """Whether it holds ``chunk`` or will as soon as its read of it lands."""
        return self.has(chunk) or chunk in self.fetching


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
    num_readers: int = 0,
    shm_max_concurrent_reads: int = 0,
    reader_max_sources: int = 0,
    reader_sources: Collection[str] = (),
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

    ``num_readers`` (> 1, with ``defer_busy``) spreads the publishers' chunks over that many
    readers (rule 9); ``shm_max_concurrent_reads`` widens the bound of shared-memory sources
    (rule 8). Sources' ``fetching`` chunks make them sources of those chunks (rule 7).
    ``reader_max_sources`` (> 0, with ``defer_busy``) bounds the holders the reader reads from at
    once, counting ``reader_sources``, the holders it holds read leases on now (rule 10); chunks
    left for lack of a source it may add are deferred.

    Raises:
        FailedPrecondition: some chunk has no live, non-excluded holder at all.
        ResourceExhausted: every suitable holder of some chunk is at its bound, or the chunk is only
            outside the datacenter and another reader of the datacenter is pulling it already.
    """
    excluded_ids = set(excluded)
    candidates = [s for s in sources if s.holder_id != reader_id and s.holder_id not in excluded_ids]
    places = {s.holder_id: locality(reader, s.topology) for s in candidates}
    load = {s.holder_id: s.active_reads / max(1, s.max_concurrent_reads) for s in candidates}
    spread = {s.holder_id: zlib.crc32(f"{reader_id}/{s.holder_id}".encode()) for s in candidates}
    chosen: dict[str, list[int]] = {}
    unsourced: list[int] = []
    busy: list[int] = []
    waiting_for_puller: list[int] = []
    order = list(chunks)
    # Who serves each wanted chunk, found once per source rather than once per chunk and source.
    wanted = set(order)
    serving: dict[int, list[Source]] = {c: [] for c in order}
    for s in candidates:
        served = wanted if s.chunks is None else wanted.intersection(s.chunks) | wanted.intersection(s.fetching)
        for c in served:
            serving[c].append(s)
    window = max_chunks if defer_busy and max_chunks > 0 else 0
    if window and len(order) > window:
        rotation = zlib.crc32(reader_id.encode())
        order.sort(key=lambda c: (len(serving[c]), (c + rotation) % max(1, len(order) + 1), c))
    bounds = {
        s.holder_id: max(s.max_concurrent_reads, shm_max_concurrent_reads if s.shared_memory else 0) for s in candidates
    }
    free = {s.holder_id: bounds[s.holder_id] - s.active_reads for s in candidates}
    publisher_cap = 0
    if defer_busy and num_readers > 1:
        in_parallel = min(num_readers, sum(bounds[s.holder_id] for s in candidates if s.publisher))
        if in_parallel > 1:
            publisher_cap = math.ceil(len(chunks) / in_parallel)
    planned = 0
    from_publishers = 0
    reading_from = set(reader_sources)
    new_sources_left = len(candidates)
    if defer_busy and reader_max_sources > 0:
        new_sources_left = max(0, reader_max_sources - len(reading_from))
    beyond_window: list[int] = []
    for chunk in order:
        if window and planned >= window:
            beyond_window.append(chunk)
            continue
        holders = serving[chunk]
        if not any(s.has(chunk) for s in holders):
            unsourced.append(chunk)
            continue
        in_dc = [s for s in holders if places[s.holder_id] != Locality.CROSS_DATACENTER]
        if not in_dc and datacenter_puller_busy:
            waiting_for_puller.append(chunk)
            continue
        pool = in_dc or holders
        if spare_publishers and any(not s.publisher for s in pool):
            pool = [s for s in pool if not s.publisher]
        if publisher_cap and from_publishers >= publisher_cap:
            pool = [s for s in pool if not s.publisher]
            if not pool:
                beyond_window.append(chunk)
                continue
        usable = [
            s
            for s in pool
            if s.holder_id in chosen
            or (free[s.holder_id] > 0 and (new_sources_left > 0 or s.holder_id in reading_from))
        ]
        if not usable:
            busy.append(chunk)
            continue
        best = min(
            usable,
            key=lambda s: (
                not s.has(chunk),
                places[s.holder_id],
                s.holder_id not in chosen,
                load[s.holder_id],
                spread[s.holder_id],
            ),
        )
        if best.publisher:
            from_publishers += 1
        if best.holder_id not in chosen:
            chosen[best.holder_id] = []
            free[best.holder_id] -= 1
            if best.holder_id not in reading_from:
                new_sources_left -= 1
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
