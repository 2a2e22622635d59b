"""Typed async client of the WeightHub service (seedstack.weighthub.v1.WeightHub)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from seedstack.weighthub.v1 import weighthub_pb2 as pb
from seedstack.weighthub.v1 import weighthub_pb2_grpc as pb_grpc

from clients.base import BaseClient


class WeightHubClient(BaseClient):
    """One method per RPC of ``seedstack.weighthub.v1.WeightHub``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.WeightHubStub
    service_name = "weighthub"

    async def register_holder(
        self, request: pb.RegisterHolderRequest, *, timeout_s: float | None = None
    ) -> pb.RegisterHolderResponse:
        """Call WeightHub.RegisterHolder (retried on UNAVAILABLE)."""
        return await self._unary("RegisterHolder", request, timeout_s)  # type: ignore[no-any-return]

    async def unregister_holder(
        self, request: pb.UnregisterHolderRequest, *, timeout_s: float | None = None
    ) -> pb.UnregisterHolderResponse:
        """Call WeightHub.UnregisterHolder (retried on UNAVAILABLE)."""
        return await self._unary("UnregisterHolder", request, timeout_s)  # type: ignore[no-any-return]

    async def heartbeat(self, request: pb.HeartbeatRequest, *, timeout_s: float | None = None) -> pb.HeartbeatResponse:
        """Call WeightHub.Heartbeat (retried on UNAVAILABLE)."""
        return await self._unary("Heartbeat", request, timeout_s)  # type: ignore[no-any-return]

    async def publish(self, request: pb.PublishRequest, *, timeout_s: float | None = None) -> pb.PublishResponse:
        """Call WeightHub.Publish (retried on UNAVAILABLE)."""
        return await self._unary("Publish", request, timeout_s)  # type: ignore[no-any-return]

    async def get_manifest(
        self, request: pb.GetManifestRequest, *, timeout_s: float | None = None
    ) -> pb.GetManifestResponse:
        """Call WeightHub.GetManifest (retried on UNAVAILABLE)."""
        return await self._unary("GetManifest", request, timeout_s)  # type: ignore[no-any-return]

    async def get_plan(self, request: pb.GetPlanRequest, *, timeout_s: float | None = None) -> pb.GetPlanResponse:
        """Call WeightHub.GetPlan (retried on UNAVAILABLE)."""
        return await self._unary("GetPlan", request, timeout_s)  # type: ignore[no-any-return]

    async def report_held(
        self, request: pb.ReportHeldRequest, *, timeout_s: float | None = None
    ) -> pb.ReportHeldResponse:
        """Call WeightHub.ReportHeld (retried on UNAVAILABLE)."""
        return await self._unary("ReportHeld", request, timeout_s)  # type: ignore[no-any-return]

    async def report_read_failure(
        self, request: pb.ReportReadFailureRequest, *, timeout_s: float | None = None
    ) -> pb.ReportReadFailureResponse:
        """Call WeightHub.ReportReadFailure (retried on UNAVAILABLE)."""
        return await self._unary("ReportReadFailure", request, timeout_s)  # type: ignore[no-any-return]

    async def pin(self, request: pb.PinRequest, *, timeout_s: float | None = None) -> pb.PinResponse:
        """Call WeightHub.Pin (retried on UNAVAILABLE)."""
        return await self._unary("Pin", request, timeout_s)  # type: ignore[no-any-return]

    async def unpin(self, request: pb.UnpinRequest, *, timeout_s: float | None = None) -> pb.UnpinResponse:
        """Call WeightHub.Unpin (retried on UNAVAILABLE)."""
        return await self._unary("Unpin", request, timeout_s)  # type: ignore[no-any-return]

    def watch_versions(
        self, request: pb.WatchVersionsRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.WatchVersionsResponse]:
        """Responses of WeightHub.WatchVersions as they arrive."""
        return self._server_stream("WatchVersions", request, timeout_s)

    async def list_versions(
        self, request: pb.ListVersionsRequest, *, timeout_s: float | None = None
    ) -> pb.ListVersionsResponse:
        """Call WeightHub.ListVersions (retried on UNAVAILABLE)."""
        return await self._unary("ListVersions", request, timeout_s)  # type: ignore[no-any-return]
