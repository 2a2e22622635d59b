"""Builds the rollout server and verifiers gRPC server."""

from __future__ import annotations

import os

from seedstack.rollout.v1 import rollout_pb2_grpc

from services.common.catalog import service_info
from services.common.server import GrpcServer, create_service_server
from services.rollout.config import RolloutConfig
from services.rollout.core import RolloutCore
from services.rollout.links import link_factories
from services.rollout.servicer import RolloutServicer


async def create_server(config: RolloutConfig) -> GrpcServer:
    """A server with the Rollout servicer and its model loaded; SERVING once Redis answers, the engine
    runs and the weight hub and data plane serve. ``server.core`` (set here) is the running logic."""
    if config.nice:
        lower_priority(config.nice)
    built: list[RolloutCore] = []
    open_weights, open_dataplane = link_factories(config, lambda text: built[0].tokenizer.encode(text))
    core = RolloutCore(config, open_weights=open_weights, open_dataplane=open_dataplane)  # type: ignore[arg-type]
    built.append(core)
    grpc_server = await create_service_server(
        service_info("rollout"),
        config,
        [(rollout_pb2_grpc.add_RolloutServicer_to_server, RolloutServicer(core))],
        extra_checks=[("engine", core.check_engine)],
    )
    grpc_server.on_close.append(core.close)
    await core.start()
    grpc_server.core = core  # type: ignore[attr-defined]
    return grpc_server


def lower_priority(nice: int) -> None:
    """Set every thread of this process, and the threads they start later, to niceness ``nice`` (on Linux
    niceness is per thread: the engine thread and gRPC's threads inherit it from the threads starting them)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        except OSError:
            pass  # a thread that ended meanwhile
