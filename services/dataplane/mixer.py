"""Data constructor: global batches from (seed, plan, mixture history), deterministically.

Global steps are grouped in *blocks* of ``lookahead_batches`` steps (a block never crosses a
curriculum change). A block's samples are drawn slot by slot: each slot takes the next sample of
the source furthest behind its declared share (Megatron-style blending, no randomness), from that
source's deterministic stream (``sources.SourceReader``). Then ``balance.compose`` decides which of
the block's samples form each step, so every step splits evenly across ranks. The state between
blocks — per-source cursors and blending counts — is a few integers: that is what checkpoints hold.

Composition uses the plan's declared ``num_ranks``; a restore with another rank count keeps the
global batches (the same samples per step) and only re-splits each batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.errors import FailedPrecondition
from services.dataplane.balance import bucket_of, compose, partition, sample_cost
from services.dataplane.sources import LoadedSample
from services.dataplane.spec import Plan

MAX_SKIPS_IN_A_ROW = 10_000

LoadFn = Callable[[int, list[int]], Awaitable[dict[int, LoadedSample | None]]]


@dataclass
class MixState:
    """Where every source's stream stands and how far blending has come in the current stage."""

    cursors: list[int]
    """Next sequence number per source."""
    blend_counts: list[int]
    """Samples drawn per source since the current schedule stage began."""
    stage_start: int = 0
    """First step of the stage the counts belong to."""

    @classmethod
    def initial(cls, num_sources: int) -> MixState:
        """The state before step 0."""
        return cls([0] * num_sources, [0] * num_sources, 0)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return {"cursors": list(self.cursors), "blend_counts": list(self.blend_counts), "stage_start": self.stage_start}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MixState:
        """Inverse of ``to_json``."""
        return cls(list(data["cursors"]), list(data["blend_counts"]), int(data["stage_start"]))

    def copy(self) -> MixState:
        """An independent copy."""
        return MixState.from_json(self.to_json())


def pick_sources(plan: Plan, state: MixState, step: int, num_slots: int) -> list[int]:
    """Sources of the next ``num_slots`` slots at ``step``'s weights; advances the blending counts."""
    stage = plan.stage_start(step)
    if stage != state.stage_start:
        state.stage_start = stage
        state.blend_counts = [0] * len(plan.sources)
    weights = plan.weights_at(step)
    picks = []
    for _ in range(num_slots):
        drawn = sum(state.blend_counts) + 1
        best = max(
            (i for i, w in enumerate(weights) if w > 0), key=lambda i: (weights[i] * drawn - state.blend_counts[i], -i)
        )
        state.blend_counts[best] += 1
        picks.append(best)
    return picks


async def fetch(plan: Plan, state: MixState, source: int, count: int, load: LoadFn) -> list[LoadedSample]:
    """The next ``count`` usable samples of ``source`` (packed when the source packs); advances its cursor.

    Records that do not parse are skipped (the loader counts and reports them).
    """
    pre = plan.sources[source].preprocessing
    out: list[LoadedSample] = []
    pending: list[LoadedSample] = []
    skips = 0
    while len(out) < count:
        want = max(1, count - len(out)) if not pre.pack else max(4, 2 * (count - len(out)))
        start = state.cursors[source]
        seqs = list(range(start, start + want))
        loaded = await load(source, seqs)
        for seq in seqs:
            sample = loaded[seq]
            if sample is None:
                skips += 1
                if skips > MAX_SKIPS_IN_A_ROW:
                    raise FailedPrecondition(
                        f"source {plan.sources[source].name}: {skips} records in a row did not parse; fix the data"
                    )
                state.cursors[source] = seq + 1
                continue
            skips = 0
            if not pre.pack:
                out.append(sample)
                state.cursors[source] = seq + 1
                if len(out) == count:
                    break
                continue
            if pending and sum(p.length for p in pending) + sample.length > pre.max_length_tokens:
                out.append(_pack(pending))
                pending = []
                if len(out) == count:
                    break  # this sample starts the next pack: its cursor is not advanced
            pending.append(sample)
            state.cursors[source] = seq + 1
        else:
            continue
        break
    if pending:
        # A block ends mid-pack: give the unconsumed records back to the stream.
        state.cursors[source] = pending[0].seq
    return out


def _pack(parts: list[LoadedSample]) -> LoadedSample:
    tokens = np.concatenate([p.tokens for p in parts])
    record_id = parts[0].record_id if len(parts) == 1 else f"{parts[0].record_id}+{len(parts) - 1}"
    return LoadedSample(
        parts[0].source, parts[0].seq, record_id, tokens, len(tokens), "\n".join(p.text for p in parts), ""
    )


@dataclass
class GlobalBatch:
    """The samples of one global step, in canonical order, with their costs."""

    step: int
    samples: list[LoadedSample]
    costs: list[float]
    splits: dict[int, list[list[int]]] = field(default_factory=dict)

    def split(self, num_ranks: int) -> list[list[int]]:
        """Sample indexes of each rank, balanced by cost; computed once per rank count."""
        if num_ranks not in self.splits:
            self.splits[num_ranks] = partition(self.costs, num_ranks)
        return self.splits[num_ranks]

    def key(self) -> list[tuple[int, int]]:
        """(source, seq) of every sample: the identity of the batch."""
        return [(s.source, s.seq) for s in self.samples]


def block_bounds(plan: Plan, step: int) -> tuple[int, int]:
    """[first, end) steps of the block containing ``step``."""
    stage = plan.stage_start(step)
    width = plan.lookahead_batches
    first = stage + ((step - stage) // width) * width
    end = first + width
    following = plan.next_stage_start(step)
    if following is not None:
        end = min(end, following)
    return first, end


async def build_block(plan: Plan, state: MixState, first: int, load: LoadFn) -> list[GlobalBatch]:
    """Draw and compose the block starting at ``first``; ``state`` moves to the next block's start."""
    _, end = block_bounds(plan, first)
    num_steps = end - first
    batch = plan.global_batch_size
    picks = pick_sources(plan, state, first, num_steps * batch)
    # Sources load in parallel (each has its own loader processes and its own cursor).
    sources = sorted(set(picks))
    fetched = await asyncio.gather(*(fetch(plan, state, s, picks.count(s), load) for s in sources))
    samples_of = dict(zip(sources, fetched, strict=True))
    taken = {s: 0 for s in samples_of}
    window: list[LoadedSample] = []
    for source in picks:
        window.append(samples_of[source][taken[source]])
        taken[source] += 1
    costs = [sample_cost(s.length, plan.cost_alpha, plan.cost_beta) for s in window]
    buckets = [bucket_of(s.length, plan.length_bucket_bounds_tokens) for s in window]
    groups = compose(costs, buckets, num_steps, batch, plan.num_ranks)
    return [
        GlobalBatch(first + k, [window[i] for i in group], [costs[i] for i in group]) for k, group in enumerate(groups)
    ]
