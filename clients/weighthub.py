"""Typed async client of the WeightHub service (seedstack.weighthub.v1.WeightHub), and the client
library built on it: :class:`Publisher` (trainer side) and :class:`Reader` (rollout side)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import torch
from seedstack.common.v1 import common_pb2
from seedstack.weighthub.v1 import weighthub_pb2 as pb
from seedstack.weighthub.v1 import weighthub_pb2_grpc as pb_grpc

from clients.base import BaseClient, ClientOptions, RPCError
from services.common.transport import (
    DEFAULT_CHUNK_SIZE_BYTES,
    CarrierAddress,
    CarrierUnavailable,
    ChunkHashMismatch,
    HolderBusy,
    StaleTensor,
    TensorHolder,
    TensorMeta,
    TensorReader,
    TensorRef,
    TransferError,
    TransferTimeout,
    UnknownTensor,
    compute_meta,
)
from services.weighthub.versions import root_hash

logger = logging.getLogger(__name__)


class WeightHubClient(BaseClient):
    """One method per RPC of ``seedstack.weighthub.v1.WeightHub``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.WeightHubStub
    service_name = "weighthub"

    async def register_holder(
        self, request: pb.RegisterHolderRequest, *, timeout_s: float | None = None
    ) -> pb.RegisterHolderResponse:
        """Call WeightHub.RegisterHolder (retried on UNAVAILABLE)."""
        return await self._unary("RegisterHolder", request, timeout_s)  # type: ignore[no-any-return]

    async def unregister_holder(
        self, request: pb.UnregisterHolderRequest, *, timeout_s: float | None = None
    ) -> pb.UnregisterHolderResponse:
        """Call WeightHub.UnregisterHolder (retried on UNAVAILABLE)."""
        return await self._unary("UnregisterHolder", request, timeout_s)  # type: ignore[no-any-return]

    async def heartbeat(self, request: pb.HeartbeatRequest, *, timeout_s: float | None = None) -> pb.HeartbeatResponse:
        """Call WeightHub.Heartbeat (retried on UNAVAILABLE)."""
        return await self._unary("Heartbeat", request, timeout_s)  # type: ignore[no-any-return]

    async def publish(self, request: pb.PublishRequest, *, timeout_s: float | None = None) -> pb.PublishResponse:
        """Call WeightHub.Publish (retried on UNAVAILABLE)."""
        return await self._unary("Publish", request, timeout_s)  # type: ignore[no-any-return]

    async def get_manifest(
        self, request: pb.GetManifestRequest, *, timeout_s: float | None = None
    ) -> pb.GetManifestResponse:
        """Call WeightHub.GetManifest (retried on UNAVAILABLE)."""
        return await self._unary("GetManifest", request, timeout_s)  # type: ignore[no-any-return]

    async def get_plan(self, request: pb.GetPlanRequest, *, timeout_s: float | None = None) -> pb.GetPlanResponse:
        """Call WeightHub.GetPlan (retried on UNAVAILABLE)."""
        return await self._unary("GetPlan", request, timeout_s)  # type: ignore[no-any-return]

    async def report_held(
        self, request: pb.ReportHeldRequest, *, timeout_s: float | None = None
    ) -> pb.ReportHeldResponse:
        """Call WeightHub.ReportHeld (retried on UNAVAILABLE)."""
        return await self._unary("ReportHeld", request, timeout_s)  # type: ignore[no-any-return]

    async def report_progress(
        self, request: pb.ReportProgressRequest, *, timeout_s: float | None = None
    ) -> pb.ReportProgressResponse:
        """Call WeightHub.ReportProgress (retried on UNAVAILABLE)."""
        return await self._unary("ReportProgress", request, timeout_s)  # type: ignore[no-any-return]

    async def report_read_failure(
        self, request: pb.ReportReadFailureRequest, *, timeout_s: float | None = None
    ) -> pb.ReportReadFailureResponse:
        """Call WeightHub.ReportReadFailure (retried on UNAVAILABLE)."""
        return await self._unary("ReportReadFailure", request, timeout_s)  # type: ignore[no-any-return]

    async def pin(self, request: pb.PinRequest, *, timeout_s: float | None = None) -> pb.PinResponse:
        """Call WeightHub.Pin (retried on UNAVAILABLE)."""
        return await self._unary("Pin", request, timeout_s)  # type: ignore[no-any-return]

    async def unpin(self, request: pb.UnpinRequest, *, timeout_s: float | None = None) -> pb.UnpinResponse:
        """Call WeightHub.Unpin (retried on UNAVAILABLE)."""
        return await self._unary("Unpin", request, timeout_s)  # type: ignore[no-any-return]

    def watch_versions(
        self, request: pb.WatchVersionsRequest, *, timeout_s: float | None = None
    ) -> AsyncIterator[pb.WatchVersionsResponse]:
        """Responses of WeightHub.WatchVersions as they arrive."""
        return self._server_stream("WatchVersions", request, timeout_s)

    async def list_versions(
        self, request: pb.ListVersionsRequest, *, timeout_s: float | None = None
    ) -> pb.ListVersionsResponse:
        """Call WeightHub.ListVersions (retried on UNAVAILABLE)."""
        return await self._unary("ListVersions", request, timeout_s)  # type: ignore[no-any-return]


# The client library: Publisher (trainer side) and Reader (rollout side) ----------------------------

_RESOLVE_PREFIXES = ("redis://", "rediss://", "unix://")


def tensor_plane_name(model: str, version: int, tensor: str) -> str:
    """The name every holder serves tensor ``tensor`` of ``model`` v``version`` under."""
    return f"{model}/{version}/{tensor}"


def _manifest_message(
    model: str, version: int, names: Sequence[str], metas: Sequence[TensorMeta]
) -> common_pb2.Manifest:
    """The Manifest of tensors ``names`` whose tensor-plane metadata is ``metas`` (equal chunking)."""
    tensors = []
    chunks: list[common_pb2.ChunkSpec] = []
    algorithm = metas[0].hash_algo if metas else "xxh3_128"
    chunk_size_bytes = metas[0].chunk_size_bytes if metas else 1
    for name, meta in zip(names, metas, strict=True):
        tensors.append(
            common_pb2.TensorSpec(name=name, dtype=meta.dtype, shape=list(meta.shape), size_bytes=meta.size_bytes)
        )
        for local, hash_hex in enumerate(meta.chunk_hashes):
            piece = meta.chunk_range(local)
            chunks.append(
                common_pb2.ChunkSpec(
                    tensor_name=name,
                    index=len(chunks),
                    offset_bytes=piece.offset,
                    size_bytes=piece.length,
                    hash_hex=hash_hex,
                    hash_algorithm=meta.hash_algo,
                )
            )
    return common_pb2.Manifest(
        model=model,
        version=version,
        tensors=tensors,
        chunks=chunks,
        root_hash=root_hash(algorithm, (c.hash_hex for c in chunks)),
        chunk_size_bytes=chunk_size_bytes,
    )


