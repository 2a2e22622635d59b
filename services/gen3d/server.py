"""Builds the 3D generation gRPC server."""

from __future__ import annotations

from seedstack.gen3d.v1 import gen3d_pb2_grpc

from services.common.catalog import service_info
from services.common.redis_meta import RedisMeta
from services.common.server import GrpcServer, create_service_server
from services.gen3d.backends import BackendRegistry
from services.gen3d.config import Gen3DConfig
from services.gen3d.core import Gen3DCore, PipelineRunner
from services.gen3d.jobs import JobManager
from services.gen3d.pipeline import Settings
from services.gen3d.servicer import Gen3DServicer
from services.gen3d.store import AssetStore


def settings_from(config: Gen3DConfig) -> Settings:
    """The pipeline settings a config asks for."""
    return Settings(
        resolution=config.resolution,
        max_faces=config.max_faces,
        texture_size_px=config.texture_size_px,
        collision_budget_s=config.collision_budget_s,
        num_drops=config.num_drops,
        max_pixels=config.max_pixels,
        max_side_px=config.max_side_px,
    )


async def create_server(config: Gen3DConfig) -> GrpcServer:
    """A server with the Gen3D servicer and its job workers; SERVING once Redis answers."""
    store = AssetStore(config.store_dir)
    core = Gen3DCore(
        store,
        None,
        BackendRegistry(config.weights_dir, config.device),
        settings_from(config),
        max_upload_bytes=config.max_upload_bytes,
    )
    meta = RedisMeta.from_url(config.redis_url, "gen3d")
    runner = PipelineRunner(store.root, settings_from(config), config.weights_dir, config.device)
    jobs = JobManager(meta, store, runner, num_workers=config.num_workers, time_limit_s=config.job_time_limit_s)
    core.jobs = jobs
    server = await create_service_server(
        service_info("gen3d"), config, [(gen3d_pb2_grpc.add_Gen3DServicer_to_server, Gen3DServicer(core))]
    )
    await jobs.start()
    server.on_close.append(meta.close)
    server.on_close.insert(0, jobs.stop)
    return server
