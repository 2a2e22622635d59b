"""The small references that travel over the control plane: tensor metadata and carrier addresses.

Bulk bytes never ride in gRPC or Redis. What does is a :class:`TensorRef`: the tensor's
:class:`TensorMeta` (dtype, shape, size, chunking and one hash per chunk) plus the
:class:`CarrierAddress` list its holder offers. All three are frozen dataclasses that round-trip
through plain dicts / JSON, so the weight hub can store them in Redis and the servicers can put them
in proto ``string``/``bytes`` fields without knowing this package.

A tensor is cut into fixed-size chunks (the last one may be shorter); chunk ``i`` covers bytes
``[i * chunk_size_bytes, min((i + 1) * chunk_size_bytes, size_bytes))`` of the tensor's contiguous
storage. Chunks are the unit of reading, hashing, re-planning and delta updates.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from services.common.transport.buffers import as_bytes

DEFAULT_CHUNK_SIZE_BYTES = 4 << 20
"""4 MiB: large enough that per-chunk overhead (a syscall, a hash call) is noise, small enough that a
re-plan after a failure repeats little and that a 256 MiB model spreads over many holders."""

DEFAULT_HASH_ALGO = "xxh3_128"
"""Non-cryptographic, ~25 GiB/s on one core here, 128 bits so accidental collisions across the
thousands of chunks of many versions are out of the question. Use ``blake2b`` where chunks may be
adversarial (it is ~20x slower)."""

HASH_ALGOS = ("xxh3_64", "xxh3_128", "blake2b")


def hash_bytes(algo: str, data: memoryview | bytes) -> str:
    """Hex digest of ``data`` with ``algo`` (one of :data:`HASH_ALGOS`)."""
    if algo == "xxh3_128":
        return xxhash.xxh3_128_hexdigest(data)
    if algo == "xxh3_64":
        return xxhash.xxh3_64_hexdigest(data)
    if algo == "blake2b":
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    raise ValueError(f"unknown hash algorithm {algo!r}; expected one of {HASH_ALGOS}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the stable spelling used on the wire."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`; ``ValueError`` for anything that is not a torch dtype."""
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return value


@dataclass(frozen=True)
class ByteRange:
    """``length`` bytes starting at ``offset`` of a tensor's contiguous storage."""

    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"byte range needs offset >= 0 and length >= 0, got {self.offset}, {self.length}")

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.offset + self.length


