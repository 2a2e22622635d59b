"""Real gRPC servers on port 0: health, reflection, limits, token, TLS, errors, traces."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from seedstack.weighthub.v1 import weighthub_pb2 as wh
from seedstack.weighthub.v1 import weighthub_pb2_grpc as wh_grpc

from clients.base import ClientOptions, RPCError
from clients.weighthub import WeightHubClient
from services.common.errors import InvalidArgument, NotFound
from services.common.pending import pending_servicer
from services.common.redis_meta import RedisMeta, ServiceRegistry
from services.common.server import GrpcServer, create_grpc_server
from services.rollout.config import RolloutConfig
from services.rollout.server import create_server as create_rollout
from services.weighthub.config import WeightHubConfig
from services.weighthub.server import create_server as create_weighthub
from tests.support import assert_eventually

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    """One in-memory tracer provider for this module (OpenTelemetry allows one per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
async def weighthub(redis_url: str) -> AsyncIterator[GrpcServer]:
    server = await create_weighthub(WeightHubConfig(redis_url=redis_url, port=0, max_message_bytes=64 * 1024))
    await server.server.start()
    yield server
    await server.stop(0)


async def test_serving_with_reflection(weighthub: GrpcServer) -> None:
    async with WeightHubClient(f"127.0.0.1:{weighthub.port}") as client:
        await assert_eventually(lambda: _is_serving(client), message="weighthub SERVING once Redis answers")
        assert await client.health("seedstack.weighthub.v1.WeightHub") == "SERVING"
        stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)

        async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for reply in stub.ServerReflectionInfo(ask()):
            names |= {s.name for s in reply.list_services_response.service}
        assert {"seedstack.weighthub.v1.WeightHub", "grpc.health.v1.Health"} <= names


async def test_pending_rpcs_answer_unimplemented_naming_the_issue(redis_url: str) -> None:
    servicer = pending_servicer(wh_grpc.WeightHubServicer, wh.DESCRIPTOR.services_by_name["WeightHub"],
                                issue=3, topic="weight hub")
    spec = (wh_grpc.add_WeightHubServicer_to_server, servicer, "seedstack.weighthub.v1.WeightHub")
    server = create_grpc_server(WeightHubConfig(redis_url=redis_url, port=0), [spec])
    await server.server.start()
    try:
        async with WeightHubClient(f"127.0.0.1:{server.port}") as client:
            with pytest.raises(RPCError) as err:
                await client.list_versions(wh.ListVersionsRequest(model="m"))
            assert err.value.code == grpc.StatusCode.UNIMPLEMENTED
            assert "WeightHub.ListVersions is not implemented" in err.value.details
            assert "issue #3" in err.value.details
            with pytest.raises(RPCError) as err:
                async for _ in client.watch_versions(wh.WatchVersionsRequest(model="m")):
                    pass
            assert err.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


async def _is_serving(client: WeightHubClient) -> bool:
    return await client.health() == "SERVING"


async def test_oversized_message_is_resource_exhausted(weighthub: GrpcServer) -> None:
    async with WeightHubClient(f"127.0.0.1:{weighthub.port}") as client:
        with pytest.raises(RPCError) as err:
            await client.list_versions(wh.ListVersionsRequest(model="m" * 100_000))
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_shared_token_is_required_except_for_health(redis_url: str) -> None:
    server = await create_weighthub(WeightHubConfig(redis_url=redis_url, port=0, auth_token="s3cret"))
    await server.server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        for token in ("", "wrong"):
            async with WeightHubClient(address, ClientOptions(token=token)) as client:
                with pytest.raises(RPCError) as err:
                    await client.list_versions(wh.ListVersionsRequest(model="m"))
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "shared token" in err.value.details
                await assert_eventually(lambda c=client: _is_serving(c))  # probes need no token
        async with WeightHubClient(address, ClientOptions(token="s3cret")) as client:
            with pytest.raises(RPCError) as err:
                await client.list_versions(wh.ListVersionsRequest(model="m"))
            assert err.value.code == grpc.StatusCode.NOT_FOUND  # past the token check: no such model
    finally:
        await server.stop(0)


