"""Builds the trainer gRPC server."""

from __future__ import annotations

from seedstack.trainer.v1 import trainer_pb2_grpc

from services.common.catalog import service_info
from services.common.redis_meta import RedisMeta, ServiceRegistry
from services.common.server import GrpcServer, create_service_server
from services.trainer.config import TrainerConfig
from services.trainer.core import Trainer
from services.trainer.servicer import TrainerServicer


async def create_server(config: TrainerConfig) -> GrpcServer:
    """A server with the Trainer servicer; SERVING once Redis answers and its dependencies serve.

    Closing it ends every run's ranks.
    """
    meta = RedisMeta.from_url(config.redis_url, "registry")
    registry = ServiceRegistry(meta)
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        config.runs_dir,
        registry.resolve_address,
        stop_timeout_s=config.stop_timeout_s,
        publish_bind_host=config.publish_bind_host,
        meta=RedisMeta(meta.client, "trainer"),
    )
    server = await create_service_server(
        service_info("trainer"), config, [(trainer_pb2_grpc.add_TrainerServicer_to_server, TrainerServicer(trainer))]
    )
    server.on_close.append(meta.close)
    server.on_close.append(trainer.close)
    return server
