"""What a restart resumes from and how the report tells the monitor's incidents apart from alerts."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.jobreport import compute_figures
from clients.jobspec import JobSpecError, parse_job_spec
from clients.mainjob import Timeline, latest_checkpoint


def test_the_restart_resumes_from_the_newest_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for step in (0, 5, 10):
        (tmp_path / f"step-{step:06d}.pt").write_bytes(b"x")
    (tmp_path / "step-000015.tmp").write_bytes(b"half written")
    assert latest_checkpoint(tmp_path) == (10, tmp_path / "step-000010.pt")


def test_the_job_checkpoints_so_that_a_restart_has_something_to_resume() -> None:
    spec = parse_job_spec({"trainer": {"checkpoint_every_steps": 5}})
    assert spec.run_config(plan_id="p").checkpoint.every_steps == 5
    with pytest.raises(JobSpecError, match=r"trainer\.checkpoint_every_steps"):
        parse_job_spec({"trainer": {"checkpoint_every_steps": 0}})


def _incident(job: str, fault: str) -> dict[str, object]:
    return {"job": job, "fault": fault, "state": "unrecovered", "actions": "restart_in_place (failed)", "t_s": 5.0}


def test_a_restarted_crash_is_reported_recovered_with_its_lost_steps() -> None:
    t = Timeline(started_unix_s=0.0, ended_unix_s=100.0, num_alerts=3)
    t.incidents = [_incident("run-a", "crash")]
    t.recoveries = [
        {"failed_run": "run-a", "run_id": "run-b", "checkpoint_step": 10, "lost_steps": 2, "recovery_s": 21.5}
    ]
    figures = compute_figures(parse_job_spec({}), t)
    (row,) = figures["incidents"]
    assert row["state"] == "recovered" and "step-10 checkpoint" in row["actions"]
    assert row["lost_steps"] == "2" and row["recover_s"] == "21.5"
    assert row["monitor_actions"] == "restart_in_place (failed)"
    assert figures["fault_lost_steps"] == 2 and figures["num_restarts"] == 1 and figures["num_alerts"] == 3


def test_a_nan_skipped_by_the_trainer_is_reported_recovered() -> None:
    t = Timeline(started_unix_s=0.0, ended_unix_s=100.0)
    t.incidents = [_incident("run-a", "nan")]
    t.steps = [
        {"step": 1, "applied": 1.0, "reward_mean": 0.5},
        {"step": 2, "applied": 0.0, "reward_mean": 0.5},
    ]
    (row,) = compute_figures(parse_job_spec({}), t)["incidents"]
    assert row["state"] == "recovered" and "skipped step 2" in row["actions"]
