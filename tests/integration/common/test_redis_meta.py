"""Redis metadata against a real redis-server: leases, atomic writes, registry, reconnect."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import Aborted, Unavailable
from services.common.redis_meta import RedisMeta, ServiceRegistry, connect
from tests.support import RedisProcess, assert_eventually


async def test_keys_are_namespaced(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "weighthub")
    assert meta.key("model", "m1", 3) == "seedstack:weighthub:model:m1:3"
    with pytest.raises(ValueError):
        meta.key("model", "")
    with pytest.raises(ValueError):
        RedisMeta.from_url(redis_url, "bad:name")
    await meta.close()


async def test_lease_is_exclusive_renewable_and_expires(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "robustness")
    assert await meta.acquire_lease("leader", "a", ttl_s=0.3)
    assert not await meta.acquire_lease("leader", "b", ttl_s=0.3)
    assert await meta.renew_lease("leader", "a", ttl_s=0.3)
    assert not await meta.release_lease("leader", "b")
    await assert_eventually(
        lambda: meta.acquire_lease("leader", "b", ttl_s=5), timeout_s=5, message="b takes the lease after a's lapses"
    )
    assert await meta.lease_owner("leader") == "b"
    assert not await meta.renew_lease("leader", "a", ttl_s=5)
    assert await meta.release_lease("leader", "b")
    assert await meta.lease_owner("leader") is None
    await meta.close()


async def test_set_if_greater_never_goes_backwards(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "weighthub")
    key = meta.key("latest", "m")
    assert await meta.set_if_greater(key, 5) == 5
    assert await meta.set_if_greater(key, 3) == 5
    assert await meta.set_if_greater(key, 9) == 9
    await meta.close()


async def test_transaction_retries_lost_races_and_stays_consistent(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "dataplane")
    key = meta.key("counter")

    async def increment() -> None:
        async def body(pipe):  # type: ignore[no-untyped-def]
            value = int(await pipe.get(key) or 0)
            await asyncio.sleep(0)  # let the others interleave between read and write
            pipe.multi()
            pipe.set(key, value + 1)

        await meta.transaction([key], body, attempts=200)

    await asyncio.gather(*(increment() for _ in range(20)))
    assert int(await meta.client.get(key)) == 20

    async def never_wins(pipe):  # type: ignore[no-untyped-def]
        await meta.client.set(key, "changed under the watch")
        pipe.multi()
        pipe.set(key, "mine")

    with pytest.raises(Aborted, match="lost 3 races"):
        await meta.transaction([key], never_wins, attempts=3)
    await meta.close()


async def test_put_many_is_all_or_nothing_visible(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "gen3d")
    await meta.put_many({meta.key("a"): {"x": 1}, meta.key("b"): [1, 2]})
    assert await meta.get_json(meta.key("a")) == {"x": 1}
    assert await meta.get_json(meta.key("b")) == [1, 2]
    await meta.close()


async def test_registry_resolves_live_instances_and_forgets_dead_ones(redis_url: str) -> None:
    meta = RedisMeta.from_url(redis_url, "registry")
    registry = ServiceRegistry(meta)
    await registry.register("weighthub", "127.0.0.1:1111", ttl_s=1.0, instance="one")
    assert await registry.resolve_address("weighthub") == "127.0.0.1:1111"
    # The refresher keeps the entry alive past its TTL.
    await asyncio.sleep(1.5)
    assert [r["instance"] for r in await registry.resolve("weighthub")] == ["one"]
    # A second registry (another process) whose refresher stops: its entry lapses.
    other = ServiceRegistry(meta)
    await other.register("rollout", "127.0.0.1:2222", ttl_s=1.0, instance="dead")
    other._tasks.pop(("rollout", "dead")).cancel()
    await assert_eventually(lambda: _empty(registry, "rollout"), timeout_s=5, message="lapsed entry is gone")
    with pytest.raises(Unavailable, match="no live instance of service 'rollout'"):
        await registry.resolve_address("rollout")
    await registry.deregister_all()
    assert await registry.resolve("weighthub") == []
    await meta.close()


async def _empty(registry: ServiceRegistry, service: str) -> bool:
    return await registry.resolve(service) == []


async def test_client_survives_a_redis_restart(own_redis: RedisProcess) -> None:
    # Fewer retries than the services' default (~9 s) keep the outage part of the test short.
    meta = RedisMeta(connect(own_redis.url, retries=3), "weighthub")
    await meta.client.set(meta.key("x"), "1")
    own_redis.stop()
    with pytest.raises(Unavailable):
        await meta.ping()
    own_redis.start()
    # The same client object reconnects on its own; no restart of the service is needed.
    await meta.client.set(meta.key("x"), "2")
    assert await meta.client.get(meta.key("x")) == "2"
    await meta.close()
