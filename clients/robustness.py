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
