"""The data plane over gRPC with Redis: plans, balanced batches, exact restore, loader failover."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import grpc
import pytest
from seedstack.dataplane.v1 import dataplane_pb2 as pb

from clients.base import RPCError
from clients.dataplane import DataPlaneClient, SyncBatches
from services.dataplane.config import DataPlaneConfig
from services.dataplane.server import create_server
from tests.integration.dataplane.conftest import spec_yaml


async def submit(client: DataPlaneClient, text: str, request_id: str = "r1") -> str:
    response = await client.submit_plan(pb.SubmitPlanRequest(request_id=request_id, mixture_yaml=text))
    return response.plan_id


async def global_batch(client: DataPlaneClient, plan_id: str, step: int, num_ranks: int) -> list[str]:
    """Every rank's share of ``step``, as sorted sample ids (the global batch, independent of ranks)."""
    ids: list[str] = []
    for rank in range(num_ranks):
        reply = await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=rank, step=step))
        assert reply.step == step and reply.rank == rank and reply.num_ranks == num_ranks
        ids += [f"{s.metadata['source']}:{s.metadata['seq']}:{s.prompt_id}" for s in reply.samples]
    return sorted(ids)


def digest(batches: list[list[str]]) -> str:
    return hashlib.sha256(repr(batches).encode()).hexdigest()


async def test_batches_cover_the_global_batch_balanced_and_repeatable(client: DataPlaneClient, corpus: dict) -> None:
    plan_id = await submit(client, spec_yaml(corpus))
    for step in range(8):
        shares = [await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=r, step=step)) for r in range(4)]
        assert sum(len(s.samples) for s in shares) == 24
        costs = [s.cost for s in shares]
        assert max(costs) / (sum(costs) / 4) < 1.25, costs
        again = await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=2, step=step))
        assert again == shares[2]
        for share in shares:
            assert share.num_tokens == sum(len(s.prompt_token_ids) + len(s.completion_token_ids) for s in share.samples)
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    by_name = {s.name: s for s in stats.sources}
    # Records that do not parse are skipped, counted and explained, never fatal.
    assert by_name["short"].num_records_skipped >= 1
    assert "part-1.jsonl:" in by_name["short"].last_skip_reason
    assert "not JSON" in by_name["short"].last_skip_reason
    # After the curriculum change at step 6 the declared shares are 1:1:3.
    assert by_name["arith"].declared_share == pytest.approx(0.6)
    assert by_name["arith"].realized_share == pytest.approx(0.6, abs=0.05)
    assert stats.last_cost_imbalance < 1.25


async def test_same_seed_and_spec_give_the_same_stream(client: DataPlaneClient, corpus: dict) -> None:
    a = await submit(client, spec_yaml(corpus), "a")
    b = await submit(client, spec_yaml(corpus), "b")
    assert a != b
    assert [await global_batch(client, a, s, 4) for s in range(4)] == [
        await global_batch(client, b, s, 4) for s in range(4)
    ]
    # A retried SubmitPlan (same request id) returns the same plan.
    assert await submit(client, spec_yaml(corpus), "a") == a


async def test_restore_is_exact_across_mixture_change_and_rank_counts(client: DataPlaneClient, corpus: dict) -> None:
    plan_id = await submit(client, spec_yaml(corpus))
    reference = [await global_batch(client, plan_id, s, 4) for s in range(12)]
    saved = await client.checkpoint(pb.CheckpointRequest(request_id="c4", plan_id=plan_id, step=4))
    assert saved.step == 4 and saved.size_bytes > 0
    for request_id, step, ranks in (("x1", 4, 2), ("x2", 5, 8), ("x3", 2, 0)):
        restored = await client.restore(
            pb.RestoreRequest(request_id=request_id, plan_id=plan_id, step=step, num_ranks=ranks)
        )
        num_ranks = restored.num_ranks
        assert restored.step == step and num_ranks == (ranks or 8)
        again = [await global_batch(client, plan_id, s, num_ranks) for s in range(step, 12)]
        assert digest(again) == digest(reference[step:])
    with pytest.raises(RPCError) as err:
        await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=1))
    assert err.value.code == grpc.StatusCode.OUT_OF_RANGE and "restore point" in err.value.details


