"""Builds the 3D generation gRPC server."""

from __future__ import annotations

from seedstack.gen3d.v1 import gen3d_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.gen3d.config import Gen3DConfig
from services.gen3d.servicer import create_servicer


async def create_server(config: Gen3DConfig) -> GrpcServer:
    """A server with the Gen3D servicer; SERVING once Redis answers."""
    return await create_service_server(
        service_info("gen3d"), config, [(gen3d_pb2_grpc.add_Gen3DServicer_to_server, create_servicer())]
    )
