"""Background weight updates: fetch into a second buffer, verify, swap between steps; bad versions rejected.

The weight source here is ``MemoryWeightSource``, an in-process stand-in honouring the weight hub
reader's interface; the integration tests use the real hub.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from services.common.errors import DataLoss, FailedPrecondition
from services.rollout.decoder import Arch, Weights
from services.rollout.engine import Engine, SamplingParams, SequenceRequest
from services.rollout.generation import EventRouter, Generation
from services.rollout.model import CharTokenizer, build_model
from services.rollout.weights import MemoryWeightSource, WeightUpdater
from tests.support import assert_eventually
from tests.unit.rollout.conftest import LIMITS, SMALL

PROMPT = list(b"Compute 1 + 2.")


def perturbed(model: torch.nn.Module, scale: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(int(scale * 1000))
    return {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


@pytest.fixture
async def running(arch: Arch, weights: Weights):  # type: ignore[no-untyped-def]
    router = EventRouter(asyncio.get_running_loop())
    engine = Engine(arch, weights, CharTokenizer(), max_batch_size=4, limits=LIMITS, on_events=router.post)
    yield engine, Generation(engine, router)
    await asyncio.to_thread(engine.close)


async def greedy(generation: Generation) -> tuple[list[int], list[list[int]]]:
    async with generation.call() as call:
        call.submit(
            [SequenceRequest(prompt_ids=PROMPT, params=SamplingParams(temperature=0, max_new_tokens=12), seed=0)]
        )
        async for event in call.events():
            if event.kind == "finished":
                return event.completion_ids, event.spans
    raise AssertionError("no finished event")


async def test_update_swaps_in_the_new_version(model: torch.nn.Module, arch: Arch, running) -> None:  # type: ignore[no-untyped-def]
    engine, generation = running
    before, spans = await greedy(generation)
    assert spans == [[0, 12, 0]]
    source = MemoryWeightSource()
    updater = WeightUpdater(engine, arch)
    with pytest.raises(FailedPrecondition):
        await updater.update()
    await updater.attach(source, "policy", follow=False)
    await source.publish(1, perturbed(model, 0.5))
    result = await updater.update()
    assert result.served_version == 1 and updater.served_version == 1 and result.stall_s < result.fetch_s
    after, spans = await greedy(generation)
    assert spans == [[0, 12, 1]] and after != before
    # The swapped-in layout (fused, transposed, norms folded) is rebuilt from the new tensors: greedy
    # decoding follows the new model exactly.
    state = perturbed(model, 0.5)
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: the decode path reads the embedding
    new_model: Any = build_model(SMALL, seed=3)
    new_model.load_state_dict(state)
    with torch.no_grad():
        expected = new_model.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert after == expected[0, len(PROMPT) :].tolist()
    # Serving version 1 again is a no-op.
    assert (await updater.update(1)).fetch_s == 0.0
    await updater.detach()


async def test_a_version_that_fails_verification_is_rejected_and_the_old_one_kept(
    model: torch.nn.Module, arch: Arch, running
) -> None:  # type: ignore[no-untyped-def]
    engine, generation = running
    source = MemoryWeightSource()
    updater = WeightUpdater(engine, arch)
    await updater.attach(source, "policy", follow=False)
    await source.publish(1, perturbed(model, 0.3))
    await updater.update(1)
    served, _ = await greedy(generation)
    await source.publish(2, perturbed(model, 0.6))
    source.corrupt(2, "model.layers.0.mlp.up_proj.weight")
    with pytest.raises(DataLoss, match="hash"):
        await updater.update(2)
    assert updater.served_version == 1 and updater.last_rejected_version == 2
    assert "model.layers.0.mlp.up_proj.weight" in updater.last_rejected_reason
    assert (await greedy(generation))[0] == served
    # A version of another architecture is rejected too, naming the tensor.
    wrong = perturbed(model, 0.2)
    wrong["model.norm.weight"] = torch.ones(3)
    await source.publish(3, wrong)
    with pytest.raises(DataLoss, match=r"model.norm.weight has shape \(3,\)"):
        await updater.update(3)
    assert updater.served_version == 1 and updater.last_rejected_version == 3
    await updater.detach()


async def test_following_swaps_each_published_version_while_decoding(
    model: torch.nn.Module, arch: Arch, running
) -> None:  # type: ignore[no-untyped-def]
    engine, generation = running
    source = MemoryWeightSource()
    updater = WeightUpdater(engine, arch)
    await source.publish(1, perturbed(model, 0.1))
    await updater.attach(source, "policy", follow=True)
    await assert_eventually(lambda: updater.served_version == 1)
    params = SamplingParams(temperature=1.0, max_new_tokens=120)
    async with generation.call() as call:
        call.submit([SequenceRequest(prompt_ids=PROMPT, params=params, seed=i, sample_index=i) for i in range(4)])
        await source.publish(2, perturbed(model, 0.2))
        finished = [e async for e in call.events() if e.kind == "finished"]
    await assert_eventually(lambda: updater.served_version == 2)
    versions = {span[2] for e in finished for span in e.spans}
    assert versions <= {1, 2}
    for e in finished:  # contiguous, ascending spans covering every token
        assert e.spans[0][0] == 0 and e.spans[-1][1] == len(e.completion_ids)
        assert all(a[1] == b[0] and a[2] < b[2] for a, b in zip(e.spans, e.spans[1:], strict=False))
    assert engine.stats().num_weight_swaps == 2
    await updater.detach()