async def test_bad_rank_and_step_are_out_of_range(client: DataPlaneClient, corpus: dict) -> None:
    plan_id = await submit(client, spec_yaml(corpus))
    for rank, step in ((4, 0), (0, -1), (0, 10_000)):
        with pytest.raises(RPCError) as err:
            await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=rank, step=step))
        assert err.value.code == grpc.StatusCode.OUT_OF_RANGE
    with pytest.raises(RPCError) as err:
        await client.next_batch(pb.NextBatchRequest(plan_id="nope", rank=0, step=0))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(RPCError) as err:
        await client.next_prompts(
            pb.NextPromptsRequest(request_id="p", plan_id=plan_id, consumer_id="x", num_prompts=1)
        )
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("mutation", "needle"),
    [
        (lambda t: t.replace("weight: 2", "weight: -1"), "sources[0].weight=-1: must be >= 0"),
        (lambda t: t.replace("start_step: 6", "start_step: -3"), "schedule[0].start_step"),
        (lambda t: t.replace("long.parquet", "missing.parquet"), "no such file"),
        (lambda t: t.replace("format: jsonl", "format: csv"), "sources[0].format"),
        (lambda t: t.replace("global_batch_size: 24", "global_batch_size: 0"), "global_batch_size"),
        (lambda t: t.replace("{short: 1, arith: 3}", "{nosuch: 1}"), "unknown source"),
        (lambda t: t + "sources: [\n", "not valid YAML"),
        (lambda t: t + "colour: blue\n", "unknown field(s) ['colour']"),
    ],
)
async def test_bad_specs_are_refused_naming_the_field(client: DataPlaneClient, corpus: dict, mutation, needle) -> None:
    with pytest.raises(RPCError) as err:
        await submit(client, mutation(spec_yaml(corpus)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details


async def test_schedule_out_of_order_and_proto_spec(client: DataPlaneClient, corpus: dict) -> None:
    spec = pb.MixtureSpec(
        sources=[pb.SourceSpec(name="a", format=pb.SOURCE_FORMAT_GENERATED, generator="arithmetic", weight=1)],
        schedule=[pb.MixtureChange(start_step=5, weights={"a": 2}), pb.MixtureChange(start_step=3, weights={"a": 1})],
        global_batch_size=8,
        num_ranks=2,
    )
    with pytest.raises(RPCError) as err:
        await client.submit_plan(pb.SubmitPlanRequest(request_id="bad", mixture=spec))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "schedule[1].start_step=3" in err.value.details
    del spec.schedule[1]
    reply = await client.submit_plan(pb.SubmitPlanRequest(request_id="good", mixture=spec))
    assert reply.resolved_mixture.tokenizer == "char" and reply.resolved_mixture.balance.lookahead_batches == 4
    batch = await client.next_batch(pb.NextBatchRequest(plan_id=reply.plan_id, rank=1, step=0))
    assert batch.samples and batch.samples[0].prompt_id.startswith("a/gen:")


async def test_killed_loader_is_replaced_without_loss_or_repeat(client: DataPlaneClient, corpus: dict) -> None:
    plan_id = await submit(client, spec_yaml(corpus), "victim")
    reference_id = await submit(client, spec_yaml(corpus), "reference")
    got = [await global_batch(client, plan_id, s, 4) for s in range(3)]
    runtime = _runtime(client, plan_id)
    victim = runtime.pool.workers[0][0].pid
    os.kill(victim, signal.SIGKILL)
    got += [await global_batch(client, plan_id, s, 4) for s in range(3, 12)]
    expected = [await global_batch(client, reference_id, s, 4) for s in range(12)]
    assert got == expected
    assert runtime.pool.num_replaced >= 1 and victim not in runtime.pool.pids()


def _runtime(client: DataPlaneClient, plan_id: str):
    """The live plan inside the in-process server (tests reach in to find a loader pid to kill)."""
    from services.dataplane.core import DataPlane

    for obj in _servers:
        core: DataPlane = obj
        if plan_id in core.plans:
            return core.plans[plan_id]
    raise AssertionError("plan not found in this process")


_servers: list = []


@pytest.fixture(autouse=True)
def _track_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.dataplane import core

    original = core.DataPlane.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        _servers.append(self)

    monkeypatch.setattr(core.DataPlane, "__init__", init)
    _servers.clear()


async def test_restarted_service_resumes_from_redis(config: DataPlaneConfig, corpus: dict) -> None:
    server = await create_server(config)
    await server.server.start()
    async with DataPlaneClient(f"127.0.0.1:{server.port}") as client:
        plan_id = await submit(client, spec_yaml(corpus))
        reference = [await global_batch(client, plan_id, s, 4) for s in range(10)]
        await client.checkpoint(pb.CheckpointRequest(request_id="c", plan_id=plan_id, step=7))
    await server.stop(0.5)
    server = await create_server(config)
    await server.server.start()
    try:
        async with DataPlaneClient(f"127.0.0.1:{server.port}") as client:
            # The automatic checkpoint (every 6 steps) is later than step 7: the plan resumes there.
            stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
            resumed = stats.next_step
            assert resumed >= 7
            assert [await global_batch(client, plan_id, s, 4) for s in range(resumed, 10)] == reference[resumed:]
            await client.close_plan(pb.ClosePlanRequest(request_id="close", plan_id=plan_id))
            with pytest.raises(RPCError) as err:
                await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=resumed))
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await server.stop(0.5)


async def test_client_iterators_prefetch(client: DataPlaneClient, corpus: dict) -> None:
    plan_id = await submit(client, spec_yaml(corpus))
    steps = [b.step async for b in client.batches(plan_id, 1, start_step=2, num_steps=5, prefetch=3)]
    assert steps == [2, 3, 4, 5, 6]
    sync = SyncBatches(client.address, plan_id, 0, num_steps=3)
    try:
        # A plain loop, as a non-asyncio training loop runs it (in a thread: the server shares this loop).
        assert await asyncio.to_thread(lambda: [b.step for b in sync]) == [0, 1, 2]
    finally:
        await asyncio.to_thread(sync.close)


async def test_expensive_sources_get_more_loader_workers(client: DataPlaneClient) -> None:
    text = """
sources:
  - {name: cheap, format: generated, generator: arithmetic}
  - name: costly
    format: generated
    generator: synthetic
    generator_options: {busy_us_per_token: "40", max_tokens: "300"}
global_batch_size: 16
num_ranks: 2
"""
    plan_id = await submit(client, text)
    batches = [await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=s)) for s in range(3)]
    assert all(b.samples for b in batches)
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    workers = {s.name: s.num_loader_workers for s in stats.sources}
    assert workers["cheap"] == 1 and workers["costly"] == 3  # the plan's budget is 4 workers
    costs = {s.name: s.preprocess_s_per_record for s in stats.sources}
    assert costs["costly"] > 10 * costs["cheap"]
