"""The RL step the report follows as one trace, picked from synthetic span files as services write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clients.jobreport import _trace_section
from clients.mainjob import find_step_trace, read_spans, trace_lines
from clients.seedctl import main as seedctl_main


def span(
    trace: str, span_id: str, service: str, name: str, start_ms: int, parent: str | None = None, **attributes: Any
) -> dict[str, Any]:
    """One span as services.common.telemetry.JsonFileSpanExporter writes it."""
    return {
        "trace_id": trace,
        "span_id": span_id,
        "parent_span_id": parent,
        "service": service,
        "name": name,
        "kind": "INTERNAL",
        "start_unix_ns": start_ms * 1_000_000,
        "end_unix_ns": (start_ms + 5) * 1_000_000,
        "status": "UNSET",
        "attributes": attributes,
    }


def write(traces: Path, name: str, spans: list[dict[str, Any]], junk: str = "") -> None:
    traces.mkdir(parents=True, exist_ok=True)
    with (traces / name).open("a") as f:
        f.write(junk + "".join(json.dumps(s) + "\n" for s in spans))


def step_trace(trace: str, step: int, start_ms: int, services: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
    """Spans of one RL step: the trainer rank's step span and, per service, a server span under it."""
    by_file: dict[str, list[dict[str, Any]]] = {
        "trainer.jsonl": [span(trace, f"{trace}-s", "trainer-rank", "trainer.rl_step", start_ms, **{"rl.step": step})]
    }
    for i, service in enumerate(services):
        by_file.setdefault(f"{service}.jsonl", []).append(
            span(trace, f"{trace}-{i}", service, f"seedstack.{service}.v1/Call", start_ms + 1 + i, parent=f"{trace}-s")
        )
    return by_file


def write_steps(traces: Path, steps: list[dict[str, list[dict[str, Any]]]]) -> None:
    for files in steps:
        for name, spans in files.items():
            write(traces, name, spans)


def test_the_step_reaching_the_most_services_in_the_second_half_is_picked(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    write_steps(
        traces,
        [
            # An early step reaching every service: start-up, not what the report shows.
            step_trace("a" * 32, 1, 1000, ("dataplane", "rollout", "weighthub")),
            step_trace("b" * 32, 2, 2000, ("dataplane",)),
            step_trace("c" * 32, 3, 3000, ("dataplane", "weighthub")),
            step_trace("d" * 32, 4, 4000, ("dataplane", "rollout", "weighthub")),
            step_trace("e" * 32, 5, 5000, ("dataplane", "rollout", "weighthub")),
        ],
    )
    write(traces, "rollout.jsonl", [], junk='not json\n{"half": \n')  # a torn line from a crash is skipped

    trace = find_step_trace(traces)

    assert trace["trace_id"] == "d" * 32 and trace["step"] == 4  # the earliest of the equals after the middle
    assert trace["services"] == ["dataplane", "rollout", "trainer-rank", "weighthub"]
    assert trace["missing"] == [] and trace["num_spans"] == 4
    assert [Path(f).name for f in trace["files"]] == [
        "dataplane.jsonl",
        "rollout.jsonl",
        "trainer.jsonl",
        "weighthub.jsonl",
    ]
    assert trace["view"] == f"seedctl --run-dir {tmp_path} trace {'d' * 32}"


def test_steps_of_an_earlier_job_on_the_same_stack_are_not_picked(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    earlier = [step_trace(c * 32, i, 1000 * i, ("dataplane", "rollout", "weighthub")) for i, c in enumerate("123")]
    write_steps(traces, [*earlier, step_trace("b" * 32, 1, 5000, ("dataplane",))])
    assert find_step_trace(traces)["trace_id"] == "3" * 32
    assert find_step_trace(traces, since_unix_s=4.0)["trace_id"] == "b" * 32
    assert find_step_trace(traces, since_unix_s=6.0) == {}


def test_a_step_without_rollout_names_what_it_misses(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    write_steps(traces, [step_trace("f" * 32, 7, 1000, ("dataplane", "weighthub"))])
    trace = find_step_trace(traces)
    assert trace["step"] == 7 and trace["missing"] == ["rollout"]
    section = "\n".join(_trace_section(trace, tmp_path))
    assert "f" * 32 in section and "not in it: rollout" in section and trace["view"] in section
    assert "(traces/trainer.jsonl)" in section  # span files linked relative to the report


def test_no_step_span_means_no_trace(tmp_path: Path) -> None:
    assert find_step_trace(tmp_path / "missing") == {}
    write(tmp_path / "traces", "weighthub.jsonl", [span("1" * 32, "x", "weighthub", "Publish", 0)])
    assert find_step_trace(tmp_path / "traces") == {}
    section = "\n".join(_trace_section({"note": "no trainer.rl_step span in x"}, tmp_path))
    assert "No RL step trace: no trainer.rl_step span in x" in section


def test_the_trace_as_a_tree_and_seedctl_trace(tmp_path: Path, capsys: Any) -> None:
    traces = tmp_path / "traces"
    write_steps(traces, [step_trace("a" * 32, 1, 1000, ("dataplane", "weighthub"))])
    lines = trace_lines(read_spans(traces), "a" * 32)
    assert [line.split("ms  ", 2)[-1] for line in lines] == [
        "trainer-rank: trainer.rl_step",
        "  dataplane: seedstack.dataplane.v1/Call",
        "  weighthub: seedstack.weighthub.v1/Call",
    ]
    assert seedctl_main(["--run-dir", str(tmp_path), "trace"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"trace {'a' * 32}") and "weighthub: seedstack.weighthub.v1/Call" in shown
    assert seedctl_main(["--run-dir", str(tmp_path), "trace", "0" * 32]) == 1
    assert f"no span of trace {'0' * 32}" in capsys.readouterr().err
