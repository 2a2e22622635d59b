"""The weight hub's logic: holders with leases, atomic version commits, read plans, retention.

Every fact lives in Redis (namespace ``seedstack:weighthub:``), so a restarted hub continues where
the last one stopped. Keys (``M`` model, ``V`` version, ``H`` holder):

- ``holder:H`` holder record (JSON) with the lease as its TTL; ``holder:H:held`` set of ``[M, V]``;
  ``holder:H:readers`` hash ``reader|M|V`` -> read-lease expiry (ms) of readers reading from H;
  ``holder:H:reading`` hash ``source|M|V`` -> expiry of the leases H holds as a reader.
- ``model:M:latest`` latest committed version (only ever raised); ``model:M:versions`` zset of
  committed versions; ``model:M:v:V:manifest`` committed manifest; ``model:M:v:V:holders`` hash
  H -> shard index (-1: whole version); ``model:M:v:V:pending`` hash shard -> shard manifest and
  ``model:M:v:V:pending_holders`` before commit; ``model:M:v:V:pins`` set of owners;
  ``model:M:v:V:pullers`` hash datacenter -> reader pulling across the wide-area link;
  ``model:M:v:V:excluded:H`` holders not to plan for reader H; ``model:M:v:V:chunks:H`` set of the
  chunks a partial holder H (a reader still fetching; shard index -2 in ``holders``) has verified.
- ``request:METHOD:ID`` the answer to a request id, for retries.

Concurrent changes of one model are serialised by a lock in this process; each change is written
in one MULTI/EXEC, so Redis never shows half of one. One hub instance serves a model at a time.

A GetPlan that finds every source busy is held open: it waits for a change of the model's holders or
read leases made through this process (progress, held, failures, leaves), re-planning at least every
``watch_poll_s`` for what it cannot see (lease expiry), until its wait bound.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.redis_meta import RedisMeta
from services.weighthub.config import WeightHubConfig
from services.weighthub.planner import Locality, Source, Topology, plan_reads
from services.weighthub.versions import Manifest, check_compatible_shards, merge_shards, validate

logger = logging.getLogger(__name__)

CARRIER_NAMES = ("tcp", "shm", "ucx", "nixl")
WHOLE_VERSION = -1
PARTIAL = -2
"""Shard index of a reader that holds some verified chunks while it fetches the rest."""
_WAKE_CHAIN_FAILURES = 2
"""Held plans woken in a row that find every source still busy before waking stops until the next change."""
_SEP = "|"


@dataclass(frozen=True, kw_only=True)
class Holder:
    """A registered holder, as stored."""

    holder_id: str
    offers: tuple[tuple[str, str], ...]
    topology: Topology
    transport_host_id: str
    max_concurrent_reads: int
    lease_ttl_s: float

    def to_json(self) -> str:
        return json.dumps(
            {
                "holder_id": self.holder_id,
                "offers": [list(o) for o in self.offers],
                "topology": asdict(self.topology),
                "transport_host_id": self.transport_host_id,
                "max_concurrent_reads": self.max_concurrent_reads,
                "lease_ttl_s": self.lease_ttl_s,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> Holder:
        data = json.loads(raw)
        return cls(
            holder_id=data["holder_id"],
            offers=tuple((c, a) for c, a in data["offers"]),
            topology=Topology(**data["topology"]),
            transport_host_id=data["transport_host_id"],
            max_concurrent_reads=int(data["max_concurrent_reads"]),
            lease_ttl_s=float(data["lease_ttl_s"]),
        )


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    committed: bool
    num_shards_registered: int
    root_hash: str


@dataclass(frozen=True, kw_only=True)
class SourceReadOut:
    holder_id: str
    carrier: str
    address: str
    locality: int
    chunk_indices: list[int]


@dataclass(frozen=True, kw_only=True)
class PlanResult:
    model: str
    version: int
    base_version: int
    reads: list[SourceReadOut]
    planned_size_bytes: int
    deferred_chunk_indices: list[int]


@dataclass(frozen=True, kw_only=True)
class HeldState:
    model: str
    version: int
    num_active_reads: int
    retired: bool


@dataclass(frozen=True, kw_only=True)
class VersionInfo:
    model: str
    version: int
    root_hash: str
    size_bytes: int
    num_chunks: int
    num_holders: int
    pinned: bool
    committed_at_unix_s: float


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_name(what: str, value: str) -> None:
    if not value or len(value) > 256 or any(c.isspace() for c in value) or _SEP in value:
        raise InvalidArgument(f"{what} {value!r} must be 1-256 characters without whitespace or '{_SEP}'")


class WeightHub:
    """Versions, holders and read plans of model weights (see the module docstring)."""

    def __init__(self, meta: RedisMeta, config: WeightHubConfig) -> None:
        self.meta = meta
        self.config = config
        self._locks: dict[str, asyncio.Lock] = {}
        self._manifests: dict[tuple[str, int], Manifest] = {}
        self._commits: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, collections.deque[asyncio.Future[int]]] = {}
        self._unclaimed: dict[str, int] = {}
        """Per model: changes that found no held plan waiting (one being computed may need them)."""

    def _notify(self, model: str | None) -> None:
        """A source of ``model`` (of every model when None) may have freed up: wake a held plan."""
        for name in [model] if model is not None else list(self._waiters):
            self._wake_next(name, 0)

    def _wake_next(self, model: str, num_failed: int) -> None:
        """Wake the oldest plan held open on ``model``, telling it how many woken before it in a row
        still found every source busy. Waking one at a time, passed on while plans succeed, spares
        the hub re-planning every waiter on every change (a freed slot serves one or two)."""
        queue = self._waiters.get(model)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(num_failed)
                return
        if num_failed == 0:
            self._unclaimed[model] = self._unclaimed.get(model, 0) + 1

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _k(self, *parts: object) -> str:
        return self.meta.key(*parts)

    async def _once(
        self, method: str, request_id: str, compute: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """The answer to ``request_id`` of ``method``: computed once, replayed on retries."""
        if not request_id:
            return await compute()
        key = self._k("request", method, request_id)
        cached = await self.meta.get_json(key)
        if cached is not None:
            return dict(cached)
        result = await compute()
        await self.meta.client.set(key, json.dumps(result), px=int(self.config.request_ttl_s * 1000))
        return result

    # Holders --------------------------------------------------------------------------------------

    async def register_holder(
        self,
        *,
        request_id: str,
        holder_id: str,
        offers: Sequence[tuple[str, str]],
        topology: Topology,
        transport_host_id: str,
        lease_ttl_s: float,
        max_concurrent_reads: int,
    ) -> float:
        """Register (or refresh) a holder; returns the granted lease in seconds."""
        _check_name("holder_id", holder_id)
        if not offers:
            raise InvalidArgument(f"holder {holder_id} offers no carrier; it must offer at least tcp")
        for carrier, address in offers:
            if carrier not in CARRIER_NAMES:
                raise InvalidArgument(f"holder {holder_id} offers unknown carrier {carrier!r}; known: {CARRIER_NAMES}")
            if not address:
                raise InvalidArgument(f"holder {holder_id} offers {carrier} with an empty address")
        if lease_ttl_s < 0 or max_concurrent_reads < 0:
            raise InvalidArgument(
                f"lease_ttl_s {lease_ttl_s} and max_concurrent_reads {max_concurrent_reads} must be >= 0"
            )
        ttl_s = min(lease_ttl_s or self.config.default_lease_ttl_s, self.config.max_lease_ttl_s)
        record = Holder(
            holder_id=holder_id,
            offers=tuple((c, a) for c, a in offers),
            topology=topology,
            transport_host_id=transport_host_id,
            max_concurrent_reads=max_concurrent_reads or self.config.default_max_concurrent_reads,
            lease_ttl_s=ttl_s,
        )
        key = self._k("holder", holder_id)
        if not await self.meta.client.exists(key):
            # A lease that lapsed removed the holder: what it held and read before is forgotten until
            # reported again.
            await self._release_reader_leases(holder_id, None)
            await self._forget_holdings(holder_id)
        await self.meta.client.set(key, record.to_json(), px=int(ttl_s * 1000))
        logger.info("holder %s registered at %s (lease %.1f s)", holder_id, topology, ttl_s)
        return ttl_s

    async def _forget_holdings(self, holder_id: str) -> None:
        held_key = self._k("holder", holder_id, "held")
        members = await self.meta.client.smembers(held_key)
        async with self.meta.client.pipeline(transaction=True) as pipe:
            for member in members:
                model, version = json.loads(member)
                pipe.hdel(self._k("model", model, "v", version, "holders"), holder_id)
                pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
            pipe.delete(held_key)
            await pipe.execute()

    async def unregister_holder(self, *, request_id: str, holder_id: str) -> None:
        """Remove a holder now; its holdings and read leases go with it."""
        _check_name("holder_id", holder_id)
        await self._release_reader_leases(holder_id, None)
        await self._forget_holdings(holder_id)
        await self.meta.client.delete(self._k("holder", holder_id), self._k("holder", holder_id, "readers"))
        self._notify(None)

    async def _holder(self, holder_id: str) -> Holder | None:
        raw = await self.meta.client.get(self._k("holder", holder_id))
        return None if raw is None else Holder.from_json(raw)

    async def _holders(self, holder_ids: Sequence[str]) -> dict[str, Holder]:
        if not holder_ids:
            return {}
        raws = await self.meta.client.mget([self._k("holder", h) for h in holder_ids])
        return {h: Holder.from_json(r) for h, r in zip(holder_ids, raws, strict=True) if r is not None}

    async def heartbeat(self, *, holder_id: str) -> tuple[float, list[HeldState]]:
        """Renew a lease; NotFound once it lapsed. Returns the lease and the holder's versions."""
        record = await self._holder(holder_id)
        if record is None or not await self.meta.client.pexpire(
            self._k("holder", holder_id), int(record.lease_ttl_s * 1000)
        ):
            raise NotFound(f"holder {holder_id} is not registered (its lease lapsed?): register and report again")
        states = []
        for member in sorted(await self.meta.client.smembers(self._k("holder", holder_id, "held"))):
            model, version = json.loads(member)
            states.append(
                HeldState(
                    model=model,
                    version=version,
                    num_active_reads=await self._active_reads(holder_id, model, version),
                    retired=not await self._retained(model, version),
                )
            )
        return record.lease_ttl_s, states

    async def _live_entries(self, key: str) -> dict[str, int]:
        """Fields of a lease hash whose expiry has not passed; expired ones are deleted."""
        entries = {f: int(v) for f, v in (await self.meta.client.hgetall(key)).items()}
        now = _now_ms()
        expired = [f for f, expiry in entries.items() if expiry <= now]
        if expired:
            await self.meta.client.hdel(key, *expired)
        return {f: e for f, e in entries.items() if e > now}

    async def _active_reads(self, holder_id: str, model: str | None = None, version: int | None = None) -> int:
        """Readers with a live lease on ``holder_id`` (for one version, or any)."""
        entries = await self._live_entries(self._k("holder", holder_id, "readers"))
        readers = [f.split(_SEP) for f in entries]
        live = await self._holders(sorted({r[0] for r in readers}))
        return sum(
            1 for reader, m, v in readers if reader in live and (model is None or (m == model and int(v) == version))
        )

    async def _count_live_readers(
        self, lease_tables: dict[str, dict[str, str]], known: dict[str, Holder]
    ) -> dict[str, int]:
        """Per holder, the readers with an unexpired lease on it (any version) that are still
        registered; ``known`` are records already read (no need to read them again)."""
        now = _now_ms()
        readers = {
            h: [f.split(_SEP)[0] for f, expiry in table.items() if int(expiry) > now]
            for h, table in lease_tables.items()
        }
        unknown = sorted({r for rs in readers.values() for r in rs} - set(known))
        live = set(known) | set(await self._holders(unknown))
        return {h: sum(1 for r in rs if r in live) for h, rs in readers.items()}

    # Versions -------------------------------------------------------------------------------------

    async def _latest(self, model: str) -> int:
        raw = await self.meta.client.get(self._k("model", model, "latest"))
        return int(raw) if raw is not None else 0

    async def _manifest(self, model: str, version: int) -> Manifest | None:
        cached = self._manifests.get((model, version))
        if cached is not None:
            return cached
        data = await self.meta.get_json(self._k("model", model, "v", version, "manifest"))
        if data is None:
            return None
        manifest = Manifest.from_dict(data["manifest"])
        self._manifests[(model, version)] = manifest
        return manifest

    async def _resolve(self, model: str, version: int) -> Manifest:
        """The committed manifest of ``version`` (0: latest); NotFound / FailedPrecondition otherwise."""
        latest = await self._latest(model)
        if latest == 0:
            raise NotFound(f"model {model!r} has no committed version")
        if version == 0:
            version = latest
        if version > latest:
            raise FailedPrecondition(f"version {version} of {model!r} is not committed (latest committed: {latest})")
        manifest = await self._manifest(model, version)
        if manifest is None:
            raise NotFound(f"version {version} of {model!r} was retired and is no longer held")
        return manifest

    async def _retained(self, model: str, version: int) -> bool:
        newest = await self.meta.client.zrevrange(
            self._k("model", model, "versions"), 0, self.config.keep_last_versions - 1
        )
        if str(version) in newest:
            return True
        return bool(await self.meta.client.scard(self._k("model", model, "v", version, "pins")))

    async def publish(
        self, *, request_id: str, holder_id: str, manifest: Manifest, shard_index: int, num_shards: int
    ) -> PublishResult:
        """Register one shard of a version held by ``holder_id``; commits when every shard is in."""

        async def compute() -> dict[str, Any]:
            return asdict(await self._publish(holder_id, manifest, shard_index, num_shards))

        return PublishResult(**await self._once("publish", request_id, compute))

    async def _publish(self, holder_id: str, manifest: Manifest, shard_index: int, num_shards: int) -> PublishResult:
        _check_name("model", manifest.model)
        if not 1 <= num_shards <= 65536 or not 0 <= shard_index < num_shards:
            raise InvalidArgument(
                f"shard_index {shard_index} must be in 0..num_shards-1 and num_shards {num_shards} in 1..65536"
            )
        validate(manifest)
        if await self._holder(holder_id) is None:
            raise FailedPrecondition(f"holder {holder_id} is not registered: RegisterHolder first")
        model, version = manifest.model, manifest.version
        async with self._lock(model):
            latest = await self._latest(model)
            if version <= latest:
                return await self._publish_replica(holder_id, manifest, shard_index, num_shards, latest)
            pending_key = self._k("model", model, "v", version, "pending")
            holders_key = self._k("model", model, "v", version, "pending_holders")
            pending = {int(k): json.loads(v) for k, v in (await self.meta.client.hgetall(pending_key)).items()}
            for other in pending.values():
                if other["num_shards"] != num_shards:
                    raise InvalidArgument(
                        f"version {version} of {model!r} is being published in {other['num_shards']} shards, this "
                        f"request says {num_shards}"
                    )
            shard_json = manifest.to_dict()
            if shard_index in pending and pending[shard_index]["manifest"] != shard_json:
                raise InvalidArgument(
                    f"shard {shard_index} of version {version} of {model!r} was published with another manifest"
                )
            shards = {i: Manifest.from_dict(p["manifest"]) for i, p in pending.items()}
            shards[shard_index] = manifest
            check_compatible_shards([shards[i] for i in sorted(shards)])
            pending_holders = {h: int(s) for h, s in (await self.meta.client.hgetall(holders_key)).items()}
            if pending_holders.get(holder_id, shard_index) != shard_index:
                raise InvalidArgument(
                    f"holder {holder_id} already publishes shard {pending_holders[holder_id]} of version {version}; "
                    "one holder serves one shard"
                )
            pending_holders[holder_id] = shard_index
            if len(shards) < num_shards:
                async with self.meta.client.pipeline(transaction=True) as pipe:
                    pipe.hset(
                        pending_key, str(shard_index), json.dumps({"num_shards": num_shards, "manifest": shard_json})
                    )
                    pipe.hset(holders_key, holder_id, shard_index)
                    await pipe.execute()
                return PublishResult(committed=False, num_shards_registered=len(shards), root_hash="")
            merged = merge_shards([shards[i] for i in range(num_shards)])
            await self._commit(merged, pending_holders, pending_key, holders_key)
            return PublishResult(committed=True, num_shards_registered=num_shards, root_hash=merged.root_hash)

    async def _commit(self, merged: Manifest, holders: dict[str, int], *pending_keys: str) -> None:
        model, version = merged.model, merged.version
        record = {"manifest": merged.to_dict(), "committed_at": time.time()}
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.set(self._k("model", model, "v", version, "manifest"), json.dumps(record))
            pipe.zadd(self._k("model", model, "versions"), {str(version): version})
            for holder, shard in holders.items():
                pipe.hset(self._k("model", model, "v", version, "holders"), holder, shard)
                pipe.sadd(self._k("holder", holder, "held"), json.dumps([model, version]))
            pipe.delete(*pending_keys)
            pipe.set(self._k("model", model, "latest"), version)
            await pipe.execute()
        self._manifests[(model, version)] = merged
        logger.info(
            "committed %s v%d: %d tensors, %d chunks, %d bytes, %d shards, root %s",
            model,
            version,
            len(merged.tensors),
            len(merged.chunks),
            merged.size_bytes,
            merged.num_shards,
            merged.root_hash,
        )
        event = self._commits.pop(model, None)
        if event is not None:
            event.set()
        self._notify(model)
        await self._prune(model)

    async def _publish_replica(
        self, holder_id: str, manifest: Manifest, shard_index: int, num_shards: int, latest: int
    ) -> PublishResult:
        model, version = manifest.model, manifest.version
        committed = await self._manifest(model, version)
        refused = FailedPrecondition(
            f"version {version} of {model!r} is not above the latest committed version {latest}; versions only go up"
        )
        if committed is None or committed.num_shards != num_shards:
            raise refused
        chunks = committed.shard_chunks(shard_index)
        mine = [(c.tensor_name, c.offset_bytes, c.size_bytes, c.hash_hex) for c in manifest.chunks]
        theirs = [
            (c.tensor_name, c.offset_bytes, c.size_bytes, c.hash_hex)
            for c in committed.chunks[chunks.start : chunks.stop]
        ]
        if mine != theirs:
            raise refused
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.hset(self._k("model", model, "v", version, "holders"), holder_id, shard_index)
            pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
            await pipe.execute()
        return PublishResult(committed=True, num_shards_registered=num_shards, root_hash=committed.root_hash)

    async def _prune(self, model: str) -> None:
        """Drop the metadata of retired versions that no live holder has any more."""
        for raw in await self.meta.client.zrange(self._k("model", model, "versions"), 0, -1):
            version = int(raw)
            if await self._retained(model, version) or await self._live_holders(model, version):
                continue
            async with self.meta.client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._k("model", model, "versions"), raw)
                pipe.delete(
                    self._k("model", model, "v", version, "manifest"),
                    self._k("model", model, "v", version, "holders"),
                    self._k("model", model, "v", version, "pullers"),
                )
                await pipe.execute()
            self._manifests.pop((model, version), None)
            logger.info("retired %s v%d: no live holder left", model, version)

    async def _live_holders(self, model: str, version: int) -> dict[str, tuple[Holder, int]]:
        holders = {
            h: int(s)
            for h, s in (await self.meta.client.hgetall(self._k("model", model, "v", version, "holders"))).items()
        }
        records = await self._holders(sorted(holders))
        return {h: (records[h], holders[h]) for h in records}

    async def get_manifest(self, *, model: str, version: int) -> Manifest:
        """The committed manifest of ``version`` (0: latest)."""
        return await self._resolve(model, version)

    # Plans ----------------------------------------------------------------------------------------

    async def get_plan(
        self,
        *,
        request_id: str,
        reader_id: str,
        model: str,
        version: int,
        held_version: int,
        chunk_indices: Sequence[int],
        max_wait_s: float = 0.0,
        allow_partial: bool = False,
        max_chunks: int = 0,
    ) -> PlanResult:
        """Plan a reader's fetch (see the GetPlan RPC); held open up to ``max_wait_s`` while every
        suitable source is busy."""
        if max_wait_s < 0 or max_chunks < 0:
            raise InvalidArgument(f"max_wait_s {max_wait_s} and max_chunks {max_chunks} must be >= 0")

        async def compute() -> dict[str, Any]:
            return asdict(
                await self._plan(reader_id, model, version, held_version, chunk_indices, allow_partial, max_chunks)
            )

        deadline = time.monotonic() + min(max_wait_s, self.config.plan_max_wait_s)
        woken_after: int | None = None  # set when woken: how many woken before it found nothing
        while True:
            unclaimed = self._unclaimed.get(model, 0)
            try:
                data = await self._once("plan", request_id, compute)
            except ResourceExhausted:
                if woken_after is not None and woken_after + 1 < _WAKE_CHAIN_FAILURES:
                    self._wake_next(model, woken_after + 1)
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise
            else:
                if woken_after is not None:
                    self._wake_next(model, 0)
                break
            woken_after = None
            if self._unclaimed.get(model, 0) != unclaimed:
                continue  # a change no held plan took came while this one ran: try again at once
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(model, collections.deque()).append(waiter)
            try:
                woken_after = await asyncio.wait_for(waiter, timeout=min(left_s, self.config.watch_poll_s))
            except TimeoutError:
                pass  # re-plan anyway: leases expire and other hub instances change Redis unseen
        data["reads"] = [SourceReadOut(**r) for r in data["reads"]]
        return PlanResult(**data)

    async def _plan(
        self,
        reader_id: str,
        model: str,
        version: int,
        held_version: int,
        chunk_indices: Sequence[int],
        allow_partial: bool,
        max_chunks: int,
    ) -> PlanResult:
        reader = await self._holder(reader_id)
        if reader is None:
            raise FailedPrecondition(f"reader {reader_id} is not registered: RegisterHolder first")
        manifest = await self._resolve(model, version)
        version = manifest.version
        base_version = 0
        if chunk_indices:
            bad = [i for i in chunk_indices if not 0 <= i < len(manifest.chunks)]
            if bad:
                raise InvalidArgument(f"chunk indices {bad[:8]} out of range for {len(manifest.chunks)} chunks")
            if len(set(chunk_indices)) != len(chunk_indices):
                raise InvalidArgument("chunk_indices repeat")
            needed = list(chunk_indices)
            base_version = held_version
        else:
            base = await self._manifest(model, held_version) if held_version else None
            needed = manifest.changed_chunks(base)
            base_version = held_version if base is not None else 0
        async with self._lock(model):
            # A handful of round trips, however many holders: plans are the hub's hottest path.
            async with self.meta.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(self._k("model", model, "v", version, "holders"))
                pipe.smembers(self._k("model", model, "v", version, "excluded", reader_id))
                shards, excluded = await pipe.execute()
            records = await self._holders(sorted(shards))
            live = {h: (records[h], int(shards[h])) for h in records}
            partial_ids = [h for h, (_, s) in live.items() if s == PARTIAL]
            async with self.meta.client.pipeline(transaction=False) as pipe:
                for holder_id in partial_ids:
                    pipe.smembers(self._k("model", model, "v", version, "chunks", holder_id))
                for holder_id in live:
                    pipe.hgetall(self._k("holder", holder_id, "readers"))
                replies = await pipe.execute()
            partial = {h: frozenset(int(c) for c in m) for h, m in zip(partial_ids, replies, strict=False)}
            active = await self._count_live_readers(dict(zip(live, replies[len(partial_ids) :], strict=True)), records)
            sources = []
            for holder_id, (record, shard) in live.items():
                chunks: range | frozenset[int] | None
                if shard == PARTIAL:
                    chunks = partial[holder_id]
                    if not chunks:
                        continue
                else:
                    chunks = None if shard == WHOLE_VERSION else manifest.shard_chunks(shard)
                sources.append(
                    Source(
                        holder_id=holder_id,
                        topology=record.topology,
                        chunks=chunks,
                        active_reads=active[holder_id],
                        max_concurrent_reads=record.max_concurrent_reads,
                        publisher=shard >= 0,
                    )
                )
            pullers_key = self._k("model", model, "v", version, "pullers")
            puller_busy = False
            if reader.topology.datacenter:
                puller = await self.meta.client.hget(pullers_key, reader.topology.datacenter)
                if puller:
                    puller_id, expiry = puller.split(_SEP)
                    puller_busy = (
                        puller_id != reader_id and int(expiry) > _now_ms() and await self._holder(puller_id) is not None
                    )
            plan = plan_reads(
                reader_id=reader_id,
                reader=reader.topology,
                chunks=needed,
                chunk_sizes=[c.size_bytes for c in manifest.chunks],
                sources=sources,
                excluded=excluded,
                datacenter_puller_busy=puller_busy,
                defer_busy=allow_partial,
                max_chunks=max_chunks,
            )
            expiry = _now_ms() + int(self.config.read_lease_ttl_s * 1000)
            reads = []
            async with self.meta.client.pipeline(transaction=True) as pipe:
                for read in plan.reads:
                    pipe.hset(
                        self._k("holder", read.holder_id, "readers"),
                        _SEP.join([reader_id, model, str(version)]),
                        expiry,
                    )
                    pipe.hset(
                        self._k("holder", reader_id, "reading"),
                        _SEP.join([read.holder_id, model, str(version)]),
                        expiry,
                    )
                    carrier, address = _offer(reader, live[read.holder_id][0], read.locality)
                    reads.append(
                        SourceReadOut(
                            holder_id=read.holder_id,
                            carrier=carrier,
                            address=address,
                            locality=int(read.locality),
                            chunk_indices=list(read.chunk_indices),
                        )
                    )
                if plan.cross_datacenter and reader.topology.datacenter:
                    pipe.hset(pullers_key, reader.topology.datacenter, f"{reader_id}{_SEP}{expiry}")
                await pipe.execute()
        return PlanResult(
            model=model,
            version=version,
            base_version=base_version,
            reads=reads,
            planned_size_bytes=plan.size_bytes,
            deferred_chunk_indices=list(plan.deferred),
        )

    async def report_progress(
        self,
        *,
        request_id: str,
        holder_id: str,
        model: str,
        version: int,
        chunk_indices: Sequence[int],
        finished_holder_ids: Sequence[str],
    ) -> int:
        """Record chunks a reader verified (it serves them from now on) and release its read leases
        on the sources it finished with; returns the chunks it is recorded as holding."""
        if await self._holder(holder_id) is None:
            raise NotFound(f"holder {holder_id} is not registered (its lease lapsed?)")
        manifest = await self._resolve(model, version)
        version = manifest.version
        bad = [i for i in chunk_indices if not 0 <= i < len(manifest.chunks)]
        if bad:
            raise InvalidArgument(f"chunk indices {bad[:8]} out of range for {len(manifest.chunks)} chunks")
        for source in finished_holder_ids:
            _check_name("finished holder id", source)
        holders_key = self._k("model", model, "v", version, "holders")
        chunks_key = self._k("model", model, "v", version, "chunks", holder_id)
        async with self._lock(model):
            shard = await self.meta.client.hget(holders_key, holder_id)
            async with self.meta.client.pipeline(transaction=True) as pipe:
                if shard is None or int(shard) == PARTIAL:
                    if chunk_indices:
                        pipe.sadd(chunks_key, *[str(i) for i in chunk_indices])
                        # Outlives any read; a set left by a reader that died goes on its own.
                        pipe.pexpire(chunks_key, int(self.config.read_lease_ttl_s * 5000))
                        pipe.hset(holders_key, holder_id, PARTIAL)
                        pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    pipe.scard(chunks_key)
                for source in finished_holder_ids:
                    pipe.hdel(self._k("holder", holder_id, "reading"), _SEP.join([source, model, str(version)]))
                    pipe.hdel(self._k("holder", source, "readers"), _SEP.join([holder_id, model, str(version)]))
                results = await pipe.execute()
        self._notify(model)
        if shard is not None and int(shard) != PARTIAL:
            return len(manifest.chunks) if int(shard) == WHOLE_VERSION else len(manifest.shard_chunks(int(shard)))
        return int(results[4 if chunk_indices else 0])

    async def _release_reader_leases(self, reader_id: str, version_of: tuple[str, int] | None) -> None:
        """Release the read leases ``reader_id`` holds (on one version, or all)."""
        reading_key = self._k("holder", reader_id, "reading")
        fields = await self.meta.client.hkeys(reading_key)
        async with self.meta.client.pipeline(transaction=True) as pipe:
            for field_name in fields:
                source, model, version = field_name.split(_SEP)
                if version_of is not None and (model, int(version)) != version_of:
                    continue
                pipe.hdel(reading_key, field_name)
                pipe.hdel(self._k("holder", source, "readers"), _SEP.join([reader_id, model, version]))
            await pipe.execute()
        if version_of is not None:
            model, version = version_of
            pullers_key = self._k("model", model, "v", version, "pullers")
            for dc, value in (await self.meta.client.hgetall(pullers_key)).items():
                if value.split(_SEP)[0] == reader_id:
                    await self.meta.client.hdel(pullers_key, dc)

    async def report_held(
        self, *, request_id: str, holder_id: str, model: str, version: int, held: bool, root_hash: str
    ) -> int:
        """Record that a holder holds (or stopped serving) a whole version; returns reads in flight."""
        if await self._holder(holder_id) is None:
            raise NotFound(f"holder {holder_id} is not registered (its lease lapsed?)")
        manifest = await self._resolve(model, version)
        async with self._lock(model):
            if held:
                if root_hash != manifest.root_hash:
                    raise InvalidArgument(
                        f"holder {holder_id} verified root hash {root_hash!r} but v{version} of {model!r} is "
                        f"{manifest.root_hash!r}; it is not recorded as a holder"
                    )
                async with self.meta.client.pipeline(transaction=True) as pipe:
                    pipe.hset(self._k("model", model, "v", version, "holders"), holder_id, WHOLE_VERSION)
                    pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
                    await pipe.execute()
            else:
                async with self.meta.client.pipeline(transaction=True) as pipe:
                    pipe.hdel(self._k("model", model, "v", version, "holders"), holder_id)
                    pipe.srem(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
                    await pipe.execute()
            await self._release_reader_leases(holder_id, (model, version))
        self._notify(model)
        if not held:
            await self._prune(model)
            return await self._active_reads(holder_id, model, version)
        return 0

    async def report_read_failure(
        self, *, request_id: str, reader_id: str, holder_id: str, model: str, version: int, failure: str, detail: str
    ) -> None:
        """Stop planning ``holder_id`` for this reader and version (for everyone on a hash mismatch)."""
        if await self._holder(reader_id) is None:
            raise NotFound(f"reader {reader_id} is not registered (its lease lapsed?)")
        await self._resolve(model, version)
        logger.warning(
            "reader %s failed reading %s v%d from %s (%s): %s", reader_id, model, version, holder_id, failure, detail
        )
        excluded_key = self._k("model", model, "v", version, "excluded", reader_id)
        async with self._lock(model):
            async with self.meta.client.pipeline(transaction=True) as pipe:
                pipe.sadd(excluded_key, holder_id)
                pipe.pexpire(excluded_key, int(self.config.read_lease_ttl_s * 1000) * 5)
                pipe.hdel(self._k("holder", reader_id, "reading"), _SEP.join([holder_id, model, str(version)]))
                pipe.hdel(self._k("holder", holder_id, "readers"), _SEP.join([reader_id, model, str(version)]))
                if failure == "hash_mismatch":
                    pipe.hdel(self._k("model", model, "v", version, "holders"), holder_id)
                    pipe.srem(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
                await pipe.execute()
        self._notify(model)

    # Pins, listing, watching ----------------------------------------------------------------------

    async def pin(self, *, request_id: str, model: str, version: int, owner: str) -> None:
        """Keep ``version`` beyond retention on behalf of ``owner``."""
        _check_name("owner", owner)
        manifest = await self._resolve(model, version)
        await self.meta.client.sadd(self._k("model", model, "v", manifest.version, "pins"), owner)

    async def unpin(self, *, request_id: str, model: str, version: int, owner: str) -> None:
        """Remove ``owner``'s pin; retention applies again once no pin remains."""
        _check_name("owner", owner)
        if await self._latest(model) == 0:
            raise NotFound(f"model {model!r} has no committed version")
        await self.meta.client.srem(self._k("model", model, "v", version, "pins"), owner)
        await self._prune(model)

    async def _info(self, model: str, version: int) -> VersionInfo | None:
        data = await self.meta.get_json(self._k("model", model, "v", version, "manifest"))
        if data is None:
            return None
        manifest = await self._manifest(model, version)
        assert manifest is not None
        return VersionInfo(
            model=model,
            version=version,
            root_hash=manifest.root_hash,
            size_bytes=manifest.size_bytes,
            num_chunks=len(manifest.chunks),
            num_holders=len(await self._live_holders(model, version)),
            pinned=bool(await self.meta.client.scard(self._k("model", model, "v", version, "pins"))),
            committed_at_unix_s=float(data["committed_at"]),
        )

    async def list_versions(self, *, model: str) -> list[VersionInfo]:
        """Committed versions within retention (or pinned) with at least one live holder, ascending."""
        if await self._latest(model) == 0:
            raise NotFound(f"model {model!r} has no committed version")
        out = []
        for raw in await self.meta.client.zrange(self._k("model", model, "versions"), 0, -1):
            version = int(raw)
            if not await self._retained(model, version):
                continue
            info = await self._info(model, version)
            if info is not None and info.num_holders > 0:
                out.append(info)
        return out

    async def watch(self, *, model: str, after_version: int) -> AsyncIterator[VersionInfo]:
        """The latest committed version above ``after_version``, then each newer one as it commits."""
        _check_name("model", model)
        last = after_version
        while True:
            event = self._commits.setdefault(model, asyncio.Event())
            latest = await self._latest(model)
            if latest > last:
                info = await self._info(model, latest)
                if info is not None:
                    yield info
                last = latest
                continue
            try:
                await asyncio.wait_for(event.wait(), timeout=self.config.watch_poll_s)
            except TimeoutError:
                pass

    async def close(self) -> None:
        """Wake watchers so streams end promptly."""
        for event in self._commits.values():
            event.set()


def _offer(reader: Holder, holder: Holder, place: Locality) -> tuple[str, str]:
    """The carrier for one reader-holder pair: shared memory on one host, else the holder's first other offer."""
    offers = dict(reversed(holder.offers))  # first offer of each carrier wins
    if (
        place == Locality.SAME_HOST
        and "shm" in offers
        and reader.transport_host_id
        and reader.transport_host_id == holder.transport_host_id
    ):
        return "shm", offers["shm"]
    for carrier, address in holder.offers:
        if carrier != "shm":
            return carrier, address
    raise FailedPrecondition(
        f"holder {holder.holder_id} offers only shared memory and reader {reader.holder_id} is elsewhere"
    )
