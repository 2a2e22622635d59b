"""Publishing a version joins the trace of the rollout that produced the step's batch."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.trainer.engine import Engine
from services.trainer.remote import connect_sink
from services.trainer.spec import RunSpec
from services.weighthub.config import WeightHubConfig
from services.weighthub.server import create_server as create_hub
from tests.integration.trainer.conftest import TINY_MODEL

_EXPORTER = InMemorySpanExporter()
ROLLOUT_TRACE, ROLLOUT_SPAN = 0x5EED5EED, 0xF00D


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """One in-memory exporter on the process's tracer provider (OpenTelemetry allows one provider per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


async def test_the_weight_hub_serves_the_publish_inside_the_rollouts_trace(redis_url: str) -> None:
    hub = await create_hub(WeightHubConfig(redis_url=redis_url, port=0, host="127.0.0.1", grace_s=0.2))
    await hub.server.start()
    spec = RunSpec.from_dict(
        {
            "model": {"config_json": TINY_MODEL},
            "task": {"num_warm_start": 16, "num_eval": 8},
            "warm_start": {"num_steps": 0},
            "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
            "weighthub_model": "policy",
            "weighthub_address": f"127.0.0.1:{hub.port}",
            "publish_bind_host": "127.0.0.1",
        }
    )

    def step() -> Engine:
        sink = connect_sink(spec, 0, 1)
        assert sink is not None
        try:
            engine = Engine(spec, sink=sink)
            samples = engine.collect_colocated(0)
            for s in samples:
                s.metadata["traceparent"] = f"00-{ROLLOUT_TRACE:032x}-{ROLLOUT_SPAN:016x}-01"
            engine.advance(samples)
            return engine
        finally:
            sink.close()

    try:
        engine = await asyncio.to_thread(step)
    finally:
        await hub.stop(0.2)
    assert engine.version == 1
    in_trace = [s for s in _EXPORTER.get_finished_spans() if s.context.trace_id == ROLLOUT_TRACE]
    step_span = next(s for s in in_trace if s.name == "trainer.rl_step")
    assert step_span.parent is not None and step_span.parent.span_id == ROLLOUT_SPAN
    served = {s.name for s in in_trace if s.kind == SpanKind.SERVER}
    assert any(name.startswith("seedstack.weighthub.v1.WeightHub/") for name in served), served
