"""The trainer's runs: launch ranks with torch.distributed's elastic launcher, report, stop, restart.

A run is a directory (spec, status file, logs, checkpoints) and a launcher process group:
``python -m torch.distributed.run --standalone --nproc-per-node N -m services.trainer.rank`` — the
machinery behind ``torchrun``, in its own session so that stopping a run ends every rank it started.

With a robustness monitor registered, the service is the launcher side of the run for it: it registers
every rank of every incarnation (ids ``run/incarnation/rank``, handed to the ranks' in-process agents),
reports the first rank that failed as soon as the launcher names it (a crash, not a hang, and only that
rank: the ranks the launcher tears down afterwards are not blamed), and carries out the monitor's
commands for the run: stack dumps of a rank, a restart (a new incarnation of the same run from its
checkpoint, with the time budget left) and a stop. A run record per run is kept in Redis, so a
restarted service still answers for its runs.

Steps exchanged with the monitor are the run's RL steps (checkpoints, resume and skip steps); the warm
start reaches it as start-up progress, not as steps. A roll-back after a NaN asks for the data before a
step to be skipped: the next incarnation gets it as ``checkpoint.skip_data_until_step`` and drops those
batches; the run's skipped steps count those, not the ones of the rolled-back stretch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedstack.common.v1 import common_pb2
from seedstack.robustness.v1 import robustness_pb2 as rpb

from clients.base import RPCError
from clients.robustness import RobustnessClient
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.redis_meta import RedisMeta
from services.robustness.agent import (
    ENV_ADDRESS,
    ENV_AGENT_IDS,
    ENV_HEARTBEAT_S,
    ENV_HOST,
    ENV_JOB_ID,
    ENV_STACK_FILE,
    now_timestamp,
)
from services.robustness.model import CommandKind
from services.robustness.sidecar import dump_process_stacks
from services.trainer.spec import RunSpec
from services.trainer.status import STATUS_FILE, STOP_FILE, TERMINAL_STATES, read_status, request_stop

logger = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[str]]

MONITOR_GRACE_S = 60.0
"""How long a run whose ranks failed waits for the monitor's restart (or stop) before it is FAILED."""
MIN_RESTART_BUDGET_S = 10.0
"""Least RL time a restarted incarnation gets when the run's budget is (nearly) spent."""
FOLLOW_INTERVAL_S = 0.25
SAVE_INTERVAL_S = 5.0
REQUEST_TTL_S = 7 * 24 * 3600.0
CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
FAILED_RANK = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
"""The elastic launcher's line naming the first rank that failed (logged once the others are torn down)."""
ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):.*?rank\s*:\s*(\d+).*?exitcode\s*:\s*(-?\d+)", re.S)


