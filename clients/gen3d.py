"""Typed async client of the Gen3D service (seedstack.gen3d.v1.Gen3D)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from seedstack.gen3d.v1 import gen3d_pb2 as pb
from seedstack.gen3d.v1 import gen3d_pb2_grpc as pb_grpc

from clients.base import BaseClient


class Gen3DClient(BaseClient):
    """One method per RPC of ``seedstack.gen3d.v1.Gen3D``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.Gen3DStub
    service_name = "gen3d"

    async def upload_image(
        self, requests: AsyncIterable[pb.UploadImageRequest], *, timeout_s: float | None = None
    ) -> pb.UploadImageResponse:
        """Stream requests to Gen3D.UploadImage; returns its one response."""
        return await self._client_stream("UploadImage", requests, timeout_s)  # type: ignore[no-any-return]

    async def submit_job(self, request: pb.SubmitJobRequest, *, timeout_s: float | None = None) -> pb.SubmitJobResponse:
        """Call Gen3D.SubmitJob (retried on UNAVAILABLE)."""
        return await self._unary("SubmitJob", request, timeout_s)  # type: ignore[no-any-return]

    async def submit_scene(
        self, request: pb.SubmitSceneRequest, *, timeout_s: float | None = None
    ) -> pb.SubmitSceneResponse:
        """Call Gen3D.SubmitScene (retried on UNAVAILABLE)."""
        return await self._unary("SubmitScene", request, timeout_s)  # type: ignore[no-any-return]

    async def get_job(self, request: pb.GetJobRequest, *, timeout_s: float | None = None) -> pb.GetJobResponse:
        """Call Gen3D.GetJob (retried on UNAVAILABLE)."""
        return await self._unary("GetJob", request, timeout_s)  # type: ignore[no-any-return]

    def watch_job(
        self, request: pb.WatchJobRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.WatchJobResponse]:
        """Responses of Gen3D.WatchJob as they arrive."""
        return self._server_stream("WatchJob", request, timeout_s)

    def fetch_asset(
        self, request: pb.FetchAssetRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.FetchAssetResponse]:
        """Responses of Gen3D.FetchAsset as they arrive."""
        return self._server_stream("FetchAsset", request, timeout_s)
