"""What a rank tells the real robustness monitor (over gRPC, through its real agent): warm-start steps
are start-up progress that keeps the hang timer from firing, the RL steps keep their own numbers, and a
NaN is owned by the rank where it arose."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
from seedstack.robustness.v1 import robustness_pb2 as rb

from clients.robustness import RobustnessClient
from services.common.server import GrpcServer
from services.robustness.agent import Agent
from services.robustness.config import RobustnessConfig
from services.robustness.core import Controller
from services.robustness.drill import _controller_of
from services.robustness.server import create_server
from services.trainer.rank import MonitorReports
from tests.support import assert_eventually

# Nothing here may be taken for a hang: only what the reports say counts.
QUIET = {
    "heartbeat_interval_s": 0.2,
    "liveness_timeout_s": 60.0,
    "startup_timeout_s": 120.0,
    "hang_min_timeout_s": 60.0,
    "recovery_timeout_s": 1.0,  # nobody carries out the NaN's roll-back here: give up on it soon
    "check_interval_s": 0.1,
}


@pytest.fixture
async def monitor(redis_url: str) -> AsyncIterator[GrpcServer]:
    server = await create_server(RobustnessConfig(redis_url=redis_url, port=0, host="127.0.0.1", **QUIET))
    await server.server.start()
    await assert_eventually(_controller_of(server).ready.is_set, message="monitor state rebuilt")
    yield server
    await server.stop(0)


async def started(monitor: GrpcServer, rank: int, world: int) -> Agent:
    agent = Agent(f"127.0.0.1:{monitor.port}", job_id="run", rank=rank, world_size=world)
    await asyncio.to_thread(agent.start, 30.0)
    assert agent.agent_id is not None
    return agent


def step_metrics(*, applied: bool, local_nonfinite: bool, global_nan: bool = False) -> dict[str, float]:
    return {
        "applied": float(applied),
        "policy_loss": math.nan if global_nan else 0.5,
        "grad_norm": math.nan if global_nan else 1.0,
        "local_policy_loss": 0.5,
        "local_grad_norm": math.nan if local_nonfinite else 1.0,
        "local_nonfinite": float(local_nonfinite),
        "step_time_s": 0.1,
        "forward_backward_s": 0.05,
    }


async def progress_reaches(controller: Controller, step: int) -> None:
    await assert_eventually(
        lambda: controller.jobs["run"].progress_step == step, message=f"monitor progress at step {step}"
    )


async def test_warm_start_steps_are_start_up_progress_and_rl_steps_keep_their_numbers(monitor: GrpcServer) -> None:
    controller = _controller_of(monitor)
    agent = await started(monitor, 0, 1)
    reports = MonitorReports(agent)
    try:
        job = controller.jobs["run"]
        state = controller.agents[agent.agent_id or ""]
        for done in (1, 2, 3):
            before_s = job.last_progress_s
            reports.warm_start_step(done)
            await assert_eventually(lambda d=done: state.startup_progress == d, message=f"warm-start step {done}")
            # Each warm-start step restarts the hang clock, under the start-up phase's allowance, and
            # leaves the step axis to the RL steps.
            assert job.last_progress_s > before_s
            assert job.progress_step == -1 and state.phase == rb.PHASE_STARTUP
        # RL step 1 is step 1 to the monitor too.
        reports.rl_step(1, step_metrics(applied=True, local_nonfinite=False))
        await progress_reaches(controller, 1)
        reports.skipped_step(2)
        await progress_reaches(controller, 2)
        assert not controller._incidents
    finally:
        await asyncio.to_thread(agent.close)


async def test_a_nan_is_blamed_on_the_rank_where_it_arose_not_the_first_to_report(monitor: GrpcServer) -> None:
    controller = _controller_of(monitor)
    agents = [await started(monitor, rank, 2) for rank in (0, 1)]
    try:
        # Both ranks skipped the step (the all-reduced loss was NaN everywhere); rank 0 reports first,
        # with its own finite figures, and is not blamed.
        MonitorReports(agents[0]).rl_step(1, step_metrics(applied=False, local_nonfinite=False, global_nan=True))
        await progress_reaches(controller, 1)
        assert controller.jobs["run"].incident_id is None
        MonitorReports(agents[1]).rl_step(1, step_metrics(applied=False, local_nonfinite=True, global_nan=True))
        async with RobustnessClient(f"127.0.0.1:{monitor.port}") as client:

            async def nan_incident() -> rb.Incident | None:
                reply = await client.list_incidents(rb.ListIncidentsRequest(job_id="run"))
                return next((i for i in reply.incidents if i.fault == rb.FAULT_KIND_NAN), None)

            incident: rb.Incident = await assert_eventually(nan_incident, message="a NaN incident")
        assert incident.suspect_ranks[0] == 1, incident.summary
        # The RL step as the trainer's logs and checkpoints number it, not shifted by the warm start.
        assert "NaN/Inf at step 1 " in incident.summary, incident.summary
    finally:
        for agent in agents:
            await asyncio.to_thread(agent.close)
