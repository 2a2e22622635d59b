"""The streaming rollout: rounds that close at completion ratio alpha, partials continued later.

Each round draws prompts (``n`` samples each) and adds the partial samples that earlier rounds left
unfinished. The round closes as soon as a fraction ``alpha`` of its samples finished (one that
drew nothing, the buffer being full, waits for all of them until its next draw is due); the rest are
partials that decode on into the next round with their KV caches (no recomputation), under whatever
version is served then, their tokens tagged with it (version spans). A partial whose oldest token is
more than ``eta`` versions behind the served version is preempted and restarted from its prompt (its
group stays complete). Partials taken out of the engine (``partials``) are continued from their
tokens by a prefill, which at temperature 0 and unchanged weights gives the uninterrupted tokens.
Finished samples are verified and pushed while the next round decodes.

Each round runs inside one OpenTelemetry span, ``rollout.round`` (the root of its own trace, linked
to the span that started the rollout): its NextPrompts and PutSamples calls carry it to the data
plane, and every sample it pushes carries it as ``metadata["traceparent"]`` (W3C), on which the
trainer parents the step that consumes the sample. The span ends when the round's push has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.errors import ResourceExhausted
from services.rollout.engine import Event, Partial, SamplingParams, SequenceRequest
from services.rollout.generation import Call, Generation
from services.rollout.verifiers import Verifiers

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("seedstack.rollout")
_PROPAGATOR = TraceContextTextMapPropagator()
REDRAW_S = 0.1
"""Delay before asking again after the first refused draw."""
PROMPT_WAIT_S = 5.0
"""A worker with nothing left to decode asks the data plane to hold its draw up to this long while the
buffer is full: the prompts come the moment the trainer takes a batch (or a uniform group is dropped),
where a refused draw retried after a delay left the slots idle for up to that delay."""
MAX_REDRAW_S = 1.0
"""Longest delay between refused draws: a full buffer holds at least a batch, ready for the trainer's
next step, so a later refill costs the trainer nothing while its steps take longer than this."""


@dataclass(frozen=True)
class PromptItem:
    """A prompt drawn for generation."""

    prompt_id: str
    group_id: str
    token_ids: list[int]
    verifier: str
    """Verifier kind ("arithmetic", "math", "code"); empty for none."""
    reference: str
    sample_budgets: tuple[int, ...] = ()
    """max_new_tokens of each sample index, overriding the sampling default; empty for none."""


@dataclass
class ScoredSample:
    """A finished sample, verified."""

    prompt: PromptItem
    sample_index: int
    completion_ids: list[int]
    logprobs: list[float]
    spans: list[list[int]]
    text: str
    finish_reason: str
    reward: float | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RolloutSettings:
    """How the worker loop runs."""

    sampling: SamplingParams
    num_prompts_per_round: int
    completion_ratio: float
    """alpha in (0, 1]."""
    max_staleness_versions: int
    """eta: partials further behind are restarted."""
    seed: int = 0


@dataclass
class RolloutCounters:
    """What the worker loop has done."""

    num_rounds: int = 0
    num_samples_pushed: int = 0
    num_partials_continued: int = 0
    num_partials_restarted: int = 0
    num_prompts_drawn: int = 0
    round_s: list[float] = field(default_factory=list)


NextPrompts = Callable[[int, float], Awaitable[tuple[list[PromptItem], int]]]
"""(num_prompts, wait_s) -> (prompts, group size); raises ResourceExhausted when the buffer is full
(after waiting up to wait_s for room)."""
PutSamples = Callable[[list[ScoredSample]], Awaitable[None]]


def traceparent(span: Span) -> str:
    """The W3C ``traceparent`` of ``span``; empty when tracing is off (a non-recording, invalid span)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


def sample_seed(base_seed: int, group_id: str) -> int:
    """The noise seed of a group's samples, the same each time a partial of it is continued."""
    return (base_seed * 1_000_003 + zlib.crc32(group_id.encode())) & 0xFFFFFFFFFFFFFFFF


@dataclass
class _Pending:
    prompt: PromptItem
    sample_index: int
    partial: Partial


