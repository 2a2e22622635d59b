"""RL mode: prompts handed out, scored samples taken in, the experience buffer and its filters.

A prompt draw is a *group* (``group_id``); its ``group_size`` samples arrive from rollout servers in
any order, possibly more than once (retried streams). Each sample index of a group ends accepted or
dropped (duplicate, stale, unknown version); once every index is settled the group is judged: with
dynamic sampling, a group whose accepted rewards are all equal carries no gradient and is dropped —
the freed buffer room lets NextPrompts hand out more prompts (backfill) instead of failing a batch.
Ready groups wait in arrival order; a training batch takes whole groups, oldest first, after
dropping samples that became stale against the trainer's policy version (staleness bound η).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.errors import InvalidArgument, ResourceExhausted

DROP_DUPLICATE = "duplicate"
DROP_STALE = "stale"
DROP_UNKNOWN_PROMPT = "unknown_prompt"
DROP_UNKNOWN_VERSION = "unknown_version"
DROP_UNIFORM_GROUP = "uniform_group"
MAX_DONE_GROUPS = 10_000


@dataclass
class RlSample:
    """A scored sample, as the rollout server sent it."""

    prompt_id: str
    group_id: str
    sample_index: int
    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    behaviour_logprobs: list[float]
    version_spans: list[tuple[int, int, int]]
    """(start_index, end_index, weight_version) of each span."""
    completion_text: str
    reward: float | None
    finished: bool
    finish_reason: int
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Prompt plus completion tokens."""
        return len(self.prompt_token_ids) + len(self.completion_token_ids)

    @property
    def oldest_version(self) -> int:
        """Oldest weight version that produced any of its tokens (0 when it has no completion)."""
        return min((v for _, _, v in self.version_spans), default=0)

    @property
    def newest_version(self) -> int:
        """Newest weight version among its spans."""
        return max((v for _, _, v in self.version_spans), default=0)

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RlSample:
        """Inverse of ``to_json``."""
        data = dict(data)
        data["version_spans"] = [tuple(s) for s in data["version_spans"]]
        return cls(**data)


@dataclass
class PromptDraw:
    """One handed-out prompt: the group its samples belong to."""

    group_id: str
    prompt_id: str
    source: str
    text: str
    token_ids: list[int]
    verifier: str
    reference: str
    consumer_id: str = ""
    issued_unix_s: float = 0.0


def check_sample(sample: RlSample, group_size: int, position: int) -> None:
    """InvalidArgument naming the sample when it is malformed."""
    where = f"samples[{position}] (group {sample.group_id!r}, index {sample.sample_index})"
    if sample.sample_index >= group_size:
        raise InvalidArgument(f"{where}: sample_index must be < group_size {group_size}")
    if not sample.finished:
        raise InvalidArgument(f"{where}: only finished samples go into the buffer (finished=false)")
    if sample.reward is None or not math.isfinite(sample.reward) or not 0.0 <= sample.reward <= 1.0:
        raise InvalidArgument(f"{where}: reward={sample.reward!r} must be set, finite and in [0, 1]")
    if len(sample.behaviour_logprobs) != len(sample.completion_token_ids):
        raise InvalidArgument(
            f"{where}: {len(sample.behaviour_logprobs)} behaviour_logprobs for "
            f"{len(sample.completion_token_ids)} completion tokens"
        )
    if any(not math.isfinite(x) or x > 0 for x in sample.behaviour_logprobs):
        raise InvalidArgument(f"{where}: behaviour_logprobs must be finite log-probabilities (<= 0)")
    expected = 0
    for start, end, version in sample.version_spans:
        if start != expected or end <= start or version < 1:
            raise InvalidArgument(
                f"{where}: version_spans must be contiguous from 0 with versions >= 1, got {sample.version_spans}"
            )
        expected = end
    if expected != len(sample.completion_token_ids):
        raise InvalidArgument(f"{where}: version_spans cover {expected} tokens of {len(sample.completion_token_ids)}")