def _tensor_metas(manifest: common_pb2.Manifest) -> dict[str, TensorMeta]:
    """Tensor-plane metadata of every tensor of a manifest, under its tensor-plane name."""
    hashes: dict[str, list[str]] = {t.name: [] for t in manifest.tensors}
    algorithm = "xxh3_128"
    for chunk in manifest.chunks:
        hashes[chunk.tensor_name].append(chunk.hash_hex)
        algorithm = chunk.hash_algorithm
    return {
        t.name: TensorMeta(
            name=tensor_plane_name(manifest.model, manifest.version, t.name),
            dtype=t.dtype,
            shape=tuple(t.shape),
            size_bytes=t.size_bytes,
            chunk_size_bytes=manifest.chunk_size_bytes,
            hash_algo=algorithm,
            chunk_hashes=tuple(hashes[t.name]),
        )
        for t in manifest.tensors
    }


def _failure_kind(exc: TransferError) -> pb.ReadFailure:
    if isinstance(exc, ChunkHashMismatch):
        return pb.READ_FAILURE_HASH_MISMATCH
    if isinstance(exc, TransferTimeout):
        return pb.READ_FAILURE_TIMEOUT
    if isinstance(exc, UnknownTensor | StaleTensor | HolderBusy | CarrierUnavailable):
        return pb.READ_FAILURE_REFUSED
    return pb.READ_FAILURE_UNREACHABLE


def _request_id() -> str:
    return uuid.uuid4().hex


def _held_report(holder_id: str, model: str, version: int, held: bool, root_hash: str = "") -> pb.ReportHeldRequest:
    """A holder's report that it now holds (with the version's root hash) or no longer serves ``version``."""
    return pb.ReportHeldRequest(
        request_id=_request_id(), holder_id=holder_id, model=model, version=version, held=held, root_hash=root_hash
    )


