"""A rank trains on data-plane batches and publishes every version through the weight hub's Publisher."""

from __future__ import annotations

import asyncio

import torch
from seedstack.dataplane.v1 import dataplane_pb2 as dp

from clients.dataplane import DataPlaneClient
from clients.weighthub import Reader
from services.dataplane.config import DataPlaneConfig
from services.dataplane.server import create_server as create_dataplane
from services.trainer.engine import Engine
from services.trainer.remote import connect_feed, connect_sink
from services.trainer.spec import RunSpec
from services.weighthub.config import WeightHubConfig
from services.weighthub.server import create_server as create_hub
from tests.integration.trainer.conftest import TINY_MODEL

PLAN = """
sources:
  - name: arith
    format: generated
    generator: arithmetic
    generator_options: {num_terms: "2", max_value: "9"}
    preprocessing: {reference_field: answer, verifier: arithmetic}
global_batch_size: 16
num_ranks: 1
tokenizer: char
rl: {group_size: 4, max_staleness_versions: 2, dynamic_sampling: false, max_buffered_samples: 64}
"""


async def test_training_on_data_plane_batches_publishes_each_version(redis_url: str) -> None:
    dataplane = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    hub = await create_hub(WeightHubConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await dataplane.server.start()
    await hub.server.start()
    dp_address, hub_address = f"127.0.0.1:{dataplane.port}", f"127.0.0.1:{hub.port}"
    try:
        async with DataPlaneClient(dp_address) as client:
            plan_id = (await client.submit_plan(dp.SubmitPlanRequest(request_id="p", mixture_yaml=PLAN))).plan_id
            spec = RunSpec.from_dict(
                {
                    "algorithm": "grpo",
                    "model": {"config_json": TINY_MODEL},
                    "num_steps": 2,
                    "task": {"num_eval": 8},
                    "warm_start": {"num_steps": 20, "batch_size": 16},
                    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
                    "dataplane_plan_id": plan_id,
                    "dataplane_address": dp_address,
                    "weighthub_model": "policy",
                    "weighthub_address": hub_address,
                    "publish_bind_host": "127.0.0.1",
                }
            )

            def train() -> tuple[Engine, list[dict[str, float]]]:
                sink, feed = connect_sink(spec, 0, 1), connect_feed(spec, 0)
                engine = Engine(spec, sink=sink, feed=feed)
                steps: list[dict[str, float]] = []
                try:
                    engine.run(on_step=lambda step, metrics: steps.append(metrics))
                    # A reader fetches the last version while the publisher still serves it.
                    fetched = asyncio.run_coroutine_threadsafe(fetch(hub_address), loop).result(60)
                    for name, tensor in engine.model.state_dict().items():
                        assert torch.equal(fetched[name], tensor), name
                finally:
                    assert sink is not None and feed is not None
                    sink.close()
                    feed.close()
                return engine, steps

            loop = asyncio.get_running_loop()
            engine, steps = await asyncio.to_thread(train)
            assert engine.step == 2 and engine.version == 3
            assert len(steps) == 2 and all(m["num_samples"] > 0 and m["publish_s"] > 0 for m in steps)
            stats = await client.stats(dp.StatsRequest(plan_id=plan_id))
            assert stats.num_samples_served == sum(m["num_samples"] for m in steps)
            assert stats.buffer.policy_version >= 2
    finally:
        await dataplane.stop(0.2)
        await hub.stop(0.2)


async def fetch(hub_address: str) -> dict[str, torch.Tensor]:
    async with Reader(hub_address, model="policy", transport_bind_host="127.0.0.1") as reader:
        version = await reader.latest_version()
        assert version == 3
        return {k: v.clone() for k, v in (await reader.fetch(version)).items()}


async def test_a_skipped_step_draws_its_batch_from_the_data_plane_and_drops_it(redis_url: str) -> None:
    dataplane = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await dataplane.server.start()
    dp_address = f"127.0.0.1:{dataplane.port}"
    try:
        async with DataPlaneClient(dp_address) as client:
            plan_id = (await client.submit_plan(dp.SubmitPlanRequest(request_id="s", mixture_yaml=PLAN))).plan_id
            spec = RunSpec.from_dict(
                {
                    "algorithm": "grpo",
                    "model": {"config_json": TINY_MODEL},
                    "num_steps": 3,
                    "task": {"num_eval": 8},
                    "warm_start": {"num_steps": 0},
                    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
                    "checkpoint": {"skip_data_until_step": 2},
                    "dataplane_plan_id": plan_id,
                    "dataplane_address": dp_address,
                }
            )

            def train() -> tuple[Engine, dict[int, dict[str, float]], list[int]]:
                feed = connect_feed(spec, 0)
                engine = Engine(spec, feed=feed)
                trained: dict[int, dict[str, float]] = {}
                skipped: list[int] = []
                try:
                    engine.run(on_step=trained.__setitem__, on_skipped_step=skipped.append)
                finally:
                    assert feed is not None
                    feed.close()
                return engine, trained, skipped

            engine, trained, skipped = await asyncio.to_thread(train)
            assert skipped == [1] and sorted(trained) == [2, 3]
            assert engine.step == 3 and engine.version == 3  # the initial weights, then one per trained step
            # The plan served the dropped batch too: its cursor moved past it.
            stats = await client.stats(dp.StatsRequest(plan_id=plan_id))
            assert stats.num_samples_served > sum(m["num_samples"] for m in trained.values())
    finally:
        await dataplane.stop(0.2)


async def test_colocated_ranks_fill_each_batch_with_their_own_fresh_groups(redis_url: str) -> None:
    """Synchronous RL (``rollout.colocated``): the rank generates rounds with the policy it trains until
    the groups dynamic sampling keeps fill the batch, then trains on it: full batches, on-policy but for
    the groups the last fill round made beyond the batch (one version old at the next step)."""
    dataplane = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await dataplane.server.start()
    dp_address = f"127.0.0.1:{dataplane.port}"
    plan_yaml = PLAN.replace("dynamic_sampling: false", "dynamic_sampling: true")
    try:
        async with DataPlaneClient(dp_address) as client:
            plan_id = (await client.submit_plan(dp.SubmitPlanRequest(request_id="c", mixture_yaml=plan_yaml))).plan_id
            spec = RunSpec.from_dict(
                {
                    "algorithm": "dapo",
                    "model": {"config_json": TINY_MODEL},
                    "num_steps": 3,
                    "task": {"num_eval": 8},
                    "warm_start": {"num_steps": 20, "batch_size": 16},
                    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4, "colocated": True},
                    "dataplane_plan_id": plan_id,
                    "dataplane_address": dp_address,
                }
            )

            def train() -> dict[int, dict[str, float]]:
                feed = connect_feed(spec, 0)
                engine = Engine(spec, feed=feed)
                trained: dict[int, dict[str, float]] = {}
                try:
                    engine.run(on_step=trained.__setitem__)
                finally:
                    assert feed is not None
                    feed.close()
                return trained

            trained = await asyncio.to_thread(train)
            assert sorted(trained) == [1, 2, 3]
            for step, metrics in trained.items():
                assert metrics["num_samples"] == 16, (step, metrics)
                assert metrics["staleness_0"] + metrics["staleness_1"] == 16, (step, metrics)
            assert trained[1]["staleness_0"] == 16  # the first batch is all from the policy it trains
            stats = await client.stats(dp.StatsRequest(plan_id=plan_id))
            # Uniform groups were dropped and made up for by more rounds, not by a failed batch.
            assert stats.num_samples_served == 3 * 16
    finally:
        await dataplane.stop(0.2)
