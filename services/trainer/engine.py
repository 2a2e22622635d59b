"""The training loop of one rank: warm start, RL steps, evaluation, checkpoints, publishing.

Every rank runs the same ``Engine``; ``Comm`` hides torch.distributed (world 1: no process group).
Gradients are summed over ranks after each rank scaled its loss by the *global* token or sample count,
so an update is the same for any number of ranks. A non-finite loss or gradient norm is found after
the all-reduce and before the optimiser step; every rank then skips the step together and it is
reported, never applied. Each rank also notes whether its *own* loss and gradients were finite before
the all-reduce (``local_nonfinite``): only the rank where the NaN arose owns up to it, so the
robustness monitor blames that rank, not whichever reports first.

An RL step is PPO over one batch: ``ppo_epochs`` passes over ``mini_batch_size`` mini-batches, one
optimiser step each, every ratio taken against the policy before the batch's first update (the
behaviour log-probs when the batch was sampled here from those weights, else one no-grad forward).
One version is published per batch, after its last optimiser step: rollouts only ever sample from
batch boundaries, and a version per mini-batch would multiply the publishing for no reader.
The samples of a group share their prompt's forward pass (``completion_logits``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from services.common.errors import FailedPrecondition, InvalidArgument
from services.trainer import algorithms as alg
from services.trainer import task as tasks
from services.trainer.generate import sample
from services.trainer.model import CharTokenizer, ValueModel, build_model, load_tokenizer
from services.trainer.spec import RunSpec

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

CHECKPOINT_FORMAT = 1
DYNAMIC_SAMPLING_MAX_ROUNDS = 4
MAX_SPAN_LINKS = 32
"""Links of one ``trainer.rl_step`` span to the traces of its batch (rollouts and the collection)."""


@dataclass
class TrainSample:
    """One scored completion to learn from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]
    """Log-probability of each completion token under the policy that sampled it."""
    reward: float
    """Verifier score in [0, 1]."""
    group_id: str
    finished: bool = True
    """False when generation hit the token limit (what overlong shaping looks at)."""
    group_mean: float | None = None
    """Mean reward of the sample's whole group, when the group may be split across ranks (data plane)."""
    group_std: float | None = None
    """Population std of the group's rewards, with ``group_mean``."""
    version: int = 0
    """Oldest weight version that produced a token of it."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The sample's metadata; ``traceparent`` (W3C) is the trace of the rollout that produced it."""


def check_samples(samples: Sequence[TrainSample]) -> None:
    """InvalidArgument naming the sample and field of a malformed sample."""
    for i, s in enumerate(samples):
        if not s.completion_ids:
            raise InvalidArgument(f"samples[{i}].completion_token_ids: empty (group {s.group_id})")
        if not s.prompt_ids:
            raise InvalidArgument(f"samples[{i}].prompt_token_ids: empty (group {s.group_id})")
        if len(s.behaviour_logprobs) != len(s.completion_ids):
            raise InvalidArgument(
                f"samples[{i}].behaviour_logprobs: {len(s.behaviour_logprobs)} log-probs for "
                f"{len(s.completion_ids)} completion tokens (group {s.group_id})"
            )
        if not math.isfinite(s.reward) or not 0.0 <= s.reward <= 1.0:
            raise InvalidArgument(f"samples[{i}].reward={s.reward}: must be finite and in [0, 1] (group {s.group_id})")
        if not all(math.isfinite(x) and x <= 1e-4 for x in s.behaviour_logprobs):
            raise InvalidArgument(f"samples[{i}].behaviour_logprobs: not all finite and <= 0 (group {s.group_id})")


class Reporter(Protocol):
    """Where rank 0 reports progress (the status file of a run, or a list in a test)."""

    def state(self, state: str, reason: str = "") -> None: ...
    def step(self, step: int, metrics: dict[str, float]) -> None: ...
    def evaluation(self, step: int, accuracy: float, num_prompts: int) -> None: ...
    def skipped(self, step: int, reason: str) -> None: ...
    def published(self, version: int) -> None: ...
    def checkpointed(self, path: str) -> None: ...


class NullReporter:
    """Reports nothing (ranks other than 0)."""

    def state(self, state: str, reason: str = "") -> None:
        pass

    def step(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def evaluation(self, step: int, accuracy: float, num_prompts: int) -> None:
        pass

    def skipped(self, step: int, reason: str) -> None:
        pass

    def published(self, version: int) -> None:
        pass

    def checkpointed(self, path: str) -> None:
        pass


class Comm:
    """This rank's view of the process group; every collective is a no-op for a world of one."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank = rank
        self.world = world

    @classmethod
    def from_env(cls) -> Comm:
        """The process group torchrun set up (RANK / WORLD_SIZE), or a world of one."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) in place."""
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Sum each number over ranks."""
        t = torch.tensor(list(values), dtype=torch.float64)
        return self.sum_(t).tolist()  # type: ignore[no-any-return]

    def broadcast_flags(self, flags: Sequence[int]) -> list[int]:
        """Rank 0's flags on every rank."""
        t = torch.tensor(list(flags), dtype=torch.int64)
        if self.world > 1:
            dist.broadcast(t, src=0)
        return [int(x) for x in t.tolist()]

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()


class WeightSink(Protocol):
    """Where each new version goes (the weight hub's Publisher)."""

    def publish(self, version: int, tensors: dict[str, torch.Tensor]) -> None: ...


class SampleFeed(Protocol):
    """Where RL samples come from when not generated by the rank itself (the data plane)."""

    def collect(self, engine: Engine, step: int) -> list[TrainSample]: ...
    def checkpoint(self, step: int) -> None: ...
    def restore(self, step: int, num_ranks: int) -> None: ...


@dataclass
class Control:
    """What rank 0 consults between steps: a stop request (file) and the time budget."""

    stop_file: Path | None = None
    deadline: float | None = None

    def requested(self) -> tuple[int, int, int]:
        """(stop, save a checkpoint first, stopped by request rather than by the time budget) as 0/1."""
        if self.stop_file is not None and self.stop_file.exists():
            try:
                data = json.loads(self.stop_file.read_text() or "{}")
            except ValueError:
                data = {}
            return 1, int(bool(data.get("save_checkpoint", False))), 1
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return 1, 0, 0
        return 0, 0, 0


def _seeded(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))
    return g


