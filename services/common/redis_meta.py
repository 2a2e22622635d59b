"""Redis metadata: namespaced keys, leases with TTL, atomic multi-key helpers, a service registry.

Every key a service writes starts with ``seedstack:<service>:``. The connection retries with
exponential backoff on connection errors and timeouts, so a Redis restart under a running service
costs a few failed attempts, not the service. Multi-key changes go through MULTI/EXEC or Lua.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import Aborted, Unavailable

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("seedstack.redis")

T = TypeVar("T")

KEY_ROOT = "seedstack"

# Renew only when the caller still owns the lease; returns 1 on success.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Release only when the caller still owns the lease; returns 1 on success.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# Set KEYS[1] to ARGV[1] only if it is greater than the stored integer; returns the stored value.
_SET_IF_GREATER = """
local cur = redis.call('GET', KEYS[1])
if cur == false or tonumber(ARGV[1]) > tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1])
  return tonumber(ARGV[1])
end
return tonumber(cur)
"""


def connect(url: str | None = None, *, retries: int = 8, socket_timeout_s: float = 5.0) -> aioredis.Redis:
    """A client for ``url`` (default ``REDIS_URL``) that reconnects with backoff (~9 s of retries).

    No ``health_check_interval``: its PING retries nest inside the command's retries and turn a
    10 s outage budget into minutes (measured with redis-py 8).
    """
    url = url or os.environ.get("REDIS_URL", "")
    if not url:
        raise Unavailable("REDIS_URL is not set")
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class RedisMeta:
    """One service's view of Redis: its key namespace plus lease and transaction helpers."""

    def __init__(self, client: aioredis.Redis, service: str) -> None:
        if not service or ":" in service:
            raise ValueError(f"service name {service!r} must be non-empty and contain no ':'")
        self.client = client
        self.service = service
        self.prefix = f"{KEY_ROOT}:{service}:"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._set_if_greater = client.register_script(_SET_IF_GREATER)

    @classmethod
    def from_url(cls, url: str | None, service: str) -> RedisMeta:
        """Connect (see ``connect``) and namespace under ``service``."""
        return cls(connect(url), service)

    def key(self, *parts: object) -> str:
        """``seedstack:<service>:part1:part2``; parts must not be empty."""
        for p in parts:
            if str(p) == "":
                raise ValueError(f"empty key part in {parts!r}")
        return self.prefix + ":".join(str(p) for p in parts)

    async def ping(self) -> None:
        """Raise Unavailable when Redis does not answer."""
        try:
            await self.client.ping()
        except RedisError as exc:
            raise Unavailable(f"redis not reachable: {exc}") from exc

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    # Leases -------------------------------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take lease ``name`` for ``owner`` if free (or already ours); it lapses after ``ttl_s``."""
        key = self.key("lease", name)
        if await self.client.set(key, owner, px=int(ttl_s * 1000), nx=True):
            return True
        return bool(await self._renew(keys=[key], args=[owner, int(ttl_s * 1000)]))

    async def renew_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        """Extend our lease; False when it lapsed or someone else holds it."""
        return bool(await self._renew(keys=[self.key("lease", name)], args=[owner, int(ttl_s * 1000)]))

    async def release_lease(self, name: str, owner: str) -> bool:
        """Give our lease back; False when it was not ours."""
        return bool(await self._release(keys=[self.key("lease", name)], args=[owner]))

    async def lease_owner(self, name: str) -> str | None:
        """Who holds lease ``name`` now, or None."""
        owner = await self.client.get(self.key("lease", name))
        return None if owner is None else str(owner)

    # Atomic helpers ------------------------------------------------------------------------------

    async def set_if_greater(self, key: str, value: int) -> int:
        """Monotonic counter: store ``value`` only if above the stored one; returns what is stored."""
        return int(await self._set_if_greater(keys=[key], args=[value]))

    async def put_many(self, values: Mapping[str, Any], ttl_s: float | None = None) -> None:
        """Write several JSON values in one MULTI/EXEC: all or none become visible."""
        with tracer.start_as_current_span("redis.put_many", attributes={"keys": len(values)}):
            async with self.client.pipeline(transaction=True) as pipe:
                for key, value in values.items():
                    pipe.set(key, json.dumps(value), px=int(ttl_s * 1000) if ttl_s else None)
                await pipe.execute()

    async def get_json(self, key: str) -> Any:
        """The JSON value at ``key`` or None."""
        raw = await self.client.get(key)
        return None if raw is None else json.loads(raw)

    async def transaction(
        self, watch: list[str], body: Callable[[aioredis.client.Pipeline], Awaitable[T]], attempts: int = 16
    ) -> T:
        """Optimistic transaction: ``body`` reads the watched keys, queues writes after ``pipe.multi()``.

        Retried when a watched key changed meanwhile; Aborted after ``attempts`` lost races.
        """
        with tracer.start_as_current_span("redis.transaction", attributes={"watch": len(watch)}):
            for _ in range(attempts):
                async with self.client.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(*watch)
                        result = await body(pipe)
                        await pipe.execute()
                        return result
                    except WatchError:
                        await asyncio.sleep(0)
                        continue
        raise Aborted(f"transaction on {watch} lost {attempts} races in a row; retry")


