"""Per-sample bookkeeping around the decoder: rows ending at different steps, spans continued from a prior,
one loop wake-up for many steps, and the cheaper weight layout and finiteness check."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from services.rollout.decoder import Arch, Weights, check_tensors, prepare_weights
from services.rollout.engine import Engine, Event, Partial, SamplingParams, SequenceRequest
from services.rollout.generation import EventRouter
from services.rollout.model import CharTokenizer
from tests.unit.rollout.conftest import LIMITS, Collected

PROMPTS = [list(f"{i * 7 % 97}+{i * 13 % 89}=".encode()) for i in range(6)]


def test_prepare_weights_lays_out_the_reference_matrices(model: torch.nn.Module, arch: Arch) -> None:
    tensors = model.state_dict()
    w = prepare_weights(arch, tensors)
    p = "model.layers.0."
    names = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"]
    reference = torch.cat([tensors[p + n] for n in names]).t() * tensors[p + "input_layernorm.weight"][:, None]
    assert torch.equal(w.layers[0].wqkv, reference) and w.layers[0].wqkv.is_contiguous()
    assert torch.equal(w.layers[0].wo, tensors[p + "self_attn.o_proj.weight"].t())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_single_non_finite_element_is_refused(model: torch.nn.Module, arch: Arch, bad: float) -> None:
    tensors = dict(model.state_dict())
    broken = tensors["model.layers.1.mlp.down_proj.weight"].clone()
    broken[3, 5] = bad
    tensors["model.layers.1.mlp.down_proj.weight"] = broken
    with pytest.raises(ValueError, match=r"down_proj\.weight is not a finite"):
        check_tensors(arch, tensors)


def test_rows_ending_at_different_steps_keep_their_tokens_and_free_slots(
    arch: Arch, weights: Weights, collected: Collected
) -> None:
    # 3 slots for 12 sequences of budgets 1..6: rows leave mid-batch (the rows after them move down) and
    # newcomers take the freed slots. Each sequence must be what it is when decoded alone.
    engine = Engine(arch, weights, CharTokenizer(eos_id=-1), max_batch_size=3, limits=LIMITS, on_events=collected)
    try:
        requests = [
            SequenceRequest(
                prompt_ids=p,
                params=SamplingParams(temperature=1.0, max_new_tokens=1 + (i * 5 + j) % 6),
                seed=4,
                sample_index=j,
            )
            for i, p in enumerate(PROMPTS[:4])
            for j in range(3)
        ]
        together = [e for e in collected.wait_finished(engine.submit(requests))]
        for request, event in zip(requests, together, strict=True):
            (alone,) = collected.wait_finished(engine.submit([request]))
            assert event.completion_ids == alone.completion_ids
            assert event.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
            assert event.spans == [[0, request.params.max_new_tokens, 0]]
            assert event.finish_reason == "length"
        assert not engine._active
    finally:
        engine.close()


def test_continuing_under_the_same_version_extends_the_prior_span(engine: Engine, collected: Collected) -> None:
    prior = Partial(completion_ids=list(b"abc"), logprobs=[-1.0, -1.0, -1.0], spans=[[0, 3, 0]])
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    (event,) = collected.wait_finished(
        engine.submit([SequenceRequest(prompt_ids=PROMPTS[0], params=params, seed=0, prior=prior)])
    )
    assert len(event.completion_ids) == 8 and event.spans == [[0, 8, 0]]
    prior = Partial(completion_ids=list(b"abc"), logprobs=[-1.0, -1.0, -1.0], spans=[[0, 3, 7]])
    (event,) = collected.wait_finished(
        engine.submit([SequenceRequest(prompt_ids=PROMPTS[0], params=params, seed=0, prior=prior)])
    )
    assert event.spans == [[0, 3, 7], [3, 8, 0]]


def test_posts_made_while_the_loop_is_busy_share_one_wake_up() -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        router = EventRouter(loop)
        queue = router.register(1)
        scheduled = 0
        original = loop.call_soon_threadsafe

        def counting(*args: object) -> object:
            nonlocal scheduled
            scheduled += 1
            return original(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign, assignment]

        def event(i: int) -> Event:
            return Event("delta", i, (1, None), 0, [], [i], [0.0], [])

        def engine_thread() -> None:  # three steps' events before the loop gets to run
            for step in range(3):
                router.post([event(2 * step), event(2 * step + 1)])

        worker = threading.Thread(target=engine_thread)
        worker.start()
        worker.join()  # the loop is blocked here: every post lands before any dispatch
        got = [(await queue.get()).seq_id for _ in range(6)]
        return got, scheduled

    got, scheduled = asyncio.run(main())
    assert got == [0, 1, 2, 3, 4, 5]
    assert scheduled == 1
