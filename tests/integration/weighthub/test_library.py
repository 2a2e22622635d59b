"""Publisher and Reader moving real bytes through the tensor plane, planned by a live hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from clients.weighthub import Publisher, Reader
from tests.support import assert_eventually

MODEL = "policy"
CHUNK = 64 * 1024
REPO = Path(__file__).resolve().parents[3]


def weights(seed: int, *, num_tensors: int = 8, numel: int = 64 * 1024) -> dict[str, torch.Tensor]:
    """``num_tensors`` float32 tensors of ``numel`` elements (256 KiB each by default)."""
    generator = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(numel, generator=generator) for i in range(num_tensors)}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


async def test_readers_get_exact_bytes_and_fan_out_from_each_other(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(1)
    async with Publisher(
        hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, max_concurrent_reads=1, **loopback()
    ) as pub:
        async with (
            Reader(hub, model=MODEL, host="node1", **loopback()) as first,
            Reader(hub, model=MODEL, host="node2", **loopback()) as second,
        ):
            assert await first.latest_version() == 0
            assert await pub.publish(1, tensors) == 1
            assert await first.latest_version() == 1
            assert_same(await first.fetch(), tensors)
            assert first.last_fetch.sources == {pub.holder_id: sum(t.numel() * 4 for t in tensors.values())}
            assert first.held_versions == [1]
            # The second reader is planned from the first one: the trainer is spared.
            assert_same(await second.fetch(1), tensors)
            assert set(second.last_fetch.sources) == {first.holder_id}
            with pytest.raises(ValueError, match="not above"):
                await pub.publish(1, tensors)


async def test_a_delta_read_moves_only_the_changed_chunks(hub: str, loopback: Callable[..., dict[str, Any]]) -> None:
    v1 = weights(2)
    v2 = {name: t.clone() for name, t in v1.items()}
    v2["layer3.weight"][:10] += 1.0  # one 64 KiB chunk of 32
    async with Publisher(hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, **loopback()) as pub:
        async with Reader(hub, model=MODEL, host="node1", **loopback()) as reader:
            await pub.publish(1, v1)
            await reader.fetch()
            await pub.publish(2, v2)
            got = await reader.fetch()
            assert_same(got, v2)
            assert reader.last_fetch.base_version == 1
            assert reader.last_fetch.bytes_read == CHUNK
            # Fetching into the buffers of the version it holds updates them in place, again by delta.
            await pub.publish(3, v1)
            previous = got
            got = await reader.fetch(into=previous)
            assert_same(got, v1)
            assert got["layer0.weight"].data_ptr() == previous["layer0.weight"].data_ptr()
            assert reader.last_fetch.bytes_read == CHUNK


async def test_sharded_publish_commits_when_every_rank_has_published(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(3)
    names = sorted(tensors)
    halves = [{n: tensors[n] for n in names[:4]}, {n: tensors[n] for n in names[4:]}]
    async with Publisher(hub, model=MODEL, shard_index=0, num_shards=2, chunk_size_bytes=CHUNK, **loopback()) as rank0:
        async with Publisher(
            hub, model=MODEL, shard_index=1, num_shards=2, chunk_size_bytes=CHUNK, **loopback()
        ) as rank1:
            async with Reader(hub, model=MODEL, host="node1", **loopback()) as reader:
                first = asyncio.create_task(rank0.publish(1, halves[0]))
                await asyncio.sleep(0)  # let rank 0 publish its shard first
                assert await reader.latest_version() == 0
                assert await asyncio.gather(first, rank1.publish(1, halves[1])) == [1, 1]
                assert_same(await reader.fetch(), tensors)
                assert set(reader.last_fetch.sources) == {rank0.holder_id, rank1.holder_id}


async def test_watch_gives_the_latest_version_first_then_new_ones(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with Publisher(hub, model=MODEL, chunk_size_bytes=CHUNK, **loopback()) as pub:
        async with Reader(hub, model=MODEL, **loopback()) as reader:
            await pub.publish(1, weights(4, num_tensors=2))
            await pub.publish(2, weights(5, num_tensors=2))
            versions = reader.watch()
            assert await anext(versions) == 2
            await pub.publish(3, weights(6, num_tensors=2))
            assert await anext(versions) == 3
            await versions.aclose()


async def test_a_holder_killed_mid_transfer_is_replanned_and_nothing_is_torn(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    tensors = weights(7, num_tensors=16, numel=256 * 1024)  # 16 MiB in 256 chunks
    async with Publisher(hub, model=MODEL, host="trainer", chunk_size_bytes=CHUNK, **loopback()) as pub:
        await pub.publish(1, tensors)
        peer = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("reader_process.py")),
            hub,
            MODEL,
            "peer",
            "node1",
            "1",
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert peer.stdout is not None
            line = await asyncio.wait_for(peer.stdout.readline(), timeout=60)
            assert line.strip() == b"held 1"
            async with Reader(hub, model=MODEL, host="node2", **loopback()) as reader:
                assert reader._reader is not None
                transport = reader._reader
                original = transport.read_many
                killed: list[str] = []

                async def read_and_kill(items, **kwargs):  # type: ignore[no-untyped-def]
                    if items[0][0].holder_id == "peer" and not killed:
                        killed.append("peer")
                        inner = kwargs["on_chunk"]
                        landed = []

                        def on_chunk(name: str, local: int) -> None:
                            inner(name, local)
                            landed.append(local)
                            if len(landed) == 2:
                                os.kill(peer.pid, signal.SIGKILL)

                        kwargs["on_chunk"] = on_chunk
                    return await original(items, **kwargs)

                transport.read_many = read_and_kill  # type: ignore[method-assign]
                got = await reader.fetch(1)
                assert killed == ["peer"]
                assert_same(got, tensors)
                stats = reader.last_fetch
                assert stats.num_read_failures >= 1 and stats.num_plans >= 2
                assert pub.holder_id in stats.sources
                assert stats.bytes_read == sum(t.numel() * 4 for t in tensors.values())
        finally:
            with contextlib.suppress(ProcessLookupError):
                peer.kill()
            await peer.wait()


async def test_publisher_reuses_its_oldest_buffer_only_after_withdrawing_it(
    hub: str, loopback: Callable[..., dict[str, Any]]
) -> None:
    async with Publisher(hub, model=MODEL, chunk_size_bytes=CHUNK, num_buffers=2, **loopback()) as pub:
        async with Reader(hub, model=MODEL, **loopback()) as reader:
            for version in (1, 2, 3):
                await pub.publish(version, weights(10 + version, num_tensors=2))
            # Version 1's buffer now holds version 3: the hub no longer lists the publisher for it.
            assert_same(await reader.fetch(3), weights(13, num_tensors=2))

            async def listed() -> list[int]:
                assert reader._client is not None
                from seedstack.weighthub.v1 import weighthub_pb2 as pb

                reply = await reader._client.list_versions(pb.ListVersionsRequest(model=MODEL))
                return [v.version for v in reply.versions]

            assert await assert_eventually(listed) == [2, 3]
