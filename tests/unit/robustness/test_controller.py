"""The controller's detection on a fake clock, with an in-memory stand-in for Redis."""

from __future__ import annotations

from typing import Any

from services.robustness.config import RobustnessConfig
from services.robustness.core import Controller
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
