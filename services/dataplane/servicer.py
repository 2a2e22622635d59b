"""gRPC servicer of the data plane: proto <-> domain conversion only; the logic is in ``core``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format
from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as pb
from seedstack.dataplane.v1 import dataplane_pb2_grpc

from services.common.errors import InvalidArgument
from services.dataplane.core import DataPlane, RankBatch
from services.dataplane.experience import RlSample
from services.dataplane.sources import LoadedSample
from services.dataplane.spec import parse_yaml

_DROP = {
    "duplicate": pb.DROP_REASON_DUPLICATE,
    "stale": pb.DROP_REASON_STALE,
    "unknown_prompt": pb.DROP_REASON_UNKNOWN_PROMPT,
    "unknown_version": pb.DROP_REASON_UNKNOWN_VERSION,
    "uniform_group": pb.DROP_REASON_UNIFORM_GROUP,
}


def spec_from_request(request: pb.SubmitPlanRequest) -> dict[str, Any]:
    """The spec mapping of a SubmitPlan request (message or YAML text)."""
    which = request.WhichOneof("spec")
    if which == "mixture_yaml":
        return dict(parse_yaml(request.mixture_yaml))
    if which == "mixture":
        return json_format.MessageToDict(
            request.mixture, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    raise InvalidArgument("spec: set either mixture or mixture_yaml")


def sample_from_proto(sample: common_pb2.Sample) -> RlSample:
    """Domain sample of a scored Sample message."""
    return RlSample(
        prompt_id=sample.prompt_id,
        group_id=sample.group_id,
        sample_index=sample.sample_index,
        prompt_token_ids=list(sample.prompt_token_ids),
        completion_token_ids=list(sample.completion_token_ids),
        behaviour_logprobs=list(sample.behaviour_logprobs),
        version_spans=[(s.start_index, s.end_index, s.weight_version) for s in sample.version_spans],
        completion_text=sample.completion_text,
        reward=sample.reward if sample.HasField("reward") else None,
        finished=sample.finished,
        finish_reason=sample.finish_reason,
        metadata=dict(sample.metadata),
    )


def sample_to_proto(sample: RlSample) -> common_pb2.Sample:
    """Sample message of a domain RL sample."""
    out = common_pb2.Sample(
        prompt_id=sample.prompt_id,
        group_id=sample.group_id,
        sample_index=sample.sample_index,
        prompt_token_ids=sample.prompt_token_ids,
        completion_token_ids=sample.completion_token_ids,
        behaviour_logprobs=sample.behaviour_logprobs,
        version_spans=[
            common_pb2.VersionSpan(start_index=a, end_index=b, weight_version=v) for a, b, v in sample.version_spans
        ],
        completion_text=sample.completion_text,
        finished=sample.finished,
        finish_reason=sample.finish_reason,  # type: ignore[arg-type]
        metadata=sample.metadata,
    )
    if sample.reward is not None:
        out.reward = sample.reward
    return out


def loaded_to_proto(sample: LoadedSample, source_name: str) -> common_pb2.Sample:
    """Sample message of a supervised sample: the prompt/text tokens, then the completion tokens."""
    tokens = sample.tokens
    return common_pb2.Sample(
        prompt_id=f"{source_name}/{sample.record_id}",
        prompt_token_ids=tokens[: sample.prompt_len].tolist(),
        completion_token_ids=tokens[sample.prompt_len :].tolist(),
        finished=True,
        metadata={"source": source_name, "seq": str(sample.seq)},
    )


def _drops(drops: dict[str, int]) -> list[pb.DropCount]:
    return [pb.DropCount(reason=_DROP[r], num_samples=n) for r, n in sorted(drops.items()) if n]


class DataPlaneServicer(dataplane_pb2_grpc.DataPlaneServicer):
    """Delegates every RPC to ``core.DataPlane``."""

    def __init__(self, core: DataPlane) -> None:
        self.core = core

    async def SubmitPlan(
        self, request: pb.SubmitPlanRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitPlanResponse:
        plan_id, resolved = await self.core.submit_plan(request.request_id, spec_from_request(request))
        return pb.SubmitPlanResponse(
            plan_id=plan_id, resolved_mixture=json_format.ParseDict(resolved, pb.MixtureSpec())
        )

    async def ClosePlan(self, request: pb.ClosePlanRequest, context: grpc.aio.ServicerContext) -> pb.ClosePlanResponse:
        await self.core.close_plan(request.request_id, request.plan_id)
        return pb.ClosePlanResponse()

    async def NextPrompts(
        self, request: pb.NextPromptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.NextPromptsResponse:
        draws = await self.core.next_prompts(
            request.request_id, request.plan_id, request.consumer_id, request.num_prompts, request.wait_s
        )
        runtime = await self.core.get(request.plan_id)
        assert runtime.plan.rl is not None
        prompts = [
            common_pb2.Prompt(
                prompt_id=d.prompt_id,
                group_id=d.group_id,
                source=d.source,
                text=d.text,
                token_ids=d.token_ids,
                verifier=common_pb2.VerifierKind.Value(f"VERIFIER_KIND_{d.verifier.upper()}"),
                reference=d.reference,
            )
            for d in draws
        ]
        return pb.NextPromptsResponse(prompts=prompts, group_size=runtime.plan.rl.group_size)

    async def PutSamples(
        self, request_iterator: AsyncIterator[pb.PutSamplesRequest], context: grpc.aio.ServicerContext
    ) -> pb.PutSamplesResponse:
        accepted = 0
        drops: dict[str, int] = {}
        plan_id = ""
        async for message in request_iterator:
            if plan_id and message.plan_id != plan_id:
                raise InvalidArgument(f"plan_id={message.plan_id!r}: a stream names one plan ({plan_id!r})")
            plan_id = message.plan_id
            ok, dropped = await self.core.put_samples(plan_id, [sample_from_proto(s) for s in message.samples])
            accepted += ok
            for reason, n in dropped.items():
                drops[reason] = drops.get(reason, 0) + n
        return pb.PutSamplesResponse(num_accepted=accepted, dropped=_drops(drops))

    async def NextBatch(self, request: pb.NextBatchRequest, context: grpc.aio.ServicerContext) -> pb.NextBatchResponse:
        remaining = context.time_remaining()
        timeout_s = None if remaining is None else max(0.0, remaining - 0.05)
        batch: RankBatch = await self.core.next_batch(
            request.plan_id, request.rank, request.step, request.policy_version, timeout_s
        )
        runtime = await self.core.get(request.plan_id)
        names = runtime.plan.source_names
        samples = [
            sample_to_proto(s) if isinstance(s, RlSample) else loaded_to_proto(s, names[s.source])
            for s in batch.samples
        ]
        return pb.NextBatchResponse(
            step=batch.step,
            rank=batch.rank,
            num_ranks=batch.num_ranks,
            samples=samples,
            num_tokens=batch.num_tokens,
            cost=batch.cost,
        )

    async def Checkpoint(
        self, request: pb.CheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckpointResponse:
        saved = await self.core.checkpoint(request.request_id, request.plan_id, request.step)
        return pb.CheckpointResponse(step=saved.step, base_step=saved.base_step, size_bytes=saved.size_bytes)

    async def Restore(self, request: pb.RestoreRequest, context: grpc.aio.ServicerContext) -> pb.RestoreResponse:
        step, num_ranks, checkpoint_step = await self.core.restore(
            request.request_id, request.plan_id, request.step, request.num_ranks
        )
        return pb.RestoreResponse(step=step, num_ranks=num_ranks, checkpoint_step=checkpoint_step)

    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        report = await self.core.stats(request.plan_id)
        response = pb.StatsResponse(
            next_step=report.next_step,
            num_ranks=report.num_ranks,
            num_samples_served=report.num_samples_served,
            num_tokens_served=report.num_tokens_served,
            samples_per_s=report.samples_per_s,
            tokens_per_s=report.tokens_per_s,
            last_cost_imbalance=report.last_cost_imbalance,
            sources=[
                pb.SourceStats(
                    name=s.name,
                    declared_share=s.declared_share,
                    realized_share=s.realized_share,
                    num_records_read=s.num_records_read,
                    num_records_skipped=s.num_records_skipped,
                    last_skip_reason=s.last_skip_reason,
                    num_loader_workers=s.num_loader_workers,
                    preprocess_s_per_record=s.preprocess_s_per_record,
                )
                for s in report.sources
            ],
        )
        if report.buffer is not None:
            b = report.buffer
            response.buffer.CopyFrom(
                pb.BufferStats(
                    num_buffered_samples=b["num_buffered_samples"],
                    num_prompts_outstanding=b["num_prompts_outstanding"],
                    dropped=_drops(b["dropped"]),
                    policy_version=b["policy_version"],
                )
            )
        return response