@dataclass(frozen=True, kw_only=True)
class TensorMeta:
    """What a reader needs to allocate a destination and verify every chunk of a tensor."""

    name: str
    """Name under which the holder registered the tensor."""
    dtype: str
    """torch dtype without the ``torch.`` prefix, e.g. ``"bfloat16"``."""
    shape: tuple[int, ...]
    """Shape of the tensor."""
    size_bytes: int
    """Bytes of contiguous storage: numel x element size."""
    chunk_size_bytes: int
    """Bytes per chunk; the last chunk may be shorter."""
    hash_algo: str
    """Algorithm of ``chunk_hashes`` (see :data:`HASH_ALGOS`)."""
    chunk_hashes: tuple[str, ...]
    """Hex digest of each chunk, in order."""
    root_hash: str = field(default="")
    """Digest over layout and chunk hashes: identifies the content. Derived; filled in when empty."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("tensor name must not be empty")
        element_size = torch.empty((), dtype=dtype_from_name(self.dtype)).element_size()
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} of {self.name!r} has a negative dimension")
        expected_size = math.prod(self.shape) * element_size
        if self.size_bytes != expected_size:
            raise ValueError(
                f"size_bytes {self.size_bytes} of {self.name!r} does not match shape {self.shape} "
                f"x {self.dtype} = {expected_size} bytes"
            )
        if self.chunk_size_bytes <= 0:
            raise ValueError(f"chunk_size_bytes must be > 0, got {self.chunk_size_bytes}")
        if self.hash_algo not in HASH_ALGOS:
            raise ValueError(f"unknown hash algorithm {self.hash_algo!r}; expected one of {HASH_ALGOS}")
        num_chunks = math.ceil(self.size_bytes / self.chunk_size_bytes)
        if len(self.chunk_hashes) != num_chunks:
            raise ValueError(
                f"{self.name!r} has {num_chunks} chunks of {self.chunk_size_bytes} bytes but "
                f"{len(self.chunk_hashes)} chunk hashes"
            )
        root = self._compute_root_hash()
        if not self.root_hash:
            # Frozen dataclass: the derived field is set once, here.
            object.__setattr__(self, "root_hash", root)
        elif self.root_hash != root:
            raise ValueError(f"root_hash {self.root_hash} of {self.name!r} does not match its chunk hashes ({root})")

    def _compute_root_hash(self) -> str:
        # The name is left out on purpose: the same bytes under another name are the same content.
        header = f"{self.dtype}|{','.join(map(str, self.shape))}|{self.chunk_size_bytes}|{self.hash_algo}|"
        return hash_bytes("xxh3_128", (header + ",".join(self.chunk_hashes)).encode())

    @property
    def num_chunks(self) -> int:
        """Number of chunks (0 for an empty tensor)."""
        return len(self.chunk_hashes)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype as a ``torch.dtype``."""
        return dtype_from_name(self.dtype)

    def chunk_range(self, index: int) -> ByteRange:
        """Bytes covered by chunk ``index``; ``IndexError`` outside ``[0, num_chunks)``."""
        if not 0 <= index < self.num_chunks:
            raise IndexError(f"chunk {index} out of range for {self.name!r} with {self.num_chunks} chunks")
        offset = index * self.chunk_size_bytes
        return ByteRange(offset, min(self.chunk_size_bytes, self.size_bytes - offset))

    def chunks_covering(self, byte_range: ByteRange) -> range:
        """Indices of the chunks that overlap ``byte_range`` (read these to get those bytes verified)."""
        if byte_range.end > self.size_bytes:
            raise ValueError(
                f"byte range [{byte_range.offset}, {byte_range.end}) exceeds {self.name!r} of {self.size_bytes} bytes"
            )
        if byte_range.length == 0:
            return range(0)
        first = byte_range.offset // self.chunk_size_bytes
        last = (byte_range.end - 1) // self.chunk_size_bytes
        return range(first, last + 1)

    def changed_chunks(self, older: TensorMeta) -> list[int]:
        """Chunks whose hash differs from ``older`` (all of them if the layout changed): a delta read."""
        if (older.size_bytes, older.chunk_size_bytes, older.hash_algo) != (
            self.size_bytes,
            self.chunk_size_bytes,
            self.hash_algo,
        ):
            return list(range(self.num_chunks))
        return [i for i, (a, b) in enumerate(zip(self.chunk_hashes, older.chunk_hashes, strict=True)) if a != b]

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "size_bytes": self.size_bytes,
            "chunk_size_bytes": self.chunk_size_bytes,
            "hash_algo": self.hash_algo,
            "chunk_hashes": list(self.chunk_hashes),
            "root_hash": self.root_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorMeta:
        """Inverse of :meth:`to_dict`; ``ValueError`` on missing keys or inconsistent values."""
        try:
            return cls(
                name=str(data["name"]),
                dtype=str(data["dtype"]),
                shape=tuple(int(d) for d in data["shape"]),
                size_bytes=int(data["size_bytes"]),
                chunk_size_bytes=int(data["chunk_size_bytes"]),
                hash_algo=str(data["hash_algo"]),
                chunk_hashes=tuple(str(h) for h in data["chunk_hashes"]),
                root_hash=str(data.get("root_hash", "")),
            )
        except KeyError as exc:
            raise ValueError(f"tensor metadata lacks key {exc.args[0]!r}") from exc


def iter_chunks(size_bytes: int, chunk_size_bytes: int) -> Iterator[ByteRange]:
    """The chunk ranges of a buffer of ``size_bytes``."""
    for offset in range(0, size_bytes, chunk_size_bytes):
        yield ByteRange(offset, min(chunk_size_bytes, size_bytes - offset))


