"""The decode path computes what the Hugging Face model computes, and the sampler samples what it says."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

from services.common.errors import InvalidArgument
from services.rollout.decoder import (
    Decoder,
    KVCache,
    SamplerBatch,
    check_tensors,
    prepare_weights,
    read_arch,
    sample,
)
from services.rollout.model import build_model


def assert_last_logits_match_hf(model: torch.nn.Module, logits: torch.Tensor, prompts: list[list[int]]) -> None:
    """Row r of ``logits`` is HF's next-token logits after the whole of ``prompts[r]``."""
    with torch.no_grad():
        for row, ids in enumerate(prompts):
            ref = model(torch.tensor([ids])).logits[0, -1]
            torch.testing.assert_close(logits[row], ref, atol=1e-4, rtol=1e-4)


def test_prefill_and_decode_match_hf_logits(model: torch.nn.Module) -> None:
    arch = read_arch(model)
    w = prepare_weights(arch, model.state_dict())
    dec = Decoder(arch, KVCache(arch, 4, 64))
    prompts = [list(b"Compute 3 + 4."), list(b"Hi"), list(b"A longer prompt, here.")]
    for slot, ids in enumerate(prompts):
        dec.prefill(w, ids[:-1], slot)
    positions = torch.tensor([len(p) - 1 for p in prompts])
    logits = dec.step(w, torch.tensor([p[-1] for p in prompts]), positions, int(positions.max()) + 1)
    assert_last_logits_match_hf(model, logits, prompts)


def test_prompts_prefilled_together_match_hf_logits(model: torch.nn.Module) -> None:
    arch = read_arch(model)
    w = prepare_weights(arch, model.state_dict())
    dec = Decoder(arch, KVCache(arch, 6, 128))
    # Padded batches of similar lengths; the long one runs in a batch of its own.
    prompts = [list(b"Compute 3 + 4."), list(b"Hi"), list(b"x"), list(b"A longer prompt, here." * 3), list(b"Hey")]
    slots = [4, 0, 3, 1, 2]
    dec.prefill_many(w, [p[:-1] for p in prompts], slots)
    order = sorted(range(len(prompts)), key=lambda i: slots[i])
    positions = torch.tensor([len(prompts[i]) - 1 for i in order])
    logits = dec.step(w, torch.tensor([prompts[i][-1] for i in order]), positions, int(positions.max()) + 1)
    assert_last_logits_match_hf(model, logits, [prompts[i] for i in order])


def test_a_prefix_shared_by_every_prompt_runs_once_and_matches_hf_logits(model: torch.nn.Module) -> None:
    arch = read_arch(model)
    w = prepare_weights(arch, model.state_dict())
    dec = Decoder(arch, KVCache(arch, 5, 128))
    # 4 rows beyond the first share 17 tokens: 68 positions saved, so the prefix runs once. One context is
    # the prefix alone (nothing of its own after it).
    prompts = [list(b"Compute the sum: " + tail) for tail in (b"3 + 4.", b"12 + 30.", b"x", b"1 + 1 + 1 + 1.")]
    prompts.append([*b"Compute the sum: ", ord("?")])
    with mock.patch.object(dec, "_forward", wraps=dec._forward) as forward:
        dec.prefill_many(w, [p[:-1] for p in prompts], list(range(5)))
    token_rows = [c.args[1].numel() for c in forward.call_args_list]
    assert token_rows[0] == 17 and sum(token_rows) < sum(len(p) - 1 for p in prompts)
    positions = torch.tensor([len(p) - 1 for p in prompts])
    logits = dec.step(w, torch.tensor([p[-1] for p in prompts]), positions, int(positions.max()) + 1)
    assert_last_logits_match_hf(model, logits, prompts)


GQA_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": False,
}
"""Two query heads per key/value head and an untied LM head: the layouts the default model does not have."""


