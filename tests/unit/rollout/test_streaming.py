"""The streaming worker loop: rounds close at alpha, partials continue under newer weights with their
version spans, stale partials restart, and continuation changes no token."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.rollout.decoder import Arch, Weights, prepare_weights
from services.rollout.engine import Engine, SamplingParams
from services.rollout.generation import EventRouter, Generation
from services.rollout.model import CharTokenizer
from services.rollout.streaming import PromptItem, RolloutSettings, RolloutWorker, ScoredSample
from services.rollout.verifiers import Verifiers
from tests.unit.rollout.conftest import LIMITS

GROUP = 4


class Feed:
    """Numbered arithmetic prompts, like the data plane hands out, and a list of what came back."""

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.pushed: list[ScoredSample] = []

    async def next_prompts(self, num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        items = []
        for _ in range(num):
            i = next(self.counter)
            text = f"Compute {i} + {i}."
            items.append(PromptItem(f"p{i}", f"g{i}", list(text.encode()), "arithmetic", str(2 * i)))
        return items, GROUP

    async def put_samples(self, samples: list[ScoredSample]) -> None:
        self.pushed.extend(samples)


@pytest.fixture
async def generation(arch: Arch, weights: Weights):  # type: ignore[no-untyped-def]
    router = EventRouter(asyncio.get_running_loop())
    engine = Engine(
        arch, weights, CharTokenizer(), max_batch_size=16, limits=LIMITS, on_events=router.post, weight_version=1
    )
    yield Generation(engine, router)
    await asyncio.to_thread(engine.close)


def worker(
    generation: Generation,
    feed: Feed,
    *,
    alpha: float,
    eta: int = 4,
    prompts: int = 4,
    params: SamplingParams | None = None,
) -> RolloutWorker:
    settings = RolloutSettings(
        sampling=params or SamplingParams(temperature=1.0, max_new_tokens=100),
        num_prompts_per_round=prompts,
        completion_ratio=alpha,
        max_staleness_versions=eta,
        seed=5,
    )
    verifiers = Verifiers(code_timeout_s=2, code_memory_bytes=128 << 20, max_concurrent_code=1)
    return RolloutWorker(generation, verifiers, settings, feed.next_prompts, feed.put_samples)


def shifted(model: torch.nn.Module, arch: Arch, scale: float) -> Weights:
    gen = torch.Generator().manual_seed(1)
    return prepare_weights(
        arch, {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    )


def hold_after_finishing(generation: Generation, num_finished: int) -> None:
    """Pause the engine right after the step in which ``num_finished`` samples have finished (once).

    A round with completion ratio alpha closes there; without the hold a fast engine may finish every
    carried sample while the round closes and the test swaps weights, leaving nothing to continue.
    """
    engine = generation.engine
    held: list[object] = []

    def observe(start: float, end: float, batch: int) -> None:
        if not held and engine.num_samples_finished >= num_finished:
            held.append(engine.pause())

    engine.step_observer = observe


async def swap_while_paused(generation: Generation, weights: Weights, version: int) -> None:
    """Serve ``weights`` from the next step on (the engine held until then), then decode on."""
    engine = generation.engine
    await asyncio.wrap_future(engine.pause())
    await asyncio.wrap_future(engine.swap(weights, version))
    await asyncio.wrap_future(engine.resume())


async def drain(w: RolloutWorker) -> None:
    """Run rounds without drawing new prompts until nothing is left running."""
    w.settings = RolloutSettings(**{**w.settings.__dict__, "num_prompts_per_round": 0})
    while w.num_carried or w.partials:
        await w.run(num_rounds=1)


async def test_rounds_close_at_alpha_and_partials_continue_under_newer_weights(
    model: torch.nn.Module, arch: Arch, generation: Generation
) -> None:
    feed = Feed()
    # Long, varied completions (the EOS byte is rare for a random model): most samples outlive a round.
    w = worker(generation, feed, alpha=0.25)
    hold_after_finishing(generation, 4)
    await w.run(num_rounds=1)
    assert 4 <= len(feed.pushed) < 16 and w.num_carried == 16 - len(feed.pushed)
    assert all(s.spans == [[0, len(s.completion_ids), 1]] for s in feed.pushed)
    await swap_while_paused(generation, shifted(model, arch, 0.02), 2)
    await drain(w)
    assert w.counters.num_partials_continued > 0 and w.counters.num_partials_restarted == 0
    spanning = [s for s in feed.pushed if len(s.spans) == 2]
    assert spanning, "some sample was continued under version 2"
    for s in spanning:
        (a, b, v0), (c, d, v1) = s.spans
        assert (a, v0) == (0, 1) and (c, d, v1) == (b, len(s.completion_ids), 2) and 0 < b < d
        assert len(s.logprobs) == len(s.completion_ids)
    assert sorted((s.prompt.group_id, s.sample_index) for s in feed.pushed) == sorted(
        (f"g{i}", k) for i in range(4) for k in range(GROUP)
    )
    assert all(s.reward is not None and s.metadata["verify_outcome"] for s in feed.pushed)


async def test_partials_older_than_eta_restart_from_their_prompt(
    model: torch.nn.Module, arch: Arch, generation: Generation
) -> None:
    feed = Feed()
    w = worker(generation, feed, alpha=0.25, eta=0)
    hold_after_finishing(generation, 4)
    await w.run(num_rounds=1)
    carried = w.num_carried
    assert carried > 0
    await swap_while_paused(generation, shifted(model, arch, 0.02), 2)
    await drain(w)
    # (One may finish in the steps between the swap and the next round; the rest restart.)
    restarted = w.counters.num_partials_restarted
    assert 0 < restarted <= carried
    fresh = [s for s in feed.pushed if s.spans == [[0, len(s.completion_ids), 2]]]
    assert len(fresh) >= restarted
    assert len({(s.prompt.group_id, s.sample_index) for s in feed.pushed}) == 16


async def test_streaming_changes_no_token_at_temperature_zero(generation: Generation) -> None:
    params = SamplingParams(temperature=0.0, max_new_tokens=60)
    sync_feed, stream_feed = Feed(), Feed()
    # 32 samples on 16 slots: the round closes after the first wave, the second decodes on.
    await worker(generation, sync_feed, alpha=1.0, params=params, prompts=8).run(num_rounds=1)
    streaming = worker(generation, stream_feed, alpha=0.5, params=params, prompts=8)
    await streaming.run(num_rounds=1)
    assert streaming.num_carried == 16
    await drain(streaming)
    tokens = lambda feed: {(s.prompt.group_id, s.sample_index): s.completion_ids for s in feed.pushed}  # noqa: E731
    assert len(tokens(stream_feed)) == 32 and tokens(stream_feed) == tokens(sync_feed)


async def test_preempted_partials_continue_from_their_tokens(generation: Generation) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=120)
    whole_feed, feed = Feed(), Feed()
    await worker(generation, whole_feed, alpha=1.0, params=params).run(num_rounds=1)
    w = worker(generation, feed, alpha=0.25, params=params)
    await w.run(num_rounds=1)
    # Take the carried samples out of the engine (as a paused loop would) and continue them by prefill.
    engine = generation.engine
    await asyncio.wrap_future(engine.pause())
    assert w._call is not None
    taken = await w._call.preempt_running()
    await asyncio.wrap_future(engine.resume())
    from services.rollout.streaming import _partial, _Pending

    w.partials = [_Pending(e.tag, e.sample_index, _partial(e)) for e in taken]
    assert w.partials
    await drain(w)
    tokens = lambda feed: {(s.prompt.group_id, s.sample_index): s.completion_ids for s in feed.pushed}  # noqa: E731
    assert tokens(feed) == tokens(whole_feed)


class TracedFeed(Feed):
    """A feed that records the span each NextPrompts and PutSamples call ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.draw_spans: list[trace.SpanContext] = []
        self.push_spans: list[trace.SpanContext] = []

    async def next_prompts(self, num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        self.draw_spans.append(trace.get_current_span().get_span_context())
        return await super().next_prompts(num, wait_s)

    async def put_samples(self, samples: list[ScoredSample]) -> None:
        self.push_spans.append(trace.get_current_span().get_span_context())
        await super().put_samples(samples)


def tracing() -> InMemorySpanExporter:
    """An in-memory exporter on the process's tracer provider (OpenTelemetry allows one provider per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_each_round_is_one_span_that_its_calls_and_samples_carry(generation: Generation) -> None:
    exporter = tracing()
    feed = TracedFeed()
    w = worker(generation, feed, alpha=1.0, prompts=2, params=SamplingParams(temperature=1.0, max_new_tokens=8))
    await w.run(num_rounds=2)
    rounds = [s for s in exporter.get_finished_spans() if s.name == "rollout.round"]
    assert len(rounds) == 2 and len({r.context.trace_id for r in rounds}) == 2
    by_span = {r.context.span_id: r for r in rounds}
    # Both peer calls of a round ran inside its span, so the data plane's server spans join its trace.
    assert [c.span_id for c in feed.draw_spans] == [c.span_id for c in feed.push_spans]
    assert {c.span_id for c in feed.draw_spans} == set(by_span)
    assert len(feed.pushed) == 16
    for sample in feed.pushed:
        version, trace_id, span_id, flags = sample.metadata["traceparent"].split("-")
        assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and int(flags, 16) & 1  # sampled
        parent = by_span[int(span_id, 16)]
        assert int(trace_id, 16) == parent.context.trace_id
        assert parent.attributes is not None and parent.attributes["rollout.num_finished"] == 8
