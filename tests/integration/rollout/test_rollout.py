"""The Rollout service over gRPC: Generate streaming, Verify, Pause/Resume/Stats, bad input, and the
worker loop against a real data plane."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from seedstack.common.v1 import common_pb2
from seedstack.rollout.v1 import rollout_pb2 as pb

from clients.base import RPCError
from tests.integration.rollout.conftest import Stack
from tests.support import assert_eventually


def prompt(i: int, text: str = "") -> common_pb2.Prompt:
    return common_pb2.Prompt(
        prompt_id=f"p{i}",
        text=text or f"Compute {i} + 1.",
        verifier=common_pb2.VERIFIER_KIND_ARITHMETIC,
        reference=str(i + 1),
    )


async def collect(stack: Stack, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [r async for r in stack.rollout.generate(request)]


async def test_generate_streams_tokens_and_scored_samples(stack: Stack) -> None:
    request = pb.GenerateRequest(
        prompts=[prompt(1), prompt(2)],
        sampling=pb.SamplingParams(temperature=0.8, top_k=50, top_p=0.95, max_new_tokens=20, n=3, seed=11),
        verify=True,
        stream_tokens=True,
    )
    replies = await collect(stack, request)
    samples = [r.sample for r in replies if r.HasField("sample")]
    deltas = [r.token_delta for r in replies if r.HasField("token_delta")]
    assert sorted((s.prompt_id, s.sample_index) for s in samples) == [(f"p{i}", k) for i in (1, 2) for k in range(3)]
    for s in samples:
        n = len(s.completion_token_ids)
        assert 0 < n <= 20 and len(s.behaviour_logprobs) == n and all(lp <= 0 for lp in s.behaviour_logprobs)
        assert [(v.start_index, v.end_index, v.weight_version) for v in s.version_spans] == [(0, n, 0)]
        assert s.finished and s.HasField("reward") and s.metadata["verify_outcome"]
        assert s.group_id == s.prompt_id and list(s.prompt_token_ids) == list(
            f"Compute {s.prompt_id[1:]} + 1.".encode()
        )
        streamed = [
            t for d in deltas if (d.prompt_id, d.sample_index) == (s.prompt_id, s.sample_index) for t in d.token_ids
        ]
        assert streamed == list(s.completion_token_ids)
    # The same seed gives the same samples.
    again = {
        (r.sample.prompt_id, r.sample.sample_index): list(r.sample.completion_token_ids)
        for r in await collect(stack, request)
        if r.HasField("sample")
    }
    assert again == {(s.prompt_id, s.sample_index): list(s.completion_token_ids) for s in samples}


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (
            pb.GenerateRequest(prompts=[prompt(1, text="x" * 200)], sampling=pb.SamplingParams(max_new_tokens=100)),
            "exceeds the context",
        ),
        (pb.GenerateRequest(prompts=[prompt(1)], sampling=pb.SamplingParams(max_new_tokens=250)), "max_new_tokens"),
        (pb.GenerateRequest(prompts=[common_pb2.Prompt(prompt_id="e")]), "empty"),
        (pb.GenerateRequest(prompts=[prompt(1, text="x" * 300)]), "exceeds the context"),
        (pb.GenerateRequest(prompts=[prompt(1)], sampling=pb.SamplingParams(temperature=-1)), "temperature"),
        (pb.GenerateRequest(prompts=[prompt(1)], sampling=pb.SamplingParams(top_p=1.5)), "top_p"),
        (pb.GenerateRequest(prompts=[prompt(1)], sampling=pb.SamplingParams(n=9)), "n=9"),
        (pb.GenerateRequest(prompts=[]), "at least one prompt"),
    ],
)
async def test_bad_generate_requests_are_refused_and_the_server_keeps_serving(
    stack: Stack, request_: pb.GenerateRequest, needle: str
) -> None:
    with pytest.raises(RPCError) as err:
        await collect(stack, request_)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details
    ok = await collect(stack, pb.GenerateRequest(prompts=[prompt(3)], sampling=pb.SamplingParams(max_new_tokens=4)))
    assert len(ok) == 1 and len(ok[0].sample.completion_token_ids) <= 4


async def test_too_many_sequences_is_resource_exhausted(stack: Stack) -> None:
    request = pb.GenerateRequest(prompts=[prompt(i) for i in range(9)], sampling=pb.SamplingParams(n=8))
    with pytest.raises(RPCError) as err:
        await collect(stack, request)
    assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_verify_rpc_scores_each_kind_with_defined_failures(stack: Stack) -> None:
    v = stack.rollout.verify
    reply = await v(
        pb.VerifyRequest(verifier=common_pb2.VERIFIER_KIND_MATH, answer="so \\boxed{\\frac{6}{4}}", reference="1.5")
    )
    assert (reply.score, reply.outcome) == (1.0, pb.VERIFY_OUTCOME_CORRECT)
    reply = await v(pb.VerifyRequest(verifier=common_pb2.VERIFIER_KIND_ARITHMETIC, answer="12 19", reference="18"))
    assert reply.outcome == pb.VERIFY_OUTCOME_INCORRECT and "19" in reply.detail
    reply = await v(
        pb.VerifyRequest(
            verifier=common_pb2.VERIFIER_KIND_CODE, answer="while True: pass", reference="assert True", timeout_s=0.5
        )
    )
    assert (reply.score, reply.outcome) == (0.0, pb.VERIFY_OUTCOME_TIMEOUT)
    with pytest.raises(RPCError) as err:
        await v(pb.VerifyRequest(answer="1", reference="1"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_pause_holds_generation_until_resume(stack: Stack) -> None:
    paused = await stack.rollout.pause(pb.PauseRequest(request_id="pause-1"))
    assert paused.num_paused_sequences == 0
    request = pb.GenerateRequest(prompts=[prompt(1)], sampling=pb.SamplingParams(temperature=0, max_new_tokens=16, n=2))
    task = asyncio.create_task(collect(stack, request))
    stats = await assert_eventually(
        lambda: _stats_when(stack, lambda s: s.paused and s.num_queued_sequences + s.num_running_sequences == 2)
    )
    assert stats.num_tokens_generated == 0 and not task.done()
    # A retried Pause with the same id answers as the first time.
    assert (await stack.rollout.pause(pb.PauseRequest(request_id="pause-1"))).num_paused_sequences == 0
    await stack.rollout.resume(pb.ResumeRequest(request_id="resume-1"))
    replies = await task
    assert [len(r.sample.completion_token_ids) for r in replies] == [16, 16]
    stats = await stack.rollout.stats(pb.StatsRequest())
    assert not stats.paused and stats.num_samples_finished == 2 and stats.num_tokens_generated == 32
    assert stats.served_version == 0 and 0 <= stats.idle_fraction <= 1 and stats.decode_tokens_per_s > 0


async def _stats_when(stack: Stack, predicate):  # type: ignore[no-untyped-def]
    stats = await stack.rollout.stats(pb.StatsRequest())
    return stats if predicate(stats) else None


async def test_update_weights_without_a_model_is_a_failed_precondition(stack: Stack) -> None:
    with pytest.raises(RPCError) as err:
        await stack.rollout.update_weights(pb.UpdateWeightsRequest(request_id="u1"))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_start_rollout_refuses_bad_settings(stack: Stack) -> None:
    for request, needle in [
        (
            pb.StartRolloutRequest(request_id="a", dataplane_plan_id="x", num_prompts_per_round=0),
            "num_prompts_per_round",
        ),
        (
            pb.StartRolloutRequest(
                request_id="b", dataplane_plan_id="x", num_prompts_per_round=1, completion_ratio=1.5
            ),
            "completion_ratio",
        ),
        (pb.StartRolloutRequest(request_id="c", num_prompts_per_round=1), "dataplane_plan_id"),
    ]:
        with pytest.raises(RPCError) as err:
            await stack.rollout.start_rollout(request)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details
    with pytest.raises(RPCError) as err:
        await stack.rollout.start_rollout(
            pb.StartRolloutRequest(
                request_id="d",
                dataplane_plan_id="x",
                num_prompts_per_round=1,
                model=common_pb2.ModelSpec(config_json="{}"),
            )
        )
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # Without a weight-hub model there is no version >= 1 to tag samples with.
    with pytest.raises(RPCError) as err:
        await stack.rollout.start_rollout(
            pb.StartRolloutRequest(request_id="e", dataplane_plan_id="x", num_prompts_per_round=1)
        )
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "weighthub_model" in err.value.details
