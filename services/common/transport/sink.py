"""Reader side: where each chunk lands, and its verification as soon as it has landed.

Carriers only move bytes; a :class:`ChunkSink` tells them where range ``k`` goes and is told when it
has arrived, hashes it there and records it as verified (or bad). Verification happens on the
destination bytes themselves, i.e. on exactly what the caller will use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import torch

from services.common.transport.buffers import destination_bytes, host_view, pinned_staging
from services.common.transport.errors import ChunkHashMismatch, IncompleteTransfer
from services.common.transport.meta import ByteRange, TensorMeta, hash_bytes


class TensorAssembly:
    """A destination tensor filled chunk by chunk, possibly from several holders, which refuses to
    hand out the tensor until every chunk has arrived and verified.

    Typical use (re-planning after a holder dies)::

        assembly = TensorAssembly(meta, dst)
        for ref in plan:                      # each source offers the same content
            try:
                await reader.read(ref, assembly)   # reads assembly.missing_chunks()
                break
            except TransferError:
                continue                      # verified chunks are kept, the rest re-planned
        tensor = assembly.tensor()            # IncompleteTransfer unless complete
    """

    def __init__(self, meta: TensorMeta, dst: torch.Tensor) -> None:
        self.meta = meta
        self.dst = dst
        self.flat = destination_bytes(meta, dst)
        self._lock = threading.Lock()
        self._verified: set[int] = set()

    def mark_verified(self, chunk: int) -> None:
        """Record that ``chunk`` arrived and matched its hash (thread-safe)."""
        with self._lock:
            self._verified.add(chunk)

    def invalidate(self, chunks: Iterable[int]) -> None:
        """Forget ``chunks`` (they are being overwritten by a read in progress)."""
        with self._lock:
            self._verified.difference_update(chunks)

    @property
    def verified_chunks(self) -> frozenset[int]:
        """Chunks that arrived and verified."""
        with self._lock:
            return frozenset(self._verified)

    def missing_chunks(self) -> list[int]:
        """Chunks still to read, in order."""
        with self._lock:
            return [i for i in range(self.meta.num_chunks) if i not in self._verified]

    @property
    def complete(self) -> bool:
        """Every chunk arrived and verified."""
        with self._lock:
            return len(self._verified) == self.meta.num_chunks

    def tensor(self) -> torch.Tensor:
        """The destination, only once complete; :class:`IncompleteTransfer` naming what is missing."""
        missing = self.missing_chunks()
        if missing:
            raise IncompleteTransfer(
                f"tensor {self.meta.name!r} is missing {len(missing)} of {self.meta.num_chunks} chunks "
                f"(first: {missing[:8]})",
                name=self.meta.name,
                verified_chunks=self.verified_chunks,
                missing_chunks=missing,
            )
        return self.dst


class ChunkSink:
    """The chunks one read asks for, their destination bytes and their verification state."""

    def __init__(
        self,
        meta: TensorMeta,
        flat: torch.Tensor,
        chunks: Sequence[int],
        *,
        on_verified: Sequence[Callable[[int], None]] = (),
        verify: bool = True,
    ) -> None:
        """``verify=False`` accepts each chunk as it lands without hashing it: only for a copy the
        caller knows to be exact (see ``TensorReader.read``'s ``verify``)."""
        self.meta = meta
        self.verify = verify
        self.flat = flat
        self.chunks = list(chunks)
        self.ranges: list[ByteRange] = [meta.chunk_range(i) for i in self.chunks]
        self.verified: list[int] = []
        self.bad: list[int] = []
        self._on_verified = list(on_verified)
        # CUDA destinations are filled through a pinned host buffer by the socket carriers.
        self._staging = pinned_staging(meta.chunk_size_bytes) if flat.is_cuda else None

    @property
    def size_bytes(self) -> int:
        """Bytes this read moves."""
        return sum(r.length for r in self.ranges)

    @property
    def is_cuda(self) -> bool:
        """The destination is CUDA memory."""
        return bool(self.flat.is_cuda)

    def host_target(self, k: int) -> memoryview:
        """Host memory into which range ``k`` must be written before :meth:`commit` ``(k)``."""
        r = self.ranges[k]
        if self._staging is None:
            return host_view(self.flat[r.offset : r.end])
        return host_view(self._staging[: r.length])

    def device_target(self, k: int) -> torch.Tensor:
        """The destination slice of range ``k`` itself (for carriers that write device memory);
        commit it with ``commit(k, on_device=True)``."""
        r = self.ranges[k]
        return self.flat[r.offset : r.end]

    def commit(self, k: int, *, on_device: bool = False) -> bool:
        """Range ``k`` has landed: verify it, record the outcome, return whether it verified."""
        r = self.ranges[k]
        chunk = self.chunks[k]
        if not self.verify:
            if self._staging is not None and not on_device:
                self.flat[r.offset : r.end].copy_(self._staging[: r.length])
            self.verified.append(chunk)
            for callback in self._on_verified:
                callback(chunk)
            return True
        if self._staging is not None and not on_device:
            landed = self._staging[: r.length]
            self.flat[r.offset : r.end].copy_(landed)
            digest = hash_bytes(self.meta.hash_algo, host_view(landed))
        elif self.flat.is_cuda:
            digest = hash_bytes(self.meta.hash_algo, host_view(self.flat[r.offset : r.end].cpu()))
        else:
            digest = hash_bytes(self.meta.hash_algo, host_view(self.flat[r.offset : r.end]))
        if digest != self.meta.chunk_hashes[chunk]:
            self.bad.append(chunk)
            return False
        self.verified.append(chunk)
        for callback in self._on_verified:
            callback(chunk)
        return True

    def missing(self) -> list[int]:
        """Asked-for chunks that did not verify (yet)."""
        done = set(self.verified)
        return [c for c in self.chunks if c not in done]

    def finish(self) -> None:
        """Raise :class:`ChunkHashMismatch` if any chunk arrived corrupt."""
        if self.bad:
            raise ChunkHashMismatch(
                f"{len(self.bad)} chunk(s) of {self.meta.name!r} did not match their hash: {sorted(self.bad)[:16]} "
                "(the holder's bytes differ from the metadata)",
                name=self.meta.name,
                bad_chunks=self.bad,
                verified_chunks=self.verified,
                missing_chunks=self.missing(),
            )
