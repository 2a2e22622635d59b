"""PPO epochs and mini-batches: later passes take their ratio against the policy before the batch, so
the clip range bites; checked against a step-by-step reference computed here by hand."""

from __future__ import annotations

import pytest
import torch

from services.common.errors import InvalidArgument
from services.trainer.engine import Engine, TrainSample
from services.trainer.servicer import spec_from_proto, spec_to_proto
from services.trainer.spec import RunSpec
from tests.unit.trainer.conftest import tiny_spec


def sample_logprobs(model: torch.nn.Module, s: TrainSample) -> torch.Tensor:
    """Log-probs of the completion tokens of one sample, run alone (no padding, no shared prompt)."""
    ids = torch.tensor([s.prompt_ids + s.completion_ids])
    logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1)


def scored_batch(engine: Engine) -> list[TrainSample]:
    samples = engine.collect_colocated(0)
    for i, s in enumerate(samples):
        s.reward = float(i % 2)  # every group holds both rewards: non-zero advantages
    return samples


def hand_advantages(samples: list[TrainSample]) -> list[float]:
    out = []
    for s in samples:
        group = [x.reward for x in samples if x.group_id == s.group_id]
        mean = sum(group) / len(group)
        std = (sum((r - mean) ** 2 for r in group) / len(group)) ** 0.5
        out.append((s.reward - mean) / (std + 1e-6))
    return out


def test_the_second_epoch_clips_against_the_policy_before_the_batch() -> None:
    spec = RunSpec.from_dict(
        tiny_spec(ppo_epochs=2, optimizer={"learning_rate": 0.01, "max_grad_norm": 0.0}, warm_start={"num_steps": 0})
    )
    engine, reference = Engine(spec), Engine(spec)
    samples = scored_batch(engine)
    advantages = hand_advantages(samples)
    n = len(samples)
    # On-policy: the behaviour log-probs are the old policy's; a plain forward agrees with them.
    with torch.no_grad():
        for s in samples:
            assert torch.allclose(sample_logprobs(reference.model, s), torch.tensor(s.behaviour_logprobs), atol=1e-4)

    # By hand: GRPO, sample-level mean, clip 0.2 both ways, AdamW step after each epoch.
    ratios: list[torch.Tensor] = []
    clipped_tokens = 0.0
    for _ in range(2):
        loss = torch.zeros(())
        ratios = []
        for s, adv in zip(samples, advantages, strict=True):
            ratio = torch.exp(sample_logprobs(reference.model, s) - torch.tensor(s.behaviour_logprobs))
            unclipped, clipped = ratio * adv, ratio.clamp(0.8, 1.2) * adv
            clipped_tokens += float((clipped < unclipped).sum())
            loss = loss - torch.minimum(unclipped, clipped).mean() / n
            ratios.append(ratio.detach())
        loss.backward()
        reference.optimizer.step()
        reference.optimizer.zero_grad()

    metrics = engine.train_on(samples)
    assert metrics["num_optimizer_steps"] == 2 and metrics["applied"] == 1.0
    second = torch.cat(ratios)
    assert float((second - 1).abs().max()) > 0.2  # the first step moved the policy past the clip range
    num_tokens = sum(len(s.completion_ids) for s in samples)
    assert clipped_tokens > 0
    assert metrics["clip_fraction"] == pytest.approx(clipped_tokens / (2 * num_tokens), abs=1.5 / num_tokens)
    for name, tensor in reference.model.state_dict().items():
        assert torch.allclose(engine.model.state_dict()[name], tensor, atol=2e-4), name


def test_a_single_pass_keeps_the_ratio_at_one_and_mini_batches_step_once_each() -> None:
    whole = Engine(RunSpec.from_dict(tiny_spec(optimizer={"learning_rate": 0.01}, warm_start={"num_steps": 0})))
    metrics = whole.train_on(scored_batch(whole))
    assert metrics["num_optimizer_steps"] == 1 and metrics["clip_fraction"] == 0.0

    split = Engine(
        RunSpec.from_dict(
            tiny_spec(mini_batch_size=4, ppo_epochs=2, optimizer={"learning_rate": 0.01}, warm_start={"num_steps": 0})
        )
    )
    samples = scored_batch(split)
    metrics = split.train_on(samples)
    assert len(samples) == 16
    assert metrics["num_optimizer_steps"] == 8  # 2 epochs x 4 mini-batches of 4
    assert metrics["clip_fraction"] > 0  # later mini-batches see a policy moved by the earlier ones
    assert metrics["num_samples"] == 16 and metrics["applied"] == 1.0


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"ppo_epochs": 0}, "ppo_epochs=0: must be in 1..64"),
        ({"ppo_epochs": 65}, "ppo_epochs=65"),
        ({"mini_batch_size": -1}, "mini_batch_size=-1"),
        ({"mini_batch_size": 1, "num_ranks": 2, "rollout": {"prompts_per_step": 4}}, "mini_batch_size=1"),
        ({"mini_batch_size": 17}, "mini_batch_size=17: must be <= the batch"),
        ({"ppo_epochs": "two"}, "ppo_epochs='two'"),
    ],
)
def test_out_of_range_ppo_settings_name_the_field(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        RunSpec.from_dict(tiny_spec(**changes))
    assert needle in err.value.message


def test_ppo_settings_travel_in_the_run_config_both_ways() -> None:
    spec = RunSpec.from_dict(tiny_spec(ppo_epochs=3, mini_batch_size=8))
    assert RunSpec.from_dict(spec.to_dict()) == spec
    message = spec_to_proto(spec)
    assert message.ppo_epochs == 3 and message.mini_batch_size == 8
    assert spec_from_proto(message) == spec
    # Left at zero on the wire: the defaults (one pass over the whole batch).
    message.ClearField("ppo_epochs")
    message.ClearField("mini_batch_size")
    default = spec_from_proto(message)
    assert default.ppo_epochs == 1 and default.mini_batch_size == 0
    assert spec_to_proto(default).ppo_epochs == 1
    # And refused by name when out of range.
    message.ppo_epochs = 65
    with pytest.raises(InvalidArgument) as err:
        spec_from_proto(message)
    assert "ppo_epochs=65" in err.value.message
