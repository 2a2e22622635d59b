"""Helpers the tests share: polling with a deadline, and (re-exported) a throwaway redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.common.redis_proc import RedisProcess, free_port

__all__ = ["RedisProcess", "assert_eventually", "free_port"]


async def assert_eventually(
    predicate: Callable[[], Awaitable[Any] | Any], timeout_s: float = 10.0, interval_s: float = 0.05, message: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with its last error at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            result = predicate()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s} s: {message or predicate} (last: {last!r})")
        await asyncio.sleep(interval_s)