@dataclass
class RunRecord:
    """A run as the service reports it (and keeps in Redis)."""

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
    incarnation: int = 0
    """0 for the first launch; each restart by the robustness monitor starts the next."""
    restarts: list[dict[str, Any]] = field(default_factory=list)
    """One entry per restart: at, why, resumed_from (checkpoint step, -1 for none), time_budget_s."""
    pid: int = 0
    """The launcher's process id of the current incarnation."""

    def to_json(self) -> dict[str, Any]:
        """What is kept in Redis."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["spec"] = self.spec.to_dict()
        data["run_dir"] = str(self.run_dir)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The inverse of ``to_json``."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["spec"] = RunSpec.from_dict(data["spec"])
        values["run_dir"] = Path(data["run_dir"])
        return cls(**values)


@dataclass
class _Monitor:
    """The robustness monitor's side of one run: a client and the agent ids of its ranks."""

    client: RobustnessClient
    address: str
    heartbeat_s: float = 1.0
    generation: int = 0
    agents: dict[int, str] = field(default_factory=dict)
    """rank -> agent id of the current incarnation."""
    rank_of: dict[str, int] = field(default_factory=dict)
    """agent id (of any incarnation) -> rank."""
    exits_reported: set[int] = field(default_factory=set)
    watchers: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class _Run:
    record: RunRecord
    process: asyncio.subprocess.Process | None
    watcher: asyncio.Task[None] | None = None
    stopper: asyncio.Task[None] | None = None
    follower: asyncio.Task[None] | None = None
    awaiting: asyncio.Task[None] | None = None
    """Set while the ranks have failed and the monitor's decision is awaited."""
    stop_requested: bool = False
    monitor: _Monitor | None = None
    restart_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    relaunching: bool = False
    log_offset: int = 0
    """Size of ranks.log when the current incarnation was launched: its failure lines come after."""
    scan_offset: int = 0
    resume_step: int = -1
    earlier_evals: list[dict[str, Any]] = field(default_factory=list)
    earlier_skipped_steps: list[int] = field(default_factory=list)
    """Skipped steps of earlier incarnations that the current one did not redo (at or before its resume)."""
    skipped_steps: list[int] = field(default_factory=list)
    """Skipped steps of the current incarnation (from its status file)."""
    skip_data_until_step: int = 0
    """The RL step before which batches are dropped, from the monitor's latest roll-back after a NaN."""
    training_since: float = 0.0
    used_s: float = 0.0
    """RL wall time spent by earlier incarnations."""
    reported_checkpoint: str = ""
    saved: tuple[str, int, int, str] = ("", -1, -1, "")
    saved_at: float = 0.0


