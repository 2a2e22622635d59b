"""Batched sampling with a KV cache, recording each token's behaviour log-probability.

The ranks' own generation (colocated rollouts and greedy evaluation). One forward over the
left-padded prompts, then one cached forward per new token for the whole batch; finished sequences
keep stepping with padding (answers here are a few tokens, so compaction would cost more than it saves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
    batch = len(prompts)
    if batch == 0:
        return Generated([], [], [])
    width = max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    next_pos = positions[:, -1] + 1
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    logps: list[torch.Tensor] = []
    alive: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits.float() / (1.0 if greedy else temperature), dim=-1)
        if greedy:
            tok = logp.argmax(dim=-1)
        else:
            tok = torch.multinomial(logp.exp().cpu(), 1, generator=generator).squeeze(-1).to(device)
        alive.append(~done)
        tokens.append(tok)
        logps.append(logp.gather(-1, tok[:, None]).squeeze(-1))
        done = done | (tok == eos_id)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        next_pos = next_pos + 1
    tok_m = torch.stack(tokens, 1).cpu()
    lp_m = torch.stack(logps, 1).cpu()
    alive_m = torch.stack(alive, 1).cpu()
    result = Generated([], [], [])
    for i in range(batch):
        n = int(alive_m[i].sum())
        result.tokens.append(tok_m[i, :n].tolist())
        result.logprobs.append(lp_m[i, :n].tolist())
        result.finished.append(bool(n > 0 and tok_m[i, n - 1] == eos_id))
    return result
