"""The rollout server's links to its peers: the data plane (prompts in, samples out) and the weight hub.

Both peers are found through the service registry in Redis, like every seedstack client.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import grpc
from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as dp

from clients.base import ClientOptions, RPCError
from clients.dataplane import DataPlaneClient
from services.common.errors import FailedPrecondition, ResourceExhausted
from services.rollout.config import RolloutConfig
from services.rollout.streaming import PromptItem, ScoredSample
from services.rollout.weights import WeightSource

VERIFIER_NAMES = {
    common_pb2.VERIFIER_KIND_ARITHMETIC: "arithmetic",
    common_pb2.VERIFIER_KIND_MATH: "math",
    common_pb2.VERIFIER_KIND_CODE: "code",
}
VERIFIER_KINDS = {name: kind for kind, name in VERIFIER_NAMES.items()}
FINISH_REASONS = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}


def prompt_from_proto(p: common_pb2.Prompt, token_ids: list[int]) -> PromptItem:
    """A domain prompt; a prompt without a group id gets its prompt id."""
    return PromptItem(
        prompt_id=p.prompt_id,
        group_id=p.group_id or p.prompt_id,
        token_ids=token_ids,
        verifier=VERIFIER_NAMES.get(p.verifier, ""),
        reference=p.reference,
    )


def sample_to_proto(s: ScoredSample) -> common_pb2.Sample:
    """The common Sample message of a finished, scored sample."""
    msg = common_pb2.Sample(
        prompt_id=s.prompt.prompt_id,
        group_id=s.prompt.group_id,
        sample_index=s.sample_index,
        prompt_token_ids=s.prompt.token_ids,
        completion_token_ids=s.completion_ids,
        behaviour_logprobs=s.logprobs,
        version_spans=[common_pb2.VersionSpan(start_index=a, end_index=b, weight_version=v) for a, b, v in s.spans],
        completion_text=s.text,
        finished=True,
        finish_reason=FINISH_REASONS.get(s.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED),
        metadata=s.metadata,
    )
    if s.reward is not None:
        msg.reward = s.reward
    return msg


class DataPlaneRlLink:
    """NextPrompts and PutSamples of one RL plan."""

    def __init__(
        self, client: DataPlaneClient, plan_id: str, producer_id: str, encode: Callable[[str], list[int]]
    ) -> None:
        self._client = client
        self._plan_id = plan_id
        self._producer_id = producer_id
        self._encode = encode
        self._draws = 0

    async def next_prompts(self, num_prompts: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        """Draw prompts (each call a fresh request id, so a retried call returns the same prompts); with
        ``wait_s`` the data plane holds the call up to that long while its buffer has no room."""
        self._draws += 1
        try:
            reply = await self._client.next_prompts(
                dp.NextPromptsRequest(
                    request_id=f"{self._producer_id}-{self._draws}",
                    plan_id=self._plan_id,
                    consumer_id=self._producer_id,
                    num_prompts=num_prompts,
                    wait_s=wait_s,
                )
            )
        except RPCError as exc:
            if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(exc.details) from None
            raise
        items = [prompt_from_proto(p, list(p.token_ids) or self._encode(p.text)) for p in reply.prompts]
        return items, int(reply.group_size)

    async def put_samples(self, samples: list[ScoredSample]) -> None:
        """Stream the samples to PutSamples."""
        await self._client.put_sample_list(self._plan_id, self._producer_id, [sample_to_proto(s) for s in samples])

    async def close(self) -> None:
        """Close the channel."""
        await self._client.close()


def link_factories(config: RolloutConfig, encode: Callable[[str], list[int]]) -> tuple[object, object]:
    """(open_weights, open_dataplane) for ``RolloutCore``, resolving peers through the registry."""
    options = ClientOptions(token=config.auth_token)

    async def open_dataplane(plan_id: str, producer_id: str) -> DataPlaneRlLink:
        client = await DataPlaneClient.resolve(config.redis_url, options)
        return DataPlaneRlLink(client, plan_id, f"{producer_id}-{uuid.uuid4().hex[:8]}", encode)

    async def open_weights(model: str) -> WeightSource:
        try:
            from clients.weighthub import Reader  # type: ignore[attr-defined]
        except ImportError:
            raise FailedPrecondition("the weight hub's Reader is not available in this build (issue #3)") from None
        from clients.weighthub import WeightHubClient

        hub = await WeightHubClient.resolve(config.redis_url, options)
        reader = Reader(hub, model=model, host=config.advertise_host, transport_bind_host=config.weights_bind_host)
        await reader.start()
        return reader  # type: ignore[no-any-return]

    return open_weights, open_dataplane