class Trainer:
    """Starts, reports on, restarts and stops runs; every run's ranks are child processes of this one."""

    def __init__(
        self,
        runs_dir: Path,
        resolve: Resolver,
        *,
        stop_timeout_s: float = 60.0,
        publish_bind_host: str = "0.0.0.0",
        meta: RedisMeta | None = None,
        monitor_grace_s: float = MONITOR_GRACE_S,
    ) -> None:
        self._runs_dir = runs_dir
        self._publish_bind_host = publish_bind_host
        self._resolve = resolve
        self._stop_timeout_s = stop_timeout_s
        self._meta = meta
        self._monitor_grace_s = monitor_grace_s
        self._runs: dict[str, _Run] = {}
        self._by_request: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._closing = False

    # Start ----------------------------------------------------------------------------------------

    async def start_run(self, request_id: str, spec: RunSpec) -> RunRecord:
        """Launch the ranks of a checked spec; the same ``request_id`` returns the same run."""
        async with self._lock:
            known = await self._known_request(request_id)
            if known:
                return await self.get_run(known)
            if spec.dataplane_plan_id and not spec.dataplane_address:
                spec = spec.replace(dataplane_address=await self._address("dataplane", "dataplane_plan_id"))
            if spec.weighthub_model and not spec.weighthub_address:
                spec = spec.replace(
                    weighthub_address=await self._address("weighthub", "weighthub_model"),
                    publish_bind_host=self._publish_bind_host,
                )
            run_id = f"run-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
            run_dir, spec_path = await asyncio.to_thread(self._prepare, run_id, spec)
            record = RunRecord(
                run_id=run_id, spec=spec, run_dir=run_dir, started_at=time.time(), updated_at=time.time()
            )
            run = _Run(record, None)
            run.monitor = await self._attach_monitor(run_id)
            if run.monitor is not None:
                await self._register_ranks(run)
            await self._spawn(run, spec, spec_path)
            run.follower = asyncio.create_task(self._follow(run), name=f"follow-{run_id}")
            self._runs[run_id] = run
            if request_id:
                self._by_request[request_id] = run_id
                if self._meta is not None:
                    await self._meta.put_many({self._meta.key("request", request_id): run_id}, ttl_s=REQUEST_TTL_S)
            await self._save(run)
            logger.info(
                "run %s: %d rank(s), pid %d, dir %s%s",
                run_id,
                spec.num_ranks,
                record.pid,
                run_dir,
                f", monitored by {run.monitor.address}" if run.monitor else "",
            )
            return record

    async def _known_request(self, request_id: str) -> str:
        if not request_id:
            return ""
        if request_id in self._by_request:
            return self._by_request[request_id]
        if self._meta is None:
            return ""
        run_id = await self._meta.get_json(self._meta.key("request", request_id))
        return str(run_id) if run_id else ""

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

    async def _spawn(self, run: _Run, spec: RunSpec, spec_path: Path) -> None:
        """Start the launcher of the run's current incarnation and watch it."""
        record = run.record
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
            str(record.run_dir),
        ]
        env = dict(os.environ, OMP_NUM_THREADS=str(spec.num_threads), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if run.monitor is not None:
            m = run.monitor
            env.update(
                {
                    ENV_ADDRESS: m.address,
                    ENV_JOB_ID: record.run_id,
                    ENV_AGENT_IDS: ",".join(m.agents[r] for r in range(spec.num_ranks)),
                    ENV_HEARTBEAT_S: str(m.heartbeat_s),
                    ENV_HOST: socket.gethostname(),
                    ENV_STACK_FILE: str(record.run_dir / "stacks-rank{rank}.txt"),
                }
            )
        log_path = record.run_dir / "ranks.log"
        log = await asyncio.to_thread(log_path.open, "ab")
        try:
            run.log_offset = run.scan_offset = log.tell()
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
        run.process = process
        record.pid = process.pid
        run.watcher = asyncio.create_task(self._watch(run, process), name=f"watch-{record.run_id}")

    # Reports --------------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> RunRecord:
        """The run's latest state (from its status file; from Redis for a run of an earlier service)."""
        run = self._runs.get(run_id)
        if run is None:
            run = await self._load(run_id)
        self._refresh(run)
        return run.record

    def _refresh(self, run: _Run) -> None:
        record = run.record
        if record.state in TERMINAL_STATES or run.awaiting is not None or run.relaunching:
            return
        status = read_status(record.run_dir)
        if run.process is None and not _pid_alive(record.pid):
            # A run of an earlier service process whose launcher is gone: what it last wrote is all there is.
            state = status.get("state", record.state)
            if state not in TERMINAL_STATES:
                record.state = "FAILED"
                record.failure_reason = (
                    f"lost: the trainer service restarted and the run's launcher (pid {record.pid}) is gone; "
                    f"last state {state} at step {status.get('step', record.step)}"
                )
                record.updated_at = time.time()
                return
        if status:
            state = status.get("state", record.state)
            if state == "FAILED" and run.monitor is not None:
                state = record.state  # a failed rank is the monitor's to judge when the launcher ends
            if run.stop_requested and state not in TERMINAL_STATES:
                state = "STOPPING"
            if state == "TRAINING" and not run.training_since:
                run.training_since = time.time()
            record.state = state
            record.step = max(int(status.get("step", 0)), run.resume_step)
            record.published_version = max(int(status.get("version", 0)), record.published_version)
            record.metrics = status.get("metrics") or record.metrics
            last = run.earlier_evals[-1]["step"] if run.earlier_evals else -1
            record.evals = run.earlier_evals + [e for e in status.get("evals", []) if e["step"] > last]
            record.failure_reason = status.get("failure_reason", "")
            run.skipped_steps = [int(s) for s in status.get("skipped_steps", [])]
            record.num_skipped_steps = len(run.earlier_skipped_steps) + int(status.get("num_skipped_steps", 0))
            record.last_skip_reason = status.get("last_skip_reason", "") or record.last_skip_reason
            record.last_checkpoint = status.get("last_checkpoint", "") or record.last_checkpoint
            record.updated_at = float(status.get("updated_at", record.updated_at))
        elif run.stop_requested:
            record.state = "STOPPING"

    async def _follow(self, run: _Run) -> None:
        """While the run goes: its status, checkpoints and the launcher's failure line, for the monitor and
        for Redis."""
        record = run.record
        while record.state not in TERMINAL_STATES:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                self._refresh(run)
                if run.monitor is not None and not run.relaunching:
                    await self._report_progress(run)
                await self._save(run, only_if_changed=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("run %s: following it failed; going on", record.run_id)

    async def _report_progress(self, run: _Run) -> None:
        record, monitor = run.record, run.monitor
        assert monitor is not None
        if record.last_checkpoint and record.last_checkpoint != run.reported_checkpoint:
            run.reported_checkpoint = record.last_checkpoint
            found = CHECKPOINT_NAME.match(Path(record.last_checkpoint).name)
            if found:
                saved = rpb.CheckpointSaved(step=int(found.group(1)), path=record.last_checkpoint)
                item = rpb.ReportRequest(checkpoint_saved=saved)
                await self._report(run, 0, item)
        if record.state in ("COMPLETED", "STOPPED"):
            # Finished ranks stop their heartbeats: say so before the monitor takes the silence for a hang.
            await self._report_exits(run, 0)
        elif run.process is not None and run.process.returncode is None and not monitor.exits_reported:
            failed = await asyncio.to_thread(self._scan_log, run)
            if failed is not None:
                await self._report_failure(run, *failed)

    def _scan_log(self, run: _Run) -> tuple[int, int] | None:
        """(rank, exit code) of the first failed rank, once the launcher has named it; None before."""
        path = run.record.run_dir / "ranks.log"
        try:
            with path.open("rb") as f:
                f.seek(run.scan_offset)
                data = f.read()
        except OSError:
            return None
        # Lines may be cut at the end: look again from the last full line next time.
        cut = data.rfind(b"\n") + 1
        run.scan_offset += cut
        found = FAILED_RANK.search(data[:cut].decode(errors="replace"))
        return (int(found.group(2)), int(found.group(1))) if found else None

    def _first_failure(self, run: _Run, launcher_code: int) -> tuple[int, int]:
        """(rank, exit code) of the incarnation's first failed rank from the launcher's log (rank 0 and the
        launcher's status when the log names none)."""
        try:
            with (run.record.run_dir / "ranks.log").open("rb") as f:
                f.seek(run.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            text = ""
        found = FAILED_RANK.search(text)
        if found:
            return int(found.group(2)), int(found.group(1))
        cause = ROOT_CAUSE.search(text)
        if cause:
            return int(cause.group(1)), int(cause.group(2))
        return 0, launcher_code

    async def _report_failure(self, run: _Run, rank: int, exit_code: int) -> None:
        """The first failed rank's exit, once per incarnation: the monitor blames that rank (a crash)."""
        monitor = run.monitor
        if monitor is None or monitor.exits_reported:
            return
        monitor.exits_reported.add(rank)
        logger.warning("run %s: rank %d failed with exit code %d", run.record.run_id, rank, exit_code)
        await self._report(run, rank, rpb.ReportRequest(process_exit=rpb.ProcessExit(exit_code=exit_code)))

    async def _report_exits(self, run: _Run, exit_code: int) -> None:
        monitor = run.monitor
        if monitor is None:
            return
        for rank in sorted(set(monitor.agents) - monitor.exits_reported):
            monitor.exits_reported.add(rank)
            await self._report(run, rank, rpb.ReportRequest(process_exit=rpb.ProcessExit(exit_code=exit_code)))

    async def _report(self, run: _Run, rank: int, request: rpb.ReportRequest, agent_id: str = "") -> None:
        monitor = run.monitor
        if monitor is None:
            return
        request.agent_id = agent_id or monitor.agents.get(rank, "")
        request.observed_at.CopyFrom(now_timestamp())

        async def one() -> AsyncIterator[rpb.ReportRequest]:
            yield request

        try:
            await monitor.client.report(one(), timeout_s=10)
        except RPCError as exc:
            logger.warning("run %s: report to the robustness monitor failed: %s", run.record.run_id, exc)

    # The launcher's end ---------------------------------------------------------------------------

    async def _watch(self, run: _Run, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        if run.process is not process or run.relaunching or self._closing:
            return  # replaced by a restart, or ended by the service itself
        record = run.record
        before = record.state
        self._refresh(run)
        failed = code != 0 and not run.stop_requested and record.state not in ("COMPLETED", "STOPPED")
        if failed and run.monitor is not None:
            await self._report_failure(run, *await asyncio.to_thread(self._first_failure, run, code))
            # The monitor decides: a restart (a new incarnation) or a stop; FAILED if it says nothing.
            reasons = await asyncio.to_thread(_rank_errors, record.run_dir)
            record.state = before if before not in TERMINAL_STATES else "STARTING"
            record.updated_at = time.time()
            run.awaiting = asyncio.create_task(self._await_monitor(run, code, reasons), name=f"await-{record.run_id}")
            await self._save(run)
            return
        if record.state not in TERMINAL_STATES:
            reasons = await asyncio.to_thread(_rank_errors, record.run_dir)
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
        await self._end(run)
        logger.info("run %s ended %s (exit %s)", record.run_id, record.state, code)

    async def _await_monitor(self, run: _Run, code: int, reasons: list[str]) -> None:
        await asyncio.sleep(self._monitor_grace_s)
        record = run.record
        run.awaiting = None
        record.state = "FAILED"
        record.failure_reason = (
            "; ".join(reasons) or f"launcher exited with status {code}: {_tail(record.run_dir)}"
        ) + f" (the robustness monitor did not restart the run within {self._monitor_grace_s:.0f} s)"
        await self._end(run)

    async def _end(self, run: _Run) -> None:
        """The run reached its final state: tell the monitor, stop listening to it, keep the record."""
        record = run.record
        record.updated_at = time.time()
        if run.monitor is not None:
            if record.state in ("COMPLETED", "STOPPED"):
                await self._report_exits(run, 0)
            for task in run.monitor.watchers:
                if task is not asyncio.current_task():
                    task.cancel()
            await run.monitor.client.close()
        await self._save(run)

    # Stop -----------------------------------------------------------------------------------------

    async def stop_run(self, run_id: str, save_checkpoint: bool) -> RunRecord:
        """Ask the ranks to end after the current step; the run is killed if they do not in time."""
        run = self._runs.get(run_id)
        if run is None:
            run = await self._load(run_id)
        self._refresh(run)
        record = run.record
        if record.state in TERMINAL_STATES or run.stop_requested:
            return record
        if run.process is None:
            raise FailedPrecondition(
                f"run_id={run_id!r}: its ranks (pid {record.pid}) were started by an earlier trainer service "
                "process; this one can only report on them"
            )
        run.stop_requested = True
        if run.awaiting is not None:
            # The ranks are gone already: nothing to wait for.
            run.awaiting.cancel()
            run.awaiting = None
            record.state = "STOPPED"
            await self._end(run)
            return record
        request_stop(record.run_dir, save_checkpoint)
        record.state = "STOPPING"
        run.stopper = asyncio.create_task(self._deadline(run), name=f"stop-{run_id}")
        await self._save(run)
        return record

    async def _deadline(self, run: _Run) -> None:
        process = run.process
        assert process is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), self._stop_timeout_s)
            return
        logger.warning(
            "run %s did not stop within %.0f s: terminating its ranks", run.record.run_id, self._stop_timeout_s
        )
        await _end_group(process)

    async def close(self) -> None:
        """End every run still going (its whole process group) and wait for the launchers; the records say
        why in Redis."""
        self._closing = True
        for run in self._runs.values():
            for task in (run.follower, run.awaiting, *(run.monitor.watchers if run.monitor else [])):
                if task is not None:
                    task.cancel()
            if run.process is not None and run.process.returncode is None:
                run.record.state = "FAILED"
                run.record.failure_reason = "the trainer service stopped while the run was going: its ranks were ended"
                with contextlib.suppress(Exception):
                    await self._save(run)
                await _end_group(run.process)
            if run.watcher is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await run.watcher
            if run.monitor is not None:
                await run.monitor.client.close()

    # The robustness monitor's actuator ------------------------------------------------------------

    async def _attach_monitor(self, run_id: str) -> _Monitor | None:
        try:
            address = await self._resolve("robustness")
        except Exception:  # no monitor registered: the ranks run without an agent
            return None
        return _Monitor(RobustnessClient(address), address)

    async def _register_ranks(self, run: _Run) -> None:
        """Register every rank of the current incarnation (idempotent under retry) and watch its commands."""
        monitor, record = run.monitor, run.record
        assert monitor is not None
        agents: dict[int, str] = {}
        try:
            for rank in range(record.spec.num_ranks):
                reply = await monitor.client.register_agent(
                    rpb.RegisterAgentRequest(
                        request_id=f"{record.run_id}/{record.incarnation}/{rank}",
                        job_id=record.run_id,
                        rank=rank,
                        world_size=record.spec.num_ranks,
                        topology=common_pb2.TopologyLabels(host=socket.gethostname()),
                    ),
                    timeout_s=10,
                )
                agents[rank] = reply.agent_id
                monitor.heartbeat_s = reply.heartbeat_interval_s or monitor.heartbeat_s
                monitor.generation = int(reply.generation)
        except RPCError as exc:
            if record.incarnation == 0:
                logger.warning("run %s: robustness monitor unreachable (%s): running without it", record.run_id, exc)
                await monitor.client.close()
                run.monitor = None
                return
            raise
        monitor.agents = agents
        monitor.exits_reported = set()
        for rank, agent_id in agents.items():
            monitor.rank_of[agent_id] = rank
            monitor.watchers.append(
                asyncio.create_task(self._watch_commands(run, agent_id), name=f"commands-{record.run_id}-{rank}")
            )

    async def _watch_commands(self, run: _Run, agent_id: str) -> None:
        monitor = run.monitor
        assert monitor is not None
        while True:
            try:
                async for command in monitor.client.watch_commands(rpb.WatchCommandsRequest(agent_id=agent_id)):
                    await self._execute(run, agent_id, command)
                return
            except RPCError as exc:
                if exc.code.name in ("NOT_FOUND", "FAILED_PRECONDITION"):
                    return
                logger.warning(
                    "run %s: command stream of %s ended (%s); reconnecting", run.record.run_id, agent_id, exc
                )
                await asyncio.sleep(1.0)

    async def _execute(self, run: _Run, agent_id: str, command: rpb.WatchCommandsResponse) -> None:
        monitor = run.monitor
        assert monitor is not None
        rank = monitor.rank_of.get(agent_id, 0)
        kind = CommandKind(command.kind)
        started = time.monotonic()
        if kind == CommandKind.DUMP_STACKS:
            tool, text = await self._dump_stacks(run, rank)
            stack = rpb.StackDump(command_id=command.command_id, tool=tool, text=text)
            await self._report(run, rank, rpb.ReportRequest(stack_dump=stack), agent_id)
            return
        try:
            if kind == CommandKind.RESTART_PROCESS:
                done, detail = await self._restart(run, command)
            elif kind == CommandKind.STOP_PROCESS:
                done, detail = await self._stop_for_monitor(run, command.reason)
            else:
                done, detail = False, f"trainer: {kind.name} is not supported (a trainer run has no warm standbys)"
        except (OSError, RPCError) as exc:
            logger.exception("run %s: %s failed", run.record.run_id, kind.name)
            done, detail = False, f"trainer: {kind.name} failed: {exc}"
        result = rpb.ActionResult(
            command_id=command.command_id, done=done, detail=detail, duration_s=time.monotonic() - started
        )
        # The answer goes on the rank's current agent: a restart has retired the one the command came to.
        await self._report(run, rank, rpb.ReportRequest(action_result=result))

    async def _restart(self, run: _Run, command: rpb.WatchCommandsResponse) -> tuple[bool, str]:
        """One RESTART_PROCESS per rank arrives; the first of a generation relaunches the whole run."""
        async with run.restart_lock:
            record, monitor = run.record, run.monitor
            assert monitor is not None
            if run.stop_requested or record.state in TERMINAL_STATES:
                return False, f"trainer: run {record.run_id} is {record.state.lower()}: not restarted"
            if command.generation > monitor.generation:
                await self._relaunch(run, command)
            resumed = record.restarts[-1]["resumed_from"] if record.restarts else -1
            where = f"step {resumed}" if resumed >= 0 else "the start"
            return True, (
                f"trainer: rank {command.rank} relaunched with run {record.run_id} as incarnation "
                f"{record.incarnation} (pid {record.pid}) from {where}"
            )

    async def _relaunch(self, run: _Run, command: rpb.WatchCommandsResponse) -> None:
        """End what is left of the current incarnation, then launch the next from the run's checkpoint."""
        record = run.record
        self._refresh(run)  # what the ranks last wrote (a skipped step, a checkpoint) before they end
        run.relaunching = True
        try:
            if run.awaiting is not None:
                run.awaiting.cancel()
                run.awaiting = None
            if run.process is not None and run.process.returncode is None:
                await _end_group(run.process)
            if run.training_since:
                run.used_s += time.time() - run.training_since
                run.training_since = 0.0
            spec = record.spec
            checkpoint = await asyncio.to_thread(_checkpoint_for, spec, record.run_dir, command.resume_step)
            resumed_from = checkpoint[0] if checkpoint else -1
            if command.skip_data_until_step > 0:
                run.skip_data_until_step = max(run.skip_data_until_step, command.skip_data_until_step)
            budget = max(spec.time_budget_s - run.used_s, MIN_RESTART_BUDGET_S) if spec.time_budget_s > 0 else 0.0
            launch = spec.replace(
                time_budget_s=budget,
                checkpoint=dataclasses.replace(
                    spec.checkpoint,
                    resume_from=str(checkpoint[1]) if checkpoint else spec.checkpoint.resume_from,
                    skip_data_until_step=max(run.skip_data_until_step, 0),
                ),
            )
            run.earlier_evals = [e for e in record.evals if e["step"] <= max(resumed_from, 0)]
            # Skips after the checkpoint are redone (or skipped again) by the next incarnation: not counted twice.
            run.earlier_skipped_steps = [s for s in run.earlier_skipped_steps + run.skipped_steps if s <= resumed_from]
            run.skipped_steps = []
            run.resume_step = resumed_from
            record.incarnation += 1
            record.restarts.append(
                {
                    "at": time.time(),
                    "why": command.reason,
                    "resumed_from": resumed_from,
                    "time_budget_s": budget,
                    "skip_data_until_step": launch.checkpoint.skip_data_until_step,
                }
            )
            spec_path = await asyncio.to_thread(_next_incarnation, record.run_dir, record.incarnation, launch)
            await self._register_ranks(run)
            await self._spawn(run, launch, spec_path)
            record.state = "STARTING"
            record.failure_reason = ""
            record.step = max(resumed_from, 0)
            record.updated_at = time.time()
            logger.warning(
                "run %s: incarnation %d launched (pid %d) from %s for %s: %s",
                record.run_id,
                record.incarnation,
                record.pid,
                checkpoint[1] if checkpoint else "the start",
                f"{budget:.0f} s" if budget else "no time limit",
                command.reason,
            )
        finally:
            run.relaunching = False
        await self._save(run)

    async def _stop_for_monitor(self, run: _Run, reason: str) -> tuple[bool, str]:
        """The monitor gave up on the run (or evicts it): its ranks end now and the run is FAILED."""
        async with run.restart_lock:
            record = run.record
            if record.state in TERMINAL_STATES:
                return True, f"trainer: run {record.run_id} already {record.state.lower()}"
            if run.awaiting is not None:
                run.awaiting.cancel()
                run.awaiting = None
            run.relaunching = True  # the launcher's end is this stop, not a failure to report
            try:
                if run.process is not None and run.process.returncode is None:
                    await _end_group(run.process)
            finally:
                run.relaunching = False
            reasons = await asyncio.to_thread(_rank_errors, record.run_dir)
            record.state = "FAILED"
            record.failure_reason = f"stopped by the robustness monitor ({reason})" + (
                f": {'; '.join(reasons)}" if reasons else ""
            )
            await self._end(run)
            return True, f"trainer: run {record.run_id} stopped"

    async def _dump_stacks(self, run: _Run, rank: int) -> tuple[str, str]:
        pid = await asyncio.to_thread(_rank_pid, run.record.pid, rank)
        if pid is None:
            return "none", f"rank {rank}: no process of it under launcher pid {run.record.pid}"
        if not _catches(pid, signal.SIGUSR1):
            return "none", f"rank {rank} (pid {pid}): no stack dump handler installed yet"
        stack_file = run.record.run_dir / f"stacks-rank{rank}.txt"
        return await dump_process_stacks(pid, stack_file, lambda sig: os.kill(pid, sig))

    # Redis ----------------------------------------------------------------------------------------

    async def _save(self, run: _Run, only_if_changed: bool = False) -> None:
        if self._meta is None or (self._closing and only_if_changed):
            return
        record = run.record
        key = (record.state, record.incarnation, record.step, record.last_checkpoint)
        now = time.time()
        if only_if_changed and (
            key == run.saved or (key[:2] == run.saved[:2] and now - run.saved_at < SAVE_INTERVAL_S)
        ):
            return
        run.saved, run.saved_at = key, now
        try:
            await self._meta.put_many({self._meta.key("run", record.run_id): record.to_json()})
        except Exception as exc:  # Redis away: GetRun still answers from memory; the next change retries
            logger.warning("run %s: saving its record to redis failed: %s", record.run_id, exc)
            run.saved = ("", -1, -1, "")

    async def _load(self, run_id: str) -> _Run:
        data = await self._meta.get_json(self._meta.key("run", run_id)) if self._meta is not None else None
        if data is None:
            raise NotFound(f"run_id={run_id!r}: no such run")
        run = self._runs.get(run_id)  # loaded meanwhile
        if run is None:
            run = self._runs[run_id] = _Run(RunRecord.from_json(data), None)
        return run


def _rank_errors(run_dir: Path) -> list[str]:
    return sorted(p.read_text() for p in run_dir.glob("error-rank*.txt"))


def _checkpoint_for(spec: RunSpec, run_dir: Path, resume_step: int) -> tuple[int, Path] | None:
    """The run's newest checkpoint at or before ``resume_step`` (the newest of all when it is < 0)."""
    directory = Path(spec.checkpoint.dir) if spec.checkpoint.dir else run_dir / "checkpoints"
    found = sorted((int(m.group(1)), p) for p in directory.glob("step-*.pt") if (m := CHECKPOINT_NAME.match(p.name)))
    if resume_step >= 0:
        found = [c for c in found if c[0] <= resume_step]
    return found[-1] if found else None


def _next_incarnation(run_dir: Path, incarnation: int, spec: RunSpec) -> Path:
    """Put the last incarnation's status, stop and error files aside; the next one's spec file."""
    previous = run_dir / f"incarnation-{incarnation - 1}"
    previous.mkdir(exist_ok=True)
    for path in [run_dir / STATUS_FILE, run_dir / STOP_FILE, *run_dir.glob("error-rank*.txt")]:
        with contextlib.suppress(FileNotFoundError):
            path.replace(previous / path.name)
    spec_path = run_dir / f"spec-{incarnation}.json"
    spec_path.write_text(json.dumps(spec.to_dict(), indent=2))
    return spec_path


def _rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of rank ``rank`` among the launcher's children (by the RANK in their environment)."""
    try:
        children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    except OSError:
        return None
    for child in children:
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def _catches(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (else the signal's default action would kill it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
