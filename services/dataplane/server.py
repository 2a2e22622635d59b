"""Builds the data plane gRPC server."""

from __future__ import annotations

from seedstack.dataplane.v1 import dataplane_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.dataplane.config import DataPlaneConfig
from services.dataplane.servicer import create_servicer


async def create_server(config: DataPlaneConfig) -> GrpcServer:
    """A server with the DataPlane servicer; SERVING once Redis answers."""
    return await create_service_server(
        service_info("dataplane"), config, [(dataplane_pb2_grpc.add_DataPlaneServicer_to_server, create_servicer())]
    )
