"""An RL step's span continues the trace of the rollouts that produced its batch."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.trainer.engine import MAX_SPAN_LINKS, Engine, TrainSample
from services.trainer.spec import RunSpec
from tests.unit.trainer.conftest import tiny_spec

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """One in-memory exporter on the process's tracer provider (OpenTelemetry allows one provider per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


def traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def last_step_span() -> ReadableSpan:
    return [s for s in _EXPORTER.get_finished_spans() if s.name == "trainer.rl_step"][-1]


def engine_and_batch() -> tuple[Engine, list[TrainSample]]:
    engine = Engine(RunSpec.from_dict(tiny_spec(warm_start={"num_steps": 0})))
    return engine, engine.collect_colocated(0)


def test_the_step_is_a_child_of_the_first_rollout_and_links_the_others() -> None:
    engine, samples = engine_and_batch()
    rollouts = [(0xA1 + i, 0xB1 + i) for i in range(3)]
    for i, s in enumerate(samples):
        s.metadata["traceparent"] = traceparent(*rollouts[min(i // 5, 2)])
    metrics = engine.advance(samples)
    span = last_step_span()
    assert (span.context.trace_id, span.parent.span_id if span.parent else None) == rollouts[0]
    assert span.parent is not None and span.parent.is_remote
    assert {(link.context.trace_id, link.context.span_id) for link in span.links} == set(rollouts[1:])
    assert span.attributes is not None and span.attributes["rl.step"] == 1 and span.attributes["rl.version"] == 1
    assert engine.step == 1 and engine.version == 1 and metrics["applied"] == 1.0


def test_links_are_bounded_and_untraced_or_malformed_samples_are_skipped() -> None:
    engine, samples = engine_and_batch()
    for i, s in enumerate(samples):
        s.metadata["traceparent"] = traceparent(0x100 + i, 0x200 + i)
    samples[0].metadata["traceparent"] = "not a traceparent"
    samples[1].metadata.pop("traceparent")
    more = engine.collect_colocated(1) + engine.collect_colocated(2) + engine.collect_colocated(3)
    for i, s in enumerate(more):
        s.metadata["traceparent"] = traceparent(0x1000 + i, 0x2000 + i)
    engine.advance(samples + more)
    span = last_step_span()
    assert span.context.trace_id == 0x102  # the first sample with a valid traceparent
    assert len(span.links) == MAX_SPAN_LINKS - 1  # one place is kept for the batch collection's span


def test_a_colocated_step_is_one_trace_from_collection_to_publishing() -> None:
    engine, _ = engine_and_batch()
    engine.advance()
    span = last_step_span()
    collect = [s for s in _EXPORTER.get_finished_spans() if s.name == "trainer.collect_batch"][-1]
    assert span.context.trace_id == collect.context.trace_id
    assert span.parent is not None and span.parent.span_id == collect.context.span_id
