"""RL mode over gRPC: prompts out, scored samples in, the experience buffer's filters, balanced batches."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as pb

from clients.base import RPCError
from clients.dataplane import DataPlaneClient

GROUP = 4

RL_SPEC = """
sources:
  - name: arith
    format: generated
    generator: arithmetic
    generator_options: {num_terms: "3"}
    preprocessing: {reference_field: answer, verifier: arithmetic}
global_batch_size: 8
num_ranks: 2
rl: {group_size: 4, max_staleness_versions: 1, dynamic_sampling: true, max_buffered_samples: 24}
"""


def scored(prompt: common_pb2.Prompt, index: int, reward: float, version: int = 1, n: int = 5) -> common_pb2.Sample:
    return common_pb2.Sample(
        prompt_id=prompt.prompt_id,
        group_id=prompt.group_id,
        sample_index=index,
        prompt_token_ids=list(prompt.token_ids),
        completion_token_ids=list(range(n)),
        behaviour_logprobs=[-0.5] * n,
        version_spans=[common_pb2.VersionSpan(start_index=0, end_index=n, weight_version=version)],
        completion_text="42",
        reward=reward,
        finished=True,
        finish_reason=common_pb2.FINISH_REASON_STOP,
    )


def drops(reply: pb.PutSamplesResponse) -> dict[str, int]:
    return {pb.DropReason.Name(d.reason): d.num_samples for d in reply.dropped}


async def prompts(client: DataPlaneClient, plan_id: str, n: int, request_id: str) -> list[common_pb2.Prompt]:
    reply = await client.next_prompts(
        pb.NextPromptsRequest(request_id=request_id, plan_id=plan_id, consumer_id="rollout-0", num_prompts=n)
    )
    assert reply.group_size == GROUP
    return list(reply.prompts)


async def test_rl_loop_filters_and_balances(client: DataPlaneClient) -> None:
    plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    first = await prompts(client, plan_id, 3, "p1")
    assert len({p.group_id for p in first}) == 3
    assert all(p.text.startswith("Compute") and p.reference and p.token_ids for p in first)
    assert first[0].verifier == common_pb2.VERIFIER_KIND_ARITHMETIC
    # A retried NextPrompts returns the same prompts.
    assert await prompts(client, plan_id, 3, "p1") == first
    # Buffer room is 24 samples = 6 groups; 3 are out, so at most 3 more, then RESOURCE_EXHAUSTED.
    more = await prompts(client, plan_id, 10, "p2")
    assert len(more) == 3
    with pytest.raises(RPCError) as err:
        await prompts(client, plan_id, 1, "p3")
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    samples = []
    # Group 0: all rewards equal -> dropped by dynamic sampling.
    samples += [scored(first[0], i, 1.0) for i in range(GROUP)]
    # Groups 1 and 2: mixed rewards, long completions in group 2.
    samples += [scored(first[1], i, float(i % 2)) for i in range(GROUP)]
    samples += [scored(first[2], i, float(i == 0), n=40) for i in range(GROUP)]
    # A retried sample and one for a prompt never handed out.
    samples += [scored(first[1], 0, 0.0), scored(common_pb2.Prompt(prompt_id="x", group_id="zzz"), 0, 1.0)]
    # From version 3, while the trainer has reported none (only version 1 can exist yet).
    samples += [scored(more[0], 0, 1.0, version=3)]
    reply = await client.put_sample_list(plan_id, "rollout-0", samples, per_message=5)
    assert reply.num_accepted == 12
    assert drops(reply) == {
        "DROP_REASON_UNIFORM_GROUP": 4,
        "DROP_REASON_DUPLICATE": 1,
        "DROP_REASON_UNKNOWN_PROMPT": 1,
        "DROP_REASON_UNKNOWN_VERSION": 1,
    }
    # The uniform group freed room: NextPrompts backfills instead of failing.
    backfill = await prompts(client, plan_id, 2, "p4")
    assert len(backfill) == 1

    shares = await asyncio.gather(
        *(client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=r, step=0, policy_version=1)) for r in range(2))
    )
    batch = [s for share in shares for s in share.samples]
    assert sorted((s.group_id, s.sample_index) for s in batch) == sorted(
        (p.group_id, i) for p in first[1:] for i in range(GROUP)
    )
    assert abs(shares[0].cost - shares[1].cost) / max(shares[0].cost, shares[1].cost) < 0.2
    for s in batch:
        if s.group_id == first[1].group_id:
            assert float(s.metadata["group_reward_mean"]) == pytest.approx(0.5)
            assert float(s.metadata["group_reward_std"]) == pytest.approx(0.5)
        assert len(s.behaviour_logprobs) == len(s.completion_token_ids)
    # The same (rank, step) gives the same samples.
    assert await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=1, step=0)) == shares[1]

    # Staleness: the trainer is at version 3 now; samples from version 1 are more than eta=1 behind.
    rest = [scored(more[1], i, float(i % 2), version=1) for i in range(GROUP)]
    rest += [scored(more[2], i, float(i % 2), version=2) for i in range(GROUP)]
    await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=0, policy_version=3))
    reply = await client.put_sample_list(plan_id, "rollout-0", rest)
    assert reply.num_accepted == 4 and drops(reply) == {"DROP_REASON_STALE": 4}
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    assert stats.buffer.policy_version == 3 and stats.buffer.num_buffered_samples == 4
    # Too few for step 1 yet: a short deadline ends the wait with DEADLINE_EXCEEDED, nothing lost.
    with pytest.raises(RPCError) as err:
        await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=1), timeout_s=0.5)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await client.stats(pb.StatsRequest(plan_id=plan_id))).buffer.num_buffered_samples == 4


async def test_malformed_samples_are_refused_naming_them(client: DataPlaneClient) -> None:
    plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    (prompt,) = await prompts(client, plan_id, 1, "p")
    good = scored(prompt, 0, 1.0)
    bad_lengths = scored(prompt, 1, 1.0)
    del bad_lengths.behaviour_logprobs[-1]
    nan_reward = scored(prompt, 2, math.nan)
    for bad, needle in ((bad_lengths, "behaviour_logprobs"), (nan_reward, "reward=nan")):
        with pytest.raises(RPCError) as err:
            await client.put_sample_list(plan_id, "r", [good, bad])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details
        assert f"index {bad.sample_index}" in err.value.details
    # The good sample before the bad one was kept (the retry counts it as a duplicate).
    reply = await client.put_sample_list(plan_id, "r", [good])
    assert reply.num_accepted == 0 and drops(reply) == {"DROP_REASON_DUPLICATE": 1}


async def test_rl_checkpoint_and_restore(client: DataPlaneClient) -> None:
    plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    group = await prompts(client, plan_id, 2, "p")
    await client.put_sample_list(plan_id, "r", [scored(group[0], i, float(i % 2)) for i in range(GROUP)])
    saved = await client.checkpoint(pb.CheckpointRequest(request_id="c0", plan_id=plan_id, step=0))
    assert saved.step == 0 and saved.base_step == 0
    await client.put_sample_list(plan_id, "r", [scored(group[1], i, float(i % 2)) for i in range(GROUP)])
    after = await prompts(client, plan_id, 1, "q")
    restored = await client.restore(pb.RestoreRequest(request_id="back", plan_id=plan_id, step=0))
    assert restored.step == 0 and restored.checkpoint_step == 0
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    assert stats.buffer.num_buffered_samples == 4 and stats.buffer.num_prompts_outstanding == 1
    # The prompt that was out at the checkpoint goes out again at once (its samples after it are gone), not
    # after prompt_timeout_s; then the prompt stream is rewound too: the next draw is the one handed out
    # after the checkpoint, under the same group id.
    resent = await prompts(client, plan_id, 1, "q2")
    assert resent[0].group_id == group[1].group_id and resent[0].prompt_id == group[1].prompt_id
    again = await prompts(client, plan_id, 1, "q3")
    assert again[0].prompt_id == after[0].prompt_id and again[0].group_id == after[0].group_id
    await client.put_sample_list(plan_id, "r", [scored(group[1], i, float(i % 2)) for i in range(GROUP)])
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    assert stats.buffer.num_buffered_samples == 2 * GROUP and stats.buffer.num_prompts_outstanding == 1


async def test_fresh_rl_plan_restores_to_step_0(client: DataPlaneClient) -> None:
    """A trainer resuming from a checkpoint taken on another plan (a shared warm start) rewinds a fresh
    plan to step 0: nothing is served yet, so it succeeds and keeps what rollouts already put in."""
    plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="rl", mixture_yaml=RL_SPEC))).plan_id
    group = await prompts(client, plan_id, 2, "p")
    await client.put_sample_list(plan_id, "r", [scored(group[0], i, float(i % 2)) for i in range(GROUP)])
    # Beyond step 0 there is nothing to restore to.
    with pytest.raises(RPCError) as err:
        await client.restore(pb.RestoreRequest(request_id="ahead", plan_id=plan_id, step=3))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "step=3" in err.value.details
    restored = await client.restore(pb.RestoreRequest(request_id="fresh", plan_id=plan_id, step=0, num_ranks=1))
    assert (restored.step, restored.num_ranks, restored.checkpoint_step) == (0, 1, -1)
    stats = await client.stats(pb.StatsRequest(plan_id=plan_id))
    assert stats.buffer.num_buffered_samples == GROUP and stats.buffer.num_prompts_outstanding == 1
    # The plan serves step 0 to the one rank asked for, from the samples put before the restore and after it.
    await client.put_sample_list(plan_id, "r", [scored(group[1], i, float(i % 2)) for i in range(GROUP)])
    batch = await client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=0, step=0, policy_version=1))
    assert batch.num_ranks == 1 and len(batch.samples) == 2 * GROUP
    # Once a batch is served, step 0 is a checkpoint's business again: without one it is refused.
    with pytest.raises(RPCError) as err:
        await client.restore(pb.RestoreRequest(request_id="again", plan_id=plan_id, step=0))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "step=0" in err.value.details and "next step 1" in err.value.details


async def test_a_draw_waits_for_room_and_gets_it_the_moment_a_group_is_dropped_or_a_batch_taken(
    client: DataPlaneClient,
) -> None:
    plan_id = (await client.submit_plan(pb.SubmitPlanRequest(request_id="w", mixture_yaml=RL_SPEC))).plan_id
    out = await prompts(client, plan_id, 6, "w1")  # 6 groups of 4: the buffer's 24 samples are all out

    def draw(request_id: str, wait_s: float) -> pb.NextPromptsRequest:
        return pb.NextPromptsRequest(
            request_id=request_id, plan_id=plan_id, consumer_id="rollout-1", num_prompts=2, wait_s=wait_s
        )

    with pytest.raises(RPCError) as err:
        await client.next_prompts(draw("w-bad", 61))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "wait_s=61" in err.value.details
    with pytest.raises(RPCError) as err:  # no room came within the wait: refused as without one
        await client.next_prompts(draw("w-short", 0.2))
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

    waiting = asyncio.create_task(client.next_prompts(draw("w2", 30)))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # still no room
    # A uniform group is dropped: its room goes to the waiting draw.
    await client.put_sample_list(plan_id, "rollout-0", [scored(out[0], i, 1.0) for i in range(GROUP)])
    assert len((await asyncio.wait_for(waiting, 10)).prompts) == 1

    waiting = asyncio.create_task(client.next_prompts(draw("w3", 30)))
    mixed = [scored(p, i, float(i % 2)) for p in out[1:3] for i in range(GROUP)]
    await client.put_sample_list(plan_id, "rollout-0", mixed)
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the mixed groups are ready samples: they keep their room
    # The trainer takes them as batch 0: the waiting draw gets the room they leave.
    await asyncio.gather(
        *(client.next_batch(pb.NextBatchRequest(plan_id=plan_id, rank=r, step=0, policy_version=1)) for r in range(2))
    )
    assert len((await asyncio.wait_for(waiting, 10)).prompts) == 2
