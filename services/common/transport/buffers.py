"""Byte views of tensors, destination checks and shared-memory segments.

Carriers move bytes, not tensors: everything here turns a contiguous tensor into a flat ``uint8``
view of the *same* memory, so sockets can ``sendall``/``recv_into`` it and shared memory can be
copied into it, without an intermediate buffer.
"""

from __future__ import annotations

import mmap
import os
import uuid
import weakref
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    # Annotation only: meta.compute_meta needs as_bytes from here at run time.
    from services.common.transport.meta import TensorMeta


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Flat ``uint8`` view of a contiguous tensor's storage (no copy); ``ValueError`` otherwise."""
    if not tensor.is_contiguous():
        raise ValueError(
            f"tensor of shape {tuple(tensor.shape)} is not contiguous; the transport moves contiguous "
            "storage only (call .contiguous() first)"
        )
    if tensor.device.type not in ("cpu", "cuda"):
        raise ValueError(f"tensors on {tensor.device} are not supported (cpu or cuda only)")
    return tensor.reshape(-1).view(torch.uint8)


def host_view(flat: torch.Tensor) -> memoryview:
    """Writable memoryview over a CPU ``uint8`` tensor (what ``recv_into``/``sendall`` take)."""
    if flat.is_cuda:
        raise ValueError("CUDA memory has no host memoryview; stage it through a pinned buffer")
    return flat.numpy().data


def destination_bytes(meta: TensorMeta, dst: torch.Tensor) -> torch.Tensor:
    """Check that ``dst`` can receive ``meta``'s tensor and return its flat byte view.

    ``dst`` must be contiguous, on CPU or CUDA, of the tensor's dtype (or ``uint8`` to receive the
    raw bytes) and exactly ``meta.size_bytes`` long; the shape is not checked, so a flat buffer works.
    """
    if not isinstance(dst, torch.Tensor):
        raise ValueError(f"destination for {meta.name!r} must be a torch.Tensor, got {type(dst).__name__}")
    dst_size_bytes = dst.numel() * dst.element_size()
    if dst_size_bytes != meta.size_bytes:
        raise ValueError(
            f"destination for {meta.name!r} holds {dst_size_bytes} bytes but the tensor has "
            f"{meta.size_bytes} bytes ({meta.dtype} {list(meta.shape)})"
        )
    if dst.dtype not in (meta.torch_dtype, torch.uint8):
        raise ValueError(
            f"destination for {meta.name!r} has dtype {dst.dtype} ({dst_size_bytes} bytes) but the tensor "
            f"is {meta.dtype} ({meta.size_bytes} bytes); use that dtype or uint8 for raw bytes"
        )
    return as_bytes(dst)


def pinned_staging(size_bytes: int) -> torch.Tensor:
    """A host buffer for moving CUDA memory through a socket (page-locked so the DMA is direct)."""
    return torch.empty(size_bytes, dtype=torch.uint8, pin_memory=torch.cuda.is_available())


class SharedSegment:
    """Anonymous shared memory (``memfd``) that another process on this host can map by fd.

    A memfd has no name in ``/dev/shm``, so a holder killed with SIGKILL leaks nothing: the memory
    is freed when the last process that maps it or holds its fd lets go. Readers receive the fd over
    the holder's Unix control socket (``SCM_RIGHTS``); that socket is also where read leases live.

    The segment does not keep its memory alive: :meth:`create` returns the one tensor over it, and
    when that tensor and every view of it are gone the mapping is unmapped and the fd closed.
    """

    def __init__(self, fd: int, size_bytes: int, base_ptr: int) -> None:
        self.segment_id = uuid.uuid4().hex
        """Identifies the memory across processes: readers key their cached mappings on it."""
        self._fd = fd
        self.size_bytes = size_bytes
        self._base_ptr = base_ptr
        self._finalizer: weakref.finalize | None = None

    @classmethod
    def create(cls, size_bytes: int, label: str) -> tuple[SharedSegment, torch.Tensor]:
        """A new segment of ``size_bytes`` and the flat ``uint8`` tensor over it."""
        if size_bytes < 0:
            raise ValueError(f"segment size must be >= 0, got {size_bytes}")
        fd = os.memfd_create(f"seedstack-{label}"[:240], os.MFD_CLOEXEC)
        try:
            # mmap refuses length 0; a one-byte mapping keeps empty tensors on the same code path.
            mapped = max(size_bytes, 1)
            os.ftruncate(fd, mapped)
            mapping = mmap.mmap(fd, mapped)
        except BaseException:
            os.close(fd)
            raise
        # torch.frombuffer keeps the mmap object alive for as long as any view of it exists.
        tensor = torch.frombuffer(mapping, dtype=torch.uint8)[:size_bytes]
        segment = cls(fd, size_bytes, tensor.data_ptr())
        segment._finalizer = weakref.finalize(mapping, os.close, fd)
        return segment, tensor

    @property
    def alive(self) -> bool:
        """Some tensor still maps the segment (and its fd is open)."""
        return self._finalizer is not None and self._finalizer.alive

    @property
    def fd(self) -> int:
        """The memfd, -1 once the segment is gone."""
        return self._fd if self.alive else -1

    def offset_of(self, flat: torch.Tensor) -> int | None:
        """Byte offset of ``flat`` inside this segment, or ``None`` if it lives elsewhere."""
        if flat.is_cuda or not self.alive:
            return None
        if flat.numel() == 0:
            return 0  # an empty tensor has no address to match and no byte to read
        start = flat.data_ptr() - self._base_ptr
        if 0 <= start and start + flat.numel() <= self.size_bytes:
            return start
        return None

    def close(self) -> None:
        """Close the fd now; tensors keep their mapping, new readers can no longer map it."""
        if self._finalizer is not None:
            self._finalizer()
