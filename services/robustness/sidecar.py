"""The sidecar: a supervising process beside one training process (or a warm standby).

It registers the process with the controller, launches it through an actuator with the agent's
id in its environment, reports its exit code and the log lines that match known error signatures,
and carries out the controller's commands: stack dumps (py-spy where present, else ``faulthandler``
through SIGUSR1; a process found stopped is reported as such), restarts in place, stops, and (as a
standby) adopting an evicted rank. A restart registers again: every incarnation has its own agent id.

Run: ``python -m services.robustness.sidecar --address HOST:PORT --job J --rank R --world-size W
[--host NODE] [--standby] [--actuator local|local-prewarmed|docker|kubernetes] -- COMMAND ...``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

from seedstack.common.v1 import common_pb2
from seedstack.robustness.v1 import robustness_pb2 as pb

from clients.base import RPCError
from clients.robustness import RobustnessClient
from services.robustness.actuators import (
    Actuator,
    ActuatorError,
    LaunchSpec,
    LocalProcessActuator,
    Workload,
    make_actuator,
)
from services.robustness.agent import (
    ENV_ADDRESS,
    ENV_AGENT_ID,
    ENV_HEARTBEAT_S,
    ENV_HOST,
    ENV_JOB_ID,
    ENV_STACK_FILE,
    now_timestamp,
)
from services.robustness.detect import match_signature
from services.robustness.localize import STOPPED_MARK
from services.robustness.model import CommandKind

logger = logging.getLogger(__name__)

ENV_GENERATION = "SEEDSTACK_ROBUSTNESS_GENERATION"
ENV_RESUME_STEP = "SEEDSTACK_ROBUSTNESS_RESUME_STEP"
ENV_SKIP_UNTIL = "SEEDSTACK_ROBUSTNESS_SKIP_DATA_UNTIL_STEP"
MAX_QUEUED_REPORTS = 256


class Sidecar:
    """Supervises one rank's process for the controller at ``address``."""

    def __init__(
        self,
        address: str,
        *,
        job_id: str,
        rank: int,
        world_size: int,
        argv: Sequence[str],
        host: str,
        groups: Mapping[str, Sequence[int]] | None = None,
        standby: bool = False,
        actuator: Actuator | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.address = address
        self.job_id = job_id
        self.rank = rank
        self.world_size = world_size
        self.argv = list(argv)
        self.host = host
        self.groups = dict(groups or {})
        self.standby = standby
        self.actuator = actuator or LocalProcessActuator()
        self.env = dict(env or {})
        self.log_path = log_path
        self.workdir = workdir or Path(tempfile.gettempdir())
        self.client = RobustnessClient(address)
        self.agent_id = ""
        self.heartbeat_interval_s = 1.0
        self.workload: Workload | None = None
        self.num_launches = 0
        self.exit_code: int | None = None
        self._stack_file = self.workdir / f"stacks-{job_id}-{os.getpid()}-{uuid.uuid4().hex[:6]}.txt"
        self._reports: asyncio.Queue[pb.ReportRequest] = asyncio.Queue(MAX_QUEUED_REPORTS)
        self._expected_exit = False
        self._done = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._watch: asyncio.Task[None] | None = None
        self._stream: asyncio.Task[None] | None = None

    # Lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> int:
        """Supervise until stopped by the controller or the process finishes cleanly; its last exit code."""
        try:
            if self.standby:
                await self._register(standby=True)
                # A warm standby: what it will run is started ahead as far as the actuator can.
                await self.actuator.prepare(
                    LaunchSpec(argv=self.argv, env=self.env, cwd=self.workdir, name=self.job_id)
                )
            else:
                await self._launch(generation=None, resume_step=-1, skip_until=0)
            await self._done.wait()
        finally:
            await self.close()
        return self.exit_code if self.exit_code is not None else 0

    async def close(self) -> None:
        """Kill the process if it runs; stop reporting."""
        if self.workload is not None:
            self._expected_exit = True
            with contextlib.suppress(Exception):
                await self.workload.kill()
        with contextlib.suppress(Exception):
            await self.actuator.close()
        await self._drain()
        for task in [*self._tasks, self._watch, self._stream]:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.client.close()
        with contextlib.suppress(OSError):
            self._stack_file.unlink()

    async def _drain(self) -> None:
        for _ in range(100):
            if self._reports.empty():
                return
            await asyncio.sleep(0.01)

    async def _register(self, *, standby: bool) -> int:
        reply = await self.client.register_agent(
            pb.RegisterAgentRequest(
                request_id=uuid.uuid4().hex,
                job_id=self.job_id,
                rank=self.rank,
                world_size=self.world_size,
                topology=common_pb2.TopologyLabels(host=self.host),
                pid=os.getpid(),
                groups=[pb.ProcessGroup(name=k, ranks=sorted(v)) for k, v in self.groups.items()],
                standby=standby,
            )
        )
        self.agent_id = reply.agent_id
        self.heartbeat_interval_s = reply.heartbeat_interval_s
        # A new id: a new command stream and a new report stream.
        for task in (self._watch, self._stream):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._reports = asyncio.Queue(MAX_QUEUED_REPORTS)
        self._watch = asyncio.create_task(self._watch_commands(self.agent_id))
        self._stream = asyncio.create_task(self._stream_reports(self.agent_id, self._reports))
        return int(reply.generation)

    async def _launch(self, *, generation: int | None, resume_step: int, skip_until: int) -> None:
        job_generation = await self._register(standby=False)
        env = {
            **self.env,
            ENV_ADDRESS: self.address,
            ENV_AGENT_ID: self.agent_id,
            ENV_JOB_ID: self.job_id,
            ENV_HOST: self.host,
            ENV_HEARTBEAT_S: str(self.heartbeat_interval_s),
            ENV_STACK_FILE: str(self._stack_file),
            ENV_GENERATION: str(job_generation if generation is None else generation),
            ENV_RESUME_STEP: str(resume_step),
            ENV_SKIP_UNTIL: str(skip_until),
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
        }
        self._expected_exit = False
        self.workload = await self.actuator.start(
            LaunchSpec(argv=self.argv, env=env, cwd=self.workdir, name=f"{self.job_id}-rank{self.rank}")
        )
        self.num_launches += 1
        logger.info("sidecar: rank %d launched as pid %d (agent %s)", self.rank, self.workload.pid, self.agent_id)
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._supervise(self.workload)))

    # Reporting -----------------------------------------------------------------------------------

    def _report(self, request: pb.ReportRequest) -> None:
        request.agent_id = self.agent_id
        request.observed_at.CopyFrom(now_timestamp())
        if self._reports.full():
            self._reports.get_nowait()
        self._reports.put_nowait(request)

    async def _stream_reports(self, agent_id: str, queue: asyncio.Queue[pb.ReportRequest]) -> None:
        async def items() -> AsyncIterator[pb.ReportRequest]:
            while True:
                yield await queue.get()

        while True:
            try:
                await self.client.report(items())
                return
            except RPCError as exc:
                if exc.code.name in ("NOT_FOUND", "FAILED_PRECONDITION"):
                    return
                logger.warning("sidecar: report stream for %s ended (%s); reconnecting", agent_id, exc)
                await asyncio.sleep(0.5)

    async def _supervise(self, workload: Workload) -> None:
        log = self.log_path.open("a") if self.log_path else None
        try:
            async for line in workload.lines():
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                signature = match_signature(line)
                if signature is not None:
                    self._report(pb.ReportRequest(log_match=pb.LogMatch(signature=signature, line=line)))
            code = await workload.wait()
        finally:
            if log is not None:
                log.close()
        if workload is not self.workload or self._expected_exit:
            return
        self.exit_code = code
        logger.info("sidecar: rank %d exited with %d", self.rank, code)
        self._report(pb.ReportRequest(process_exit=pb.ProcessExit(exit_code=code)))
        if code == 0:
            await self._drain()
            self._done.set()

    # Commands ------------------------------------------------------------------------------------

    async def _watch_commands(self, agent_id: str) -> None:
        while True:
            try:
                async for command in self.client.watch_commands(pb.WatchCommandsRequest(agent_id=agent_id)):
                    await self._execute(command)
                    if self.agent_id != agent_id:
                        return  # re-registered: the new id's stream carries on
                return
            except RPCError as exc:
                if exc.code.name in ("NOT_FOUND", "FAILED_PRECONDITION"):
                    return
                logger.warning("sidecar: command stream ended (%s); reconnecting", exc)
                await asyncio.sleep(0.5)

    async def _execute(self, command: pb.WatchCommandsResponse) -> None:
        kind = CommandKind(command.kind)
        started = time.monotonic()
        if kind == CommandKind.DUMP_STACKS:
            tool, text = await self.dump_stacks()
            self._report(pb.ReportRequest(stack_dump=pb.StackDump(command_id=command.command_id, tool=tool, text=text)))
            return
        done, detail = True, ""
        try:
            if kind in (CommandKind.RESTART_PROCESS, CommandKind.ADOPT_RANK):
                if kind == CommandKind.ADOPT_RANK:
                    self.rank, self.standby = command.rank, False
                await self._stop_workload()
                await self._launch(
                    generation=command.generation,
                    resume_step=command.resume_step,
                    skip_until=command.skip_data_until_step,
                )
                assert self.workload is not None
                detail = f"{self.actuator.name}: rank {self.rank} started as pid {self.workload.pid} on {self.host}"
            elif kind == CommandKind.STOP_PROCESS:
                await self._stop_workload()
                detail = f"{self.actuator.name}: rank {self.rank} stopped"
            else:
                done, detail = False, f"unknown command kind {command.kind}"
        except (ActuatorError, RPCError, OSError) as exc:
            done, detail = False, f"{self.actuator.name}: {exc}"
        self._report(
            pb.ReportRequest(
                action_result=pb.ActionResult(
                    command_id=command.command_id, done=done, detail=detail, duration_s=time.monotonic() - started
                )
            )
        )
        if kind == CommandKind.STOP_PROCESS:
            await self._drain()
            self._done.set()

    async def _stop_workload(self) -> None:
        if self.workload is not None:
            self._expected_exit = True
            await self.workload.kill()
            self.workload = None

    async def dump_stacks(self) -> tuple[str, str]:
        """(tool, text) of every thread's stack of the process."""
        workload = self.workload
        if workload is None:
            return "none", "no process running"
        if workload.is_stopped():
            return "procfs", f"{STOPPED_MARK} (state T, pid {workload.pid}): it cannot run a dump"
        return await dump_process_stacks(workload.pid, self._stack_file, workload.send_signal)