@dataclass
class _Packed:
    """A batch with each distinct prompt stored once, so the samples of a group share its forward pass.

    Prompts are left-padded (``G`` rows, width ``P``), completions right-padded (``B`` rows, ``T``
    positions); the logits of completion token ``t`` come from the prompt's last position (t = 0) or
    from completion token ``t - 1``, so only the first ``T - 1`` completion tokens are fed.
    """

    prompt_ids: torch.Tensor
    """(G, P) distinct prompts, left-padded."""
    prompt_mask: torch.Tensor
    """(G, P) 1 on real prompt tokens."""
    prompt_positions: torch.Tensor
    """(G, P) position ids (0 at each prompt's first token)."""
    owner: torch.Tensor
    """(B,) row of ``prompt_ids`` each sample continues."""
    completion_in: torch.Tensor
    """(B, T - 1) completion tokens fed after the prompt."""
    completion_mask: torch.Tensor
    """(B, T - 1) 1 on real fed tokens."""
    targets: torch.Tensor
    """(B, T) completion tokens (the labels)."""
    mask: torch.Tensor
    """(B, T) 1.0 on real completion tokens."""
    behaviour: torch.Tensor
    """(B, T) behaviour log-probabilities."""

    @property
    def shares_prompts(self) -> bool:
        return self.prompt_ids.shape[0] < self.targets.shape[0]

    def joined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids, attention mask, position ids) of every sample as one sequence (B, P + T - 1)."""
        t = self.completion_in.shape[1]
        after = self.prompt_positions[self.owner, -1:] + 1 + torch.arange(t, device=self.owner.device)[None, :]
        return (
            torch.cat([self.prompt_ids[self.owner], self.completion_in], dim=1),
            torch.cat([self.prompt_mask[self.owner], self.completion_mask], dim=1),
            torch.cat([self.prompt_positions[self.owner], after], dim=1),
        )


def _pack(samples: Sequence[TrainSample], pad_id: int, device: torch.device) -> _Packed:
    rows: dict[tuple[int, ...], int] = {}
    owner = [rows.setdefault(tuple(s.prompt_ids), len(rows)) for s in samples]
    width = max(len(p) for p in rows)
    tmax = max(len(s.completion_ids) for s in samples)
    prompt_ids = [[pad_id] * (width - len(p)) + list(p) for p in rows]
    prompt_mask = [[0] * (width - len(p)) + [1] * len(p) for p in rows]
    targets = [list(s.completion_ids) + [pad_id] * (tmax - len(s.completion_ids)) for s in samples]
    mask = [[1.0] * len(s.completion_ids) + [0.0] * (tmax - len(s.completion_ids)) for s in samples]
    behaviour = [list(s.behaviour_logprobs) + [0.0] * (tmax - len(s.completion_ids)) for s in samples]
    pm = torch.tensor(prompt_mask, dtype=torch.long)
    tg = torch.tensor(targets, dtype=torch.long)
    mk = torch.tensor(mask)
    return _Packed(
        prompt_ids=torch.tensor(prompt_ids, dtype=torch.long).to(device),
        prompt_mask=pm.to(device),
        prompt_positions=(pm.cumsum(-1) - 1).clamp(min=0).to(device),
        owner=torch.tensor(owner, dtype=torch.long).to(device),
        completion_in=tg[:, :-1].to(device),
        completion_mask=mk[:, 1:].long().to(device),
        targets=tg.to(device),
        mask=mk.to(device),
        behaviour=torch.tensor(behaviour).to(device),
    )


def _length_buckets(fed: torch.Tensor, cache: Any) -> list[tuple[torch.Tensor, int]]:
    """(rows, fed width) of the completions' forward: all rows at the longest width, or, when that
    pads more than a quarter of the fed tokens away, the rows up to the best split width apart."""
    rows = torch.arange(len(fed), device=fed.device)
    longest = int(fed.max())
    everything = [(rows, longest)]
    if not isinstance(cache, DynamicCache) or any(type(la) is not DynamicLayer for la in cache.layers):
        return everything
    counts = torch.bincount(fed.cpu(), minlength=longest + 1).tolist()
    best, split = len(fed) * longest, longest
    at_most = 0
    for width in range(longest):
        at_most += counts[width]
        cost = at_most * width + (len(fed) - at_most) * longest
        if cost < best:
            best, split = cost, width
    if best > 0.75 * len(fed) * longest or split == longest:
        return everything
    short = fed <= split
    return [(rows[short], split), (rows[~short], longest)]


def completion_logits(model: torch.nn.Module, batch: _Packed) -> torch.Tensor:
    """(B, T, vocab) float logits predicting each completion token.

    When samples share prompts (the group of GRPO), each distinct prompt runs once and its keys and
    values are selected into every sample of the group; the completions then run against that cache,
    in two length buckets when one width would pad away more than a quarter of the fed tokens. The
    prompt rows' gradients are those of running each sample in full: they sum over the group.
    """
    t = batch.targets.shape[1]
    if not batch.shares_prompts:
        ids, attention, positions = batch.joined()
        out = model(input_ids=ids, attention_mask=attention, position_ids=positions, logits_to_keep=t)
        return out.logits.float()  # type: ignore[no-any-return]
    out = model(
        input_ids=batch.prompt_ids,
        attention_mask=batch.prompt_mask,
        position_ids=batch.prompt_positions,
        use_cache=t > 1,
        logits_to_keep=1,
    )
    first = out.logits[:, -1].float()[batch.owner][:, None]
    if t == 1:
        return first  # type: ignore[no-any-return]
    _, attention, positions = batch.joined()
    width = batch.prompt_ids.shape[1]
    prompt_cache = out.cache
    pieces: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    for rows, fed in _length_buckets(batch.completion_mask.sum(dim=1), prompt_cache):
        if len(order) == 0 and fed == t - 1 and len(rows) == len(batch.owner):
            cache = prompt_cache
            cache.batch_select_indices(batch.owner)
        elif fed == 0:  # completions of one token: everything they predict comes from the prompt
            pieces.append(first.new_zeros((len(rows), t - 1, first.shape[-1])))
            order.append(rows)
            continue
        else:
            owners = batch.owner[rows]
            cache = DynamicCache(ddp_cache_data=[(la.keys[owners], la.values[owners]) for la in prompt_cache.layers])
        piece = model(
            input_ids=batch.completion_in[rows, :fed],
            attention_mask=attention[rows, : width + fed],
            position_ids=positions[rows, width : width + fed],
            cache=cache,
            use_cache=True,
        ).logits.float()
        pieces.append(torch.nn.functional.pad(piece, (0, 0, 0, t - 1 - fed)))
        order.append(rows)
    rest = torch.cat(pieces)
    if len(pieces) > 1:
        rest = rest[torch.argsort(torch.cat(order))]
    return torch.cat([first, rest], dim=1)


@dataclass
class _Prepared:
    """A batch and what stays fixed over its PPO epochs, row-aligned with the batch's samples."""

    batch: _Packed
    rewards: torch.Tensor
    """(B,) shaped rewards."""
    advantages: torch.Tensor
    """(B,) per sample (GRPO, DAPO) or (B, T) per token (VAPO)."""
    returns: torch.Tensor | None
    """(B, T) value targets (VAPO)."""
    old: torch.Tensor | None
    """(B, T) log-probs of the policy before the batch's first update; None for a single pass, which
    takes them from its own forward (ratio 1)."""
    reference: torch.Tensor | None
    """(B, T) log-probs of the KL reference."""


