"""The generation engine: continuous batching over a KV cache, on a thread of its own.

Sequences are submitted at any time; between two decode steps the engine admits waiting ones
(prefill into a free cache slot, the prompt's keys shared between the n samples of one prompt),
retires finished ones, applies a pending weight swap, and honours pause, preemption and cancel.
Every sampled token is recorded with its behaviour log-probability and the weight version that
produced it. Events (token deltas, finished or preempted sequences) go to one callback per step.

The engine thread is the only one touching the cache and the served weights; other threads talk to
it through commands that resolve ``concurrent.futures.Future`` objects at a step boundary.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from services.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from services.rollout.decoder import Arch, Decoder, KVCache, SamplerBatch, Weights, sample, seed_key
from services.rollout.model import Tokenizer

logger = logging.getLogger(__name__)

POOL_MIN_FLOPS = 4_000_000_000
"""Work (``Decoder.flops``) from which a decode step or a prefill runs on torch's intra-op thread pool;
smaller ones run on the engine thread alone.

A parallel region ends at a barrier that waits for every pool thread. Each matmul, softmax and bmm of a
small step is a few microseconds of arithmetic, so with two threads a step becomes some 37 barriers; on a
shared machine each waits for a descheduled thread's turn (a scheduler slice, milliseconds). Measured at
load 5-28 on 2 cores: a batch-32 step of the default model 1.9 ms on one thread, 29 ms on two; a hidden-512,
8-layer model at batch 64 (3.2 GFLOP a step) still 10x slower on two. The threshold keeps the pool for work
that amortises its barriers even then (a 4096-token prefill of the default model, SmolLM2-135M decode from
batch 16 up)."""
FINISH_STOP = "stop"
FINISH_LENGTH = "length"


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to sample one sequence."""

    temperature: float = 1.0
    """Softmax temperature; 0 for greedy."""
    top_p: float = 1.0
    """Nucleus threshold in (0, 1]; 1 for off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 for off."""
    max_new_tokens: int = 64
    """Most completion tokens."""
    stop: tuple[str, ...] = ()
    """Strings that end the sequence (kept in the completion)."""
    seed: int | None = None
    """Noise seed; None for a fresh one."""


@dataclass(frozen=True)
class Limits:
    """Bounds the engine enforces on requests."""

    max_context_tokens: int
    max_new_tokens: int
    max_samples_per_prompt: int
    max_stop_strings: int = 8
    max_stop_length: int = 64


def check_sampling(params: SamplingParams, n: int, limits: Limits) -> None:
    """Raise InvalidArgument naming the first sampling parameter out of range."""
    import math

    if not (math.isfinite(params.temperature) and 0 <= params.temperature <= 100):
        raise InvalidArgument(f"sampling.temperature={params.temperature}: expected 0..100 (0 for greedy)")
    if not (math.isfinite(params.top_p) and 0 < params.top_p <= 1):
        raise InvalidArgument(f"sampling.top_p={params.top_p}: expected a value in (0, 1]")
    if params.top_k < 0:
        raise InvalidArgument(f"sampling.top_k={params.top_k}: expected >= 0")
    if not 1 <= params.max_new_tokens <= limits.max_new_tokens:
        raise InvalidArgument(f"sampling.max_new_tokens={params.max_new_tokens}: expected 1..{limits.max_new_tokens}")
    if not 1 <= n <= limits.max_samples_per_prompt:
        raise InvalidArgument(f"sampling.n={n}: expected 1..{limits.max_samples_per_prompt}")
    if len(params.stop) > limits.max_stop_strings:
        raise InvalidArgument(f"sampling.stop: {len(params.stop)} strings, at most {limits.max_stop_strings}")
    for s in params.stop:
        if not s or len(s) > limits.max_stop_length:
            raise InvalidArgument(f"sampling.stop={s!r}: expected 1..{limits.max_stop_length} characters")


@dataclass
class Partial:
    """What a sequence has generated so far; enough to continue it later, under any weights."""

    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)
    """[start, end, weight_version] of contiguous completion tokens, ascending."""


@dataclass
class SequenceRequest:
    """One sequence to generate: a prompt, how to sample, and who to tell."""

    prompt_ids: list[int]
    params: SamplingParams
    seed: int
    """Resolved seed of the request (with ``sample_index`` it fixes the noise)."""
    sample_index: int = 0
    tag: Any = None
    """Owner data returned with every event."""
    want_deltas: bool = False
    prior: Partial | None = None
    """Tokens already generated (a partial sample being continued)."""


