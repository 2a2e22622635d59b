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
in one MULTI/EXEC, so Redis never shows half of one. One hub instance serves a model at a time, so
the hub also keeps what it knows in memory (holders and their leases, each version's holders and
chunks, read leases, versions, pins): Redis is the durable copy, loaded on first use after a start
and written through on every change, and answering a plan, a progress report or a version watch
costs no Redis read -- a plan is one write of its read leases.

A reader that serves chunks as they arrive (``serve_in_flight``) is named as the source of the
chunks it is fetching from a holder that has them, before it reports them (see the planner's rule
7); which chunks those are is kept in memory only.

A GetPlan that finds every source busy is held open: it waits for a change of the model's holders or
read leases (progress, held, failures, leaves), re-planning at least every ``watch_poll_s`` for
what it cannot see (lease expiry), until its wait bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.common.redis_meta import RedisMeta
from services.weighthub.config import WeightHubConfig
from services.weighthub.planner import Locality, Source, Topology, locality, plan_reads
from services.weighthub.versions import Manifest, check_compatible_shards, merge_shards, validate

logger = logging.getLogger(__name__)

CARRIER_NAMES = ("tcp", "shm", "ucx", "nixl")
WHOLE_VERSION = -1
PARTIAL = -2
"""Shard index of a reader that holds some verified chunks while it fetches the rest."""
_WAKE_CHAIN_FAILURES = 2
"""Held plans woken in a row that find every source still busy before waking stops until the next change."""
_SEP = "|"
_MAX_ANSWERS_IN_MEMORY = 10_000
"""Answers to request ids kept in memory for retries (Redis keeps them all, for ``request_ttl_s``)."""
_MAX_DELTAS_IN_MEMORY = 64
"""Deltas between committed versions kept for the plans of the readers that ask for them."""
_SOFT_WRITE_DELAY_S = 0.005
"""Longest soft state (read leases, a partial holder's chunks) waits for Redis, so that the plans
and reports of a burst share one MULTI/EXEC round trip; a durable change flushes at once."""


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


