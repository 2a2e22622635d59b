"""The controller over real gRPC and Redis, fed by hand: registration, reports, bad input, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from seedstack.common.v1 import common_pb2
from seedstack.robustness.v1 import robustness_pb2 as pb

from clients.base import ClientOptions, RPCError
from clients.robustness import RobustnessClient, incidents_table
from services.common.server import GrpcServer
from services.robustness.config import RobustnessConfig
from services.robustness.drill import FAST, _controller_of
from services.robustness.server import create_server
from tests.support import RedisProcess, assert_eventually


async def _serve(redis_url: str, **overrides: object) -> GrpcServer:
    server = await create_server(RobustnessConfig(redis_url=redis_url, port=0, **{**FAST, **overrides}))
    await server.server.start()
    await assert_eventually(_controller_of(server).ready.is_set, message="state rebuilt from redis")
    return server


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[GrpcServer]:
    server = await _serve(redis_url)
    yield server
    await server.stop(0)


def _register(rank: int, request_id: str = "", job: str = "j", world: int = 2) -> pb.RegisterAgentRequest:
    return pb.RegisterAgentRequest(
        request_id=request_id or f"req-{job}-{rank}",
        job_id=job,
        rank=rank,
        world_size=world,
        topology=common_pb2.TopologyLabels(host=f"node{rank}"),
        pid=1000 + rank,
    )


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


async def _items(*requests: pb.ReportRequest) -> AsyncIterator[pb.ReportRequest]:
    for r in requests:
        yield r


async def test_register_is_idempotent_and_bad_registrations_name_the_field(server: GrpcServer) -> None:
    async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
        a = await client.register_agent(_register(0))
        again = await client.register_agent(_register(0))
        assert a.agent_id == again.agent_id and a.heartbeat_interval_s == FAST["heartbeat_interval_s"]
        for bad, field in [
            (_register(5, "r5"), "rank=5"),
            (_register(1, "r6", world=3), "world_size=3"),
            (_register(0, "r7", job=""), "job_id"),
        ]:
            with pytest.raises(RPCError) as err:
                await client.register_agent(bad)
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details


async def test_unregistered_superseded_and_out_of_order_reports(server: GrpcServer) -> None:
    async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(RPCError) as err:
            await client.report(_items(pb.ReportRequest(agent_id="nobody", heartbeat=pb.Heartbeat(step=1, phase=3))))
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        agent = (await client.register_agent(_register(0))).agent_id
        reply = await client.report(
            _items(
                pb.ReportRequest(agent_id=agent, observed_at=_ts(100.0), heartbeat=pb.Heartbeat(step=5, phase=3)),
                pb.ReportRequest(agent_id=agent, observed_at=_ts(99.0), heartbeat=pb.Heartbeat(step=6, phase=3)),
                pb.ReportRequest(agent_id=agent, observed_at=_ts(101.0), heartbeat=pb.Heartbeat(step=4, phase=3)),
                pb.ReportRequest(agent_id=agent, observed_at=_ts(102.0), heartbeat=pb.Heartbeat(step=6, phase=4)),
            )
        )
        assert (reply.num_accepted, reply.num_ignored) == (2, 2)
        with pytest.raises(RPCError) as err:
            await client.report(_items(pb.ReportRequest(agent_id=agent)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details
        with pytest.raises(RPCError) as err:
            beat = pb.Heartbeat(step=6, phase=1, startup_progress=-2)
            await client.report(_items(pb.ReportRequest(agent_id=agent, heartbeat=beat)))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "heartbeat.startup_progress=-2" in err.value.details
        # The rank's process restarted and registered again: the old id is refused, saying why.
        await client.register_agent(_register(0, "req-restart"))
        with pytest.raises(RPCError) as err:
            await client.report(_items(pb.ReportRequest(agent_id=agent, heartbeat=pb.Heartbeat(step=7, phase=3))))
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "superseded" in err.value.details
        with pytest.raises(RPCError) as err:
            await client.get_ettr(pb.GetEttrRequest(job_id="unknown"))
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RPCError) as err:
            await client.get_ettr(pb.GetEttrRequest(job_id="j", window_s=[-1.0]))
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_flood_of_reports_is_slowed_not_buffered(redis_url: str) -> None:
    server = await _serve(redis_url, max_report_rate_per_s=200.0)
    try:
        async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
            agent = (await client.register_agent(_register(0))).agent_id
            n = 300
            loop = asyncio.get_running_loop()
            started = loop.time()
            flood = (pb.ReportRequest(agent_id=agent, heartbeat=pb.Heartbeat(step=i, phase=3)) for i in range(n))
            reply = await client.report(_items(*flood))
            assert reply.num_accepted == n
            # 300 items at 200/s with a 200-item burst: the sender was held back, not buffered for.
            assert loop.time() - started >= 0.4
            controller = _controller_of(server)
            assert controller.agents[agent].step == n - 1
    finally:
        await server.stop(0)


async def test_a_crash_report_opens_an_incident_and_a_failing_actuator_is_recorded(redis_url: str) -> None:
    server = await _serve(redis_url, recovery_timeout_s=1.0, max_recovery_attempts=2)
    try:
        async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
            ids = [(await client.register_agent(_register(r))).agent_id for r in range(2)]
            # Nobody carries out the restart: the ladder climbs, records why, and stops within the budget.
            await client.report(_items(pb.ReportRequest(agent_id=ids[1], process_exit=pb.ProcessExit(exit_code=-9))))

            async def closed() -> pb.Incident | None:
                found = (await client.list_incidents(pb.ListIncidentsRequest(job_id="j"))).incidents
                return found[0] if found and found[0].state == pb.INCIDENT_STATE_UNRECOVERED else None

            incident = await assert_eventually(closed, timeout_s=15.0)
            assert incident.fault == pb.FAULT_KIND_CRASH and incident.suspect_ranks[0] == 1
            assert incident.suspect_hosts[0] == "node1"
            actions = [s.action for s in incident.recovery_steps]
            assert actions[0] == pb.RECOVERY_ACTION_RESTART_IN_PLACE and actions[-1] == pb.RECOVERY_ACTION_STOP_JOB
            assert "no answer" in incident.recovery_steps[0].detail
            assert "warm standby" in incident.recovery_steps[1].detail
            rows = await incidents_table(f"127.0.0.1:{server.port}", job_id="j")
            assert (
                rows[0]["fault"] == "crash" and rows[0]["state"] == "unrecovered" and "stop_job" in rows[0]["actions"]
            )
    finally:
        await server.stop(0)


async def test_a_restarted_controller_rebuilds_jobs_agents_and_incidents_from_redis(redis_url: str) -> None:
    server = await _serve(redis_url)
    async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
        agent = (await client.register_agent(_register(0, job="k", world=1))).agent_id
        await client.report(
            _items(
                pb.ReportRequest(agent_id=agent, heartbeat=pb.Heartbeat(step=3, phase=3)),
                pb.ReportRequest(agent_id=agent, checkpoint_saved=pb.CheckpointSaved(step=2, path="/c", sha256="ab")),
                pb.ReportRequest(
                    agent_id=agent,
                    checkpoint_rejected=pb.CheckpointRejected(
                        step=2, path="/c", expected_sha256="ab", fallback_step=-1
                    ),
                ),
            )
        )
    await server.stop(0)
    server = await _serve(redis_url)
    try:
        async with RobustnessClient(f"127.0.0.1:{server.port}") as client:
            reply = await client.report(
                _items(pb.ReportRequest(agent_id=agent, heartbeat=pb.Heartbeat(step=4, phase=3)))
            )
            assert reply.num_accepted == 1
            incidents = (await client.list_incidents(pb.ListIncidentsRequest(job_id="k"))).incidents
            assert [i.fault for i in incidents] == [pb.FAULT_KIND_CORRUPT_CHECKPOINT]
            assert (await client.get_ettr(pb.GetEttrRequest(job_id="k"))).cumulative.wall_s > 0
    finally:
        await server.stop(0)


async def test_a_controller_started_while_redis_is_down_waits_for_it_not_serving(own_redis: RedisProcess) -> None:
    own_redis.stop()
    server = await create_server(RobustnessConfig(redis_url=own_redis.url, port=0, **FAST))
    await server.server.start()
    try:
        address = f"127.0.0.1:{server.port}"
        async with RobustnessClient(address, ClientOptions(max_attempts=1)) as client:
            health = health_pb2_grpc.HealthStub(client.channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(RPCError) as err:
                await client.register_agent(_register(0))
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            own_redis.start()

            async def serving() -> bool:
                reply = await health.Check(health_pb2.HealthCheckRequest())
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            await assert_eventually(serving, timeout_s=30.0, interval_s=0.2, message="SERVING once redis is back")
            assert (await client.register_agent(_register(0))).agent_id
    finally:
        await server.stop(0)
