"""Batched sampling with a KV cache, recording each token's behaviour log-probability.

The ranks' own generation (colocated rollouts and greedy evaluation). On CPU it runs the rollout
server's decode path (``services.rollout.decoder``: fused projections over a preallocated cache, a
few torch calls per layer and step): one batched forward prefills the distinct prompts (a group's
samples share theirs), then one batched decode step per new token. Elsewhere (CUDA, or an
architecture that path does not run) Hugging Face's model with its own cache does the same. Finished
sequences keep stepping with the batch (answers here are a few tokens; compaction would cost more).
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
            return _sample_fast(model, arch, weights, prompts, max_new_tokens, eos_id, temperature, greedy, generator)
    return _sample_hf(model, prompts, max_new_tokens, eos_id, pad_id, temperature, greedy, generator, "cpu")


def _sample_fast(
    model: torch.nn.Module,
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
    _prefill(model, cache, [p[:-1] for p in prompts])
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
    done = torch.zeros(batch, dtype=torch.bool)
    steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for step in range(max_new_tokens):
        logits = decoder.step(weights, tokens, positions, int(positions.max()) + 1)
        sampler.counters.fill_(step)
        tokens, logprobs = fast.sample(logits, sampler)
        steps.append((tokens, logprobs, ~done))
        done = done | (tokens == eos_id)
        if bool(done.all()):
            break
        positions = positions + 1
    return _collect(steps, eos_id)


def _prefill(model: torch.nn.Module, cache: fast.KVCache, contexts: Sequence[Sequence[int]]) -> None:
    """Keys and values of ``contexts[i]`` (positions 0..) into slot i: one batched forward over the
    distinct contexts, each then shifted from its left padding to the start of every slot that shares it."""
    rows: dict[tuple[int, ...], int] = {}
    owner = torch.tensor([rows.setdefault(tuple(c), len(rows)) for c in contexts])
    lengths = torch.tensor([len(c) for c in rows])
    width = int(lengths.max())
    if width == 0:
        return
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, c in enumerate(rows):
        if c:
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    shift = ((width - lengths)[:, None] + torch.arange(width)[None, :]).clamp(max=width - 1)
    index = shift[:, None, :, None]
    for layer, keys, values in zip(out.cache.layers, cache.keys, cache.values, strict=True):
        gather = index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        keys[:, :, :width] = layer.keys.gather(2, gather)[owner]
        values[:, :, :width] = layer.values.gather(2, gather)[owner]


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
    tok_m = torch.stack([s[0] for s in steps], 1).cpu()
    lp_m = torch.stack([s[1] for s in steps], 1).cpu()
    alive_m = torch.stack([s[2] for s in steps], 1).cpu()
    lengths = alive_m.sum(dim=1).tolist()
    tok_rows, lp_rows = tok_m.tolist(), lp_m.tolist()
    result = Generated([], [], [])
    for toks, lps, n in zip(tok_rows, lp_rows, lengths, strict=True):
        result.tokens.append(toks[:n])
        result.logprobs.append(lps[:n])
        result.finished.append(bool(n > 0 and toks[n - 1] == eos_id))
    return result