class _Membership:
    """A process's membership of the hub: its tensor holder, registration and heartbeat."""

    def __init__(
        self,
        hub: str | WeightHubClient,
        *,
        holder_id: str | None,
        topology: common_pb2.TopologyLabels,
        options: ClientOptions | None,
        max_concurrent_reads: int,
        lease_ttl_s: float,
        transport_bind_host: str,
        carriers: Sequence[str] | None,
        chunk_size_bytes: int,
        on_heartbeat: Callable[[pb.HeartbeatResponse], Awaitable[None]],
        on_reregistered: Callable[[], Awaitable[None]],
    ) -> None:
        self._hub = hub
        self._options = options
        self.holder_id = holder_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.topology = topology
        self._max_concurrent_reads = max_concurrent_reads
        self._lease_ttl_s = lease_ttl_s
        self._on_heartbeat = on_heartbeat
        self._on_reregistered = on_reregistered
        self.holder = TensorHolder(
            holder_id=self.holder_id,
            carriers=carriers,
            bind_host=transport_bind_host,
            chunk_size_bytes=chunk_size_bytes,
            max_concurrent_reads=max(64, max_concurrent_reads * 4),
        )
        self.client: WeightHubClient | None = hub if isinstance(hub, WeightHubClient) else None
        self._owns_client = not isinstance(hub, WeightHubClient)
        self._task: asyncio.Task[None] | None = None
        self.lease_ttl_s = 0.0

    async def start(self) -> WeightHubClient:
        if self.client is None:
            assert isinstance(self._hub, str)
            if self._hub.startswith(_RESOLVE_PREFIXES):
                self.client = await WeightHubClient.resolve(self._hub, self._options)
            else:
                self.client = WeightHubClient(self._hub, self._options)
        await self.holder.start()
        await self.register()
        self._task = asyncio.create_task(self._beat(), name=f"weighthub-heartbeat-{self.holder_id}")
        return self.client

    async def register(self) -> None:
        assert self.client is not None
        reply = await self.client.register_holder(
            pb.RegisterHolderRequest(
                request_id=_request_id(),
                holder_id=self.holder_id,
                offers=[common_pb2.TransportOffer(carrier=c.carrier, address=c.address) for c in self.holder.carriers],
                topology=self.topology,
                lease_ttl_s=self._lease_ttl_s,
                max_concurrent_reads=self._max_concurrent_reads,
                transport_host_id=self.holder.capabilities.host_id,
            )
        )
        self.lease_ttl_s = reply.lease_ttl_s

    async def _beat(self) -> None:
        assert self.client is not None
        while True:
            await asyncio.sleep(max(0.05, self.lease_ttl_s / 3))
            try:
                reply = await self.client.heartbeat(pb.HeartbeatRequest(holder_id=self.holder_id))
                await self._on_heartbeat(reply)
            except RPCError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    logger.warning(
                        "hub lease of %s lapsed; registering again and re-reporting holdings", self.holder_id
                    )
                    try:
                        await self.register()
                        await self._on_reregistered()
                    except RPCError as again:
                        logger.warning("re-registering %s failed (will retry): %s", self.holder_id, again)
                else:
                    logger.warning("heartbeat of %s failed (will retry): %s", self.holder_id, exc)
            except Exception:
                logger.exception("heartbeat of %s failed (will retry)", self.holder_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            with contextlib.suppress(RPCError):
                await self.client.unregister_holder(
                    pb.UnregisterHolderRequest(request_id=_request_id(), holder_id=self.holder_id), timeout_s=5.0
                )
        await self.holder.close()
        if self.client is not None and self._owns_client:
            await self.client.close()
            self.client = None


def _topology(host: str, rack: str, datacenter: str) -> common_pb2.TopologyLabels:
    return common_pb2.TopologyLabels(host=host or socket.gethostname(), rack=rack, datacenter=datacenter)


async def copy_and_hash(
    tensors: Mapping[str, torch.Tensor],
    buffers: Mapping[str, torch.Tensor],
    names: Mapping[str, str],
    *,
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
) -> list[TensorMeta]:
    """Copy each of ``tensors`` into its buffer and chunk-hash it (tensor-plane metadata under
    ``names[name]``, in the order of ``tensors``): a few tensors at a time in worker threads (the
    copy and the hash release the GIL; each tensor is hashed right after its copy)."""
    limit = asyncio.Semaphore(max(1, min(4, os.cpu_count() or 1)))

    def fill_one(name: str) -> TensorMeta:
        buffer = buffers[name]
        buffer.copy_(tensors[name].detach().reshape(buffer.shape))
        return compute_meta(names[name], buffer, chunk_size_bytes=chunk_size_bytes)

    async def one(name: str) -> TensorMeta:
        async with limit:
            return await asyncio.to_thread(fill_one, name)

    return list(await asyncio.gather(*(one(name) for name in tensors)))


@dataclass
class _Slot:
    """One set of publisher buffers and the version in them."""

    buffers: dict[str, torch.Tensor]
    version: int = 0
    manifest: common_pb2.Manifest | None = None


class Publisher:
    """Trainer side: holds tensors in its own (shared-memory) buffers, publishes versions of them and
    serves readers straight from that memory.

    It keeps ``num_buffers`` versions; publishing into the oldest buffer first withdraws that
    version from the hub and waits for reads of it in flight to finish, so no reader sees a torn
    tensor. Usage::

        async with Publisher("127.0.0.1:50051", model="policy", shard_index=rank, num_shards=world) as pub:
            await pub.publish(step, {name: p for name, p in model.state_dict().items() if rank owns name})
    """

    def __init__(
        self,
        hub: str | WeightHubClient,
        *,
        model: str,
        holder_id: str | None = None,
        host: str = "",
        rack: str = "",
        datacenter: str = "",
        shard_index: int = 0,
        num_shards: int = 1,
        options: ClientOptions | None = None,
        max_concurrent_reads: int = 0,
        num_buffers: int = 2,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
        transport_bind_host: str = "0.0.0.0",
        carriers: Sequence[str] | None = None,
        lease_ttl_s: float = 0.0,
        commit_timeout_s: float = 120.0,
    ) -> None:
        """``max_concurrent_reads`` bounds readers served at once (0: the hub's default); 1 makes the
        trainer's egress about one model per version, the readers fanning out among themselves."""
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} must be in 0..num_shards-1 (num_shards {num_shards})")
        if num_buffers < 1:
            raise ValueError(f"num_buffers must be >= 1, got {num_buffers}")
        self.model = model
        self.shard_index = shard_index
        self.num_shards = num_shards
        self._num_buffers = num_buffers
        self._commit_timeout_s = commit_timeout_s
        self._slots: list[_Slot] = []
        self._lock = asyncio.Lock()
        self._chunk_size_bytes = chunk_size_bytes
        self._latest_seen = 0
        """The newest committed version of the model this publisher knows of."""
        self._membership = _Membership(
            hub,
            holder_id=holder_id,
            topology=_topology(host, rack, datacenter),
            options=options,
            max_concurrent_reads=max_concurrent_reads,
            lease_ttl_s=lease_ttl_s,
            transport_bind_host=transport_bind_host,
            carriers=carriers,
            chunk_size_bytes=chunk_size_bytes,
            on_heartbeat=self._heartbeat,
            on_reregistered=self._republish,
        )
        self._client: WeightHubClient | None = None

    @property
    def holder_id(self) -> str:
        """This publisher's holder id at the hub."""
        return self._membership.holder_id

    async def start(self) -> None:
        """Start serving and register with the hub."""
        self._client = await self._membership.start()

    async def __aenter__(self) -> Publisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Withdraw from the hub and stop serving."""
        await self._membership.close()

    async def _latest(self) -> int:
        assert self._client is not None
        try:
            reply = await self._client.get_manifest(pb.GetManifestRequest(model=self.model, version=0))
        except RPCError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return int(reply.manifest.version)

    async def publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> int:
        """Copy ``tensors`` into this publisher's buffers, serve and publish them as ``version``;
        returns once the version is committed (every shard published). ValueError for a version not
        above the latest committed one."""
        if self._client is None:
            raise RuntimeError("Publisher.start() first")
        if not tensors:
            raise ValueError("publish needs at least one tensor")
        async with self._lock:
            # The hub refuses a version not above the committed one too; asking first (once, then
            # from what this publisher committed) keeps the buffers of the versions served intact.
            if not self._latest_seen:
                self._latest_seen = await self._latest()
            if version <= self._latest_seen:
                raise ValueError(
                    f"version {version} of {self.model!r} is not above the latest committed version {self._latest_seen}"
                )
            slot, withdrawn = await self._take_slot(tensors)
            holder = self._membership.holder
            names = list(tensors)
            try:
                metas = await self._fill(slot, version, tensors)
            finally:
                if withdrawn is not None:
                    await withdrawn
            for name, meta in zip(names, metas, strict=True):
                await holder.register(meta.name, slot.buffers[name], meta=meta)
            slot.version = version
            slot.manifest = _manifest_message(self.model, version, names, metas)
            try:
                reply = await self._client.publish(
                    pb.PublishRequest(
                        request_id=_request_id(),
                        holder_id=self.holder_id,
                        manifest=slot.manifest,
                        shard_index=self.shard_index,
                        num_shards=self.num_shards,
                    )
                )
            except RPCError as exc:
                if exc.code == grpc.StatusCode.FAILED_PRECONDITION and "not above" in str(exc):
                    raise ValueError(str(exc)) from exc
                raise
            self._latest_seen = max(self._latest_seen, version)
        if not reply.committed:
            await self._wait_committed(version)
        return version

    async def _fill(self, slot: _Slot, version: int, tensors: Mapping[str, torch.Tensor]) -> list[TensorMeta]:
        names = {name: tensor_plane_name(self.model, version, name) for name in tensors}
        return await copy_and_hash(tensors, slot.buffers, names, chunk_size_bytes=self._chunk_size_bytes)

    async def _take_slot(self, tensors: Mapping[str, torch.Tensor]) -> tuple[_Slot, asyncio.Task[None] | None]:
        """Free buffers for the next version: a new set, or the oldest set once its readers are done;
        and the withdrawal of its version from the hub, still under way."""
        slot: _Slot | None = None
        withdrawn: asyncio.Task[None] | None = None
        if len(self._slots) >= self._num_buffers:
            slot = min(self._slots, key=lambda s: s.version)
            withdrawn = await self._withdraw(slot)
            layout = {n: (t.dtype, tuple(t.shape)) for n, t in slot.buffers.items()}
            if layout != {n: (t.dtype, tuple(t.shape)) for n, t in tensors.items()}:
                self._slots.remove(slot)
                slot = None
        if slot is None:
            holder = self._membership.holder
            slot = _Slot(
                buffers={n: holder.allocate(tuple(t.shape), t.dtype, label=self.holder_id) for n, t in tensors.items()}
            )
            self._slots.append(slot)
        return slot, withdrawn

    async def _withdraw(self, slot: _Slot) -> asyncio.Task[None] | None:
        """Stop serving the slot's version: reads in flight finish first (a read planned meanwhile is
        refused and re-planned elsewhere), and the hub is told (returned: the task telling it)."""
        if not slot.version:
            return None
        assert self._client is not None
        client, version = self._client, slot.version

        async def tell_hub() -> None:
            with contextlib.suppress(RPCError):
                await client.report_held(_held_report(self.holder_id, self.model, version, False))

        told = asyncio.create_task(tell_hub())
        try:
            await self._membership.holder.unregister_many(
                [tensor_plane_name(self.model, version, n) for n in slot.buffers]
            )
        except BaseException:
            await told
            raise
        slot.version = 0
        slot.manifest = None
        return told

    async def _wait_committed(self, version: int) -> None:
        deadline = time.monotonic() + self._commit_timeout_s
        delay_s = 0.01
        while await self._latest() < version:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"version {version} of {self.model!r} did not commit within {self._commit_timeout_s} s: "
                    f"not every one of {self.num_shards} shards was published"
                )
            await asyncio.sleep(delay_s)  # polling the hub for a commit made by other ranks
            delay_s = min(delay_s * 2, 0.5)

    async def _heartbeat(self, reply: pb.HeartbeatResponse) -> None:
        return None

    async def _republish(self) -> None:
        """After a lapsed lease: publish each held shard again (a replica publish, idempotent)."""
        assert self._client is not None
        for slot in self._slots:
            if slot.version and slot.manifest is not None:
                with contextlib.suppress(RPCError):
                    await self._client.publish(
                        pb.PublishRequest(
                            request_id=_request_id(),
                            holder_id=self.holder_id,
                            manifest=slot.manifest,
                            shard_index=self.shard_index,
                            num_shards=self.num_shards,
                        )
                    )


@dataclass
class _Held:
    """A version this reader holds and serves."""

    manifest: common_pb2.Manifest
    tensors: dict[str, torch.Tensor]
    owned: bool
    """The buffers were allocated by the reader (so it may reuse them)."""


@dataclass
class FetchStats:
    """What the last fetch did."""

    version: int = 0
    base_version: int = 0
    bytes_read: int = 0
    bytes_copied_locally: int = 0
    num_plans: int = 0
    num_read_failures: int = 0
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)
    """Bytes read per holder id."""


_NUM_ANNOUNCED = 2
"""Manifests of announced versions a reader keeps (the newest ones)."""
_READ_THREADS = 64
"""Transfer threads of a Reader's tensor reader (see ``Reader.start``)."""
_PLAN_RPC_MARGIN_S = 5.0
"""A plan request's deadline beyond the time the hub may hold it open."""
_CLOSE_REPORT_WAIT_S = 5.0
"""How long :meth:`Reader.close` waits for ReportHeld calls still on their way (then cuts them)."""


