"""The agent library, called inside a training process: heartbeats, step metrics, events.

Usage in a training loop (sync code; the gRPC side runs on a background thread)::

    agent = Agent.from_env() or Agent(address, job_id="run-1", rank=rank, world_size=world)
    agent.start()
    for done in range(1, num_warm_start_steps + 1):
        ...
        agent.startup_progress(done)  # long start-up work is progress, with no step number of its own
    for step in ...:
        with agent.phase(Phase.FORWARD_BACKWARD, step):
            ...
        agent.step_metrics(step, loss=..., grad_norm=..., has_nan_or_inf=..., step_time_s=..., compute_time_s=...)
    agent.close()

Heartbeats go out every interval from the background thread and at every phase change, so a main
thread stuck in one place still beats (liveness) while its step stands still (no progress), and a
process frozen whole (SIGSTOP, the GIL held) goes silent. Reports queue in a bounded buffer: when
the controller is away, the oldest are dropped and counted, never buffered without bound. Under a
sidecar (``SEEDSTACK_ROBUSTNESS_AGENT_ID`` set) the agent reports under the sidecar's id and
``faulthandler`` dumps every thread's stack to the sidecar's file on SIGUSR1. Under a launcher of
several ranks (``SEEDSTACK_ROBUSTNESS_AGENT_IDS``) each rank takes the id at its RANK, and ``{rank}`` in
the stack file's name is replaced by the rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import IO

from google.protobuf.timestamp_pb2 import Timestamp
from seedstack.common.v1 import common_pb2
from seedstack.robustness.v1 import robustness_pb2 as pb

from clients.base import RPCError
from clients.robustness import RobustnessClient
from services.robustness.model import Phase

logger = logging.getLogger(__name__)

ENV_ADDRESS = "SEEDSTACK_ROBUSTNESS_ADDRESS"
ENV_AGENT_ID = "SEEDSTACK_ROBUSTNESS_AGENT_ID"
ENV_AGENT_IDS = "SEEDSTACK_ROBUSTNESS_AGENT_IDS"
"""Comma-separated agent ids indexed by RANK: a launcher of several ranks (the trainer service) registers
each rank's incarnation itself and hands the ids down, so it can report exits and take commands for them."""
ENV_JOB_ID = "SEEDSTACK_ROBUSTNESS_JOB_ID"
ENV_STACK_FILE = "SEEDSTACK_ROBUSTNESS_STACK_FILE"
ENV_HOST = "SEEDSTACK_ROBUSTNESS_HOST"
ENV_HEARTBEAT_S = "SEEDSTACK_ROBUSTNESS_HEARTBEAT_S"


