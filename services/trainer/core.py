"""The trainer's runs: launch ranks with torch.distributed's elastic launcher, report, stop.

A run is a directory (spec, status file, logs, checkpoints) and a launcher process group:
``python -m torch.distributed.run --standalone --nproc-per-node N -m services.trainer.rank`` — the
machinery behind ``torchrun``, in its own session so that stopping a run ends every rank it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.trainer.spec import RunSpec
from services.trainer.status import TERMINAL_STATES, read_status, request_stop

logger = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[str]]


@dataclass
class RunRecord:
    """A run as the service reports it."""

    run_id: str
    spec: RunSpec
    run_dir: Path
    started_at: float
    state: str = "STARTING"
    step: int = 0
    published_version: int = 0
    updated_at: float = 0.0
    metrics: dict[str, float] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    failure_reason: str = ""
    num_skipped_steps: int = 0
    last_skip_reason: str = ""
    last_checkpoint: str = ""


@dataclass
class _Run:
    record: RunRecord
    process: asyncio.subprocess.Process
    watcher: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    stop_requested: bool = False


class Trainer:
    """Starts, reports on and stops runs; every run's ranks are child processes of this one."""

    def __init__(
        self, runs_dir: Path, resolve: Resolver, *, stop_timeout_s: float = 60.0, publish_bind_host: str = "0.0.0.0"
    ) -> None:
        self._runs_dir = runs_dir
        self._publish_bind_host = publish_bind_host
        self._resolve = resolve
        self._stop_timeout_s = stop_timeout_s
        self._runs: dict[str, _Run] = {}
        self._by_request: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def start_run(self, request_id: str, spec: RunSpec) -> RunRecord:
        """Launch the ranks of a checked spec; the same ``request_id`` returns the same run."""
        async with self._lock:
            if request_id and request_id in self._by_request:
                return self.get_run(self._by_request[request_id])
            if spec.dataplane_plan_id and not spec.dataplane_address:
                spec = spec.replace(dataplane_address=await self._address("dataplane", "dataplane_plan_id"))
            if spec.weighthub_model and not spec.weighthub_address:
                spec = spec.replace(
                    weighthub_address=await self._address("weighthub", "weighthub_model"),
                    publish_bind_host=self._publish_bind_host,
                )
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            run_dir, spec_path = await asyncio.to_thread(self._prepare, run_id, spec)
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nnodes=1",
                f"--nproc-per-node={spec.num_ranks}",
                "--max-restarts=0",
                "--monitor-interval=0.5",
                "-m",
                "services.trainer.rank",
                "--spec",
                str(spec_path),
                "--run-dir",
                str(run_dir),
            ]
            env = dict(os.environ, OMP_NUM_THREADS=str(spec.num_threads), PYTHONUNBUFFERED="1")
            env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
            env.update(await self._robustness_env(run_id))
            log = await asyncio.to_thread((run_dir / "ranks.log").open, "ab")
            try:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    stdin=asyncio.subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
            finally:
                log.close()
            record = RunRecord(
                run_id=run_id, spec=spec, run_dir=run_dir, started_at=time.time(), updated_at=time.time()
            )
            run = _Run(record, process)
            run.watcher = asyncio.create_task(self._watch(run), name=f"watch-{run_id}")
            self._runs[run_id] = run
            if request_id:
                self._by_request[request_id] = run_id
            logger.info("run %s: %d rank(s), pid %d, dir %s", run_id, spec.num_ranks, process.pid, run_dir)
            return self.get_run(run_id)

    async def _robustness_env(self, run_id: str) -> dict[str, str]:
        """Where the ranks' robustness agents report (the agent library reads these), when a monitor runs."""
        try:
            address = await self._resolve("robustness")
        except Exception:  # no monitor registered: the ranks run without an agent
            return {}
        return {"SEEDSTACK_ROBUSTNESS_ADDRESS": address, "SEEDSTACK_ROBUSTNESS_JOB_ID": run_id}

    def _prepare(self, run_id: str, spec: RunSpec) -> tuple[Path, Path]:
        """The run's directory and spec file; InvalidArgument for a resume file that is not there."""
        if spec.checkpoint.resume_from and not Path(spec.checkpoint.resume_from).is_file():
            raise InvalidArgument(f"checkpoint.resume_from={spec.checkpoint.resume_from!r}: no such file")
        run_dir = self._runs_dir / run_id
        run_dir.mkdir(parents=True)
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
        return run_dir, spec_path

    async def _address(self, service: str, field_name: str) -> str:
        try:
            return await self._resolve(service)
        except Exception as exc:
            raise FailedPrecondition(
                f"{field_name} is set but the {service} service cannot be reached: {exc}"
            ) from None

    def get_run(self, run_id: str) -> RunRecord:
        """The run's latest state (from its status file)."""
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"run_id={run_id!r}: no such run")
        self._refresh(run)
        return run.record

    def _refresh(self, run: _Run) -> None:
        record = run.record
        if record.state in TERMINAL_STATES:
            return
        status = read_status(record.run_dir)
        if status:
            state = status.get("state", record.state)
            if run.stop_requested and state not in TERMINAL_STATES:
                state = "STOPPING"
            record.state = state
            record.step = int(status.get("step", 0))
            record.published_version = int(status.get("version", 0))
            record.metrics = status.get("metrics")
            record.evals = list(status.get("evals", []))
            record.failure_reason = status.get("failure_reason", "")
            record.num_skipped_steps = int(status.get("num_skipped_steps", 0))
            record.last_skip_reason = status.get("last_skip_reason", "")
            record.last_checkpoint = status.get("last_checkpoint", "")
            record.updated_at = float(status.get("updated_at", record.updated_at))
        elif run.stop_requested:
            record.state = "STOPPING"

    async def _watch(self, run: _Run) -> None:
        code = await run.process.wait()
        self._refresh(run)
        record = run.record
        if record.state not in TERMINAL_STATES:
            reasons = sorted(p.read_text() for p in record.run_dir.glob("error-rank*.txt"))
            if run.stop_requested and code != 0 and not reasons:
                record.state = "STOPPED"
            else:
                record.state = "FAILED"
                record.failure_reason = (
                    "; ".join(reasons) or f"launcher exited with status {code}: {_tail(record.run_dir)}"
                )
        elif record.state != "FAILED" and code != 0 and not run.stop_requested:
            record.state = "FAILED"
            record.failure_reason = f"launcher exited with status {code}: {_tail(record.run_dir)}"
        record.updated_at = time.time()
        logger.info("run %s ended %s (exit %s)", record.run_id, record.state, code)

    async def stop_run(self, run_id: str, save_checkpoint: bool) -> RunRecord:
        """Ask the ranks to end after the current step; the run is killed if they do not in time."""
        run = self._runs.get(run_id)
        if run is None:
            raise NotFound(f"run_id={run_id!r}: no such run")
        self._refresh(run)
        if run.record.state in TERMINAL_STATES or run.stop_requested:
            return run.record
        run.stop_requested = True
        request_stop(run.record.run_dir, save_checkpoint)
        run.record.state = "STOPPING"
        run.stopper = asyncio.create_task(self._deadline(run), name=f"stop-{run_id}")
        return run.record

    async def _deadline(self, run: _Run) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.process.wait()), self._stop_timeout_s)
            return
        logger.warning(
            "run %s did not stop within %.0f s: terminating its ranks", run.record.run_id, self._stop_timeout_s
        )
        await _end_group(run.process)

    async def close(self) -> None:
        """End every run still going (its whole process group) and wait for the launchers."""
        for run in self._runs.values():
            if run.process.returncode is None:
                await _end_group(run.process)
            if run.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await run.watcher


async def _end_group(process: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(process.wait(), grace_s)


def _tail(run_dir: Path, num_chars: int = 600) -> str:
    try:
        return (run_dir / "ranks.log").read_text(errors="replace")[-num_chars:].strip()
    except OSError:
        return ""
