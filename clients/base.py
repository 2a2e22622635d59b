"""What every typed client shares: channel set-up, deadlines, retry on UNAVAILABLE, one RPCError.

A client is built from an address (``host:port``) or resolved by service name through the service
registry in Redis. Unary calls get a deadline and are retried with exponential backoff and jitter
while the server answers UNAVAILABLE (mutating RPCs carry a request id, so a retry is safe).
Streams are not retried: the caller knows where to resume.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.interceptors import client_interceptors
from services.common.server import grpc_options

logger = logging.getLogger(__name__)


class RPCError(Exception):
    """A call ended with a non-OK status; ``code`` says what to do (see services/common/errors.py)."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ClientOptions:
    """How a client connects and retries."""

    token: str = field(default_factory=lambda: os.environ.get("SEEDSTACK_AUTH_TOKEN", ""))
    """Shared token sent as ``authorization: Bearer``; defaults to ``SEEDSTACK_AUTH_TOKEN``."""
    tls_ca_path: Path | None = None
    """CA bundle to verify the server's certificate; set it to use TLS."""
    tls_cert_path: Path | None = None
    """Client certificate for mutual TLS."""
    tls_key_path: Path | None = None
    """Key of ``tls_cert_path``."""
    tls_server_name: str | None = None
    """Name to check the server certificate against, when it differs from the address."""
    timeout_s: float = 30.0
    """Deadline of each unary call attempt."""
    max_attempts: int = 5
    """Attempts of a unary call while the server answers UNAVAILABLE."""
    backoff_s: float = 0.1
    """First retry delay; doubles each attempt (with jitter), capped at 2 s."""
    max_message_bytes: int = 16 * 1024 * 1024
    """Largest message sent or received."""


def create_channel(address: str, options: ClientOptions | None = None) -> grpc.aio.Channel:
    """An aio channel to ``address`` with the token, tracing and message bounds applied."""
    options = options or ClientOptions()
    channel_options: list[tuple[str, Any]] = list(grpc_options(options.max_message_bytes))
    interceptors = client_interceptors(options.token)
    if options.tls_ca_path is None:
        return grpc.aio.insecure_channel(address, options=channel_options, interceptors=interceptors)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(options.tls_ca_path).read_bytes(),
        private_key=Path(options.tls_key_path).read_bytes() if options.tls_key_path else None,
        certificate_chain=Path(options.tls_cert_path).read_bytes() if options.tls_cert_path else None,
    )
    if options.tls_server_name:
        channel_options.append(("grpc.ssl_target_name_override", options.tls_server_name))
    return grpc.aio.secure_channel(address, creds, options=channel_options, interceptors=interceptors)


async def check_health(channel: grpc.aio.Channel, service: str = "", timeout_s: float = 5.0) -> str:
    """The health status name (SERVING, NOT_SERVING, ...) of ``service`` ("" = the whole server)."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        raise RPCError("grpc.health.v1.Health/Check", exc.code(), exc.details() or "") from None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def probe_health(address: str, options: ClientOptions | None = None, timeout_s: float = 2.0) -> str:
    """Like ``check_health`` on a fresh channel to ``address``; UNREACHABLE when nothing answers."""
    async with create_channel(address, options) as channel:
        try:
            return await check_health(channel, timeout_s=timeout_s)
        except RPCError as exc:
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            return exc.code.name


class BaseClient:
    """Owns a channel and a stub; subclasses add one typed method per RPC."""

    stub_class: ClassVar[type]
    service_name: ClassVar[str]

    def __init__(self, address: str, options: ClientOptions | None = None) -> None:
        self.address = address
        self.options = options or ClientOptions()
        self.channel = create_channel(address, self.options)
        self.stub = self.stub_class(self.channel)

    @classmethod
    async def resolve(cls, redis_url: str, options: ClientOptions | None = None) -> Self:
        """A client for the newest live instance of this service in the registry at ``redis_url``."""
        from services.common.redis_meta import RedisMeta, ServiceRegistry

        meta = RedisMeta.from_url(redis_url, "registry")
        try:
            address = await ServiceRegistry(meta).resolve_address(cls.service_name)
        finally:
            await meta.close()
        return cls(address, options)

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def health(self, service: str = "", timeout_s: float = 5.0) -> str:
        """The health status name (SERVING, NOT_SERVING, ...) of ``service`` ("" = the server)."""
        return await check_health(self.channel, service, timeout_s)

    async def _unary(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        """Call unary ``method`` with a deadline, retrying on UNAVAILABLE; raise RPCError otherwise."""
        call = getattr(self.stub, method)
        delay_s = self.options.backoff_s
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                return await call(request, timeout=timeout_s or self.options.timeout_s)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.options.max_attempts:
                    raise RPCError(f"{self.service_name}.{method}", exc.code(), exc.details() or "") from None
                logger.info(
                    "%s.%s UNAVAILABLE (attempt %d/%d), retrying in %.2f s: %s",
                    self.service_name,
                    method,
                    attempt,
                    self.options.max_attempts,
                    delay_s,
                    exc.details(),
                )
                await asyncio.sleep(delay_s * random.uniform(0.5, 1.5))
                delay_s = min(delay_s * 2, 2.0)
        raise AssertionError("unreachable")

    async def _client_stream(self, method: str, requests: Any, timeout_s: float | None = None) -> Any:
        """Send a stream of requests to ``method``; one response; RPCError on failure (no retry)."""
        try:
            return await getattr(self.stub, method)(requests, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RPCError(f"{self.service_name}.{method}", exc.code(), exc.details() or "") from None

    async def _server_stream(self, method: str, request: Any, timeout_s: float | None = None) -> AsyncIterator[Any]:
        """Yield the responses of server-streaming ``method``; RPCError on failure (no retry)."""
        call = getattr(self.stub, method)(request, timeout=timeout_s)
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise RPCError(f"{self.service_name}.{method}", exc.code(), exc.details() or "") from None
        finally:
            call.cancel()
