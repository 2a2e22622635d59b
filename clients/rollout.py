"""Typed async client of the Rollout service (seedstack.rollout.v1.Rollout)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from seedstack.rollout.v1 import rollout_pb2 as pb
from seedstack.rollout.v1 import rollout_pb2_grpc as pb_grpc

from clients.base import BaseClient


class RolloutClient(BaseClient):
    """One method per RPC of ``seedstack.rollout.v1.Rollout``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.RolloutStub
    service_name = "rollout"

    def generate(
        self, request: pb.GenerateRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Responses of Rollout.Generate as they arrive."""
        return self._server_stream("Generate", request, timeout_s)

    async def verify(self, request: pb.VerifyRequest, *, timeout_s: float | None = None) -> pb.VerifyResponse:
        """Call Rollout.Verify (retried on UNAVAILABLE)."""
        return await self._unary("Verify", request, timeout_s)  # type: ignore[no-any-return]

    async def start_rollout(
        self, request: pb.StartRolloutRequest, *, timeout_s: float | None = None
    ) -> pb.StartRolloutResponse:
        """Call Rollout.StartRollout (retried on UNAVAILABLE)."""
        return await self._unary("StartRollout", request, timeout_s)  # type: ignore[no-any-return]

    async def stop_rollout(
        self, request: pb.StopRolloutRequest, *, timeout_s: float | None = None
    ) -> pb.StopRolloutResponse:
        """Call Rollout.StopRollout (retried on UNAVAILABLE)."""
        return await self._unary("StopRollout", request, timeout_s)  # type: ignore[no-any-return]

    async def update_weights(
        self, request: pb.UpdateWeightsRequest, *, timeout_s: float | None = None
    ) -> pb.UpdateWeightsResponse:
        """Call Rollout.UpdateWeights (retried on UNAVAILABLE)."""
        return await self._unary("UpdateWeights", request, timeout_s)  # type: ignore[no-any-return]

    async def pause(self, request: pb.PauseRequest, *, timeout_s: float | None = None) -> pb.PauseResponse:
        """Call Rollout.Pause (retried on UNAVAILABLE)."""
        return await self._unary("Pause", request, timeout_s)  # type: ignore[no-any-return]

    async def resume(self, request: pb.ResumeRequest, *, timeout_s: float | None = None) -> pb.ResumeResponse:
        """Call Rollout.Resume (retried on UNAVAILABLE)."""
        return await self._unary("Resume", request, timeout_s)  # type: ignore[no-any-return]

    async def stats(self, request: pb.StatsRequest, *, timeout_s: float | None = None) -> pb.StatsResponse:
        """Call Rollout.Stats (retried on UNAVAILABLE)."""
        return await self._unary("Stats", request, timeout_s)  # type: ignore[no-any-return]
