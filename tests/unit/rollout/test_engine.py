"""The engine: continuous batching, sampling parameters, seeds, per-token log-probs and versions,
pause, preemption and continuation, weight swaps between steps."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
import torch

from services.common.errors import InvalidArgument
from services.rollout import engine as engine_module
from services.rollout.decoder import Arch, Weights, prepare_weights, read_arch
from services.rollout.engine import Engine, Event, Limits, Partial, SamplingParams, SequenceRequest, check_sampling
from services.rollout.model import CharTokenizer, build_model
from tests.unit.rollout.conftest import LIMITS, Collected

PROMPT = list(b"Compute 12 + 7.")
# A random model rarely emits the EOS byte; these tests bound lengths with max_new_tokens.
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=24)
WARM = SamplingParams(temperature=1.0, max_new_tokens=24)


def run(engine: Engine, collected: Collected, requests: list[SequenceRequest]) -> list[list[int]]:
    ids = engine.submit(requests)
    return [e.completion_ids for e in collected.wait_finished(ids)]


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face ``generate``'s greedy completion of ``prompt`` alone (no EOS)."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
    return list(out[0, len(prompt) :].tolist())


def test_greedy_equals_hf_generate(model: torch.nn.Module, engine: Engine, collected: Collected) -> None:
    (ours,) = run(engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=GREEDY, seed=0)])
    assert ours == hf_greedy(model, PROMPT, 24)


def test_greedy_batch_on_the_default_model_equals_hf_generate_per_prompt(collected: Collected) -> None:
    # The benchmark's model and prompt shape: sequences share a prefix (prefilled once), differ in length,
    # and outnumber the slots, so rows join and leave the batch while others decode.
    model = build_model("", seed=0)
    arch = read_arch(model)
    prompts = [list(f"Compute {i * 7 % 97} + {i * 13 % 89} - {i % 10}.".encode()) for i in range(10)]
    lengths = [8 + 6 * (i % 4) for i in range(10)]
    eng = Engine(
        arch,
        prepare_weights(arch, model.state_dict()),
        CharTokenizer(eos_id=-1),
        max_batch_size=6,
        limits=LIMITS,
        on_events=collected,
    )
    try:
        requests = [
            SequenceRequest(prompt_ids=p, params=SamplingParams(temperature=0.0, max_new_tokens=n), seed=0)
            for p, n in zip(prompts, lengths, strict=True)
        ]
        ours = run(eng, collected, requests)
    finally:
        eng.close()
    for prompt, n, completion in zip(prompts, lengths, ours, strict=True):
        assert completion == hf_greedy(model, prompt, n)


def test_logprobs_and_versions_are_recorded_per_token(
    model: torch.nn.Module, engine: Engine, collected: Collected
) -> None:
    ids = engine.submit(
        [SequenceRequest(prompt_ids=PROMPT, params=SamplingParams(temperature=0.7, max_new_tokens=10), seed=5)]
    )
    (event,) = collected.wait_finished(ids)
    full = torch.tensor([PROMPT + event.completion_ids])
    with torch.no_grad():
        logits = model(full).logits[0, len(PROMPT) - 1 : -1]
    expected = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(event.completion_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(event.logprobs), expected, atol=1e-4, rtol=0)
    assert event.spans == [[0, 10, 0]]
    assert event.finish_reason == "length"


def test_fixed_seed_reproduces_regardless_of_batch_company(engine: Engine, collected: Collected) -> None:
    alone = run(
        engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=WARM, seed=42, sample_index=i) for i in range(3)]
    )
    crowd = [SequenceRequest(prompt_ids=list(b"other prompt %d" % i), params=WARM, seed=i) for i in range(6)]
    mixed = run(
        engine,
        collected,
        crowd[:3]
        + [SequenceRequest(prompt_ids=PROMPT, params=WARM, seed=42, sample_index=i) for i in range(3)]
        + crowd[3:],
    )
    assert mixed[3:6] == alone
    # n samples of one prompt differ from each other; another seed gives other samples.
    assert len({tuple(c) for c in alone}) == 3
    other = run(engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=WARM, seed=43, sample_index=0)])
    assert other[0] != alone[0]


def test_continuous_batching_admits_and_retires_between_steps(engine: Engine, collected: Collected) -> None:
    # 12 sequences on 8 slots with different lengths: short ones leave, waiting ones join.
    requests = [
        SequenceRequest(
            prompt_ids=PROMPT,
            params=SamplingParams(temperature=0.0, max_new_tokens=4 + 6 * (i % 3)),
            seed=0,
            sample_index=i,
        )
        for i in range(12)
    ]
    outs = run(engine, collected, requests)
    assert [len(c) for c in outs] == [4 + 6 * (i % 3) for i in range(12)]
    # Greedy outputs of one prompt agree whatever the slot and the moment each joined.
    assert all(c == outs[2][: len(c)] for c in outs)
    stats = engine.stats()
    assert stats.num_samples_finished == 12 and stats.num_running == 0
    assert stats.num_tokens_generated == sum(len(c) for c in outs)


def test_stop_strings_end_a_sample_and_are_kept(engine: Engine, collected: Collected) -> None:
    params = SamplingParams(temperature=1.0, max_new_tokens=64)
    (free,) = run(engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=params, seed=9)])
    at = next(i for i in range(5, 60) if 32 <= free[i] < 127 and 32 <= free[i + 1] < 127)
    stop = bytes(free[at : at + 2]).decode()
    first = bytes(free).find(stop.encode())
    stopped = SamplingParams(temperature=1.0, max_new_tokens=64, stop=(stop,))
    ids = engine.submit([SequenceRequest(prompt_ids=PROMPT, params=stopped, seed=9)])
    (event,) = collected.wait_finished(ids)
    assert event.finish_reason == "stop"
    assert event.completion_ids == free[: first + 2]
    assert event.text.endswith(stop)


def test_eos_token_ends_a_sample(arch: Arch, weights: Weights, collected: Collected) -> None:
    # Make the EOS byte the greedy choice by tokenizing with an EOS that the model prefers.
    (first,) = _greedy_first_token(arch, weights, collected)
    mine = Collected()
    eng = Engine(arch, weights, CharTokenizer(eos_id=first), max_batch_size=2, limits=LIMITS, on_events=mine)
    try:
        ids = eng.submit([SequenceRequest(prompt_ids=PROMPT, params=GREEDY, seed=0)])
        (event,) = mine.wait_finished(ids)
        assert event.completion_ids == [first] and event.finish_reason == "stop"
    finally:
        eng.close()


def _greedy_first_token(arch: Arch, weights: Weights, collected: Collected) -> list[int]:
    eng = Engine(arch, weights, CharTokenizer(), max_batch_size=1, limits=LIMITS, on_events=collected)
    try:
        ids = eng.submit(
            [SequenceRequest(prompt_ids=PROMPT, params=SamplingParams(temperature=0.0, max_new_tokens=1), seed=0)]
        )
        return collected.wait_finished(ids)[0].completion_ids
    finally:
        eng.close()


def at_step(engine: Engine, step: int, action: Callable[[], object]) -> None:
    """Run ``action`` on the engine thread right after decode step ``step`` (counted from now)."""
    target = engine.num_steps + step

    def observe(start: float, end: float, batch: int) -> None:
        if engine.num_steps == target:
            action()

    engine.step_observer = observe


@pytest.mark.parametrize("params", [GREEDY, WARM])
def test_preempt_then_continue_gives_the_uninterrupted_tokens(
    engine: Engine, collected: Collected, params: SamplingParams
) -> None:
    (whole,) = run(engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=params, seed=77)])
    taken: list[Future[list[Event]]] = []
    engine.pause().result(timeout=10)
    ids = engine.submit([SequenceRequest(prompt_ids=PROMPT, params=params, seed=77)])
    at_step(engine, 7, lambda: taken.append(engine.preempt(ids)))
    engine.resume().result(timeout=10)
    (event,) = taken_result(taken)
    partial = Partial(event.completion_ids, event.logprobs, event.spans)
    assert len(partial.completion_ids) == 7
    assert partial.completion_ids == whole[:7]
    (continued,) = run(engine, collected, [SequenceRequest(prompt_ids=PROMPT, params=params, seed=77, prior=partial)])
    assert continued == whole


def taken_result(taken: list[Future[list[Event]]]) -> list[Event]:
    assert_soon(lambda: bool(taken))
    return taken[0].result(timeout=10)


def assert_soon(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll ``condition`` with a deadline (the engine runs on its own thread)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_pause_holds_every_sequence_and_resume_finishes_them_identically(engine: Engine, collected: Collected) -> None:
    requests = lambda: [SequenceRequest(prompt_ids=PROMPT, params=GREEDY, seed=0, sample_index=i) for i in range(3)]  # noqa: E731
    reference = run(engine, collected, requests())
    assert engine.pause().result(timeout=10) == 0
    ids = engine.submit(requests())
    assert engine.pause().result(timeout=10) == 3
    assert engine.stats().paused and not collected.finished().keys() & set(ids)
    engine.resume().result(timeout=10)
    assert [e.completion_ids for e in collected.wait_finished(ids)] == reference


def test_swap_between_steps_tags_tokens_with_the_new_version(
    model: torch.nn.Module, arch: Arch, engine: Engine, collected: Collected
) -> None:
    changed = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    new = prepare_weights(arch, changed)
    swaps: list[Future[float]] = []
    engine.pause().result(timeout=10)
    ids = engine.submit([SequenceRequest(prompt_ids=PROMPT, params=GREEDY, seed=0)])
    at_step(engine, 5, lambda: swaps.append(engine.swap(new, 2)))
    engine.resume().result(timeout=10)
    (event,) = collected.wait_finished(ids)
    assert event.spans == [[0, 5, 0], [5, 24, 2]]
    assert swaps[0].result(timeout=10) >= 0
    stats = engine.stats()
    assert stats.served_version == 2 and stats.num_weight_swaps == 1


def test_requests_out_of_range_are_refused(engine: Engine) -> None:
    limits = Limits(max_context_tokens=256, max_new_tokens=128, max_samples_per_prompt=16)
    for params, n, needle in [
        (SamplingParams(temperature=-1), 1, "temperature"),
        (SamplingParams(temperature=float("nan")), 1, "temperature"),
        (SamplingParams(top_p=0.0), 1, "top_p"),
        (SamplingParams(top_k=-2), 1, "top_k"),
        (SamplingParams(max_new_tokens=0), 1, "max_new_tokens"),
        (SamplingParams(max_new_tokens=129), 1, "max_new_tokens"),
        (SamplingParams(), 17, "n=17"),
        (SamplingParams(stop=("",)), 1, "stop"),
    ]:
        with pytest.raises(InvalidArgument, match=needle):
            check_sampling(params, n, limits)
    with pytest.raises(InvalidArgument, match="empty"):
        engine.check_prompt([], 10)
    with pytest.raises(InvalidArgument, match="exceeds the context"):
        engine.check_prompt([65] * 250, 10)
    with pytest.raises(InvalidArgument, match="token ids"):
        engine.check_prompt([65, 300], 10)


@pytest.mark.parametrize("big", [False, True])
def test_small_steps_run_on_the_engine_thread_alone_and_big_ones_on_the_pool(
    model: torch.nn.Module,
    arch: Arch,
    weights: Weights,
    collected: Collected,
    monkeypatch: pytest.MonkeyPatch,
    big: bool,
) -> None:
    if big:
        monkeypatch.setattr(engine_module, "POOL_MIN_FLOPS", 0)
    mine = Collected()
    outside = torch.get_num_threads()
    torch.set_num_threads(2)  # the default engine threads start with
    seen: dict[str, set[int]] = {"prefill": set(), "step": set(), "between": set()}
    try:
        eng = Engine(arch, weights, CharTokenizer(), max_batch_size=4, limits=LIMITS, on_events=mine)
        real_step, real_prefill = eng.decoder.step, eng.decoder.prefill_many

        def step(*args: Any) -> torch.Tensor:
            seen["step"].add(torch.get_num_threads())
            return real_step(*args)

        def prefill_many(*args: Any) -> None:
            seen["prefill"].add(torch.get_num_threads())
            real_prefill(*args)

        monkeypatch.setattr(eng.decoder, "step", step)
        monkeypatch.setattr(eng.decoder, "prefill_many", prefill_many)
        eng.step_observer = lambda start, end, b: seen["between"].add(torch.get_num_threads())
        try:
            requests = [SequenceRequest(prompt_ids=PROMPT[: 8 + i], params=GREEDY, seed=0) for i in range(3)]
            ours = run(eng, mine, requests)
        finally:
            eng.close()
        assert torch.get_num_threads() == 2  # this thread's count is its own
    finally:
        torch.set_num_threads(outside)
    want = 2 if big else 1
    assert seen["step"] == {want} and seen["prefill"] == {want}
    assert seen["between"] == {2}  # restored after every step
    # Whichever thread count ran them, the batch gives each prompt's greedy tokens from HF generate.
    assert ours == [hf_greedy(model, r.prompt_ids, GREEDY.max_new_tokens) for r in requests]