def now_timestamp() -> Timestamp:
    """The current wall-clock time as a protobuf Timestamp."""
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class Agent:
    """Reports one process's progress to the robustness controller from a background thread."""

    def __init__(
        self,
        address: str,
        *,
        job_id: str,
        rank: int,
        world_size: int,
        host: str | None = None,
        groups: Mapping[str, Sequence[int]] | None = None,
        agent_id: str | None = None,
        heartbeat_interval_s: float | None = None,
        queue_size: int = 1024,
    ) -> None:
        self.address = address
        self.job_id = job_id
        self.rank = rank
        self.world_size = world_size
        self.host = host or os.environ.get(ENV_HOST) or socket.gethostname()
        self.groups = dict(groups or {})
        self.agent_id = agent_id
        self._own_registration = agent_id is None
        self._interval_s = heartbeat_interval_s
        self._queue_size = queue_size
        self.step = 0
        self.current_phase = Phase.STARTUP
        self.startup_units_done = 0
        """Start-up work done so far (``startup_progress``), sent with every heartbeat."""
        self.num_dropped = 0
        self.generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[pb.ReportRequest] | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._stack_file: IO[str] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Agent | None:
        """An agent set up by a sidecar (or torchrun's RANK/WORLD_SIZE) through the environment; None when
        ``SEEDSTACK_ROBUSTNESS_ADDRESS`` is not set."""
        env = os.environ if environ is None else environ
        address = env.get(ENV_ADDRESS)
        if not address:
            return None
        rank = int(env.get("RANK", "0"))
        agent_id = env.get(ENV_AGENT_ID) or None
        ids = [i for i in env.get(ENV_AGENT_IDS, "").split(",") if i]
        if ids:
            if rank >= len(ids):
                raise ValueError(f"{ENV_AGENT_IDS} names {len(ids)} agent(s): none for RANK={rank}")
            agent_id = ids[rank]
        agent = cls(
            address,
            job_id=env.get(ENV_JOB_ID, "default"),
            rank=rank,
            world_size=int(env.get("WORLD_SIZE", "1")),
            agent_id=agent_id,
            heartbeat_interval_s=float(env[ENV_HEARTBEAT_S]) if env.get(ENV_HEARTBEAT_S) else None,
        )
        stack_file = env.get(ENV_STACK_FILE)
        if stack_file:
            agent.enable_stack_dumps(stack_file.replace("{rank}", str(rank)))
        return agent

    def enable_stack_dumps(self, path: str) -> None:
        """Dump every thread's stack to ``path`` on SIGUSR1 (works with the GIL held)."""
        self._stack_file = open(path, "a")
        faulthandler.register(signal.SIGUSR1, file=self._stack_file, all_threads=True)

    # Training-loop side (any thread) -------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the background thread; waits until registered (or gives up after ``timeout_s``)."""
        self._thread = threading.Thread(target=self._run_thread, name="robustness-agent", daemon=True)
        self._thread.start()
        self._ready.wait(timeout_s)

    def set_phase(self, phase: Phase, step: int | None = None) -> None:
        """Say what the process is doing now; a change is reported at once."""
        changed = phase != self.current_phase or (step is not None and step != self.step)
        self.current_phase = phase
        if step is not None:
            self.step = step
        if changed:
            self._beat()

    def startup_progress(self, units_done: int) -> None:
        """Say that ``units_done`` units of start-up work are done (e.g. warm-start steps, counted from 0):
        the process is in the start-up phase, and each rise is progress to the monitor before the first
        step, without a step number of its own. Beats at once."""
        if units_done < 0:
            raise ValueError(f"units_done={units_done}: must be >= 0")
        self.current_phase = Phase.STARTUP
        self.startup_units_done = units_done
        self._beat()

    @contextlib.contextmanager
    def phase(self, phase: Phase, step: int | None = None) -> Iterator[None]:
        """``set_phase`` for the block's duration, then back to the previous phase."""
        previous = self.current_phase
        self.set_phase(phase, step)
        try:
            yield
        finally:
            self.set_phase(previous)

    def step_metrics(
        self,
        step: int,
        *,
        loss: float,
        grad_norm: float,
        has_nan_or_inf: bool,
        step_time_s: float,
        compute_time_s: float,
    ) -> None:
        """Report one finished step (call it before the optimizer applies the step)."""
        self._put(
            pb.ReportRequest(
                step_metrics=pb.StepMetrics(
                    step=step,
                    loss=loss,
                    grad_norm=grad_norm,
                    has_nan_or_inf=has_nan_or_inf,
                    step_time_s=step_time_s,
                    compute_time_s=compute_time_s,
                )
            )
        )

    def checkpoint_saved(self, step: int, path: str, sha256: str) -> None:
        """Report a checkpoint (a roll-back candidate)."""
        self._put(pb.ReportRequest(checkpoint_saved=pb.CheckpointSaved(step=step, path=path, sha256=sha256)))

    def checkpoint_rejected(self, step: int, path: str, expected: str, actual: str, fallback_step: int) -> None:
        """Report a checkpoint that failed its checksum at load."""
        self._put(
            pb.ReportRequest(
                checkpoint_rejected=pb.CheckpointRejected(
                    step=step, path=path, expected_sha256=expected, actual_sha256=actual, fallback_step=fallback_step
                )
            )
        )

    def log_match(self, signature: str, line: str) -> None:
        """Report a log line that matched an error signature."""
        self._put(pb.ReportRequest(log_match=pb.LogMatch(signature=signature, line=line)))

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``) and stop the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._stack_file is not None:
            faulthandler.unregister(signal.SIGUSR1)
            self._stack_file.close()
            self._stack_file = None

    def _beat(self) -> None:
        heartbeat = pb.Heartbeat(
            step=self.step,
            phase=int(self.current_phase),  # type: ignore[arg-type]
            startup_progress=self.startup_units_done,
        )
        self._put(pb.ReportRequest(heartbeat=heartbeat))

    def _put(self, request: pb.ReportRequest) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        request.observed_at.CopyFrom(now_timestamp())
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._enqueue, request)

    # Background thread ---------------------------------------------------------------------------

    def _enqueue(self, request: pb.ReportRequest) -> None:
        assert self._queue is not None
        if self._queue.full():
            self._queue.get_nowait()
            self.num_dropped += 1
        self._queue.put_nowait(request)

    def _run_thread(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue(self._queue_size)
        self._stop = asyncio.Event()
        client = RobustnessClient(self.address)
        try:
            await self._register(client)
            self._ready.set()
            beat = asyncio.create_task(self._heartbeats())
            stream = asyncio.create_task(self._stream(client))
            await self._stop.wait()
            beat.cancel()
            # Let the stream drain what is queued, briefly.
            for _ in range(50):
                if self._queue.empty():
                    break
                await asyncio.sleep(0.01)
            stream.cancel()
            for task in (beat, stream):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        finally:
            self._ready.set()
            await client.close()

    async def _register(self, client: RobustnessClient) -> None:
        while self.agent_id is None or self._interval_s is None:
            try:
                if self.agent_id is None:
                    reply = await client.register_agent(
                        pb.RegisterAgentRequest(
                            request_id=uuid.uuid4().hex,
                            job_id=self.job_id,
                            rank=self.rank,
                            world_size=self.world_size,
                            topology=common_pb2.TopologyLabels(host=self.host),
                            pid=os.getpid(),
                            groups=[pb.ProcessGroup(name=k, ranks=sorted(v)) for k, v in self.groups.items()],
                        )
                    )
                    self.agent_id = reply.agent_id
                    self._interval_s = self._interval_s or reply.heartbeat_interval_s
                    self.generation = reply.generation
                else:
                    self._interval_s = 1.0
            except RPCError as exc:
                logger.warning("robustness agent: registration failed (%s); retrying", exc)
                await asyncio.sleep(1.0)

    async def _heartbeats(self) -> None:
        assert self._interval_s is not None
        while True:
            self._beat()
            await asyncio.sleep(self._interval_s)

    async def _stream(self, client: RobustnessClient) -> None:
        assert self._queue is not None and self._stop is not None
        queue = self._queue
        backoff_s = 0.1
        while not self._stop.is_set():

            async def items() -> AsyncIterator[pb.ReportRequest]:
                while True:
                    request = await queue.get()
                    request.agent_id = self.agent_id or ""
                    yield request

            try:
                await client.report(items())
            except RPCError as exc:
                logger.warning("robustness agent: report stream ended: %s", exc)
                if exc.code.name in ("NOT_FOUND", "FAILED_PRECONDITION") and self._own_registration:
                    self.agent_id = None
                    await self._register(client)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
