"""The controller's detection on a fake clock, with an in-memory stand-in for Redis."""

from __future__ import annotations

from typing import Any

from services.robustness.config import RobustnessConfig
from services.robustness.core import AgentState, Controller
from services.robustness.model import Heartbeat, Phase, StepMetrics


class _Client:
    async def sadd(self, *_: Any) -> int:
        return 1


class _Meta:
    """What ``Controller.register`` and ``report`` touch of ``RedisMeta``."""

    client = _Client()

    def key(self, *parts: object) -> str:
        return ":".join(str(p) for p in parts)

    async def put_many(self, values: dict[str, Any]) -> None:
        return None


class _Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _metrics(step: int) -> StepMetrics:
    return StepMetrics(step, loss=1.0, grad_norm=1.0, has_nan_or_inf=False, step_time_s=0.1, compute_time_s=0.05)


async def test_the_compute_timeout_starts_when_a_long_checkpoint_ends_not_at_the_last_step() -> None:
    clock = _Clock()
    config = RobustnessConfig(redis_url="redis://unused", hang_min_timeout_s=3.0, checkpoint_min_timeout_s=10.0)
    controller = Controller(config, _Meta(), clock=clock)  # type: ignore[arg-type]
    controller.ready.set()  # nothing to rebuild
    ids = [
        (
            await controller.register(
                request_id=f"r{r}", job_id="j", rank=r, world_size=2, host=f"n{r}", pid=r, groups={}, standby=False
            )
        )[0]
        for r in range(2)
    ]
    job = controller.jobs["j"]
    for step in range(5):
        clock.now_s += 0.1
        for agent_id in ids:
            await controller.report(agent_id, clock.now_s, Heartbeat(step, Phase.FORWARD_BACKWARD))
            await controller.report(agent_id, clock.now_s, _metrics(step))

    async def tick(seconds: float, beats: list[Heartbeat]) -> None:
        for _ in range(round(seconds / 0.1)):
            clock.now_s += 0.1
            for agent_id, beat in zip(ids, beats, strict=True):
                await controller.report(agent_id, clock.now_s, beat)
            controller._check_job(job, clock.now_s)

    # Rank 0 saves a checkpoint for 4.5 s (over the 3 s compute timeout, under the checkpoint one).
    await tick(4.5, [Heartbeat(4, Phase.CHECKPOINT), Heartbeat(5, Phase.COLLECTIVE)])
    await tick(2.0, [Heartbeat(5, Phase.FORWARD_BACKWARD), Heartbeat(5, Phase.COLLECTIVE)])
    assert job.incident_id is None, controller._incidents
    # No step for the compute timeout after the save ended: now it is a hang.
    await tick(1.5, [Heartbeat(5, Phase.FORWARD_BACKWARD), Heartbeat(5, Phase.COLLECTIVE)])
    assert job.incident_id is not None
    await controller.close()


async def test_start_up_progress_holds_off_the_hang_timer_without_moving_the_step() -> None:
    clock = _Clock()
    config = RobustnessConfig(redis_url="redis://unused", startup_timeout_s=5.0, liveness_timeout_s=60.0)
    controller = Controller(config, _Meta(), clock=clock)  # type: ignore[arg-type]
    controller.ready.set()
    agent_id, _, _ = await controller.register(
        request_id="r", job_id="j", rank=0, world_size=1, host="n0", pid=1, groups={}, standby=False
    )
    job = controller.jobs["j"]

    async def tick(seconds: float, beat: Heartbeat) -> None:
        for _ in range(round(seconds / 0.5)):
            clock.now_s += 0.5
            await controller.report(agent_id, clock.now_s, beat)
            controller._check_job(job, clock.now_s)

    # A warm start of 8 steps of 4 s each: 32 s in start-up, far past its 5 s allowance, and no hang.
    for done in range(1, 9):
        await tick(4.0, Heartbeat(0, Phase.STARTUP, startup_progress=done))
    assert job.incident_id is None, controller._incidents
    assert job.progress_step == -1  # the steps are left to training: RL step 1 is still step 1
    await controller.report(agent_id, clock.now_s, _metrics(1))
    assert job.progress_step == 1

    # Repeated or lower start-up figures, or one outside the start-up phase, are no progress.
    other = Controller(config, _Meta(), clock=clock)  # type: ignore[arg-type]
    other.ready.set()
    other_id, _, _ = await other.register(
        request_id="s", job_id="k", rank=0, world_size=1, host="n0", pid=2, groups={}, standby=False
    )
    stuck_job = other.jobs["k"]
    beats = [
        Heartbeat(0, Phase.STARTUP, startup_progress=3),
        Heartbeat(0, Phase.STARTUP, startup_progress=2),
        Heartbeat(0, Phase.DATA, startup_progress=9),
        Heartbeat(0, Phase.STARTUP, startup_progress=3),
    ]
    for beat in beats:
        clock.now_s += 2.0
        await other.report(other_id, clock.now_s, beat)
        other._check_job(stuck_job, clock.now_s)
    # 6 s since the only rise (to 3): past the start-up allowance.
    assert stuck_job.incident_id is not None
    assert "no progress" in other._incidents[stuck_job.incident_id].summary
    await other.close()
    await controller.close()


def test_agent_state_loads_what_an_older_controller_kept_and_keeps_what_it_can_load() -> None:
    clock = 1000.0
    agent = AgentState(
        agent_id="a",
        job_id="j",
        rank=0,
        world_size=1,
        host="n0",
        pid=1,
        groups={},
        standby=False,
        generation=0,
        registered_at_s=clock,
        last_seen_s=clock,
        startup_progress=7,
    )
    kept = agent.to_json()
    # What an older controller wrote and reads back has no start-up progress field.
    assert "startup_progress" not in kept
    loaded = AgentState.from_json(kept)
    assert loaded.startup_progress == 0 and loaded.rank == 0 and loaded.phase == Phase.STARTUP