def compute_meta(
    name: str,
    tensor: torch.Tensor,
    *,
    chunk_size_bytes: int = DEFAULT_CHUNK_SIZE_BYTES,
    hash_algo: str = DEFAULT_HASH_ALGO,
) -> TensorMeta:
    """Chunk and hash ``tensor`` (contiguous; CPU, or CUDA through a host copy per chunk)."""
    flat = as_bytes(tensor)
    hashes: list[str] = []
    for piece in iter_chunks(flat.numel(), chunk_size_bytes):
        chunk = flat[piece.offset : piece.end]
        if chunk.is_cuda:
            chunk = chunk.cpu()
        hashes.append(hash_bytes(hash_algo, chunk.numpy().data))
    return TensorMeta(
        name=name,
        dtype=dtype_name(tensor.dtype),
        shape=tuple(tensor.shape),
        size_bytes=flat.numel(),
        chunk_size_bytes=chunk_size_bytes,
        hash_algo=hash_algo,
        chunk_hashes=tuple(hashes),
    )


CARRIERS = ("tcp", "shm", "ucx", "nixl")
"""Every carrier this package knows, in no particular order (selection is in ``probe``)."""


@dataclass(frozen=True, kw_only=True)
class CarrierAddress:
    """One way to reach a holder: which carrier, where, and what the holder's side of it can do."""

    carrier: str
    """One of :data:`CARRIERS`."""
    address: str
    """``host:port`` for tcp/ucx/nixl; the control socket (``@name`` = abstract namespace) for shm."""
    host: str
    """Host id of the holder (see ``probe.HostCapabilities.host_id``); shm only works within one."""
    rdma: bool = False
    """The holder's side of this carrier has an RDMA transport (ucx/nixl only)."""
    cuda: bool = False
    """The holder's side of this carrier can move CUDA memory (ucx/nixl only)."""

    def __post_init__(self) -> None:
        if self.carrier not in CARRIERS:
            raise ValueError(f"unknown carrier {self.carrier!r}; expected one of {CARRIERS}")
        if not self.address:
            raise ValueError(f"{self.carrier} carrier address must not be empty")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "carrier": self.carrier,
            "address": self.address,
            "host": self.host,
            "rdma": self.rdma,
            "cuda": self.cuda,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CarrierAddress:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                carrier=str(data["carrier"]),
                address=str(data["address"]),
                host=str(data.get("host", "")),
                rdma=bool(data.get("rdma", False)),
                cuda=bool(data.get("cuda", False)),
            )
        except KeyError as exc:
            raise ValueError(f"carrier address lacks key {exc.args[0]!r}") from exc


def split_host_port(address: str) -> tuple[str, int]:
    """``"10.0.0.1:5555"`` / ``"[::1]:5555"`` -> (host, port); ``ValueError`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, kw_only=True)
class TensorRef:
    """A tensor at one holder: its metadata and the carriers that holder offers."""

    meta: TensorMeta
    """What the tensor is."""
    carriers: tuple[CarrierAddress, ...]
    """How to reach the holder, in the holder's order of preference."""
    holder_id: str = ""
    """Opaque id of the holder, for logs and plans."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "holder_id": self.holder_id,
            "meta": self.meta.to_dict(),
            "carriers": [c.to_dict() for c in self.carriers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorRef:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                meta=TensorMeta.from_dict(data["meta"]),
                carriers=tuple(CarrierAddress.from_dict(c) for c in data["carriers"]),
                holder_id=str(data.get("holder_id", "")),
            )
        except KeyError as exc:
            raise ValueError(f"tensor reference lacks key {exc.args[0]!r}") from exc

    def to_json(self) -> str:
        """Compact JSON, e.g. for a Redis value or a proto string field."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TensorRef:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def at_holder(self, carriers: Sequence[CarrierAddress], holder_id: str) -> TensorRef:
        """The same content at another holder (what a plan names for one chunk source)."""
        return TensorRef(meta=self.meta, carriers=tuple(carriers), holder_id=holder_id)