class ServiceRegistry:
    """Each service instance registers its address under a TTL; clients resolve a service by name.

    Layout: ``seedstack:registry:<service>`` is a sorted set of instance ids scored by expiry (ms);
    ``seedstack:registry:<service>:<instance>`` holds the instance's JSON record. Both are written in
    one transaction, and a background task refreshes them at a third of the TTL.
    """

    def __init__(self, meta: RedisMeta) -> None:
        self.meta = meta
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def register(
        self,
        service: str,
        address: str,
        *,
        ttl_s: float = 10.0,
        info: Mapping[str, Any] | None = None,
        instance: str | None = None,
    ) -> str:
        """Publish ``address`` for ``service`` and keep it fresh; returns the instance id."""
        instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        record = {
            "service": service,
            "instance": instance,
            "address": address,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_unix_s": time.time(),
            **(info or {}),
        }
        await self._write(service, instance, record, ttl_s)
        self._tasks[(service, instance)] = asyncio.create_task(self._refresh(service, instance, record, ttl_s))
        return instance

    async def _write(self, service: str, instance: str, record: Mapping[str, Any], ttl_s: float) -> None:
        expiry_ms = int((time.time() + ttl_s) * 1000)
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.zadd(self.meta.key(service), {instance: expiry_ms})
            pipe.set(self.meta.key(service, instance), json.dumps(record), px=int(ttl_s * 1000))
            await pipe.execute()

    async def _refresh(self, service: str, instance: str, record: Mapping[str, Any], ttl_s: float) -> None:
        while True:
            await asyncio.sleep(ttl_s / 3)
            try:
                await self._write(service, instance, record, ttl_s)
            except RedisError as exc:
                logger.warning("registry refresh of %s/%s failed (will retry): %s", service, instance, exc)

    async def deregister(self, service: str, instance: str) -> None:
        """Stop refreshing and remove the entry now (graceful shutdown)."""
        task = self._tasks.pop((service, instance), None)
        if task:
            task.cancel()
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.zrem(self.meta.key(service), instance)
            pipe.delete(self.meta.key(service, instance))
            await pipe.execute()

    async def deregister_all(self) -> None:
        """Deregister every instance this process registered."""
        for service, instance in list(self._tasks):
            try:
                await self.deregister(service, instance)
            except RedisError as exc:
                logger.warning("deregistering %s/%s failed: %s", service, instance, exc)

    async def resolve(self, service: str) -> list[dict[str, Any]]:
        """Live instances of ``service`` (newest first); expired entries are pruned."""
        now_ms = int(time.time() * 1000)
        key = self.meta.key(service)
        await self.meta.client.zremrangebyscore(key, "-inf", now_ms)
        instances = await self.meta.client.zrangebyscore(key, now_ms, "+inf")
        if not instances:
            return []
        raw = await self.meta.client.mget([self.meta.key(service, i) for i in instances])
        records = [json.loads(r) for r in raw if r is not None]
        return sorted(records, key=lambda r: r["started_unix_s"], reverse=True)

    async def resolve_address(self, service: str) -> str:
        """The address of the newest live instance; Unavailable when none is registered."""
        records = await self.resolve(service)
        if not records:
            raise Unavailable(f"no live instance of service {service!r} in the registry")
        return str(records[0]["address"])
