"""Reader side of the tensor plane: one-sided reads of tensors (or some of their chunks) into a
destination the caller allocated.

``await reader.read(ref, dst)`` returns only when every requested chunk has arrived in ``dst`` and
matched its hash; otherwise it raises a :class:`~services.common.transport.errors.TransferError`
whose ``verified_chunks`` / ``missing_chunks`` say what can be kept and what to fetch elsewhere. To
fill one tensor from several holders, read into a :class:`TensorAssembly`, which refuses to hand out
the tensor until all of it has verified. ``await reader.read_many([(ref, dst, chunks), ...])`` reads
several tensors from one holder in one transfer job (one connection, in order).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from opentelemetry import trace

from services.common.transport.buffers import destination_bytes
from services.common.transport.errors import ChunkHashMismatch, TransferError
from services.common.transport.meta import CARRIERS, CarrierAddress, TensorMeta, TensorRef
from services.common.transport.probe import CarrierChoice, HostCapabilities, probe_host, select_carrier
from services.common.transport.sink import ChunkSink, TensorAssembly

logger = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class _Client(Protocol):
    carrier: str

    async def fetch(self, address: CarrierAddress, meta: TensorMeta, sink: ChunkSink, deadline: float) -> str: ...

    def close(self) -> None: ...


class _BatchClient(_Client, Protocol):
    """A carrier that moves several tensors' chunks from one holder in one transfer job."""

    async def fetch_many(
        self, address: CarrierAddress, items: Sequence[tuple[TensorMeta, ChunkSink]], deadline: float
    ) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ReadResult:
    """What one read moved, from where and how."""

    name: str
    """Tensor name."""
    holder_id: str
    """Holder read from."""
    carrier: str
    """Carrier actually used."""
    address: str
    """Carrier address read from."""
    reason: str
    """Why that carrier was chosen."""
    chunks: tuple[int, ...]
    """Chunks read and verified."""
    size_bytes: int
    """Bytes moved."""
    seconds: float
    """Wall time of the transfer (connection, bytes and verification)."""
    detail: str = ""
    """Carrier-specific facts, e.g. the UCX transports in use."""

    @property
    def gb_per_s(self) -> float:
        """Throughput in GB/s (10^9 bytes)."""
        return self.size_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


