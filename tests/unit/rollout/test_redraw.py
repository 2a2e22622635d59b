"""A worker whose draws the data plane refuses (the experience buffer full) asks again after a delay
that doubles up to a cap, and asks at once again after a draw that was served."""

from __future__ import annotations

import pytest

from services.common.errors import ResourceExhausted
from services.rollout import streaming
from services.rollout.generation import Generation
from services.rollout.streaming import MAX_REDRAW_S, REDRAW_S, PromptItem
from tests.unit.rollout.test_streaming import GROUP, Feed, generation, worker

__all__ = ["generation"]  # the fixture, used by name


class FullThenServing(Feed):
    """Refuses the first ``num_refusals`` draws, then hands out prompts."""

    def __init__(self, num_refusals: int) -> None:
        super().__init__()
        self.num_refusals = num_refusals
        self.num_draws = 0

    async def next_prompts(self, num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        self.num_draws += 1
        if self.num_draws <= self.num_refusals:
            raise ResourceExhausted("the experience buffer is full")
        return await super().next_prompts(num, wait_s)


async def test_refused_draws_back_off_doubling_to_a_cap_and_reset_when_served(
    generation: Generation, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 6))
        clock[0] += seconds

    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(streaming.asyncio, "sleep", sleep)
    feed = FullThenServing(num_refusals=6)
    w = worker(generation, feed, alpha=1.0, prompts=1)
    w.group_size = GROUP
    await w.run(num_rounds=7)
    expected = [min(MAX_REDRAW_S, REDRAW_S * 2**k) for k in range(6)]
    assert waits == [round(x, 6) for x in expected]  # one delay after each refusal
    assert feed.num_draws == 7 and len(feed.pushed) == GROUP  # the 7th draw was served and pushed
    await w.run(num_rounds=1)
    assert feed.num_draws == 8 and waits == [round(x, 6) for x in expected]  # served: no delay before it


class ServingOnceThenFull(Feed):
    """Hands out one draw, then refuses every further one; counts the pushes."""

    def __init__(self) -> None:
        super().__init__()
        self.num_draws = 0
        self.num_pushes = 0

    async def next_prompts(self, num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        self.num_draws += 1
        if self.num_draws > 1:
            raise ResourceExhausted("the experience buffer is full")
        return await super().next_prompts(num, wait_s)

    async def put_samples(self, samples: list[streaming.ScoredSample]) -> None:
        self.num_pushes += 1
        await super().put_samples(samples)


async def test_while_draws_are_refused_the_stragglers_finish_in_one_round_and_one_push(
    generation: Generation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The next draw is due only in a minute: nothing new can start before the stragglers are done.
    monkeypatch.setattr(streaming, "REDRAW_S", 60.0)
    feed = ServingOnceThenFull()
    w = worker(generation, feed, alpha=0.25)  # long completions: most outlive the first round
    await w.run(num_rounds=1)
    first = len(feed.pushed)
    assert 0 < first < 4 * GROUP and w.num_carried == 4 * GROUP - first
    await w.run(num_rounds=1)  # the draw is refused: this round holds until every straggler finished
    assert feed.num_draws == 2 and w.num_carried == 0
    assert feed.num_pushes == 2 and len(feed.pushed) == 4 * GROUP


class HoldsThenServing(Feed):
    """A data plane that holds a waiting draw: refuses the first ``num_refusals`` draws, each after
    waiting out its ``wait_s`` on the test's clock (no room came), then hands out prompts."""

    def __init__(self, num_refusals: int, clock: list[float]) -> None:
        super().__init__()
        self.num_refusals = num_refusals
        self.clock = clock
        self.waits: list[float] = []

    async def next_prompts(self, num: int, wait_s: float = 0.0) -> tuple[list[PromptItem], int]:
        self.waits.append(wait_s)
        if len(self.waits) <= self.num_refusals:
            self.clock[0] += wait_s
            raise ResourceExhausted("the experience buffer is full")
        return await super().next_prompts(num, wait_s)


async def test_an_idle_worker_lets_the_data_plane_hold_its_draw_instead_of_sleeping(
    generation: Generation, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(streaming.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(streaming.asyncio, "sleep", sleep)
    feed = HoldsThenServing(num_refusals=3, clock=clock)
    w = worker(generation, feed, alpha=1.0, prompts=1)
    w.group_size = GROUP
    await w.run(num_rounds=4)
    # Every draw asked the data plane to hold it; none was preceded by a sleep: the prompts come the
    # moment room frees, not after a delay that ran on while the room was there.
    assert feed.waits == [streaming.PROMPT_WAIT_S] * 4 and sleeps == []
    assert len(feed.pushed) == GROUP
