"""A training run's configuration as the domain sees it, checked field by field.

Mirrors ``seedstack.trainer.v1.RunConfig``; every field has a default (what the service fills in for
a proto field left at zero). Errors name the field with its dotted path: ``policy_loss.kl_coef``.
The spec travels to the rank processes as JSON (``to_dict`` / ``from_dict``), which is also the file
a cluster user hands to ``torchrun -m services.trainer.rank --spec FILE``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

ALGORITHMS = ("grpo", "dapo", "vapo")
DEVICES = ("cpu", "cuda")


def _check(ok: bool, name: str, value: object, why: str) -> None:
    if not ok:
        raise InvalidArgument(f"{name}={value!r}: {why}")


def _finite(name: str, value: float, low: float = -math.inf, high: float = math.inf) -> None:
    _check(math.isfinite(value) and low <= value <= high, name, value, f"must be a finite number in [{low}, {high}]")


@dataclass(frozen=True, kw_only=True)
class ModelConf:
    """The policy model and tokenizer (``ModelSpec``)."""

    config_json: str = ""
    """Hugging Face LlamaConfig as JSON; empty for the built-in 4-layer, hidden-128 default."""
    checkpoint_path: str = ""
    """Local pretrained checkpoint directory; empty to build from ``config_json``."""
    tokenizer: str = "char"
    """Tokenizer name; only ``char`` is built in."""


@dataclass(frozen=True, kw_only=True)
class TaskConf:
    """The generated arithmetic task (see ``services.trainer.task``)."""

    num_terms: int = 2
    """Operands per problem (the fewest, with ``max_terms``)."""
    max_terms: int = 0
    """Most operands per problem, a long tail of answer lengths; 0 for ``num_terms``."""
    max_value: int = 99
    """Largest operand."""
    ops: str = "+"
    """Operations drawn from."""
    num_warm_start: int = 400
    """Problems with worked answers."""
    num_eval: int = 200
    """Held-out problems."""


@dataclass(frozen=True, kw_only=True)
class RolloutConf:
    """Generation by the ranks themselves (colocated), with the policy they train."""

    prompts_per_step: int = 16
    """Prompts per RL step over all ranks."""
    group_size: int = 8
    """Samples per prompt (the GRPO group)."""
    max_new_tokens: int = 8
    """Most tokens per answer."""
    temperature: float = 1.0
    """Sampling temperature."""
    colocated: bool = True
    """Ranks generate the samples they train on; with a data-plane plan they feed it through
    NextPrompts / PutSamples (standing in for rollout servers) before NextBatch."""


@dataclass(frozen=True, kw_only=True)
class OptimizerConf:
    """AdamW of the policy."""

    learning_rate: float = 5e-5
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm; 0 for none."""
    warmup_steps: int = 0
    """Linear warm-up steps."""


@dataclass(frozen=True, kw_only=True)
class PolicyLossConf:
    """The clipped policy-gradient loss."""

    clip_epsilon_low: float = 0.2
    """Lower clip range."""
    clip_epsilon_high: float = 0.2
    """Upper clip range (> low: clip-higher)."""
    token_level_loss: bool = False
    """Average over all tokens instead of per sample first."""
    kl_coef: float = 0.0
    """KL penalty to the warm-started reference; 0 for none."""
    entropy_coef: float = 0.0
    """Entropy bonus."""
    max_importance_weight: float = 2.0
    """Truncation of the proximal/behaviour importance weight; 0 for none."""


@dataclass(frozen=True, kw_only=True)
class DapoConf:
    """DAPO's dynamic sampling and overlong shaping."""

    max_completion_tokens: int = 8
    """Completions longer than this get the full penalty."""
    overlong_buffer_tokens: int = 2
    """Soft-penalty interval before ``max_completion_tokens``."""
    overlong_penalty: float = 1.0
    """Penalty at ``max_completion_tokens``."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal and draw more prompts to fill the step (colocated)."""


