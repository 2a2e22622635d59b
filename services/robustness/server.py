"""Builds the robustness monitor gRPC server."""

from __future__ import annotations

from seedstack.robustness.v1 import robustness_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.robustness.config import RobustnessConfig
from services.robustness.servicer import create_servicer


async def create_server(config: RobustnessConfig) -> GrpcServer:
    """A server with the Robustness servicer; SERVING once Redis answers."""
    return await create_service_server(
        service_info("robustness"), config, [(robustness_pb2_grpc.add_RobustnessServicer_to_server, create_servicer())]
    )
