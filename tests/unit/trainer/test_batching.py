"""The batched paths agree with running each sample alone: shared-prompt training forward, fast generation."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from services.trainer.engine import TrainSample, _length_buckets, _pack, completion_logits
from services.trainer.generate import Generated, _sample_hf, sample
from services.trainer.model import build_model
from tests.unit.trainer.conftest import TINY_MODEL


def alone(model: torch.nn.Module, s: TrainSample) -> torch.Tensor:
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    return model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1].float()  # type: ignore[no-any-return]


def batch_of(prompts: list[list[int]], completions: list[list[int]]) -> list[TrainSample]:
    return [
        TrainSample(prompt_ids=p, completion_ids=c, behaviour_logprobs=[-1.0] * len(c), reward=1.0, group_id=str(p))
        for p, c in zip(prompts, completions, strict=True)
    ]


def test_shared_prompts_give_the_logits_and_gradients_of_each_sample_alone() -> None:
    model = build_model(TINY_MODEL, seed=3)
    short, long = [40, 41, 42], [50, 51, 52, 53, 54, 55]
    samples = batch_of(
        [short, short, long, long, long, [60], short, long],
        [[1, 2, 10], [3, 10], [4], [5, 6, 7, 8, 9, 13, 14, 10], [9, 10], [11, 12], [10], [15, 10]],
    )
    batch = _pack(samples, pad_id=0, device=torch.device("cpu"))
    assert batch.prompt_ids.shape[0] == 3  # each distinct prompt runs once
    buckets = _length_buckets(batch.completion_mask.sum(dim=1), DynamicCache())
    assert [(len(rows), fed) for rows, fed in buckets] == [(6, 1), (2, 7)]  # the long ones run apart
    logits = completion_logits(model, batch)
    weights = torch.randn(logits.shape)
    (logits * weights * batch.mask[..., None]).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = torch.zeros(())
    for i, s in enumerate(samples):
        expected = alone(model, s)
        n = len(s.completion_ids)
        assert torch.allclose(logits[i, :n], expected, atol=1e-5), i
        total = total + (expected * weights[i, :n]).sum()
    total.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None
        assert torch.allclose(packed_grads[name], param.grad, rtol=1e-4, atol=1e-5), name


def test_distinct_prompts_run_as_one_forward_with_the_same_logits() -> None:
    model = build_model(TINY_MODEL, seed=4)
    samples = batch_of([[40, 41], [50, 51, 52, 53]], [[1, 2, 10], [3]])
    batch = _pack(samples, pad_id=0, device=torch.device("cpu"))
    assert not batch.shares_prompts
    with torch.no_grad():
        logits = completion_logits(model, batch)
        for i, s in enumerate(samples):
            assert torch.allclose(logits[i, : len(s.completion_ids)], alone(model, s), atol=1e-5)


def test_fast_generation_matches_the_model_and_is_seeded() -> None:
    model = build_model(TINY_MODEL, seed=5).eval()
    prompts = [[40, 41, 42], [40, 41, 42], [50, 51, 52, 53, 54], [7]]
    fast = sample(model, prompts, max_new_tokens=6, eos_id=10, greedy=True)
    general = _sample_hf(model, prompts, 6, 10, 0, 1.0, True, None, "cpu")
    assert fast.tokens == general.tokens and fast.finished == general.finished
    for got, want in zip(fast.logprobs, general.logprobs, strict=True):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)

    def draw(seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        return sample(model, prompts, max_new_tokens=6, eos_id=10, temperature=1.0, generator=g).tokens

    first = draw(1)
    assert first == draw(1)
    assert first != draw(2)
    drawn = sample(model, prompts, max_new_tokens=6, eos_id=10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for prompt, tokens, logprobs in zip(prompts, drawn.tokens, drawn.logprobs, strict=True):
            s = batch_of([prompt], [tokens])[0]
            expected = torch.log_softmax(alone(model, s), -1).gather(-1, torch.tensor(tokens)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4)


def test_finished_answers_leave_the_batch_without_changing_the_others() -> None:
    model = build_model(TINY_MODEL, seed=5).eval()
    prompts = [[40 + i, 41 + 2 * i, 42 + 3 * i] for i in range(16)]

    def draw(eos: int) -> Generated:
        return sample(model, prompts, max_new_tokens=12, eos_id=eos, generator=torch.Generator().manual_seed(3))

    # Without an EOS every row runs 12 steps; take as EOS a token the rows first write at different steps.
    free = draw(-1)
    first: dict[int, set[int]] = {}
    for row in free.tokens:
        for token in set(row):
            first.setdefault(token, set()).add(row.index(token))
    eos = max(first, key=lambda t: len(first[t]))
    assert len(first[eos]) >= 3, "the tiny model should end its rows at three different steps at least"
    # A row's draws depend on its own key and history only: with the EOS each row is its free run cut
    # after the first EOS, however many rows left the batch before it.
    ended = draw(eos)
    assert len({len(t) for t in ended.tokens}) >= 3
    for row, (tokens, logprobs, finished) in enumerate(zip(ended.tokens, ended.logprobs, ended.finished, strict=True)):
        n = free.tokens[row].index(eos) + 1 if eos in free.tokens[row] else 12
        assert tokens == free.tokens[row][:n] and finished == (eos in free.tokens[row])
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(free.logprobs[row][:n]), atol=1e-4)