async def test_streaming_calls_carry_the_token_too(redis_url: str) -> None:
    """grpc.aio files a client interceptor under one call kind only: streams must get the token as well."""
    server = await create_weighthub(WeightHubConfig(redis_url=redis_url, port=0, auth_token="s3cret"))
    await server.server.start()
    address = f"127.0.0.1:{server.port}"

    async def first_status(token: str) -> grpc.StatusCode:
        async with WeightHubClient(address, ClientOptions(token=token)) as client:
            stream = wh_grpc.WeightHubStub(client.channel).WatchVersions(wh.WatchVersionsRequest(model=""))
            try:
                async for _ in stream:
                    return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    try:
        assert await first_status("wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert await first_status("s3cret") == grpc.StatusCode.INVALID_ARGUMENT  # past the token: empty model
    finally:
        await server.stop(0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
async def test_tls_when_certificates_are_configured(redis_url: str, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = await create_weighthub(WeightHubConfig(redis_url=redis_url, port=0, tls_cert_path=cert, tls_key_path=key))
    await server.server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        async with WeightHubClient(address, ClientOptions(tls_ca_path=cert)) as client:
            await assert_eventually(lambda: _is_serving(client))
        async with WeightHubClient(address, ClientOptions(max_attempts=1, timeout_s=2)) as plain:
            with pytest.raises(RPCError) as err:
                await plain.list_versions(wh.ListVersionsRequest(model="m"))
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def _echo_service(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        if request == b"bad":
            raise InvalidArgument("payload 'bad' is not allowed")
        if request == b"boom":
            raise RuntimeError("kaput")
        return request

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(3):
            yield str(i).encode()
        raise NotFound("ran out after 3")

    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))


async def test_domain_errors_become_their_status_and_unknown_ones_internal(redis_url: str) -> None:
    config = WeightHubConfig(redis_url=redis_url, port=0)
    server = create_grpc_server(config, [(lambda _s, srv: _echo_service(srv), None, "test.Echo")])
    await server.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            echo = channel.unary_unary("/test.Echo/Echo")
            assert await echo(b"hi") == b"hi"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await echo(b"bad")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "payload 'bad' is not allowed"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await echo(b"boom")
            assert err.value.code() == grpc.StatusCode.INTERNAL and "RuntimeError: kaput" in (err.value.details() or "")
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for item in channel.unary_stream("/test.Echo/Count")(b""):
                    got.append(item)
            assert got == [b"0", b"1", b"2"]
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop(0)


async def test_dependent_service_serves_only_when_dependencies_do_and_the_check_is_traced(
    redis_url: str, weighthub: GrpcServer
) -> None:
    from services.dataplane.config import DataPlaneConfig
    from services.dataplane.server import create_server as create_dataplane

    rollout = await create_rollout(RolloutConfig(redis_url=redis_url, port=0))
    await rollout.server.start()
    registry_meta = RedisMeta.from_url(redis_url, "registry")
    registry = ServiceRegistry(registry_meta)
    dataplane = None
    try:
        async with WeightHubClient(f"127.0.0.1:{rollout.port}") as probe:
            await registry.register("weighthub", f"127.0.0.1:{weighthub.port}")
            # weighthub is up, the data plane is not registered yet: rollout must not claim readiness.
            await assert_eventually(lambda: _status_is(probe, "NOT_SERVING"))
            dataplane = await create_dataplane(DataPlaneConfig(redis_url=redis_url, port=0))
            await dataplane.server.start()
            await registry.register("dataplane", f"127.0.0.1:{dataplane.port}")
            await assert_eventually(lambda: _status_is(probe, "SERVING"), timeout_s=15)
        spans = _EXPORTER.get_finished_spans()
        by_id = {s.context.span_id: s for s in spans}
        linked = [
            s
            for s in spans
            if s.kind == trace.SpanKind.SERVER
            and s.name == "grpc.health.v1.Health/Check"
            and s.parent is not None
            and by_id.get(s.parent.span_id) is not None
            and by_id[s.parent.span_id].kind == trace.SpanKind.CLIENT
        ]
        assert linked, "the dependency check's server span is a child of the caller's client span"
        assert linked[0].context.trace_id == by_id[linked[0].parent.span_id].context.trace_id
    finally:
        await registry.deregister_all()
        await registry_meta.close()
        await rollout.stop(0)
        if dataplane is not None:
            await dataplane.stop(0)


async def _status_is(client: WeightHubClient, status: str) -> bool:
    return await client.health() == status


def test_configs_are_frozen_dataclasses() -> None:
    config = WeightHubConfig(redis_url="redis://x", port=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
