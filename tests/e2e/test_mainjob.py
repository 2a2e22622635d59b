"""`seedctl run` on a tiny job spec: the whole main job end to end, then nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.seedctl import pid_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TINY_JOB = """
name: tiny
time_budget_s: 240
task: {num_warm_start: 100, num_eval: 40, num_rl_prompts: 2000}
warm_start: {num_steps: 20}
trainer: {num_ranks: 1, prompts_per_step: 4, group_size: 4, rl_time_budget_s: 25}
rollout: {num_servers: 2, prompts_per_round: 2}
eval: {every_steps: 5, num_prompts: 40}
"""


def test_seedctl_run_trains_reports_and_leaves_nothing(tmp_path: Path) -> None:
    job = tmp_path / "tiny.yaml"
    job.write_text(TINY_JOB)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SEEDSTACK_TRACE_FILE")}
    done = subprocess.run(
        [sys.executable, "-m", "clients.seedctl", "--run-dir", str(run_dir), "run", str(job)],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[:2]
    assert str(run_dir) in first[0] and "report.md" in first[1]
    assert (run_dir / "report.md").exists() and list(run_dir.glob("*.png"))
    figures = json.loads((run_dir / "figures.json").read_text())["figures"]
    assert figures["acc_before"] is not None and figures["acc_after"] is not None
    final = figures["rollout_final"]
    assert set(final) == {"rollout", "rollout-2"}
    assert all(s["served_version"] >= 2 and s["num_weight_swaps"] >= 1 for s in final.values()), final
    assert not (run_dir / "stack.json").exists()
    job_state = json.loads((run_dir / "job.json").read_text())
    assert job_state["pids"] and not [p for p in job_state["pids"] if pid_alive(p)]
    assert not _processes_mentioning(str(run_dir))  # the trainer's ranks too


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace") and pid_alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_bad_spec_and_a_stale_run_dir_are_one_line_each(tmp_path: Path) -> None:
    job = tmp_path / "bad.yaml"
    job.write_text("rollout: {completion_ratio: 2}\n")
    run = [sys.executable, "-m", "clients.seedctl", "--run-dir", str(tmp_path / "r"), "run"]
    bad = subprocess.run([*run, str(job)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0
    assert "rollout.completion_ratio" in bad.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.md").write_text("#")
    job.write_text("{}\n")
    stale = subprocess.run([*run, str(job)], capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1 and "not empty" in stale.stderr and stale.stderr.strip().count("\n") == 0
