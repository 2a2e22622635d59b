"""Builds the data plane gRPC server."""

from __future__ import annotations

from seedstack.dataplane.v1 import dataplane_pb2_grpc

from services.common.catalog import service_info
from services.common.redis_meta import RedisMeta
from services.common.server import GrpcServer, create_service_server
from services.dataplane.config import DataPlaneConfig
from services.dataplane.core import DataPlane
from services.dataplane.servicer import DataPlaneServicer


async def create_server(config: DataPlaneConfig) -> GrpcServer:
    """A server with the DataPlane servicer; SERVING once Redis answers. Closing it stops every loader."""
    meta = RedisMeta.from_url(config.redis_url, "dataplane")
    core = DataPlane(meta, config)
    server = await create_service_server(
        service_info("dataplane"),
        config,
        [(dataplane_pb2_grpc.add_DataPlaneServicer_to_server, DataPlaneServicer(core))],
    )
    server.on_close.append(meta.close)
    server.on_close.append(core.close)
    return server