class _Progress:
    """Reports a fetch's verified chunks and finished sources to the hub in the background, one call
    at a time, batching what arrives meanwhile (a chunk verified is served to others only once the
    hub knows of it).

    With ``in_flight_known`` (the hub already names this reader as the source of the chunks it
    fetches, see ``serve_in_flight``) verified chunks alone do not make a report: they ride along
    with the next report of a finished source (whose read slot then goes to others), and the
    fetch's ReportHeld covers the rest. That spares the hub most progress calls."""

    def __init__(
        self,
        client: WeightHubClient,
        holder_id: str,
        model: str,
        version: int,
        *,
        serve_chunks: bool,
        in_flight_known: bool = False,
    ) -> None:
        self._client = client
        self._holder_id = holder_id
        self._model = model
        self._version = version
        self._serve_chunks = serve_chunks
        self._in_flight_known = in_flight_known
        self._chunks: set[int] = set()
        self._finished: set[str] = set()
        self.reads_per_holder: dict[str, int] = {}
        """Planned reads in flight per source (kept by the fetch): a source read from again since it
        finished is not reported finished."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"weighthub-progress-{holder_id}")

    def add_chunks(self, indices: Iterable[int]) -> None:
        """Chunks now verified in this reader's buffers."""
        if self._serve_chunks:
            self._chunks.update(indices)
            if self._chunks and not self._in_flight_known:
                self._wake.set()

    def finish_source(self, holder_id: str) -> None:
        """Every planned read from ``holder_id`` ended: its read slot may go to another reader."""
        self._finished.add(holder_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            chunks, self._chunks = self._chunks, set()
            finished = {h for h in self._finished if not self.reads_per_holder.get(h)}
            self._finished = set()
            if not chunks and not finished:
                continue
            try:
                await self._client.report_progress(
                    pb.ReportProgressRequest(
                        request_id=_request_id(),
                        holder_id=self._holder_id,
                        model=self._model,
                        version=self._version,
                        chunk_indices=sorted(chunks),
                        finished_holder_ids=sorted(finished),
                    )
                )
            except RPCError as exc:
                # Only an optimisation: the chunks are served once the version is reported held,
                # and the read leases end then (or at their expiry).
                logger.info("progress report of v%d failed: %s", self._version, exc)

    async def close(self) -> None:
        """Stop reporting (the version's ReportHeld supersedes what is left)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Reader:
    """Rollout side: watches versions, fetches them verified (only the changed chunks when it holds
    an older version), and then serves them to later readers as a holder.

    While it fetches a new version it already serves it, each chunk from the moment it lands and
    verifies (a read of a chunk still on its way waits for it), so the hub sends other readers to
    it for the chunks it is fetching. A chunk that crosses a socket is hashed; one copied out of a
    same-host holder's shared memory is not (the holder serves it under a read lease, only once it
    is in its memory hashed or verified).

    Tensors returned by :meth:`fetch` are served to other readers: do not modify them in place
    (fetch the next version into other buffers and swap, or pass them back as ``into``).
    """

    def __init__(
        self,
        hub: str | WeightHubClient,
        *,
        model: str,
        holder_id: str | None = None,
        host: str = "",
        rack: str = "",
        datacenter: str = "",
        options: ClientOptions | None = None,
        max_concurrent_reads: int = 0,
        keep_versions: int = 2,
        transport_bind_host: str = "0.0.0.0",
        carriers: Sequence[str] | None = None,
        lease_ttl_s: float = 0.0,
        fetch_timeout_s: float = 300.0,
        reads_per_source: int = 2,
        max_chunks_per_plan: int = 16,
        plan_wait_s: float = 5.0,
    ) -> None:
        """``max_chunks_per_plan`` bounds the chunks one plan names (0: no bound), so that readers
        start on different chunks and serve them to each other while still fetching (chunk-level
        pipelining; chunks are served as they verify, so a window of a few chunks is not needed for
        that, and each plan costs a hub round trip); ``plan_wait_s`` is how long the hub may hold
        a plan request open while every source is busy (the reader asks again after it, never
        sleeping in between)."""
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if max_chunks_per_plan < 0 or plan_wait_s <= 0:
            raise ValueError(
                f"max_chunks_per_plan must be >= 0 (got {max_chunks_per_plan}) and plan_wait_s > 0 (got {plan_wait_s})"
            )
        self.model = model
        self._keep_versions = keep_versions
        self._fetch_timeout_s = fetch_timeout_s
        self._reads_per_source = reads_per_source
        self._max_chunks_per_plan = max_chunks_per_plan
        self._plan_wait_s = plan_wait_s
        self._held: dict[int, _Held] = {}
        self._lock = asyncio.Lock()
        self._membership = _Membership(
            hub,
            holder_id=holder_id,
            topology=_topology(host, rack, datacenter),
            options=options,
            max_concurrent_reads=max_concurrent_reads,
            lease_ttl_s=lease_ttl_s,
            transport_bind_host=transport_bind_host,
            carriers=carriers,
            chunk_size_bytes=DEFAULT_CHUNK_SIZE_BYTES,
            on_heartbeat=self._heartbeat,
            on_reregistered=self._rereport,
        )
        self._client: WeightHubClient | None = None
        self._reader: TensorReader | None = None
        self._announced: dict[int, common_pb2.Manifest] = {}
        """Manifests of the newest versions the watch announced (a fetch of one asks no GetManifest)."""
        self._announced_plans: dict[int, pb.GetPlanResponse] = {}
        """First plans the watch brought with its announcements, not yet used by a fetch."""
        self._released: set[asyncio.Task[None]] = set()
        """Reports to the hub running in the background: holdings, withdrawals, plans given back."""
        self._reporting: dict[int, asyncio.Task[None]] = {}
        """The ReportHeld of each version still on its way (a fetch does not wait for it)."""
        self.last_fetch = FetchStats()

    @property
    def holder_id(self) -> str:
        """This reader's holder id at the hub."""
        return self._membership.holder_id

    @property
    def held_versions(self) -> list[int]:
        """Versions this reader holds and serves, ascending."""
        return sorted(self._held)

    async def start(self) -> None:
        """Start serving and register with the hub."""
        self._client = await self._membership.start()
        # Reads of chunks a source is still fetching wait at that source (serve_in_flight); enough
        # threads that such waits never hold up this reader's own reads of what others wait for.
        self._reader = TensorReader(max_concurrent_transfers=_READ_THREADS)

    async def __aenter__(self) -> Reader:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Withdraw from the hub, stop serving and reading."""
        # Reports of holdings still on their way end first (a moment, unless the hub is down), so
        # that none reaches the hub after the unregistration. Withdrawals and unused plans given
        # back are cut short: unregistering drops every holding and lease anyway.
        if self._reporting:
            await asyncio.wait(set(self._reporting.values()), timeout=_CLOSE_REPORT_WAIT_S)
        for task in list(self._released):
            task.cancel()
        await asyncio.gather(*self._released, return_exceptions=True)
        await self._membership.close()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None

    async def latest_version(self) -> int:
        """The newest committed version still available; 0 when none."""
        assert self._client is not None, "Reader.start() first"
        try:
            reply = await self._client.list_versions(pb.ListVersionsRequest(model=self.model))
        except RPCError as exc:
            if exc.code == grpc.StatusCode.NOT_FOUND:
                return 0
            raise
        return max((v.version for v in reply.versions), default=0)

    async def watch(self) -> AsyncIterator[int]:
        """Committed versions as they appear (the latest first); survives hub restarts.

        The hub sends each announcement with this reader's first plan of the version (made as it
        commits, while this reader is idle), so that a :meth:`fetch` of it starts reading at once.
        A version announced and not fetched before the next announcement gives its plan back."""
        assert self._client is not None, "Reader.start() first"
        last = 0
        delay_s = 0.05
        while True:
            try:
                async for reply in self._client.watch_versions(
                    pb.WatchVersionsRequest(
                        model=self.model,
                        after_version=last,
                        include_manifest=True,
                        plan_reader_id=self.holder_id,
                        plan_max_chunks=self._max_chunks_per_plan,
                    )
                ):
                    delay_s = 0.05
                    if reply.version_info.version > last:
                        last = reply.version_info.version
                        if reply.manifest.version == last:
                            self._announced[last] = reply.manifest
                            for old in sorted(self._announced)[:-_NUM_ANNOUNCED]:
                                del self._announced[old]
                        for old in [v for v in self._announced_plans if v < last]:
                            self._give_back_plan(old)
                        if reply.HasField("plan") and reply.plan.version == last:
                            self._announced_plans[last] = reply.plan
                        yield last
            except RPCError as exc:
                if exc.code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                    raise
                logger.info("version watch interrupted (%s); reconnecting in %.2f s", exc.code.name, delay_s)
            await asyncio.sleep(delay_s)  # back off before re-subscribing to a restarting hub
            delay_s = min(delay_s * 2, 2.0)

    def _give_back_plan(self, version: int) -> None:
        """Release the read leases of an announced plan that no fetch used (in the background)."""
        del self._announced_plans[version]
        if version in self._held or self._client is None:
            return  # fetched already by other means: its ReportHeld released them
        self._in_background(self._report_withdrawn(version))

    def _in_background(self, report: Coroutine[Any, Any, None]) -> None:
        """Send a report to the hub without waiting for it (:meth:`close` ends what is left)."""
        self._track(asyncio.create_task(report))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._released.add(task)
        task.add_done_callback(self._released.discard)

    async def reported(self) -> None:
        """Wait until the hub has answered every report this reader has sent so far (a fetch returns
        as soon as the version is here and verified, before the hub knows it holds it)."""
        while self._released:
            await asyncio.wait(set(self._released))

    def _reported(self, version: int, task: asyncio.Task[None]) -> None:
        if self._reporting.get(version) is task:
            del self._reporting[version]

    async def _report_held(self, version: int, root_hash: str) -> None:
        """Tell the hub this reader holds ``version`` whole, retrying until it answers. Given up on
        NOT_FOUND (the lease lapsed or the version is gone: re-registering reports every held
        version again) and on INVALID_ARGUMENT (logged: the hub refuses this holding)."""
        assert self._client is not None
        delay_s = 0.05
        while True:
            try:
                await self._client.report_held(_held_report(self.holder_id, self.model, version, True, root_hash))
                return
            except RPCError as exc:
                if exc.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                    logger.warning("ReportHeld of %s v%d refused: %s", self.model, version, exc)
                    return
                logger.warning(
                    "ReportHeld of %s v%d failed (retrying in %.2f s): %s", self.model, version, delay_s, exc
                )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)

    async def fetch(self, version: int = 0, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Fetch ``version`` (0: the latest), verified, into ``into`` (or buffers of its own); then
        hold and serve it. Reads only the chunks that differ from a version it holds. Returns once
        every chunk is in and verified; the hub hears that this reader holds it in the background
        (see :meth:`reported`)."""
        if self._client is None or self._reader is None:
            raise RuntimeError("Reader.start() first")
        async with self._lock:
            return await self._fetch(version, into)

    async def _fetch(self, version: int, into: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        assert self._client is not None
        started = time.monotonic()
        announced = self._announced.get(version) if version else None
        if announced is not None:
            manifest = announced
        else:
            reply = await self._client.get_manifest(pb.GetManifestRequest(model=self.model, version=version))
            manifest = reply.manifest
        version = int(manifest.version)
        first_plan = self._announced_plans.pop(version, None)
        if version in self._held and into is None:
            return dict(self._held[version].tensors)
        expected = root_hash(
            manifest.chunks[0].hash_algorithm if manifest.chunks else "xxh3_128", (c.hash_hex for c in manifest.chunks)
        )
        if expected != manifest.root_hash:
            raise TransferError(f"manifest of v{version} does not match its root hash {manifest.root_hash}")
        metas = _tensor_metas(manifest)
        stats = FetchStats(version=version)
        destinations, recycled = await self._destinations(manifest, into)
        if recycled is not None:
            # The buffers are written only once no read of the recycled version is in flight, and
            # from now on this holder refuses new reads of it (a reader planned to it meanwhile
            # re-plans elsewhere). The hub hears of it with the fetch's ReportHeld: told now, the
            # call would queue at the hub ahead of every reader's first plan of the new version.
            try:
                await self._unserve(recycled)
            except BaseException:
                await self._report_withdrawn(recycled)
                raise
        # The delta is against the newest version held; buffers recycled from another version get
        # the unchanged chunks copied from it locally.
        base = max(self._held) if self._held else None
        changed = self._changed_chunks(manifest, self._held[base].manifest if base is not None else None)
        if base is not None:
            stats.base_version = base
            if base != recycled:
                stats.bytes_copied_locally = self._copy_unchanged(manifest, self._held[base], destinations, changed)
        if recycled is not None:
            del self._held[recycled]
        holder = self._membership.holder
        # Serve the destination buffers from the start: the hub plans reads of a chunk from this
        # reader only once it reported that chunk verified. A version held already (a re-fetch into
        # other buffers) stays served from the complete copy.
        early = version not in self._held
        progress = _Progress(
            self._client, self.holder_id, self.model, version, serve_chunks=early, in_flight_known=early
        )
        registered: list[str] = []
        try:
            if early:
                changed_set = set(changed)
                pending: dict[str, list[int]] = {}
                for chunk in manifest.chunks:
                    if chunk.index in changed_set:
                        local = chunk.offset_bytes // manifest.chunk_size_bytes
                        pending.setdefault(chunk.tensor_name, []).append(local)
                for tensor in manifest.tensors:
                    meta = metas[tensor.name]
                    # Chunks still to read are served once they land (a read of one waits until then).
                    await holder.register(
                        meta.name, destinations[tensor.name], meta=meta, pending_chunks=pending.get(tensor.name, ())
                    )
                    registered.append(meta.name)
                progress.add_chunks(c.index for c in manifest.chunks if c.index not in changed_set)
            if not early:
                first_plan = None  # planned to be served in flight, and this copy is not served
            await self._read_chunks(
                manifest, metas, destinations, changed, base or 0, stats, progress, early, first_plan
            )
            await progress.close()
        except BaseException:
            await progress.close()
            if recycled is not None:
                await self._report_withdrawn(recycled)
            await self._report_withdrawn(version)
            for name in registered:
                with contextlib.suppress(UnknownTensor, TransferError):
                    await holder.unregister(name)
            raise
        if not early:
            for tensor in manifest.tensors:
                await holder.register(metas[tensor.name].name, destinations[tensor.name], meta=metas[tensor.name])
        self._held[version] = _Held(manifest=manifest, tensors=dict(destinations), owned=into is None)
        # Every chunk is in and verified, and served: the fetch returns now, and the hub hears of it
        # in the background (it plans later readers from this reader as a whole holder once it
        # does; until then they read its chunks as those of one still fetching). A withdrawal of
        # this version waits for the report, so the hub never lists it after it was withdrawn.
        self._reporting[version] = task = asyncio.create_task(self._report_held(version, manifest.root_hash))
        task.add_done_callback(lambda done: self._reported(version, done))
        self._track(task)
        if recycled is not None:
            # Told after the new version's report: the hub answers the reports that readers wait on
            # first. Its buffers serve no read since they were unserved above, so until the hub
            # hears of it a read planned to it is refused and re-planned elsewhere.
            self._in_background(self._report_withdrawn(recycled))
        while len(self._held) > self._keep_versions:
            await self._release(min(self._held))
        stats.seconds = time.monotonic() - started
        self.last_fetch = stats
        return dict(destinations)

    async def _destinations(
        self, manifest: common_pb2.Manifest, into: Mapping[str, torch.Tensor] | None
    ) -> tuple[dict[str, torch.Tensor], int | None]:
        """Where each tensor lands, and the held version whose buffers those are (to withdraw first)."""
        if into is not None:
            missing = sorted({t.name for t in manifest.tensors} - set(into))
            if missing:
                raise ValueError(f"into lacks tensors {missing[:5]} of v{manifest.version}")
            for t in manifest.tensors:
                dst = into[t.name]
                size_bytes = dst.numel() * dst.element_size()
                if size_bytes != t.size_bytes or not dst.is_contiguous():
                    raise ValueError(
                        f"into[{t.name!r}] holds {size_bytes} bytes (contiguous: {dst.is_contiguous()}) but the "
                        f"tensor is {t.size_bytes} bytes of {t.dtype} {list(t.shape)}"
                    )
            destinations = {t.name: into[t.name] for t in manifest.tensors}
            for held_version, held in self._held.items():
                if all(
                    name in held.tensors and held.tensors[name].data_ptr() == dst.data_ptr()
                    for name, dst in destinations.items()
                ):
                    return destinations, held_version
            return destinations, None
        layout = {t.name: (t.dtype, tuple(t.shape)) for t in manifest.tensors}
        if len(self._held) >= self._keep_versions:
            oldest = min(self._held)
            held = self._held[oldest]
            held_layout = {n: (str(x.dtype).removeprefix("torch."), tuple(x.shape)) for n, x in held.tensors.items()}
            if held.owned and held_layout == layout:
                return dict(held.tensors), oldest
        holder = self._membership.holder
        return {
            t.name: holder.allocate(tuple(t.shape), getattr(torch, t.dtype), label=self.holder_id)
            for t in manifest.tensors
        }, None

    @staticmethod
    def _changed_chunks(manifest: common_pb2.Manifest, base: common_pb2.Manifest | None) -> list[int]:
        if base is None:
            return list(range(len(manifest.chunks)))
        before = {(c.tensor_name, c.offset_bytes): c for c in base.chunks}
        layouts = {t.name: (t.dtype, tuple(t.shape)) for t in base.tensors}
        same_tensor = {t.name for t in manifest.tensors if layouts.get(t.name) == (t.dtype, tuple(t.shape))}
        changed = []
        for chunk in manifest.chunks:
            old = before.get((chunk.tensor_name, chunk.offset_bytes))
            if (
                old is None
                or chunk.tensor_name not in same_tensor
                or (old.size_bytes, old.hash_hex, old.hash_algorithm)
                != (chunk.size_bytes, chunk.hash_hex, chunk.hash_algorithm)
            ):
                changed.append(chunk.index)
        return changed

    @staticmethod
    def _copy_unchanged(
        manifest: common_pb2.Manifest, base: _Held, destinations: Mapping[str, torch.Tensor], changed: Sequence[int]
    ) -> int:
        """Copy the chunks that did not change from the held base version; returns bytes copied."""
        changed_set = set(changed)
        copied = 0
        for chunk in manifest.chunks:
            if chunk.index in changed_set:
                continue
            src = base.tensors[chunk.tensor_name].reshape(-1).view(torch.uint8)
            dst = destinations[chunk.tensor_name].reshape(-1).view(torch.uint8)
            end = chunk.offset_bytes + chunk.size_bytes
            dst[chunk.offset_bytes : end].copy_(src[chunk.offset_bytes : end])
            copied += chunk.size_bytes
        return copied

    async def _read_chunks(
        self,
        manifest: common_pb2.Manifest,
        metas: Mapping[str, TensorMeta],
        destinations: Mapping[str, torch.Tensor],
        changed: Sequence[int],
        base_version: int,
        stats: FetchStats,
        progress: _Progress,
        serve_in_flight: bool,
        first_plan: pb.GetPlanResponse | None = None,
    ) -> None:
        """Read ``changed`` chunks as the hub plans them, pipelined: while reads run, the next plan
        is asked for (the hub holds it open until a source is free), and each read's chunks are
        reported as they verify. With ``serve_in_flight`` (the destinations are served, each chunk
        as it lands) the hub may name this reader as a source of chunks it is still reading. What a
        failed source left is planned again from other holders. ``first_plan`` (the one announced
        with the version) is read first; of it only chunks in ``changed`` (the rest are here)."""
        assert self._client is not None
        missing = set(changed)
        in_flight: set[int] = set()
        reads: dict[asyncio.Task[set[int]], tuple[str, set[int]]] = {}
        reads_per_holder = progress.reads_per_holder
        plan_task: asyncio.Task[pb.GetPlanResponse] | None = None
        deadline = time.monotonic() + self._fetch_timeout_s

        def start(plan: pb.GetPlanResponse) -> None:
            stats.num_plans += 1
            for read in plan.reads:
                chunks = set(read.chunk_indices) & missing
                if not chunks:
                    continue
                if len(chunks) < len(read.chunk_indices):
                    read = pb.SourceRead(
                        holder_id=read.holder_id, offer=read.offer, locality=read.locality, chunk_indices=sorted(chunks)
                    )
                in_flight.update(chunks)
                reads_per_holder[read.holder_id] = reads_per_holder.get(read.holder_id, 0) + 1
                read_task = asyncio.create_task(
                    self._read_source(manifest, metas, destinations, read, stats, progress, serve_in_flight)
                )
                reads[read_task] = (read.holder_id, chunks)

        try:
            if first_plan is not None:
                start(first_plan)
            while missing:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise TimeoutError(
                        f"fetching v{manifest.version} of {self.model!r}: {len(missing)} chunks still missing"
                    )
                wanted = missing - in_flight
                if wanted and plan_task is None:
                    wait_s = min(self._plan_wait_s, left_s)
                    plan_task = asyncio.create_task(
                        self._client.get_plan(
                            pb.GetPlanRequest(
                                request_id=_request_id(),
                                reader_id=self.holder_id,
                                model=self.model,
                                version=manifest.version,
                                held_version=base_version,
                                chunk_indices=sorted(wanted),
                                max_wait_s=wait_s,
                                allow_partial=True,
                                max_chunks=self._max_chunks_per_plan,
                                serve_in_flight=serve_in_flight,
                            ),
                            timeout_s=wait_s + _PLAN_RPC_MARGIN_S,
                        )
                    )
                pending: set[asyncio.Task[Any]] = set(reads)
                if plan_task is not None:
                    pending.add(plan_task)
                done, _ = await asyncio.wait(pending, timeout=left_s, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is plan_task:
                        plan_task = None
                        try:
                            plan = task.result()
                        except RPCError as exc:
                            if exc.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                                raise
                            continue  # the hub already waited max_wait_s for a source: ask again
                        start(plan)
                        continue
                    holder_id, chunks = reads.pop(task)
                    verified = task.result()
                    in_flight -= chunks
                    missing -= verified
                    reads_per_holder[holder_id] -= 1
                    if not reads_per_holder[holder_id]:
                        del reads_per_holder[holder_id]
                        if verified == chunks:
                            progress.finish_source(holder_id)
        finally:
            leftover = [t for t in (*reads, plan_task) if t is not None and not t.done()]
            for task in leftover:
                task.cancel()
            await asyncio.gather(*leftover, return_exceptions=True)

    async def _read_source(
        self,
        manifest: common_pb2.Manifest,
        metas: Mapping[str, TensorMeta],
        destinations: Mapping[str, torch.Tensor],
        read: pb.SourceRead,
        stats: FetchStats,
        progress: _Progress,
        serve_in_flight: bool,
    ) -> set[int]:
        """Read one source's chunks, in a few batches of tensors; returns those verified. On failure
        report it so the rest are re-planned from other holders.

        Chunks copied over shared memory are not hashed: every holder serves a chunk only under a
        read lease (it is not overwritten mid-copy) and only once it is in its memory verified (a
        publisher hashed it from that memory; a reader verified or, the same way, copied it), so
        a same-host memcpy of it is exact. Chunks that cross a socket are always hashed."""
        assert self._reader is not None and self._client is not None
        chunk_size_bytes = manifest.chunk_size_bytes
        by_tensor: dict[str, list[tuple[int, int]]] = {}
        for index in read.chunk_indices:
            chunk = manifest.chunks[index]
            by_tensor.setdefault(chunk.tensor_name, []).append((chunk.offset_bytes // chunk_size_bytes, index))
        address = CarrierAddress(
            carrier=read.offer.carrier,
            address=read.offer.address,
            host=self._reader.capabilities.host_id if read.offer.carrier == "shm" else "",
        )
        failures: list[TransferError] = []
        verified: set[int] = set()

        holder = self._membership.holder
        to_global = {(metas[name].name, local): index for name, pairs in by_tensor.items() for local, index in pairs}

        def on_verified(name: str, local: int) -> None:
            # Called from the transfer's thread: serve it and record it at once. The hub hears of
            # it with the source's finish (the progress is given the read's chunks as it ends):
            # no event-loop wake-up per chunk, as none would make a report sooner (a fetch serving
            # in flight is named for its chunks already; one that does not reports none).
            if serve_in_flight:
                holder.mark_ready(name, (local,))
            verified.add(to_global[(name, local)])

        # The source's tensors in up to reads_per_source batches, each one transfer job (one
        # connection, one lease round trip per tensor), so the event loop pays per batch, not per tensor.
        items = list(by_tensor.items())
        num_batches = max(1, min(self._reads_per_source, len(items)))

        async def batch(part: list[tuple[str, list[tuple[int, int]]]]) -> None:
            assert self._reader is not None
            try:
                await self._reader.read_many(
                    [
                        (
                            TensorRef(meta=metas[name], carriers=(address,), holder_id=read.holder_id),
                            destinations[name],
                            [local for local, _ in pairs],
                        )
                        for name, pairs in part
                    ],
                    carrier=address.carrier,
                    on_chunk=on_verified,
                    verify=False,
                )
            except TransferError as exc:
                failures.append(exc)

        await asyncio.gather(*(batch(items[k::num_batches]) for k in range(num_batches)))
        progress.add_chunks(verified)
        moved = sum(manifest.chunks[index].size_bytes for index in verified)
        if moved:
            stats.bytes_read += moved
            stats.sources[read.holder_id] = stats.sources.get(read.holder_id, 0) + moved
        if failures:
            stats.num_read_failures += 1
            exc = failures[0]
            with contextlib.suppress(RPCError):
                await self._client.report_read_failure(
                    pb.ReportReadFailureRequest(
                        request_id=_request_id(),
                        reader_id=self.holder_id,
                        holder_id=read.holder_id,
                        model=self.model,
                        version=manifest.version,
                        failure=_failure_kind(exc),
                        detail=str(exc)[:500],
                    )
                )
        return set(verified)

    async def _report_withdrawn(self, version: int) -> None:
        """Tell the hub this reader no longer serves ``version`` (no new plans name it for it), after
        the report that it holds it, if that is still on its way."""
        assert self._client is not None
        pending = self._reporting.get(version)
        if pending is not None:
            await asyncio.wait({pending})
        with contextlib.suppress(RPCError):
            await self._client.report_held(_held_report(self.holder_id, self.model, version, False))

    async def _unserve(self, version: int) -> None:
        """Stop serving ``version``'s tensors once reads in flight finish (a read planned meanwhile
        is refused and re-planned elsewhere): then its buffers may be overwritten."""
        held = self._held.get(version)
        if held is not None:
            names = [tensor_plane_name(self.model, version, t.name) for t in held.manifest.tensors]
            await self._membership.holder.unregister_many(names)

    async def _release(self, version: int) -> None:
        """Stop serving ``version`` once reads in flight end, and forget it. The hub hears of it in
        the background (after its ReportHeld, if that is still on its way); until then a read it
        plans to it is refused and re-planned elsewhere."""
        self._in_background(self._report_withdrawn(version))
        await self._unserve(version)
        self._held.pop(version, None)

    async def _heartbeat(self, reply: pb.HeartbeatResponse) -> None:
        """Free versions the hub retired once nobody reads them (the newest is always kept)."""
        if self._lock.locked():
            return
        newest = max(self._held, default=0)
        for state in reply.held_versions:
            if state.model == self.model and state.retired and state.num_active_reads == 0 and state.version != newest:
                async with self._lock:
                    await self._release(state.version)

    async def _rereport(self) -> None:
        """After a lapsed lease: report every held version again."""
        assert self._client is not None
        for version, held in sorted(self._held.items()):
            with contextlib.suppress(RPCError):
                await self._client.report_held(
                    _held_report(self.holder_id, self.model, version, True, held.manifest.root_hash)
                )
