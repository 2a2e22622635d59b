"""Batched sampling with a KV cache, recording each token's behaviour log-probability.

The ranks' own generation (colocated rollouts and greedy evaluation). On CPU it runs the rollout
server's decode path (``services.rollout.decoder``: fused projections over a preallocated cache, a
few torch calls per layer and step): its batched prefill runs the distinct prompts once (a group's
samples share theirs; the prefix all prompts share runs once too), then one batched decode step per
new token. Elsewhere (CUDA, or an architecture that path does not run) Hugging Face's model with its
own cache does the same. On CPU a finished sequence leaves the batch (its slot is filled from the end):
with a long tail of answer lengths the last steps run only the answers still being written, as a
continuous-batching server's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from services.common.errors import InvalidArgument
from services.rollout import decoder as fast

GENERATION_THREADS = 1
"""Torch threads while generating on CPU: a decode step is many small ops, where a second thread's
synchronisation costs more than it computes (and spins, on a shared machine); training keeps the rank's."""


@dataclass
class Generated:
    """Completions of a batch of prompts."""

    tokens: list[list[int]]
    """Completion token ids per sequence, up to and including EOS."""
    logprobs: list[list[float]]
    """Log-probability of each completion token under the sampling distribution."""
    finished: list[bool]
    """True when the sequence emitted EOS; False when it hit max_new_tokens."""


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Generated:
    """Sample (or decode greedily) up to ``max_new_tokens`` per prompt."""
    if not prompts:
        return Generated([], [], [])
    if torch.device(device).type != "cpu":
        return _sample_hf(model, prompts, max_new_tokens, eos_id, pad_id, temperature, greedy, generator, device)
    threads = torch.get_num_threads()
    torch.set_num_threads(GENERATION_THREADS)
    try:
        return _sample_cpu(model, prompts, max_new_tokens, eos_id, pad_id, temperature, greedy, generator)
    finally:
        torch.set_num_threads(threads)


def _sample_cpu(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float,
    greedy: bool,
    generator: torch.Generator | None,
) -> Generated:
    try:
        arch = fast.read_arch(model)
        weights = fast.prepare_weights(arch, model.state_dict())
    except (InvalidArgument, ValueError):
        pass  # an architecture the decode path does not run, or weights it refuses: the general path
    else:
        if max(len(p) for p in prompts) + max_new_tokens <= arch.max_positions:
            return _sample_fast(arch, weights, prompts, max_new_tokens, eos_id, temperature, greedy, generator)
    return _sample_hf(model, prompts, max_new_tokens, eos_id, pad_id, temperature, greedy, generator, "cpu")


def _sample_fast(
    arch: fast.Arch,
    weights: fast.Weights,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    temperature: float,
    greedy: bool,
    generator: torch.Generator | None,
) -> Generated:
    batch = len(prompts)
    cache = fast.KVCache(arch, batch, max(len(p) for p in prompts) + max_new_tokens)
    decoder = fast.Decoder(arch, cache)
    _prefill(decoder, weights, [p[:-1] for p in prompts])
    tokens = torch.tensor([p[-1] for p in prompts], dtype=torch.int64)
    positions = torch.tensor([len(p) - 1 for p in prompts], dtype=torch.int64)
    keys = (
        torch.zeros(batch, dtype=torch.int64)
        if greedy
        else torch.randint(0, 2**32, (batch,), dtype=torch.int64, generator=generator)
    )
    sampler = fast.SamplerBatch(
        temperature=torch.full((batch,), 0.0 if greedy else temperature),
        top_k=torch.zeros(batch, dtype=torch.int64),
        top_p=torch.ones(batch),
        keys=keys,
        counters=torch.zeros(batch, dtype=torch.int64),
        any_top_k=False,
        any_top_p=False,
        all_greedy=greedy,
    )
    rows = torch.arange(batch)  # the prompt each active slot holds: finished sequences leave the batch
    out_tokens = torch.full((batch, max_new_tokens), eos_id, dtype=torch.int64)
    out_logprobs = torch.zeros(batch, max_new_tokens)
    out_alive = torch.zeros(batch, max_new_tokens, dtype=torch.bool)
    for step in range(max_new_tokens):
        logits = decoder.step(weights, tokens, positions, int(positions.max()) + 1)
        sampler.counters.fill_(step)
        tokens, logprobs = fast.sample(logits, sampler)
        out_tokens[rows, step] = tokens
        out_logprobs[rows, step] = logprobs
        out_alive[rows, step] = True
        finished = tokens == eos_id
        if bool(finished.all()):
            break
        positions = positions + 1
        if bool(finished.any()):
            order = torch.tensor(cache.compact((~finished).tolist(), positions.tolist()))
            rows, tokens, positions = rows[order], tokens[order], positions[order]
            sampler.temperature, sampler.keys = sampler.temperature[order], sampler.keys[order]
            sampler.top_k, sampler.top_p = sampler.top_k[order], sampler.top_p[order]
            sampler.counters = sampler.counters[order]
    return _rows(out_tokens, out_logprobs, out_alive, eos_id)


def _prefill(decoder: fast.Decoder, weights: fast.Weights, contexts: Sequence[Sequence[int]]) -> None:
    """Keys and values of ``contexts[i]`` (positions 0..) into slot i: the distinct contexts through the
    decode path's batched prefill (the prefix every prompt shares, such as ``Compute ``, runs once), then
    copied to every other slot that shares one (a group's samples)."""
    first: dict[tuple[int, ...], int] = {}
    sources: list[tuple[int, int]] = []
    copies: list[tuple[int, int]] = []
    for slot, context in enumerate(contexts):
        owner = first.setdefault(tuple(context), slot)
        (sources if owner == slot else copies).append((owner, slot))
    decoder.prefill_many(weights, [contexts[slot] for _, slot in sources], [slot for _, slot in sources])
    if copies:
        width = max(len(c) for c in contexts)
        src = torch.tensor([owner for owner, _ in copies])
        dst = torch.tensor([slot for _, slot in copies])
        for keys, values in zip(decoder.cache.keys, decoder.cache.values, strict=True):
            keys[dst, :, :width] = keys[src, :, :width]
            values[dst, :, :width] = values[src, :, :width]


def _sample_hf(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float,
    greedy: bool,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> Generated:
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.cache
    logits = out.logits[:, -1, :]
    next_pos = positions[:, -1] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)
        if greedy:
            tok = logp.argmax(dim=-1)
        else:
            tok = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(-1).to(device)
        steps.append((tok, logp.gather(-1, tok[:, None]).squeeze(-1), ~done))
        done = done | (tok == eos_id)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            cache=cache,
            use_cache=True,
        )
        cache = out.cache
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    return _collect(steps, eos_id)


def _collect(steps: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], eos_id: int) -> Generated:
    tok_m, lp_m, alive_m = (torch.stack([s[i] for s in steps], 1).cpu() for i in range(3))
    return _rows(tok_m, lp_m, alive_m, eos_id)


def _rows(tok_m: torch.Tensor, lp_m: torch.Tensor, alive_m: torch.Tensor, eos_id: int) -> Generated:
    """Each sequence's completion from (B, steps) tokens, log-probabilities and alive flags."""
    lengths = alive_m.sum(dim=1).tolist()
    tok_rows, lp_rows = tok_m.tolist(), lp_m.tolist()
    result = Generated([], [], [])
    for toks, lps, n in zip(tok_rows, lp_rows, lengths, strict=True):
        result.tokens.append(toks[:n])
        result.logprobs.append(lps[:n])
        result.finished.append(bool(n > 0 and toks[n - 1] == eos_id))
    return result
