"""Builds the trainer gRPC server."""

from __future__ import annotations

from seedstack.trainer.v1 import trainer_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.trainer.config import TrainerConfig
from services.trainer.servicer import create_servicer


async def create_server(config: TrainerConfig) -> GrpcServer:
    """A server with the Trainer servicer; SERVING once Redis answers and its dependencies serve."""
    return await create_service_server(
        service_info("trainer"), config, [(trainer_pb2_grpc.add_TrainerServicer_to_server, create_servicer())]
    )