def test_grouped_query_attention_matches_hf() -> None:
    model = build_model(json.dumps(GQA_CONFIG), seed=1)
    arch = read_arch(model)
    w = prepare_weights(arch, model.state_dict())
    dec = Decoder(arch, KVCache(arch, 1, 32))
    ids = list(b"grouped heads")
    dec.prefill(w, ids[:-1], 0)
    logits = dec.step(w, torch.tensor([ids[-1]]), torch.tensor([len(ids) - 1]), len(ids))
    with torch.no_grad():
        torch.testing.assert_close(logits[0], model(torch.tensor([ids])).logits[0, -1], atol=1e-4, rtol=1e-4)


def test_weights_that_do_not_fit_are_named(model: torch.nn.Module) -> None:
    arch = read_arch(model)
    tensors = dict(model.state_dict())
    tensors["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"model.layers.1.mlp.up_proj.weight has shape \(3, 3\)"):
        check_tensors(arch, tensors)
    tensors = dict(model.state_dict())
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    with pytest.raises(ValueError, match=r"model\.norm\.weight is not a finite"):
        check_tensors(arch, tensors)
    del tensors["model.embed_tokens.weight"]
    with pytest.raises(ValueError, match="missing"):
        check_tensors(arch, tensors)


def test_unsupported_architecture_is_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(InvalidArgument, match="not supported"):
        read_arch(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256)))


def _batch(n: int, temperature: float, top_k: int = 0, top_p: float = 2.0, key: int = 7) -> SamplerBatch:
    return SamplerBatch(
        temperature=torch.full((n,), temperature),
        top_k=torch.full((n,), top_k, dtype=torch.int64),
        top_p=torch.full((n,), top_p),
        keys=torch.full((n,), key, dtype=torch.int64),
        counters=torch.arange(n, dtype=torch.int64),
        any_top_k=top_k > 0,
        any_top_p=top_p < 1,
        all_greedy=temperature == 0,
    )


def test_sampler_follows_the_distribution_and_its_truncations() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    n = 20000
    rows = logits.expand(n, 4)
    tokens, logprobs = sample(rows, _batch(n, 1.0))
    freq = torch.bincount(tokens, minlength=4).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    torch.testing.assert_close(logprobs, logits[tokens], atol=1e-5, rtol=0)
    top2, _ = sample(rows, _batch(n, 1.0, top_k=2))
    assert set(top2.tolist()) == {0, 1}
    nucleus, _ = sample(rows, _batch(n, 1.0, top_p=0.7))
    assert set(nucleus.tolist()) == {0, 1}
    greedy, greedy_lp = sample(rows[:3], _batch(3, 0.0))
    assert greedy.tolist() == [0, 0, 0]
    torch.testing.assert_close(greedy_lp, logits[[0, 0, 0]], atol=1e-5, rtol=0)
    # A low temperature sharpens; the recorded log-prob is that of the tempered distribution.
    cold, cold_lp = sample(rows, _batch(n, 0.25))
    assert (cold == 0).float().mean() > 0.85
    torch.testing.assert_close(cold_lp, torch.log_softmax(logits / 0.25, -1)[cold], atol=1e-5, rtol=0)


def test_sampler_noise_depends_only_on_key_and_position() -> None:
    logits = torch.randn(6, 256)
    a, _ = sample(logits, _batch(6, 1.0, key=11))
    b, _ = sample(logits, _batch(6, 1.0, key=11))
    c, _ = sample(logits, _batch(6, 1.0, key=12))
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    # Row 3 alone, at its own position, samples what it sampled inside the batch.
    alone = _batch(1, 1.0, key=11)
    alone.counters = torch.tensor([3])
    single, _ = sample(logits[3:4], alone)
    assert single.item() == a[3].item()


def test_flops_count_every_matrix_and_the_attention_over_the_context() -> None:
    model = build_model(json.dumps(GQA_CONFIG), seed=1)
    arch = read_arch(model)
    dec = Decoder(arch, KVCache(arch, 1, 32))
    # One token with no context multiplies by every Linear weight (projections, MLP, untied LM head) once.
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert dec.flops(1, 0) == 2 * weights
    # Each layer's scores and weighted values: a multiply-add per query feature and context position, twice.
    assert dec.flops(1, 10) - dec.flops(1, 0) == 2 * 2 * 2 * 64 * 10
    assert dec.flops(8, 10) == 8 * dec.flops(1, 10)
