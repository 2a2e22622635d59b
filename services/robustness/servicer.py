"""gRPC servicer of the robustness monitor: proto <-> domain conversion only; the logic is in core."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from seedstack.robustness.v1 import robustness_pb2 as pb
from seedstack.robustness.v1 import robustness_pb2_grpc as pb_grpc

from services.common.errors import InvalidArgument
from services.robustness.core import Controller
from services.robustness.model import (
    ActionResult,
    CheckpointRejected,
    CheckpointSaved,
    Command,
    Heartbeat,
    Incident,
    LogMatch,
    Phase,
    ProcessExit,
    ReportItem,
    StackDump,
    StepMetrics,
)


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def item_from_proto(request: pb.ReportRequest, max_text_bytes: int) -> ReportItem:
    """The domain item of one ReportRequest; InvalidArgument when it carries none or a bad value."""
    which = request.WhichOneof("item")
    if which == "heartbeat":
        hb = request.heartbeat
        if hb.phase not in Phase._value2member_map_:
            raise InvalidArgument(f"heartbeat.phase={hb.phase}: unknown phase")
        if hb.startup_progress < 0:
            raise InvalidArgument(f"heartbeat.startup_progress={hb.startup_progress}: must be >= 0")
        return Heartbeat(hb.step, Phase(hb.phase), hb.startup_progress)
    if which == "step_metrics":
        m = request.step_metrics
        return StepMetrics(m.step, m.loss, m.grad_norm, m.has_nan_or_inf, m.step_time_s, m.compute_time_s)
    if which == "process_exit":
        return ProcessExit(request.process_exit.exit_code)
    if which == "log_match":
        return LogMatch(request.log_match.signature[:64], request.log_match.line[:max_text_bytes])
    if which == "stack_dump":
        d = request.stack_dump
        return StackDump(d.command_id, d.tool[:32], d.text[:max_text_bytes])
    if which == "checkpoint_saved":
        c = request.checkpoint_saved
        return CheckpointSaved(c.step, c.path[:4096], c.sha256[:64])
    if which == "action_result":
        a = request.action_result
        return ActionResult(a.command_id, a.done, a.detail[:max_text_bytes], a.duration_s)
    if which == "checkpoint_rejected":
        r = request.checkpoint_rejected
        return CheckpointRejected(r.step, r.path[:4096], r.expected_sha256[:64], r.actual_sha256[:64], r.fallback_step)
    raise InvalidArgument("report item is empty: set one of heartbeat, step_metrics, process_exit, ...")


def command_to_proto(command: Command) -> pb.WatchCommandsResponse:
    """The wire form of one command."""
    return pb.WatchCommandsResponse(
        command_id=command.command_id,
        kind=int(command.kind),  # type: ignore[arg-type]
        incident_id=command.incident_id,
        reason=command.reason,
        resume_step=command.resume_step,
        skip_data_until_step=command.skip_data_until_step,
        rank=command.rank,
        generation=command.generation,
    )


def incident_to_proto(incident: Incident) -> pb.Incident:
    """The wire form of one incident."""
    return pb.Incident(
        incident_id=incident.incident_id,
        job_id=incident.job_id,
        fault=int(incident.fault),  # type: ignore[arg-type]
        state=int(incident.state),  # type: ignore[arg-type]
        summary=incident.summary,
        detected_at=_timestamp(incident.detected_at_s),
        suspect_ranks=incident.suspect_ranks,
        suspect_hosts=incident.suspect_hosts,
        recovery_steps=[
            pb.RecoveryStep(
                action=int(s.action),  # type: ignore[arg-type]
                started_at=_timestamp(s.started_at_s),
                duration_s=s.duration_s,
                succeeded=s.succeeded,
                detail=s.detail,
            )
            for s in incident.recovery_steps
        ],
        detection_s=incident.detection_s,
        localization_s=incident.localization_s,
        recovery_s=incident.recovery_s,
        num_lost_steps=incident.num_lost_steps,
    )


class _RateLimit:
    """Token bucket of one stream: waiting here stops reading, which back-pressures the sender."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.tokens = rate_per_s
        self.last = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.rate_per_s, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        if self.tokens < 1:
            await asyncio.sleep((1 - self.tokens) / self.rate_per_s)
            self.tokens = 1
            self.last = time.monotonic()
        self.tokens -= 1


class RobustnessServicer(pb_grpc.RobustnessServicer):
    """Converts requests for the Controller and its answers back."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: Any) -> pb.RegisterAgentResponse:
        agent_id, interval_s, generation = await self.controller.register(
            request_id=request.request_id,
            job_id=request.job_id,
            rank=request.rank,
            world_size=request.world_size,
            host=request.topology.host or context.peer(),
            pid=request.pid,
            groups={g.name: list(g.ranks) for g in request.groups},
            standby=request.standby,
        )
        return pb.RegisterAgentResponse(agent_id=agent_id, heartbeat_interval_s=interval_s, generation=generation)

    async def Report(self, request_iterator: AsyncIterator[pb.ReportRequest], context: Any) -> pb.ReportResponse:
        limit = _RateLimit(self.controller.config.max_report_rate_per_s)
        num_accepted = num_ignored = 0
        agent_id = ""
        async for request in request_iterator:
            if not agent_id:
                agent_id = request.agent_id
                self.controller.agent(agent_id)
            elif request.agent_id != agent_id:
                raise InvalidArgument(f"agent_id={request.agent_id!r}: this stream reports for {agent_id!r}")
            await limit.take()
            item = item_from_proto(request, self.controller.config.max_text_bytes)
            observed_s = request.observed_at.ToNanoseconds() / 1e9 if request.HasField("observed_at") else time.time()
            if await self.controller.report(agent_id, observed_s, item):
                num_accepted += 1
            else:
                num_ignored += 1
        return pb.ReportResponse(num_accepted=num_accepted, num_ignored=num_ignored)

    async def WatchCommands(
        self, request: pb.WatchCommandsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchCommandsResponse]:
        async for command in self.controller.commands(request.agent_id):
            yield command_to_proto(command)

    async def ListIncidents(self, request: pb.ListIncidentsRequest, context: Any) -> pb.ListIncidentsResponse:
        since = request.since.ToNanoseconds() / 1e9 if request.HasField("since") else None
        incidents = await self.controller.list_incidents(request.job_id, since, request.max_incidents)
        return pb.ListIncidentsResponse(incidents=[incident_to_proto(i) for i in incidents])

    async def GetEttr(self, request: pb.GetEttrRequest, context: Any) -> pb.GetEttrResponse:
        cumulative, windows = self.controller.ettr(request.job_id, list(request.window_s))
        return pb.GetEttrResponse(cumulative=_figure(*cumulative), windows=[_figure(*w) for w in windows])


def _figure(wall_s: float, productive_s: float) -> pb.EttrFigure:
    return pb.EttrFigure(wall_s=wall_s, productive_s=productive_s, ettr=productive_s / wall_s if wall_s > 0 else 0.0)