async def dump_process_stacks(pid: int, stack_file: Path, send_signal: Callable[[int], None]) -> tuple[str, str]:
    """(tool, text) of every thread's stack of process ``pid``: py-spy where present, else SIGUSR1 through
    ``send_signal`` and what ``faulthandler`` appends to ``stack_file`` within 2 s."""
    spy = shutil.which("py-spy")
    if spy and pid:
        proc = await asyncio.create_subprocess_exec(
            spy,
            "dump",
            "--pid",
            str(pid),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        with contextlib.suppress(TimeoutError):
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=5.0)
            if proc.returncode == 0:
                return "py-spy", out.decode(errors="replace")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    size = _size(stack_file)
    try:
        send_signal(signal.SIGUSR1)
    except (ActuatorError, OSError) as exc:
        return "none", f"no dump: {exc}"
    text = ""
    for _ in range(100):
        await asyncio.sleep(0.02)
        if _size(stack_file) > size:
            await asyncio.sleep(0.05)
            with stack_file.open() as f:
                f.seek(size)
                text = f.read()
            break
    return "faulthandler", text or "no dump within 2 s (faulthandler not installed in the process?)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the sidecar."""
    parser = argparse.ArgumentParser(prog="python -m services.robustness.sidecar", description=__doc__.split("\n")[0])
    parser.add_argument("--address", required=True, help="robustness controller host:port")
    parser.add_argument("--job", required=True)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--host", default=os.uname().nodename, help="node name reported for this rank")
    parser.add_argument("--standby", action="store_true", help="a warm standby: wait for ADOPT_RANK")
    parser.add_argument("--actuator", default="local", choices=["local", "local-prewarmed", "docker", "kubernetes"])
    parser.add_argument("--log", type=Path, help="append the process's output here")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to supervise is required after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s sidecar: %(message)s")
    try:
        actuator = make_actuator(args.actuator)
    except ActuatorError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2
    sidecar = Sidecar(
        args.address,
        job_id=args.job,
        rank=args.rank,
        world_size=args.world_size,
        argv=command,
        host=args.host,
        standby=args.standby,
        actuator=actuator,
        log_path=args.log,
    )
    return asyncio.run(sidecar.run())


if __name__ == "__main__":
    sys.exit(main())