@dataclass(frozen=True, kw_only=True)
class VapoConf:
    """VAPO's value model and advantages."""

    value_learning_rate: float = 1e-3
    """Learning rate of the value model."""
    value_pretrain_steps: int = 5
    """RL steps that train only the value model, on the initial policy's samples."""
    gae_lambda_critic: float = 1.0
    """GAE lambda of the value targets."""
    gae_lambda_policy: float = 0.95
    """GAE lambda of the policy advantages when not length-adaptive."""
    length_adaptive_alpha: float = 0.5
    """Alpha of lambda = 1 - 1/(alpha l), rescaled to this task's short answers; 0 for fixed lambda."""
    positive_lm_loss_coef: float = 0.1
    """Coefficient mu of the LM loss on correct samples."""
    discount: float = 1.0
    """Discount gamma."""


@dataclass(frozen=True, kw_only=True)
class WarmStartConf:
    """The supervised warm start on the task's worked answers."""

    num_steps: int = 300
    """Supervised optimiser steps; 0 to skip."""
    learning_rate: float = 1e-3
    """Learning rate."""
    batch_size: int = 32
    """Problems per step over all ranks."""


@dataclass(frozen=True, kw_only=True)
class EvalConf:
    """Held-out greedy accuracy."""

    path: str = ""
    """JSON Lines file of prompts with "prompt" and "reference"; empty for the task's held-out set."""
    num_prompts: int = 0
    """Prompts evaluated (the first ones); 0 for all."""
    every_steps: int = 0
    """Evaluate every this many RL steps, and before the first and after the last."""
    max_new_tokens: int = 8
    """Most tokens per answer."""


