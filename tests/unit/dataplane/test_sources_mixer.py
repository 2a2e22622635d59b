"""Source readers and the data constructor, in process (no loader processes, no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.dataplane.mixer import MixState, block_bounds, build_block, pick_sources
from services.dataplane.sources import GENERATORS, LoadedSample, SourceReader
from services.dataplane.spec import Plan, parse_plan


def make_plan(tmp_path: Path, **extra: object) -> Plan:
    lines = [json.dumps({"text": "a" * (5 + i % 50)}) for i in range(600)]
    lines[3] = "not json"
    (tmp_path / "a.jsonl").write_text("\n".join(lines))  # no trailing newline: the last line counts
    pq.write_table(pa.table({"text": ["b" * (100 + i) for i in range(300)]}), tmp_path / "b.parquet", row_group_size=50)
    spec = {
        "sources": [
            {"name": "a", "format": "jsonl", "path": str(tmp_path / "a.jsonl"), "weight": 3},
            {"name": "b", "format": "parquet", "path": str(tmp_path / "b.parquet"), "weight": 1},
            {
                "name": "g",
                "format": "generated",
                "generator": "synthetic",
                "weight": 1,
                "generator_options": {"max_tokens": "300"},
            },
        ],
        "schedule": [{"start_step": 5, "weights": {"g": 5}}],
        "global_batch_size": 16,
        "num_ranks": 4,
        "balance": {"lookahead_batches": 2},
        **extra,
    }
    return parse_plan(spec, set(GENERATORS))


def loader(plan: Plan):
    readers = [SourceReader(s, i, plan.seed, plan.tokenizer) for i, s in enumerate(plan.sources)]

    async def load(source: int, seqs: list[int]) -> dict[int, LoadedSample | None]:
        out: dict[int, LoadedSample | None] = {}
        for seq in seqs:
            try:
                out[seq] = readers[source].load(seq)
            except ValueError:
                out[seq] = None
        return out

    return readers, load


def test_each_epoch_visits_every_record_once(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    reader = SourceReader(plan.sources[1], 1, plan.seed, "char")
    assert reader.num_records == 300
    first = [reader.record_of(s) for s in range(300)]
    second = [reader.record_of(s) for s in range(300, 600)]
    assert sorted(first) == list(range(300)) == sorted(second)
    assert first != second and first != list(range(300))
    jsonl = SourceReader(plan.sources[0], 0, plan.seed, "char")
    assert jsonl.num_records == 600
    bad = next(s for s in range(600) if jsonl.record_of(s) == 3)
    with pytest.raises(ValueError, match=r"a.jsonl:4: not JSON"):
        jsonl.load(bad)


def test_blending_follows_the_declared_shares() -> None:
    spec = {
        "sources": [
            {"name": n, "format": "generated", "generator": "arithmetic", "weight": w}
            for n, w in (("x", 1), ("y", 3), ("z", 0))
        ],
        "global_batch_size": 8,
        "num_ranks": 1,
    }
    plan = parse_plan(spec, set(GENERATORS))
    picks = pick_sources(plan, MixState.initial(3), 0, 400)
    assert picks.count(0) == 100 and picks.count(1) == 300 and picks.count(2) == 0
    # Over any short window the shares hold to within one sample.
    assert all(abs(picks[k : k + 8].count(1) - 6) <= 1 for k in range(0, 400, 8))


async def test_blocks_are_deterministic_and_resumable_from_their_state(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    _, load = loader(plan)
    state = MixState.initial(3)
    run = []
    states = {}
    step = 0
    while step < 9:
        states[step] = state.to_json()
        block = await build_block(plan, state, step, load)
        run += block
        step += len(block)
    assert [b.step for b in run] == list(range(len(run)))
    assert block_bounds(plan, 4) == (4, 5)  # a block never crosses the curriculum change at 5
    assert all(len(b.samples) == 16 for b in run)
    # Nothing is repeated, the bad record is skipped.
    keys = [k for b in run for k in b.key()]
    assert len(keys) == len(set(keys))
    assert all(s.record_id != "a.jsonl:4" for b in run for s in b.samples)
    # Rebuilding from a saved state gives the same batches.
    again = await build_block(plan, MixState.from_json(states[2]), 2, load)
    assert [b.key() for b in again] == [b.key() for b in run[2:4]]


async def test_packing_fills_sequences_up_to_the_limit(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    spec = dict(plan.resolved)
    spec["sources"] = [dict(spec["sources"][0], preprocessing={"max_length_tokens": 64, "pack": True})]
    spec["sources"][0]["weight"] = 1
    spec["schedule"] = []
    packed = parse_plan(spec, set(GENERATORS))
    _, load = loader(packed)
    block = await build_block(packed, MixState.initial(1), 0, load)
    lengths = [s.length for b in block for s in b.samples]
    assert max(lengths) <= 64 and sum(lengths) / len(lengths) > 40
