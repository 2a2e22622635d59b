"""Differential checkpoints in Redis: a full base now and then, per-step deltas against it in between.

A plan's state is a mapping of entries (the mixing cursors, the buffer's meta, one entry per RL
group). A delta stores only the entries that changed or vanished since its base, so a checkpoint of
an RL plan with a large experience buffer writes the groups that moved, not the whole buffer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from services.common.errors import DataLoss
from services.common.redis_meta import RedisMeta


def diff(base: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """What turns ``base`` into ``current``: changed or new entries and removed keys."""
    changed = {k: v for k, v in current.items() if base.get(k) != v}
    removed = sorted(k for k in base if k not in current)
    return {"set": changed, "removed": removed}


def apply(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``delta`` applied."""
    out = {k: v for k, v in base.items() if k not in set(delta["removed"])}
    out.update(delta["set"])
    return out


@dataclass
class Saved:
    """What ``CheckpointStore.save`` wrote."""

    step: int
    base_step: int
    size_bytes: int


class CheckpointStore:
    """Checkpoints of one plan: hash ``plan:<id>:ckpt`` of step -> record (base or delta)."""

    def __init__(self, meta: RedisMeta, plan_id: str, base_every: int) -> None:
        self.meta = meta
        self.key = meta.key("plan", plan_id, "ckpt")
        self.base_every = base_every
        self._base: tuple[int, dict[str, Any]] | None = None
        self._since_base = 0

    async def steps(self) -> list[int]:
        """Checkpointed steps, ascending."""
        return sorted(int(s) for s in await self.meta.client.hkeys(self.key))

    async def _record(self, step: int) -> dict[str, Any]:
        raw = await self.meta.client.hget(self.key, str(step))
        if raw is None:
            raise DataLoss(f"checkpoint of step {step} is missing from Redis")
        return dict(json.loads(raw))

    async def save(self, step: int, entries: dict[str, Any]) -> Saved:
        """Write the state in which ``step`` is next: a delta against the base, or a new base."""
        if self._base is None or self._since_base >= self.base_every or step < self._base[0]:
            record: dict[str, Any] = {"step": step, "base_step": step, "full": entries}
            self._base = (step, entries)
            self._since_base = 0
        else:
            record = {"step": step, "base_step": self._base[0], "delta": diff(self._base[1], entries)}
            self._since_base += 1
        text = json.dumps(record, separators=(",", ":"))
        await self.meta.client.hset(self.key, str(step), text)
        return Saved(step, int(record["base_step"]), len(text.encode()))

    async def load(self, step: int) -> dict[str, Any]:
        """The entries saved at ``step`` (its base with its delta applied)."""
        record = await self._record(step)
        if "full" in record:
            return dict(record["full"])
        base = await self._record(int(record["base_step"]))
        if "full" not in base:
            raise DataLoss(f"checkpoint of step {step} names base {record['base_step']}, which is not a base")
        return apply(dict(base["full"]), record["delta"])

    async def nearest(self, step: int) -> int | None:
        """The latest checkpointed step at or before ``step``."""
        candidates = [s for s in await self.steps() if s <= step]
        return max(candidates) if candidates else None

    async def drop_after(self, step: int) -> None:
        """Forget checkpoints after ``step`` (a restore rewinds history) and start a fresh base next."""
        later = [str(s) for s in await self.steps() if s > step]
        if later:
            await self.meta.client.hdel(self.key, *later)
        self._base = None