class _Batch:
    """Redis write commands recorded in order (``batch.hset(...)``), for the hub's writer to run."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.written: asyncio.Future[None] | None = None
        """Done once Redis has the commands (set when the batch joins the writer's queue)."""
        self.flush: asyncio.Event | None = None
        """The writer's signal to write what is queued now (set with ``written``)."""

    async def durable(self) -> None:
        """Wait until Redis has the commands (outside the model's lock: others need not wait too)."""
        if self.written is not None:
            if self.flush is not None:
                self.flush.set()  # someone waits: no reason to wait for more writes to join
            await asyncio.shield(self.written)

    def __getattr__(self, name: str) -> Callable[..., None]:
        def record(*args: Any, **kwargs: Any) -> None:
            self.commands.append((name, args, kwargs))

        return record


@dataclass
class _VersionState:
    """What the hub knows of one committed version's holders (mirrors Redis)."""

    holders: dict[str, int]
    """Holder id -> shard index (WHOLE_VERSION, PARTIAL or a publisher's shard)."""
    partial: dict[str, set[int]]
    """Chunks each partial holder has verified."""
    pins: set[str]
    """Owners pinning the version."""
    excluded: dict[str, tuple[set[str], float]] = field(default_factory=dict)
    """Reader id -> holders not to plan for it, and when that ends (monotonic)."""
    fetching: dict[str, set[int]] = field(default_factory=dict)
    """Reader id -> chunks planned for it from a holder that has them, not reported yet, for
    readers that serve chunks as they arrive (``serve_in_flight``): later plans name it as their
    source. Soft state, in memory only: after a restart plans wait for progress reports instead."""
    excluded_complete: bool = False
    """``excluded`` holds every exclusion there is (the version was committed by this instance, which
    records each one as it makes it): a reader without an entry has none, and Redis is not asked."""


class WeightHub:
    """Versions, holders and read plans of model weights (see the module docstring)."""

    def __init__(self, meta: RedisMeta, config: WeightHubConfig) -> None:
        self.meta = meta
        self.config = config
        self._locks: dict[str, asyncio.Lock] = {}
        self._manifests: dict[tuple[str, int], Manifest] = {}
        self._committed_at: dict[tuple[str, int], float] = {}
        self._commits: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, collections.deque[asyncio.Future[int]]] = {}
        self._unclaimed: dict[str, int] = {}
        """Per model: changes that found no held plan waiting (one being computed may need them)."""
        # The in-memory mirror of Redis: loaded on first use, written through on every change.
        self._records: dict[str, tuple[Holder, float]] = {}
        """Holder id -> record and the end of its lease (monotonic)."""
        self._held_by: dict[str, set[tuple[str, int]]] = {}
        self._readers: dict[str, dict[str, int]] = {}
        """Holder id -> ``reader|M|V`` -> read-lease expiry (ms) of readers reading from it."""
        self._reading: dict[str, dict[str, int]] = {}
        """Reader id -> ``source|M|V`` -> expiry (ms) of the read leases it holds."""
        self._latest_of: dict[str, int] = {}
        self._versions_of: dict[str, list[int]] = {}
        self._states: dict[tuple[str, int], _VersionState] = {}
        self._answers: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()
        self._deltas: collections.OrderedDict[tuple[str, int, int], list[int]] = collections.OrderedDict()
        """Chunks that differ between two committed versions of a model: (model, version, base)."""
        self._backlog: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._backlog_done: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._flush = asyncio.Event()
        """Set when the backlog holds a durable change (someone waits for it): write it now."""

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

    @contextlib.asynccontextmanager
    async def _writing(self, *, durable: bool) -> AsyncIterator[_Batch]:
        """Record write commands; on exit they join the writer's queue. A durable change (commits,
        holdings, pins) waits until Redis has it; soft state (read leases, a partial holder's chunks,
        withdrawals) does not: Redis gets it in order with the rest, and a hub that dies first loses
        only leases that expire anyway, chunks the reader reports again as held, and withdrawals
        whose holders refuse the reads then planned to them (the reads are planned elsewhere)."""
        batch = _Batch()
        yield batch
        if not batch.commands:
            return
        self._backlog.extend(batch.commands)
        if self._backlog_done is None:
            self._backlog_done = asyncio.get_running_loop().create_future()
        batch.written = self._backlog_done
        batch.flush = self._flush
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_backlog(), name="weighthub-redis-writer")
        if durable:
            await batch.durable()

    async def _write_backlog(self) -> None:
        """Run queued writes in order, each batch that accumulated meanwhile in one MULTI/EXEC.
        Soft state alone waits up to ``_SOFT_WRITE_DELAY_S`` for more to join it."""
        while self._backlog:
            if not self._flush.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._flush.wait(), _SOFT_WRITE_DELAY_S)
            self._flush.clear()
            commands, self._backlog = self._backlog, []
            done, self._backlog_done = self._backlog_done, None
            assert done is not None
            try:
                async with self.meta.client.pipeline(transaction=True) as pipe:
                    for name, args, kwargs in commands:
                        getattr(pipe, name)(*args, **kwargs)
                    await pipe.execute()
            except Exception as exc:
                logger.warning("writing %d commands to Redis failed: %s", len(commands), exc)
                done.set_exception(exc)
                done.exception()  # retrieved here too: a soft write has nobody waiting for it
            else:
                done.set_result(None)

    def _lock(self, model: str) -> asyncio.Lock:
        return self._locks.setdefault(model, asyncio.Lock())

    def _k(self, *parts: object) -> str:
        return self.meta.key(*parts)

    async def _once(
        self,
        method: str,
        request_id: str,
        compute: Callable[[], Awaitable[dict[str, Any]]],
        *,
        durable: bool = True,
    ) -> dict[str, Any]:
        """The answer to ``request_id`` of ``method``: computed once, replayed on retries from
        memory, or, when ``durable``, from Redis after a restart. (Plans are not durable: after a
        restart a retried plan is planned afresh, and the first one's read leases expire.)"""
        if not request_id:
            return await compute()
        cache_key = (method, request_id)
        cached = self._answers.get(cache_key)
        if cached is not None:
            return dict(cached)
        key = self._k("request", method, request_id)
        if durable:
            stored = await self.meta.get_json(key)
            if stored is not None:
                return dict(stored)
        result = await compute()
        self._answers[cache_key] = result
        while len(self._answers) > _MAX_ANSWERS_IN_MEMORY:
            self._answers.popitem(last=False)
        if durable:
            async with self._writing(durable=False) as batch:
                batch.set(key, json.dumps(result), px=int(self.config.request_ttl_s * 1000))
        return dict(result)

    # The mirror ----------------------------------------------------------------------------------

    async def _holders(self, holder_ids: Sequence[str]) -> dict[str, Holder]:
        """Records of the live holders among ``holder_ids`` (memory, Redis for unknown ones)."""
        now = time.monotonic()
        out: dict[str, Holder] = {}
        unknown = []
        for holder_id in holder_ids:
            cached = self._records.get(holder_id)
            if cached is None:
                unknown.append(holder_id)
            elif cached[1] > now:
                out[holder_id] = cached[0]
            else:
                del self._records[holder_id]  # lease lapsed (Redis let the key expire too)
        if unknown:
            async with self.meta.client.pipeline(transaction=False) as pipe:
                for holder_id in unknown:
                    pipe.get(self._k("holder", holder_id))
                    pipe.pttl(self._k("holder", holder_id))
                replies = await pipe.execute()
            for i, holder_id in enumerate(unknown):
                raw, ttl_ms = replies[2 * i], replies[2 * i + 1]
                if raw is not None and ttl_ms is not None and int(ttl_ms) > 0:
                    record = Holder.from_json(raw)
                    self._records[holder_id] = (record, now + int(ttl_ms) / 1000)
                    out[holder_id] = record
        return out

    async def _holder(self, holder_id: str) -> Holder | None:
        return (await self._holders([holder_id])).get(holder_id)

    async def _held(self, holder_id: str) -> set[tuple[str, int]]:
        held = self._held_by.get(holder_id)
        if held is None:
            members = await self.meta.client.smembers(self._k("holder", holder_id, "held"))
            held = self._held_by.setdefault(holder_id, {(m, int(v)) for m, v in map(json.loads, members)})
        return held

    async def _lease_table(self, tables: dict[str, dict[str, int]], kind: str, holder_id: str) -> dict[str, int]:
        table = tables.get(holder_id)
        if table is None:
            raw = await self.meta.client.hgetall(self._k("holder", holder_id, kind))
            table = tables.setdefault(holder_id, {f: int(e) for f, e in raw.items()})
        return table

    async def _readers_of(self, holder_id: str) -> dict[str, int]:
        """Read leases of readers reading from ``holder_id``: ``reader|M|V`` -> expiry (ms)."""
        return await self._lease_table(self._readers, "readers", holder_id)

    async def _reading_of(self, reader_id: str) -> dict[str, int]:
        """Read leases ``reader_id`` holds: ``source|M|V`` -> expiry (ms)."""
        return await self._lease_table(self._reading, "reading", reader_id)

    async def _state(self, model: str, version: int) -> _VersionState:
        state = self._states.get((model, version))
        if state is not None:
            return state
        async with self.meta.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k("model", model, "v", version, "holders"))
            pipe.smembers(self._k("model", model, "v", version, "pins"))
            shards, pins = await pipe.execute()
        holders = {h: int(s) for h, s in shards.items()}
        partial_ids = [h for h, s in holders.items() if s == PARTIAL]
        partial: dict[str, set[int]] = {}
        if partial_ids:
            async with self.meta.client.pipeline(transaction=False) as pipe:
                for holder_id in partial_ids:
                    pipe.smembers(self._k("model", model, "v", version, "chunks", holder_id))
                replies = await pipe.execute()
            partial = {h: {int(c) for c in m} for h, m in zip(partial_ids, replies, strict=True)}
        return self._states.setdefault(
            (model, version), _VersionState(holders=holders, partial=partial, pins=set(pins))
        )

    async def _excluded(self, model: str, version: int, reader_id: str) -> set[str]:
        state = await self._state(model, version)
        entry = state.excluded.get(reader_id)
        now = time.monotonic()
        if entry is None:
            if state.excluded_complete:
                return set()  # asking Redis would cost a round trip under the model's lock, per reader
            key = self._k("model", model, "v", version, "excluded", reader_id)
            async with self.meta.client.pipeline(transaction=False) as pipe:
                pipe.smembers(key)
                pipe.pttl(key)
                members, ttl_ms = await pipe.execute()
            entry = (set(members), now + max(0, int(ttl_ms)) / 1000)
            state.excluded[reader_id] = entry
        return entry[0] if entry[1] > now else set()

    def _drop_holding(self, pipe: Any, holder_id: str, model: str, version: int) -> None:
        """Queue (and mirror) that ``holder_id`` no longer holds any of ``version``."""
        pipe.hdel(self._k("model", model, "v", version, "holders"), holder_id)
        pipe.srem(self._k("holder", holder_id, "held"), json.dumps([model, version]))
        pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
        state = self._states.get((model, version))
        if state is not None:
            state.holders.pop(holder_id, None)
            state.partial.pop(holder_id, None)
            state.fetching.pop(holder_id, None)
        held = self._held_by.get(holder_id)
        if held is not None:
            held.discard((model, version))

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
        if await self._holder(holder_id) is None:
            # A lease that lapsed removed the holder: what it held and read before is forgotten until
            # reported again.
            await self._release_reader_leases(holder_id, None)
            await self._forget_holdings(holder_id)
        async with self._writing(durable=True) as pipe:
            pipe.set(self._k("holder", holder_id), record.to_json(), px=int(ttl_s * 1000))
        self._records[holder_id] = (record, time.monotonic() + ttl_s)
        logger.info("holder %s registered at %s (lease %.1f s)", holder_id, topology, ttl_s)
        return ttl_s

    async def _forget_holdings(self, holder_id: str) -> None:
        held = sorted(await self._held(holder_id))
        async with self._writing(durable=True) as pipe:
            for model, version in held:
                self._drop_holding(pipe, holder_id, model, version)
            pipe.delete(self._k("holder", holder_id, "held"))
        self._held_by[holder_id] = set()

    async def unregister_holder(self, *, request_id: str, holder_id: str) -> None:
        """Remove a holder now; its holdings and read leases go with it."""
        _check_name("holder_id", holder_id)
        await self._release_reader_leases(holder_id, None)
        await self._forget_holdings(holder_id)
        async with self._writing(durable=True) as pipe:
            pipe.delete(self._k("holder", holder_id), self._k("holder", holder_id, "readers"))
        self._records.pop(holder_id, None)
        self._readers[holder_id] = {}
        self._notify(None)

    async def heartbeat(self, *, holder_id: str) -> tuple[float, list[HeldState]]:
        """Renew a lease; NotFound once it lapsed. Returns the lease and the holder's versions."""
        record = await self._holder(holder_id)
        if record is None or not await self.meta.client.pexpire(
            self._k("holder", holder_id), int(record.lease_ttl_s * 1000)
        ):
            self._records.pop(holder_id, None)
            raise NotFound(f"holder {holder_id} is not registered (its lease lapsed?): register and report again")
        self._records[holder_id] = (record, time.monotonic() + record.lease_ttl_s)
        states = []
        for model, version in sorted(await self._held(holder_id)):
            states.append(
                HeldState(
                    model=model,
                    version=version,
                    num_active_reads=await self._active_reads(holder_id, model, version),
                    retired=not await self._retained(model, version),
                )
            )
        return record.lease_ttl_s, states

    async def _live_leases(self, holder_id: str) -> list[tuple[str, str, int]]:
        """(reader, model, version) of the unexpired read leases on ``holder_id`` whose reader is
        still registered; expired ones are dropped."""
        table = await self._readers_of(holder_id)
        now = _now_ms()
        expired = [f for f, expiry in table.items() if expiry <= now]
        if expired:
            for f in expired:
                del table[f]
            async with self._writing(durable=False) as pipe:
                pipe.hdel(self._k("holder", holder_id, "readers"), *expired)
        leases = [f.split(_SEP) for f in table]
        live = await self._holders(sorted({r for r, _, _ in leases}))
        return [(r, m, int(v)) for r, m, v in leases if r in live]

    async def _active_reads(self, holder_id: str, model: str | None = None, version: int | None = None) -> int:
        """Readers with a live lease on ``holder_id`` (for one version, or any)."""
        return sum(
            1 for _, m, v in await self._live_leases(holder_id) if model is None or (m == model and v == version)
        )

    # Versions -------------------------------------------------------------------------------------

    async def _latest(self, model: str) -> int:
        latest = self._latest_of.get(model)
        if latest is None:
            raw = await self.meta.client.get(self._k("model", model, "latest"))
            latest = self._latest_of.setdefault(model, int(raw) if raw is not None else 0)
        return latest

    async def _versions(self, model: str) -> list[int]:
        """Committed versions of ``model`` still on record, ascending."""
        versions = self._versions_of.get(model)
        if versions is None:
            raw = await self.meta.client.zrange(self._k("model", model, "versions"), 0, -1)
            versions = self._versions_of.setdefault(model, sorted(int(v) for v in raw))
        return versions

    async def _manifest(self, model: str, version: int) -> Manifest | None:
        cached = self._manifests.get((model, version))
        if cached is not None:
            return cached
        data = await self.meta.get_json(self._k("model", model, "v", version, "manifest"))
        if data is None:
            return None
        manifest = Manifest.from_dict(data["manifest"])
        self._manifests[(model, version)] = manifest
        self._committed_at[(model, version)] = float(data["committed_at"])
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
        versions = await self._versions(model)
        if version not in versions:
            return False  # pruned: neither retained nor pinned any more
        if version in versions[-self.config.keep_last_versions :]:
            return True
        return bool((await self._state(model, version)).pins)

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
            async with self.meta.client.pipeline(transaction=False) as pipe:
                pipe.hgetall(pending_key)
                pipe.hgetall(holders_key)
                raw_pending, raw_holders = await pipe.execute()
            pending = {int(k): json.loads(v) for k, v in raw_pending.items()}
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
            pending_holders = {h: int(s) for h, s in raw_holders.items()}
            if pending_holders.get(holder_id, shard_index) != shard_index:
                raise InvalidArgument(
                    f"holder {holder_id} already publishes shard {pending_holders[holder_id]} of version {version}; "
                    "one holder serves one shard"
                )
            pending_holders[holder_id] = shard_index
            if len(shards) < num_shards:
                async with self._writing(durable=True) as pipe:
                    pipe.hset(
                        pending_key, str(shard_index), json.dumps({"num_shards": num_shards, "manifest": shard_json})
                    )
                    pipe.hset(holders_key, holder_id, shard_index)
                return PublishResult(committed=False, num_shards_registered=len(shards), root_hash="")
            merged = merge_shards([shards[i] for i in range(num_shards)])
            await self._commit(merged, pending_holders, pending_key, holders_key)
            return PublishResult(committed=True, num_shards_registered=num_shards, root_hash=merged.root_hash)

    async def _commit(self, merged: Manifest, holders: dict[str, int], *pending_keys: str) -> None:
        model, version = merged.model, merged.version
        committed_at = time.time()
        record = {"manifest": merged.to_dict(), "committed_at": committed_at}
        versions = await self._versions(model)
        held = {h: await self._held(h) for h in holders}
        async with self._writing(durable=True) as pipe:
            pipe.set(self._k("model", model, "v", version, "manifest"), json.dumps(record))
            pipe.zadd(self._k("model", model, "versions"), {str(version): version})
            for holder, shard in holders.items():
                pipe.hset(self._k("model", model, "v", version, "holders"), holder, shard)
                pipe.sadd(self._k("holder", holder, "held"), json.dumps([model, version]))
            if pending_keys:
                pipe.delete(*pending_keys)
            pipe.set(self._k("model", model, "latest"), version)
        self._manifests[(model, version)] = merged
        self._committed_at[(model, version)] = committed_at
        self._states[(model, version)] = _VersionState(
            holders=dict(holders), partial={}, pins=set(), excluded_complete=True
        )
        for holder in holders:
            held[holder].add((model, version))
        if version not in versions:
            versions.append(version)
            versions.sort()
        self._latest_of[model] = version
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
        state = await self._state(model, version)
        held = await self._held(holder_id)
        async with self._writing(durable=True) as pipe:
            pipe.hset(self._k("model", model, "v", version, "holders"), holder_id, shard_index)
            pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
        state.holders[holder_id] = shard_index
        held.add((model, version))
        return PublishResult(committed=True, num_shards_registered=num_shards, root_hash=committed.root_hash)

    async def _prune(self, model: str) -> None:
        """Drop the metadata of retired versions that no live holder has any more."""
        versions = await self._versions(model)
        retired = []
        for version in list(versions):
            if await self._retained(model, version) or await self._live_holders(model, version):
                continue
            if version in versions:  # not pruned meanwhile by another call
                versions.remove(version)
                retired.append(version)
        if not retired:
            return
        async with self._writing(durable=False) as pipe:
            for version in retired:
                pipe.zrem(self._k("model", model, "versions"), str(version))
                pipe.delete(
                    self._k("model", model, "v", version, "manifest"),
                    self._k("model", model, "v", version, "holders"),
                    self._k("model", model, "v", version, "pullers"),
                )
                self._manifests.pop((model, version), None)
                self._committed_at.pop((model, version), None)
                self._states.pop((model, version), None)
                logger.info("retired %s v%d: no live holder left", model, version)
        await pipe.durable()

    async def _live_holders(self, model: str, version: int) -> dict[str, tuple[Holder, int]]:
        holders = (await self._state(model, version)).holders
        records = await self._holders(sorted(holders))
        return {h: (records[h], holders[h]) for h in records}

    async def _expected_readers(self, model: str, version: int, reader_id: str) -> int:
        """Readers likely to fetch ``version`` now: those fetching or holding part of it, and the
        readers that held the previous version (they fetch each new one). The planner spreads
        the publishers' chunks over them (the planner's ``num_readers``)."""
        state = await self._state(model, version)
        readers = {reader_id, *state.fetching, *state.partial}
        older = [v for v in await self._versions(model) if v < version]
        if older:
            previous = await self._state(model, older[-1])
            readers.update(h for h, shard in previous.holders.items() if shard in (WHOLE_VERSION, PARTIAL))
        readers.update(h for h, shard in state.holders.items() if shard == WHOLE_VERSION)
        return len(await self._holders(sorted(readers))) or 1

    async def get_manifest(self, *, model: str, version: int) -> Manifest:
        """The committed manifest of ``version`` (0: latest)."""
        return await self._resolve(model, version)

    # Plans ----------------------------------------------------------------------------------------

    def _changed_chunks(self, manifest: Manifest, base: Manifest | None) -> list[int]:
        """``manifest.changed_chunks(base)``, worked out once per pair of committed (so unchanging)
        manifests: every reader of a version asks for the same delta against the one before it."""
        if base is None:
            return list(range(len(manifest.chunks)))
        key = (manifest.model, manifest.version, base.version)
        delta = self._deltas.get(key)
        if delta is None:
            delta = self._deltas[key] = manifest.changed_chunks(base)
            while len(self._deltas) > _MAX_DELTAS_IN_MEMORY:
                self._deltas.popitem(last=False)
        return list(delta)

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
        serve_in_flight: bool = False,
    ) -> PlanResult:
        """Plan a reader's fetch (see the GetPlan RPC); held open up to ``max_wait_s`` while every
        suitable source is busy."""
        if max_wait_s < 0 or max_chunks < 0:
            raise InvalidArgument(f"max_wait_s {max_wait_s} and max_chunks {max_chunks} must be >= 0")

        async def compute() -> dict[str, Any]:
            return asdict(
                await self._plan(
                    reader_id,
                    model,
                    version,
                    held_version,
                    chunk_indices,
                    allow_partial,
                    max_chunks,
                    serve_in_flight and allow_partial,
                )
            )

        deadline = time.monotonic() + min(max_wait_s, self.config.plan_max_wait_s)
        woken_after: int | None = None  # set when woken: how many woken before it found nothing
        while True:
            unclaimed = self._unclaimed.get(model, 0)
            try:
                data = await self._once("plan", request_id, compute, durable=False)
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
                pass  # re-plan anyway: leases expire unseen
        data["reads"] = [SourceReadOut(**r) for r in data["reads"]]
        return PlanResult(**data)

    async def first_plan(self, *, reader_id: str, model: str, version: int, max_chunks: int) -> PlanResult | None:
        """The first plan of ``version`` for a reader that is told of it (WatchVersions'
        ``plan_reader_id``): a delta against the newest version the hub records it holding whole,
        partial and served in flight, as the reader's own first GetPlan would ask. None when the
        reader is busy (still reading another version: a plan now would take read leases and name
        it a source of chunks it will not fetch for a while), unregistered, or nothing is free."""
        if await self._holder(reader_id) is None:
            return None
        if any(state.fetching.get(reader_id) for (m, _), state in self._states.items() if m == model):
            return None
        if any(key.split(_SEP)[1] == model for key in await self._reading_of(reader_id)):
            return None
        held = [v for m, v in await self._held(reader_id) if m == model and v < version]
        held_version = 0
        for candidate in sorted(held, reverse=True):
            if (await self._state(model, candidate)).holders.get(reader_id) == WHOLE_VERSION:
                held_version = candidate
                break
        try:
            return await self.get_plan(
                request_id=_SEP.join(["announced", reader_id, model, str(version)]),
                reader_id=reader_id,
                model=model,
                version=version,
                held_version=held_version,
                chunk_indices=(),
                allow_partial=True,
                max_chunks=max_chunks,
                serve_in_flight=True,
            )
        except (ResourceExhausted, FailedPrecondition, NotFound) as exc:
            logger.debug("no first plan of %s v%d for %s: %s", model, version, reader_id, exc)
            return None

    async def _plan(
        self,
        reader_id: str,
        model: str,
        version: int,
        held_version: int,
        chunk_indices: Sequence[int],
        allow_partial: bool,
        max_chunks: int,
        serve_in_flight: bool,
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
            needed = self._changed_chunks(manifest, base)
            base_version = held_version if base is not None else 0
        async with self._lock(model):
            # From the in-memory mirror: one Redis round trip (the leases' write) per plan.
            state = await self._state(model, version)
            excluded = await self._excluded(model, version, reader_id)
            live = await self._live_holders(model, version)
            fetchers = await self._holders(sorted(h for h, c in state.fetching.items() if c and h not in live))
            records = {h: record for h, (record, _) in live.items()} | fetchers
            sources = []
            for holder_id, (record, shard) in [*live.items(), *((h, (r, PARTIAL)) for h, r in fetchers.items())]:
                chunks: range | frozenset[int] | None
                fetching = frozenset(state.fetching.get(holder_id, ()))
                if shard == PARTIAL:
                    held_chunks = state.partial.get(holder_id)
                    if not held_chunks and not fetching:
                        continue
                    chunks = frozenset(held_chunks or ())
                else:
                    chunks = None if shard == WHOLE_VERSION else manifest.shard_chunks(shard)
                    fetching = frozenset()
                place = locality(reader.topology, record.topology)
                shm = _shared_memory(reader, record, place)
                sources.append(
                    Source(
                        holder_id=holder_id,
                        topology=record.topology,
                        chunks=chunks,
                        # Over shared memory this reader's own lease is the slot a further read of it
                        # takes (the reader copies; the holder's slots bound pinned readers, not a NIC).
                        # Over a socket it counts: a reader must not pile reads onto a holder's only
                        # NIC slot (simulated at 1,024 GPUs, counting it out cut the stall ratio 6.9x -> 5.2x).
                        active_reads=sum(
                            not shm or lease != (reader_id, model, version)
                            for lease in await self._live_leases(holder_id)
                        ),
                        max_concurrent_reads=record.max_concurrent_reads,
                        # Publishers are spared (planner rules 5 and 9) for their NIC's sake; a read
                        # over shared memory uses no NIC and costs the publisher no copy (the reader
                        # copies), so a same-host reader reads it like any holder, at once, instead
                        # of waiting for chunks to come down a tree of its peers.
                        publisher=shard >= 0 and not shm,
                        fetching=fetching,
                        shared_memory=shm,
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
            reading = await self._reading_of(reader_id)
            this_version = f"{_SEP}{model}{_SEP}{version}"
            now_ms = _now_ms()
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
                num_readers=await self._expected_readers(model, version, reader_id),
                shm_max_concurrent_reads=self.config.shm_max_concurrent_reads,
                reader_max_sources=reader.max_concurrent_reads,
                reader_sources=[
                    key.split(_SEP)[0]
                    for key, expiry in reading.items()
                    if key.endswith(this_version) and expiry > now_ms
                ],
            )
            if serve_in_flight:
                # Chunks read from a holder that has them (not from one still fetching them: a wait
                # is then one hop, never a chain or a cycle) are served by this reader as they land.
                by_id = {source.holder_id: source for source in sources}
                in_flight = state.fetching.setdefault(reader_id, set())
                for read in plan.reads:
                    in_flight.update(c for c in read.chunk_indices if by_id[read.holder_id].has(c))
            expiry = _now_ms() + int(self.config.read_lease_ttl_s * 1000)
            reads = []
            for read in plan.reads:
                await self._readers_of(read.holder_id)
            async with self._writing(durable=False) as pipe:
                held_leases = {}
                for read in plan.reads:
                    lease = _SEP.join([reader_id, model, str(version)])
                    held_lease = _SEP.join([read.holder_id, model, str(version)])
                    pipe.hset(self._k("holder", read.holder_id, "readers"), lease, expiry)
                    held_leases[held_lease] = expiry
                    self._readers[read.holder_id][lease] = expiry
                    reading[held_lease] = expiry
                    carrier, address = _offer(reader, records[read.holder_id], read.locality)
                    reads.append(
                        SourceReadOut(
                            holder_id=read.holder_id,
                            carrier=carrier,
                            address=address,
                            locality=int(read.locality),
                            chunk_indices=list(read.chunk_indices),
                        )
                    )
                if held_leases:
                    pipe.hset(self._k("holder", reader_id, "reading"), mapping=held_leases)
                if plan.cross_datacenter and reader.topology.datacenter:
                    pipe.hset(pullers_key, reader.topology.datacenter, f"{reader_id}{_SEP}{expiry}")
        if serve_in_flight and plan.reads:
            self._notify(model)  # plans held open may now read these chunks from this reader
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
            state = await self._state(model, version)
            held = await self._held(holder_id)
            reading = await self._reading_of(holder_id)
            for source in finished_holder_ids:
                await self._readers_of(source)
            shard = state.holders.get(holder_id)
            async with self._writing(durable=False) as pipe:
                if (shard is None or shard == PARTIAL) and chunk_indices:
                    pipe.sadd(chunks_key, *[str(i) for i in chunk_indices])
                    # Outlives any read; a set left by a reader that died goes on its own.
                    pipe.pexpire(chunks_key, int(self.config.read_lease_ttl_s * 5000))
                    if shard is None or (model, version) not in held:
                        pipe.hset(holders_key, holder_id, PARTIAL)
                        pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    state.holders[holder_id] = PARTIAL
                    state.partial.setdefault(holder_id, set()).update(chunk_indices)
                    held.add((model, version))
                if holder_id in state.fetching:
                    state.fetching[holder_id].difference_update(chunk_indices)
                lease = _SEP.join([holder_id, model, str(version)])
                held_leases = [_SEP.join([source, model, str(version)]) for source in finished_holder_ids]
                if held_leases:
                    pipe.hdel(self._k("holder", holder_id, "reading"), *held_leases)
                for source, held_lease in zip(finished_holder_ids, held_leases, strict=True):
                    pipe.hdel(self._k("holder", source, "readers"), lease)
                    reading.pop(held_lease, None)
                    self._readers[source].pop(lease, None)
        self._notify(model)
        if shard is not None and shard != PARTIAL:
            return len(manifest.chunks) if shard == WHOLE_VERSION else len(manifest.shard_chunks(shard))
        return len(state.partial.get(holder_id, ()))

    async def _release_reader_leases(self, reader_id: str, version_of: tuple[str, int] | None) -> None:
        """Release the read leases ``reader_id`` holds (on one version, or all)."""
        reading = await self._reading_of(reader_id)
        mine = []
        for field_name in list(reading):
            source, leased_model, leased_version = field_name.split(_SEP)
            if version_of is not None and (leased_model, int(leased_version)) != version_of:
                continue
            mine.append((field_name, source, _SEP.join([reader_id, leased_model, leased_version])))
        if mine:
            for _, source, _ in mine:
                await self._readers_of(source)
            async with self._writing(durable=False) as pipe:
                pipe.hdel(self._k("holder", reader_id, "reading"), *[field_name for field_name, _, _ in mine])
                for field_name, source, lease in mine:
                    pipe.hdel(self._k("holder", source, "readers"), lease)
                    reading.pop(field_name, None)
                    self._readers[source].pop(lease, None)
        record = self._records.get(reader_id)
        if version_of is not None and (record is None or record[0].topology.datacenter):
            # Only a reader with a datacenter label is ever a datacenter's puller.
            model, version = version_of
            pullers_key = self._k("model", model, "v", version, "pullers")
            for dc, value in (await self.meta.client.hgetall(pullers_key)).items():
                if value.split(_SEP)[0] == reader_id:
                    await self.meta.client.hdel(pullers_key, dc)

    async def report_held(
        self, *, request_id: str, holder_id: str, model: str, version: int, held: bool, root_hash: str
    ) -> int:
        """Record that a holder holds (or stopped serving) a whole version; returns reads in flight.
        A holding is durable when this returns; a withdrawal reaches Redis with the next batch."""
        if await self._holder(holder_id) is None:
            raise NotFound(f"holder {holder_id} is not registered (its lease lapsed?)")
        manifest = await self._resolve(model, version)
        async with self._lock(model):
            state = await self._state(model, version)
            held_set = await self._held(holder_id)
            if held:
                if root_hash != manifest.root_hash:
                    raise InvalidArgument(
                        f"holder {holder_id} verified root hash {root_hash!r} but v{version} of {model!r} is "
                        f"{manifest.root_hash!r}; it is not recorded as a holder"
                    )
                async with self._writing(durable=False) as pipe:
                    pipe.hset(self._k("model", model, "v", version, "holders"), holder_id, WHOLE_VERSION)
                    pipe.sadd(self._k("holder", holder_id, "held"), json.dumps([model, version]))
                    pipe.delete(self._k("model", model, "v", version, "chunks", holder_id))
                state.holders[holder_id] = WHOLE_VERSION
                state.partial.pop(holder_id, None)
                held_set.add((model, version))
                state.fetching.pop(holder_id, None)
            else:
                async with self._writing(durable=False) as pipe:
                    self._drop_holding(pipe, holder_id, model, version)
            await self._release_reader_leases(holder_id, (model, version))
        if held:
            # A withdrawal is soft state: a hub that dies before Redis has it still lists the
            # holder, which refuses a read planned to it, and the read is planned elsewhere.
            await pipe.durable()
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
        manifest = await self._resolve(model, version)
        version = manifest.version
        logger.warning(
            "reader %s failed reading %s v%d from %s (%s): %s", reader_id, model, version, holder_id, failure, detail
        )
        excluded_key = self._k("model", model, "v", version, "excluded", reader_id)
        ttl_ms = int(self.config.read_lease_ttl_s * 1000) * 5
        async with self._lock(model):
            state = await self._state(model, version)
            excluded = await self._excluded(model, version, reader_id)
            reading = await self._reading_of(reader_id)
            readers = await self._readers_of(holder_id)
            async with self._writing(durable=False) as pipe:
                pipe.sadd(excluded_key, holder_id)
                pipe.pexpire(excluded_key, ttl_ms)
                lease = _SEP.join([reader_id, model, str(version)])
                held_lease = _SEP.join([holder_id, model, str(version)])
                pipe.hdel(self._k("holder", reader_id, "reading"), held_lease)
                pipe.hdel(self._k("holder", holder_id, "readers"), lease)
                reading.pop(held_lease, None)
                readers.pop(lease, None)
                if failure == "hash_mismatch":
                    self._drop_holding(pipe, holder_id, model, version)
            state.excluded[reader_id] = (excluded | {holder_id}, time.monotonic() + ttl_ms / 1000)
            # What it still fetches from other holders is not told apart: it re-plans, and until
            # then later readers read those chunks elsewhere.
            state.fetching.pop(reader_id, None)
        await pipe.durable()
        self._notify(model)

    # Pins, listing, watching ----------------------------------------------------------------------

    async def pin(self, *, request_id: str, model: str, version: int, owner: str) -> None:
        """Keep ``version`` beyond retention on behalf of ``owner``."""
        _check_name("owner", owner)
        manifest = await self._resolve(model, version)
        state = await self._state(model, manifest.version)
        async with self._writing(durable=True) as pipe:
            pipe.sadd(self._k("model", model, "v", manifest.version, "pins"), owner)
        state.pins.add(owner)

    async def unpin(self, *, request_id: str, model: str, version: int, owner: str) -> None:
        """Remove ``owner``'s pin; retention applies again once no pin remains."""
        _check_name("owner", owner)
        if await self._latest(model) == 0:
            raise NotFound(f"model {model!r} has no committed version")
        async with self._writing(durable=True) as pipe:
            pipe.srem(self._k("model", model, "v", version, "pins"), owner)
        state = self._states.get((model, version))
        if state is not None:
            state.pins.discard(owner)
        await self._prune(model)

    async def _info(self, model: str, version: int) -> VersionInfo | None:
        manifest = await self._manifest(model, version)
        if manifest is None:
            return None
        return VersionInfo(
            model=model,
            version=version,
            root_hash=manifest.root_hash,
            size_bytes=manifest.size_bytes,
            num_chunks=len(manifest.chunks),
            num_holders=len(await self._live_holders(model, version)),
            pinned=bool((await self._state(model, version)).pins),
            committed_at_unix_s=self._committed_at.get((model, version), 0.0),
        )

    async def list_versions(self, *, model: str) -> list[VersionInfo]:
        """Committed versions within retention (or pinned) with at least one live holder, ascending."""
        if await self._latest(model) == 0:
            raise NotFound(f"model {model!r} has no committed version")
        out = []
        for version in list(await self._versions(model)):
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
        """Wake watchers so streams end promptly; write what is queued."""
        for event in self._commits.values():
            event.set()
        self._flush.set()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer


def _shared_memory(reader: Holder, holder: Holder, place: Locality) -> bool:
    """Whether ``reader`` reads ``holder`` over shared memory (what ``_offer`` picks)."""
    return (
        place == Locality.SAME_HOST
        and any(carrier == "shm" for carrier, _ in holder.offers)
        and bool(reader.transport_host_id)
        and reader.transport_host_id == holder.transport_host_id
    )


def _offer(reader: Holder, holder: Holder, place: Locality) -> tuple[str, str]:
    """The carrier for one reader-holder pair: shared memory on one host, else the holder's first other offer."""
    offers = dict(reversed(holder.offers))  # first offer of each carrier wins
    if _shared_memory(reader, holder, place):
        return "shm", offers["shm"]
    for carrier, address in holder.offers:
        if carrier != "shm":
            return carrier, address
    raise FailedPrecondition(
        f"holder {holder.holder_id} offers only shared memory and reader {reader.holder_id} is elsewhere"
    )
