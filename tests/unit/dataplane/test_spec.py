"""The declarative plan: parsing, defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.dataplane.sources import GENERATORS
from services.dataplane.spec import parse_plan, parse_yaml


def base(tmp_path: Path) -> dict:
    (tmp_path / "a.jsonl").write_text('{"text": "hi"}\n')
    return {
        "sources": [
            {"name": "a", "format": "jsonl", "path": str(tmp_path / "a.jsonl"), "weight": 3},
            {"name": "g", "format": "SOURCE_FORMAT_GENERATED", "generator": "arithmetic", "weight": "1"},
        ],
        "schedule": [{"start_step": 10, "weights": {"a": 0}}, {"start_step": 20, "weights": {"a": 1}}],
        "global_batch_size": 8,
        "num_ranks": 2,
        "seed": "5",
    }


def test_resolved_spec_and_curriculum(tmp_path: Path) -> None:
    plan = parse_plan(base(tmp_path), set(GENERATORS))
    assert plan.weights_at(0) == [0.75, 0.25]
    assert plan.weights_at(10) == [0.0, 1.0]
    assert plan.weights_at(25) == [0.5, 0.5]
    assert (plan.stage_start(15), plan.next_stage_start(15)) == (10, 20)
    assert plan.seed == 5 and plan.tokenizer == "char" and plan.lookahead_batches == 4
    assert plan.resolved["sources"][0]["format"] == "SOURCE_FORMAT_JSONL"
    assert plan.resolved["balance"]["cost_beta"] == pytest.approx(1 / 4096)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["sources"][0].update(weight=-1), "sources[0].weight=-1: must be >= 0"),
        (lambda d: d["sources"][0].update(path="/nope.jsonl"), "sources[0].path='/nope.jsonl': no such file"),
        (lambda d: d["schedule"].reverse(), "schedule[1].start_step=10: must be after"),
        (lambda d: d["schedule"][0]["weights"].update(zz=1), "unknown source"),
        (lambda d: d["sources"][1].update(generator="nope"), "sources[1].generator='nope': unknown generator"),
        (lambda d: d["sources"][1].update(name="a"), "names must be unique"),
        (lambda d: d.update(num_ranks=0), "num_ranks=0: must be >= 1"),
        (lambda d: d.update(length_bucket_bounds_tokens=[100, 50]), "must ascend"),
        (lambda d: d.update(rl={"group_size": 0}), "rl.group_size=0"),
        (lambda d: d.update(sources=[]), "sources=[]"),
        (lambda d: d["sources"][0].update(weight=0) or d["sources"][1].update(weight=0), "at least one weight"),
        (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
    ],
)
def test_bad_specs_name_the_field(tmp_path: Path, change, needle: str) -> None:
    data = base(tmp_path)
    change(data)
    with pytest.raises(InvalidArgument) as err:
        parse_plan(data, set(GENERATORS))
    assert needle in err.value.message


def test_malformed_yaml() -> None:
    with pytest.raises(InvalidArgument, match="not valid YAML"):
        parse_yaml("sources: [")
    with pytest.raises(InvalidArgument, match="must be a mapping"):
        parse_yaml("- 1\n- 2\n")