@dataclass
class Event:
    """What happened to one sequence during a step."""

    kind: str
    """"delta", "finished" or "preempted"."""
    seq_id: int
    tag: Any
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    spans: list[list[int]]
    text: str = ""
    finish_reason: str = ""
    delta_start: int = 0
    """For deltas: index of the first new completion token."""


class _Seq:
    __slots__ = (
        "cache_len",
        "completion",
        "delta_sent",
        "id",
        "key",
        "logprobs",
        "max_new_tokens",
        "req",
        "spans",
        "stop_window",
    )

    def __init__(self, seq_id: int, req: SequenceRequest) -> None:
        self.id = seq_id
        self.req = req
        prior = req.prior or Partial()
        self.completion = list(prior.completion_ids)
        self.logprobs = list(prior.logprobs)
        self.spans = [list(s) for s in prior.spans]
        self.cache_len = 0
        self.key = seed_key(req.seed, req.sample_index)
        self.delta_sent = len(self.completion)
        # Tail of the completion (in tokens) that can hold a stop string; 0 without stop strings.
        self.stop_window = max((len(s.encode("utf-8")) for s in req.params.stop), default=-4) + 4
        self.max_new_tokens = req.params.max_new_tokens

    def all_tokens(self) -> list[int]:
        return self.req.prompt_ids + self.completion

    def event(self, kind: str, tokenizer: Tokenizer, finish_reason: str = "") -> Event:
        return Event(
            kind=kind,
            seq_id=self.id,
            tag=self.req.tag,
            sample_index=self.req.sample_index,
            prompt_ids=self.req.prompt_ids,
            completion_ids=list(self.completion),
            logprobs=list(self.logprobs),
            spans=[list(s) for s in self.spans],
            text=tokenizer.decode(self.completion) if kind != "delta" else "",
            finish_reason=finish_reason,
        )


@dataclass
class _StepInputs:
    """The decode inputs of the active batch, carried from step to step while its membership holds."""

    tokens: torch.Tensor
    positions: torch.Tensor
    max_len: int
    sampler: SamplerBatch


@dataclass
class EngineStats:
    """A snapshot of the engine for Stats."""

    served_version: int
    paused: bool
    num_running: int
    num_queued: int
    kv_cache_utilization: float
    decode_tokens_per_s: float
    idle_fraction: float
    window_s: float
    num_tokens_generated: int
    num_samples_finished: int
    num_weight_swaps: int
    last_swap_stall_s: float
    num_steps: int
    mean_batch_occupancy: float
    """Mean fraction of slots decoding over the window (1 - slot idle fraction)."""


