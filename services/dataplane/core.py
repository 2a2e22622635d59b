"""The data plane's logic: plans, their loaders, batches, prompts, samples, checkpoints and restores.

No grpc here: the servicer converts messages and calls these methods; domain errors become status
codes. Redis holds every plan's resolved spec, its control record (rank count, restore point),
its checkpoints and, for RL plans, the batches already served, so a restarted service rebuilds any
plan on first use from the latest checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from services.common.redis_meta import RedisMeta
from services.dataplane.balance import partition, sample_cost, split_imbalance
from services.dataplane.checkpoints import CheckpointStore, Saved
from services.dataplane.config import DataPlaneConfig
from services.dataplane.experience import ExperienceBuffer, PromptDraw, RlSample, check_sample, now_s
from services.dataplane.loader import LoaderPool
from services.dataplane.mixer import GlobalBatch, MixState, block_bounds, build_block, fetch, pick_sources
from services.dataplane.sources import GENERATORS, LoadedSample
from services.dataplane.spec import Plan, parse_plan

logger = logging.getLogger(__name__)

REQUEST_TTL_S = 24 * 3600
MAX_PROMPT_WAIT_S = 60.0
"""Longest NextPrompts wait for room in the experience buffer."""


@dataclass
class RankBatch:
    """One rank's share of a global step."""

    step: int
    rank: int
    num_ranks: int
    samples: list[LoadedSample] | list[RlSample]
    num_tokens: int
    cost: float


@dataclass
class SourceReport:
    """Loading figures of one source for Stats."""

    name: str
    declared_share: float
    realized_share: float
    num_records_read: int
    num_records_skipped: int
    last_skip_reason: str
    num_loader_workers: int
    preprocess_s_per_record: float


@dataclass
class PlanReport:
    """What Stats returns."""

    next_step: int
    num_ranks: int
    num_samples_served: int
    num_tokens_served: int
    samples_per_s: float
    tokens_per_s: float
    last_cost_imbalance: float
    sources: list[SourceReport]
    buffer: dict[str, Any] | None


@dataclass
class PlanRuntime:
    """A live plan: its loaders and the state of its stream."""

    plan_id: str
    plan: Plan
    pool: LoaderPool
    checkpoints: CheckpointStore
    num_ranks: int
    restore_point: int = 0
    closed: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Supervised stream: built batches, the state at the next block's start, states of built blocks.
    batches: dict[int, GlobalBatch] = field(default_factory=dict)
    built_end: int = 0
    mix: MixState | None = None
    block_states: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_auto_checkpoint: int = 0
    newest_requested: int = -1
    realized: list[int] = field(default_factory=list)
    # RL: the prompt stream, the experience buffer, batches built so far.
    buffer: ExperienceBuffer | None = None
    prompt_mix: MixState | None = None
    group_counter: int = 0
    rl_next_step: int = 0
    rl_batches: dict[int, list[RlSample]] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Figures.
    served: deque[tuple[float, int, int]] = field(default_factory=lambda: deque(maxlen=4096))
    num_samples_served: int = 0
    num_tokens_served: int = 0
    last_imbalance: float = 1.0
    prefetch: asyncio.Task[None] | None = None

    def entries(self) -> dict[str, Any]:
        """The state to checkpoint, as entries (see ``checkpoints``)."""
        if self.buffer is None:
            raise AssertionError("supervised plans checkpoint block states")
        assert self.prompt_mix is not None
        out = self.buffer.to_entries()
        out["mix"] = self.prompt_mix.to_json()
        out["rl"] = {"group_counter": self.group_counter, "next_step": self.rl_next_step}
        return out


def _ranks_check(rank: int, num_ranks: int) -> None:
    if rank < 0 or rank >= num_ranks:
        raise OutOfRange(f"rank={rank}: the plan has {num_ranks} ranks (0..{num_ranks - 1})")


