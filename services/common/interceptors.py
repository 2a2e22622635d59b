"""gRPC aio interceptors shared by every server and client.

Server side, outermost first: ``AuthInterceptor`` (shared token), ``TracingServerInterceptor``
(a SERVER span whose parent comes from the caller's ``traceparent``), ``ErrorInterceptor`` (domain
exceptions to statuses, in one place). Client side, ``ClientInterceptor`` sends the token and the
trace context and records a CLIENT span, so one trace follows a call across services.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common.errors import SeedstackError

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("seedstack.grpc")

HEALTH_PREFIX = "/grpc.health.v1.Health/"

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]
# Brackets one whole call (a unary call or a whole stream): around(method, context) is entered
# before the handler runs and exited after its last response, with the exception if one escaped.
Around = Callable[[str, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


def _wrap_behavior(behavior: Behavior, method: str, around: Around) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(method, context):
                async for item in behavior(request, context):
                    yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(method, context):
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result

    return call


def wrap_handler(handler: grpc.RpcMethodHandler | None, method: str, around: Around) -> Any:
    """Return ``handler`` with each call run inside ``around``."""
    if handler is None:
        return None
    if handler.unary_unary:
        factory, behavior = grpc.unary_unary_rpc_method_handler, handler.unary_unary
    elif handler.unary_stream:
        factory, behavior = grpc.unary_stream_rpc_method_handler, handler.unary_stream
    elif handler.stream_unary:
        factory, behavior = grpc.stream_unary_rpc_method_handler, handler.stream_unary
    else:
        factory, behavior = grpc.stream_stream_rpc_method_handler, handler.stream_stream
    return factory(_wrap_behavior(behavior, method, around), handler.request_deserializer, handler.response_serializer)


def _metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).

    Health checks pass without it: Kubernetes and compose probes cannot send a token, and health
    reveals nothing but SERVING / NOT_SERVING.
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        if method.startswith(HEALTH_PREFIX):
            return handler

        @asynccontextmanager
        async def around(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            got = (_metadata_value(context, "authorization") or "").encode()
            if not hmac.compare_digest(got, self._expected):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method}: missing or wrong shared token (send 'authorization: Bearer <token>')",
                )
            yield

        return wrap_handler(handler, method, around)


class TracingServerInterceptor(grpc.aio.ServerInterceptor):
    """A SERVER span per call, child of the caller's span when it sent ``traceparent``.

    Health checks are traced only when they carry a parent, so probes don't flood the exporter.
    """

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        method = details.method
        carrier = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (details.invocation_metadata or ())}
        if method.startswith(HEALTH_PREFIX) and "traceparent" not in carrier:
            return handler

        @asynccontextmanager
        async def around(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            with tracer.start_as_current_span(
                method.lstrip("/"),
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                record_exception=False,
                set_status_on_exception=False,
                attributes={"rpc.system": "grpc", "rpc.method": method},
            ) as span:
                try:
                    yield
                except BaseException as exc:
                    code = context.code() if hasattr(context, "code") else None
                    span.set_status(Status(StatusCode.ERROR, f"{code or type(exc).__name__}"))
                    raise

        return wrap_handler(handler, method, around)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into their status; anything unexpected is logged and becomes INTERNAL."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)

        @asynccontextmanager
        async def around(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            try:
                yield
            except SeedstackError as exc:
                await context.abort(grpc.StatusCode[exc.code], exc.message)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                logger.exception("%s failed", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {type(exc).__name__}: {exc}")

        return wrap_handler(handler, details.method, around)


def _with_metadata(details: grpc.aio.ClientCallDetails, extra: dict[str, str]) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata()
    for k, v in details.metadata or ():
        metadata.add(k, v)
    for k, v in extra.items():
        metadata.add(k, v)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class ClientInterceptor:
    """Sends the shared token and the trace context; records a CLIENT span for each call.

    grpc.aio files an interceptor under the first call kind it implements (an if/elif over the
    four kinds), so one object subclassing all four would only ever see unary-unary calls: streams
    (PutSamples, Generate, WatchVersions...) would go out without the token or the trace context.
    ``client_interceptors`` gives one object per kind; use it, not this class, on a channel.
    """

    def __init__(self, token: str = "") -> None:
        self._token = token

    def _start(self, details: grpc.aio.ClientCallDetails) -> tuple[trace.Span, grpc.aio.ClientCallDetails]:
        method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
        span = tracer.start_span(
            method.lstrip("/"), kind=SpanKind.CLIENT, attributes={"rpc.system": "grpc", "rpc.method": method}
        )
        extra: dict[str, str] = {}
        propagate.inject(extra, context=trace.set_span_in_context(span))
        if self._token:
            extra["authorization"] = f"Bearer {self._token}"
        return span, _with_metadata(details, extra)

    @staticmethod
    def _end_when_done(span: trace.Span, call: Any) -> Any:
        async def finish(c: Any) -> None:
            try:
                code = await c.code()  # aio calls report their status through a coroutine
            except Exception:  # cancelled before a status arrived
                code = grpc.StatusCode.CANCELLED
            if code != grpc.StatusCode.OK:
                span.set_status(Status(StatusCode.ERROR, str(code)))
            span.end()

        call.add_done_callback(lambda c: asyncio.ensure_future(finish(c)))
        return call


class _UnaryUnaryClientInterceptor(ClientInterceptor, grpc.aio.UnaryUnaryClientInterceptor):
    """``ClientInterceptor`` for UnaryUnary calls."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        return self._end_when_done(span, await continuation(details, request))


class _UnaryStreamClientInterceptor(ClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """``ClientInterceptor`` for UnaryStream calls."""

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        return self._end_when_done(span, await continuation(details, request))


class _StreamUnaryClientInterceptor(ClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    """``ClientInterceptor`` for StreamUnary calls."""

    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        span, details = self._start(details)
        return self._end_when_done(span, await continuation(details, request_iterator))


class _StreamStreamClientInterceptor(ClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    """``ClientInterceptor`` for StreamStream calls."""

    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        span, details = self._start(details)
        return self._end_when_done(span, await continuation(details, request_iterator))


def client_interceptors(token: str = "") -> list[grpc.aio.ClientInterceptor]:
    """One ``ClientInterceptor`` per call kind, so that every call carries the token and trace context."""
    return [
        _UnaryUnaryClientInterceptor(token),
        _UnaryStreamClientInterceptor(token),
        _StreamUnaryClientInterceptor(token),
        _StreamStreamClientInterceptor(token),
    ]
