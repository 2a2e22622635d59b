"""A live fault drill (tests, benchmark, fault demos): controller in-process, sidecars as tasks, gloo ranks.

Each sidecar starts its rank through ``PrewarmedLocalActuator``: a restart hands the rank to an
interpreter that already imported torch, so a restart costs the rendezvous and checkpoint load,
not a cold start (as a production job's warm pods would).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedstack.robustness.v1 import robustness_pb2 as pb

from clients.robustness import RobustnessClient
from services.common.server import GrpcServer
from services.robustness.actuators import PrewarmedLocalActuator
from services.robustness.config import RobustnessConfig
from services.robustness.core import Controller
from services.robustness.server import create_server
from services.robustness.sidecar import Sidecar

FAST = {
    "heartbeat_interval_s": 0.2,
    "liveness_timeout_s": 1.5,
    "startup_timeout_s": 60.0,
    "hang_min_timeout_s": 3.0,
    "checkpoint_min_timeout_s": 10.0,
    "recovery_timeout_s": 60.0,
    "stack_dump_timeout_s": 2.0,
    "check_interval_s": 0.1,
}


@dataclass
class Drill:
    """One running drill job with its controller."""

    server: GrpcServer
    controller: Controller
    client: RobustnessClient
    workdir: Path
    sidecars: list[Sidecar]
    standbys: list[Sidecar] = field(default_factory=list)
    tasks: list[asyncio.Task[int]] = field(default_factory=list)

    def rank_pid(self, rank: int) -> int:
        """The pid of the process running ``rank`` now."""
        for s in [*self.sidecars, *self.standbys]:
            if not s.standby and s.rank == rank and s.workload is not None:
                return s.workload.pid
        raise LookupError(f"rank {rank} has no process")

    async def incidents(self, job_id: str = "drill") -> list[pb.Incident]:
        reply = await self.client.list_incidents(pb.ListIncidentsRequest(job_id=job_id))
        return list(reply.incidents)


@contextlib.asynccontextmanager
async def running_drill(
    redis_url: str,
    workdir: Path,
    *,
    world_size: int = 4,
    steps: int = 100000,
    num_standbys: int = 0,
    step_time_s: float = 0.05,
    ckpt_every: int = 5,
    job_id: str = "drill",
    ranks_per_host: int = 2,
    config: Mapping[str, Any] | None = None,
) -> AsyncIterator[Drill]:
    """A controller on port 0 and a ``world_size``-rank gloo drill job under sidecars."""
    server = await create_server(RobustnessConfig(redis_url=redis_url, port=0, **{**FAST, **(config or {})}))
    await server.server.start()
    controller = _controller_of(server)
    await asyncio.wait_for(controller.ready.wait(), timeout=60.0)
    address = f"127.0.0.1:{server.port}"
    argv = [
        sys.executable,
        "-m",
        "services.robustness.drilljob",
        "--dir",
        str(workdir),
        "--steps",
        str(steps),
        "--ckpt-every",
        str(ckpt_every),
        "--step-time-s",
        str(step_time_s),
    ]
    sidecars = [
        Sidecar(
            address,
            job_id=job_id,
            rank=r,
            world_size=world_size,
            argv=argv,
            host=f"node{r // ranks_per_host}",
            groups={"dp": list(range(world_size))},
            actuator=PrewarmedLocalActuator(),
            workdir=workdir,
            log_path=workdir / f"rank{r}.log",
        )
        for r in range(world_size)
    ]
    standbys = [
        Sidecar(
            address,
            job_id=job_id,
            rank=0,
            world_size=world_size,
            argv=argv,
            host=f"standby{i}",
            standby=True,
            groups={"dp": list(range(world_size))},
            actuator=PrewarmedLocalActuator(),
            workdir=workdir,
            log_path=workdir / f"standby{i}.log",
        )
        for i in range(num_standbys)
    ]
    drill = Drill(server, controller, RobustnessClient(address), workdir, sidecars, standbys)
    drill.tasks = [asyncio.create_task(s.run()) for s in [*standbys, *sidecars]]
    try:
        yield drill
    finally:
        for task in drill.tasks:
            task.cancel()
        for task in drill.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for s in [*sidecars, *standbys]:
            with contextlib.suppress(Exception):
                await s.close()
        await drill.client.close()
        await server.stop(0)


def _controller_of(server: GrpcServer) -> Controller:
    for close in server.on_close:
        owner = getattr(close, "__self__", None)
        if isinstance(owner, Controller):
            return owner
    raise LookupError("server has no controller")
