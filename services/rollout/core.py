"""The rollout server's logic: one engine, its weight updater, the verifiers and the worker loop.

No gRPC here: the servicer converts messages, and the links to the data plane and the weight hub
come in as factories (``services/rollout/links.py`` builds the real ones).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from services.common.errors import FailedPrecondition, InvalidArgument
from services.rollout.config import RolloutConfig
from services.rollout.decoder import prepare_weights, read_arch
from services.rollout.engine import (
    Engine,
    Event,
    Limits,
    SamplingParams,
    SequenceRequest,
    check_capacity,
    check_sampling,
    resolve_seed,
)
from services.rollout.generation import EventRouter, Generation
from services.rollout.model import build_model, load_tokenizer
from services.rollout.streaming import (
    NextPrompts,
    PromptItem,
    RolloutSettings,
    RolloutWorker,
    ScoredSample,
    score_event,
)
from services.rollout.verifiers import Verdict, Verifiers
from services.rollout.weights import UpdateResult, WeightSource, WeightUpdater

logger = logging.getLogger(__name__)


class DataPlaneLink(Protocol):
    """The data-plane side of the worker loop for one plan."""

    async def next_prompts(self, num_prompts: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        """Up to ``num_prompts`` prompts and the plan's group size; a full buffer is waited on up to
        ``wait_s`` before ResourceExhausted."""
        ...

    async def put_samples(self, samples: list[ScoredSample]) -> None:
        """Push scored samples."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


OpenWeights = Callable[[str], Awaitable[WeightSource]]
OpenDataPlane = Callable[[str, str], Awaitable[DataPlaneLink]]
"""(plan id, producer id) -> link."""


@dataclass(frozen=True)
class ServerStats:
    """What Stats reports."""

    weighthub_model: str
    served_version: int
    pending_version: int
    last_rejected_version: int
    last_rejected_reason: str
    num_weight_swaps: int
    last_swap_stall_s: float
    paused: bool
    rollout_running: bool
    num_running_sequences: int
    num_queued_sequences: int
    num_partial_samples: int
    kv_cache_utilization: float
    decode_tokens_per_s: float
    idle_fraction: float
    window_s: float
    num_tokens_generated: int
    num_samples_finished: int
    mean_batch_occupancy: float


