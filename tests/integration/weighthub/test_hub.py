"""The hub's RPCs against real Redis: commits, versions, holders, plans, retention, bad input."""

from __future__ import annotations

import grpc
import pytest
from seedstack.common.v1 import common_pb2
from seedstack.weighthub.v1 import weighthub_pb2 as pb

from clients.base import RPCError
from clients.weighthub import WeightHubClient
from services.weighthub.versions import digest, root_hash
from tests.integration.weighthub.conftest import start_hub
from tests.support import assert_eventually

MODEL = "policy"


def shard(version: int, names: list[str], *, numel: int = 8, salt: str = "") -> common_pb2.Manifest:
    """A manifest of float32 tensors of ``numel`` elements, one 16-byte chunk each 4 elements."""
    tensors, chunks = [], []
    for name in names:
        tensors.append(common_pb2.TensorSpec(name=name, dtype="float32", shape=[numel], size_bytes=numel * 4))
        for offset in range(0, numel * 4, 16):
            chunks.append(
                common_pb2.ChunkSpec(
                    tensor_name=name,
                    index=len(chunks),
                    offset_bytes=offset,
                    size_bytes=min(16, numel * 4 - offset),
                    hash_hex=digest("xxh3_128", f"{name}{offset}{version}{salt}".encode()),
                    hash_algorithm="xxh3_128",
                )
            )
    return common_pb2.Manifest(
        model=MODEL,
        version=version,
        tensors=tensors,
        chunks=chunks,
        root_hash=root_hash("xxh3_128", (c.hash_hex for c in chunks)),
        chunk_size_bytes=16,
    )


async def register(client: WeightHubClient, holder_id: str, host: str = "h0", **kwargs: object) -> None:
    await client.register_holder(
        pb.RegisterHolderRequest(
            request_id=f"reg-{holder_id}",
            holder_id=holder_id,
            offers=[common_pb2.TransportOffer(carrier="tcp", address=f"127.0.0.1:{1000 + len(holder_id)}")],
            topology=common_pb2.TopologyLabels(host=host, rack="r0", datacenter="dc0"),
            **kwargs,  # type: ignore[arg-type]
        )
    )


async def publish(
    client: WeightHubClient, holder_id: str, manifest: common_pb2.Manifest, index: int = 0, num: int = 1
) -> pb.PublishResponse:
    return await client.publish(
        pb.PublishRequest(
            request_id=f"pub-{holder_id}-{manifest.version}-{index}-{manifest.root_hash[:8]}",
            holder_id=holder_id,
            manifest=manifest,
            shard_index=index,
            num_shards=num,
        )
    )


async def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(RPCError) as info:
        await call
    return info.value.code


async def test_a_version_commits_only_when_every_shard_is_registered(client: WeightHubClient) -> None:
    await register(client, "rank0")
    await register(client, "rank1")
    first = await publish(client, "rank0", shard(1, ["a", "b"]), 0, 2)
    assert not first.committed and first.num_shards_registered == 1
    # Not readable half-way: neither the manifest nor a plan.
    assert (
        await code_of(client.get_manifest(pb.GetManifestRequest(model=MODEL, version=1))) == grpc.StatusCode.NOT_FOUND
    )
    second = await publish(client, "rank1", shard(1, ["c"]), 1, 2)
    assert second.committed and second.num_shards_registered == 2 and second.root_hash
    manifest = (await client.get_manifest(pb.GetManifestRequest(model=MODEL))).manifest
    assert manifest.version == 1 and [t.name for t in manifest.tensors] == ["a", "b", "c"]
    assert [c.index for c in manifest.chunks] == list(range(6)) and manifest.root_hash == second.root_hash
    # A retry of a request id gets the first answer.
    again = await publish(client, "rank0", shard(1, ["a", "b"]), 0, 2)
    assert again.committed is False and again.num_shards_registered == 1

    await register(client, "reader", host="h1")
    plan = await client.get_plan(pb.GetPlanRequest(request_id="p1", reader_id="reader", model=MODEL))
    by_holder = {r.holder_id: list(r.chunk_indices) for r in plan.reads}
    assert by_holder == {"rank0": [0, 1, 2, 3], "rank1": [4, 5]}
    assert plan.planned_size_bytes == 6 * 16
    # A retried plan is the same plan and takes no further read leases.
    assert await client.get_plan(pb.GetPlanRequest(request_id="p1", reader_id="reader", model=MODEL)) == plan
    beat = await client.heartbeat(pb.HeartbeatRequest(holder_id="rank0"))
    assert [(h.version, h.num_active_reads) for h in beat.held_versions] == [(1, 1)]
    await client.report_held(
        pb.ReportHeldRequest(
            request_id="h1", holder_id="reader", model=MODEL, version=1, held=True, root_hash=manifest.root_hash
        )
    )
    beat = await client.heartbeat(pb.HeartbeatRequest(holder_id="rank0"))
    assert [(h.version, h.num_active_reads) for h in beat.held_versions] == [(1, 0)]
    listed = (await client.list_versions(pb.ListVersionsRequest(model=MODEL))).versions
    assert [(v.version, v.num_holders, v.num_chunks) for v in listed] == [(1, 3, 6)]