@dataclass(frozen=True, kw_only=True)
class CheckpointConf:
    """Checkpoints of model, optimiser, RNG and data cursor."""

    dir: str = ""
    """Directory; empty for ``<run dir>/checkpoints``."""
    every_steps: int = 0
    """Write one every this many steps; 0 for only at the end of the run."""
    resume_from: str = ""
    """Checkpoint file to resume from (any number of ranks)."""
    skip_data_until_step: int = 0
    """After resuming, the batches of the RL steps before this one are drawn and dropped, not trained on
    (the data window that produced a NaN; the trainer service sets it when the robustness monitor rolls a
    run back); those steps count as skipped. 0 skips nothing."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything a run needs."""

    algorithm: str = "grpo"
    """``grpo``, ``dapo`` or ``vapo``."""
    model: ModelConf = field(default_factory=ModelConf)
    """Model and tokenizer."""
    task: TaskConf = field(default_factory=TaskConf)
    """The generated task."""
    num_ranks: int = 1
    """Data-parallel ranks."""
    device: str = "cpu"
    """``cpu`` (gloo) or ``cuda`` (NCCL)."""
    seed: int = 0
    """Seed of initialisation, data and sampling."""
    num_steps: int = 50
    """RL steps."""
    time_budget_s: float = 0.0
    """Stop RL after this much wall time; 0 for no limit."""
    num_threads: int = 1
    """Torch threads per rank."""
    dataplane_plan_id: str = ""
    """Data-plane RL plan to train on; empty for colocated generation from the task."""
    dataplane_address: str = ""
    """host:port of the data plane (filled in by the service from the registry)."""
    weighthub_model: str = ""
    """Weight-hub model name to publish every version under; empty to not publish."""
    weighthub_address: str = ""
    """host:port of the weight hub (filled in by the service from the registry)."""
    publish_bind_host: str = "0.0.0.0"
    """Address the ranks' publishers serve weight reads on (filled in by the service from its config)."""
    ppo_epochs: int = 1
    """Passes over each batch; every pass after the first (and every mini-batch after the first) takes
    its PPO ratio against the policy that existed before the batch's first update, so clipping bites."""
    mini_batch_size: int = 0
    """Samples per optimiser step over all ranks (a batch is split into ceil(batch / this) shuffled
    mini-batches per epoch); 0 for the whole batch. One version is published per batch, not per step."""
    rollout: RolloutConf = field(default_factory=RolloutConf)
    """Colocated generation."""
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    """Policy optimiser."""
    policy_loss: PolicyLossConf = field(default_factory=PolicyLossConf)
    """Policy loss."""
    dapo: DapoConf = field(default_factory=DapoConf)
    """DAPO settings."""
    vapo: VapoConf = field(default_factory=VapoConf)
    """VAPO settings."""
    warm_start: WarmStartConf = field(default_factory=WarmStartConf)
    """Supervised warm start."""
    eval: EvalConf = field(default_factory=EvalConf)
    """Held-out evaluation."""
    checkpoint: CheckpointConf = field(default_factory=CheckpointConf)
    """Checkpointing."""

    def __post_init__(self) -> None:
        _check(self.algorithm in ALGORITHMS, "algorithm", self.algorithm, f"unknown; known: {', '.join(ALGORITHMS)}")
        _check(self.device in DEVICES, "device", self.device, f"unknown; known: {', '.join(DEVICES)}")
        _check(1 <= self.num_ranks <= 1024, "num_ranks", self.num_ranks, "must be in 1..1024")
        _check(self.num_steps >= 0, "num_steps", self.num_steps, "must be >= 0")
        _finite("time_budget_s", self.time_budget_s, 0.0)
        _check(1 <= self.num_threads <= 256, "num_threads", self.num_threads, "must be in 1..256")
        _check(1 <= self.ppo_epochs <= 64, "ppo_epochs", self.ppo_epochs, "must be in 1..64")
        _check(
            self.mini_batch_size == 0 or self.num_ranks <= self.mini_batch_size <= 1_000_000,
            "mini_batch_size",
            self.mini_batch_size,
            f"must be 0 (the whole batch) or in num_ranks ({self.num_ranks})..1000000",
        )
        if not self.dataplane_plan_id:
            batch = self.rollout.prompts_per_step * self.rollout.group_size
            _check(
                self.mini_batch_size <= batch,
                "mini_batch_size",
                self.mini_batch_size,
                f"must be <= the batch of rollout.prompts_per_step x rollout.group_size ({batch})",
            )
        _check(self.model.tokenizer in ("", "char"), "model.tokenizer", self.model.tokenizer, "only 'char' is built in")
        r = self.rollout
        _check(
            r.prompts_per_step >= self.num_ranks,
            "rollout.prompts_per_step",
            r.prompts_per_step,
            f"must be >= num_ranks ({self.num_ranks})",
        )
        _check(
            r.prompts_per_step % self.num_ranks == 0,
            "rollout.prompts_per_step",
            r.prompts_per_step,
            f"must be a multiple of num_ranks ({self.num_ranks})",
        )
        _check(2 <= r.group_size <= 256, "rollout.group_size", r.group_size, "must be in 2..256")
        _check(1 <= r.max_new_tokens <= 4096, "rollout.max_new_tokens", r.max_new_tokens, "must be in 1..4096")
        _finite("rollout.temperature", r.temperature, 1e-3, 10.0)
        o = self.optimizer
        _finite("optimizer.learning_rate", o.learning_rate, 1e-9, 1.0)
        _finite("optimizer.weight_decay", o.weight_decay, 0.0, 1.0)
        _finite("optimizer.max_grad_norm", o.max_grad_norm, 0.0)
        _check(o.warmup_steps >= 0, "optimizer.warmup_steps", o.warmup_steps, "must be >= 0")
        p = self.policy_loss
        _finite("policy_loss.clip_epsilon_low", p.clip_epsilon_low, 0.0, 1.0)
        _finite("policy_loss.clip_epsilon_high", p.clip_epsilon_high, 0.0, 10.0)
        _finite("policy_loss.kl_coef", p.kl_coef, 0.0, 100.0)
        _finite("policy_loss.entropy_coef", p.entropy_coef, 0.0, 10.0)
        _check(
            p.max_importance_weight == 0 or p.max_importance_weight >= 1,
            "policy_loss.max_importance_weight",
            p.max_importance_weight,
            "must be 0 (no truncation) or >= 1",
        )
        _finite("policy_loss.max_importance_weight", p.max_importance_weight, 0.0)
        d = self.dapo
        _check(d.max_completion_tokens >= 1, "dapo.max_completion_tokens", d.max_completion_tokens, "must be >= 1")
        _check(
            0 <= d.overlong_buffer_tokens <= d.max_completion_tokens,
            "dapo.overlong_buffer_tokens",
            d.overlong_buffer_tokens,
            "must be in 0..dapo.max_completion_tokens",
        )
        _finite("dapo.overlong_penalty", d.overlong_penalty, 0.0, 10.0)
        v = self.vapo
        _finite("vapo.value_learning_rate", v.value_learning_rate, 1e-9, 1.0)
        _check(v.value_pretrain_steps >= 0, "vapo.value_pretrain_steps", v.value_pretrain_steps, "must be >= 0")
        _finite("vapo.gae_lambda_critic", v.gae_lambda_critic, 0.0, 1.0)
        _finite("vapo.gae_lambda_policy", v.gae_lambda_policy, 0.0, 1.0)
        _finite("vapo.length_adaptive_alpha", v.length_adaptive_alpha, 0.0, 100.0)
        _finite("vapo.positive_lm_loss_coef", v.positive_lm_loss_coef, 0.0, 10.0)
        _finite("vapo.discount", v.discount, 0.0, 1.0)
        w = self.warm_start
        _check(w.num_steps >= 0, "warm_start.num_steps", w.num_steps, "must be >= 0")
        _finite("warm_start.learning_rate", w.learning_rate, 1e-9, 1.0)
        _check(
            w.batch_size >= self.num_ranks,
            "warm_start.batch_size",
            w.batch_size,
            f"must be >= num_ranks ({self.num_ranks})",
        )
        e = self.eval
        _check(e.num_prompts >= 0, "eval.num_prompts", e.num_prompts, "must be >= 0")
        _check(e.every_steps >= 0, "eval.every_steps", e.every_steps, "must be >= 0")
        _check(1 <= e.max_new_tokens <= 4096, "eval.max_new_tokens", e.max_new_tokens, "must be in 1..4096")
        _check(self.checkpoint.every_steps >= 0, "checkpoint.every_steps", self.checkpoint.every_steps, "must be >= 0")
        _check(
            self.checkpoint.skip_data_until_step >= 0,
            "checkpoint.skip_data_until_step",
            self.checkpoint.skip_data_until_step,
            "must be >= 0",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        """Build from a (partial) mapping; unknown keys are refused by name."""
        return _build(cls, data, "")

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with top-level fields changed."""
        return dataclasses.replace(self, **changes)


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Frozen dataclass ``cls`` from a (partial) mapping: nested dataclasses, bool/int/float/str fields;
    an unknown field or a value of the wrong type raises InvalidArgument naming ``prefix.field``."""
    return _build(cls, data, prefix)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise InvalidArgument(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(f"{prefix}{unknown[0]}: unknown field; known: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{prefix}{name}.")
            continue
        kind = type(default)
        try:
            if kind is bool:
                if not isinstance(value, bool):
                    raise ValueError("expected true or false")
                kwargs[name] = value
            elif kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError("expected an integer")
                kwargs[name] = int(value)
            elif kind is float:
                if isinstance(value, bool):
                    raise ValueError("expected a number")
                kwargs[name] = float(value)
            else:
                kwargs[name] = str(value)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"{prefix}{name}={value!r}: {exc}") from None
    return cls(**kwargs)
