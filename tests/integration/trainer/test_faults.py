"""Faults in real trainer runs under a real robustness monitor: the trainer service reports which rank
failed and carries out the monitor's restart; its run records outlive a restart of the service."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from seedstack.robustness.v1 import robustness_pb2 as rb
from seedstack.trainer.v1 import trainer_pb2 as pb

from clients.robustness import RobustnessClient
from clients.trainer import TrainerClient
from services.common.redis_meta import RedisMeta, ServiceRegistry
from services.common.server import GrpcServer
from services.robustness.config import RobustnessConfig
from services.robustness.drill import _controller_of
from services.robustness.faults import ArmedFault, arm
from services.robustness.server import create_server as create_monitor
from services.trainer.config import TrainerConfig
from services.trainer.server import create_server as create_trainer
from tests.integration.trainer.test_runs import config_text, wait_ended
from tests.support import assert_eventually

pytestmark = pytest.mark.slow

# Generous liveness: on a loaded machine the launcher's report of the failed rank must still come first.
MONITOR = {
    "heartbeat_interval_s": 0.5,
    "liveness_timeout_s": 15.0,
    "startup_timeout_s": 120.0,
    "hang_min_timeout_s": 10.0,
    "recovery_timeout_s": 120.0,
    "stack_dump_timeout_s": 5.0,
    "check_interval_s": 0.1,
}


@dataclass
class Stack:
    trainer: TrainerClient
    monitor: RobustnessClient


async def _trainer_server(redis_url: str, runs_dir: Path) -> GrpcServer:
    config = TrainerConfig(redis_url=redis_url, port=0, host="127.0.0.1", runs_dir=runs_dir, grace_s=0.5)
    server = await create_trainer(config)
    await server.server.start()
    return server


@pytest.fixture
async def stack(redis_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """A robustness monitor registered where the trainer service looks it up, and the trainer service."""
    monitor = await create_monitor(RobustnessConfig(redis_url=redis_url, port=0, host="127.0.0.1", **MONITOR))
    await monitor.server.start()
    await assert_eventually(_controller_of(monitor).ready.is_set, message="monitor state rebuilt")
    meta = RedisMeta.from_url(redis_url, "registry")
    registry = ServiceRegistry(meta)
    await registry.register("robustness", f"127.0.0.1:{monitor.port}", ttl_s=60.0, info={"tls": 0})
    trainer = await _trainer_server(redis_url, tmp_path / "runs")
    try:
        async with (
            TrainerClient(f"127.0.0.1:{trainer.port}") as trainer_client,
            RobustnessClient(f"127.0.0.1:{monitor.port}") as monitor_client,
        ):
            yield Stack(trainer_client, monitor_client)
    finally:
        await trainer.stop(0.5)
        await registry.deregister_all()
        await meta.close()
        await monitor.stop(0)


def long_run(**overrides: object) -> str:
    return config_text(num_steps=30, checkpoint={"every_steps": 2}, **overrides)


async def run_at_step(client: TrainerClient, run_id: str, step: int, *, checkpointed: bool = True) -> pb.Run:
    async def reached() -> pb.Run | None:
        run = (await client.get_run(pb.GetRunRequest(run_id=run_id))).run
        assert run.state not in (pb.RUN_STATE_FAILED, pb.RUN_STATE_COMPLETED), run.failure_reason
        return run if run.step >= step and (run.last_checkpoint or not checkpointed) else None

    run: pb.Run = await assert_eventually(reached, timeout_s=180, interval_s=0.2)
    return run


async def recovered_incident(monitor: RobustnessClient, run_id: str) -> rb.Incident:
    async def closed() -> rb.Incident | None:
        reply = await monitor.list_incidents(rb.ListIncidentsRequest(job_id=run_id))
        real = [i for i in reply.incidents if not i.summary.endswith("(alert only)")]
        assert all(i.state != rb.INCIDENT_STATE_UNRECOVERED for i in real), real
        done = [i for i in real if i.state == rb.INCIDENT_STATE_RECOVERED]
        return done[0] if done else None

    incident: rb.Incident = await assert_eventually(closed, timeout_s=240, interval_s=0.5)
    return incident


def rank_pid(run_id: str, rank: int) -> int | None:
    """The pid of a run's rank, found by the job id and RANK in its environment."""
    wanted = {f"SEEDSTACK_ROBUSTNESS_JOB_ID={run_id}".encode(), f"RANK={rank}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if wanted <= environ and b"services.trainer.rank" in cmdline and b"torch.distributed.run" not in cmdline:
            return int(entry.name)
    return None


async def test_a_killed_rank_is_a_crash_of_that_rank_and_the_trainer_restarts_the_run(stack: Stack) -> None:
    run_id = (await stack.trainer.start_run(pb.StartRunRequest(request_id="c", run_config_text=long_run()))).run_id
    await run_at_step(stack.trainer, run_id, 3)
    pid = rank_pid(run_id, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    incident = await recovered_incident(stack.monitor, run_id)
    assert incident.fault == rb.FAULT_KIND_CRASH, incident.summary
    # Blamed first: rank 1; rank 0, torn down by the launcher after it, comes only as the rest of the job.
    assert incident.suspect_ranks[0] == 1, incident.summary
    assert "SIGKILL" in incident.summary
    assert [s.action for s in incident.recovery_steps] == [rb.RECOVERY_ACTION_RESTART_IN_PLACE]
    # The same run goes on from its checkpoint to the end.
    run = await wait_ended(stack.trainer, run_id)
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    assert run.step == 30
    assert run.incarnation == 1 and run.last_restart_reason, run
    reply = await stack.monitor.list_incidents(rb.ListIncidentsRequest(job_id=run_id))
    assert [i.fault for i in reply.incidents if not i.summary.endswith("(alert only)")] == [rb.FAULT_KIND_CRASH]


async def test_nan_and_hang_recover_through_the_trainer(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_file = tmp_path / "fault.json"
    monkeypatch.setenv("SEEDSTACK_FAULT_FILE", str(fault_file))

    arm(fault_file, ArmedFault("nan", rank=1, step=5))
    nan_id = (await stack.trainer.start_run(pb.StartRunRequest(request_id="n", run_config_text=long_run()))).run_id
    incident = await recovered_incident(stack.monitor, nan_id)
    assert incident.fault == rb.FAULT_KIND_NAN, incident.summary
    # Every rank skipped the step, but only rank 1's own loss was NaN before the all-reduce: it alone owns up.
    assert incident.suspect_ranks[0] == 1, incident.summary
    assert [s.action for s in incident.recovery_steps] == [rb.RECOVERY_ACTION_ROLLBACK]
    assert "data before step" in incident.recovery_steps[0].detail
    assert not fault_file.exists()  # fired once: the restarted ranks do not fire it again
    run = await wait_ended(stack.trainer, nan_id)
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    assert run.step == 30 and run.incarnation == 1
    # The restarted ranks dropped the batches from the checkpoint the monitor rolled back to (step 0, 2
    # or 4, depending on which checkpoint reports reached it before the NaN) up to the NaN's (step 5), the
    # last one skipped; the NaN step of the rolled-back stretch is not counted again.
    assert run.last_skip_reason.startswith("step 5: batch dropped"), run.last_skip_reason
    assert 1 <= run.num_skipped_steps <= 5, run.num_skipped_steps

    # "block": rank 1's main thread sleeps while its heartbeats go on (no progress); stacks single it out.
    arm(fault_file, ArmedFault("block", rank=1, step=5))
    hang_id = (await stack.trainer.start_run(pb.StartRunRequest(request_id="h", run_config_text=long_run()))).run_id
    incident = await recovered_incident(stack.monitor, hang_id)
    assert incident.fault == rb.FAULT_KIND_HANG, incident.summary
    assert incident.suspect_ranks[0] == 1, incident.summary
    assert [s.action for s in incident.recovery_steps] == [rb.RECOVERY_ACTION_RESTART_IN_PLACE]
    run = await wait_ended(stack.trainer, hang_id)
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason


async def test_runs_are_answered_for_after_the_service_restarts(redis_url: str, tmp_path: Path) -> None:
    trainer = await _trainer_server(redis_url, tmp_path / "runs")
    try:
        async with TrainerClient(f"127.0.0.1:{trainer.port}") as client:
            done_id = (await client.start_run(pb.StartRunRequest(request_id="a", run_config_text=config_text()))).run_id
            done = await wait_ended(client, done_id)
            assert done.state == pb.RUN_STATE_COMPLETED, done.failure_reason
            going_id = (
                await client.start_run(
                    pb.StartRunRequest(request_id="b", run_config_text=config_text(num_steps=100000))
                )
            ).run_id
            await run_at_step(client, going_id, 1, checkpointed=False)
    finally:
        await trainer.stop(0.5)

    trainer = await _trainer_server(redis_url, tmp_path / "runs")
    try:
        async with TrainerClient(f"127.0.0.1:{trainer.port}") as client:
            again = (await client.get_run(pb.GetRunRequest(run_id=done_id))).run
            assert again.state == pb.RUN_STATE_COMPLETED and again.step == done.step == 3
            assert [e.step for e in again.evals] == [e.step for e in done.evals]
            lost = (await client.get_run(pb.GetRunRequest(run_id=going_id))).run
            assert lost.state == pb.RUN_STATE_FAILED
            assert "trainer service stopped" in lost.failure_reason
            assert json.loads(config_text())["num_ranks"] == lost.config.num_ranks
            # A retried StartRun still gets its run, not a second one.
            retried = await client.start_run(pb.StartRunRequest(request_id="a", run_config_text=config_text()))
            assert retried.run_id == done_id
    finally:
        await trainer.stop(0.5)
