"""The controller: agents in, incidents, recovery commands and ETTR out. No grpc here.

State lives in memory for speed and in Redis for restarts (``seedstack:robustness:``): agents and
jobs are flushed every second and on every change that matters (registration, exit, recovery);
incidents are written at every change. A restarted controller rebuilds from Redis and gives the
agents a liveness timeout to reconnect before judging them.

One incident per job is handled at a time, by one task: localise (stack dumps for a hang), then
climb the recovery ladder until progress resumes, the budget is spent, or the job is stopped.
Signals that arrive while an incident is open are added to its summary, not opened as new faults.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.redis_meta import RedisMeta
from services.robustness.config import RobustnessConfig
from services.robustness.detect import (
    SECONDARY_SIGNATURES,
    HangTimeouts,
    LossSpikeDetector,
    StragglerDetector,
    slowest_phase,
)
from services.robustness.ettr import EttrTracker
from services.robustness.localize import hosts_of, outliers_by_phase, outliers_by_stacks, with_layout
from services.robustness.model import (
    ActionResult,
    CheckpointRejected,
    CheckpointSaved,
    Command,
    CommandKind,
    FaultKind,
    Heartbeat,
    Incident,
    IncidentState,
    LogMatch,
    Phase,
    ProcessExit,
    RecoveryAction,
    RecoveryStep,
    ReportItem,
    StackDump,
    StepMetrics,
)
from services.robustness.recovery import RecoveryBudget, next_action

logger = logging.getLogger(__name__)

MAX_CHECKPOINTS = 32
MAX_RETIRED_IDS = 100_000
DEFAULT_MAX_INCIDENTS = 100
MAX_INCIDENTS_PER_CALL = 1000
MAX_WINDOWS = 16
MAX_REBUILD_BACKOFF_S = 5.0
SECONDARY_GRACE_S = 2.0
"""How long a peer-side error line waits for the primary signal before it is an incident itself."""


@dataclass
class AgentState:
    """One registered agent (one incarnation of one process, or a warm standby)."""

    agent_id: str
    job_id: str
    rank: int
    world_size: int
    host: str
    pid: int
    groups: dict[str, list[int]]
    standby: bool
    generation: int
    registered_at_s: float
    last_seen_s: float
    last_observed_s: float = 0.0
    step: int = -1
    phase: Phase = Phase.STARTUP
    phase_since_s: float = 0.0
    num_heartbeats: int = 0
    exit_code: int | None = None
    startup_progress: int = 0
    """The highest start-up progress (e.g. warm-start steps) this agent reported in STARTUP. Not kept in
    Redis: a rebuilt controller restarts every progress timer anyway, and state written by an older
    controller (or read by one) stays loadable."""

    def to_json(self) -> dict[str, Any]:
        """What is kept in Redis."""
        return {k: (int(v) if isinstance(v, Phase) else v) for k, v in self.__dict__.items() if k not in _NOT_PERSISTED}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        """The inverse of ``to_json``."""
        return cls(**{**data, "phase": Phase(data["phase"])})


_NOT_PERSISTED = frozenset({"startup_progress"})
"""Fields of ``AgentState`` left out of Redis."""


@dataclass
class JobState:
    """One job: its ranks, progress, detectors, checkpoints, budget and ETTR."""

    job_id: str
    world_size: int
    created_s: float
    config: RobustnessConfig
    generation: int = 0
    ranks: dict[int, str] = field(default_factory=dict)
    host_by_rank: dict[int, str] = field(default_factory=dict)
    groups_by_rank: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    standbys: list[str] = field(default_factory=list)
    evicted_hosts: list[str] = field(default_factory=list)
    progress_step: int = -1
    last_progress_s: float = 0.0
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    finished_ranks: set[int] = field(default_factory=set)
    stopped: bool = False
    finished: bool = False
    incident_id: str | None = None
    long_phase_seen_s: float = 0.0
    """When the detection loop last saw the job in a checkpoint or start-up phase (not persisted)."""
    pending_log: tuple[float, int, str, str] | None = None
    """(seen at, rank, summary, signature) of a peer-side error line waiting for its primary signal."""
    budget: RecoveryBudget = field(init=False)
    timeouts: HangTimeouts = field(init=False)
    straggler: StragglerDetector = field(init=False)
    loss_spikes: LossSpikeDetector = field(init=False)
    ettr: EttrTracker = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.budget = RecoveryBudget(c.max_recovery_attempts, c.repeat_window_s)
        self.timeouts = HangTimeouts(
            c.hang_min_timeout_s, c.hang_step_multiplier, c.checkpoint_min_timeout_s, c.startup_timeout_s
        )
        self.straggler = StragglerDetector(c.straggler_ratio, c.straggler_window_steps, c.straggler_windows)
        self.loss_spikes = LossSpikeDetector(c.loss_spike_ratio)
        self.ettr = EttrTracker(start_s=self.created_s)
        self.last_progress_s = self.created_s

    @property
    def active(self) -> bool:
        """Still watched: neither stopped nor finished."""
        return not (self.stopped or self.finished)

    def good_checkpoint(self, before_step: int) -> int:
        """The newest checkpoint step <= ``before_step`` not known bad; -1 when none."""
        steps = [c["step"] for c in self.checkpoints if not c["bad"] and c["step"] <= before_step]
        return max(steps, default=-1)

    def to_json(self) -> dict[str, Any]:
        """What is kept in Redis."""
        return {
            "job_id": self.job_id,
            "world_size": self.world_size,
            "created_s": self.created_s,
            "generation": self.generation,
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "host_by_rank": {str(k): v for k, v in self.host_by_rank.items()},
            "groups_by_rank": {str(k): v for k, v in self.groups_by_rank.items()},
            "standbys": self.standbys,
            "evicted_hosts": self.evicted_hosts,
            "progress_step": self.progress_step,
            "checkpoints": self.checkpoints,
            "finished_ranks": sorted(self.finished_ranks),
            "stopped": self.stopped,
            "finished": self.finished,
            "incident_id": self.incident_id,
            "budget": self.budget.to_json(),
            "ettr": self.ettr.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], config: RobustnessConfig, now_s: float) -> JobState:
        """The inverse of ``to_json``; progress timers restart at ``now_s``."""
        job = cls(job_id=data["job_id"], world_size=data["world_size"], created_s=data["created_s"], config=config)
        job.generation = data["generation"]
        job.ranks = {int(k): v for k, v in data["ranks"].items()}
        job.host_by_rank = {int(k): v for k, v in data["host_by_rank"].items()}
        job.groups_by_rank = {int(k): v for k, v in data["groups_by_rank"].items()}
        job.standbys = list(data["standbys"])
        job.evicted_hosts = list(data["evicted_hosts"])
        job.progress_step = data["progress_step"]
        job.last_progress_s = now_s
        job.checkpoints = list(data["checkpoints"])
        job.finished_ranks = set(data["finished_ranks"])
        job.stopped = data["stopped"]
        job.finished = data["finished"]
        job.incident_id = data["incident_id"]
        job.budget.load_json(data["budget"])
        job.ettr = EttrTracker.from_json(data["ettr"])
        return job


def exit_text(exit_code: int) -> str:
    """``exited with 1`` or ``was killed by SIGKILL (-9)``."""
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-exit_code).name} ({exit_code})"
    return f"exited with {exit_code}"


class Controller:
    """Detection, localisation, recovery and ETTR for every job whose agents report here."""

    def __init__(self, config: RobustnessConfig, meta: RedisMeta, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.meta = meta
        self.clock = clock
        self.agents: dict[str, AgentState] = {}
        self.jobs: dict[str, JobState] = {}
        self.retired: OrderedDict[str, str] = OrderedDict()
        """agent id -> why it no longer reports (superseded, stopped)."""
        self.queues: dict[str, asyncio.Queue[Command]] = {}
        self.num_dropped_commands = 0
        self._requests: OrderedDict[str, str] = OrderedDict()
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._incidents: dict[str, Incident] = {}
        self._handlers: dict[str, asyncio.Task[None]] = {}
        self._dirty_agents: set[str] = set()
        self._dirty_jobs: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.ready = asyncio.Event()
        """Set once the state has been rebuilt from Redis."""

    # Lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild from Redis and run the detection loop, in the background: until Redis has answered
        and the state is rebuilt, calls get UNAVAILABLE and ``check_ready`` fails (health NOT_SERVING)."""
        self._loop_task = asyncio.create_task(self._run(), name="robustness-detect")

    async def check_ready(self) -> None:
        """Raise Unavailable until the state has been rebuilt from Redis."""
        if not self.ready.is_set():
            raise Unavailable("the controller's state is not rebuilt from redis yet")

    def _require_ready(self) -> None:
        if not self.ready.is_set():
            raise Unavailable("the controller is rebuilding its state from redis; retry")

    async def close(self) -> None:
        """Stop the loop and the incident handlers; flush state to Redis."""
        tasks = [t for t in [self._loop_task, *self._handlers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.ready.is_set():
            with contextlib.suppress(Exception):
                await self._flush()

    async def _run(self) -> None:
        delay_s = 0.1
        while True:
            try:
                await self._rebuild()
                break
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, Unavailable) as exc:
                logger.warning("rebuilding state from redis failed (%s); retrying in %.1f s", exc, delay_s)
            except Exception:
                logger.exception("rebuilding state from redis failed; retrying in %.1f s", delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, MAX_REBUILD_BACKOFF_S)
        self.ready.set()
        await self._detect_loop()

    async def _rebuild(self) -> None:
        """Read every job, agent and open incident, then adopt them at once (a failed read adopts nothing)."""
        now = self.clock()
        jobs: list[JobState] = []
        agents: list[AgentState] = []
        incidents: list[tuple[JobState, Incident]] = []
        for job_id in sorted(map(str, await self.meta.client.smembers(self.meta.key("jobs")))):
            data = await self.meta.get_json(self.meta.key("job", job_id))
            if data is None:
                continue
            job = JobState.from_json(data, self.config, now)
            jobs.append(job)
            for agent_id in [*job.ranks.values(), *job.standbys]:
                raw = await self.meta.get_json(self.meta.key("agent", agent_id))
                if raw is None:
                    continue
                agent = AgentState.from_json(raw)
                # The agents could not report while we were down: give them time to reconnect.
                agent.last_seen_s = now
                agents.append(agent)
            if job.incident_id:
                raw_incident = await self.meta.get_json(self.meta.key("incident", job.incident_id))
                if raw_incident is not None and job.active:
                    incidents.append((job, Incident.from_json(raw_incident)))
                else:
                    job.incident_id = None
        for job in jobs:
            self.jobs[job.job_id] = job
        for agent in agents:
            self.agents[agent.agent_id] = agent
            self.queues[agent.agent_id] = asyncio.Queue(self.config.command_queue_size)
        for job, incident in incidents:
            self._incidents[incident.incident_id] = incident
            self._handlers[job.job_id] = asyncio.create_task(self._resume(job, incident))
        if self.jobs:
            logger.info("rebuilt %d job(s), %d agent(s) from redis", len(self.jobs), len(self.agents))

    # Registration --------------------------------------------------------------------------------

    async def register(
        self,
        *,
        request_id: str,
        job_id: str,
        rank: int,
        world_size: int,
        host: str,
        pid: int,
        groups: Mapping[str, Sequence[int]],
        standby: bool,
    ) -> tuple[str, float, int]:
        """Register one agent; returns (agent id, heartbeat interval, job generation)."""
        self._require_ready()
        if not job_id or len(job_id) > 128 or ":" in job_id:
            raise InvalidArgument(f"job_id={job_id!r}: must be 1..128 characters without ':'")
        if not request_id:
            raise InvalidArgument("request_id is empty: mutating calls need an idempotency key")
        if world_size < 1 or world_size > 1_000_000:
            raise InvalidArgument(f"world_size={world_size}: must be in 1..1000000")
        if not standby and rank >= world_size:
            raise InvalidArgument(f"rank={rank}: must be < world_size={world_size}")
        for name, members in groups.items():
            if not members or any(m >= world_size for m in members) or (not standby and rank not in members):
                raise InvalidArgument(f"group {name!r}={list(members)}: ranks must be < world_size and include rank")
        async with self._lock:
            known = self._requests.get(request_id)
            if known is not None and known in self.agents:
                agent = self.agents[known]
                return known, self.config.heartbeat_interval_s, agent.generation
            job = self.jobs.get(job_id)
            if job is not None and job.world_size != world_size:
                raise InvalidArgument(
                    f"world_size={world_size}: job {job_id!r} was registered with world_size={job.world_size}"
                )
            if len(self.agents) >= self.config.max_agents:
                raise ResourceExhausted(f"{len(self.agents)} agents registered: the limit is {self.config.max_agents}")
            now = self.clock()
            if job is None:
                job = self.jobs[job_id] = JobState(
                    job_id=job_id, world_size=world_size, created_s=now, config=self.config
                )
                await self.meta.client.sadd(self.meta.key("jobs"), job_id)
            agent_id = uuid.uuid4().hex
            agent = AgentState(
                agent_id=agent_id,
                job_id=job_id,
                rank=rank,
                world_size=world_size,
                host=host,
                pid=pid,
                groups={k: sorted(v) for k, v in groups.items()},
                standby=standby,
                generation=job.generation,
                registered_at_s=now,
                last_seen_s=now,
                phase_since_s=now,
            )
            self.agents[agent_id] = agent
            self.queues[agent_id] = asyncio.Queue(self.config.command_queue_size)
            if standby:
                job.standbys.append(agent_id)
            else:
                previous = job.ranks.get(rank)
                if previous is not None and previous != agent_id:
                    self._retire(previous, f"superseded by agent {agent_id} of rank {rank}")
                job.ranks[rank] = agent_id
                job.host_by_rank[rank] = host
                job.groups_by_rank[rank] = agent.groups
                job.finished_ranks.discard(rank)
            self._requests[request_id] = agent_id
            while len(self._requests) > MAX_RETIRED_IDS:
                self._requests.popitem(last=False)
            await self.meta.put_many(
                {self.meta.key("agent", agent_id): agent.to_json(), self.meta.key("job", job_id): job.to_json()}
            )
        logger.info("agent %s registered: job %s rank %d host %s standby=%s", agent_id, job_id, rank, host, standby)
        return agent_id, self.config.heartbeat_interval_s, job.generation

    def _retire(self, agent_id: str, why: str) -> None:
        agent = self.agents.pop(agent_id, None)
        self.queues.pop(agent_id, None)
        self.retired[agent_id] = why
        while len(self.retired) > MAX_RETIRED_IDS:
            self.retired.popitem(last=False)
        if agent is not None:
            job = self.jobs.get(agent.job_id)
            if job is not None and agent_id in job.standbys:
                job.standbys.remove(agent_id)

    def agent(self, agent_id: str) -> AgentState:
        """The live agent ``agent_id``; NOT_FOUND when unknown, FAILED_PRECONDITION when retired (UNAVAILABLE
        while the state is being rebuilt: an agent not known yet may be known in a moment)."""
        self._require_ready()
        agent = self.agents.get(agent_id)
        if agent is not None:
            return agent
        why = self.retired.get(agent_id)
        if why is not None:
            raise FailedPrecondition(f"agent {agent_id} no longer reports: {why}; register again")
        raise NotFound(f"agent {agent_id!r} is not registered")

    # Reports -------------------------------------------------------------------------------------

    async def report(self, agent_id: str, observed_at_s: float, item: ReportItem) -> bool:
        """Take one report item; False when it was ignored as stale or out of order."""
        agent = self.agent(agent_id)
        job = self.jobs[agent.job_id]
        now = self.clock()
        last_seen_s, agent.last_seen_s = agent.last_seen_s, now
        self._dirty_agents.add(agent_id)
        if isinstance(item, Heartbeat | StepMetrics) and agent.generation != job.generation:
            return False
        if isinstance(item, Heartbeat):
            return self._on_heartbeat(job, agent, observed_at_s, item, now)
        if isinstance(item, StepMetrics):
            return self._on_step(job, agent, item, now)
        if isinstance(item, ProcessExit):
            await self._on_exit(job, agent, item, now, last_seen_s)
        elif isinstance(item, LogMatch):
            self._on_log(job, agent, item, now)
        elif isinstance(item, StackDump | ActionResult):
            waiter = self._waiters.get(item.command_id)
            if waiter is None or waiter.done():
                return False
            waiter.set_result(item)
        elif isinstance(item, CheckpointSaved):
            self._on_checkpoint(job, item)
        elif isinstance(item, CheckpointRejected):
            await self._on_rejected(job, agent, item, now)
        return True

    def _on_heartbeat(self, job: JobState, agent: AgentState, observed_s: float, hb: Heartbeat, now: float) -> bool:
        if observed_s < agent.last_observed_s or hb.step < agent.step:
            return False
        agent.last_observed_s = observed_s
        agent.num_heartbeats += 1
        if hb.phase != agent.phase:
            job.timeouts.observe_phase(agent.phase, now - agent.phase_since_s)
            agent.phase, agent.phase_since_s = hb.phase, now
        agent.step = hb.step
        if hb.phase == Phase.STARTUP and hb.startup_progress > agent.startup_progress:
            # Start-up work done (a warm-start step): progress before the first step. The hang timer
            # restarts; the step is untouched, so step numbers stay the job's own.
            agent.startup_progress = hb.startup_progress
            job.last_progress_s = now
        # Being in step s means step s-1 is done: progress for jobs that send no step metrics.
        self._progress(job, agent, hb.step - 1, now)
        return True

    def _on_step(self, job: JobState, agent: AgentState, m: StepMetrics, now: float) -> bool:
        if m.step < agent.step - 1 or agent.standby:
            return False
        if m.has_nan_or_inf or not (math.isfinite(m.loss) and math.isfinite(m.grad_norm)):
            self._open(
                job,
                FaultKind.NAN,
                f"rank {agent.rank}: NaN/Inf at step {m.step} (loss {m.loss}, grad norm {m.grad_norm})",
                [agent.rank],
                now,
                detection_s=0.0,
                fault_step=m.step,
            )
            return True
        job.timeouts.observe_step(m.step_time_s)
        if agent.generation == job.generation:
            job.straggler.observe(agent.rank, m.step, m.compute_time_s)
        if agent.rank == min(job.ranks, default=0) and job.loss_spikes.observe(m.loss):
            self._alert(
                job, FaultKind.LOSS_SPIKE, f"rank {agent.rank}: loss {m.loss:.4g} at step {m.step}", [agent.rank], now
            )
        self._progress(job, agent, m.step, now)
        stragglers = job.straggler.close_window_if_due(m.step, job.ranks)
        if stragglers and job.incident_id is None:
            scores = ", ".join(f"rank {r} x{job.straggler.last_scores.get(r, 0):.2f}" for r in stragglers)
            self._open(
                job, FaultKind.STRAGGLER, f"compute time above the group's median: {scores}", stragglers, now, 0.0
            )
        return True

    def _progress(self, job: JobState, agent: AgentState, step: int, now: float) -> None:
        if agent.generation != job.generation or step <= job.progress_step:
            return
        job.progress_step = step
        job.last_progress_s = now
        job.ettr.on_step(step, now)
        self._dirty_jobs.add(job.job_id)

    async def _on_exit(
        self, job: JobState, agent: AgentState, item: ProcessExit, now: float, last_seen_s: float
    ) -> None:
        """An exit: 0 counts the rank finished, any other code opens a crash incident. Its detection time
        is the silence since the process was last heard (a launcher reports the exit on its behalf)."""
        agent.exit_code = item.exit_code
        if item.exit_code == 0:
            job.finished_ranks.add(agent.rank)
            if job.finished_ranks >= set(range(job.world_size)) and job.incident_id is None:
                job.finished = True
                job.ettr.finish(now)
                logger.info("job %s finished", job.job_id)
        elif job.active and agent.generation == job.generation:
            self._open(
                job,
                FaultKind.CRASH,
                f"rank {agent.rank} on {agent.host}: {f'process {agent.pid}' if agent.pid else 'its process'} "
                f"{exit_text(item.exit_code)}",
                [agent.rank],
                now,
                detection_s=max(0.0, now - last_seen_s),
            )
        await self._save_now(job, agent)

    def _on_log(self, job: JobState, agent: AgentState, item: LogMatch, now: float) -> None:
        line = item.line[: self.config.max_text_bytes]
        if item.signature in SECONDARY_SIGNATURES:
            if job.pending_log is None and job.incident_id is None:
                job.pending_log = (
                    now,
                    agent.rank,
                    f"rank {agent.rank} on {agent.host}: {item.signature}: {line}",
                    item.signature,
                )
            return
        self._open(
            job,
            FaultKind.LOG_ERROR,
            f"rank {agent.rank} on {agent.host}: {item.signature}: {line}",
            [agent.rank],
            now,
            detection_s=0.0,
            signature=item.signature,
        )

    def _on_checkpoint(self, job: JobState, item: CheckpointSaved) -> None:
        job.checkpoints = [c for c in job.checkpoints if c["step"] != item.step]
        job.checkpoints.append({"step": item.step, "path": item.path, "sha256": item.sha256, "bad": False})
        job.checkpoints = sorted(job.checkpoints, key=lambda c: c["step"])[-MAX_CHECKPOINTS:]
        self._dirty_jobs.add(job.job_id)

    async def _on_rejected(self, job: JobState, agent: AgentState, item: CheckpointRejected, now: float) -> None:
        for ckpt in job.checkpoints:
            if ckpt["step"] == item.step:
                ckpt["bad"] = True
        fell_back = item.fallback_step >= 0
        incident = Incident(
            incident_id=uuid.uuid4().hex[:16],
            job_id=job.job_id,
            fault=FaultKind.CORRUPT_CHECKPOINT,
            state=IncidentState.RECOVERED,
            summary=(
                f"rank {agent.rank}: checkpoint of step {item.step} at {item.path} failed its checksum "
                f"(expected {item.expected_sha256[:12]}, found {item.actual_sha256[:12] or 'nothing'})"
            ),
            detected_at_s=now,
            detection_s=0.0,
            suspect_ranks=[agent.rank],
            suspect_hosts=[agent.host],
            recovery_steps=[
                RecoveryStep(
                    RecoveryAction.ROLLBACK,
                    now,
                    succeeded=fell_back,
                    detail=f"loaded step {item.fallback_step} instead"
                    if fell_back
                    else "no good checkpoint: started afresh",
                )
            ],
            num_lost_steps=max(0, item.step - item.fallback_step),
            fault_step=item.step,
        )
        await self._save_incident(incident)
        self._dirty_jobs.add(job.job_id)

    # Incidents -----------------------------------------------------------------------------------

    def _open(
        self,
        job: JobState,
        fault: FaultKind,
        summary: str,
        evidence: list[int],
        now: float,
        detection_s: float,
        *,
        fault_step: int | None = None,
        signature: str = "",
    ) -> None:
        """Open an incident and start handling it, or add this to the one already open."""
        if not job.active:
            return
        if job.incident_id is not None:
            open_incident = self._incidents.get(job.incident_id)
            if open_incident is not None and len(open_incident.summary) < self.config.max_text_bytes:
                open_incident.summary += f"; also: {summary}"
            return
        incident = Incident(
            incident_id=uuid.uuid4().hex[:16],
            job_id=job.job_id,
            fault=fault,
            state=IncidentState.OPEN,
            summary=summary,
            detected_at_s=now,
            detection_s=detection_s,
            suspect_ranks=list(evidence),
            suspect_hosts=hosts_of(evidence, job.host_by_rank),
            fault_step=job.progress_step if fault_step is None else fault_step,
            detected_step=job.progress_step,
        )
        logger.warning("incident %s in job %s: %s", incident.incident_id, job.job_id, summary)
        job.incident_id = incident.incident_id
        job.pending_log = None
        job.ettr.interrupt()
        self._incidents[incident.incident_id] = incident
        self._handlers[job.job_id] = asyncio.create_task(
            self._handle(job, incident, evidence, signature), name=f"incident-{incident.incident_id}"
        )

    def _alert(self, job: JobState, fault: FaultKind, summary: str, ranks: list[int], now: float) -> None:
        """Record an incident that needs no recovery (a loss spike)."""
        incident = Incident(
            incident_id=uuid.uuid4().hex[:16],
            job_id=job.job_id,
            fault=fault,
            state=IncidentState.RECOVERED,
            summary=summary + " (alert only)",
            detected_at_s=now,
            detection_s=0.0,
            suspect_ranks=ranks,
            suspect_hosts=hosts_of(ranks, job.host_by_rank),
            fault_step=job.progress_step,
        )
        task = asyncio.create_task(self._save_incident(incident))
        task.add_done_callback(lambda t: t.exception())

    async def _handle(self, job: JobState, incident: Incident, evidence: list[int], signature: str) -> None:
        try:
            await self._localize(job, incident, evidence)
            action = job.budget.start_action(incident.fault, self.clock(), signature)
            await self._recover(job, incident, action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("handling incident %s failed", incident.incident_id)
            incident.summary += f"; controller error: {type(exc).__name__}: {exc}"
            incident.state = IncidentState.UNRECOVERED
            job.incident_id = None
            await self._save_incident(incident)
        finally:
            self._handlers.pop(job.job_id, None)

    async def _resume(self, job: JobState, incident: Incident) -> None:
        """After a controller restart: wait for the recovery under way, then go on up the ladder."""
        try:
            last = incident.recovery_steps[-1].action if incident.recovery_steps else None
            if last is not None and await self._wait_progress(job, job.progress_step):
                await self._close(job, incident, IncidentState.RECOVERED, last)
                return
            action = job.budget.admit(next_action(last) if last else RecoveryAction.RESTART_IN_PLACE)
            await self._recover(job, incident, action)
        finally:
            self._handlers.pop(job.job_id, None)

    async def _localize(self, job: JobState, incident: Incident, evidence: list[int]) -> None:
        first = list(evidence)
        if incident.fault == FaultKind.HANG:
            agents = {r: self.agents[a] for r, a in job.ranks.items() if a in self.agents}
            phases = {r: a.phase for r, a in agents.items()}
            steps = {r: a.step for r, a in agents.items()}
            dumps = await self._collect_stacks(job, incident)
            first += outliers_by_stacks(dumps, sorted(job.ranks)) + outliers_by_phase(phases, steps)
        suspects = with_layout(first, sorted(job.ranks), job.groups_by_rank)
        incident.suspect_ranks = suspects
        incident.suspect_hosts = hosts_of(suspects, job.host_by_rank)
        incident.localization_s = self.clock() - incident.detected_at_s
        await self._save_incident(incident)

    async def _collect_stacks(self, job: JobState, incident: Incident) -> dict[int, str]:
        waits: dict[int, asyncio.Future[Any]] = {}
        for rank, agent_id in job.ranks.items():
            agent = self.agents.get(agent_id)
            if agent is None or agent.exit_code is not None:
                continue
            command = Command(uuid.uuid4().hex, CommandKind.DUMP_STACKS, incident.incident_id, "localising a hang")
            waits[rank] = self._expect(command.command_id)
            self._send(agent_id, command)
        if not waits:
            return {}
        await asyncio.wait(list(waits.values()), timeout=self.config.stack_dump_timeout_s)
        dumps = {}
        for rank, fut in waits.items():
            if fut.done() and not fut.cancelled():
                dumps[rank] = fut.result().text
            else:
                fut.cancel()
        for fut in waits.values():
            self._forget(fut)
        return dumps

    async def _recover(self, job: JobState, incident: Incident, action: RecoveryAction) -> None:
        while True:
            if action == RecoveryAction.STOP_JOB:
                await self._stop_job(job, incident)
                return
            started = self.clock()
            step = RecoveryStep(action, started)
            incident.recovery_steps.append(step)
            incident.state = IncidentState.RECOVERING
            await self._save_incident(incident)
            resume_step, detail = await self._act(job, incident, action)
            if resume_step is not None:
                recovered = await self._wait_progress(job, resume_step)
                detail += (
                    "; progress resumed" if recovered else f"; no progress within {self.config.recovery_timeout_s} s"
                )
            else:
                recovered = False
            step.duration_s = self.clock() - started
            step.succeeded = recovered
            step.detail = detail[: self.config.max_text_bytes]
            if recovered:
                job.budget.recovered(incident.fault, action, self.clock())
                await self._close(job, incident, IncidentState.RECOVERED, action)
                return
            await self._save_incident(incident)
            action = job.budget.admit(next_action(action))

    async def _act(self, job: JobState, incident: Incident, action: RecoveryAction) -> tuple[int | None, str]:
        """Carry out one rung; returns (step resumed from, what was done) or (None, why it failed)."""
        previous = [s for s in incident.recovery_steps[:-1] if s.action in (RecoveryAction.ROLLBACK,)]
        skip_until = 0
        if action == RecoveryAction.ROLLBACK:
            # Before the fault's step, and before any checkpoint an earlier rollback already tried.
            limit = incident.fault_step - 1 if incident.fault_step >= 0 else job.progress_step
            if previous:
                limit = min(limit, job.good_checkpoint(limit) - 1)
            resume = job.good_checkpoint(limit)
            if incident.fault == FaultKind.NAN:
                skip_until = incident.fault_step + 1
        else:
            resume = job.good_checkpoint(job.progress_step)
        adopt: dict[int, str] = {}
        if action == RecoveryAction.REPLACE_NODE:
            culprit = incident.suspect_ranks[0] if incident.suspect_ranks else 0
            host = job.host_by_rank.get(culprit, "")
            moving = sorted(r for r, h in job.host_by_rank.items() if h == host)
            free = [a for a in job.standbys if a in self.agents and self.agents[a].host not in job.evicted_hosts]
            if len(free) < len(moving):
                return None, f"replace node {host!r}: {len(moving)} rank(s) to move, {len(free)} warm standby(s) free"
            adopt = dict(zip(moving, free, strict=False))
            if host not in job.evicted_hosts:
                job.evicted_hosts.append(host)
        lost = max(0, job.progress_step - resume)
        incident.num_lost_steps += lost
        job.generation += 1
        job.ettr.rollback(resume)
        job.progress_step = resume
        job.last_progress_s = self.clock()
        job.straggler.reset()
        waits: dict[str, asyncio.Future[Any]] = {}
        for rank, agent_id in sorted(job.ranks.items()):
            kind = CommandKind.RESTART_PROCESS
            target = agent_id
            if rank in adopt:
                # The evicted rank's process is stopped; its standby starts it anew.
                stop = Command(uuid.uuid4().hex, CommandKind.STOP_PROCESS, incident.incident_id, "node evicted")
                self._send(agent_id, stop)
                kind, target = CommandKind.ADOPT_RANK, adopt[rank]
                job.standbys.remove(target)
            command = Command(
                uuid.uuid4().hex,
                kind,
                incident.incident_id,
                f"{action.name.lower()} after {incident.fault.name.lower()}",
                resume_step=resume,
                skip_data_until_step=skip_until,
                rank=rank,
                generation=job.generation,
            )
            waits[target] = self._expect(command.command_id)
            self._send(target, command)
        await self._save_job(job)
        await asyncio.wait(list(waits.values()), timeout=self.config.recovery_timeout_s)
        failures = []
        for agent_id, fut in waits.items():
            if not fut.done() or fut.cancelled():
                failures.append(f"agent {agent_id[:8]}: no answer")
            elif not fut.result().done:
                failures.append(f"agent {agent_id[:8]}: {fut.result().detail}")
            self._forget(fut)
        for target in adopt.values():
            self._retire(target, "adopted a rank: it reports under the new process's agent id")
        where = f"from step {resume}" if resume >= 0 else "from scratch"
        detail = f"{action.name.lower()} of {len(waits)} rank(s), generation {job.generation}, {where}"
        if adopt:
            detail += f"; ranks {sorted(adopt)} moved to warm standby"
        if skip_until:
            detail += f"; data before step {skip_until} skipped"
        if failures:
            return None, detail + "; actuator failed: " + "; ".join(failures)
        return resume, detail

    async def _wait_progress(self, job: JobState, resume_step: int) -> bool:
        """Whether the job makes progress past ``resume_step`` (or, restarted, through its start-up work)
        within the recovery timeout; False at once when a process of the current generation crashes."""
        deadline = self.clock() + self.config.recovery_timeout_s
        while self.clock() < deadline:
            if job.progress_step > resume_step or self._starting_up(job):
                return True
            crashed = [
                a
                for a in (self.agents.get(i) for i in job.ranks.values())
                if a is not None and a.generation == job.generation and a.exit_code not in (None, 0)
            ]
            if crashed:
                return False
            await asyncio.sleep(self.config.check_interval_s)
        return False

    def _starting_up(self, job: JobState) -> bool:
        """Whether a process of the job's current generation has reported start-up progress (a long warm
        start after a restart is progress, well before its first step)."""
        agents = (self.agents.get(a) for a in job.ranks.values())
        return any(a is not None and a.generation == job.generation and a.startup_progress > 0 for a in agents)

    async def _stop_job(self, job: JobState, incident: Incident) -> None:
        now = self.clock()
        for agent_id in job.ranks.values():
            if agent_id in self.agents:
                self._send(
                    agent_id, Command(uuid.uuid4().hex, CommandKind.STOP_PROCESS, incident.incident_id, "job stopped")
                )
        incident.recovery_steps.append(
            RecoveryStep(
                RecoveryAction.STOP_JOB,
                now,
                succeeded=True,
                detail=f"stopped after {job.budget.num_attempts} recovery action(s) (budget {job.budget.max_attempts})",
            )
        )
        job.stopped = True
        job.ettr.finish(now)
        await self._close(job, incident, IncidentState.UNRECOVERED, RecoveryAction.STOP_JOB)

    async def _close(self, job: JobState, incident: Incident, state: IncidentState, action: RecoveryAction) -> None:
        incident.state = state
        incident.recovery_s = max(0.0, self.clock() - incident.detected_at_s - incident.localization_s)
        job.incident_id = None
        job.last_progress_s = self.clock()
        for agent_id in job.ranks.values():
            agent = self.agents.get(agent_id)
            if agent is not None:
                agent.last_seen_s = max(agent.last_seen_s, self.clock())
        logger.warning(
            "incident %s %s after %s (%.1f s)",
            incident.incident_id,
            state.name.lower(),
            action.name,
            incident.recovery_s,
        )
        await self._save_incident(incident)
        await self._save_job(job)
        self._incidents.pop(incident.incident_id, None)

    # Commands ------------------------------------------------------------------------------------

    def _send(self, agent_id: str, command: Command) -> None:
        queue = self.queues.get(agent_id)
        if queue is None:
            return
        if queue.full():
            queue.get_nowait()
            self.num_dropped_commands += 1
            logger.warning("command queue of agent %s full: dropped its oldest command", agent_id)
        queue.put_nowait(command)

    def _expect(self, command_id: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = fut
        fut.command_id = command_id  # type: ignore[attr-defined]
        return fut

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        self._waiters.pop(fut.command_id, None)  # type: ignore[attr-defined]

    async def commands(self, agent_id: str) -> AsyncIterator[Command]:
        """The commands for one agent as they come, until the caller stops listening."""
        self.agent(agent_id)
        queue = self.queues[agent_id]
        while True:
            command = await queue.get()
            yield command

    def request_stacks(self, agent_id: str, reason: str = "requested") -> str:
        """Ask one agent for a stack dump (its answer arrives as a report); returns the command id."""
        self.agent(agent_id)
        command = Command(uuid.uuid4().hex, CommandKind.DUMP_STACKS, "", reason)
        self._send(agent_id, command)
        return command.command_id

    # Detection loop ------------------------------------------------------------------------------

    async def _detect_loop(self) -> None:
        last_flush = self.clock()
        while True:
            await asyncio.sleep(self.config.check_interval_s)
            try:
                now = self.clock()
                for job in list(self.jobs.values()):
                    if job.active and job.incident_id is None:
                        self._check_job(job, now)
                if now - last_flush >= 1.0:
                    last_flush = now
                    await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("detection loop iteration failed; going on")

    def _check_job(self, job: JobState, now: float) -> None:
        if job.pending_log is not None and now - job.pending_log[0] > SECONDARY_GRACE_S:
            seen, rank, summary, signature = job.pending_log
            job.pending_log = None
            self._open(job, FaultKind.LOG_ERROR, summary, [rank], now, now - seen, signature=signature)
            return
        agents = [self.agents[a] for a in job.ranks.values() if a in self.agents]
        running = [a for a in agents if a.exit_code is None and a.generation == job.generation]
        for agent in running:
            allowance = self.config.liveness_timeout_s if agent.num_heartbeats else self.config.startup_timeout_s
            silent = now - agent.last_seen_s
            if silent > allowance:
                self._open(
                    job,
                    FaultKind.HANG,
                    f"rank {agent.rank} on {agent.host}: nothing heard for {silent:.1f} s while its process lives "
                    f"(last in {agent.phase.name} at step {agent.step})",
                    [agent.rank],
                    now,
                    detection_s=silent,
                )
                return
        if not running or len(job.ranks) < job.world_size:
            return
        phase = slowest_phase({a.rank: a.phase for a in running})
        timeout = job.timeouts.timeout_s(phase)
        if job.progress_step < 0 or any(a.num_heartbeats == 0 for a in running):
            timeout = max(timeout, self.config.startup_timeout_s)
        if phase in (Phase.CHECKPOINT, Phase.STARTUP):
            job.long_phase_seen_s = now
        # A compute phase's timeout runs from the end of a checkpoint or start-up, not from the last
        # step: right after a long save the job has had no time to finish a step yet.
        stalled_since = job.last_progress_s
        if phase not in (Phase.CHECKPOINT, Phase.STARTUP):
            stalled_since = max(stalled_since, job.long_phase_seen_s)
        stalled = now - stalled_since
        if stalled > timeout:
            self._open(
                job,
                FaultKind.HANG,
                f"no progress for {stalled:.1f} s past step {job.progress_step} "
                f"(timeout {timeout:.1f} s in {phase.name}); "
                "heartbeats go on",
                [],
                now,
                detection_s=stalled,
            )

    # Reads ---------------------------------------------------------------------------------------

    async def list_incidents(self, job_id: str, since_s: float | None, max_incidents: int) -> list[Incident]:
        """Incidents newest first, from Redis (open ones as they stand now)."""
        self._require_ready()
        limit = min(max_incidents or DEFAULT_MAX_INCIDENTS, MAX_INCIDENTS_PER_CALL)
        key = self.meta.key("incidents", job_id) if job_id else self.meta.key("incidents")
        low = since_s if since_s is not None else "-inf"
        ids = [str(i) for i in await self.meta.client.zrevrangebyscore(key, "+inf", low, start=0, num=limit)]
        if not ids:
            return []
        raw = await self.meta.client.mget([self.meta.key("incident", i) for i in ids])
        out = []
        for incident_id, text in zip(ids, raw, strict=True):
            live = self._incidents.get(incident_id)
            if live is not None:
                out.append(live)
            elif text is not None:
                out.append(Incident.from_json(json.loads(text)))
        return out

    def ettr(self, job_id: str, windows_s: Sequence[float]) -> tuple[tuple[float, float], list[tuple[float, float]]]:
        """((wall, productive) cumulative, [(wall, productive) per window])."""
        self._require_ready()
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} has no registered agents")
        if len(windows_s) > MAX_WINDOWS:
            raise InvalidArgument(f"window_s: {len(windows_s)} windows asked, at most {MAX_WINDOWS}")
        for w in windows_s:
            if not (math.isfinite(w) and w > 0):
                raise InvalidArgument(f"window_s={w}: windows must be finite and > 0")
        now = self.clock()
        windows = list(windows_s) or list(self.config.ettr_windows_s)
        return job.ettr.figure(now), [job.ettr.figure(now, w) for w in windows]

    # Redis ---------------------------------------------------------------------------------------

    async def _save_incident(self, incident: Incident) -> None:
        key = self.meta.key("incident", incident.incident_id)
        per_job = self.meta.key("incidents", incident.job_id)
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.set(key, json.dumps(incident.to_json()))
            pipe.zadd(per_job, {incident.incident_id: incident.detected_at_s})
            pipe.zadd(self.meta.key("incidents"), {incident.incident_id: incident.detected_at_s})
            await pipe.execute()
        excess = await self.meta.client.zcard(per_job) - self.config.max_incidents_per_job
        if excess > 0:
            old = await self.meta.client.zrange(per_job, 0, excess - 1)
            async with self.meta.client.pipeline(transaction=True) as pipe:
                pipe.zrem(per_job, *old)
                pipe.zrem(self.meta.key("incidents"), *old)
                pipe.delete(*[self.meta.key("incident", i) for i in old])
                await pipe.execute()

    async def _save_job(self, job: JobState) -> None:
        self._dirty_jobs.discard(job.job_id)
        await self.meta.put_many({self.meta.key("job", job.job_id): job.to_json()})

    async def _save_now(self, job: JobState, agent: AgentState) -> None:
        self._dirty_agents.discard(agent.agent_id)
        self._dirty_jobs.discard(job.job_id)
        await self.meta.put_many(
            {self.meta.key("agent", agent.agent_id): agent.to_json(), self.meta.key("job", job.job_id): job.to_json()}
        )

    async def _flush(self) -> None:
        values: dict[str, Any] = {}
        for agent_id in self._dirty_agents:
            agent = self.agents.get(agent_id)
            if agent is not None:
                values[self.meta.key("agent", agent_id)] = agent.to_json()
        for job_id in self._dirty_jobs:
            values[self.meta.key("job", job_id)] = self.jobs[job_id].to_json()
        self._dirty_agents.clear()
        self._dirty_jobs.clear()
        if values:
            await self.meta.put_many(values)
