"""The main job's spec: one YAML file with defaults, parsed into a frozen dataclass, checked by field.

A spec names the model, the task, the algorithm and its coefficients, the streaming settings
(completion ratio alpha, staleness bound η), the trainer ranks, the rollout servers, the time budget and
the evaluation. Every field has a default (``deploy/jobs/default.yaml`` writes them all out); a bad
field is refused with its dotted name and value: ``rollout.completion_ratio=1.5: must be in (0, 1]``.

From the spec come the three things the services are handed: the data plane's mixture (RL mode), the
trainer's run config and the rollout servers' StartRollout settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.errors import InvalidArgument
from services.trainer import task as tasks
from services.trainer.spec import RunSpec, build_dataclass

WEIGHTHUB_MODEL = "policy"
"""Name every version is published under in the weight hub."""


class JobSpecError(ValueError):
    """A spec that cannot run: the message names the field and the bad value."""


def _check(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise JobSpecError(f"{name}={value!r}: {why}")


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """The policy: the built-in Llama (vocabulary 256, char tokenizer) with optional overrides."""

    hidden_size: int = 0
    """Hidden width; 0 for the built-in 128."""
    num_hidden_layers: int = 0
    """Transformer layers; 0 for the built-in 4."""
    num_attention_heads: int = 0
    """Attention heads (also key/value heads); 0 for the built-in 4."""
    intermediate_size: int = 0
    """MLP width; 0 for the built-in 512."""

    def config_json(self) -> str:
        """The LlamaConfig overrides as JSON ("" for the built-in model), the same for trainer and rollout."""
        overrides: dict[str, int] = {}
        if self.hidden_size:
            overrides["hidden_size"] = self.hidden_size
        if self.num_hidden_layers:
            overrides["num_hidden_layers"] = self.num_hidden_layers
        if self.num_attention_heads:
            overrides["num_attention_heads"] = overrides["num_key_value_heads"] = self.num_attention_heads
        if self.intermediate_size:
            overrides["intermediate_size"] = self.intermediate_size
        return json.dumps(overrides, sort_keys=True) if overrides else ""


@dataclass(frozen=True, kw_only=True)
class TaskSection:
    """The generated arithmetic task: worked answers for the warm start only; RL prompts carry a verifier."""

    num_terms: int = 3
    """Operands per problem (the fewest, with ``max_terms``)."""
    max_terms: int = 0
    """Most operands per problem; above ``num_terms`` each extra operand is half as likely as one fewer:
    a long tail of answer lengths, as reasoning answers have. 0 for ``num_terms`` (all alike). The
    built-in 4-layer model does not learn the longer sums in the default warm start: 3..8 terms reach
    9-15 % held-out accuracy after 400-1600 steps where 3 terms alone reach 47 %; a larger model
    (``model``) and warm start are for that."""
    max_value: int = 9
    """Largest operand."""
    ops: str = "+"
    """Operations drawn from (a subset of ``+-*``, evaluated left to right)."""
    num_warm_start: int = 300
    """Problems with worked answers (the supervised warm-start set)."""
    num_eval: int = 200
    """Held-out problems."""
    num_rl_prompts: int = 20000
    """RL prompts written for the data plane (it cycles through them)."""


@dataclass(frozen=True, kw_only=True)
class AlgorithmSection:
    """The RL algorithm and its coefficients."""

    name: str = "dapo"
    """``grpo``, ``dapo`` or ``vapo``."""
    learning_rate: float = 2e-4
    """Policy learning rate."""
    clip_epsilon_low: float = 0.2
    """Lower clip range."""
    clip_epsilon_high: float = 0.28
    """Upper clip range (above the lower one: DAPO's clip-higher)."""
    kl_coef: float = 0.0
    """KL penalty to the warm-started policy; 0 for none."""
    entropy_coef: float = 0.0
    """Entropy bonus."""
    max_importance_weight: float = 2.0
    """Truncation of the off-policy importance weight; 0 for none."""
    dynamic_sampling: bool = True
    """Drop groups whose answers all got the same reward (the data plane backfills)."""
    overlong_buffer_tokens: int = 2
    """DAPO's soft overlong-penalty interval before the token limit."""
    value_learning_rate: float = 1e-3
    """VAPO: learning rate of the value model."""
    positive_lm_loss_coef: float = 0.1
    """VAPO: coefficient μ of the LM loss on correct answers."""
    ppo_epochs: int = 1
    """PPO passes over each batch (later passes clip against the policy before the batch)."""
    mini_batch_size: int = 0
    """Answers per optimiser step over all ranks (a batch is split into shuffled mini-batches); 0 for the
    whole batch. One version is published per batch."""


@dataclass(frozen=True, kw_only=True)
class WarmStartSection:
    """The supervised warm start on the worked answers."""

    num_steps: int = 400
    """Optimiser steps; 0 to skip."""
    learning_rate: float = 3e-3
    """Learning rate."""
    batch_size: int = 32
    """Problems per step over all ranks."""


@dataclass(frozen=True, kw_only=True)
class TrainerSection:
    """The trainer's ranks and steps."""

    num_ranks: int = 2
    """Data-parallel ranks (torch.distributed, gloo on CPU)."""
    num_threads: int = 1
    """Torch threads per rank."""
    prompts_per_step: int = 16
    """Prompts per RL step over all ranks."""
    group_size: int = 8
    """Answers per prompt (the group)."""
    max_steps: int = 100000
    """Most RL steps (the time budget usually ends RL first)."""
    rl_time_budget_s: float = 300.0
    """Wall time of the RL stage, after the warm start."""
    checkpoint_every_steps: int = 10
    """A checkpoint after the warm start and every this many RL steps: a crashed or hung run resumes from it."""
    max_restarts: int = 2
    """Most times the job restarts a crashed or hung trainer run from its last checkpoint."""


@dataclass(frozen=True, kw_only=True)
class RolloutSection:
    """The rollout servers and streaming settings."""

    num_servers: int = 2
    """Rollout server processes; 0 for synchronous RL: the trainer's ranks generate each batch with the
    policy they train and wait for all of it (alpha 1, no version lag), the rollout servers unused."""
    completion_ratio: float = 0.75
    """alpha: a round closes when this fraction of its answers is done; the rest continue later."""
    max_staleness_versions: int = 2
    """η: answers older than this many versions are dropped (data plane) or restarted (rollout)."""
    prompts_per_round: int = 8
    """Prompts a server draws per round."""
    temperature: float = 1.0
    """Sampling temperature."""
    max_new_tokens: int = 8
    """Most tokens per answer."""
    buffered_batches: int = 1
    """The data plane's experience buffer, in training batches (ready or in flight; one group more):
    rollout servers back off while it is full. With 1 the next batch is made while the trainer trains on
    this one: about 80 % of the samples are 1 version old, none is dropped as stale, and 77-83 % of the
    answers generated are trained on (the rest are groups whose answers all scored alike). A deeper
    buffer runs further ahead of the trainer, at the cost of staler samples and wasted generation: with
    2, 65-77 % were 2 versions old, about 10 % of the answers were dropped as stale and 67-70 % trained
    on; with 4, 89 % were 2 versions old. After a crash the prompts that were out at the restored
    checkpoint are handed out again at once, so even a 1-batch buffer refills."""


@dataclass(frozen=True, kw_only=True)
class EvalSection:
    """Held-out greedy accuracy."""

    every_steps: int = 10
    """Evaluate every this many RL steps (and before and after RL)."""
    num_prompts: int = 200
    """Held-out prompts evaluated."""


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One RL job on the local stack."""

    name: str = "arithmetic-dapo"
    """Job name (shown in the report)."""
    seed: int = 0
    """Seed of model, data and sampling."""
    time_budget_s: float = 840.0
    """Hard wall-time limit of the whole job, start-up included: the run is stopped at this point."""
    startup_timeout_s: float = 180.0
    """How long the services get to become SERVING."""
    model: ModelSection = field(default_factory=ModelSection)
    """The policy model."""
    task: TaskSection = field(default_factory=TaskSection)
    """The task."""
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    """The RL algorithm."""
    warm_start: WarmStartSection = field(default_factory=WarmStartSection)
    """The supervised warm start."""
    trainer: TrainerSection = field(default_factory=TrainerSection)
    """The trainer."""
    rollout: RolloutSection = field(default_factory=RolloutSection)
    """The rollout servers."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Evaluation."""

    def __post_init__(self) -> None:
        _check(bool(self.name.strip()), "name", self.name, "must not be empty")
        _check(self.seed >= 0, "seed", self.seed, "must be >= 0")
        _check(
            math.isfinite(self.time_budget_s) and self.time_budget_s > 0,
            "time_budget_s",
            self.time_budget_s,
            "must be > 0",
        )
        _check(self.startup_timeout_s > 0, "startup_timeout_s", self.startup_timeout_s, "must be > 0")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            _check(
                getattr(self.model, key) >= 0, f"model.{key}", getattr(self.model, key), "must be >= 0 (0: built-in)"
            )
        if self.model.hidden_size and self.model.num_attention_heads:
            _check(
                self.model.hidden_size % self.model.num_attention_heads == 0,
                "model.hidden_size",
                self.model.hidden_size,
                "must be a multiple of model.num_attention_heads",
            )
        t = self.task
        _check(t.num_rl_prompts >= 1, "task.num_rl_prompts", t.num_rl_prompts, "must be >= 1")
        tr = self.trainer
        _check(1 <= tr.num_ranks <= 64, "trainer.num_ranks", tr.num_ranks, "must be in 1..64")
        _check(tr.rl_time_budget_s > 0, "trainer.rl_time_budget_s", tr.rl_time_budget_s, "must be > 0")
        _check(
            tr.checkpoint_every_steps >= 1, "trainer.checkpoint_every_steps", tr.checkpoint_every_steps, "must be >= 1"
        )
        _check(0 <= tr.max_restarts <= 10, "trainer.max_restarts", tr.max_restarts, "must be in 0..10")
        _check(
            tr.rl_time_budget_s < self.time_budget_s,
            "trainer.rl_time_budget_s",
            tr.rl_time_budget_s,
            f"must be below time_budget_s ({self.time_budget_s:g}), which also covers start-up and warm start",
        )
        r = self.rollout
        _check(
            0 <= r.num_servers <= 16,
            "rollout.num_servers",
            r.num_servers,
            "must be in 0..16 (0: the trainer generates)",
        )
        _check(1 <= r.buffered_batches <= 64, "rollout.buffered_batches", r.buffered_batches, "must be in 1..64")
        _check(0 < r.completion_ratio <= 1, "rollout.completion_ratio", r.completion_ratio, "must be in (0, 1]")
        _check(
            r.max_staleness_versions >= 1, "rollout.max_staleness_versions", r.max_staleness_versions, "must be >= 1"
        )
        _check(1 <= r.prompts_per_round <= 256, "rollout.prompts_per_round", r.prompts_per_round, "must be in 1..256")
        _check(
            r.prompts_per_round * tr.group_size <= 4096,
            "rollout.prompts_per_round",
            r.prompts_per_round,
            f"times trainer.group_size ({tr.group_size}) must be <= 4096 sequences",
        )
        _check(
            self.eval.num_prompts <= t.num_eval,
            "eval.num_prompts",
            self.eval.num_prompts,
            f"must be <= task.num_eval ({t.num_eval})",
        )
        # What the trainer runs (algorithm, coefficients, batch sizes, ranks...) is checked by the trainer's
        # own run config, the one source of truth, with its fields named as this spec names them. Built
        # without a plan, it also checks the mini-batch against the batch the plan will serve.
        try:
            task = tasks.TaskSpec(
                num_terms=t.num_terms,
                max_terms=t.max_terms,
                max_value=t.max_value,
                ops=t.ops,
                num_warm_start=t.num_warm_start,
                num_eval=t.num_eval,
            )
            self.run_config(plan_id="")
        except InvalidArgument as exc:
            raise JobSpecError(_trainer_field(exc.message if hasattr(exc, "message") else str(exc))) from None
        longest = tasks.max_answer_tokens(task)
        _check(
            r.max_new_tokens >= longest,
            "rollout.max_new_tokens",
            r.max_new_tokens,
            f"must be >= {longest}, the longest worked answer of the task (with its newline)",
        )

    def run_config(self, *, plan_id: str) -> RunSpec:
        """The trainer's run config: warm start, then RL on the data plane's batches, publishing each version."""
        a, r, tr = self.algorithm, self.rollout, self.trainer
        return RunSpec.from_dict(
            {
                "algorithm": a.name,
                "model": {"config_json": self.model.config_json()},
                "task": {
                    "num_terms": self.task.num_terms,
                    "max_terms": self.task.max_terms,
                    "max_value": self.task.max_value,
                    "ops": self.task.ops,
                    "num_warm_start": self.task.num_warm_start,
                    "num_eval": self.task.num_eval,
                },
                "num_ranks": tr.num_ranks,
                "device": "cpu",
                "seed": self.seed,
                "num_steps": tr.max_steps,
                "time_budget_s": tr.rl_time_budget_s,
                "num_threads": tr.num_threads,
                "checkpoint": {"every_steps": tr.checkpoint_every_steps},
                "ppo_epochs": a.ppo_epochs,
                "mini_batch_size": a.mini_batch_size,
                "dataplane_plan_id": plan_id,
                "weighthub_model": WEIGHTHUB_MODEL,
                "rollout": {
                    "prompts_per_step": tr.prompts_per_step,
                    "group_size": tr.group_size,
                    "max_new_tokens": r.max_new_tokens,
                    "temperature": r.temperature,
                    "colocated": r.num_servers == 0,
                },
                "optimizer": {"learning_rate": a.learning_rate},
                "policy_loss": {
                    "clip_epsilon_low": a.clip_epsilon_low,
                    "clip_epsilon_high": a.clip_epsilon_high,
                    "kl_coef": a.kl_coef,
                    "entropy_coef": a.entropy_coef,
                    "max_importance_weight": a.max_importance_weight,
                },
                "dapo": {
                    "max_completion_tokens": r.max_new_tokens,
                    "overlong_buffer_tokens": min(a.overlong_buffer_tokens, r.max_new_tokens),
                    "dynamic_sampling": a.dynamic_sampling,
                },
                "vapo": {
                    "value_learning_rate": a.value_learning_rate,
                    "positive_lm_loss_coef": a.positive_lm_loss_coef,
                },
                "warm_start": self.warm_start.__dict__,
                "eval": {
                    "every_steps": self.eval.every_steps,
                    "num_prompts": self.eval.num_prompts,
                    "max_new_tokens": r.max_new_tokens,
                },
            }
        )

    def mixture_yaml(self, prompts_path: Path) -> str:
        """The data plane's RL plan: the task's RL prompts (file on disk), groups, η, dynamic sampling."""
        tr, r = self.trainer, self.rollout
        plan = {
            "sources": [
                {
                    "name": "arithmetic",
                    "format": "jsonl",
                    "path": str(prompts_path.resolve()),
                    "preprocessing": {"text_field": "text", "reference_field": "answer", "verifier": "arithmetic"},
                }
            ],
            "global_batch_size": tr.prompts_per_step * tr.group_size,
            "num_ranks": tr.num_ranks,
            "seed": self.seed,
            "tokenizer": "char",
            "rl": {
                "group_size": tr.group_size,
                "max_staleness_versions": r.max_staleness_versions,
                "dynamic_sampling": self.algorithm.dynamic_sampling,
                # One group more than whole batches: groups thinned by stale drops must never leave the
                # buffer full yet short of a batch (the rollout servers would wait on the trainer forever).
                "max_buffered_samples": r.buffered_batches * tr.prompts_per_step * tr.group_size + tr.group_size,
            },
        }
        return yaml.safe_dump(plan, sort_keys=False)

    def write_rl_prompts(self, path: Path) -> int:
        """The task's RL prompts as JSON Lines ({"text", "answer"}: the answer is for the verifier only)."""
        t = self.task
        spec = tasks.TaskSpec(
            num_terms=t.num_terms,
            max_terms=t.max_terms,
            max_value=t.max_value,
            ops=t.ops,
            num_warm_start=t.num_warm_start,
            num_eval=t.num_eval,
            seed=self.seed,
        )
        with path.open("w") as f:
            for i in range(t.num_rl_prompts):
                problem = tasks.make_problem(spec, "rl", i)
                f.write(json.dumps({"text": problem.prompt, "answer": str(problem.answer)}) + "\n")
        return t.num_rl_prompts

    def to_dict(self) -> dict[str, Any]:
        """Plain form (what the report records)."""
        import dataclasses

        return dataclasses.asdict(self)


def _trainer_field(message: str) -> str:
    """A trainer or task error, its field named as the job spec names it where the two differ."""
    renames = {
        "algorithm=": "algorithm.name=",
        "rollout.prompts_per_step": "trainer.prompts_per_step",
        "rollout.group_size": "trainer.group_size",
        "rollout.max_new_tokens": "rollout.max_new_tokens",
        "num_ranks": "trainer.num_ranks",
        "optimizer.learning_rate": "algorithm.learning_rate",
        "policy_loss.": "algorithm.",
        "num_threads": "trainer.num_threads",
        "num_steps": "trainer.max_steps",
        "ppo_epochs": "algorithm.ppo_epochs",
        "mini_batch_size": "algorithm.mini_batch_size",
    }
    for old, new in renames.items():
        if message.startswith(old):
            message = new + message[len(old) :]
            break
    # The batch the trainer's checks mention, as this spec names its parts.
    for old in ("rollout.prompts_per_step", "rollout.group_size"):
        message = message.replace(old, renames[old])
    return message


def parse_job_spec(data: Any, source: str = "job spec") -> JobSpec:
    """A checked JobSpec from a mapping; JobSpecError names the field of anything wrong."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise JobSpecError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        spec = build_dataclass(JobSpec, data)
    except InvalidArgument as exc:
        raise JobSpecError(str(exc.message if hasattr(exc, "message") else exc)) from None
    assert isinstance(spec, JobSpec)
    return spec


def load_job_spec(path: Path) -> JobSpec:
    """The spec in a YAML file; JobSpecError for a missing file, bad YAML or a bad field."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobSpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise JobSpecError(f"{path}: not YAML: {str(exc).splitlines()[0]}") from None
    return parse_job_spec(data, str(path))