@dataclass
class StepTimes:
    data_wait_s: float = 0.0
    forward_backward_s: float = 0.0
    optimizer_s: float = 0.0
    publish_s: float = 0.0


@dataclass
class Engine:
    """Model, optimisers and the loop of one rank."""

    spec: RunSpec
    comm: Comm = field(default_factory=Comm)
    reporter: Reporter = field(default_factory=NullReporter)
    sink: WeightSink | None = None
    feed: SampleFeed | None = None
    checkpoint_dir: Path | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if spec.device == "cuda" else torch.device("cpu")
        )
        self.tokenizer: CharTokenizer = load_tokenizer(spec.model.tokenizer)
        self.model = build_model(spec.model.config_json, spec.model.checkpoint_path, seed=spec.seed).to(self.device)
        self.task = tasks.TaskSpec(
            num_terms=spec.task.num_terms,
            max_terms=spec.task.max_terms,
            max_value=spec.task.max_value,
            ops=spec.task.ops,
            num_warm_start=spec.task.num_warm_start,
            num_eval=spec.task.num_eval,
            seed=spec.seed,
        )
        self.warm_set = tasks.warm_start_set(self.task)
        self.optimizer = self._adamw(self.model.parameters(), spec.optimizer.learning_rate)
        self.value_model: ValueModel | None = None
        self.value_optimizer: torch.optim.Optimizer | None = None
        if spec.algorithm == "vapo":
            self.value_model = ValueModel(spec.model.config_json, seed=spec.seed).to(self.device)
            self.value_optimizer = self._adamw(self.value_model.parameters(), spec.vapo.value_learning_rate)
        self.reference: torch.nn.Module | None = None
        self.step = 0
        """RL steps done."""
        self.version = 0
        """Latest weight version published (0: none yet)."""
        self.prompt_cursor = 0
        """Global count of RL prompts drawn: the data cursor of colocated generation."""
        self.sft_cursor = 0
        """Supervised steps done (warm start and continued SFT)."""
        self.warm_started = False
        self.num_skipped = 0
        self.times = StepTimes()
        self.poison_next_loss = False
        """Set by a fault injector: the next RL step's loss is NaN (found and skipped before the optimizer)."""
        self.local_nonfinite = False
        """Whether this rank's own loss or gradients were non-finite before the all-reduce, in the latest step."""
        self.local_grad_norm = 0.0
        """This rank's own gradient norm before the all-reduce, in the latest optimiser step."""

    # ----- building blocks -----

    def _adamw(self, params: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.spec.optimizer.weight_decay, betas=(0.9, 0.99))

    def _lr_scale(self, step: int) -> float:
        warmup = self.spec.optimizer.warmup_steps
        return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0

    def _sync_grads(self, params: list[torch.nn.Parameter]) -> None:
        if self.comm.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.comm.sum_(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def _finite_step(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        loss_value: float,
        what: str,
        local_loss: float | None = None,
    ) -> tuple[bool, float, str]:
        """All-reduce gradients, check loss and norm on every rank, then step; (applied, grad norm, reason).

        Before the all-reduce, notes whether this rank's own ``local_loss`` and gradients were finite
        (``local_nonfinite``): after it, every rank sees the same NaN."""
        local_norm = _grad_norm(params) if self.comm.world > 1 else None
        self._sync_grads(params)
        norm = _grad_norm(params)
        self.local_grad_norm = norm if local_norm is None else local_norm
        own_loss = loss_value if local_loss is None else local_loss
        if not (math.isfinite(own_loss) and math.isfinite(self.local_grad_norm)):
            self.local_nonfinite = True
        bad_local = 0.0 if math.isfinite(loss_value) else 1.0
        bad = self.comm.sum_floats([bad_local, 0.0 if math.isfinite(norm) else 1.0])
        if bad[0] or bad[1]:
            optimizer.zero_grad(set_to_none=True)
            loss_text = "NaN/inf" if bad[0] else "finite"
            reason = f"non-finite {what} (loss {loss_text}, grad norm {norm}) before the optimizer step; step skipped"
            return False, norm, reason
        if self.spec.optimizer.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.spec.optimizer.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True, norm, ""

    # ----- supervised -----

    def skip_batch(self, reason: str) -> None:
        """Draw the next RL batch and drop it: the data cursor (the prompt stream here, the data plane's
        plan when the batch came from there) moves past it, no update is made and the step counts as
        skipped."""
        if self.feed is not None:
            self.feed.collect(self, self.step)
        else:
            self.collect_colocated(self.step)
        self.step += 1
        self.num_skipped += 1
        self.reporter.skipped(self.step, reason)

    def sft_step(self, optimizer: torch.optim.Optimizer, batch_size: int) -> float:
        """One supervised step on the warm-start set's worked answers; returns the global mean token loss."""
        rng = random.Random(zlib.crc32(f"{self.spec.seed}:sft:{self.sft_cursor}".encode()))
        picks = [rng.randrange(len(self.warm_set)) for _ in range(batch_size)]
        mine = picks[self.comm.rank :: self.comm.world]
        samples = [
            TrainSample(
                prompt_ids=self.tokenizer.encode(p.prompt),
                completion_ids=self.tokenizer.encode(p.worked_answer + "\n"),
                behaviour_logprobs=[],
                reward=1.0,
                group_id="sft",
            )
            for p in (self.warm_set[i] for i in mine)
        ]
        for s in samples:
            s.behaviour_logprobs = [0.0] * len(s.completion_ids)
        batch = _pack(samples, self.tokenizer.pad_id, self.device)
        num_tokens = self.comm.sum_floats([float(batch.mask.sum())])[0]
        self.model.train()
        logp = torch.log_softmax(completion_logits(self.model, batch), dim=-1)
        nll = -logp.gather(-1, batch.targets[..., None]).squeeze(-1) * batch.mask
        loss = nll.sum() / num_tokens
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        total = self.comm.sum_floats([loss.item()])[0]
        applied, _, reason = self._finite_step(optimizer, params, total, "supervised loss")
        if not applied:
            self.num_skipped += 1
            self.reporter.skipped(self.step, reason)
        self.sft_cursor += 1
        return total

    def warm_start(
        self,
        num_steps: int | None = None,
        time_budget_s: float | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> int:
        """The supervised stage (or more of it): ``num_steps`` steps or until ``time_budget_s``; returns steps.
        ``on_step(steps done)`` follows each step (progress for the robustness monitor)."""
        ws = self.spec.warm_start
        optimizer = self._adamw(self.model.parameters(), ws.learning_rate)
        steps = ws.num_steps if num_steps is None else num_steps
        deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        done = 0
        while done < steps:
            if deadline is not None and self.comm.broadcast_flags([int(time.monotonic() >= deadline)])[0]:
                break
            self.sft_step(optimizer, ws.batch_size)
            done += 1
            if on_step is not None:
                on_step(done)
        self.warm_started = True
        return done

    # ----- evaluation -----

    def eval_problems(self) -> list[tuple[str, str]]:
        """(prompt, reference) of the held-out set."""
        e = self.spec.eval
        if e.path:
            out = []
            with open(e.path) as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        out.append((str(rec["prompt"]), str(rec["reference"])))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise InvalidArgument(f"eval.path={e.path!r}: line {n}: {exc}") from None
        else:
            out = [(p.prompt, str(p.answer)) for p in tasks.eval_set(self.task)]
        return out[: e.num_prompts] if e.num_prompts else out

    def evaluate(self) -> tuple[float, int]:
        """Greedy held-out accuracy over every rank's slice; (accuracy, prompts)."""
        problems = self.eval_problems()
        mine = problems[self.comm.rank :: self.comm.world]
        correct = 0
        self.model.eval()
        for start in range(0, len(mine), 256):
            chunk = mine[start : start + 256]
            gen = sample(
                self.model,
                [self.tokenizer.encode(p) for p, _ in chunk],
                max_new_tokens=self.spec.eval.max_new_tokens,
                eos_id=self.tokenizer.eos_id,
                pad_id=self.tokenizer.pad_id,
                greedy=True,
                device=self.device,
            )
            for (prompt, ref), toks in zip(chunk, gen.tokens, strict=True):
                correct += int(tasks.verify(prompt, self.tokenizer.decode(toks), ref) == 1.0)
        total_correct, total = self.comm.sum_floats([float(correct), float(len(mine))])
        return (total_correct / total if total else 0.0), int(total)

    # ----- RL -----

    def generate_groups(
        self,
        prompt_texts: Sequence[str],
        group_ids: Sequence[str],
        references: Sequence[str],
        group_size: int,
        generator: torch.Generator,
    ) -> list[TrainSample]:
        """``group_size`` scored samples per prompt from the current policy."""
        r = self.spec.rollout
        prompt_ids = [self.tokenizer.encode(t) for t in prompt_texts]
        expanded = [ids for ids in prompt_ids for _ in range(group_size)]
        self.model.eval()
        gen = sample(
            self.model,
            expanded,
            max_new_tokens=r.max_new_tokens,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            temperature=r.temperature,
            generator=generator,
            device=self.device,
        )
        out = []
        for k, (toks, lps, fin) in enumerate(zip(gen.tokens, gen.logprobs, gen.finished, strict=True)):
            g = k // group_size
            if not toks:
                continue
            reward = tasks.verify(prompt_texts[g], self.tokenizer.decode(toks), references[g])
            out.append(TrainSample(prompt_ids[g], toks, lps, reward, group_ids[g], finished=fin, version=self.version))
        return out

    def collect_colocated(self, step: int) -> list[TrainSample]:
        """This rank's share of a step's samples, generated here; DAPO's dynamic sampling draws more prompts
        (all ranks together) while fewer than ``prompts_per_step`` groups carry a signal."""
        r = self.spec.rollout
        per_rank = r.prompts_per_step // self.comm.world
        dynamic = self.spec.algorithm == "dapo" and self.spec.dapo.dynamic_sampling
        kept: list[TrainSample] = []
        num_groups = 0.0
        for round_no in range(DYNAMIC_SAMPLING_MAX_ROUNDS if dynamic else 1):
            base = self.prompt_cursor + self.comm.rank * per_rank
            indexes = list(range(base, base + per_rank))
            self.prompt_cursor += r.prompts_per_step
            texts = [tasks.rl_prompt(self.task, i) for i in indexes]
            samples = self.generate_groups(
                texts,
                [f"rl/{i}" for i in indexes],
                [""] * len(texts),
                r.group_size,
                _seeded(self.spec.seed, "rollout", step, round_no, self.comm.rank),
            )
            if dynamic:
                by_group: dict[str, list[TrainSample]] = {}
                for s in samples:
                    by_group.setdefault(s.group_id, []).append(s)
                samples = [s for g in by_group.values() if len({x.reward for x in g}) > 1 for s in g]
            kept += samples
            num_groups = self.comm.sum_floats([float(len({s.group_id for s in kept}))])[0]
            if num_groups >= r.prompts_per_step:
                break
        return kept

    def collect_batch(self) -> list[TrainSample]:
        """This rank's share of the next batch: from the feed (data plane) or generated here; checked."""
        samples = self.feed.collect(self, self.step) if self.feed is not None else self.collect_colocated(self.step)
        check_samples(samples)
        return samples

    def rl_step(self) -> dict[str, float]:
        """Collect a batch, compute the loss, check it, step (no version published); returns the step's metrics."""
        t0 = time.monotonic()
        samples = self.collect_batch()
        return self._learn(samples, t0, time.monotonic())

    def advance(self, samples: Sequence[TrainSample] | None = None) -> dict[str, float]:
        """One RL step as a run takes it: the batch (collected unless given), the update and, when it was
        applied, the next version published; returns the step's metrics.

        The span ``trainer.rl_step`` continues the trace of the rollout that produced the batch (the
        first sample's ``traceparent``) and links the other samples' traces (at most ``MAX_SPAN_LINKS``);
        the weight hub's Publish runs inside it and so joins that trace. Collecting the batch (NextBatch,
        or generation here) has its own span ``trainer.collect_batch``, linked from the step's; when no
        sample carries a trace, the step's span is that span's child, so a colocated step is one trace.
        """
        t0 = time.monotonic()
        if samples is None:
            with _tracer.start_as_current_span("trainer.collect_batch", attributes={"rl.step": self.step + 1}) as span:
                samples = self.collect_batch()
                collected = span.get_span_context()
        else:
            check_samples(samples)
            collected = None
        t1 = time.monotonic()
        parent, links = _rollout_traces(samples, collected)
        with _tracer.start_as_current_span(
            "trainer.rl_step", context=parent, links=links, attributes={"rl.step": self.step + 1}
        ) as span:
            metrics = self._learn(samples, t0, t1)
            self.step += 1
            metrics["publish_s"] = self.publish() if metrics["applied"] else 0.0
            span.set_attribute("rl.version", self.version)
            span.set_attribute("rl.applied", bool(metrics["applied"]))
        return metrics

    def _learn(self, samples: Sequence[TrainSample], t0: float, t1: float) -> dict[str, float]:
        metrics = self.train_on(samples)
        metrics.update(self._staleness(samples))
        metrics["data_wait_s"] = t1 - t0
        metrics["step_time_s"] = time.monotonic() - t0
        num_tokens, num_samples = metrics["num_tokens"], metrics["num_samples"]
        metrics["tokens_per_s"] = num_tokens / metrics["step_time_s"]
        metrics["samples_per_s"] = num_samples / metrics["step_time_s"]
        return metrics

    def _staleness(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """Samples of the global batch by staleness (versions behind the policy being trained), 0..7+."""
        counts = [0.0] * 8
        for s in samples:
            if s.version > 0:
                counts[min(max(self.version - s.version, 0), 7)] += 1.0
        return {f"staleness_{k}": n for k, n in enumerate(self.comm.sum_floats(counts))}

    def _rewards(self, samples: Sequence[TrainSample]) -> torch.Tensor:
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        if self.spec.algorithm == "dapo" and samples:
            d = self.spec.dapo
            lengths = torch.tensor([len(s.completion_ids) + (0 if s.finished else 1) for s in samples])
            rewards = rewards + alg.overlong_penalty(
                lengths, d.max_completion_tokens, d.overlong_buffer_tokens, d.overlong_penalty
            )
        return rewards

    def _advantages(self, samples: Sequence[TrainSample], rewards: torch.Tensor) -> torch.Tensor:
        if all(s.group_mean is not None for s in samples):
            means = torch.tensor([float(s.group_mean) for s in samples])  # type: ignore[arg-type]
            stds = torch.tensor([float(s.group_std or 0.0) for s in samples])
            return alg.advantages_from_group_stats(rewards, means, stds)
        return alg.grpo_advantages(rewards, [s.group_id for s in samples])

    def train_on(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """PPO on this rank's share (possibly empty) of the global batch: ``ppo_epochs`` passes over
        shuffled mini-batches, one optimiser step each; every rank takes the same number of steps."""
        spec = self.spec
        token_level = spec.policy_loss.token_level_loss or spec.algorithm in ("dapo", "vapo")
        n_tok_local = float(sum(len(s.completion_ids) for s in samples))
        n_tok, n_smp = self.comm.sum_floats([n_tok_local, float(len(samples))])
        pretraining_value = spec.algorithm == "vapo" and self.step < spec.vapo.value_pretrain_steps
        num_minibatches = max(1, math.ceil(n_smp / spec.mini_batch_size)) if spec.mini_batch_size else 1
        single_pass = spec.ppo_epochs == 1 and num_minibatches == 1
        t_fb = time.monotonic()
        prepared = self._prepare(samples, single_pass) if samples else None
        # sums over passes: pg loss, value loss, kl, entropy, clipped, mismatch, tokens seen
        stats = torch.zeros(7, dtype=torch.float64)
        optimizer_s = 0.0
        norms: list[float] = []
        applied, reason = True, ""
        self.local_nonfinite = False
        local_norms: list[float] = []
        policy_params = [p for p in self.model.parameters() if p.requires_grad]
        for epoch in range(spec.ppo_epochs):
            shuffle = _seeded(spec.seed, "minibatch", self.step, epoch, self.comm.rank)
            num = len(samples)
            order = torch.randperm(num, generator=shuffle) if num_minibatches > 1 else torch.arange(num)
            for rows in torch.tensor_split(order, num_minibatches):
                rows = rows.sort().values
                if single_pass:
                    mb_tok, mb_smp = n_tok, n_smp
                else:
                    mb_tok_local = float(sum(len(samples[i].completion_ids) for i in rows.tolist()))
                    mb_tok, mb_smp = self.comm.sum_floats([mb_tok_local, float(len(rows))])
                denominator = max(mb_tok if token_level else mb_smp, 1.0)
                loss_total = torch.zeros(())
                if len(rows) and prepared is not None:
                    loss, value_loss, part = self._minibatch_loss(
                        samples, rows, prepared, token_level, denominator, max(mb_tok, 1.0)
                    )
                    if pretraining_value:
                        loss = loss * 0.0
                    (loss + value_loss).backward()
                    loss_total = loss.detach() + value_loss.detach()
                    stats += part
                if self.poison_next_loss:
                    loss_total, self.poison_next_loss = torch.tensor(math.nan), False
                local_loss = float(loss_total)
                loss_value = self.comm.sum_floats([local_loss])[0]
                t_opt = time.monotonic()
                applied, norm, reason = self._optimizer_steps(policy_params, loss_value, pretraining_value, local_loss)
                optimizer_s += time.monotonic() - t_opt
                norms.append(norm)
                local_norms.append(self.local_grad_norm)
                if not applied:
                    break
            if not applied:
                break
        local_pg_loss = float(stats[0])  # before the in-place all-reduce
        sums = self.comm.sum_(stats)
        reward_sums = self.comm.sum_floats(
            [sum(s.reward for s in samples), float(sum(int(not s.finished) for s in samples))]
        )
        self.times.optimizer_s = optimizer_s
        self.times.forward_backward_s = time.monotonic() - t_fb - optimizer_s
        if not applied:
            self.num_skipped += 1
            self.reporter.skipped(self.step + 1, reason)
        num_steps = max(len(norms), 1)
        seen = max(float(sums[6]), 1.0)
        return {
            "reward_mean": reward_sums[0] / max(n_smp, 1.0),
            "policy_loss": float(sums[0]) / num_steps,
            "value_loss": float(sums[1]) / num_steps,
            "kl": float(sums[2]) / seen,
            "entropy": float(sums[3]) / seen,
            "clip_fraction": float(sums[4]) / seen,
            "logprob_mismatch": float(sums[5]) / seen,
            "grad_norm": statistics.fmean(norms) if norms else 0.0,
            "num_tokens": n_tok,
            "num_samples": n_smp,
            "num_optimizer_steps": float(len(norms)),
            "truncated_fraction": reward_sums[1] / max(n_smp, 1.0),
            "forward_backward_s": self.times.forward_backward_s,
            "optimizer_s": self.times.optimizer_s,
            "applied": float(applied),
            "local_nonfinite": float(self.local_nonfinite),
            "local_grad_norm": statistics.fmean(local_norms) if local_norms else 0.0,
            "local_policy_loss": local_pg_loss / num_steps,
        }

    def _on_policy(self, samples: Sequence[TrainSample]) -> bool:
        """True when the behaviour log-probs are the current policy's own: sampled here, at temperature 1,
        from the weights about to be trained (so they serve as the old log-probs without a forward)."""
        r = self.spec.rollout
        return r.colocated and r.temperature == 1.0 and all(s.version == self.version for s in samples)

    def _prepare(self, samples: Sequence[TrainSample], single_pass: bool) -> _Prepared:
        """What stays fixed over a batch's epochs: rewards, advantages, value targets, old and reference log-probs."""
        spec = self.spec
        batch = _pack(samples, self.tokenizer.pad_id, self.device)
        rewards = self._rewards(samples).to(self.device)
        returns: torch.Tensor | None = None
        if spec.algorithm == "vapo":
            assert self.value_model is not None
            v = spec.vapo
            mask = batch.mask
            with torch.no_grad():
                values = self._values(batch)
            lengths = mask.sum(dim=1)
            token_rewards = torch.zeros_like(mask)
            token_rewards[torch.arange(len(samples)), (lengths - 1).long()] = rewards
            _, returns = alg.gae(token_rewards, values, mask, v.discount, v.gae_lambda_critic)
            lam = (
                alg.length_adaptive_lambda(lengths, v.length_adaptive_alpha)
                if v.length_adaptive_alpha > 0
                else torch.full_like(lengths, v.gae_lambda_policy)
            )
            advantages, _ = alg.gae(token_rewards, values, mask, v.discount, lam)
        else:
            advantages = self._advantages(samples, rewards).to(self.device)
        old: torch.Tensor | None = None
        if not single_pass:
            if self._on_policy(samples):
                old = batch.behaviour
            else:
                with torch.no_grad():
                    old = self._token_logprobs(self.model, batch)
        reference: torch.Tensor | None = None
        if spec.policy_loss.kl_coef and self.reference is not None:
            with torch.no_grad():
                reference = self._token_logprobs(self.reference, batch)
        return _Prepared(batch, rewards, advantages, returns, old, reference)

    def _values(self, batch: _Packed) -> torch.Tensor:
        assert self.value_model is not None
        ids, attention, positions = batch.joined()
        return self.value_model(ids, attention, positions)[:, -batch.targets.shape[1] :]  # type: ignore[no-any-return]

    def _token_logprobs(self, model: torch.nn.Module, batch: _Packed) -> torch.Tensor:
        logp = torch.log_softmax(completion_logits(model, batch), dim=-1)
        return logp.gather(-1, batch.targets[..., None]).squeeze(-1)

    def _minibatch_loss(
        self,
        samples: Sequence[TrainSample],
        rows: torch.Tensor,
        pre: _Prepared,
        token_level: bool,
        denominator: float,
        num_tokens: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy loss, value loss, stats) of the samples ``rows`` of the prepared batch."""
        spec, pl = self.spec, self.spec.policy_loss
        whole = len(rows) == len(samples)
        batch = pre.batch if whole else _pack([samples[i] for i in rows.tolist()], self.tokenizer.pad_id, self.device)
        t = batch.targets.shape[1]

        def pick(x: torch.Tensor) -> torch.Tensor:
            x = x if whole else x[rows.to(x.device)]
            return x[:, :t] if x.dim() == 2 else x

        mask = batch.mask
        self.model.train()
        logits = completion_logits(self.model, batch)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, batch.targets[..., None]).squeeze(-1)
        old = logp.detach() if pre.old is None else pick(pre.old)
        weights = alg.truncated_importance_weights(old, batch.behaviour, pl.max_importance_weight)
        terms = alg.clipped_policy_loss(
            logp, old, pick(pre.advantages), mask, pl.clip_epsilon_low, pl.clip_epsilon_high, weights
        )
        pg_loss = alg.aggregate(terms.loss, mask, token_level, denominator)
        entropy = alg.entropy_from_logits(logits if pl.entropy_coef else logits.detach()) * mask
        loss = pg_loss
        if pl.entropy_coef:
            loss = loss - pl.entropy_coef * alg.aggregate(entropy, mask, token_level, denominator)
        kl_sum = 0.0
        if pre.reference is not None:
            kl = alg.kl_k3(logp, pick(pre.reference)) * mask
            loss = loss + pl.kl_coef * alg.aggregate(kl, mask, token_level, denominator)
            kl_sum = float(kl.detach().sum())
        value_loss = torch.zeros(())
        if spec.algorithm == "vapo":
            assert self.value_model is not None and pre.returns is not None
            self.value_model.train()
            values = self._values(batch)
            value_loss = alg.aggregate(0.5 * (values - pick(pre.returns)) ** 2 * mask, mask, True, num_tokens)
            if spec.vapo.positive_lm_loss_coef:
                lm = alg.positive_lm_loss(logp, mask, pick(pre.rewards))
                loss = loss + spec.vapo.positive_lm_loss_coef * alg.aggregate(lm, mask, True, num_tokens)
        part = torch.tensor(
            [
                pg_loss.item(),
                value_loss.item(),
                kl_sum,
                float(entropy.detach().sum()),
                float(terms.clipped.sum()),
                float(((old - batch.behaviour).abs() * mask).sum()),
                float(mask.sum()),
            ],
            dtype=torch.float64,
        )
        return loss, value_loss, part

    def _optimizer_steps(
        self,
        policy_params: list[torch.nn.Parameter],
        loss_value: float,
        pretraining_value: bool,
        local_loss: float | None = None,
    ) -> tuple[bool, float, str]:
        """Value model then policy (not while the value model pre-trains); (applied, grad norm, reason)."""
        spec = self.spec
        applied, norm, reason = True, 0.0, ""
        if self.value_model is not None and self.value_optimizer is not None:
            vparams = list(self.value_model.parameters())
            applied, _, reason = self._finite_step(self.value_optimizer, vparams, loss_value, "value loss", local_loss)
        if applied and not pretraining_value:
            for group in self.optimizer.param_groups:
                group["lr"] = spec.optimizer.learning_rate * self._lr_scale(self.step)
            applied, norm, reason = self._finite_step(
                self.optimizer, policy_params, loss_value, "policy loss", local_loss
            )
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return applied, norm, reason

    # ----- versions, checkpoints -----

    def publish(self) -> float:
        """Hand the next version to the sink (publishing moves no bytes); returns the seconds it took."""
        self.version += 1
        self.reporter.published(self.version)
        if self.sink is None:
            return 0.0
        t0 = time.monotonic()
        names = sorted(self.model.state_dict())
        mine = names[self.comm.rank :: self.comm.world]
        state = self.model.state_dict()
        self.sink.publish(self.version, {n: state[n].detach() for n in mine})
        return time.monotonic() - t0

    def save_checkpoint(self, path: Path) -> Path:
        """Model, optimisers, every rank's RNG state and the data cursors, written by rank 0."""
        rng = self.comm.gather_objects({"torch": torch.get_rng_state(), "python": random.getstate()})
        if self.feed is not None:
            self.feed.checkpoint(self.step)
        if self.comm.rank == 0:
            state = {
                "format": CHECKPOINT_FORMAT,
                "model_config": self.model.config.to_dict(),  # type: ignore[union-attr,operator]
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "value_model": self.value_model.state_dict() if self.value_model is not None else None,
                "value_optimizer": self.value_optimizer.state_dict() if self.value_optimizer is not None else None,
                "reference": self.reference.state_dict() if self.reference is not None else None,
                "step": self.step,
                "version": self.version,
                "prompt_cursor": self.prompt_cursor,
                "sft_cursor": self.sft_cursor,
                "warm_started": self.warm_started,
                "num_ranks": self.comm.world,
                "algorithm": self.spec.algorithm,
                "rng": rng,
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            os.replace(tmp, path)
            self.reporter.checkpointed(str(path))
        self.comm.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Resume from ``path`` (written with any number of ranks); InvalidArgument when it does not fit."""
        where = f"checkpoint.resume_from={str(path)!r}"
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch.load raises many kinds for a file that is not a checkpoint
            raise InvalidArgument(f"{where}: cannot read: {type(exc).__name__}: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidArgument(f"{where}: not a trainer checkpoint (format {CHECKPOINT_FORMAT})")
        _check_state(where, "model", self.model.state_dict(), state["model"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.value_model is not None:
            if state.get("value_model") is None:
                raise InvalidArgument(f"{where}: has no value model, which algorithm=vapo needs")
            _check_state(where, "value_model", self.value_model.state_dict(), state["value_model"])
            self.value_model.load_state_dict(state["value_model"])
            assert self.value_optimizer is not None
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        if state.get("reference") is not None:
            self.reference = build_model(self.spec.model.config_json, self.spec.model.checkpoint_path).to(self.device)
            self.reference.load_state_dict(state["reference"])
            self.reference.requires_grad_(False)
        self.step, self.version = int(state["step"]), int(state["version"])
        self.prompt_cursor, self.sft_cursor = int(state["prompt_cursor"]), int(state["sft_cursor"])
        self.warm_started = bool(state["warm_started"])
        rng = state["rng"][self.comm.rank] if self.comm.rank < len(state["rng"]) else state["rng"][0]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        if self.feed is not None:
            self.feed.restore(self.step, self.comm.world)

    def freeze_reference(self) -> None:
        """Keep the current (warm-started) weights as the KL reference."""
        if self.spec.policy_loss.kl_coef > 0 and self.reference is None:
            self.reference = build_model(self.spec.model.config_json, self.spec.model.checkpoint_path).to(self.device)
            self.reference.load_state_dict(self.model.state_dict())
            self.reference.requires_grad_(False)

    # ----- the whole run -----

    def run(
        self,
        control: Control | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        on_warm_start_step: Callable[[int], None] | None = None,
        on_skipped_step: Callable[[int], None] | None = None,
    ) -> str:
        """Warm start (unless resumed), then RL to num_steps / the budget / a stop; returns the end state.

        ``on_step(step, metrics)`` follows each RL step, ``on_warm_start_step(steps done)`` each warm-start
        step and ``on_skipped_step(step)`` each step whose batch was dropped (``checkpoint.skip_data_until_step``).
        """
        spec = self.spec
        control = control or Control()
        if spec.checkpoint.resume_from:
            self.load_checkpoint(Path(spec.checkpoint.resume_from))
        # Versions past this run's were published before a restart, or by an earlier run under the same
        # model name: never publish one twice, and publish this run's weights at once as the newest, so
        # that rollout servers stop serving weights this run does not have.
        latest = getattr(self.sink, "latest_version", None)
        newest = int(latest()) if latest is not None else 0
        republish = newest > self.version
        self.version = max(self.version, newest)
        if not self.warm_started and spec.warm_start.num_steps > 0:
            self.reporter.state("WARM_START")
            self.warm_start(on_step=on_warm_start_step)
            if spec.checkpoint.every_steps and self.checkpoint_dir is not None:
                # A fault in the first RL steps then resumes after the warm start, not before it.
                self.warm_started = True
                self.save_checkpoint(self.checkpoint_path(self.step))
        self.warm_started = True
        if spec.checkpoint.resume_from and spec.checkpoint.every_steps and self.checkpoint_dir is not None:
            path = self.checkpoint_path(self.step)
            if not path.exists():
                # This run's own checkpoint at once: a crash before its first periodic one resumes here,
                # with the data plane's cursor at this step, not from the checkpoint it was started from.
                self.save_checkpoint(path)
        self.freeze_reference()
        if self.version == 0 or republish:
            self.publish()
        self._evaluate_and_report()
        self.reporter.state("TRAINING")
        if spec.time_budget_s > 0 and control.deadline is None:
            control.deadline = time.monotonic() + spec.time_budget_s
        end_state, save = "COMPLETED", False
        last_eval = self.step
        while self.step < spec.num_steps:
            stop, save_flag, by_request = self.comm.broadcast_flags(
                control.requested() if self.comm.rank == 0 else (0, 0, 0)
            )
            if stop:
                save = bool(save_flag)
                if by_request:
                    end_state = "STOPPED"
                    self.reporter.state("STOPPING")
                break
            if self.step + 1 < spec.checkpoint.skip_data_until_step:
                self.skip_batch(
                    f"batch dropped: it lies in the data window before step {spec.checkpoint.skip_data_until_step} "
                    "that produced a non-finite loss before the roll-back"
                )
                if on_skipped_step is not None:
                    on_skipped_step(self.step)
            else:
                metrics = self.advance()
                self.reporter.step(self.step, metrics)
                if on_step is not None:
                    on_step(self.step, metrics)
            if spec.checkpoint.every_steps and self.step % spec.checkpoint.every_steps == 0:
                self.save_checkpoint(self.checkpoint_path(self.step))
            if spec.eval.every_steps and self.step % spec.eval.every_steps == 0:
                self._evaluate_and_report()
                last_eval = self.step
        if last_eval != self.step:
            self._evaluate_and_report()
        if (save or end_state == "COMPLETED") and self.checkpoint_dir is not None:
            self.save_checkpoint(self.checkpoint_path(self.step))
        self.reporter.state(end_state)
        return end_state

    def checkpoint_path(self, step: int) -> Path:
        """Where the checkpoint of ``step`` goes."""
        if self.checkpoint_dir is None:
            raise FailedPrecondition("no checkpoint directory configured")
        return self.checkpoint_dir / f"step-{step:06d}.pt"

    def _evaluate_and_report(self) -> float:
        accuracy, n = self.evaluate()
        self.reporter.evaluation(self.step, accuracy, n)
        return accuracy


def _rollout_traces(
    samples: Sequence[TrainSample], collected: trace.SpanContext | None
) -> tuple[otel_context.Context | None, list[trace.Link]]:
    """(parent context, links) of an RL step's span: the first traced sample's rollout as the parent,
    the other distinct rollout traces and the batch collection as links (``MAX_SPAN_LINKS`` at most)."""
    propagator = TraceContextTextMapPropagator()
    parent: otel_context.Context | None = None
    seen: set[tuple[int, int]] = set()
    links: list[trace.Link] = []
    for s in samples:
        carrier = s.metadata.get("traceparent")
        if not carrier:
            continue
        ctx = propagator.extract({"traceparent": carrier})
        span_context = trace.get_current_span(ctx).get_span_context()
        key = (span_context.trace_id, span_context.span_id)
        if not span_context.is_valid or key in seen:
            continue
        seen.add(key)
        if parent is None:
            parent = ctx
        elif len(links) < MAX_SPAN_LINKS - 1:
            links.append(trace.Link(span_context, {"link.kind": "rollout"}))
    if collected is not None and collected.is_valid:
        if parent is None:
            parent = trace.set_span_in_context(trace.NonRecordingSpan(collected))
        else:
            links.append(trace.Link(collected, {"link.kind": "collect_batch"}))
    return parent, links


def _grad_norm(params: Sequence[torch.nn.Parameter]) -> float:
    """The global norm of the parameters' gradients (non-finite when any gradient is)."""
    grads = [p.grad for p in params if p.grad is not None]
    return float(torch.norm(torch.stack([g.detach().float().norm() for g in grads]))) if grads else 0.0


def _check_state(where: str, what: str, expected: dict[str, torch.Tensor], got: Any) -> None:
    if not isinstance(got, dict):
        raise InvalidArgument(f"{where}: {what} is not a state dict")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        name = (missing or extra)[0]
        raise InvalidArgument(
            f"{where}: {what} does not match the model: tensor {name!r} is "
            f"{'missing from the checkpoint' if missing else 'not in the model'}"
        )
    for name, tensor in expected.items():
        if tuple(got[name].shape) != tuple(tensor.shape):
            raise InvalidArgument(
                f"{where}: {what} does not match the model: tensor {name!r} has shape "
                f"{tuple(got[name].shape)} in the checkpoint, {tuple(tensor.shape)} in the model"
            )
