"""Builds the rollout server and verifiers gRPC server."""

from __future__ import annotations

from seedstack.rollout.v1 import rollout_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.rollout.config import RolloutConfig
from services.rollout.servicer import create_servicer


async def create_server(config: RolloutConfig) -> GrpcServer:
    """A server with the Rollout servicer; SERVING once Redis answers and its dependencies serve."""
    return await create_service_server(
        service_info("rollout"), config, [(rollout_pb2_grpc.add_RolloutServicer_to_server, create_servicer())]
    )
