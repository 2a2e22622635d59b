"""Partial holders: readers serve the chunks they verified while still fetching, plans wait for a
free source instead of the reader polling, and nothing unverified is ever planned or exposed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from seedstack.common.v1 import common_pb2
from seedstack.weighthub.v1 import weighthub_pb2 as pb

from clients.weighthub import Publisher, Reader, WeightHubClient
from tests.integration.weighthub.test_hub import MODEL, code_of, publish, register, shard
from tests.integration.weighthub.test_library import assert_same, weights
from tests.support import assert_eventually

CHUNK = 16 * 1024


def plan_request(reader_id: str, **kwargs: Any) -> pb.GetPlanRequest:
    return pb.GetPlanRequest(reader_id=reader_id, model=MODEL, version=1, allow_partial=True, **kwargs)


async def test_a_partial_holder_is_planned_only_for_the_chunks_it_reported(client: WeightHubClient) -> None:
    await register(client, "trainer", host="t", max_concurrent_reads=1)
    await register(client, "early", host="a")
    await register(client, "late", host="b")
    manifest = shard(1, ["w0", "w1"])  # 4 chunks
    await publish(client, "trainer", manifest)
    # "early" reads chunks 0-1 from the trainer and holds its only read slot while it does.
    first = await client.get_plan(plan_request("early", request_id="p1", chunk_indices=[0, 1]))
    assert [r.holder_id for r in first.reads] == ["trainer"]
    reply = await client.report_progress(
        pb.ReportProgressRequest(request_id="g1", holder_id="early", model=MODEL, version=1, chunk_indices=[0])
    )
    assert reply.num_chunks_held == 1
    # "late" gets the verified chunk from the partial holder; the rest wait for the trainer.
    plan = await client.get_plan(plan_request("late", request_id="p2"))
    assert [(r.holder_id, list(r.chunk_indices)) for r in plan.reads] == [("early", [0])]
    assert list(plan.deferred_chunk_indices) == [1, 2, 3]
    # Without allow_partial it is all or nothing.
    assert (
        await code_of(client.get_plan(pb.GetPlanRequest(request_id="p3", reader_id="late", model=MODEL, version=1)))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    # A retried report changes nothing; a bad chunk index is the caller's error.
    again = await client.report_progress(
        pb.ReportProgressRequest(request_id="g1", holder_id="early", model=MODEL, version=1, chunk_indices=[0])
    )
    assert again.num_chunks_held == 1
    bad = pb.ReportProgressRequest(request_id="g2", holder_id="early", model=MODEL, version=1, chunk_indices=[9])
    assert await code_of(client.report_progress(bad)) == grpc.StatusCode.INVALID_ARGUMENT
    # Giving the read up withdraws the partial copy at once.
    await client.report_held(
        pb.ReportHeldRequest(request_id="h1", holder_id="early", model=MODEL, version=1, held=False)
    )
    left = await client.get_plan(plan_request("late", request_id="p4", chunk_indices=[0]))
    assert [r.holder_id for r in left.reads] == ["trainer"]


async def test_a_plan_waits_for_a_free_source_instead_of_the_reader_polling(client: WeightHubClient) -> None:
    await register(client, "trainer", host="t", max_concurrent_reads=1)
    await register(client, "early", host="a")
    await register(client, "late", host="b")
    await publish(client, "trainer", shard(1, ["w0"]))
    await client.get_plan(plan_request("early", request_id="p1"))
    # Nothing frees up: the hub answers RESOURCE_EXHAUSTED after the wait, not at once.
    started = time.monotonic()
    assert (
        await code_of(client.get_plan(plan_request("late", request_id="p2", max_wait_s=0.3)))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert time.monotonic() - started >= 0.25
    # A held plan is answered as soon as the busy source is released.
    waiting = asyncio.create_task(client.get_plan(plan_request("late", request_id="p3", max_wait_s=20.0)))
    await asyncio.sleep(0)
    assert not waiting.done()
    await client.report_progress(
        pb.ReportProgressRequest(
            request_id="g1", holder_id="early", model=MODEL, version=1, finished_holder_ids=["trainer"]
        )
    )
    plan = await asyncio.wait_for(waiting, 5.0)
    assert [r.holder_id for r in plan.reads] == ["trainer"]


async def test_a_reader_serving_in_flight_is_named_for_the_chunks_it_reads_before_it_reports_them(
    client: WeightHubClient,
) -> None:
    await register(client, "trainer", host="t", max_concurrent_reads=1)
    await register(client, "early", host="a")
    await register(client, "late", host="b")
    await register(client, "later", host="c")
    await publish(client, "trainer", shard(1, ["w0", "w1"]))  # 4 chunks
    first = await client.get_plan(plan_request("early", request_id="p1", chunk_indices=[0, 1], serve_in_flight=True))
    assert [r.holder_id for r in first.reads] == ["trainer"]
    # Before any progress report, "late" is sent to "early" for the chunks in flight there (its
    # read waits at "early" until each lands); the trainer, busy, is not asked for them again.
    plan = await client.get_plan(plan_request("late", request_id="p2", serve_in_flight=True))
    assert [(r.holder_id, list(r.chunk_indices)) for r in plan.reads] == [("early", [0, 1])]
    assert list(plan.deferred_chunk_indices) == [2, 3]
    # Chunks "late" reads from a reader still fetching them do not make "late" a source of them
    # (a wait is one hop, never a chain): "later" is sent to "early" too.
    after = await client.get_plan(plan_request("later", request_id="p3", chunk_indices=[0, 1], serve_in_flight=True))
    assert [r.holder_id for r in after.reads] == ["early"]
    # A reader that does not serve chunks in flight is never named for them.
    await client.report_held(
        pb.ReportHeldRequest(request_id="h1", holder_id="early", model=MODEL, version=1, held=False)
    )
    await register(client, "quiet", host="d")
    await register(client, "last", host="e")
    quiet = await client.get_plan(plan_request("quiet", request_id="p4", chunk_indices=[0]))
    assert [r.holder_id for r in quiet.reads] == ["trainer"]
    assert (
        await code_of(client.get_plan(plan_request("last", request_id="p5", chunk_indices=[0], max_wait_s=0)))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )


async def test_same_host_readers_read_the_publisher_over_shared_memory_at_once(client: WeightHubClient) -> None:
    async def register_on(holder_id: str, host: str, machine: str, **kwargs: Any) -> None:
        offers = [common_pb2.TransportOffer(carrier="tcp", address=f"127.0.0.1:{2000 + len(holder_id)}")]
        if machine:
            offers.append(common_pb2.TransportOffer(carrier="shm", address=f"@{holder_id}"))
        await client.register_holder(
            pb.RegisterHolderRequest(
                request_id=f"reg-{holder_id}",
                holder_id=holder_id,
                offers=offers,
                topology=common_pb2.TopologyLabels(host=host, rack="r0", datacenter="dc0"),
                transport_host_id=machine,
                **kwargs,
            )
        )

    # The trainer's one read slot is for its NIC; readers on its host copy out of its shared memory
    # themselves, which costs it no copy: each reads every chunk from it straight away, none waits
    # for a peer to pass chunks on.
    await register_on("trainer", "t", "m1", max_concurrent_reads=1)
    await publish(client, "trainer", shard(1, ["w0", "w1"]))  # 4 chunks
    for reader_id in ("near0", "near1", "near2"):
        await register_on(reader_id, "t", "m1")
        plan = await client.get_plan(plan_request(reader_id, request_id=f"p-{reader_id}", serve_in_flight=True))
        assert [(r.holder_id, r.offer.carrier, list(r.chunk_indices)) for r in plan.reads] == [
            ("trainer", "shm", [0, 1, 2, 3])
        ]
    # A reader on another host still spares the trainer's NIC: it reads from the readers fetching.
    await register_on("far", "x", "")
    far = await client.get_plan(plan_request("far", request_id="p-far", serve_in_flight=True))
    assert far.reads and all(r.holder_id.startswith("near") and r.offer.carrier == "tcp" for r in far.reads)


def _gate_reads(reader: Reader, *, after: int) -> tuple[asyncio.Event, list[str]]:
    """Let ``after`` transport reads (batches of tensors from one holder) of ``reader`` through, hold
    the rest until the event is set; returns the event and the holder of every read that has finished."""
    assert reader._reader is not None
    transport = reader._reader
    original = transport.read_many
    gate = asyncio.Event()
    started: list[str] = []
    finished: list[str] = []

    async def read_many(items: Any, **kwargs: Any) -> Any:
        holder_id = items[0][0].holder_id
        started.append(holder_id)
        if len(started) > after:
            await gate.wait()
        result = await original(items, **kwargs)
        finished.append(holder_id)
        return result

    transport.read_many = read_many  # type: ignore[method-assign]
    return gate, finished


async def _nothing(holder_id: str) -> None:
    return None


def _spy_reads(reader: Reader, before: Callable[[str], Awaitable[None]] = _nothing) -> list[str]:
    """The holder of every transport read (a batch of tensors from one holder) of ``reader``;
    ``before`` runs first on each."""
    assert reader._reader is not None
    transport = reader._reader
    original = transport.read_many
    sources: list[str] = []

    async def read_many(items: Any, **kwargs: Any) -> Any:
        holder_id = items[0][0].holder_id
        sources.append(holder_id)
        await before(holder_id)
        return await original(items, **kwargs)

    transport.read_many = read_many  # type: ignore[method-assign]
    return sources


async def test_a_reader_reads_chunks_from_a_peer_that_is_still_fetching(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(3, num_tensors=8, numel=CHUNK // 4)  # one chunk per tensor
    async with Publisher(
        hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, max_concurrent_reads=1, **loopback()
    ) as pub:
        await pub.publish(1, tensors)
        async with (
            Reader(hub, model=MODEL, host="node1", max_chunks_per_plan=4, **loopback()) as early,
            Reader(hub, model=MODEL, host="node2", **loopback()) as late,
        ):
            # "early" verifies two chunks from the trainer (one batch of its two), then stalls holding
            # the trainer's slot.
            gate, early_done = _gate_reads(early, after=1)
            late_sources = _spy_reads(late)
            early_fetch = asyncio.create_task(early.fetch(1))
            await assert_eventually(lambda: len(early_done) == 1, message="early never verified two chunks")
            late_fetch = asyncio.create_task(late.fetch(1))
            await assert_eventually(lambda: early.holder_id in late_sources, message="late never read from early")
            assert not early_fetch.done() and not late_fetch.done()
            gate.set()
            assert_same(await asyncio.wait_for(early_fetch, 20), tensors)
            assert_same(await asyncio.wait_for(late_fetch, 20), tensors)
            assert late.last_fetch.sources.get(early.holder_id, 0) > 0
            # The trainer served about one copy: the rest went peer to peer.
            trainer_bytes = early.last_fetch.sources.get(pub.holder_id, 0) + late.last_fetch.sources.get(
                pub.holder_id, 0
            )
            assert trainer_bytes <= sum(t.numel() * 4 for t in tensors.values()) + CHUNK * 2


async def test_a_partial_holder_that_dies_mid_way_is_replanned_and_nothing_is_torn(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(4, num_tensors=8, numel=CHUNK // 4)
    async with Publisher(
        hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, max_concurrent_reads=1, **loopback()
    ) as pub:
        await pub.publish(1, tensors)
        doomed = Reader(
            hub, model=MODEL, host="node1", lease_ttl_s=1.0, transport_bind_host="127.0.0.1", reads_per_source=4
        )
        await doomed.start()
        try:
            # Never released: it dies with two verified chunks (one batch of the four of its 8 chunks).
            _, doomed_done = _gate_reads(doomed, after=1)
            doomed_fetch = asyncio.create_task(doomed.fetch(1))
            await assert_eventually(lambda: len(doomed_done) == 1, message="doomed never verified two chunks")
            async with Reader(hub, model=MODEL, host="node2", **loopback()) as survivor:

                async def crash(holder_id: str) -> None:
                    # The partial holder dies as the survivor starts reading from it: its carriers
                    # close and its heartbeat stops (no goodbye to the hub; its lease lapses).
                    if holder_id == doomed.holder_id and doomed._membership._task is not None:
                        doomed._membership._task.cancel()
                        doomed._membership._task = None
                        await doomed._membership.holder.close()

                sources = _spy_reads(survivor, crash)
                got = await asyncio.wait_for(survivor.fetch(1), 30)
                assert doomed.holder_id in sources
                assert survivor.last_fetch.num_read_failures >= 1
                assert_same(got, tensors)
                assert set(survivor.last_fetch.sources) == {pub.holder_id}
            # What is left of the dead reader's own fetch ends too (its lease is gone).
            doomed_fetch.cancel()
            with contextlib.suppress(BaseException):
                await doomed_fetch
        finally:
            await doomed.close()