class RolloutCore:
    """Everything one rollout server does, behind plain async methods."""

    def __init__(self, config: RolloutConfig, *, open_weights: OpenWeights, open_dataplane: OpenDataPlane) -> None:
        torch.set_num_threads(config.num_threads)
        self.config = config
        self.tokenizer = load_tokenizer(config.tokenizer, config.model_checkpoint_path)
        model = build_model(config.model_config_json, config.model_checkpoint_path, seed=config.model_seed)
        self.arch = read_arch(model)
        self.limits = Limits(
            max_context_tokens=min(config.max_context_tokens, self.arch.max_positions),
            max_new_tokens=config.max_new_tokens,
            max_samples_per_prompt=config.max_samples_per_prompt,
        )
        weights = prepare_weights(self.arch, model.state_dict())
        del model
        self.router = EventRouter(asyncio.get_running_loop())
        self.engine = Engine(
            self.arch,
            weights,
            self.tokenizer,
            max_batch_size=config.max_batch_size,
            limits=self.limits,
            on_events=self.router.post,
            window_s=config.stats_window_s,
        )
        self.generation = Generation(self.engine, self.router)
        self.updater = WeightUpdater(self.engine, self.arch)
        self.verifiers = Verifiers(
            code_timeout_s=config.code_timeout_s,
            code_memory_bytes=config.code_memory_bytes,
            max_concurrent_code=config.max_concurrent_verifications,
        )
        self._open_weights = open_weights
        self._open_dataplane = open_dataplane
        self._answers: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._worker: RolloutWorker | None = None
        self._worker_task: asyncio.Task[None] | None = None
        self._link: DataPlaneLink | None = None
        self._lock = asyncio.Lock()
        self._follow_start: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the configured weight-hub model, if any, retrying until the hub answers."""
        if self.config.weighthub_model:
            self._follow_start = asyncio.create_task(self._follow_when_ready(self.config.weighthub_model))

    async def _follow_when_ready(self, model: str) -> None:
        while True:
            try:
                await self.follow(model)
                return
            except Exception as exc:  # the hub may come up after us; keep trying, loudly
                logger.warning("cannot follow weight-hub model %s yet: %s", model, exc)
                await asyncio.sleep(2.0)

    async def check_engine(self) -> None:
        """Readiness: raise when the engine thread is not running."""
        if not self.engine.alive:
            raise FailedPrecondition("the generation engine thread is not running")

    async def close(self) -> None:
        """Stop the worker loop, the updater and the engine thread."""
        await self._stop_worker()
        if self._follow_start is not None:
            self._follow_start.cancel()
        await self.updater.detach()
        await asyncio.to_thread(self.engine.close)

    # ----- generation ------------------------------------------------------------------------------

    def prompt_ids(self, text: str, token_ids: list[int]) -> list[int]:
        """The prompt's token ids: as given, or ``text`` tokenized."""
        return list(token_ids) if token_ids else self.tokenizer.encode(text)

    def check_request(self, prompts: list[PromptItem], params: SamplingParams, n: int) -> None:
        """InvalidArgument for bad prompts or sampling parameters; ResourceExhausted when too many sequences."""
        if not prompts:
            raise InvalidArgument("prompts: at least one prompt is needed")
        check_sampling(params, n, self.limits)
        check_capacity(len(prompts) * n, self.config.max_sequences_per_request)
        for i, p in enumerate(prompts):
            try:
                self.engine.check_prompt(p.token_ids, params.max_new_tokens)
            except InvalidArgument as exc:
                raise InvalidArgument(f"prompts[{i}] ({p.prompt_id!r}): {exc.message}") from None

    async def generate(
        self, prompts: list[PromptItem], params: SamplingParams, n: int, *, stream_tokens: bool, verify: bool
    ) -> AsyncIterator[Event | ScoredSample]:
        """Token deltas (with ``stream_tokens``) and finished samples, verified when asked, as they happen."""
        self.check_request(prompts, params, n)
        if verify:
            for p in prompts:
                if not p.verifier:
                    raise InvalidArgument(f"prompt {p.prompt_id!r}: verify asked but the prompt names no verifier")
        seed = resolve_seed(params.seed)
        requests = [
            SequenceRequest(
                prompt_ids=p.token_ids, params=params, seed=seed, sample_index=i, tag=p, want_deltas=stream_tokens
            )
            for p in prompts
            for i in range(n)
        ]
        async with self.generation.call() as call:
            call.submit(requests)
            async for event in call.events():
                if event.kind == "delta":
                    yield event
                elif event.kind == "finished":
                    yield await score_event(self.verifiers, event, verify=verify)

    async def verify(self, kind: str, answer: str, reference: str, timeout_s: float) -> Verdict:
        """Score one answer."""
        return await self.verifiers.verify(kind, answer, reference, timeout_s)

    # ----- mutations with request ids --------------------------------------------------------------

    async def _once(self, request_id: str, action: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``action`` once per ``request_id``; a retry gets the first answer."""
        if not request_id:
            raise InvalidArgument("request_id is required")
        if request_id in self._answers:
            return self._answers[request_id]
        result = await action()
        self._answers[request_id] = result
        while len(self._answers) > 1024:
            self._answers.popitem(last=False)
        return result

    async def pause(self, request_id: str) -> int:
        """Hold decoding between two steps; the number of sequences held."""
        return int(await self._once(request_id, lambda: asyncio.wrap_future(self.engine.pause())))

    async def resume(self, request_id: str) -> None:
        """Continue decoding."""
        await self._once(request_id, lambda: asyncio.wrap_future(self.engine.resume()))

    async def follow(self, model: str) -> None:
        """Follow weight-hub ``model``: every committed version is fetched and swapped in."""
        source = await self._open_weights(model)
        await self.updater.attach(source, model, follow=True)

    async def update_weights(self, request_id: str, model: str, version: int) -> UpdateResult:
        """Fetch, verify and swap in ``version`` (0 = latest) of ``model`` (empty = the followed one)."""

        async def action() -> UpdateResult:
            if model and model != self.updater.model:
                await self.updater.attach(await self._open_weights(model), model, follow=False)
            return await self.updater.update(version)

        result: UpdateResult = await self._once(request_id, action)
        return result

    async def start_rollout(
        self,
        request_id: str,
        *,
        plan_id: str,
        weighthub_model: str,
        params: SamplingParams,
        num_prompts_per_round: int,
        completion_ratio: float,
        max_staleness_versions: int,
    ) -> None:
        """Start the worker loop on data-plane plan ``plan_id``; FailedPrecondition when one runs already."""

        async def action() -> None:
            async with self._lock:
                if self._worker_task is not None and not self._worker_task.done():
                    raise FailedPrecondition("a rollout is running; StopRollout first")
                if not plan_id:
                    raise InvalidArgument("dataplane_plan_id is required")
                if not (0 < completion_ratio <= 1) or not math.isfinite(completion_ratio):
                    raise InvalidArgument(f"completion_ratio={completion_ratio}: expected a value in (0, 1]")
                if not 1 <= num_prompts_per_round <= self.config.max_batch_size:
                    raise InvalidArgument(
                        f"num_prompts_per_round={num_prompts_per_round}: expected 1..{self.config.max_batch_size}"
                    )
                check_sampling(params, 1, self.limits)
                if weighthub_model and weighthub_model != self.updater.model:
                    await self.follow(weighthub_model)
                if not self.updater.model:
                    raise FailedPrecondition(
                        "weighthub_model is required: samples carry weight versions >= 1, which come from the hub"
                    )
                link = await self._open_dataplane(plan_id, f"rollout-{id(self):x}")
                settings = RolloutSettings(
                    sampling=params,
                    num_prompts_per_round=num_prompts_per_round,
                    completion_ratio=completion_ratio,
                    max_staleness_versions=max_staleness_versions,
                    seed=resolve_seed(params.seed),
                )
                self._link = link
                self._worker = RolloutWorker(
                    self.generation, self.verifiers, settings, self._next_prompts(link), link.put_samples
                )
                self._worker_task = asyncio.create_task(self._worker.run(), name="rollout-worker")

        await self._once(request_id, action)

    def _next_prompts(self, link: DataPlaneLink) -> NextPrompts:
        async def draw(num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
            prompts, group_size = await link.next_prompts(num, wait_s)
            fits = []
            for p in prompts:
                try:
                    self.engine.check_prompt(
                        p.token_ids, self._worker.settings.sampling.max_new_tokens if self._worker else 1
                    )
                    fits.append(p)
                except InvalidArgument as exc:
                    logger.warning("skipping prompt %s from the data plane: %s", p.prompt_id, exc.message)
            return fits, group_size

        return draw

    async def stop_rollout(self, request_id: str) -> None:
        """Stop the worker loop (partials dropped)."""
        await self._once(request_id, self._stop_worker)

    async def _stop_worker(self) -> None:
        task, self._worker_task = self._worker_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                logger.exception("the rollout worker had failed")
        if self._worker is not None:
            await self._worker.close()
        if self._link is not None:
            await self._link.close()
            self._link = None

    @property
    def worker(self) -> RolloutWorker | None:
        """The current (or last) worker loop."""
        return self._worker

    def stats(self) -> ServerStats:
        """A snapshot for Stats."""
        e = self.engine.stats()
        running = self._worker_task is not None and not self._worker_task.done()
        return ServerStats(
            weighthub_model=self.updater.model,
            served_version=e.served_version,
            pending_version=self.updater.pending_version,
            last_rejected_version=self.updater.last_rejected_version,
            last_rejected_reason=self.updater.last_rejected_reason,
            num_weight_swaps=e.num_weight_swaps,
            last_swap_stall_s=e.last_swap_stall_s,
            paused=e.paused,
            rollout_running=running,
            num_running_sequences=e.num_running,
            num_queued_sequences=e.num_queued,
            num_partial_samples=(len(self._worker.partials) + self._worker.num_carried) if self._worker else 0,
            kv_cache_utilization=e.kv_cache_utilization,
            decode_tokens_per_s=e.decode_tokens_per_s,
            idle_fraction=e.idle_fraction,
            window_s=e.window_s,
            num_tokens_generated=e.num_tokens_generated,
            num_samples_finished=e.num_samples_finished,
            mean_batch_occupancy=e.mean_batch_occupancy,
        )
