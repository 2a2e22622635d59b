"""Typed async client of the Trainer service (seedstack.trainer.v1.Trainer)."""

from __future__ import annotations

from seedstack.trainer.v1 import trainer_pb2 as pb
from seedstack.trainer.v1 import trainer_pb2_grpc as pb_grpc

from clients.base import BaseClient


class TrainerClient(BaseClient):
    """One method per RPC of ``seedstack.trainer.v1.Trainer``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.TrainerStub
    service_name = "trainer"

    async def start_run(self, request: pb.StartRunRequest, *, timeout_s: float | None = None) -> pb.StartRunResponse:
        """Call Trainer.StartRun (retried on UNAVAILABLE)."""
        return await self._unary("StartRun", request, timeout_s)  # type: ignore[no-any-return]

    async def get_run(self, request: pb.GetRunRequest, *, timeout_s: float | None = None) -> pb.GetRunResponse:
        """Call Trainer.GetRun (retried on UNAVAILABLE)."""
        return await self._unary("GetRun", request, timeout_s)  # type: ignore[no-any-return]

    async def stop_run(self, request: pb.StopRunRequest, *, timeout_s: float | None = None) -> pb.StopRunResponse:
        """Call Trainer.StopRun (retried on UNAVAILABLE)."""
        return await self._unary("StopRun", request, timeout_s)  # type: ignore[no-any-return]
