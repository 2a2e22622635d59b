"""One rank's loop: bad batches refused by name, NaN caught before the step, exact resume, bad checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from services.common.errors import InvalidArgument
from services.trainer.engine import Engine, TrainSample, check_samples
from services.trainer.spec import RunSpec
from services.trainer.status import StatusFile, read_status
from tests.unit.trainer.conftest import TINY_MODEL, tiny_spec


def good_sample(**changes: object) -> TrainSample:
    sample = TrainSample(
        prompt_ids=[1, 2], completion_ids=[3, 10], behaviour_logprobs=[-0.1, -0.2], reward=1.0, group_id="g"
    )
    for key, value in changes.items():
        setattr(sample, key, value)
    return sample


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"behaviour_logprobs": [-0.1]}, "samples[1].behaviour_logprobs: 1 log-probs for 2 completion tokens"),
        ({"reward": math.nan}, "samples[1].reward=nan"),
        ({"reward": 2.0}, "samples[1].reward=2.0"),
        ({"completion_ids": []}, "samples[1].completion_token_ids"),
        ({"behaviour_logprobs": [math.nan, -0.1]}, "samples[1].behaviour_logprobs"),
    ],
)
def test_a_malformed_batch_is_refused_naming_the_sample_and_field(changes: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_samples([good_sample(), good_sample(**changes)])
    assert needle in err.value.message


def test_a_nan_loss_is_caught_before_the_optimizer_step_and_reported(tmp_path: Path) -> None:
    status = StatusFile(tmp_path)
    engine = Engine(RunSpec.from_dict(tiny_spec()), reporter=status)
    samples = engine.collect_colocated(0)
    samples[0].reward, samples[1].reward = 1.0, 0.0
    with torch.no_grad():
        engine.model.model.norm.weight[0] = math.nan
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    metrics = engine.train_on(samples)
    assert metrics["applied"] == 0.0
    after = engine.model.state_dict()
    for name, tensor in before.items():
        assert torch.equal(tensor.nan_to_num(7.0), after[name].nan_to_num(7.0)), name
    assert not engine.optimizer.state  # AdamW never stepped
    reported = read_status(tmp_path)
    assert reported["num_skipped_steps"] == 1 and "before the optimizer step" in reported["last_skip_reason"]


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "vapo"])
def test_resume_from_a_checkpoint_gives_the_same_next_step(tmp_path: Path, algorithm: str) -> None:
    spec = RunSpec.from_dict(
        tiny_spec(algorithm=algorithm, vapo={"value_pretrain_steps": 1}, policy_loss={"kl_coef": 0.1})
    )
    first = Engine(spec, checkpoint_dir=tmp_path)
    first.warm_start()
    first.freeze_reference()
    for _ in range(2):
        first.rl_step()
        first.step += 1
        first.publish()
    path = first.save_checkpoint(first.checkpoint_path(first.step))
    cursor = first.prompt_cursor
    expected = first.rl_step()
    resumed = Engine(spec)
    resumed.load_checkpoint(path)
    assert (resumed.step, resumed.version, resumed.prompt_cursor) == (2, 2, cursor)
    got = resumed.rl_step()
    for key in ("reward_mean", "policy_loss", "value_loss", "entropy", "grad_norm", "num_tokens"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    for name, tensor in first.model.state_dict().items():
        assert torch.allclose(tensor, resumed.model.state_dict()[name], atol=1e-6), name


def test_a_checkpoint_of_another_model_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    engine = Engine(RunSpec.from_dict(tiny_spec()), checkpoint_dir=tmp_path)
    path = engine.save_checkpoint(engine.checkpoint_path(0))
    wider = TINY_MODEL.replace('"hidden_size": 32', '"hidden_size": 64')
    other = Engine(RunSpec.from_dict(tiny_spec(model={"config_json": wider})))
    with pytest.raises(InvalidArgument) as err:
        other.load_checkpoint(path)
    assert "checkpoint.resume_from" in err.value.message and "has shape" in err.value.message
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidArgument, match=r"checkpoint\.resume_from"):
        other.load_checkpoint(tmp_path / "junk.pt")


def test_dapo_dynamic_sampling_keeps_only_groups_with_a_signal() -> None:
    engine = Engine(RunSpec.from_dict(tiny_spec(algorithm="dapo")))
    engine.warm_start(num_steps=30)
    samples = engine.collect_colocated(0)
    groups: dict[str, set[float]] = {}
    for s in samples:
        groups.setdefault(s.group_id, set()).add(s.reward)
    assert all(len(rewards) > 1 for rewards in groups.values())
    # Up to DYNAMIC_SAMPLING_MAX_ROUNDS rounds of 4 prompts were drawn to fill the step.
    assert engine.prompt_cursor in (4, 8, 12, 16)


def test_bad_run_configs_name_the_field() -> None:
    for data, needle in (
        ({"algorithm": "ppo"}, "algorithm='ppo': unknown"),
        ({"policy_loss": {"clip_epsilon_low": 1.5}}, "policy_loss.clip_epsilon_low"),
        ({"vapo": {"gae_lambda_policy": -0.1}}, "vapo.gae_lambda_policy"),
        ({"rollout": {"prompts_per_step": 3}, "num_ranks": 2}, "rollout.prompts_per_step"),
        ({"optimizer": {"learning_rate": "fast"}}, "optimizer.learning_rate"),
        ({"colour": "red"}, "colour: unknown field"),
    ):
        with pytest.raises(InvalidArgument) as err:
            RunSpec.from_dict(data)
        assert needle in err.value.message


def test_a_poisoned_step_is_owned_by_this_rank_and_reported_under_its_own_number(tmp_path: Path) -> None:
    status = StatusFile(tmp_path)
    engine = Engine(RunSpec.from_dict(tiny_spec(algorithm="grpo")), reporter=status)
    clean = engine.advance()
    assert clean["applied"] == 1.0 and clean["local_nonfinite"] == 0.0
    engine.poison_next_loss = True
    poisoned = engine.advance()
    assert poisoned["applied"] == 0.0 and poisoned["local_nonfinite"] == 1.0
    # The figures a rank reports for a step it did not apply are its own, finite where they were.
    assert math.isfinite(poisoned["local_grad_norm"]) and math.isfinite(poisoned["local_policy_loss"])
    reported = read_status(tmp_path)
    assert reported["skipped_steps"] == [2] and reported["last_skip_reason"].startswith("step 2: non-finite")


def test_a_resumed_run_drops_the_batches_before_skip_data_until_step(tmp_path: Path) -> None:
    spec = RunSpec.from_dict(tiny_spec(algorithm="grpo", warm_start={"num_steps": 0}))
    first = Engine(spec, checkpoint_dir=tmp_path)
    first.advance()
    path = first.save_checkpoint(first.checkpoint_path(first.step))
    version = first.version
    resumed_spec = RunSpec.from_dict(
        tiny_spec(
            algorithm="grpo",
            warm_start={"num_steps": 0},
            num_steps=4,
            checkpoint={"resume_from": str(path), "skip_data_until_step": 4},
        )
    )
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    resumed = Engine(resumed_spec, reporter=StatusFile(run_dir))
    trained: list[int] = []
    skipped: list[int] = []
    assert resumed.run(on_step=lambda step, _: trained.append(step), on_skipped_step=skipped.append) == "COMPLETED"
    # Steps 2 and 3 drew their batches and dropped them; step 4 trained on the batch after them.
    assert skipped == [2, 3] and trained == [4]
    assert resumed.prompt_cursor == 4 * spec.rollout.prompts_per_step
    assert resumed.version == version + 1  # only the trained step made a version
    reported = read_status(run_dir)
    assert reported["num_skipped_steps"] == 2 and reported["skipped_steps"] == [2, 3] and reported["step"] == 4
    assert "step 3: batch dropped" in reported["last_skip_reason"]


class _Recorder:
    """A reporter and weight sink that keep what the run told them, in order."""

    def __init__(self, hub_latest: int) -> None:
        self.hub_latest = hub_latest
        self.events: list[tuple[str, object]] = []

    def state(self, state: str, reason: str = "") -> None:
        self.events.append(("state", state))

    def step(self, step: int, metrics: dict[str, float]) -> None:
        self.events.append(("step", step))

    def evaluation(self, step: int, accuracy: float, num_prompts: int) -> None:
        self.events.append(("evaluation", step))

    def skipped(self, step: int, reason: str) -> None:
        self.events.append(("skipped", step))

    def published(self, version: int) -> None:
        self.events.append(("published", version))

    def checkpointed(self, path: str) -> None:
        self.events.append(("checkpointed", Path(path).name))

    def latest_version(self) -> int:
        return self.hub_latest

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None:
        self.hub_latest = max(self.hub_latest, version)


@pytest.mark.parametrize(("hub_latest", "first_version"), [(2, 3), (5, 6)])
def test_a_resumed_run_checkpoints_at_once_and_serves_its_own_weights(
    tmp_path: Path, hub_latest: int, first_version: int
) -> None:
    spec = RunSpec.from_dict(tiny_spec(algorithm="grpo", warm_start={"num_steps": 0}))
    first = Engine(spec, checkpoint_dir=tmp_path / "first")
    first.advance()
    first.advance()
    path = first.save_checkpoint(first.checkpoint_path(first.step))
    assert (first.step, first.version) == (2, 2)
    resumed_spec = RunSpec.from_dict(
        tiny_spec(
            algorithm="grpo",
            warm_start={"num_steps": 0},
            num_steps=3,
            checkpoint={"resume_from": str(path), "every_steps": 10},
        )
    )
    recorder = _Recorder(hub_latest)
    resumed = Engine(resumed_spec, reporter=recorder, sink=recorder, checkpoint_dir=tmp_path / "second")
    assert resumed.run() == "COMPLETED"
    # Its own checkpoint of the resumed step comes first: a crash before step 10 resumes from it, in
    # this run's directory, instead of from the other run's checkpoint (and its data-plane cursor).
    assert recorder.events[0] == ("checkpointed", "step-000002.pt")
    assert (tmp_path / "second" / "step-000002.pt").exists()
    published = [v for kind, v in recorder.events if kind == "published"]
    if hub_latest > first.version:
        # Versions 3..5 came from steps the crash lost: the resumed weights go out as version 6 at once,
        # so that rollout servers stop serving weights the run no longer has; step 3 then makes 7.
        assert published == [first_version, first_version + 1]
    else:
        assert published == [first_version]  # the hub serves the checkpoint's weights already
    assert recorder.events.index(("step", 3)) > recorder.events.index(("checkpointed", "step-000002.pt"))


def test_a_new_run_on_a_model_with_versions_publishes_after_them() -> None:
    # An earlier job on the same stack published versions 1..7 of the model: this run's weights go out
    # as 8 at once (rollout servers follow only newer versions), never as a second version 1.
    recorder = _Recorder(7)
    spec = RunSpec.from_dict(tiny_spec(algorithm="grpo", warm_start={"num_steps": 0}, num_steps=1))
    assert Engine(spec, reporter=recorder, sink=recorder).run() == "COMPLETED"
    assert [v for kind, v in recorder.events if kind == "published"] == [8, 9]
