"""A reader's first plan of a version comes with the version's announcement: its fetch starts
reading without a GetPlan round trip, and a plan it does not use goes back to the hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

from seedstack.weighthub.v1 import weighthub_pb2 as pb

from clients.weighthub import Publisher, Reader, WeightHubClient
from tests.integration.weighthub.test_hub import MODEL
from tests.integration.weighthub.test_library import assert_same, weights
from tests.integration.weighthub.test_partial import _spy_reads
from tests.support import assert_eventually

CHUNK = 16 * 1024


def _count_plans(reader: Reader) -> list[pb.GetPlanRequest]:
    """Every GetPlan request ``reader`` sends from now on."""
    assert reader._client is not None
    client = reader._client
    original = client.get_plan
    sent: list[pb.GetPlanRequest] = []

    async def get_plan(request: pb.GetPlanRequest, **kwargs: Any) -> pb.GetPlanResponse:
        sent.append(request)
        return await original(request, **kwargs)

    client.get_plan = get_plan  # type: ignore[method-assign]
    return sent


def _watch(reader: Reader) -> AsyncGenerator[int, None]:
    return cast(AsyncGenerator[int, None], reader.watch())


async def _first(versions: AsyncIterator[int]) -> int:
    return await anext(versions)


async def test_announced_readers_fetch_without_asking_for_a_plan_and_relay_in_flight(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(5, num_tensors=8, numel=CHUNK // 4)  # one chunk per tensor
    async with Publisher(
        hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, max_concurrent_reads=1, **loopback()
    ) as pub:
        async with (
            Reader(hub, model=MODEL, host="node1", max_chunks_per_plan=0, **loopback()) as first,
            Reader(hub, model=MODEL, host="node2", max_chunks_per_plan=0, **loopback()) as second,
        ):
            watches = [_watch(first), _watch(second)]
            announced = [asyncio.create_task(_first(w)) for w in watches]
            await asyncio.sleep(0.2)  # both watches subscribed (a late one is told of v1 too)
            plans = [_count_plans(first), _count_plans(second)]
            second_sources = _spy_reads(second)
            await pub.publish(1, tensors)
            assert [await asyncio.wait_for(a, 20) for a in announced] == [1, 1]
            got = await asyncio.gather(first.fetch(1), second.fetch(1))
            for tensors_got in got:
                assert_same(tensors_got, tensors)
            # The trainer's one read slot went to one of them; the other was planned, at the
            # commit, to read from it while it was still fetching (it had not registered its
            # buffers yet: the read waits for them), and neither asked for a plan.
            assert plans == [[], []]
            trainer_bytes = sum(r.last_fetch.sources.get(pub.holder_id, 0) for r in (first, second))
            assert trainer_bytes == sum(t.numel() * 4 for t in tensors.values())
            assert set(second_sources) <= {pub.holder_id, first.holder_id}
            for w in watches:
                await w.aclose()


async def test_an_announced_plan_not_fetched_releases_its_read_lease(
    hub: str, client: WeightHubClient, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with Publisher(
        hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, max_concurrent_reads=1, **loopback()
    ) as pub:
        async with (
            Reader(hub, model=MODEL, host="node1", max_chunks_per_plan=0, **loopback()) as idle,
            Reader(hub, model=MODEL, host="node2", **loopback()) as other,
        ):
            watch = _watch(idle)
            announced = asyncio.create_task(_first(watch))
            await asyncio.sleep(0.2)
            await pub.publish(1, weights(6, num_tensors=2, numel=CHUNK // 4))
            assert await asyncio.wait_for(announced, 20) == 1
            # The plan announced with v1 holds the trainer's only read slot (for 120 s unless given
            # back): a plan for another reader names "idle" (planned to fetch it) instead.
            busy = pb.GetPlanRequest(request_id="busy", reader_id=other.holder_id, model=MODEL, version=1)
            assert [r.holder_id for r in (await client.get_plan(busy)).reads] == [idle.holder_id]
            # "idle" moves on to v2 without fetching v1: the v1 plan goes back, the slot is free.
            following = asyncio.create_task(_first(watch))
            await pub.publish(2, weights(7, num_tensors=2, numel=CHUNK // 4))
            assert await asyncio.wait_for(following, 20) == 2

            async def trainer_free() -> bool:
                reply = await client.get_plan(
                    pb.GetPlanRequest(
                        request_id=f"free-{asyncio.get_running_loop().time()}",
                        reader_id=other.holder_id,
                        model=MODEL,
                        version=1,
                    )
                )
                return [r.holder_id for r in reply.reads] == [pub.holder_id]

            await assert_eventually(trainer_free, message="the unused plan's read lease was never released")
            await watch.aclose()