class RolloutWorker:
    """NextPrompts -> generate -> verify -> PutSamples, round after round, until stopped."""

    def __init__(
        self,
        generation: Generation,
        verifiers: Verifiers,
        settings: RolloutSettings,
        next_prompts: NextPrompts,
        put_samples: PutSamples,
        *,
        group_size: int = 0,
    ) -> None:
        self.generation = generation
        self.verifiers = verifiers
        self.settings = settings
        self._next_prompts = next_prompts
        self._put_samples = put_samples
        self.group_size = group_size
        self.partials: list[_Pending] = []
        self.counters = RolloutCounters()
        self._pushes: set[asyncio.Task[None]] = set()
        self._call: Call | None = None
        self._first_version: dict[int, int] = {}
        self._num_refusals = 0
        """Draws refused in a row (the experience buffer full)."""
        self._redraw_at = 0.0
        """time.monotonic() before which no draw is asked for (unless the data plane holds draws)."""
        self._draws_held = True
        """Whether the data plane holds a waiting draw until room frees (NextPrompts wait_s): assumed until
        a waiting draw is refused at once."""
        self.last_error = ""
        origin = trace.get_current_span().get_span_context()
        self._links = [Link(origin)] if origin.is_valid else []
        """Rounds are traces of their own, linked to the span that started the rollout."""

    async def run(self, num_rounds: int | None = None) -> None:
        """Run rounds (forever when ``num_rounds`` is None); pushes of the last round are awaited."""
        try:
            done = 0
            while num_rounds is None or done < num_rounds:
                try:
                    await self.run_round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a peer hiccup must not end the loop: record, back off, go on
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("rollout round failed; retrying")
                    await asyncio.sleep(1.0)
                done += 1
        finally:
            if self._pushes:
                await asyncio.gather(*self._pushes, return_exceptions=True)

    async def close(self) -> None:
        """Drop what is still running."""
        if self._call is not None:
            await self._call.close()
            self._call = None

    @property
    def num_carried(self) -> int:
        """Unfinished samples of closed rounds, decoding on into the current one."""
        return len(self._call.running) if self._call is not None else 0

    async def run_round(self) -> None:
        """One round: draw, add the carried samples, decode until alpha of them finished, push.

        The unfinished rest keeps decoding (its KV cache kept, no recomputation) and belongs to the
        next round, under whatever version is served by then; one whose oldest token is more than
        eta versions behind is preempted and restarted from its prompt. The round runs inside its
        span, which its push ends.
        """
        engine = self.generation.engine
        while engine.version == 0:  # noqa: ASYNC110 - samples carry versions >= 1: wait for the hub's first
            await asyncio.sleep(0.1)
        span = tracer.start_span(
            "rollout.round",
            context=otel_context.Context(),
            links=self._links,
            attributes={"rollout.round": self.counters.num_rounds, "rollout.served_version": engine.version},
        )
        pushing = False
        try:
            with trace.use_span(span, end_on_exit=False):
                pushing = await self._round(span)
        finally:
            if not pushing:
                span.end()

    async def _round(self, span: Span) -> bool:
        """The body of ``run_round``; True when a push was started (it ends ``span``)."""
        engine = self.generation.engine
        if self._call is None:
            self._call = self.generation.call()
        call = self._call
        started = time.perf_counter()
        prompts = await self._draw()
        served = engine.version
        stale = [i for i in call.running if served - self._first_version[i] > self.settings.max_staleness_versions]
        requests: list[SequenceRequest] = []
        if stale:
            for event in await call.preempt_running(stale):
                self._first_version.pop(event.seq_id, None)
                self.counters.num_partials_restarted += 1
                requests.append(self._request(event.tag, event.sample_index, None))
        for pending in self.partials:  # preempted earlier (e.g. by a pause of the loop): continue them
            oldest = min((s[2] for s in pending.partial.spans), default=served)
            restart = served - oldest > self.settings.max_staleness_versions
            self.counters.num_partials_restarted += restart
            requests.append(self._request(pending.prompt, pending.sample_index, None if restart else pending.partial))
        self.partials = []
        carried = len(call.running)
        self.counters.num_partials_continued += carried
        for prompt in prompts:
            requests += [self._request(prompt, i, None) for i in range(self.group_size)]
        if not requests and not carried:
            return False
        for seq_id, request in zip(call.submit(requests), requests, strict=True):
            prior = request.prior
            self._first_version[seq_id] = min((s[2] for s in prior.spans), default=served) if prior else served
        need = max(1, math.ceil(self.settings.completion_ratio * (len(requests) + carried)))
        # Nothing was drawn because the buffer refused the last draw: closing at alpha would start no new
        # prompt, only split the stragglers into rounds of a few samples, each its own PutSamples. Until
        # the next draw is due, the round waits for all of them; from then on alpha closes it as usual.
        hold_until = self._redraw_at if not prompts and self._redraw_at > time.monotonic() else None
        finished: list[Event] = []
        while call.running and (len(finished) < need or hold_until is not None):
            if hold_until is None:
                event = await call.next_event()
            else:
                try:
                    event = await asyncio.wait_for(call.next_event(), max(0.0, hold_until - time.monotonic()))
                except TimeoutError:
                    hold_until = None
                    continue
            if event.kind == "finished":
                self._first_version.pop(event.seq_id, None)
                finished.append(event)
        self.counters.num_rounds += 1
        self.counters.round_s.append(time.perf_counter() - started)
        span.set_attributes(
            {
                "rollout.num_prompts": len(prompts),
                "rollout.num_carried": carried,
                "rollout.num_finished": len(finished),
            }
        )
        # Created inside the round's span, the task keeps it as its context: PutSamples joins it.
        task = asyncio.create_task(self._verify_and_push(finished, span))
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)
        return True

    async def _draw(self) -> list[PromptItem]:
        want = self.settings.num_prompts_per_round
        if want == 0:
            return []
        idle = not (self.num_carried or self.partials)
        wait_s = self._redraw_at - time.monotonic()
        if wait_s > 0:
            if not idle:
                return []  # the buffer was full a moment ago: keep continuing partials without asking
            if not self._draws_held:
                await asyncio.sleep(wait_s)
            # Else the data plane holds the draw below until room frees: sleeping out the delay first
            # would only leave the slots idle after the room came.
        asked = time.monotonic()
        draw_wait_s = PROMPT_WAIT_S if idle else 0.0
        try:
            prompts, group_size = await self._next_prompts(want, draw_wait_s)
        except ResourceExhausted:
            # The experience buffer is full and frees only when the trainer takes a batch, while it
            # still holds more than one: ask again after a delay that doubles with each refusal (each
            # refused NextPrompts costs CPU on both sides) up to MAX_REDRAW_S. A data plane that
            # refused a waiting draw at once does not hold draws (an older one): then the delay is
            # slept before the next draw even when idle.
            if draw_wait_s:
                self._draws_held = time.monotonic() - asked >= draw_wait_s / 2
            self._num_refusals += 1
            delay_s = min(MAX_REDRAW_S, REDRAW_S * 2 ** (self._num_refusals - 1))
            self._redraw_at = time.monotonic() + delay_s
            return []
        self._num_refusals = 0
        self.group_size = group_size or self.group_size or 1
        self.counters.num_prompts_drawn += len(prompts)
        return prompts

    def _request(self, prompt: PromptItem, index: int, prior: Partial | None) -> SequenceRequest:
        params = self.settings.sampling
        if index < len(prompt.sample_budgets):
            params = dataclasses.replace(params, max_new_tokens=prompt.sample_budgets[index])
        return SequenceRequest(
            prompt_ids=prompt.token_ids,
            params=params,
            seed=sample_seed(self.settings.seed, prompt.group_id),
            sample_index=index,
            tag=prompt,
            prior=prior,
        )

    async def _verify_and_push(self, finished: list[Event], span: Span) -> None:
        try:
            if not finished:
                return
            samples = await asyncio.gather(*(self._score(e) for e in finished))
            parent = traceparent(span)
            if parent:
                for sample in samples:
                    sample.metadata["traceparent"] = parent
            await self._put_samples(list(samples))
            self.counters.num_samples_pushed += len(samples)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, self.last_error))
            logger.exception("pushing %d samples failed", len(finished))
        finally:
            span.end()

    async def _score(self, event: Event) -> ScoredSample:
        prompt: PromptItem = event.tag
        return await score_event(self.verifiers, event, verify=bool(prompt.verifier))


async def score_event(verifiers: Verifiers, event: Event, *, verify: bool) -> ScoredSample:
    """A finished sequence as a sample, scored by its prompt's verifier when ``verify``."""
    prompt: PromptItem = event.tag
    reward = None
    metadata: dict[str, str] = {}
    if verify:
        verdict = await verifiers.verify(prompt.verifier, event.text, prompt.reference)
        reward = verdict.score
        metadata = {"verify_outcome": verdict.outcome.value, "verify_detail": verdict.detail[:200]}
    return ScoredSample(
        prompt=prompt,
        sample_index=event.sample_index,
        completion_ids=event.completion_ids,
        logprobs=event.logprobs,
        spans=event.spans,
        text=event.text,
        finish_reason=event.finish_reason,
        reward=reward,
        metadata=metadata,
    )


def _partial(event: Event) -> Partial:
    return Partial(completion_ids=event.completion_ids, logprobs=event.logprobs, spans=event.spans)
