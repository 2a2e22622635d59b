"""Holder side of the tensor plane: register named tensors, serve one-sided reads of them.

A :class:`TensorHolder` serves straight from the memory of the tensors it is given (no copy is
kept). It starts one server per carrier it offers; each read takes a read lease, so the holder
never overwrites (:meth:`TensorHolder.writing`, :meth:`TensorHolder.update`) or releases
(:meth:`TensorHolder.unregister`) a tensor while a reader is reading it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol

import torch

from services.common.transport.buffers import SharedSegment, as_bytes
from services.common.transport.errors import UnknownTensor
from services.common.transport.leases import Entry, LeaseTable
from services.common.transport.meta import (
    CARRIERS,
    DEFAULT_CHUNK_SIZE_BYTES,
    DEFAULT_HASH_ALGO,
    HASH_ALGOS,
    CarrierAddress,
    TensorMeta,
    TensorRef,
    compute_meta,
    dtype_name,
)
from services.common.transport.probe import HostCapabilities, probe_host

logger = logging.getLogger(__name__)


def default_carriers(caps: HostCapabilities) -> list[str]:
    """What a holder offers unless told otherwise: tcp always, shm where it works, and ucx / nixl
    only where the hardware gives them something sockets cannot (RDMA, CUDA)."""
    carriers = ["tcp"]
    if caps.shm:
        carriers.append("shm")
    if caps.ucx_importable and (caps.ucx_rdma or caps.ucx_cuda):
        carriers.append("ucx")
    if caps.nixl_importable and caps.rdma_devices:
        carriers.append("nixl")
    return carriers


def default_advertise_host() -> str:
    """The address of the interface that routes off this host (127.0.0.1 without a route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() on UDP sends nothing; it only makes the kernel pick the outgoing interface.
            probe.connect(("10.255.255.255", 1))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class _Server(Protocol):
    """What the holder needs of a carrier server."""

    carrier: str

    def start(self) -> CarrierAddress: ...

    def close(self) -> None: ...


class TensorHolder:
    """Serves registered tensors to readers over every carrier it offers.

    Usage::

        async with TensorHolder(bind_host="127.0.0.1") as holder:
            weights = holder.allocate((4096, 4096), torch.bfloat16)   # shared memory, if offered
            weights.copy_(trained)
            ref = await holder.register("layer0.weight", weights)     # -> TensorRef for the hub
            ...
            async with holder.writing("layer0.weight") as t:          # waits for readers to finish
                t.copy_(next_version)
    """

    def __init__(
        self,
        *,
        holder_id: str | None = None,
        host_id: str | None = None,
        carriers: Sequence[str] | None = None,
        bind_host: str = "0.0.0.0",
        advertise_host: str | None = None,
        chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
        hash_algo: str = DEFAULT_HASH_ALGO,
        max_concurrent_reads: int = 64,
        idle_timeout_s: float = 300.0,
        stall_timeout_s: float = 60.0,
        pending_wait_s: float = 10.0,
    ) -> None:
        """
        Args:
            holder_id: opaque id for logs and plans (random by default).
            host_id: overrides the probed host id (see ``probe.default_host_id``); readers with a
                different host id will not use shared memory with this holder.
            carriers: carriers to offer; default from the probe (``default_carriers``).
            bind_host: interface the tcp server binds.
            advertise_host: host put in the advertised addresses; default ``bind_host``, or the
                routable interface when binding all interfaces.
            chunk_size_bytes: chunking of tensors registered without metadata.
            hash_algo: hash of tensors registered without metadata.
            max_concurrent_reads: reads served at once; more are refused with ``HolderBusy``.
            idle_timeout_s: an idle reader connection is closed after this long.
            stall_timeout_s: a reader that takes nothing for this long is cut off (its lease ends).
            pending_wait_s: a tcp or shm read of chunks registered as pending (see :meth:`register`)
                waits this long for them to arrive before it is refused with ``HolderBusy``.
        """
        self.holder_id = holder_id or uuid.uuid4().hex[:16]
        self.capabilities = probe_host(host_id=host_id)
        names = list(carriers) if carriers is not None else default_carriers(self.capabilities)
        unknown = [c for c in names if c not in CARRIERS]
        if unknown:
            raise ValueError(f"unknown carriers {unknown}; expected some of {CARRIERS}")
        if "tcp" not in names:
            # tcp is the carrier every reader can fall back to; a holder without it is unreachable
            # from other hosts.
            raise ValueError(f"carriers must include 'tcp', got {names}")
        if "shm" in names and not self.capabilities.shm:
            raise ValueError("carrier 'shm' requested but shared memory is not available on this host")
        if chunk_size_bytes <= 0:
            raise ValueError(f"chunk_size_bytes must be > 0, got {chunk_size_bytes}")
        if hash_algo not in HASH_ALGOS:
            raise ValueError(f"unknown hash algorithm {hash_algo!r}; expected one of {HASH_ALGOS}")
        self._carrier_names = names
        self._bind_host = bind_host
        if advertise_host is None:
            advertise_host = default_advertise_host() if bind_host in ("0.0.0.0", "::", "") else bind_host
        self._advertise_host = advertise_host
        self._chunk_size_bytes = chunk_size_bytes
        self._hash_algo = hash_algo
        self._idle_timeout_s = idle_timeout_s
        self._stall_timeout_s = stall_timeout_s
        self._pending_wait_s = pending_wait_s
        self._leases = LeaseTable(max_concurrent_reads=max_concurrent_reads)
        self._servers: list[_Server] = []
        self._addresses: list[CarrierAddress] = []
        self._segments: list[SharedSegment] = []
        self._segment_at: dict[int, SharedSegment] = {}
        """Segments by the address of their first byte: a tensor from :meth:`allocate` registered
        whole is found without a scan of every segment (a register per tensor per version)."""
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start a server per carrier; :attr:`carriers` is valid afterwards."""
        if self._started:
            return
        try:
            await asyncio.to_thread(self._start_servers)
        except BaseException:
            await self.close()  # a carrier that failed to start must not leave the others serving
            raise
        self._started = True
        logger.info(
            "tensor holder %s serving on %s",
            self.holder_id,
            ", ".join(f"{a.carrier}={a.address}" for a in self._addresses),
        )

    def _start_servers(self) -> None:
        host_id = self.capabilities.host_id
        for name in self._carrier_names:
            server: _Server
            if name == "tcp":
                from services.common.transport.tcp import TcpServer

                server = TcpServer(
                    self._leases,
                    bind_host=self._bind_host,
                    advertise_host=self._advertise_host,
                    host_id=host_id,
                    idle_timeout_s=self._idle_timeout_s,
                    stall_timeout_s=self._stall_timeout_s,
                    pending_wait_s=self._pending_wait_s,
                )
            elif name == "shm":
                from services.common.transport.shm import ShmServer

                server = ShmServer(
                    self._leases,
                    live_segments=self._live_segment_ids,
                    host_id=host_id,
                    label=self.holder_id,
                    idle_timeout_s=self._idle_timeout_s,
                    stall_timeout_s=self._stall_timeout_s,
                    pending_wait_s=self._pending_wait_s,
                )
            elif name == "ucx":
                from services.common.transport.ucx import UcxServer

                server = UcxServer(
                    self._leases,
                    advertise_host=self._advertise_host,
                    host_id=host_id,
                    stall_timeout_s=self._stall_timeout_s,
                )
            else:
                from services.common.transport.nixl import NixlServer

                server = NixlServer(
                    self._leases,
                    bind_host=self._bind_host,
                    advertise_host=self._advertise_host,
                    host_id=host_id,
                    agent_name=self.holder_id,
                    idle_timeout_s=self._idle_timeout_s,
                    stall_timeout_s=self._stall_timeout_s,
                )
            self._addresses.append(server.start())
            self._servers.append(server)

    def _live_segment_ids(self) -> list[str]:
        return [s.segment_id for s in self._segments if s.alive]

    async def close(self) -> None:
        """Stop every server; open reads are cut (their readers get ``PeerDisconnected``)."""
        servers, self._servers = self._servers, []
        self._addresses = []
        for server in servers:
            await asyncio.to_thread(server.close)
        for segment in self._segments:
            segment.close()
        self._segments.clear()
        self._segment_at.clear()
        self._started = False

    async def __aenter__(self) -> TensorHolder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def carriers(self) -> tuple[CarrierAddress, ...]:
        """Addresses of the carriers this holder offers (after :meth:`start`)."""
        return tuple(self._addresses)

    # -- tensors -----------------------------------------------------------------------------

    def allocate(self, shape: Sequence[int], dtype: torch.dtype, *, label: str = "") -> torch.Tensor:
        """An uninitialised CPU tensor that this holder can serve over shared memory.

        Fill it, then :meth:`register` it (or a contiguous view of it). Without the shm carrier it
        is an ordinary tensor. Its memory is freed when the tensor and all views of it are gone.
        """
        numel = math.prod(shape)
        size_bytes = numel * torch.empty((), dtype=dtype).element_size()
        if "shm" not in self._carrier_names:
            return torch.empty(tuple(shape), dtype=dtype)
        self._segments = [s for s in self._segments if s.alive]
        self._segment_at = {ptr: s for ptr, s in self._segment_at.items() if s.alive}
        segment, flat = SharedSegment.create(size_bytes, label or self.holder_id)
        self._segments.append(segment)
        self._segment_at[flat.data_ptr()] = segment
        return flat.view(dtype).reshape(tuple(shape))

    async def register(
        self,
        name: str,
        tensor: torch.Tensor,
        *,
        meta: TensorMeta | None = None,
        chunk_size_bytes: int | None = None,
        pending_chunks: Iterable[int] = (),
    ) -> TensorRef:
        """Serve ``tensor`` (contiguous, CPU or CUDA) under ``name``; returns its reference.

        The holder serves the tensor's own memory: do not modify it except through
        :meth:`writing` / :meth:`update`. Pass ``meta`` when the content is already known to match it
        (e.g. right after a verified read): the tensor is then not hashed again. With ``meta``,
        ``pending_chunks`` are chunks still being written into the tensor (by a read into it): they
        are served only once :meth:`mark_ready` says they arrived; tcp and shm reads of them wait
        for that (``pending_wait_s``), other carriers refuse them.
        """
        flat = as_bytes(tensor)
        pending = {int(c) for c in pending_chunks}
        if pending and (meta is None or not all(0 <= c < meta.num_chunks for c in pending)):
            raise ValueError(f"pending chunks of {name!r} need its meta and must be chunk indices of it")
        if meta is None:
            meta = await asyncio.to_thread(
                compute_meta,
                name,
                tensor,
                chunk_size_bytes=chunk_size_bytes or self._chunk_size_bytes,
                hash_algo=self._hash_algo,
            )
        elif (meta.name, meta.dtype, meta.shape) != (name, dtype_name(tensor.dtype), tuple(tensor.shape)):
            raise ValueError(
                f"metadata ({meta.name!r}, {meta.dtype}, {list(meta.shape)}) does not describe tensor "
                f"{name!r} ({dtype_name(tensor.dtype)}, {list(tensor.shape)})"
            )
        entry = Entry(
            meta=meta, tensor=tensor, flat=flat, pending={c: threading.Event() for c in pending} if pending else None
        )
        # A tensor from allocate() starts its segment (segments never overlap): no scan then.
        at = self._segment_at.get(flat.data_ptr())
        for segment in (at,) if at is not None else self._segments:
            offset = segment.offset_of(flat)
            if offset is not None:
                entry.segment, entry.segment_offset = segment, offset
                break
        self._leases.add(entry)
        logger.debug(
            "registered %r: %d bytes, %d chunks, shm=%s",
            name,
            meta.size_bytes,
            meta.num_chunks,
            entry.segment is not None,
        )
        return self._ref(entry)

    def _ref(self, entry: Entry) -> TensorRef:
        carriers = [a for a in self._addresses if a.carrier != "shm" or entry.segment is not None]
        return TensorRef(meta=entry.meta, carriers=tuple(carriers), holder_id=self.holder_id)

    def mark_ready(self, name: str, chunks: Iterable[int]) -> None:
        """Chunks of ``name`` registered as pending that have now arrived (verified): serve them.
        Thread-safe and quick (a read's ``on_chunk`` callback may call it)."""
        self._leases.mark_ready(name, chunks)

    def ref(self, name: str) -> TensorRef:
        """The current reference of ``name``; ``UnknownTensor`` if not registered."""
        return self._ref(self._leases.get(name))

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor served as ``name`` (modify it only through :meth:`writing`)."""
        return self._leases.get(name).tensor

    def names(self) -> list[str]:
        """Registered names."""
        return self._leases.names()

    def active_reads(self, name: str | None = None) -> int:
        """Reads in flight on ``name`` (or on all tensors)."""
        return self._leases.active_reads(name)

    async def unregister(self, name: str, *, timeout_s: float = 30.0) -> None:
        """Stop serving ``name`` once reads in flight finish (``LeaseTimeout`` after ``timeout_s``)."""
        entry = await asyncio.to_thread(self._leases.acquire_write, name, timeout_s)
        self._leases.release_write(entry, remove=True)

    async def unregister_many(self, names: Sequence[str], *, timeout_s: float = 30.0) -> None:
        """:meth:`unregister` each of ``names`` that is registered, in one hop to a worker thread
        (each waits for its own reads in flight, ``LeaseTimeout`` after ``timeout_s``)."""

        def unregister_all() -> None:
            registered = set(self._leases.names())
            for name in names:
                if name in registered:
                    try:
                        entry = self._leases.acquire_write(name, timeout_s)
                    except UnknownTensor:
                        continue  # unregistered meanwhile
                    self._leases.release_write(entry, remove=True)

        await asyncio.to_thread(unregister_all)

    @contextlib.asynccontextmanager
    async def writing(self, name: str, *, timeout_s: float = 30.0) -> AsyncIterator[torch.Tensor]:
        """Exclusive access to overwrite ``name`` in place.

        New reads are refused (``HolderBusy``, so readers re-plan) and reads in flight are waited for,
        up to ``timeout_s`` (``LeaseTimeout``). On exit the tensor is re-hashed and served again under
        its new metadata; references made before no longer match it (``StaleTensor``).
        """
        entry = await asyncio.to_thread(self._leases.acquire_write, name, timeout_s)
        new_meta: TensorMeta | None = None
        try:
            yield entry.tensor
        finally:
            try:
                new_meta = await asyncio.to_thread(
                    compute_meta,
                    name,
                    entry.tensor,
                    chunk_size_bytes=entry.meta.chunk_size_bytes,
                    hash_algo=entry.meta.hash_algo,
                )
            finally:
                self._leases.release_write(entry, meta=new_meta)

    async def update(self, name: str, source: torch.Tensor, *, timeout_s: float = 30.0) -> TensorRef:
        """Copy ``source`` into the tensor registered as ``name`` (see :meth:`writing`)."""
        current = self._leases.get(name).meta
        size_bytes = source.numel() * source.element_size()
        if size_bytes != current.size_bytes or dtype_name(source.dtype) != current.dtype:
            raise ValueError(
                f"update of {name!r} needs {current.size_bytes} bytes of {current.dtype}, got {size_bytes} bytes "
                f"of {dtype_name(source.dtype)}"
            )
        async with self.writing(name, timeout_s=timeout_s) as target:
            target.copy_(source.reshape(target.shape))
        return self.ref(name)
