"""`seedctl run` on a tiny job spec: the whole main job end to end, on a fresh stack and on one already
up, then nothing left running that the job started; bad input is one line naming which and why."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from clients.mainjob import STEP_TRACE_SERVICES
from clients.seedctl import StackState, pid_alive
from tests.support import assert_eventually, free_port

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


def seedctl(*args: str, env: dict[str, str] | None = None, timeout_s: float = 420) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SEEDSTACK_TRACE_FILE", "SEEDSTACK_RUN_DIR")}
    return subprocess.run(
        [sys.executable, "-m", "clients.seedctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**base, **(env or {})},
    )


def assert_trained_and_reported(done: subprocess.CompletedProcess[str], run_dir: Path) -> dict[str, object]:
    """The job ended well, said where its report is first, and wrote it; its figures."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = done.stdout.splitlines()[:2]
    assert str(run_dir) in first[0] and "report.md" in first[1]
    assert (run_dir / "report.md").exists() and list(run_dir.glob("*.png"))
    figures: dict[str, object] = json.loads((run_dir / "figures.json").read_text())["figures"]
    assert figures["acc_before"] is not None and figures["acc_after"] is not None
    final = figures["rollout_final"]
    assert isinstance(final, dict) and set(final) == {"rollout", "rollout-2"}
    assert all(s["served_version"] >= 2 and s["num_weight_swaps"] >= 1 for s in final.values()), final
    return figures


def assert_step_trace(figures: dict[str, object], report: str) -> None:
    """The report names one RL step's trace, its services and the command that shows it."""
    trace = figures["trace"]
    assert isinstance(trace, dict) and trace.get("trace_id"), trace
    assert {"trainer-rank", "weighthub"} <= set(trace["services"]), trace
    # The rollout worker stamps each sample with its round's trace context and the trainer's step span
    # continues it, so one RL step is one trace across all four services.
    assert trace["missing"] == [], f"one RL step should cross {STEP_TRACE_SERVICES}: {trace}"
    assert trace["trace_id"] in report and trace["view"] in report
    shown = seedctl(*trace["view"].split()[1:], timeout_s=60)
    assert shown.returncode == 0 and "trainer.rl_step" in shown.stdout, shown.stderr


def test_seedctl_run_trains_reports_and_leaves_nothing(tmp_path: Path) -> None:
    job = tmp_path / "tiny.yaml"
    job.write_text(TINY_JOB)
    run_dir = tmp_path / "run"
    done = seedctl("--run-dir", str(run_dir), "run", str(job))
    figures = assert_trained_and_reported(done, run_dir)
    assert_step_trace(figures, (run_dir / "report.md").read_text())
    assert not (run_dir / "stack.json").exists()
    job_state = json.loads((run_dir / "job.json").read_text())
    assert job_state["pids"] and not [p for p in job_state["pids"] if pid_alive(p)]
    assert not _processes_mentioning(str(run_dir))  # the trainer's ranks too