@dataclass
class Group:
    """A prompt draw and what has arrived for it."""

    prompt: PromptDraw
    samples: dict[int, RlSample | None] = field(default_factory=dict)
    """Sample index to the accepted sample, or None when that index was dropped."""

    def settled(self, group_size: int) -> bool:
        """Every index accepted or dropped."""
        return len(self.samples) == group_size

    def accepted(self) -> list[RlSample]:
        """Accepted samples in index order."""
        return [s for _, s in sorted(self.samples.items()) if s is not None]


class ExperienceBuffer:
    """Outstanding prompt draws, ready groups and drop counts of one RL plan."""

    def __init__(self, group_size: int, max_staleness: int, dynamic_sampling: bool, max_buffered: int) -> None:
        self.group_size = group_size
        self.max_staleness = max_staleness
        self.dynamic_sampling = dynamic_sampling
        self.max_buffered = max_buffered
        self.outstanding: dict[str, Group] = {}
        self.ready: dict[str, Group] = {}
        # Recently finished groups, oldest first, so late duplicates are told apart from strangers.
        self.done: dict[str, None] = {}
        self.drops: Counter[str] = Counter()
        self.policy_version = 0

    # Prompts ------------------------------------------------------------------------------------

    def room_for_groups(self) -> int:
        """New groups that can be handed out before the buffer is full."""
        used = sum(len(g.accepted()) for g in self.ready.values())
        used += sum(
            self.group_size - sum(1 for s in g.samples.values() if s is None) for g in self.outstanding.values()
        )
        return max(0, (self.max_buffered - used) // self.group_size)

    def overdue(self, timeout_s: float, now: float) -> list[PromptDraw]:
        """Prompts handed out longer than ``timeout_s`` ago whose samples have not all arrived."""
        return [
            g.prompt
            for g in self.outstanding.values()
            if now - g.prompt.issued_unix_s > timeout_s and len(g.samples) < self.group_size
        ]

    def check_room(self) -> None:
        """ResourceExhausted when no group fits."""
        if self.room_for_groups() == 0:
            raise ResourceExhausted(
                f"experience buffer full ({self.max_buffered} samples buffered or in flight); back off"
            )

    def hand_out(self, draws: list[PromptDraw]) -> None:
        """Record freshly drawn prompts as outstanding."""
        for draw in draws:
            self.outstanding[draw.group_id] = Group(draw)

    # Samples -------------------------------------------------------------------------------------

    def put(self, sample: RlSample) -> tuple[int, Counter[str]]:
        """Take one checked sample: (accepted count, drops by reason)."""
        drops: Counter[str] = Counter()
        group = self.outstanding.get(sample.group_id)
        if group is None:
            reason = DROP_DUPLICATE if sample.group_id in self.done or sample.group_id in self.ready else None
            drops[reason or DROP_UNKNOWN_PROMPT] += 1
        elif sample.sample_index in group.samples:
            drops[DROP_DUPLICATE] += 1
        elif sample.newest_version > self.policy_version + 1:
            # The trainer publishes version v+1 after reporting v; anything newer was never served.
            group.samples[sample.sample_index] = None
            drops[DROP_UNKNOWN_VERSION] += 1
        elif self.policy_version and sample.oldest_version < self.policy_version - self.max_staleness:
            group.samples[sample.sample_index] = None
            drops[DROP_STALE] += 1
        else:
            group.samples[sample.sample_index] = sample
        accepted = 0 if drops else 1
        if group is not None and group.settled(self.group_size):
            drops += self._settle(group)
        self.drops += drops
        return accepted, drops

    def _settle(self, group: Group) -> Counter[str]:
        del self.outstanding[group.prompt.group_id]
        samples = group.accepted()
        if self.dynamic_sampling and len({s.reward for s in samples}) <= 1:
            self._finish(group.prompt.group_id)
            return Counter({DROP_UNIFORM_GROUP: len(samples)}) if samples else Counter()
        if not samples:
            self._finish(group.prompt.group_id)
            return Counter()
        self.ready[group.prompt.group_id] = group
        return Counter()

    def _finish(self, group_id: str) -> None:
        self.done[group_id] = None
        while len(self.done) > MAX_DONE_GROUPS:
            del self.done[next(iter(self.done))]

    def num_ready_samples(self) -> int:
        """Accepted samples in ready groups."""
        return sum(len(g.accepted()) for g in self.ready.values())

    def take_batch(self, batch_size: int, policy_version: int) -> list[RlSample] | None:
        """Whole ready groups, oldest first, up to ``batch_size`` samples; None while too few are ready.

        Samples stale against ``policy_version`` are dropped first; a group left uniform (dynamic
        sampling) or empty is dropped whole.
        """
        self.policy_version = max(self.policy_version, policy_version)
        floor = self.policy_version - self.max_staleness
        for gid, group in list(self.ready.items()):
            for index, sample in list(group.samples.items()):
                if sample is not None and self.policy_version and sample.oldest_version < floor:
                    group.samples[index] = None
                    self.drops[DROP_STALE] += 1
            left = group.accepted()
            if not left or (self.dynamic_sampling and len({s.reward for s in left}) <= 1):
                self.drops[DROP_UNIFORM_GROUP] += len(left)
                del self.ready[gid]
                self._finish(gid)
        if self.num_ready_samples() < batch_size:
            return None
        out: list[RlSample] = []
        for gid, group in list(self.ready.items()):
            samples = group.accepted()
            if len(out) + len(samples) > batch_size:
                continue
            rewards = [s.reward or 0.0 for s in samples]
            mean = sum(rewards) / len(rewards)
            std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
            for s in samples:
                s.metadata.update(
                    {"group_reward_mean": repr(mean), "group_reward_std": repr(std), "group_size": str(len(samples))}
                )
            out += samples
            del self.ready[gid]
            self._finish(gid)
            if len(out) == batch_size:
                break
        return out

    # State ---------------------------------------------------------------------------------------

    def to_entries(self) -> dict[str, Any]:
        """The buffer as key -> JSON entries (one per group), so checkpoints can store only changes."""
        entries: dict[str, Any] = {
            "meta": {"policy_version": self.policy_version, "drops": dict(self.drops), "done": list(self.done)}
        }
        for state, groups in (("outstanding", self.outstanding), ("ready", self.ready)):
            for gid, g in groups.items():
                entries[f"group:{gid}"] = {
                    "state": state,
                    "prompt": asdict(g.prompt),
                    "samples": {str(i): (s.to_json() if s is not None else None) for i, s in g.samples.items()},
                }
        return entries

    def load_entries(self, entries: dict[str, Any]) -> None:
        """Inverse of ``to_entries``; group order is kept (ready groups stay oldest first)."""
        meta = entries.get("meta", {})
        self.policy_version = int(meta.get("policy_version", 0))
        self.drops = Counter(meta.get("drops", {}))
        self.done = dict.fromkeys(meta.get("done", []))
        self.outstanding, self.ready = {}, {}
        groups = [(k, v) for k, v in entries.items() if k.startswith("group:")]
        groups.sort(key=lambda kv: _group_order(kv[0]))
        for key, value in groups:
            group = Group(
                PromptDraw(**value["prompt"]),
                {int(i): (RlSample.from_json(s) if s is not None else None) for i, s in value["samples"].items()},
            )
            (self.outstanding if value["state"] == "outstanding" else self.ready)[key[len("group:") :]] = group


def _group_order(key: str) -> tuple[int, str]:
    tail = key.rsplit(":", 1)[-1]
    return (int(tail), key) if tail.isdigit() else (-1, key)


def now_s() -> float:
    """Wall clock for prompt deadlines."""
    return time.time()
