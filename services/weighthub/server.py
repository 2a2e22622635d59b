"""Builds the weight hub gRPC server."""

from __future__ import annotations

from seedstack.weighthub.v1 import weighthub_pb2_grpc

from services.common.catalog import service_info
from services.common.redis_meta import RedisMeta
from services.common.server import GrpcServer, create_service_server
from services.weighthub.config import WeightHubConfig
from services.weighthub.core import WeightHub
from services.weighthub.servicer import WeightHubServicer


async def create_server(config: WeightHubConfig) -> GrpcServer:
    """A server with the WeightHub servicer; SERVING once Redis answers. All state is in Redis."""
    meta = RedisMeta.from_url(config.redis_url, "weighthub")
    hub = WeightHub(meta, config)
    server = await create_service_server(
        service_info("weighthub"),
        config,
        [(weighthub_pb2_grpc.add_WeightHubServicer_to_server, WeightHubServicer(hub))],
    )
    server.on_close.append(meta.close)
    server.on_close.append(hub.close)
    return server
