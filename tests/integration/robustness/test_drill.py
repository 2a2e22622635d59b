"""Real faults in a real 4-rank gloo job under sidecars: found, blamed and recovered."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from seedstack.robustness.v1 import robustness_pb2 as pb

from services.robustness.actuators import ActuatorError, DockerActuator, KubernetesActuator
from services.robustness.drill import Drill, running_drill
from services.robustness.faults import ArmedFault, arm, corrupt_file
from tests.support import assert_eventually


async def _progress(drill: Drill, past: int, timeout_s: float = 90.0) -> int:
    async def ok() -> int:
        job = drill.controller.jobs.get("drill")
        return job.progress_step if job is not None and job.progress_step > past else 0

    return int(await assert_eventually(ok, timeout_s=timeout_s, interval_s=0.1, message=f"progress past {past}"))


async def _closed(drill: Drill, count: int, timeout_s: float = 90.0) -> list[pb.Incident]:
    async def ok() -> list[pb.Incident] | None:
        found = [i for i in await drill.incidents() if i.fault != pb.FAULT_KIND_LOSS_SPIKE]
        done = [i for i in found if i.state in (pb.INCIDENT_STATE_RECOVERED, pb.INCIDENT_STATE_UNRECOVERED)]
        return found if len(done) >= count and len(done) == len(found) else None

    return list(await assert_eventually(ok, timeout_s=timeout_s, interval_s=0.2, message=f"{count} incident(s) closed"))


async def test_crash_then_sigstop_hang_are_found_blamed_and_recovered_in_place(redis_url: str, tmp_path: Path) -> None:
    async with running_drill(redis_url, tmp_path) as drill:
        step = await _progress(drill, 6)
        os.kill(drill.rank_pid(2), signal.SIGKILL)
        crash = (await _closed(drill, 1))[0]
        assert crash.fault == pb.FAULT_KIND_CRASH and crash.state == pb.INCIDENT_STATE_RECOVERED
        assert crash.suspect_ranks[0] == 2 and crash.suspect_hosts[0] == "node1"
        assert crash.recovery_steps[0].action == pb.RECOVERY_ACTION_RESTART_IN_PLACE
        assert crash.num_lost_steps <= step - 0 and "progress resumed" in crash.recovery_steps[0].detail
        step = await _progress(drill, drill.controller.jobs["drill"].progress_step + 3)
        os.kill(drill.rank_pid(1), signal.SIGSTOP)
        hang = (await _closed(drill, 2))[0]
        assert hang.fault == pb.FAULT_KIND_HANG and hang.state == pb.INCIDENT_STATE_RECOVERED
        assert hang.suspect_ranks[0] == 1 and "nothing heard" in hang.summary
        ettr = await drill.client.get_ettr(pb.GetEttrRequest(job_id="drill", window_s=[5.0]))
        assert 0 < ettr.cumulative.ettr < 1 and len(ettr.windows) == 1


@pytest.mark.slow
async def test_a_blocked_main_thread_is_a_hang_found_by_progress_and_stacks(redis_url: str, tmp_path: Path) -> None:
    async with running_drill(redis_url, tmp_path) as drill:
        step = await _progress(drill, 8)
        arm(tmp_path / "fault.json", ArmedFault("block", rank=3, step=step + 3, seconds=600))
        hang = (await _closed(drill, 1))[0]
        assert hang.fault == pb.FAULT_KIND_HANG and "no progress" in hang.summary
        assert hang.suspect_ranks[0] == 3, hang


@pytest.mark.slow
async def test_nan_rolls_back_and_skips_the_data_window(redis_url: str, tmp_path: Path) -> None:
    async with running_drill(redis_url, tmp_path) as drill:
        step = await _progress(drill, 8)
        arm(tmp_path / "fault.json", ArmedFault("nan", rank=1, step=step + 3))
        nan = (await _closed(drill, 1))[0]
        assert nan.fault == pb.FAULT_KIND_NAN and nan.suspect_ranks[0] == 1
        first = nan.recovery_steps[0]
        assert first.action == pb.RECOVERY_ACTION_ROLLBACK and first.succeeded
        assert f"data before step {step + 4} skipped" in first.detail


@pytest.mark.slow
async def test_straggler_and_hardware_error_evict_to_warm_standbys(redis_url: str, tmp_path: Path) -> None:
    async with running_drill(redis_url, tmp_path, num_standbys=2, ranks_per_host=1) as drill:
        await _progress(drill, 5)

        async def keep_rank2_slow() -> bool:
            # A fault fires once: re-arm it until the straggler is found.
            arm(tmp_path / "fault.json", ArmedFault("slow", rank=2, step=-1, seconds=0.25))
            return bool(await drill.incidents())

        await assert_eventually(keep_rank2_slow, timeout_s=60.0, interval_s=0.2)
        straggler = (await _closed(drill, 1))[0]
        assert straggler.fault == pb.FAULT_KIND_STRAGGLER and straggler.suspect_ranks[0] == 2
        assert straggler.recovery_steps[0].action == pb.RECOVERY_ACTION_REPLACE_NODE
        assert straggler.recovery_steps[0].succeeded, straggler
        step = await _progress(drill, drill.controller.jobs["drill"].progress_step + 3)
        arm(tmp_path / "fault.json", ArmedFault("error-line", rank=0, step=step + 2))
        incidents = await _closed(drill, 2)
        hardware = incidents[0]
        assert hardware.fault in (pb.FAULT_KIND_LOG_ERROR, pb.FAULT_KIND_CRASH) and hardware.suspect_ranks[0] == 0
        assert "cuda_error" in hardware.summary


@pytest.mark.slow
async def test_corrupt_checkpoint_falls_back_and_a_repeating_crash_stops_within_budget(
    redis_url: str, tmp_path: Path
) -> None:
    async with running_drill(redis_url, tmp_path, config={"max_recovery_attempts": 2}) as drill:
        await _progress(drill, 11)
        job = drill.controller.jobs["drill"]
        newest = max(c["step"] for c in job.checkpoints)
        corrupt_file(Path(next(c["path"] for c in job.checkpoints if c["step"] == newest)))
        os.kill(drill.rank_pid(0), signal.SIGKILL)
        found = await _closed(drill, 2)
        kinds = {i.fault for i in found}
        assert kinds == {pb.FAULT_KIND_CRASH, pb.FAULT_KIND_CORRUPT_CHECKPOINT}
        for _ in range(3):
            before = len(await drill.incidents())
            await _progress(drill, drill.controller.jobs["drill"].progress_step + 2)
            arm(tmp_path / "fault.json", ArmedFault("crash", rank=3, step=-1))
            await _closed(drill, before + 1)
            if drill.controller.jobs["drill"].stopped:
                break
        last = (await drill.incidents())[0]
        assert drill.controller.jobs["drill"].stopped
        assert last.state == pb.INCIDENT_STATE_UNRECOVERED
        assert last.recovery_steps[-1].action == pb.RECOVERY_ACTION_STOP_JOB


@pytest.mark.parametrize("build", [DockerActuator, KubernetesActuator])
def test_container_actuators_build_where_an_engine_runs(build: type) -> None:
    try:
        actuator = build()
    except ActuatorError as exc:
        pytest.skip(f"{build.__name__} not usable here: {exc}")
    assert actuator.name in ("docker", "kubernetes")
