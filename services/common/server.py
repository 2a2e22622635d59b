"""Server bootstrap shared by every service: grpc.aio, health, reflection, limits, auth, TLS, SIGTERM.

A service's ``server.py`` calls ``create_grpc_server`` with its servicers; ``__main__`` calls
``run_service``, which serves until SIGTERM/SIGINT, then turns health NOT_SERVING, stops the server
with a grace period and closes the dependencies.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.catalog import ServiceInfo
from services.common.config import ServerConfig
from services.common.errors import Unavailable
from services.common.interceptors import AuthInterceptor, ErrorInterceptor, TracingServerInterceptor

logger = logging.getLogger(__name__)

# (add_XServicer_to_server, servicer instance, full service name)
ServicerSpec = tuple[Callable[[Any, grpc.aio.Server], None], Any, str]


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options every process uses: explicit message bounds and keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


@dataclass
class GrpcServer:
    """A built, not yet started server with its health servicer and the names it serves."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: list[str]
    on_close: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def set_serving(self, serving: bool) -> None:
        """Mark every service (and the overall "" entry) SERVING or NOT_SERVING."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING, let in-flight calls finish for ``grace_s``, then close dependencies."""
        await self.set_serving(False)
        await self.server.stop(grace_s)
        for close in reversed(self.on_close):
            try:
                await close()
            except Exception:
                logger.exception("closing a dependency failed")


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials when certificate paths are configured (mutual TLS with a client CA)."""
    if config.tls_cert_path is None or config.tls_key_path is None:
        return None
    key = Path(config.tls_key_path).read_bytes()
    cert = Path(config.tls_cert_path).read_bytes()
    ca = Path(config.tls_client_ca_path).read_bytes() if config.tls_client_ca_path else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


def create_grpc_server(config: ServerConfig, servicers: Sequence[ServicerSpec]) -> GrpcServer:
    """Build a server with the interceptors, health, reflection and the port bound (0 picks one)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if config.auth_token:
        interceptors.append(AuthInterceptor(config.auth_token))
    interceptors += [TracingServerInterceptor(), ErrorInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=grpc_options(config.max_message_bytes))
    names = []
    for add, servicer, name in servicers:
        add(servicer, server)
        names.append(name)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    address = f"{config.host}:{config.port}"
    creds = server_credentials(config)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    return GrpcServer(server=server, port=port, health=health_servicer, service_names=names)


async def run_service(
    name: str,
    config: ServerConfig,
    build: Callable[[ServerConfig], Awaitable[GrpcServer]],
) -> None:
    """Build, start and serve until SIGTERM/SIGINT; register in the service registry meanwhile."""
    from services.common.redis_meta import RedisMeta, ServiceRegistry

    grpc_server = await build(config)
    await grpc_server.server.start()
    meta = RedisMeta.from_url(config.redis_url, "registry")
    registry = ServiceRegistry(meta)
    address = f"{config.advertise_host}:{grpc_server.port}"
    await registry.register(
        name, address, ttl_s=config.registry_ttl_s, info={"tls": int(config.tls_cert_path is not None)}
    )
    grpc_server.on_close.append(meta.close)
    grpc_server.on_close.insert(0, registry.deregister_all)
    logger.info("%s serving on %s (port %d)", name, address, grpc_server.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("%s stopping: grace %.1f s", name, config.grace_s)
    await grpc_server.stop(config.grace_s)
    logger.info("%s stopped", name)


class ReadinessLoop:
    """Keeps health in step with the dependencies: SERVING only while every check passes.

    Checks run every ``interval_s``; a failing one (Redis down, a peer service not serving) turns the
    server NOT_SERVING until it passes again, so load balancers and ``seedctl up`` wait for real
    readiness instead of a bound port.
    """

    def __init__(
        self,
        grpc_server: GrpcServer,
        checks: Sequence[tuple[str, Callable[[], Awaitable[None]]]],
        interval_s: float = 1.0,
    ) -> None:
        self._server = grpc_server
        self._checks = list(checks)
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.serving = False
        self.failing: dict[str, str] = {}

    def start(self) -> None:
        """Run the checks in the background until ``stop``."""
        self._task = asyncio.create_task(self._run(), name="readiness")
        self._server.on_close.insert(0, self.stop)

    async def check_once(self) -> bool:
        """Run every check once and set health; returns whether all passed."""
        failing: dict[str, str] = {}
        for name, check in self._checks:
            try:
                await asyncio.wait_for(check(), timeout=max(self._interval_s * 2, 2.0))
            except Exception as exc:
                failing[name] = f"{type(exc).__name__}: {exc}"
        serving = not failing
        if serving != self.serving or failing.keys() != self.failing.keys():
            if serving:
                logger.info("dependencies ready: SERVING")
            else:
                logger.warning("NOT_SERVING: waiting for %s", failing)
        self.failing = failing
        self.serving = serving
        await self._server.set_serving(serving)
        return serving

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval_s)

    async def stop(self) -> None:
        """Stop checking (health stays as it is; ``GrpcServer.stop`` turns it NOT_SERVING)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


async def create_service_server(
    info: ServiceInfo,
    config: ServerConfig,
    servicers: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any]],
    extra_checks: Sequence[tuple[str, Callable[[], Awaitable[None]]]] = (),
) -> GrpcServer:
    """The usual server of a service: its servicers, and health SERVING only while Redis answers
    and every service in ``info.depends_on`` is SERVING (resolved through the registry)."""
    from services.common.redis_meta import RedisMeta, ServiceRegistry

    grpc_server = create_grpc_server(config, [(add, servicer, info.proto_service) for add, servicer in servicers])
    meta = RedisMeta.from_url(config.redis_url, info.name)
    grpc_server.on_close.append(meta.close)
    checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [("redis", meta.ping)]
    if info.depends_on:
        registry_meta = RedisMeta.from_url(config.redis_url, "registry")
        grpc_server.on_close.append(registry_meta.close)
        peers = PeerHealth(ServiceRegistry(registry_meta), config.auth_token)
        grpc_server.on_close.append(peers.close)
        checks += [(dep, functools.partial(peers.check, dep)) for dep in info.depends_on]
    # The standard health servicer starts out SERVING; nothing is ready until the checks say so.
    await grpc_server.set_serving(False)
    ReadinessLoop(grpc_server, [*checks, *extra_checks]).start()
    return grpc_server


class PeerHealth:
    """Checks that a peer service is SERVING, through the registry and the gRPC health protocol.

    The check is a traced gRPC call, so a trace shows this service waiting on its dependency.
    """

    def __init__(self, registry: Any, token: str) -> None:
        self._registry = registry
        self._token = token
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def check(self, service: str) -> None:
        """Raise when ``service`` has no live instance or it is not SERVING."""
        from clients.base import ClientOptions, create_channel

        address = await self._registry.resolve_address(service)
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = create_channel(address, ClientOptions(token=self._token))
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise Unavailable(
                f"{service} at {address} is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            )

    async def close(self) -> None:
        """Close the channels to peers."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
