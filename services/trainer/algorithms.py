"""The RL algorithms' arithmetic: advantages, reward shaping, GAE and the clipped policy loss.

Plain functions on tensors, shared by GRPO, DAPO and VAPO and tested against hand-computed values.
Shapes: ``B`` samples, ``T`` completion positions (right-padded), ``mask`` is 1.0 on real tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def grpo_advantages(rewards: torch.Tensor, group_ids: Sequence[str], eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages (r - mean_group) / (std_group + eps), population std (GRPO)."""
    if rewards.dim() != 1 or rewards.shape[0] != len(group_ids):
        raise ValueError(f"rewards of shape {tuple(rewards.shape)} for {len(group_ids)} group ids")
    out = torch.empty_like(rewards)
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        groups.setdefault(g, []).append(i)
    for members in groups.values():
        index = torch.tensor(members)
        r = rewards[index]
        out[index] = (r - r.mean()) / (r.std(unbiased=False) + eps)
    return out


def advantages_from_group_stats(
    rewards: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantages from per-sample group statistics (what the data plane attaches to a sample)."""
    return (rewards - means) / (stds + eps)


def overlong_penalty(lengths: torch.Tensor, max_tokens: int, buffer_tokens: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward (<= 0).

    0 up to ``max_tokens - buffer_tokens``; then falling linearly to ``-penalty`` at ``max_tokens``;
    ``-penalty`` beyond.
    """
    lengths = lengths.to(torch.float64)
    start = float(max_tokens - buffer_tokens)
    if buffer_tokens <= 0:
        shaped = torch.where(lengths > max_tokens, -1.0, 0.0)
    else:
        shaped = ((start - lengths) / buffer_tokens).clamp(min=-1.0, max=0.0)
    return (shaped * penalty).to(torch.float32)


def length_adaptive_lambda(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """VAPO's lambda_policy = 1 - 1 / (alpha * l), clamped to [0, 1].

    The paper's alpha = 0.05 is set for answers of hundreds of tokens: below 1 / alpha = 20 tokens it
    gives lambda <= 0. The task's alpha is rescaled to its answer lengths (the run config's
    ``length_adaptive_alpha``), and the clamp keeps the shortest answers at lambda = 0 (one-step TD)
    instead of a negative or undefined value.
    """
    if alpha <= 0:
        raise ValueError(f"alpha={alpha} must be > 0")
    lengths = lengths.to(torch.float32).clamp(min=1.0)
    return (1.0 - 1.0 / (alpha * lengths)).clamp(0.0, 1.0)


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation per sample; returns (advantages, returns), both (B, T).

    ``rewards`` and ``values`` are (B, T); positions past a sample's length (mask 0) count as the
    terminal state (value 0). ``lam`` is one number or one per sample (B,), as length-adaptive lambda
    gives. Returns are advantages + values: the critic's targets.
    """
    batch, length = rewards.shape
    lam_t = torch.as_tensor(lam, dtype=rewards.dtype).expand(batch) if not torch.is_tensor(lam) else lam
    lam_t = lam_t.to(rewards.dtype).expand(batch)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(batch, dtype=rewards.dtype)
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros(batch, dtype=rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam_t * running
        running = running * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def truncated_importance_weights(
    proximal_logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, max_weight: float
) -> torch.Tensor:
    """exp(proximal - behaviour) per token, truncated at ``max_weight`` (0: not truncated).

    The correction for samples from older versions and partial rollouts (decoupled PPO): the PPO
    ratio is taken against the trainer's proximal policy, this weight carries the rest of the way to
    the behaviour policy that sampled the token.
    """
    weights = torch.exp(proximal_logprobs - behaviour_logprobs)
    return weights.clamp(max=max_weight) if max_weight > 0 else weights


@dataclass
class PolicyLossTerms:
    """Per-token pieces of the clipped policy-gradient loss, before aggregation."""

    loss: torch.Tensor
    """(B, T) per-token loss (0 where mask is 0)."""
    clipped: torch.Tensor
    """(B, T) 1.0 where the clipped term was chosen, 0.0 otherwise."""


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    importance_weights: torch.Tensor | None = None,
) -> PolicyLossTerms:
    """-w * min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A) per token.

    ``clip_high > clip_low`` is DAPO's clip-higher. ``advantages`` is (B, T) or (B,) (one per sample).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logprobs)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    chose_clipped = (clipped < unclipped).to(logprobs.dtype)
    per_token = -torch.minimum(unclipped, clipped)
    if importance_weights is not None:
        per_token = per_token * importance_weights
    return PolicyLossTerms(loss=per_token * mask, clipped=chose_clipped * mask)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, token_level: bool, denominator: float) -> torch.Tensor:
    """Sum of the loss over this rank's share, scaled by the global ``denominator``.

    Token-level (DAPO, VAPO): every token weighs the same, ``denominator`` is the global token count.
    Sample-level (GRPO): each sample's mean over its tokens, ``denominator`` the global sample count.
    Summing gradients over ranks then gives the same update for any number of ranks.
    """
    if token_level:
        return per_token.sum() / denominator
    lengths = mask.sum(dim=1).clamp(min=1.0)
    return (per_token.sum(dim=1) / lengths).sum() / denominator


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference), the non-negative k3 estimator exp(d) - d - 1, d = ref - policy."""
    diff = ref_logprobs - logprobs
    return torch.exp(diff) - diff - 1.0


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's distribution, in nats; (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def positive_lm_loss(
    logprobs: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, threshold: float = 1.0
) -> torch.Tensor:
    """VAPO's language-model loss on positive samples: per-token NLL where the reward >= ``threshold``."""
    positive = (rewards >= threshold).to(logprobs.dtype)[:, None]
    return -(logprobs * mask * positive)
