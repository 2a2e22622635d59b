"""gRPC servicer of the rollout server: proto <-> domain conversion only; the logic is in ``core``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from seedstack.common.v1 import common_pb2
from seedstack.rollout.v1 import rollout_pb2 as pb
from seedstack.rollout.v1 import rollout_pb2_grpc

from services.common.errors import FailedPrecondition, InvalidArgument
from services.rollout.core import RolloutCore
from services.rollout.engine import SamplingParams
from services.rollout.links import VERIFIER_NAMES, prompt_from_proto, sample_to_proto
from services.rollout.streaming import ScoredSample
from services.rollout.verifiers import Outcome

OUTCOMES = {
    Outcome.CORRECT: pb.VERIFY_OUTCOME_CORRECT,
    Outcome.INCORRECT: pb.VERIFY_OUTCOME_INCORRECT,
    Outcome.NO_ANSWER: pb.VERIFY_OUTCOME_NO_ANSWER,
    Outcome.TIMEOUT: pb.VERIFY_OUTCOME_TIMEOUT,
    Outcome.CRASHED: pb.VERIFY_OUTCOME_CRASHED,
}


def sampling_from_proto(s: pb.SamplingParams, default_max_new_tokens: int) -> tuple[SamplingParams, int]:
    """Domain sampling parameters and n; zero values become the documented defaults."""
    params = SamplingParams(
        temperature=float(s.temperature),
        top_p=float(s.top_p) if s.top_p > 0 else 1.0,
        top_k=int(s.top_k),
        max_new_tokens=int(s.max_new_tokens) or default_max_new_tokens,
        stop=tuple(s.stop),
        seed=int(s.seed) if s.HasField("seed") else None,
    )
    return params, int(s.n) or 1


class RolloutServicer(rollout_pb2_grpc.RolloutServicer):
    """Each RPC converts its request, calls ``RolloutCore`` and converts the answer."""

    def __init__(self, core: RolloutCore) -> None:
        self.core = core

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[pb.GenerateResponse]:
        core = self.core
        params, n = sampling_from_proto(request.sampling, core.config.default_max_new_tokens)
        prompts = [prompt_from_proto(p, core.prompt_ids(p.text, list(p.token_ids))) for p in request.prompts]
        async for item in core.generate(prompts, params, n, stream_tokens=request.stream_tokens, verify=request.verify):
            if isinstance(item, ScoredSample):
                yield pb.GenerateResponse(sample=sample_to_proto(item))
            else:
                yield pb.GenerateResponse(
                    token_delta=pb.TokenDelta(
                        prompt_id=item.tag.prompt_id,
                        sample_index=item.sample_index,
                        token_ids=item.completion_ids,
                        text=core.tokenizer.decode(item.completion_ids),
                        logprobs=item.logprobs,
                        weight_version=item.spans[0][2],
                    )
                )

    async def Verify(self, request: pb.VerifyRequest, context: Any) -> pb.VerifyResponse:
        kind = VERIFIER_NAMES.get(request.verifier)
        if kind is None:
            raise InvalidArgument(f"verifier={request.verifier}: name one of ARITHMETIC, MATH, CODE")
        verdict = await self.core.verify(kind, request.answer, request.reference, request.timeout_s)
        return pb.VerifyResponse(score=verdict.score, outcome=OUTCOMES[verdict.outcome], detail=verdict.detail)

    async def StartRollout(self, request: pb.StartRolloutRequest, context: Any) -> pb.StartRolloutResponse:
        core = self.core
        if request.HasField("model") and request.model != _served_spec(core):
            raise FailedPrecondition(
                "model: this server serves the model it was started with "
                f"({_served_spec(core)}); start a server with the requested spec instead"
            )
        params, _ = sampling_from_proto(request.sampling, core.config.default_max_new_tokens)
        await core.start_rollout(
            request.request_id,
            plan_id=request.dataplane_plan_id,
            weighthub_model=request.weighthub_model,
            params=params,
            num_prompts_per_round=request.num_prompts_per_round,
            completion_ratio=request.completion_ratio if request.completion_ratio > 0 else 1.0,
            max_staleness_versions=request.max_staleness_versions,
        )
        return pb.StartRolloutResponse()

    async def StopRollout(self, request: pb.StopRolloutRequest, context: Any) -> pb.StopRolloutResponse:
        await self.core.stop_rollout(request.request_id)
        return pb.StopRolloutResponse()

    async def UpdateWeights(self, request: pb.UpdateWeightsRequest, context: Any) -> pb.UpdateWeightsResponse:
        result = await self.core.update_weights(request.request_id, request.weighthub_model, request.version)
        return pb.UpdateWeightsResponse(
            served_version=result.served_version, fetch_s=result.fetch_s, stall_s=result.stall_s
        )

    async def Pause(self, request: pb.PauseRequest, context: Any) -> pb.PauseResponse:
        return pb.PauseResponse(num_paused_sequences=await self.core.pause(request.request_id))

    async def Resume(self, request: pb.ResumeRequest, context: Any) -> pb.ResumeResponse:
        await self.core.resume(request.request_id)
        return pb.ResumeResponse()

    async def Stats(self, request: pb.StatsRequest, context: Any) -> pb.StatsResponse:
        s = self.core.stats()
        return pb.StatsResponse(**{f.name: getattr(s, f.name) for f in pb.StatsResponse.DESCRIPTOR.fields})


def _served_spec(core: RolloutCore) -> common_pb2.ModelSpec:
    c = core.config
    return common_pb2.ModelSpec(
        config_json=c.model_config_json, checkpoint_path=c.model_checkpoint_path, tokenizer=c.tokenizer
    )