class Engine:
    """Continuous-batching generation on its own thread; thread-safe methods return futures."""

    def __init__(
        self,
        arch: Arch,
        weights: Weights,
        tokenizer: Tokenizer,
        *,
        max_batch_size: int,
        limits: Limits,
        on_events: Callable[[list[Event]], None],
        weight_version: int = 0,
        window_s: float = 10.0,
    ) -> None:
        if limits.max_context_tokens > arch.max_positions:
            raise InvalidArgument(
                f"max_context_tokens={limits.max_context_tokens} exceeds the model's {arch.max_positions} positions"
            )
        self.arch = arch
        self.tokenizer = tokenizer
        self.limits = limits
        self.max_batch_size = max_batch_size
        self.cache = KVCache(arch, max_batch_size, limits.max_context_tokens)
        self.decoder = Decoder(arch, self.cache)
        self._weights = weights
        self.version = weight_version
        self._on_events = on_events
        self._commands: queue.SimpleQueue[tuple[str, Any, concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._active: list[_Seq] = []
        self._batch: _StepInputs | None = None
        self._ids = itertools.count(1)
        self._paused = False
        self._closed = False
        self._window_s = window_s
        self._steps: collections.deque[tuple[float, float, int, int]] = collections.deque()
        self._idle: collections.deque[tuple[float, float]] = collections.deque()
        self.num_tokens_generated = 0
        self.num_samples_finished = 0
        self.num_steps = 0
        self.num_weight_swaps = 0
        self.last_swap_stall_s = 0.0
        self.step_observer: Callable[[float, float, int], None] | None = None
        """Called after each decode step with (start, end, tokens); benchmarks use it."""
        self._pool_threads = 1
        """The engine thread's intra-op threads outside small steps; set when the thread starts."""
        self._thread = threading.Thread(target=self._run, name="rollout-engine", daemon=True)
        self._thread.start()

    # ----- thread-safe API -------------------------------------------------------------------------

    def check_prompt(self, prompt_ids: Sequence[int], max_new_tokens: int, prior_len: int = 0) -> None:
        """Raise InvalidArgument for an empty prompt, one with unknown ids, or one that cannot fit its tokens."""
        if not prompt_ids:
            raise InvalidArgument("prompt is empty")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.arch.vocab_size:
            raise InvalidArgument(f"prompt token ids must be in 0..{self.arch.vocab_size - 1}")
        need = len(prompt_ids) + max(max_new_tokens, prior_len)
        if need > self.limits.max_context_tokens:
            raise InvalidArgument(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens {max_new_tokens} exceeds the context of "
                f"{self.limits.max_context_tokens} tokens"
            )

    def submit(self, requests: Sequence[SequenceRequest]) -> list[int]:
        """Queue sequences; returns their ids. Requests must have passed ``check_prompt``."""
        if self._closed:
            raise FailedPrecondition("the engine is closed")
        seqs = [_Seq(next(self._ids), r) for r in requests]
        self._command("submit", seqs)
        return [s.id for s in seqs]

    def cancel(self, seq_ids: Sequence[int]) -> concurrent.futures.Future[int]:
        """Drop sequences (running or waiting) without events; resolves to how many were found."""
        return self._command("cancel", set(seq_ids))

    def preempt(self, seq_ids: Sequence[int]) -> concurrent.futures.Future[list[Event]]:
        """Take sequences out at the next step boundary; resolves to their "preempted" events."""
        return self._command("preempt", set(seq_ids))

    def pause(self) -> concurrent.futures.Future[int]:
        """Stop decoding between two steps, keeping every sequence; resolves to the number held."""
        return self._command("pause", None)

    def resume(self) -> concurrent.futures.Future[None]:
        """Continue decoding after ``pause``."""
        return self._command("resume", None)

    def swap(self, weights: Weights, version: int) -> concurrent.futures.Future[float]:
        """Serve ``weights`` as ``version`` from the next step on; resolves to the stall in seconds."""
        return self._command("swap", (weights, version))

    def stats(self) -> EngineStats:
        """Counters and rates over the last window (read without stopping the engine)."""
        now = time.perf_counter()
        start = now - self._window_s
        steps = [s for s in list(self._steps) if s[1] >= start]
        tokens = sum(s[2] for s in steps)
        idle = sum(max(0.0, min(e, now) - max(b, start)) for b, e in list(self._idle) if e >= start)
        observed = min(self._window_s, now - self._started)
        slots = [s[3] for s in steps]
        active = list(self._active)
        used = sum(len(s.req.prompt_ids) + len(s.completion) for s in active)
        return EngineStats(
            served_version=self.version,
            paused=self._paused,
            num_running=len(active),
            num_queued=len(self._waiting),
            kv_cache_utilization=used / (self.cache.num_slots * self.cache.max_tokens),
            decode_tokens_per_s=tokens / observed if observed > 0 else 0.0,
            idle_fraction=min(1.0, idle / observed) if observed > 0 else 1.0,
            window_s=observed,
            num_tokens_generated=self.num_tokens_generated,
            num_samples_finished=self.num_samples_finished,
            num_weight_swaps=self.num_weight_swaps,
            last_swap_stall_s=self.last_swap_stall_s,
            num_steps=self.num_steps,
            mean_batch_occupancy=(sum(slots) / len(slots) / self.max_batch_size) if slots else 0.0,
        )

    @property
    def alive(self) -> bool:
        """Whether the engine thread runs."""
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        """Stop the thread; pending futures are cancelled."""
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=30)

    # ----- engine thread ---------------------------------------------------------------------------

    def _command(self, kind: str, arg: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._commands.put((kind, arg, future))
        self._wake.set()
        return future

    def _run(self) -> None:
        self._started = time.perf_counter()
        torch.set_grad_enabled(False)
        # This thread's intra-op pool as torch set it up for it (the process-wide default at its start).
        self._pool_threads = torch.get_num_threads()
        try:
            while not self._closed:
                events = self._drain_commands()
                if self._paused or not (self._active or self._waiting):
                    if events:
                        self._on_events(events)
                    idle_from = time.perf_counter()
                    self._wake.wait(timeout=0.2)
                    self._wake.clear()
                    self._note_idle(idle_from, time.perf_counter())
                    continue
                self._admit()
                events += self._decode_step()
                if events:
                    self._on_events(events)
        except Exception:
            logger.exception("the engine thread failed")
            raise
        finally:
            while True:
                try:
                    _, _, future = self._commands.get_nowait()
                except queue.Empty:
                    break
                future.cancel()

    def _note_idle(self, start: float, end: float) -> None:
        self._idle.append((start, end))
        horizon = end - self._window_s
        while self._idle and self._idle[0][1] < horizon:
            self._idle.popleft()

    def _drain_commands(self) -> list[Event]:
        events: list[Event] = []
        while True:
            try:
                kind, arg, future = self._commands.get_nowait()
            except queue.Empty:
                return events
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if kind == "submit":
                    self._waiting.extend(arg)
                    future.set_result(None)
                elif kind == "cancel":
                    future.set_result(self._remove(arg))
                elif kind == "preempt":
                    taken = self._take(arg)
                    out = [s.event("preempted", self.tokenizer) for s in taken]
                    future.set_result(out)
                elif kind == "pause":
                    self._paused = True
                    future.set_result(len(self._active) + len(self._waiting))
                elif kind == "resume":
                    self._paused = False
                    future.set_result(None)
                elif kind == "swap":
                    start = time.perf_counter()
                    self._weights, self.version = arg
                    stall = time.perf_counter() - start
                    self.num_weight_swaps += 1
                    self.last_swap_stall_s = stall
                    future.set_result(stall)
                else:
                    raise AssertionError(kind)
            except Exception as exc:
                future.set_exception(exc)

    def _take(self, ids: set[int]) -> list[_Seq]:
        taken = [s for s in self._waiting if s.id in ids]
        self._waiting = collections.deque(s for s in self._waiting if s.id not in ids)
        keep: list[_Seq] = []
        for s in self._active:
            (taken if s.id in ids else keep).append(s)
        if len(keep) != len(self._active):
            self._compact(keep)
        return taken

    def _remove(self, ids: set[int]) -> int:
        return len(self._take(ids))

    def _compact(self, keep: list[_Seq]) -> None:
        """Make ``keep`` the active sequences in slots 0..len(keep)-1 (``KVCache.compact``)."""
        kept = {s.id for s in keep}
        order = self.cache.compact([s.id in kept for s in self._active], [s.cache_len for s in self._active])
        self._active = [self._active[slot] for slot in order]
        self._batch = None

    def _admit(self) -> None:
        """Move waiting sequences into free slots, prefilling all new contexts in one batched call."""
        if not self._waiting or len(self._active) >= self.max_batch_size:
            return
        first_slot: dict[tuple[int, ...], int] = {}
        contexts: list[list[int]] = []
        slots: list[int] = []
        shared: list[tuple[int, int, int]] = []
        while self._waiting and len(self._active) < self.max_batch_size:
            s = self._waiting.popleft()
            slot = len(self._active)
            context = s.all_tokens()[:-1]
            key = tuple(context)
            if key in first_slot:
                shared.append((first_slot[key], slot, len(context)))
            else:
                first_slot[key] = slot
                contexts.append(context)
                slots.append(slot)
            s.cache_len = len(context)
            self._active.append(s)
        work = self.decoder.flops(sum(len(c) for c in contexts), max((len(c) for c in contexts), default=0))
        threads = self._threads_for(work)
        try:
            self.decoder.prefill_many(self._weights, contexts, slots)
            for src, dst, length in shared:  # the n samples of one prompt share its prefill
                self.cache.copy_slot(src, dst, length)
        finally:
            self._restore_threads(threads)
        self._batch = None

    def _threads_for(self, work: int) -> int:
        """Set this thread's intra-op threads for ``work`` FLOPs (see ``POOL_MIN_FLOPS``); returns the count.

        ``torch.set_num_threads`` sets the calling thread's OpenMP and MKL thread counts, which is what this
        thread's ops use, but also the default that threads touching torch for the first time start with:
        it is changed only for the length of one step and restored by ``_restore_threads``.
        """
        threads = self._pool_threads if work >= POOL_MIN_FLOPS else 1
        if threads != self._pool_threads:
            torch.set_num_threads(threads)
        return threads

    def _restore_threads(self, threads: int) -> None:
        if threads != self._pool_threads:
            torch.set_num_threads(self._pool_threads)

    def _step_inputs(self) -> _StepInputs:
        """Tensors of the active batch, rebuilt only when its membership changed."""
        if self._batch is None:
            active = self._active
            params = [s.req.params for s in active]
            top_p = [p.top_p if p.top_p < 1 else 2.0 for p in params]
            self._batch = _StepInputs(
                tokens=torch.tensor([s.completion[-1] if s.completion else s.req.prompt_ids[-1] for s in active]),
                positions=torch.tensor([s.cache_len for s in active]),
                max_len=max(s.cache_len for s in active) + 1,
                sampler=SamplerBatch(
                    temperature=torch.tensor([p.temperature for p in params]),
                    top_k=torch.tensor([p.top_k for p in params], dtype=torch.int64),
                    top_p=torch.tensor(top_p),
                    keys=torch.tensor([s.key for s in active], dtype=torch.int64),
                    counters=torch.tensor([len(s.completion) for s in active], dtype=torch.int64),
                    any_top_k=any(p.top_k > 0 for p in params),
                    any_top_p=any(p < 1 for p in top_p),
                    all_greedy=all(p.temperature <= 0 for p in params),
                ),
            )
        return self._batch

    def _decode_step(self) -> list[Event]:
        start = time.perf_counter()
        active = self._active
        b = len(active)
        inputs = self._step_inputs()
        batch = inputs.sampler
        threads = self._threads_for(self.decoder.flops(b, inputs.max_len))
        try:
            logits = self.decoder.step(self._weights, inputs.tokens, inputs.positions, inputs.max_len)
            new_tokens, new_logprobs = sample(logits, batch)
        finally:
            self._restore_threads(threads)
        version = self.version
        events: list[Event] = []
        finished: set[int] = set()
        eos = self.tokenizer.eos_id
        for s, tok, lp in zip(active, new_tokens.tolist(), new_logprobs.tolist(), strict=True):
            s.cache_len += 1
            completion = s.completion
            index = len(completion)
            completion.append(tok)
            s.logprobs.append(lp)
            span = s.spans[-1] if s.spans else None
            if span is not None and span[1] == index and span[2] == version:
                span[1] = index + 1
            else:
                s.spans.append([index, index + 1, version])
            if tok == eos or (s.stop_window and self._hit_stop(s)):
                reason = FINISH_STOP
            elif index + 1 >= s.max_new_tokens:
                reason = FINISH_LENGTH
            else:
                reason = ""
            if s.req.want_deltas:
                delta = Event(
                    kind="delta",
                    seq_id=s.id,
                    tag=s.req.tag,
                    sample_index=s.req.sample_index,
                    prompt_ids=s.req.prompt_ids,
                    completion_ids=s.completion[s.delta_sent :],
                    logprobs=s.logprobs[s.delta_sent :],
                    spans=[[s.delta_sent, len(s.completion), version]],
                    delta_start=s.delta_sent,
                )
                s.delta_sent = len(s.completion)
                events.append(delta)
            if reason:
                finished.add(s.id)
                events.append(s.event("finished", self.tokenizer, reason))
        # The next step feeds the sampled tokens one position further: advance the tensors in place
        # of rebuilding them from the sequences.
        inputs.tokens = new_tokens
        inputs.positions = inputs.positions + 1
        inputs.max_len += 1
        batch.counters = batch.counters + 1
        if finished:
            self._compact([s for s in active if s.id not in finished])
            self.num_samples_finished += len(finished)
        end = time.perf_counter()
        self.num_tokens_generated += b
        self.num_steps += 1
        self._steps.append((start, end, b, b))
        horizon = end - self._window_s
        while self._steps and self._steps[0][1] < horizon:
            self._steps.popleft()
        if self.step_observer is not None:
            self.step_observer(start, end, b)
        return events

    def _hit_stop(self, s: _Seq) -> bool:
        tail = self.tokenizer.decode(s.completion[-s.stop_window :])
        return any(stop in tail for stop in s.req.params.stop)


def resolve_seed(seed: int | None) -> int:
    """``seed``, or a fresh random 64-bit one."""
    return random.getrandbits(64) if seed is None else int(seed)


def check_capacity(num_sequences: int, limit: int) -> None:
    """Raise ResourceExhausted when one request asks for more sequences than the server admits at once."""
    if num_sequences > limit:
        raise ResourceExhausted(f"{num_sequences} sequences in one request; at most {limit}")
