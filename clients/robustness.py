"""Typed async client of the Robustness service (seedstack.robustness.v1.Robustness)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from seedstack.robustness.v1 import robustness_pb2 as pb
from seedstack.robustness.v1 import robustness_pb2_grpc as pb_grpc

from clients.base import BaseClient


class RobustnessClient(BaseClient):
    """One method per RPC of ``seedstack.robustness.v1.Robustness``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.RobustnessStub
    service_name = "robustness"

    async def register_agent(
        self, request: pb.RegisterAgentRequest, *, timeout_s: float | None = None
    ) -> pb.RegisterAgentResponse:
        """Call Robustness.RegisterAgent (retried on UNAVAILABLE)."""
        return await self._unary("RegisterAgent", request, timeout_s)  # type: ignore[no-any-return]

    async def report(
        self, requests: AsyncIterable[pb.ReportRequest], *, timeout_s: float | None = None
    ) -> pb.ReportResponse:
        """Stream requests to Robustness.Report; returns its one response."""
        return await self._client_stream("Report", requests, timeout_s)  # type: ignore[no-any-return]

    def watch_commands(
        self, request: pb.WatchCommandsRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.WatchCommandsResponse]:
        """Responses of Robustness.WatchCommands as they arrive."""
        return self._server_stream("WatchCommands", request, timeout_s)

    async def list_incidents(
        self, request: pb.ListIncidentsRequest, *, timeout_s: float | None = None
    ) -> pb.ListIncidentsResponse:
        """Call Robustness.ListIncidents (retried on UNAVAILABLE)."""
        return await self._unary("ListIncidents", request, timeout_s)  # type: ignore[no-any-return]

    async def get_ettr(self, request: pb.GetEttrRequest, *, timeout_s: float | None = None) -> pb.GetEttrResponse:
        """Call Robustness.GetEttr (retried on UNAVAILABLE)."""
        return await self._unary("GetEttr", request, timeout_s)  # type: ignore[no-any-return]


INCIDENT_COLUMNS = (
    "detected",
    "job",
    "fault",
    "state",
    "suspects",
    "hosts",
    "actions",
    "detect_s",
    "locate_s",
    "recover_s",
    "lost_steps",
    "summary",
)
"""Column names of ``incidents_table`` rows, in display order."""


def incident_row(incident: pb.Incident) -> dict[str, str]:
    """One incident as a row of display strings keyed by ``INCIDENT_COLUMNS``."""
    import datetime

    detected = datetime.datetime.fromtimestamp(incident.detected_at.ToNanoseconds() / 1e9, datetime.UTC)
    actions = ", ".join(
        f"{pb.RecoveryAction.Name(s.action).removeprefix('RECOVERY_ACTION_').lower()}"
        f"{'' if s.succeeded else ' (failed)'}"
        for s in incident.recovery_steps
    )
    return {
        "detected": detected.strftime("%Y-%m-%d %H:%M:%S"),
        "job": incident.job_id,
        "fault": pb.FaultKind.Name(incident.fault).removeprefix("FAULT_KIND_").lower(),
        "state": pb.IncidentState.Name(incident.state).removeprefix("INCIDENT_STATE_").lower(),
        "suspects": ",".join(str(r) for r in incident.suspect_ranks[:4])
        + ("..." if len(incident.suspect_ranks) > 4 else ""),
        "hosts": ",".join(dict.fromkeys(h for h in incident.suspect_hosts[:4] if h)),
        "actions": actions or "-",
        "detect_s": f"{incident.detection_s:.1f}",
        "locate_s": f"{incident.localization_s:.1f}",
        "recover_s": f"{incident.recovery_s:.1f}",
        "lost_steps": str(incident.num_lost_steps),
        "summary": incident.summary,
    }


async def incidents_table(target: str, job_id: str = "", max_incidents: int = 50) -> list[dict[str, str]]:
    """Rows for ``seedctl incidents``, newest first: ``target`` is the controller's ``host:port`` or a
    ``redis://`` URL to resolve it through the service registry."""
    if target.startswith(("redis://", "rediss://", "unix://")):
        client = await RobustnessClient.resolve(target)
    else:
        client = RobustnessClient(target)
    async with client:
        reply = await client.list_incidents(pb.ListIncidentsRequest(job_id=job_id, max_incidents=max_incidents))
    return [incident_row(i) for i in reply.incidents]
