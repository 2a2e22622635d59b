"""Builds the robustness monitor gRPC server."""

from __future__ import annotations

from seedstack.robustness.v1 import robustness_pb2_grpc

from services.common.catalog import service_info
from services.common.redis_meta import RedisMeta
from services.common.server import GrpcServer, create_service_server
from services.robustness.config import RobustnessConfig
from services.robustness.core import Controller
from services.robustness.servicer import RobustnessServicer


async def create_server(config: RobustnessConfig) -> GrpcServer:
    """A server with the Robustness servicer and its controller; SERVING once Redis answers and the controller
    has rebuilt its state from it (a Redis that is down at start is waited for, not a failure)."""
    meta = RedisMeta.from_url(config.redis_url, "robustness")
    controller = Controller(config, meta)
    await controller.start()
    server = await create_service_server(
        service_info("robustness"),
        config,
        [(robustness_pb2_grpc.add_RobustnessServicer_to_server, RobustnessServicer(controller))],
        extra_checks=[("state", controller.check_ready)],
    )
    server.on_close.append(meta.close)
    server.on_close.append(controller.close)
    return server