def _processes_mentioning(text: str) -> list[int]:
    """Live processes with ``text`` in their command line or environment (a job's services carry its run
    directory in SEEDSTACK_TRAINER_RUNS_DIR and SEEDSTACK_TRACE_FILE)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
            except OSError:
                continue
            if text in seen.decode(errors="replace") and pid_alive(int(proc.name)):
                found.append(int(proc.name))
    return found


def test_seedctl_run_on_an_existing_stack_starts_and_stops_nothing(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    job = tmp_path / "tiny.yaml"
    job.write_text(TINY_JOB)
    run_dir = tmp_path / "job"
    services = "weighthub,dataplane,robustness,rollout,trainer"
    started = seedctl(
        "--run-dir", str(stack_dir), "up", "--services", services, "--replicas", "rollout=2", timeout_s=240
    )
    assert started.returncode == 0, started.stderr + started.stdout
    state = StackState.load(stack_dir)
    assert state is not None and set(state.services) == {*services.split(","), "rollout-2"}
    try:
        # Found the way a compose or Kubernetes job finds it: the stack's Redis and its service registry.
        done = seedctl(
            "--run-dir",
            str(run_dir),
            "run",
            str(job),
            "--stack",
            "existing",
            env={"REDIS_URL": state.redis_url, "SEEDSTACK_RUN_DIR": str(stack_dir)},
        )
        figures = assert_trained_and_reported(done, run_dir)
        assert f"existing stack at {state.redis_url}" in done.stdout and "keeps running" in done.stdout
        assert figures["num_rl_steps"] and figures["trace"], figures
        assert_step_trace(figures, (run_dir / "report.md").read_text())
        assert not (run_dir / "logs").exists() and not (run_dir / "stack.json").exists()
        job_state = json.loads((run_dir / "job.json").read_text())
        assert job_state["stack"] == {"redis_url": state.redis_url} and "pids" not in job_state
        # The stack is still up, every process of it SERVING.
        status = seedctl("--run-dir", str(stack_dir), "status", timeout_s=60)
        rows = {line.split()[0]: line.split()[2] for line in status.stdout.splitlines()[1:]}
        assert set(rows) == {"redis", *state.services} and set(rows.values()) == {"SERVING"}, status.stdout
        # A second job on the same stack: its versions come after the first job's (the rollout servers
        # follow only newer versions than they hold), and they serve them.
        second = seedctl(
            "--run-dir",
            str(tmp_path / "job-2"),
            "run",
            str(job),
            "--stack",
            "existing",
            env={"REDIS_URL": state.redis_url, "SEEDSTACK_RUN_DIR": str(stack_dir)},
        )
        figures_2 = assert_trained_and_reported(second, tmp_path / "job-2")
        served: dict[str, dict[str, int]] = figures["rollout_final"]  # type: ignore[assignment]
        served_2: dict[str, dict[str, int]] = figures_2["rollout_final"]  # type: ignore[assignment]
        first_last = max(s["served_version"] for s in served.values())
        assert all(s["served_version"] > first_last for s in served_2.values()), (served, served_2)
        # An existing stack is not the job's to fault or to keep up.
        refused = seedctl(
            "--run-dir",
            str(tmp_path / "job2"),
            "run",
            str(job),
            "--stack",
            "existing",
            "--inject-fault",
            "crash@3",
            env={"REDIS_URL": state.redis_url},
            timeout_s=60,
        )
        assert refused.returncode == 1 and "--inject-fault needs a fresh stack" in refused.stderr
    finally:
        stopped = seedctl("--run-dir", str(stack_dir), "down", timeout_s=120)
    assert stopped.returncode == 0 and "stopped 7 process(es)" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not [p.name for p in state.processes() if pid_alive(p.pid)]
    assert not _processes_mentioning(str(tmp_path))


async def test_a_stopped_job_takes_its_stack_down(tmp_path: Path) -> None:
    job = tmp_path / "tiny.yaml"
    job.write_text(TINY_JOB)
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SEEDSTACK_TRACE_FILE", "SEEDSTACK_RUN_DIR")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clients.seedctl",
        "--run-dir",
        str(run_dir),
        "run",
        str(job),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )

    def stack_up() -> bool:
        job_file = run_dir / "job.json"
        return job_file.exists() and "pids" in json.loads(job_file.read_text())

    try:
        await assert_eventually(stack_up, timeout_s=240, interval_s=0.5, message="the job's stack is up")
        proc.terminate()  # docker stop, a CI timeout: SIGTERM
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = raw.decode()
    assert proc.returncode == 130, output
    assert "interrupted; taking the stack down" in output and "stack down" in output.splitlines()[-1]
    pids = json.loads((run_dir / "job.json").read_text())["pids"]
    assert not [p for p in pids if pid_alive(p)] and not _processes_mentioning(str(run_dir))
    assert not (run_dir / "stack.json").exists()


def test_an_existing_stack_that_is_not_there_is_one_line(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("{startup_timeout_s: 3}\n")
    nowhere = seedctl(
        "--run-dir",
        str(tmp_path / "a"),
        "run",
        str(job),
        "--stack",
        "existing",
        env={"SEEDSTACK_RUN_DIR": str(tmp_path / "no-stack")},
        timeout_s=60,
    )
    assert nowhere.returncode == 1 and nowhere.stderr.strip().count("\n") == 0, nowhere.stderr
    assert "REDIS_URL is not set" in nowhere.stderr and "no-stack holds no stack" in nowhere.stderr


def test_port_in_use_redis_down_and_a_failing_service_are_one_line_each(tmp_path: Path, redis_url: str) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("{startup_timeout_s: 60}\n")

    def run(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        done = seedctl("--run-dir", str(tmp_path / name), "run", str(job), env=env, timeout_s=120)
        assert done.returncode == 1 and done.stderr.strip().count("\n") == 0, done.stdout + done.stderr
        assert not _processes_mentioning(str(tmp_path / name)), f"{name}: a process was left behind"
        return done

    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run("busy", {"SEEDSTACK_TRAINER_PORT": str(port)})
    assert f"trainer: port {port} (SEEDSTACK_TRAINER_PORT) is already in use" in busy.stderr
    down = run("down", {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert "is not reachable" in down.stderr and "REDIS_URL=redis://127.0.0.1:" in down.stderr
    failing = run("failing", {"REDIS_URL": redis_url, "SEEDSTACK_DATAPLANE_MAX_MESSAGE_BYTES": "12"})
    assert "stack did not start: dataplane exited during start-up: " in failing.stderr
    assert "SEEDSTACK_DATAPLANE_MAX_MESSAGE_BYTES: max_message_bytes=12" in failing.stderr
    assert not (tmp_path / "failing" / "stack.json").exists()


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
