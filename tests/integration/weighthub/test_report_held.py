"""A Reader's fetch returns once the version is here and verified; the hub hears of the holding in
the background, retried, ordered before any withdrawal of that version and before the reader leaves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from seedstack.weighthub.v1 import weighthub_pb2 as pb

from clients.base import RPCError
from clients.weighthub import Publisher, Reader, WeightHubClient
from tests.integration.weighthub.test_library import CHUNK, MODEL, assert_same, weights
from tests.support import assert_eventually


class HubCalls:
    """Wraps a reader's hub client: holds its ReportHeld(held=True) calls until ``gate`` opens, can
    fail the first ones with UNAVAILABLE, and records the calls sent to the hub and those it answered,
    in order."""

    def __init__(self, client: WeightHubClient, *, num_unavailable: int = 0) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent: list[tuple[str, int]] = []
        self.answered: list[tuple[str, int, bool]] = []
        self.num_unavailable = num_unavailable
        report_held = client.report_held
        unregister_holder = client.unregister_holder

        async def held(request: pb.ReportHeldRequest, *, timeout_s: float | None = None) -> pb.ReportHeldResponse:
            if request.held:
                await self.gate.wait()
                if self.num_unavailable > 0:
                    self.num_unavailable -= 1
                    raise RPCError("ReportHeld", grpc.StatusCode.UNAVAILABLE, "hub down")
            self.sent.append(("held" if request.held else "withdrawn", request.version))
            reply = await report_held(request, timeout_s=timeout_s)
            self.answered.append(("held" if request.held else "withdrawn", request.version, request.held))
            return reply

        async def unregister(request: pb.UnregisterHolderRequest, *, timeout_s: float | None = None) -> Any:
            self.answered.append(("unregistered", 0, False))
            return await unregister_holder(request, timeout_s=timeout_s)

        client.report_held = held  # type: ignore[method-assign]
        client.unregister_holder = unregister  # type: ignore[method-assign]


async def test_fetch_returns_before_the_hub_answers_and_withdrawals_follow_the_report(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with (
        WeightHubClient(hub) as reader_client,
        Publisher(hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, **loopback()) as pub,
        Reader(reader_client, model=MODEL, host="node1", keep_versions=2, **loopback()) as reader,
    ):
        calls = HubCalls(reader_client)
        calls.gate.clear()
        versions = {v: weights(10 + v) for v in (1, 2, 3)}
        await pub.publish(1, versions[1])
        assert_same(await reader.fetch(1), versions[1])
        assert reader.held_versions == [1]
        assert reader.last_fetch.version == 1 and reader.last_fetch.bytes_read == 8 * 256 * 1024
        assert calls.answered == []  # returned while its ReportHeld waits
        # A fetch right after, and one that recycles v1's buffers while v1's report still waits.
        await pub.publish(2, versions[2])
        assert_same(await reader.fetch(2), versions[2])
        await pub.publish(3, versions[3])
        got = await reader.fetch(3)
        assert_same(got, versions[3])
        assert reader.held_versions == [2, 3]
        assert ("withdrawn", 1) not in calls.sent  # not before v1's report
        calls.gate.set()
        await reader.reported()
        assert calls.sent.index(("held", 1)) < calls.sent.index(("withdrawn", 1))
        # (v1 may have retired meanwhile, as the hub knew no holder of it but the trainer.)
        assert {("held", 2, True), ("held", 3, True)} <= set(calls.answered)
        # The hub now plans a second reader from it as a whole holder of v3.
        async with Reader(hub, model=MODEL, host="node2", **loopback()) as second:
            assert_same(await second.fetch(3), versions[3])
            assert reader.holder_id in second.last_fetch.sources


async def test_close_waits_for_a_report_on_its_way_before_unregistering(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with (
        WeightHubClient(hub) as reader_client,
        Publisher(hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, **loopback()) as pub,
    ):
        reader = Reader(reader_client, model=MODEL, host="node1", **loopback())
        await reader.start()
        calls = HubCalls(reader_client)
        calls.gate.clear()
        tensors = weights(20)
        await pub.publish(1, tensors)
        assert_same(await reader.fetch(1), tensors)
        asyncio.get_running_loop().call_soon(calls.gate.set)
        await reader.close()
        assert calls.answered == [("held", 1, True), ("unregistered", 0, False)]
        versions = await reader_client.list_versions(pb.ListVersionsRequest(model=MODEL))
        assert [v.num_holders for v in versions.versions] == [1]  # the publisher alone


async def test_a_report_the_hub_refuses_while_down_is_retried_until_it_lands(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with (
        WeightHubClient(hub) as reader_client,
        Publisher(hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, **loopback()) as pub,
        Reader(reader_client, model=MODEL, host="node1", **loopback()) as reader,
    ):
        calls = HubCalls(reader_client, num_unavailable=3)
        tensors = weights(30)
        await pub.publish(1, tensors)
        assert_same(await reader.fetch(1), tensors)
        await assert_eventually(lambda: ("held", 1, True) in calls.answered, timeout_s=10.0)
        assert calls.num_unavailable == 0
        versions = await reader_client.list_versions(pb.ListVersionsRequest(model=MODEL))
        assert [v.num_holders for v in versions.versions] == [2]
