"""Synchronous RL on two ranks: a rank refused prompts does not send both ranks to wait for a batch
that nobody is making (real data plane; the ranks are two threads of this process)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import torch
from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as dp

from clients.dataplane import DataPlaneClient
from services.dataplane.config import DataPlaneConfig
from services.dataplane.server import create_server as create_dataplane
from services.trainer.engine import Comm, Engine, TrainSample
from services.trainer.remote import DataPlaneFeed
from services.trainer.spec import RunSpec
from tests.integration.trainer.conftest import TINY_MODEL
from tests.integration.trainer.test_wiring import PLAN as WIRING_PLAN

# test_wiring's plan on 2 ranks: a batch is 4 groups of 4; the buffer holds one batch and one group, as
# the main job sizes it.
PLAN = (
    WIRING_PLAN.replace("num_ranks: 1", "num_ranks: 2")
    .replace("max_staleness_versions: 2", "max_staleness_versions: 1")
    .replace("dynamic_sampling: false", "dynamic_sampling: true")
    .replace("max_buffered_samples: 64", "max_buffered_samples: 20")
)


class ThreadComm(Comm):
    """The collectives of ``world`` ranks that are threads of one process (torch.distributed's sums,
    broadcasts and gathers over a barrier), so that two ranks' feeds can run against one data plane."""

    def __init__(self, rank: int, shared: dict[str, Any]) -> None:
        super().__init__(rank, shared["world"])
        self._shared = shared

    def _exchange(self, value: Any) -> list[Any]:
        barrier: threading.Barrier = self._shared["barrier"]
        self._shared["slots"][self.rank] = value
        barrier.wait(timeout=60)
        values = list(self._shared["slots"])
        barrier.wait(timeout=60)
        return values

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor.copy_(torch.stack(self._exchange(tensor.clone())).sum(0))
        return tensor

    def broadcast_flags(self, flags: Sequence[int]) -> list[int]:
        return [int(x) for x in self._exchange(list(flags))[0]]

    def gather_objects(self, obj: Any) -> list[Any]:
        return self._exchange(obj)

    def barrier(self) -> None:
        self._exchange(None)


def scripted_rewards(engine: Engine, rounds: list[int]) -> None:
    """The ranks' own generation, with rewards set by round: the first round generated (over both
    ranks) scores every answer alike, so dynamic sampling drops its groups; later rounds score half."""
    generate = engine.generate_groups

    def generate_groups(*args: Any, **kwargs: Any) -> list[TrainSample]:
        samples = generate(*args, **kwargs)
        rounds.append(len(rounds))
        for i, s in enumerate(samples):
            s.reward = 0.0 if len(rounds) == 1 else float(i % 2)
        return samples

    engine.generate_groups = generate_groups  # type: ignore[method-assign]


async def test_a_rank_refused_prompts_keeps_filling_instead_of_waiting_out_next_batch(redis_url: str) -> None:
    dataplane = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await dataplane.server.start()
    address = f"127.0.0.1:{dataplane.port}"
    try:
        async with DataPlaneClient(address) as client:
            plan_id = (await client.submit_plan(dp.SubmitPlanRequest(request_id="f", mixture_yaml=PLAN))).plan_id
            # Three groups with a signal are already in (12 of the 20 samples): room for two more groups,
            # so of the two ranks asking for two prompts each, one is refused.
            drawn = await client.next_prompts(
                dp.NextPromptsRequest(request_id="pre", plan_id=plan_id, consumer_id="pre", num_prompts=3)
            )
            samples = [
                common_pb2.Sample(
                    prompt_id=p.prompt_id,
                    group_id=p.group_id,
                    sample_index=i,
                    prompt_token_ids=list(p.token_ids),
                    completion_token_ids=[ord("7"), 10],
                    behaviour_logprobs=[-1.0, -1.0],
                    version_spans=[common_pb2.VersionSpan(start_index=0, end_index=2, weight_version=1)],
                    completion_text="7\n",
                    reward=float(i % 2),
                    finished=True,
                )
                for p in drawn.prompts
                for i in range(4)
            ]
            await client.put_sample_list(plan_id, "pre", samples)
            spec = RunSpec.from_dict(
                {
                    "algorithm": "dapo",
                    "model": {"config_json": TINY_MODEL},
                    "num_ranks": 2,
                    "warm_start": {"num_steps": 0},
                    "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4, "colocated": True},
                    "dataplane_plan_id": plan_id,
                    "dataplane_address": address,
                }
            )
            shared: dict[str, Any] = {"world": 2, "barrier": threading.Barrier(2), "slots": [None, None]}
            rounds: list[int] = []

            def rank(r: int) -> tuple[int, int]:
                feed = DataPlaneFeed(address, plan_id, r, colocated=True)
                try:
                    engine = Engine(spec, comm=ThreadComm(r, shared), feed=feed)
                    scripted_rewards(engine, rounds)
                    got = feed.collect(engine, 0)
                    return len(got), feed.batch_timeouts
                finally:
                    feed.close()

            results = await asyncio.gather(*(asyncio.to_thread(rank, r) for r in (0, 1)))
            # Each rank got its half of the batch without one NextBatch running out its deadline: the
            # round whose groups were all dropped was followed by another round, not by a wait.
            assert results == [(8, 0), (8, 0)]
            assert len(rounds) >= 2
            stats = await client.stats(dp.StatsRequest(plan_id=plan_id))
            assert stats.num_samples_served == 16
    finally:
        await dataplane.stop(0.2)