async def test_versions_only_go_up_and_bad_input_gets_a_clear_status(client: WeightHubClient) -> None:
    await register(client, "rank0")
    assert (await publish(client, "rank0", shard(5, ["a"]))).committed
    lower = await code_of(publish(client, "rank0", shard(4, ["a"])))
    assert lower == grpc.StatusCode.FAILED_PRECONDITION
    equal_other = await code_of(publish(client, "rank0", shard(5, ["a"], salt="other")))
    assert equal_other == grpc.StatusCode.FAILED_PRECONDITION
    bad = shard(6, ["a"])
    bad.tensors[0].size_bytes = 31
    with pytest.raises(RPCError) as info:
        await publish(client, "rank0", bad)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "says 31 bytes" in info.value.details
    bad_root = shard(6, ["a"])
    bad_root.root_hash = "f" * 32
    assert await code_of(publish(client, "rank0", bad_root)) == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing was committed by the refused requests.
    assert (await client.get_manifest(pb.GetManifestRequest(model=MODEL))).manifest.version == 5
    assert await code_of(client.get_manifest(pb.GetManifestRequest(model="nope"))) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(client.get_manifest(pb.GetManifestRequest(model=MODEL, version=9)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    plan_unregistered = client.get_plan(pb.GetPlanRequest(request_id="x", reader_id="ghost", model=MODEL))
    assert await code_of(plan_unregistered) == grpc.StatusCode.FAILED_PRECONDITION
    await register(client, "reader", host="h1")
    uncommitted = client.get_plan(pb.GetPlanRequest(request_id="y", reader_id="reader", model=MODEL, version=6))
    assert await code_of(uncommitted) == grpc.StatusCode.FAILED_PRECONDITION
    wrong_root = client.report_held(
        pb.ReportHeldRequest(request_id="z", holder_id="reader", model=MODEL, version=5, held=True, root_hash="0" * 32)
    )
    assert await code_of(wrong_root) == grpc.StatusCode.INVALID_ARGUMENT
    unpublished_holder = publish(client, "ghost", shard(7, ["a"]))
    assert await code_of(unpublished_holder) == grpc.StatusCode.FAILED_PRECONDITION
    # A shard that overlaps another shard's tensors is refused; the pending shard is untouched.
    assert not (await publish(client, "rank0", shard(8, ["a"]), 0, 2)).committed
    await register(client, "rank1")
    assert await code_of(publish(client, "rank1", shard(8, ["a"]), 1, 2)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await code_of(publish(client, "rank0", shard(8, ["b"]), 1, 2)) == grpc.StatusCode.INVALID_ARGUMENT
    assert (await publish(client, "rank1", shard(8, ["b"]), 1, 2)).committed


async def test_keep_last_n_retention_with_pins(client: WeightHubClient) -> None:
    await register(client, "rank0")
    for version in (1, 2):
        await publish(client, "rank0", shard(version, ["a"]))
    await client.pin(pb.PinRequest(request_id="pin", model=MODEL, version=1, owner="eval"))
    for version in (3, 4):
        await publish(client, "rank0", shard(version, ["a"]))
    listed = (await client.list_versions(pb.ListVersionsRequest(model=MODEL))).versions
    assert [(v.version, v.pinned) for v in listed] == [(1, True), (3, False), (4, False)]
    beat = await client.heartbeat(pb.HeartbeatRequest(holder_id="rank0"))
    assert {h.version: h.retired for h in beat.held_versions} == {1: False, 2: True, 3: False, 4: False}
    await client.unpin(pb.UnpinRequest(request_id="unpin", model=MODEL, version=1, owner="eval"))
    listed = (await client.list_versions(pb.ListVersionsRequest(model=MODEL))).versions
    assert [v.version for v in listed] == [3, 4]
    # Once its holder frees a retired version, it is gone for good.
    await client.report_held(
        pb.ReportHeldRequest(request_id="free2", holder_id="rank0", model=MODEL, version=2, held=False)
    )
    assert (
        await code_of(client.get_manifest(pb.GetManifestRequest(model=MODEL, version=2))) == grpc.StatusCode.NOT_FOUND
    )
    assert (
        await code_of(client.pin(pb.PinRequest(request_id="pin9", model=MODEL, version=9, owner="eval")))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_a_holder_whose_lease_lapses_is_removed(client: WeightHubClient) -> None:
    await register(client, "rank0", lease_ttl_s=0.3)
    await publish(client, "rank0", shard(1, ["a"]))

    async def gone() -> bool:
        return not (await client.list_versions(pb.ListVersionsRequest(model=MODEL))).versions

    await assert_eventually(gone, timeout_s=5)
    assert await code_of(client.heartbeat(pb.HeartbeatRequest(holder_id="rank0"))) == grpc.StatusCode.NOT_FOUND


async def test_watch_streams_the_latest_then_each_commit(client: WeightHubClient) -> None:
    await register(client, "rank0")
    await publish(client, "rank0", shard(1, ["a"]))
    await publish(client, "rank0", shard(2, ["a"]))
    stream = client.watch_versions(pb.WatchVersionsRequest(model=MODEL), timeout_s=20)
    first = await anext(stream)
    assert first.version_info.version == 2 and first.version_info.num_holders == 1
    await publish(client, "rank0", shard(3, ["a"]))
    assert (await anext(stream)).version_info.version == 3
    await stream.aclose()


async def test_watch_can_carry_each_versions_manifest(client: WeightHubClient) -> None:
    await register(client, "rank0")
    await publish(client, "rank0", shard(1, ["a", "b"]))
    stream = client.watch_versions(pb.WatchVersionsRequest(model=MODEL, include_manifest=True), timeout_s=20)
    first = await anext(stream)
    await stream.aclose()
    committed = (await client.get_manifest(pb.GetManifestRequest(model=MODEL, version=1))).manifest
    assert first.manifest == committed and first.manifest.version == 1
    plain = client.watch_versions(pb.WatchVersionsRequest(model=MODEL), timeout_s=20)
    assert not (await anext(plain)).HasField("manifest")
    await plain.aclose()


async def test_a_hub_restart_loses_nothing(redis_url: str) -> None:
    server, address = await start_hub(redis_url)
    try:
        async with WeightHubClient(address) as client:
            await register(client, "rank0")
            await register(client, "rank1")
            await register(client, "reader", host="h1")
            await publish(client, "rank0", shard(1, ["a"]), 0, 2)
    finally:
        await server.stop(0)
    server, address = await start_hub(redis_url)
    try:
        async with WeightHubClient(address) as client:
            # The pending shard survived: the second shard commits the version.
            assert (await publish(client, "rank1", shard(1, ["b"]), 1, 2)).committed
            plan = await client.get_plan(pb.GetPlanRequest(request_id="p", reader_id="reader", model=MODEL))
            assert plan.version == 1 and sum(len(r.chunk_indices) for r in plan.reads) == 4
            assert (
                await code_of(publish(client, "rank0", shard(1, ["a"], salt="x")))
                == grpc.StatusCode.FAILED_PRECONDITION
            )
    finally:
        await server.stop(0)
