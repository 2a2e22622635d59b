"""Typed async client of the DataPlane service (seedstack.dataplane.v1.DataPlane)."""

from __future__ import annotations

from collections.abc import AsyncIterable

from seedstack.dataplane.v1 import dataplane_pb2 as pb
from seedstack.dataplane.v1 import dataplane_pb2_grpc as pb_grpc

from clients.base import BaseClient


class DataPlaneClient(BaseClient):
    """One method per RPC of ``seedstack.dataplane.v1.DataPlane``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.DataPlaneStub
    service_name = "dataplane"

    async def submit_plan(
        self, request: pb.SubmitPlanRequest, *, timeout_s: float | None = None
    ) -> pb.SubmitPlanResponse:
        """Call DataPlane.SubmitPlan (retried on UNAVAILABLE)."""
        return await self._unary("SubmitPlan", request, timeout_s)  # type: ignore[no-any-return]

    async def close_plan(self, request: pb.ClosePlanRequest, *, timeout_s: float | None = None) -> pb.ClosePlanResponse:
        """Call DataPlane.ClosePlan (retried on UNAVAILABLE)."""
        return await self._unary("ClosePlan", request, timeout_s)  # type: ignore[no-any-return]

    async def next_prompts(
        self, request: pb.NextPromptsRequest, *, timeout_s: float | None = None
    ) -> pb.NextPromptsResponse:
        """Call DataPlane.NextPrompts (retried on UNAVAILABLE)."""
        return await self._unary("NextPrompts", request, timeout_s)  # type: ignore[no-any-return]

    async def put_samples(
        self, requests: AsyncIterable[pb.PutSamplesRequest], *, timeout_s: float | None = None
    ) -> pb.PutSamplesResponse:
        """Stream requests to DataPlane.PutSamples; returns its one response."""
        return await self._client_stream("PutSamples", requests, timeout_s)  # type: ignore[no-any-return]

    async def next_batch(self, request: pb.NextBatchRequest, *, timeout_s: float | None = None) -> pb.NextBatchResponse:
        """Call DataPlane.NextBatch (retried on UNAVAILABLE)."""
        return await self._unary("NextBatch", request, timeout_s)  # type: ignore[no-any-return]

    async def checkpoint(
        self, request: pb.CheckpointRequest, *, timeout_s: float | None = None
    ) -> pb.CheckpointResponse:
        """Call DataPlane.Checkpoint (retried on UNAVAILABLE)."""
        return await self._unary("Checkpoint", request, timeout_s)  # type: ignore[no-any-return]

    async def restore(self, request: pb.RestoreRequest, *, timeout_s: float | None = None) -> pb.RestoreResponse:
        """Call DataPlane.Restore (retried on UNAVAILABLE)."""
        return await self._unary("Restore", request, timeout_s)  # type: ignore[no-any-return]

    async def stats(self, request: pb.StatsRequest, *, timeout_s: float | None = None) -> pb.StatsResponse:
        """Call DataPlane.Stats (retried on UNAVAILABLE)."""
        return await self._unary("Stats", request, timeout_s)  # type: ignore[no-any-return]
