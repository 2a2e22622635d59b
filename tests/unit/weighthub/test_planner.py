"""The read planner: topology order, per-holder bounds, tree fan-out, one puller per datacenter."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import FailedPrecondition, ResourceExhausted
from services.weighthub.planner import Locality, Source, Topology, locality, plan_reads

TRAINER = Topology(host="t0", rack="r0", datacenter="dc0")


def source(
    holder_id: str,
    topology: Topology,
    *,
    active: int = 0,
    bound: int = 2,
    chunks: range | None = None,
    publisher: bool = False,
) -> Source:
    return Source(
        holder_id=holder_id,
        topology=topology,
        chunks=chunks,
        active_reads=active,
        max_concurrent_reads=bound,
        publisher=publisher,
    )


def plan(reader: Topology, sources: list[Source], *, chunks: int = 8, **kwargs: Any):  # type: ignore[no-untyped-def]
    return plan_reads(
        reader_id="me", reader=reader, chunks=list(range(chunks)), chunk_sizes=[10] * chunks, sources=sources, **kwargs
    )


def test_locality_orders_host_rack_datacenter_and_treats_unknown_labels_as_their_own_place() -> None:
    reader = Topology(host="h1", rack="r1", datacenter="dc1")
    assert locality(reader, Topology("h1", "r1", "dc1")) == Locality.SAME_HOST
    assert locality(reader, Topology("h2", "r1", "dc1")) == Locality.SAME_RACK
    assert locality(reader, Topology("h2", "r2", "dc1")) == Locality.SAME_DATACENTER
    assert locality(reader, Topology("h2", "r1", "dc2")) == Locality.CROSS_DATACENTER
    assert locality(Topology("h1"), Topology("h1")) == Locality.SAME_HOST
    assert locality(Topology("h1", "", "dc1"), Topology("h2", "", "dc1")) == Locality.SAME_DATACENTER
    assert locality(Topology("h1"), Topology("h2")) == Locality.CROSS_DATACENTER


def test_nearest_source_wins_and_every_chunk_is_planned_once() -> None:
    reader = Topology("h1", "r1", "dc0")
    result = plan(
        reader,
        [
            source("trainer", TRAINER),
            source("peer-rack", Topology("h2", "r1", "dc0")),
            source("peer-host", Topology("h1", "r1", "dc0")),
        ],
    )
    assert [r.holder_id for r in result.reads] == ["peer-host"]
    assert result.reads[0].locality == Locality.SAME_HOST
    assert sorted(result.reads[0].chunk_indices) == list(range(8))
    assert result.size_bytes == 80


def test_busy_near_holder_gives_way_to_a_free_one_and_bounds_are_never_exceeded() -> None:
    reader = Topology("h1", "r1", "dc0")
    full = source("peer-host", Topology("h1", "r1", "dc0"), active=2, bound=2)
    result = plan(reader, [full, source("trainer", TRAINER, active=0, bound=1)])
    assert [r.holder_id for r in result.reads] == ["trainer"]
    with pytest.raises(ResourceExhausted, match="bound"):
        plan(reader, [full, source("trainer", TRAINER, active=1, bound=1)])


def test_shards_are_read_from_their_own_holders() -> None:
    result = plan(
        Topology("h9", "r9", "dc0"),
        [
            source("rank0", TRAINER, chunks=range(0, 5)),
            source("rank1", Topology("t1", "r0", "dc0"), chunks=range(5, 8)),
        ],
    )
    by_holder = {r.holder_id: r.chunk_indices for r in result.reads}
    assert by_holder == {"rank0": (0, 1, 2, 3, 4), "rank1": (5, 6, 7)}


def test_readers_fan_out_as_a_tree_when_finished_readers_become_sources() -> None:
    """Simulate readers arriving one round at a time: the trainer (bound 1) serves one reader."""
    holders = [source("trainer", TRAINER, bound=1, publisher=True)]
    waiting = [f"r{i}" for i in range(7)]
    rounds = 0
    trainer_reads = 0
    while waiting:
        rounds += 1
        active: dict[str, int] = {}
        finished = []
        for reader_id in list(waiting):
            sources = [
                Source(
                    holder_id=s.holder_id,
                    topology=s.topology,
                    chunks=None,
                    active_reads=active.get(s.holder_id, 0),
                    max_concurrent_reads=s.max_concurrent_reads,
                    publisher=s.publisher,
                )
                for s in holders
            ]
            try:
                result = plan_reads(
                    reader_id=reader_id,
                    reader=Topology(reader_id, "r0", "dc0"),
                    chunks=[0, 1],
                    chunk_sizes=[1, 1],
                    sources=sources,
                )
            except ResourceExhausted:
                continue
            for read in result.reads:
                active[read.holder_id] = active.get(read.holder_id, 0) + 1
                trainer_reads += read.holder_id == "trainer"
            finished.append(reader_id)
        for reader_id in finished:
            waiting.remove(reader_id)
            holders.append(source(reader_id, Topology(reader_id, "r0", "dc0"), bound=1))
    assert trainer_reads == 1  # the trainer's egress is one model however many readers
    assert rounds == 4  # 1, 1, 2, then 3 readers: a binary tree, not a chain of 7


def test_only_one_reader_per_datacenter_pulls_across_the_wide_area() -> None:
    remote = Topology("h5", "r5", "dc1")
    first = plan(remote, [source("trainer", TRAINER)])
    assert first.cross_datacenter and first.reads[0].locality == Locality.CROSS_DATACENTER
    with pytest.raises(ResourceExhausted, match="outside datacenter"):
        plan(remote, [source("trainer", TRAINER)], datacenter_puller_busy=True)
    # Once the puller holds the version, its datacenter reads from it, never across.
    second = plan(
        remote, [source("trainer", TRAINER), source("puller", Topology("h6", "r6", "dc1"))], datacenter_puller_busy=True
    )
    assert [r.holder_id for r in second.reads] == ["puller"] and not second.cross_datacenter


def test_publishers_are_spared_once_a_peer_in_the_datacenter_holds_the_version() -> None:
    reader = Topology("h1", "r1", "dc0")
    trainer = source("trainer", Topology("h1", "r1", "dc0"), publisher=True)
    peer = source("peer", Topology("h2", "r2", "dc0"), active=1, bound=1)
    with pytest.raises(ResourceExhausted):
        plan(reader, [trainer, peer])  # waits for the peer rather than loading the trainer again
    assert plan(reader, [trainer, peer], spare_publishers=False).reads[0].holder_id == "trainer"


def test_excluded_and_missing_holders_are_reported() -> None:
    reader = Topology("h1", "r1", "dc0")
    result = plan(reader, [source("bad", TRAINER), source("good", Topology("h3", "r3", "dc0"))], excluded=["bad"])
    assert [r.holder_id for r in result.reads] == ["good"]
    with pytest.raises(FailedPrecondition, match="no live holder"):
        plan(reader, [source("rank0", TRAINER, chunks=range(0, 4))])


def test_readers_spread_over_equal_holders() -> None:
    holders = [source(f"peer{i}", Topology(f"p{i}", "r1", "dc0"), bound=8) for i in range(4)]
    chosen = {
        plan_reads(
            reader_id=f"reader{i}", reader=Topology(f"x{i}", "r1", "dc0"), chunks=[0], chunk_sizes=[1], sources=holders
        )
        .reads[0]
        .holder_id
        for i in range(16)
    }
    assert len(chosen) >= 3


def test_a_windowed_plan_takes_the_rarest_chunks_and_defers_the_rest() -> None:
    reader = Topology("h1", "r1", "dc0")
    peer = source("peer", Topology("h2", "r1", "dc0"), chunks=range(0, 4))
    result = plan(
        reader,
        [source("trainer", TRAINER, publisher=True), peer],
        defer_busy=True,
        max_chunks=2,
    )
    planned = [i for r in result.reads for i in r.chunk_indices]
    assert len(planned) == 2 and all(i >= 4 for i in planned)  # chunks only the trainer has
    assert sorted(planned + list(result.deferred)) == list(range(8))


def test_defer_busy_plans_what_is_free_and_defers_busy_chunks() -> None:
    reader = Topology("h1", "r1", "dc0")
    busy_peer = source("busy", Topology("h2", "r1", "dc0"), chunks=range(0, 4), active=2, bound=2)
    free_peer = source("free", Topology("h3", "r1", "dc0"), chunks=range(4, 8))
    result = plan(reader, [busy_peer, free_peer], defer_busy=True)
    assert [r.holder_id for r in result.reads] == ["free"]
    assert result.deferred == (0, 1, 2, 3)
    with pytest.raises(ResourceExhausted):
        plan(reader, [busy_peer, free_peer])


def _fetching(holder_id: str, topology: Topology, chunks: set[int], *, bound: int = 2, active: int = 0) -> Source:
    """A reader that holds nothing yet but is reading ``chunks`` from a holder that has them."""
    return Source(
        holder_id=holder_id,
        topology=topology,
        chunks=frozenset(),
        active_reads=active,
        max_concurrent_reads=bound,
        fetching=frozenset(chunks),
    )


def test_a_reader_fetching_a_chunk_is_its_source_and_the_publisher_is_spared() -> None:
    reader = Topology("h1", "r1", "dc0")
    trainer = source("trainer", TRAINER, publisher=True, bound=8)
    early = _fetching("early", Topology("h2", "r1", "dc0"), {0, 1, 2, 3})
    result = plan(reader, [trainer, early], defer_busy=True)
    by_holder = {r.holder_id: r.chunk_indices for r in result.reads}
    # Chunks in flight at "early" come from it (the read waits there), the rest from the trainer:
    # no chunk leaves the trainer twice.
    assert by_holder == {"early": (0, 1, 2, 3), "trainer": (4, 5, 6, 7)}


def test_a_holder_that_has_the_chunk_beats_one_still_fetching_it_even_if_nearer() -> None:
    reader = Topology("h1", "r1", "dc0")
    far_holder = source("far", Topology("h3", "r9", "dc0"))  # whole version, another rack
    near_fetcher = _fetching("near", Topology("h2", "r1", "dc0"), set(range(8)))
    result = plan(reader, [far_holder, near_fetcher], defer_busy=True)
    assert [r.holder_id for r in result.reads] == ["far"]
    # Once "far" is busy, the nearer reader that is still fetching takes over.
    busy_far = source("far", Topology("h3", "r9", "dc0"), active=2, bound=2)
    assert [r.holder_id for r in plan(reader, [busy_far, near_fetcher], defer_busy=True).reads] == ["near"]


def test_a_chunk_only_in_flight_somewhere_still_needs_a_holder_that_has_it() -> None:
    reader = Topology("h1", "r1", "dc0")
    with pytest.raises(FailedPrecondition, match="no live holder"):
        plan(reader, [_fetching("early", Topology("h2", "r1", "dc0"), set(range(8)))], defer_busy=True)


def test_readers_start_on_different_slices_when_the_publisher_serves_them_at_once() -> None:
    reader = Topology("h1", "r1", "dc0")
    trainer = Source(
        holder_id="trainer",
        topology=Topology("h1", "r1", "dc0"),  # the reader's host: shared memory
        chunks=None,
        active_reads=0,
        max_concurrent_reads=1,
        publisher=True,
        shared_memory=True,
    )
    # Four readers expected, shared memory widens the trainer's one slot to eight: a quarter each.
    spread = plan(reader, [trainer], chunks=8, defer_busy=True, num_readers=4, shm_max_concurrent_reads=8)
    assert [len(r.chunk_indices) for r in spread.reads] == [2]
    assert len(spread.deferred) == 6
    # Over a NIC with one slot the trainer serves one reader at a time: that one streams it all.
    nic = Source(
        holder_id="trainer", topology=TRAINER, chunks=None, active_reads=0, max_concurrent_reads=1, publisher=True
    )
    streamed = plan(reader, [nic], chunks=8, defer_busy=True, num_readers=4, shm_max_concurrent_reads=8)
    assert [len(r.chunk_indices) for r in streamed.reads] == [8]


def test_shared_memory_widens_a_holders_bound_and_nothing_else() -> None:
    reader = Topology("h1", "r1", "dc0")
    full = {"active_reads": 1, "max_concurrent_reads": 1, "chunks": None}
    same_host = Source(holder_id="a", topology=Topology("h1", "r1", "dc0"), shared_memory=True, **full)  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted):
        plan(reader, [same_host])
    assert [r.holder_id for r in plan(reader, [same_host], shm_max_concurrent_reads=4).reads] == ["a"]
    other_host = Source(holder_id="b", topology=Topology("h2", "r1", "dc0"), **full)  # type: ignore[arg-type]
    with pytest.raises(ResourceExhausted):
        plan(reader, [other_host], shm_max_concurrent_reads=4)


def test_a_reader_adds_sources_only_up_to_its_bound_and_reads_more_from_those_it_has() -> None:
    reader = Topology("h0", "r0", "dc0")
    peers = [source(f"peer{i}", Topology(f"h{i + 1}", "r0", "dc0"), chunks=range(i, i + 1)) for i in range(6)]
    result = plan(reader, peers, chunks=6, defer_busy=True, reader_max_sources=4, reader_sources=["peer0", "peer5"])
    # Two sources already: two new ones at most, and more chunks from those it reads from.
    assert {r.holder_id for r in result.reads} <= {f"peer{i}" for i in range(6)}
    assert len({r.holder_id for r in result.reads} - {"peer0", "peer5"}) == 2
    assert {"peer0", "peer5"} <= {r.holder_id for r in result.reads}
    assert len(result.deferred) == 2
    # At its bound, a plan names no new source: every chunk waits, none is refused for good.
    with pytest.raises(ResourceExhausted):
        plan(reader, peers[:5], chunks=5, defer_busy=True, reader_max_sources=2, reader_sources=["x", "y"])
    # Without defer_busy a plan must name every chunk's source at once: no bound applies.
    whole = plan(reader, peers, chunks=6, reader_max_sources=2)
    assert len(whole.reads) == 6