class TensorReader:
    """Reads tensors from holders, picking the carrier per holder from the host probe."""

    def __init__(
        self,
        *,
        host_id: str | None = None,
        allowed_carriers: Sequence[str] | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        max_concurrent_transfers: int = 16,
    ) -> None:
        """
        Args:
            host_id: overrides the probed host id (a different id than the holder's disables shm).
            allowed_carriers: carriers this reader may use (default: all it knows).
            timeout_s: default deadline of one read, connection included.
            connect_timeout_s: bound on establishing a connection to a holder.
            max_concurrent_transfers: socket transfers run in a pool of this many threads.
        """
        self.capabilities: HostCapabilities = probe_host(host_id=host_id)
        allowed = list(CARRIERS if allowed_carriers is None else allowed_carriers)
        unknown = [c for c in allowed if c not in CARRIERS]
        if unknown:
            raise ValueError(f"unknown carriers {unknown}; expected some of {CARRIERS}")
        self._allowed = allowed
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_concurrent_transfers, thread_name_prefix="transport-read"
        )
        self._clients: dict[str, _Client] = {}

    def _client(self, carrier: str) -> _Client:
        client = self._clients.get(carrier)
        if client is not None:
            return client
        if carrier == "tcp":
            from services.common.transport.tcp import TcpClient

            client = TcpClient(self._executor, connect_timeout_s=self._connect_timeout_s)
        elif carrier == "shm":
            from services.common.transport.shm import ShmClient

            client = ShmClient(self._executor, connect_timeout_s=self._connect_timeout_s)
        elif carrier == "ucx":
            from services.common.transport.ucx import UcxClient

            client = UcxClient(connect_timeout_s=self._connect_timeout_s)
        else:
            from services.common.transport.nixl import NixlClient

            client = NixlClient(self._executor, connect_timeout_s=self._connect_timeout_s)
        self._clients[carrier] = client
        return client

    def choose(self, ref: TensorRef, *, dst_is_cuda: bool = False, carrier: str | None = None) -> CarrierChoice:
        """The carrier a read of ``ref`` would use, and why."""
        return select_carrier(
            self.capabilities, ref.carriers, dst_is_cuda=dst_is_cuda, allowed=self._allowed, require=carrier
        )

    async def read(
        self,
        ref: TensorRef,
        dst: torch.Tensor | TensorAssembly,
        *,
        chunks: Sequence[int] | None = None,
        carrier: str | None = None,
        timeout_s: float | None = None,
        on_chunk: Callable[[int], None] | None = None,
        verify: bool = True,
    ) -> ReadResult:
        """Read ``ref``'s tensor (or just ``chunks`` of it) into ``dst`` and verify every chunk.

        Args:
            ref: the tensor at one holder.
            dst: a preallocated tensor of ``ref.meta``'s size and dtype (or uint8), CPU or CUDA;
                chunks land at their own offsets. Or a :class:`TensorAssembly`, whose verified chunks
                are recorded as they arrive and whose missing chunks are the default.
            chunks: chunk indices to read (default: all, or the assembly's missing ones).
            carrier: force a carrier (tests, benchmarks); default chosen by the probe.
            timeout_s: deadline for the whole read (default: the reader's).
            on_chunk: called with each chunk index once it verified, from the transfer's thread;
                must be quick and thread-safe.
            verify: False skips the hash of chunks copied over shared memory, for a holder whose
                bytes are known good: it serves them under a read lease (nothing overwrites them
                mid-copy) and they were hashed when published or verified when they arrived there.
                A hash guards against torn or corrupted bytes; a same-host memcpy from a leased,
                verified buffer gives neither. Chunks over any other carrier (bytes crossing a
                socket or a NIC) are always hashed.

        Raises:
            ValueError: ``dst`` of the wrong size or dtype (naming both sizes), bad chunk indices.
            TransferError: a subclass saying what went wrong, with ``verified_chunks`` and
                ``missing_chunks``; chunks not verified hold undefined bytes.
        """
        meta = ref.meta
        assembly: TensorAssembly | None = None
        if isinstance(dst, TensorAssembly):
            assembly = dst
            if assembly.meta.root_hash != meta.root_hash:
                raise ValueError(
                    f"assembly is for {assembly.meta.name!r} content {assembly.meta.root_hash}, the reference "
                    f"is {meta.name!r} content {meta.root_hash}"
                )
            flat = assembly.flat
        else:
            flat = destination_bytes(meta, dst)
        wanted = self._wanted_chunks(meta, chunks, assembly)
        choice = self.choose(ref, dst_is_cuda=bool(flat.is_cuda), carrier=carrier)
        callbacks: list[Callable[[int], None]] = []
        if assembly is not None:
            assembly.invalidate(wanted)  # those bytes are about to be overwritten
            callbacks.append(assembly.mark_verified)
        if on_chunk is not None:
            callbacks.append(on_chunk)
        sink = ChunkSink(meta, flat, wanted, on_verified=callbacks, verify=verify or choice.carrier != "shm")
        started = time.monotonic()
        detail = ""
        attributes: dict[str, str | int] = {
            "transport.tensor": meta.name,
            "transport.carrier": choice.carrier,
            "transport.holder": ref.holder_id,
            "transport.bytes": sink.size_bytes,
            "transport.chunks": len(wanted),
        }
        with _tracer.start_as_current_span("transport.read", attributes=attributes):
            if wanted:
                try:
                    detail = await self._client(choice.carrier).fetch(
                        choice.address, meta, sink, started + (timeout_s or self._timeout_s)
                    )
                    sink.finish()
                except TransferError as exc:
                    raise self._failed(exc, ref, choice, sink) from exc
        result = ReadResult(
            name=meta.name,
            holder_id=ref.holder_id,
            carrier=choice.carrier,
            address=choice.address.address,
            reason=choice.reason,
            chunks=tuple(wanted),
            size_bytes=sink.size_bytes,
            seconds=time.monotonic() - started,
            detail=detail,
        )
        logger.info(
            "read %r: %d chunks, %d bytes from holder %s via %s %s in %.3f s (%.2f GB/s); carrier chosen: %s%s",
            meta.name,
            len(wanted),
            result.size_bytes,
            ref.holder_id,
            choice.carrier,
            choice.address.address,
            result.seconds,
            result.gb_per_s,
            choice.reason,
            f"; {detail}" if detail else "",
        )
        return result

    async def read_many(
        self,
        items: Sequence[tuple[TensorRef, torch.Tensor, Sequence[int] | None]],
        *,
        carrier: str | None = None,
        timeout_s: float | None = None,
        on_chunk: Callable[[str, int], None] | None = None,
        verify: bool = True,
    ) -> list[ReadResult]:
        """Read several tensors (``(ref, dst, chunks)`` each, as :meth:`read` takes them) from one
        holder: one transfer job and one span for all of them where the carrier moves them in one
        go (tcp and shm, in order over one connection), else one :meth:`read` after another. Each
        item is checked and verified as :meth:`read` does; ``on_chunk`` gets the tensor's name and
        the chunk index. Every ref must name the same holder (the same carrier addresses).

        Raises:
            ValueError: refs of different holders, or an item :meth:`read` would refuse.
            TransferError: of the first item that failed (as :meth:`read` raises it); the items
                before it were read and verified, those after it were not read.
        """
        if not items:
            return []
        first = items[0][0]
        if any(ref.carriers != first.carriers for ref, _, _ in items):
            raise ValueError("read_many reads from one holder: every ref must carry the same addresses")
        sinks: list[ChunkSink] = []
        for ref, dst, chunks in items:
            if isinstance(dst, TensorAssembly):
                raise ValueError("read_many takes plain destination tensors, not assemblies")
            meta = ref.meta
            flat = destination_bytes(meta, dst)
            callbacks: list[Callable[[int], None]] = []
            if on_chunk is not None:
                callbacks.append(functools.partial(on_chunk, meta.name))
            sinks.append(
                ChunkSink(meta, flat, self._wanted_chunks(meta, chunks, None), on_verified=callbacks, verify=verify)
            )
        choice = self.choose(first, dst_is_cuda=any(sink.is_cuda for sink in sinks), carrier=carrier)
        if choice.carrier != "shm":
            for sink in sinks:
                sink.verify = True  # bytes that cross a socket or a NIC are always hashed
        client = self._client(choice.carrier)
        started = time.monotonic()
        deadline = started + (timeout_s or self._timeout_s)
        attributes: dict[str, str | int] = {
            "transport.tensors": len(sinks),
            "transport.carrier": choice.carrier,
            "transport.holder": first.holder_id,
            "transport.bytes": sum(sink.size_bytes for sink in sinks),
            "transport.chunks": sum(len(sink.chunks) for sink in sinks),
        }
        with _tracer.start_as_current_span("transport.read_many", attributes=attributes):
            try:
                if hasattr(client, "fetch_many"):
                    batch: _BatchClient = client  # type: ignore[assignment]
                    await batch.fetch_many(
                        choice.address, [(sink.meta, sink) for sink in sinks if sink.chunks], deadline
                    )
                else:
                    for sink in sinks:
                        if sink.chunks:
                            await client.fetch(choice.address, sink.meta, sink, deadline)
                            sink.finish()
            except TransferError as exc:
                # Both paths finish each sink as its read ends (a corrupt chunk stops the rest there).
                failed = next((k for k, sink in enumerate(sinks) if sink.bad or sink.missing()), 0)
                raise self._failed(exc, items[failed][0], choice, sinks[failed]) from exc
        seconds = time.monotonic() - started
        results = [
            ReadResult(
                name=sink.meta.name,
                holder_id=ref.holder_id,
                carrier=choice.carrier,
                address=choice.address.address,
                reason=choice.reason,
                chunks=tuple(sink.chunks),
                size_bytes=sink.size_bytes,
                seconds=seconds,
            )
            for (ref, _, _), sink in zip(items, sinks, strict=True)
        ]
        logger.info(
            "read %d tensors (%d bytes) from holder %s via %s %s in %.3f s; carrier chosen: %s",
            len(results),
            attributes["transport.bytes"],
            first.holder_id,
            choice.carrier,
            choice.address.address,
            seconds,
            choice.reason,
        )
        return results

    @staticmethod
    def _wanted_chunks(meta: TensorMeta, chunks: Sequence[int] | None, assembly: TensorAssembly | None) -> list[int]:
        if chunks is None:
            return assembly.missing_chunks() if assembly is not None else list(range(meta.num_chunks))
        wanted = [int(c) for c in chunks]
        bad = [c for c in wanted if not 0 <= c < meta.num_chunks]
        if bad:
            raise ValueError(f"chunks {bad[:8]} out of range for {meta.name!r} with {meta.num_chunks} chunks")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"duplicate chunk indices in a read of {meta.name!r}")
        return wanted

    @staticmethod
    def _failed(exc: TransferError, ref: TensorRef, choice: CarrierChoice, sink: ChunkSink) -> TransferError:
        """The same error type, with where it happened and which chunks are done."""
        holder = ref.holder_id or "?"
        where = f"reading {ref.meta.name!r} from holder {holder} via {choice.carrier} {choice.address.address}"
        kwargs: dict[str, object] = {}
        if isinstance(exc, ChunkHashMismatch):
            kwargs["bad_chunks"] = exc.bad_chunks
        error = type(exc)(
            f"{where}: {exc.message}",
            name=ref.meta.name,
            verified_chunks=sink.verified,
            missing_chunks=sink.missing(),
            **kwargs,  # type: ignore[arg-type]
        )
        logger.warning("%s failed after %d of %d chunks: %s", where, len(sink.verified), len(sink.chunks), exc.message)
        return error

    async def close(self) -> None:
        """Close pooled connections and the transfer threads."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> TensorReader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