class DataPlane:
    """Every plan this process serves."""

    def __init__(self, meta: RedisMeta, config: DataPlaneConfig) -> None:
        self.meta = meta
        self.config = config
        self.plans: dict[str, PlanRuntime] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    # Idempotency ---------------------------------------------------------------------------------

    async def _once(self, request_id: str, call: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run ``call`` once per request id; a retry gets the first answer."""
        if not request_id:
            raise InvalidArgument("request_id='': mutating calls need a request id")
        key = self.meta.key("request", request_id)
        cached = await self.meta.get_json(key)
        if cached is not None:
            return dict(cached)
        result = await call()
        await self.meta.client.set(key, json.dumps(result), ex=REQUEST_TTL_S)
        return result

    # Plans ---------------------------------------------------------------------------------------

    async def submit_plan(self, request_id: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Check the spec, start its loaders, store it; returns (plan id, resolved spec)."""

        async def submit() -> dict[str, Any]:
            plan = parse_plan(spec, set(GENERATORS))
            plan_id = uuid.uuid4().hex[:16]
            runtime = await self._start(plan_id, plan, plan.num_ranks)
            await self.meta.put_many(
                {
                    self.meta.key("plan", plan_id, "spec"): plan.resolved,
                    self.meta.key("plan", plan_id, "control"): {"num_ranks": plan.num_ranks, "closed": False},
                }
            )
            self.plans[plan_id] = runtime
            logger.info("plan %s: %d sources, %d ranks", plan_id, len(plan.sources), plan.num_ranks)
            return {"plan_id": plan_id, "resolved": plan.resolved}

        result = await self._once(request_id, submit)
        return str(result["plan_id"]), dict(result["resolved"])

    async def _start(self, plan_id: str, plan: Plan, num_ranks: int) -> PlanRuntime:
        pool = LoaderPool(plan, self.config.max_loader_workers)
        await pool.start()
        runtime = PlanRuntime(
            plan_id,
            plan,
            pool,
            CheckpointStore(self.meta, plan_id, self.config.checkpoint_base_every),
            num_ranks,
        )
        runtime.mix = MixState.initial(len(plan.sources))
        runtime.block_states[0] = runtime.mix.to_json()
        if plan.rl is not None:
            runtime.buffer = ExperienceBuffer(
                plan.rl.group_size,
                plan.rl.max_staleness_versions,
                plan.rl.dynamic_sampling,
                plan.rl.max_buffered_samples,
            )
            runtime.prompt_mix = MixState.initial(len(plan.sources))
        return runtime

    async def get(self, plan_id: str) -> PlanRuntime:
        """The live plan; one stored in Redis but not loaded here (a restart) is rebuilt first."""
        runtime = self.plans.get(plan_id)
        if runtime is not None:
            return runtime
        lock = self._opening.setdefault(plan_id, asyncio.Lock())
        async with lock:
            if plan_id in self.plans:
                return self.plans[plan_id]
            if not plan_id or ":" in plan_id:
                raise InvalidArgument(f"plan_id={plan_id!r} is not a plan id")
            resolved = await self.meta.get_json(self.meta.key("plan", plan_id, "spec"))
            if resolved is None:
                raise NotFound(f"plan {plan_id!r} does not exist")
            control = await self.meta.get_json(self.meta.key("plan", plan_id, "control")) or {}
            plan = parse_plan(resolved, set(GENERATORS))
            runtime = await self._start(plan_id, plan, int(control.get("num_ranks", plan.num_ranks)))
            runtime.closed = bool(control.get("closed", False))
            latest = await runtime.checkpoints.nearest(2**62)
            if latest is not None:
                await self._restore_locked(runtime, latest, runtime.num_ranks)
            self.plans[plan_id] = runtime
            logger.info("plan %s rebuilt from Redis (checkpoint %s)", plan_id, latest)
            return runtime

    async def _open(self, plan_id: str) -> PlanRuntime:
        runtime = await self.get(plan_id)
        if runtime.closed:
            raise FailedPrecondition(f"plan {plan_id} is closed; Restore reopens it")
        return runtime

    async def close_plan(self, request_id: str, plan_id: str) -> None:
        """Stop the plan's loaders; its checkpoints stay."""

        async def close() -> dict[str, Any]:
            runtime = await self.get(plan_id)
            async with runtime.lock:
                await self._save_control(runtime, closed=True)
                runtime.closed = True
                if runtime.prefetch is not None:
                    runtime.prefetch.cancel()
                await runtime.pool.close()
                runtime.batches.clear()
            self.plans.pop(plan_id, None)
            return {}

        await self._once(request_id, close)

    async def _save_control(self, runtime: PlanRuntime, *, closed: bool | None = None) -> None:
        await self.meta.put_many(
            {
                self.meta.key("plan", runtime.plan_id, "control"): {
                    "num_ranks": runtime.num_ranks,
                    "closed": runtime.closed if closed is None else closed,
                    "restore_point": runtime.restore_point,
                }
            }
        )

    async def close(self) -> None:
        """Stop every plan's loaders (service shutdown); plans stay in Redis."""
        for runtime in list(self.plans.values()):
            if runtime.prefetch is not None:
                runtime.prefetch.cancel()
            await runtime.pool.close()
        self.plans.clear()

    # Supervised batches --------------------------------------------------------------------------

    async def _build_next_block(self, runtime: PlanRuntime) -> None:
        assert runtime.mix is not None
        first = runtime.built_end
        state_at_start = runtime.mix.to_json()
        runtime.block_states[first] = state_at_start
        state = runtime.mix.copy()
        batches = await build_block(runtime.plan, state, first, runtime.pool.load)
        for batch in batches:
            runtime.batches[batch.step] = batch
        runtime.mix = state
        runtime.built_end = first + len(batches)
        runtime.block_states[runtime.built_end] = state.to_json()
        counts = [0] * len(runtime.plan.sources)
        for batch in batches:
            for sample in batch.samples:
                counts[sample.source] += 1
        runtime.realized = counts
        every = self.config.checkpoint_every_steps
        if every and runtime.built_end - runtime.last_auto_checkpoint >= every:
            runtime.last_auto_checkpoint = runtime.built_end
            await self._save_block_state(runtime, runtime.built_end, runtime.built_end)

    async def _save_block_state(self, runtime: PlanRuntime, step: int, block_start: int) -> Saved:
        entries = {"mix": runtime.block_states[block_start], "block_start": block_start}
        return await runtime.checkpoints.save(step, entries)

    def _evict(self, runtime: PlanRuntime) -> None:
        floor = runtime.newest_requested - self.config.retain_steps
        for step in [s for s in runtime.batches if s < floor]:
            del runtime.batches[step]
        keep = {block_bounds(runtime.plan, s)[0] for s in runtime.batches} | {runtime.built_end}
        for start in [s for s in runtime.block_states if s not in keep and s < floor]:
            del runtime.block_states[start]

    def _check_step(self, runtime: PlanRuntime, step: int) -> None:
        if step < runtime.restore_point:
            raise OutOfRange(f"step={step} is before the last restore point {runtime.restore_point}")
        if step > runtime.built_end + self.config.max_steps_ahead:
            raise OutOfRange(
                f"step={step} is more than {self.config.max_steps_ahead} steps past the newest built step "
                f"{runtime.built_end - 1}"
            )

    async def _ensure_built(self, runtime: PlanRuntime, step: int) -> GlobalBatch:
        async with runtime.lock:
            self._check_step(runtime, step)
            while runtime.built_end <= step:
                await self._build_next_block(runtime)
            batch = runtime.batches.get(step)
            if batch is None:
                raise OutOfRange(
                    f"step={step} is older than the {self.config.retain_steps} retained steps; Restore to replay it"
                )
            return batch

    def _prefetch(self, runtime: PlanRuntime, step: int) -> None:
        """Build the next block in the background once a consumer reaches this block's last step."""
        if runtime.prefetch is not None and not runtime.prefetch.done():
            return
        if step + 1 < runtime.built_end:
            return

        async def ahead() -> None:
            try:
                await self._ensure_built(runtime, runtime.built_end)
            except Exception:
                logger.exception("prefetch of plan %s failed; the next NextBatch retries", runtime.plan_id)

        runtime.prefetch = asyncio.create_task(ahead(), name=f"prefetch-{runtime.plan_id}")

    async def next_batch(
        self, plan_id: str, rank: int, step: int, policy_version: int, timeout_s: float | None
    ) -> RankBatch:
        """One rank's share of global batch ``step``; the same (rank, step) always gives the same samples."""
        runtime = await self._open(plan_id)
        _ranks_check(rank, runtime.num_ranks)
        if step < 0:
            raise OutOfRange(f"step={step}: steps start at 0")
        if runtime.buffer is not None:
            return await self._next_rl_batch(runtime, rank, step, policy_version, timeout_s)
        batch = await self._ensure_built(runtime, step)
        runtime.newest_requested = max(runtime.newest_requested, step)
        self._evict(runtime)
        self._prefetch(runtime, step)
        bins = batch.split(runtime.num_ranks)
        runtime.last_imbalance = split_imbalance(batch.costs, bins)
        samples = [batch.samples[i] for i in bins[rank]]
        num_tokens = sum(s.length for s in samples)
        self._count(runtime, len(samples), num_tokens)
        return RankBatch(step, rank, runtime.num_ranks, samples, num_tokens, sum(batch.costs[i] for i in bins[rank]))

    def _count(self, runtime: PlanRuntime, num_samples: int, num_tokens: int) -> None:
        runtime.num_samples_served += num_samples
        runtime.num_tokens_served += num_tokens
        runtime.served.append((time.monotonic(), num_samples, num_tokens))

    # Checkpoints and restore ---------------------------------------------------------------------

    async def checkpoint(self, request_id: str, plan_id: str, step: int) -> Saved:
        """Checkpoint the state in which ``step`` is the next global batch."""

        async def save() -> dict[str, Any]:
            runtime = await self._open(plan_id)
            if runtime.buffer is not None:
                async with runtime.lock:
                    if step != runtime.rl_next_step:
                        raise FailedPrecondition(
                            f"step={step}: an RL plan checkpoints its present state, next step {runtime.rl_next_step}"
                        )
                    saved = await runtime.checkpoints.save(step, runtime.entries())
            else:
                if step < 0:
                    raise OutOfRange(f"step={step}: steps start at 0")
                first, _ = block_bounds(runtime.plan, step)
                async with runtime.lock:
                    self._check_step(runtime, step)
                    while runtime.built_end <= first:
                        await self._build_next_block(runtime)
                    if first not in runtime.block_states:
                        raise OutOfRange(f"step={step} is older than the retained steps; checkpoint a later step")
                    saved = await self._save_block_state(runtime, step, first)
            return {"step": saved.step, "base_step": saved.base_step, "size_bytes": saved.size_bytes}

        result = await self._once(request_id, save)
        return Saved(int(result["step"]), int(result["base_step"]), int(result["size_bytes"]))

    async def restore(self, request_id: str, plan_id: str, step: int, num_ranks: int) -> tuple[int, int, int]:
        """Rewind so ``step`` is served next (optionally with another rank count): (step, ranks, checkpoint)."""

        async def rewind() -> dict[str, Any]:
            if step < 0:
                raise OutOfRange(f"step={step}: steps start at 0")
            if num_ranks < 0 or num_ranks > 4096:
                raise InvalidArgument(f"num_ranks={num_ranks}: must be 0 (keep) or 1..4096")
            runtime = await self.get(plan_id)
            if runtime.closed:
                runtime = await self._reopen(runtime)
            async with runtime.lock:
                return await self._restore_locked(runtime, step, num_ranks or runtime.num_ranks)

        result = await self._once(request_id, rewind)
        return int(result["step"]), int(result["num_ranks"]), int(result["checkpoint_step"])

    async def _reopen(self, runtime: PlanRuntime) -> PlanRuntime:
        fresh = await self._start(runtime.plan_id, runtime.plan, runtime.num_ranks)
        self.plans[runtime.plan_id] = fresh
        await self._save_control(fresh, closed=False)
        return fresh

    async def _rl_consumed(self, runtime: PlanRuntime) -> bool:
        """Whether an RL plan has built a batch (here or, before a restart, in Redis)."""
        if runtime.rl_next_step > 0 or runtime.rl_batches:
            return True
        async for _ in self.meta.client.scan_iter(self.meta.key("plan", runtime.plan_id, "rlbatch", "*"), count=100):
            return True
        return False

    async def _restore_locked(self, runtime: PlanRuntime, step: int, num_ranks: int) -> dict[str, Any]:
        if runtime.prefetch is not None:
            runtime.prefetch.cancel()
        checkpoint_step = await runtime.checkpoints.nearest(step)
        fresh_rl = runtime.buffer is not None and checkpoint_step is None and step == 0
        if fresh_rl and not await self._rl_consumed(runtime):
            # A fresh plan already serves step 0 next: a trainer resuming from a checkpoint that holds no cursor
            # of this plan (a warm start shared by several runs) asks for step 0, and the buffered samples and
            # prompts out for that step stay.
            pass
        elif runtime.buffer is not None:
            if checkpoint_step is None:
                raise FailedPrecondition(
                    f"step={step}: an RL plan restores only to a checkpoint (none at or before it), "
                    f"or to step 0 before any batch is served (next step {runtime.rl_next_step})"
                )
            entries = await runtime.checkpoints.load(checkpoint_step)
            runtime.buffer.load_entries(entries)
            # Prompts that were out at the checkpoint: whoever had them has already answered or lost them
            # (their samples after the checkpoint are gone), so they go out again with the next NextPrompts
            # rather than holding buffer room until prompt_timeout_s.
            for group in runtime.buffer.outstanding.values():
                group.prompt.issued_unix_s = 0.0
            runtime.prompt_mix = MixState.from_json(entries["mix"])
            runtime.group_counter = int(entries["rl"]["group_counter"])
            runtime.rl_next_step = int(entries["rl"]["next_step"])
            runtime.rl_batches.clear()
            stale = [
                k async for k in self.meta.client.scan_iter(self.meta.key("plan", runtime.plan_id, "rlbatch", "*"))
            ]
            stale = [k for k in stale if int(k.rsplit(":", 1)[1]) >= runtime.rl_next_step]
            if stale:
                await self.meta.client.delete(*stale)
            await runtime.checkpoints.drop_after(checkpoint_step)
            step = runtime.rl_next_step
        else:
            if checkpoint_step is None:
                mix, start = MixState.initial(len(runtime.plan.sources)), 0
            else:
                entries = await runtime.checkpoints.load(checkpoint_step)
                mix, start = MixState.from_json(entries["mix"]), int(entries["block_start"])
            runtime.batches.clear()
            runtime.block_states = {start: mix.to_json()}
            runtime.mix = mix
            runtime.built_end = start
            target, _ = block_bounds(runtime.plan, step)
            # Replay whole blocks from the checkpoint to the block holding ``step``; their samples
            # are loaded again (skips depend on the data) and then let go.
            while runtime.built_end < target:
                await self._build_next_block(runtime)
                runtime.batches.clear()
            runtime.newest_requested = step - 1
        runtime.restore_point = step
        runtime.num_ranks = num_ranks
        runtime.last_auto_checkpoint = runtime.built_end
        await self._save_control(runtime)
        logger.info(
            "plan %s restored: next step %d, %d ranks, from checkpoint %s",
            runtime.plan_id,
            step,
            num_ranks,
            checkpoint_step,
        )
        return {
            "step": step,
            "num_ranks": num_ranks,
            "checkpoint_step": -1 if checkpoint_step is None else checkpoint_step,
        }

    # RL ------------------------------------------------------------------------------------------

    def _rl(self, runtime: PlanRuntime) -> ExperienceBuffer:
        if runtime.buffer is None:
            raise FailedPrecondition(f"plan {runtime.plan_id} is not an RL plan (its spec has no rl section)")
        return runtime.buffer

    async def next_prompts(
        self, request_id: str, plan_id: str, consumer_id: str, num_prompts: int, wait_s: float = 0.0
    ) -> list[PromptDraw]:
        """Up to ``num_prompts`` prompts: overdue ones again first, then new draws; with ``wait_s`` a
        full buffer is waited on (up to that long) rather than refused at once."""
        if num_prompts <= 0 or num_prompts > 4096:
            raise InvalidArgument(f"num_prompts={num_prompts}: must be 1..4096")
        if not consumer_id:
            raise InvalidArgument("consumer_id='': name the rollout server asking")
        if not 0 <= wait_s <= MAX_PROMPT_WAIT_S:
            raise InvalidArgument(f"wait_s={wait_s}: must be 0..{MAX_PROMPT_WAIT_S:g} seconds")
        if wait_s > 0:
            await self._await_room(plan_id, wait_s, request_id)

        async def draw() -> dict[str, Any]:
            runtime = await self._open(plan_id)
            buffer = self._rl(runtime)
            async with runtime.lock:
                now = now_s()
                out = buffer.overdue(self.config.prompt_timeout_s, now)[:num_prompts]
                room = buffer.room_for_groups()
                want = min(num_prompts - len(out), room)
                if not out and want == 0:
                    buffer.check_room()
                if want > 0:
                    out += await self._draw_prompts(runtime, want)
                    buffer.hand_out(out[len(out) - want :])
                for prompt in out:
                    prompt.consumer_id = consumer_id
                    prompt.issued_unix_s = now
            return {"prompts": [vars(p) for p in out]}

        result = await self._once(request_id, draw)
        return [PromptDraw(**p) for p in result["prompts"]]

    async def _await_room(self, plan_id: str, wait_s: float, request_id: str) -> None:
        """Return once the buffer has room for a group or an overdue prompt to hand out again, or after
        ``wait_s``; at once for a retry of a request already answered (its answer is kept). The
        condition is checked holding ``runtime.changed``, which every change notifies under, so a change
        between the check and the wait is not missed."""
        runtime = await self._open(plan_id)
        buffer = self._rl(runtime)
        deadline = time.monotonic() + wait_s
        answered: bool | None = None  # looked up only when the draw would wait
        async with runtime.changed:
            while True:
                async with runtime.lock:
                    if buffer.room_for_groups() or buffer.overdue(self.config.prompt_timeout_s, now_s()):
                        return
                if answered is None:
                    answered = await self.meta.get_json(self.meta.key("request", request_id)) is not None
                remaining = deadline - time.monotonic()
                if answered or remaining <= 0:
                    return
                try:
                    # Overdue prompts become due without a change: look again at least every second.
                    await asyncio.wait_for(runtime.changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass

    async def _draw_prompts(self, runtime: PlanRuntime, count: int) -> list[PromptDraw]:
        assert runtime.prompt_mix is not None
        plan = runtime.plan
        picks = pick_sources(plan, runtime.prompt_mix, runtime.rl_next_step, count)
        sources = sorted(set(picks))
        mix = runtime.prompt_mix
        fetched = await asyncio.gather(*(fetch(plan, mix, s, picks.count(s), runtime.pool.load) for s in sources))
        drawn = dict(zip(sources, fetched, strict=True))
        out = []
        runtime.realized = [picks.count(i) for i in range(len(plan.sources))]
        for source in picks:
            sample = drawn[source].pop(0)
            conf = plan.sources[source]
            out.append(
                PromptDraw(
                    group_id=f"{runtime.plan_id}:{runtime.group_counter}",
                    prompt_id=f"{conf.name}/{sample.record_id}",
                    source=conf.name,
                    text=sample.text,
                    token_ids=sample.tokens[: sample.prompt_len].tolist(),
                    verifier=conf.preprocessing.verifier,
                    reference=sample.reference,
                )
            )
            runtime.group_counter += 1
        return out

    async def put_samples(self, plan_id: str, samples: list[RlSample]) -> tuple[int, dict[str, int]]:
        """Take samples into the buffer in order: (accepted, drops by reason). A malformed one raises
        InvalidArgument naming it; the ones before it are kept."""
        runtime = await self._open(plan_id)
        buffer = self._rl(runtime)
        accepted = 0
        drops: dict[str, int] = {}
        try:
            async with runtime.lock:
                for position, sample in enumerate(samples):
                    check_sample(sample, buffer.group_size, position)
                    ok, dropped = buffer.put(sample)
                    accepted += ok
                    for reason, n in dropped.items():
                        drops[reason] = drops.get(reason, 0) + n
        finally:
            async with runtime.changed:
                runtime.changed.notify_all()
        return accepted, drops

    async def _next_rl_batch(
        self, runtime: PlanRuntime, rank: int, step: int, policy_version: int, timeout_s: float | None
    ) -> RankBatch:
        buffer = self._rl(runtime)
        if step < runtime.restore_point:
            raise OutOfRange(f"step={step} is before the last restore point {runtime.restore_point}")
        if step > runtime.rl_next_step + self.config.max_steps_ahead:
            raise OutOfRange(f"step={step} is too far past the next RL step {runtime.rl_next_step}")
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else self.config.max_wait_s)
        while True:
            async with runtime.lock:
                buffer.policy_version = max(buffer.policy_version, policy_version)
                samples = await self._rl_batch_locked(runtime, step)
                if samples is not None:
                    break
                ready = buffer.num_ready_samples()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"step {step}: {ready} of {runtime.plan.global_batch_size} samples ready; retry NextBatch"
                )
            async with runtime.changed:
                try:
                    await asyncio.wait_for(runtime.changed.wait(), timeout=min(remaining, 1.0))
                except TimeoutError:
                    pass
        async with runtime.changed:
            runtime.changed.notify_all()  # a batch taken frees the buffer: NextPrompts waiting for room
        plan = runtime.plan
        costs = [sample_cost(s.length, plan.cost_alpha, plan.cost_beta) for s in samples]
        bins = partition(costs, runtime.num_ranks)
        runtime.last_imbalance = split_imbalance(costs, bins) if samples else 1.0
        mine = [samples[i] for i in bins[rank]]
        num_tokens = sum(s.length for s in mine)
        self._count(runtime, len(mine), num_tokens)
        return RankBatch(step, rank, runtime.num_ranks, mine, num_tokens, sum(costs[i] for i in bins[rank]))

    async def _rl_batch_locked(self, runtime: PlanRuntime, step: int) -> list[RlSample] | None:
        if step in runtime.rl_batches:
            return runtime.rl_batches[step]
        key = self.meta.key("plan", runtime.plan_id, "rlbatch", step)
        stored = await self.meta.get_json(key)
        if stored is not None:
            runtime.rl_batches[step] = [RlSample.from_json(s) for s in stored]
            return runtime.rl_batches[step]
        assert runtime.buffer is not None
        while runtime.rl_next_step <= step:
            samples = runtime.buffer.take_batch(runtime.plan.global_batch_size, runtime.buffer.policy_version)
            if samples is None:
                return None
            built = runtime.rl_next_step
            await self.meta.client.set(
                self.meta.key("plan", runtime.plan_id, "rlbatch", built),
                json.dumps([s.to_json() for s in samples]),
                ex=REQUEST_TTL_S,
            )
            runtime.rl_batches[built] = samples
            runtime.rl_next_step = built + 1
            every = self.config.checkpoint_every_steps
            if every and runtime.rl_next_step % every == 0:
                await runtime.checkpoints.save(runtime.rl_next_step, runtime.entries())
        for old in [s for s in runtime.rl_batches if s < step - self.config.retain_steps]:
            del runtime.rl_batches[old]
        return runtime.rl_batches[step]

    # Stats ---------------------------------------------------------------------------------------

    async def stats(self, plan_id: str) -> PlanReport:
        """Progress, per-source loading, realised mixture and the experience buffer."""
        runtime = await self.get(plan_id)
        plan = runtime.plan
        now = time.monotonic()
        recent = [(t, n, k) for t, n, k in runtime.served if now - t <= 60.0]
        span = max(1e-9, now - recent[0][0]) if len(recent) > 1 else 0.0
        samples_per_s = sum(n for _, n, _ in recent) / span if span else 0.0
        tokens_per_s = sum(k for _, _, k in recent) / span if span else 0.0
        next_step = runtime.rl_next_step if runtime.buffer is not None else runtime.built_end
        declared = plan.weights_at(max(0, next_step - 1))
        total = sum(runtime.realized) or 1
        sources = []
        for i, conf in enumerate(plan.sources):
            counters = runtime.pool.stats[i]
            sources.append(
                SourceReport(
                    conf.name,
                    declared[i],
                    (runtime.realized[i] / total) if runtime.realized else 0.0,
                    counters.num_records_read,
                    counters.num_records_skipped,
                    counters.last_skip_reason,
                    len(runtime.pool.workers[i]),
                    counters.s_per_record,
                )
            )
        buffer = None
        if runtime.buffer is not None:
            b = runtime.buffer
            buffer = {
                "num_buffered_samples": b.num_ready_samples(),
                "num_prompts_outstanding": len(b.outstanding),
                "dropped": dict(b.drops),
                "policy_version": b.policy_version,
            }
        return PlanReport(
            next_step,
            runtime.num_ranks,
            runtime.num_samples_served,
            runtime.num_tokens_served,
            samples_per_s,
            tokens_per_s,
            runtime.last_imbalance,
            sources,
            buffer,
        )
