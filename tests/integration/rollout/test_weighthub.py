"""With the real weight hub: the served version follows publishes without stopping, a bad version is
rejected and reported, and the worker loop pushes scored samples to the real data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as dp
from seedstack.rollout.v1 import rollout_pb2 as pb

import clients.weighthub as weighthub_client
from clients.base import RPCError
from clients.rollout import RolloutClient
from services.common.redis_meta import ServiceRegistry
from services.common.server import GrpcServer
from services.rollout.model import build_model
from tests.integration.rollout.conftest import SMALL_MODEL, Stack, register, rollout_config
from tests.support import assert_eventually

pytestmark = pytest.mark.skipif(
    not hasattr(weighthub_client, "Reader"), reason="weight hub Reader not landed (issue #3)"
)


def version_tensors(scale: float) -> dict[str, torch.Tensor]:
    """The rollout server's architecture with weights of its own (what a trainer would publish)."""
    model = build_model(SMALL_MODEL, seed=int(scale * 100))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
async def hub(redis_url: str, registry: ServiceRegistry) -> AsyncIterator[str]:
    from services.weighthub.config import WeightHubConfig
    from services.weighthub.server import create_server

    server = await create_server(WeightHubConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await server.server.start()
    await register(registry, "weighthub", server.port)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0.2)


@pytest.fixture
async def publisher(hub: str) -> AsyncIterator[weighthub_client.Publisher]:
    async with weighthub_client.Publisher(hub, model="policy", transport_bind_host="127.0.0.1", lease_ttl_s=2.0) as pub:
        yield pub


@pytest.fixture
async def following(
    redis_url: str, hub: str, dataplane_server: GrpcServer, registry: ServiceRegistry
) -> AsyncIterator[Stack]:
    """A rollout server that follows weight-hub model "policy" from its start."""
    from clients.dataplane import DataPlaneClient
    from services.rollout.server import create_server

    await register(registry, "dataplane", dataplane_server.port)
    server = await create_server(rollout_config(redis_url, weighthub_model="policy"))
    await server.server.start()
    async with (
        RolloutClient(f"127.0.0.1:{server.port}") as rollout,
        DataPlaneClient(f"127.0.0.1:{dataplane_server.port}") as dataplane,
    ):
        yield Stack(rollout, server, dataplane, registry)
    await server.stop(0.2)


async def served(stack: Stack, version: int) -> pb.StatsResponse | None:
    stats = await stack.rollout.stats(pb.StatsRequest())
    return stats if stats.served_version == version else None


async def greedy_sample(stack: Stack) -> common_pb2.Sample:
    request = pb.GenerateRequest(
        prompts=[common_pb2.Prompt(prompt_id="q", text="Compute 2 + 2.")],
        sampling=pb.SamplingParams(temperature=0, max_new_tokens=12),
    )
    return [r.sample async for r in stack.rollout.generate(request)][0]  # noqa: RUF015 - an async generator


async def test_served_version_follows_each_publish(following: Stack, publisher: weighthub_client.Publisher) -> None:
    before = await greedy_sample(following)
    await publisher.publish(1, version_tensors(0.1))
    stats = await assert_eventually(lambda: served(following, 1), timeout_s=60)
    assert stats.weighthub_model == "policy" and stats.num_weight_swaps == 1
    first = await greedy_sample(following)
    assert [s.weight_version for s in first.version_spans] == [1]
    assert list(first.behaviour_logprobs) != list(before.behaviour_logprobs)  # other weights, other policy
    await publisher.publish(2, version_tensors(0.2))
    stats = await assert_eventually(lambda: served(following, 2), timeout_s=60)
    assert stats.num_weight_swaps == 2 and stats.last_swap_stall_s < 0.5
    assert [s.weight_version for s in (await greedy_sample(following)).version_spans] == [2]


async def test_update_weights_rpc_and_a_version_that_does_not_fit(
    stack: Stack, hub: str, publisher: weighthub_client.Publisher
) -> None:
    await publisher.publish(1, version_tensors(0.3))
    reply = await stack.rollout.update_weights(pb.UpdateWeightsRequest(request_id="u1", weighthub_model="policy"))
    assert reply.served_version == 1 and reply.fetch_s > 0
    wrong = version_tensors(0.4)
    wrong["model.norm.weight"] = torch.ones(7)
    await publisher.publish(2, wrong)
    with pytest.raises(RPCError) as err:
        await stack.rollout.update_weights(pb.UpdateWeightsRequest(request_id="u2", version=2))
    assert err.value.code == grpc.StatusCode.DATA_LOSS and "model.norm.weight" in err.value.details
    stats = await stack.rollout.stats(pb.StatsRequest())
    assert (
        stats.served_version == 1
        and stats.last_rejected_version == 2
        and "model.norm.weight" in stats.last_rejected_reason
    )
    assert [s.weight_version for s in (await greedy_sample(stack)).version_spans] == [1]


