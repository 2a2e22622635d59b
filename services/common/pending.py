"""Servicers for RPCs whose logic lands with a later issue: they answer UNIMPLEMENTED and say so.

Never a fake result: a caller learns which issue brings the RPC instead of getting made-up data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeVar

from google.protobuf.descriptor import ServiceDescriptor

from services.common.errors import Unimplemented

T = TypeVar("T")


def pending_servicer(base: type[T], service: ServiceDescriptor, *, issue: int, topic: str) -> T:
    """An instance of generated servicer ``base`` whose every RPC raises Unimplemented naming ``issue``."""
    methods: dict[str, Any] = {}
    for method in service.methods:
        message = (
            f"{service.name}.{method.name} is not implemented in this build: it lands with issue #{issue} ({topic})"
        )
        methods[method.name] = _make(message, method.server_streaming)
    cls = type(f"Pending{service.name}Servicer", (base,), methods)
    return cls()  # type: ignore[no-any-return]


def _make(message: str, server_streaming: bool) -> Any:
    if server_streaming:

        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise Unimplemented(message)
            yield  # an async generator, as the server expects of a streaming handler

        return stream

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise Unimplemented(message)

    return unary
