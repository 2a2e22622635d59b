"""The algorithms' arithmetic against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from services.trainer import algorithms as alg


def test_grpo_advantages_are_normalised_within_each_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    adv = alg.grpo_advantages(rewards, ["a", "a", "a", "a", "b", "b"])
    # Group a: mean 0.25, population std sqrt(0.25 * 0.75) = 0.4330127.
    assert adv[:4].tolist() == pytest.approx([1.7320508, -0.5773503, -0.5773503, -0.5773503], abs=1e-5)
    # Group b has one reward only: no signal, advantage 0.
    assert adv[4:].tolist() == [0.0, 0.0]
    same = alg.advantages_from_group_stats(rewards[:4], torch.full((4,), 0.25), torch.full((4,), 0.4330127))
    assert same.tolist() == pytest.approx(adv[:4].tolist(), abs=1e-5)


def test_overlong_shaping_is_zero_then_linear_then_full_penalty() -> None:
    shaped = alg.overlong_penalty(torch.tensor([5, 6, 8, 10, 12]), max_tokens=10, buffer_tokens=4, penalty=1.0)
    assert shaped.tolist() == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    assert alg.overlong_penalty(torch.tensor([8]), 10, 4, penalty=0.5).tolist() == pytest.approx([-0.25])


def test_length_adaptive_lambda_clamps_short_answers() -> None:
    # alpha 0.05 (the paper's): 10 tokens would give 1 - 1/0.5 = -1, clamped to 0; 40 -> 0.5; 100 -> 0.8.
    lam = alg.length_adaptive_lambda(torch.tensor([10, 40, 100]), alpha=0.05)
    assert lam.tolist() == pytest.approx([0.0, 0.5, 0.8])
    # Rescaled to short answers: alpha 0.5 gives 0.5 at 4 tokens, 0.9 at 20.
    assert alg.length_adaptive_lambda(torch.tensor([4, 20]), alpha=0.5).tolist() == pytest.approx([0.5, 0.9])
    with pytest.raises(ValueError, match="alpha"):
        alg.length_adaptive_lambda(torch.tensor([4]), alpha=0.0)


def test_decoupled_gae_critic_lambda_one_is_monte_carlo_and_policy_lambda_discounts() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 0.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv_policy, _ = alg.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # Sample 0: deltas 0.1, 0.1, 0.3 -> A2 = 0.3, A1 = 0.1 + 0.95 * 0.3, A0 = 0.1 + 0.95 * 0.385.
    assert adv_policy[0].tolist() == pytest.approx([0.46575, 0.385, 0.3])
    # Sample 1 ends after 2 tokens: its padding's value (0.9) is ignored.
    assert adv_policy[1].tolist() == pytest.approx([0.48, 0.4, 0.0])
    adv_critic, returns = alg.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv_critic[0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    # lambda 1: the critic's targets are the Monte Carlo return (the final reward), unbiased.
    assert returns.flatten().tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    # Per-sample lambda (length-adaptive): sample 0 with 0 is one-step TD.
    per_sample, _ = alg.gae(rewards, values, mask, gamma=1.0, lam=torch.tensor([0.0, 0.95]))
    assert per_sample[0].tolist() == pytest.approx([0.1, 0.1, 0.3])


def test_clip_higher_lets_low_probability_tokens_rise_further() -> None:
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 1.25]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.ones(1, 4)
    dapo = alg.clipped_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert dapo.loss.tolist()[0] == pytest.approx([-1.28, 0.8, -1.1, -1.25])
    assert dapo.clipped.tolist()[0] == [1.0, 1.0, 0.0, 0.0]
    symmetric = alg.clipped_policy_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.2)
    assert symmetric.loss.tolist()[0] == pytest.approx([-1.2, 0.8, -1.1, -1.2])
    assert symmetric.clipped.tolist()[0] == [1.0, 1.0, 0.0, 1.0]


def test_token_level_and_sample_level_aggregation() -> None:
    per_token = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    # Token level: 5 / 4 tokens. Sample level: (2/1 + 3/3) / 2 samples.
    assert alg.aggregate(per_token, mask, token_level=True, denominator=4).item() == pytest.approx(1.25)
    assert alg.aggregate(per_token, mask, token_level=False, denominator=2).item() == pytest.approx(1.5)
    # Split over two ranks with the global denominator, the sums add up to the same loss.
    halves = [alg.aggregate(per_token[i : i + 1], mask[i : i + 1], True, 4).item() for i in range(2)]
    assert sum(halves) == pytest.approx(1.25)


def test_truncated_importance_weights_and_decoupled_loss() -> None:
    prox = torch.log(torch.tensor([[3.0, 0.5]]))
    behaviour = torch.zeros(1, 2)
    weights = alg.truncated_importance_weights(prox, behaviour, max_weight=2.0)
    assert weights.tolist()[0] == pytest.approx([2.0, 0.5])
    assert alg.truncated_importance_weights(prox, behaviour, 0.0).tolist()[0] == pytest.approx([3.0, 0.5])
    terms = alg.clipped_policy_loss(prox, prox, torch.tensor([1.0]), torch.ones(1, 2), 0.2, 0.2, weights)
    # Ratio against the proximal policy is 1; the weight scales each token's term.
    assert terms.loss.tolist()[0] == pytest.approx([-2.0, -0.5])


def test_kl_entropy_and_positive_lm_loss() -> None:
    kl = alg.kl_k3(torch.tensor([-1.0, -0.5]), torch.tensor([-2.0, -0.5]))
    assert kl.tolist() == pytest.approx([math.exp(-1.0), 0.0])
    uniform = torch.zeros(2, 4)
    assert alg.entropy_from_logits(uniform).tolist() == pytest.approx([math.log(4)] * 2)
    lm = alg.positive_lm_loss(torch.tensor([[-0.5, -1.0], [-2.0, -2.0]]), torch.ones(2, 2), torch.tensor([1.0, 0.0]))
    assert lm.flatten().tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0])