RL_SPEC = """
sources:
  - name: arith
    format: generated
    generator: arithmetic
    generator_options: {num_terms: "2", max_value: "9"}
    preprocessing: {reference_field: answer, verifier: arithmetic}
global_batch_size: 8
num_ranks: 1
rl: {group_size: 4, max_staleness_versions: 4, dynamic_sampling: false, max_buffered_samples: 64}
"""


async def test_worker_loop_pulls_prompts_and_pushes_scored_samples(
    following: Stack, publisher: weighthub_client.Publisher
) -> None:
    stack = following
    plan_id = (await stack.dataplane.submit_plan(dp.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    await publisher.publish(1, version_tensors(0.5))
    await assert_eventually(lambda: served(stack, 1), timeout_s=60)
    start = pb.StartRolloutRequest(
        request_id="start-1",
        dataplane_plan_id=plan_id,
        sampling=pb.SamplingParams(temperature=1.0, max_new_tokens=24),
        num_prompts_per_round=2,
        completion_ratio=0.5,
        max_staleness_versions=2,
    )
    await stack.rollout.start_rollout(start)
    await stack.rollout.start_rollout(start)  # a retry with the same id is no second loop
    assert (await stack.rollout.stats(pb.StatsRequest())).rollout_running
    # A new version mid-run: later samples carry it, earlier partials keep their spans.
    await publisher.publish(2, version_tensors(0.6))
    batches = [
        await stack.dataplane.next_batch(
            dp.NextBatchRequest(plan_id=plan_id, rank=0, step=step, policy_version=2), timeout_s=60
        )
        for step in range(2)
    ]
    samples = [s for b in batches for s in b.samples]
    assert len(samples) == 16
    for s in samples:
        n = len(s.completion_token_ids)
        assert s.finished and s.HasField("reward") and len(s.behaviour_logprobs) == n > 0
        assert s.version_spans[0].start_index == 0 and s.version_spans[-1].end_index == n
        assert all(a.end_index == b.start_index for a, b in zip(s.version_spans, s.version_spans[1:], strict=False))
        assert {v.weight_version for v in s.version_spans} <= {1, 2}
    with pytest.raises(RPCError) as err:
        await stack.rollout.start_rollout(
            pb.StartRolloutRequest(request_id="start-2", dataplane_plan_id=plan_id, num_prompts_per_round=1)
        )
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    await stack.rollout.stop_rollout(pb.StopRolloutRequest(request_id="stop-1"))
    assert not (await stack.rollout.stats(pb.StatsRequest())).rollout_running


async def traced_rollout(stack: Stack, publisher: weighthub_client.Publisher) -> tuple[set[tuple[int, int]], Any]:
    """Run the worker loop for one batch with an in-memory span exporter; (trace id, span id) of the
    samples' ``traceparent`` values, and the exporter."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # OpenTelemetry allows one provider per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    plan_id = (await stack.dataplane.submit_plan(dp.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    await publisher.publish(1, version_tensors(0.5))
    await assert_eventually(lambda: served(stack, 1), timeout_s=60)
    await stack.rollout.start_rollout(
        pb.StartRolloutRequest(
            request_id="start-trace",
            dataplane_plan_id=plan_id,
            sampling=pb.SamplingParams(temperature=1.0, max_new_tokens=8),
            num_prompts_per_round=2,
            completion_ratio=1.0,
        )
    )
    batch = await stack.dataplane.next_batch(
        dp.NextBatchRequest(plan_id=plan_id, rank=0, step=0, policy_version=1), timeout_s=60
    )
    await stack.rollout.stop_rollout(pb.StopRolloutRequest(request_id="stop-trace"))
    assert len(batch.samples) == 8
    parents = set()
    for s in batch.samples:
        version, trace_id, span_id, flags = s.metadata["traceparent"].split("-")
        assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and int(flags, 16) & 1
        parents.add((int(trace_id, 16), int(span_id, 16)))
    return parents, exporter


def joined(exporter: Any, parents: set[tuple[int, int]], methods: set[str]) -> bool:
    """Whether each parent is a finished ``rollout.round`` span whose trace holds SERVER spans of ``methods``."""
    spans = exporter.get_finished_spans()
    for trace_id, span_id in parents:
        in_trace = [x for x in spans if x.context.trace_id == trace_id]
        names = {x.name.rsplit("/", 1)[-1] for x in in_trace if x.kind == SpanKind.SERVER}
        rounds = [x for x in in_trace if x.name == "rollout.round" and x.context.span_id == span_id]
        if not (rounds and methods <= names):
            return False
    return True


async def test_samples_carry_the_round_span_that_the_data_plane_joins(
    following: Stack, publisher: weighthub_client.Publisher
) -> None:
    parents, exporter = await traced_rollout(following, publisher)
    await assert_eventually(lambda: joined(exporter, parents, {"NextPrompts"}), timeout_s=30)


async def test_put_samples_joins_the_round_span(following: Stack, publisher: weighthub_client.Publisher) -> None:
    parents, exporter = await traced_rollout(following, publisher)
    await assert_eventually(lambda: joined(exporter, parents, {"PutSamples"}), timeout_s=10)
