"""Weight manifests: what a version is made of, how a shard's manifest is checked, how shards merge.

Plain data and pure functions, shared by the hub, the client library and the simulator. A manifest
lists tensors and the chunks that cover each of them; chunk ``i`` is ``chunks[i]``. Within a tensor,
chunks have the manifest's nominal size except the last one, so the tensor plane's fixed chunking
(``TensorMeta``) describes every tensor exactly.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from services.common.errors import InvalidArgument

HASH_ALGORITHMS = ("xxh3_64", "xxh3_128", "blake2b")
"""Chunk hash functions a manifest may name (those of the tensor plane)."""


def digest(algorithm: str, data: bytes) -> str:
    """Lowercase hex digest of ``data`` with ``algorithm``."""
    if algorithm == "xxh3_128":
        return xxhash.xxh3_128_hexdigest(data)
    if algorithm == "xxh3_64":
        return xxhash.xxh3_64_hexdigest(data)
    if algorithm == "blake2b":
        return hashlib.blake2b(data, digest_size=16).hexdigest()
    raise InvalidArgument(f"unknown hash algorithm {algorithm!r}; expected one of {HASH_ALGORITHMS}")


def root_hash(algorithm: str, chunk_hashes: Iterable[str]) -> str:
    """Root hash of a manifest: ``algorithm`` over the chunk hashes joined by commas, in order."""
    return digest(algorithm, ",".join(chunk_hashes).encode())


def element_size(dtype: str) -> int:
    """Bytes per element of a torch dtype name ("float32"); InvalidArgument for anything else."""
    value = getattr(torch, dtype, None) if dtype else None
    if not isinstance(value, torch.dtype):
        raise InvalidArgument(f"unknown dtype {dtype!r}")
    return torch.empty((), dtype=value).element_size()


@dataclass(frozen=True, kw_only=True)
class Tensor:
    """One tensor of a manifest."""

    name: str
    """Unique within the manifest."""
    dtype: str
    """torch dtype name without ``torch.``."""
    shape: tuple[int, ...]
    """Shape in elements."""
    size_bytes: int
    """numel x element size."""


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """One contiguous byte range of a tensor, read, hashed and verified as a unit."""

    tensor_name: str
    """Tensor the chunk belongs to."""
    index: int
    """Position in the manifest's chunk list."""
    offset_bytes: int
    """Offset from the start of the tensor."""
    size_bytes: int
    """Length in bytes."""
    hash_hex: str
    """Digest of the bytes."""
    hash_algorithm: str
    """Function of ``hash_hex``."""

    def same_layout(self, other: Chunk) -> bool:
        """True when both cover the same bytes of the same tensor (hashes aside)."""
        return (self.tensor_name, self.offset_bytes, self.size_bytes) == (
            other.tensor_name,
            other.offset_bytes,
            other.size_bytes,
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """A version (or one shard of it): tensors, chunks and the root hash."""

    model: str
    """Model name."""
    version: int
    """Version number, >= 1."""
    tensors: tuple[Tensor, ...]
    """Every tensor, in layout order."""
    chunks: tuple[Chunk, ...]
    """Every chunk, by tensor then offset."""
    root_hash: str
    """``root_hash(algorithm, chunk hashes)``."""
    chunk_size_bytes: int
    """Nominal chunk length."""
    shard_starts: tuple[int, ...] = field(default=(0,))
    """First chunk index of each shard (a committed manifest of several shards); shard ``s``
    covers ``[shard_starts[s], shard_starts[s + 1])``."""

    @property
    def size_bytes(self) -> int:
        """Bytes of all tensors."""
        return sum(t.size_bytes for t in self.tensors)

    @property
    def hash_algorithm(self) -> str:
        """The chunks' hash function ("" without chunks)."""
        return self.chunks[0].hash_algorithm if self.chunks else ""

    @property
    def num_shards(self) -> int:
        """Shards the version was published in."""
        return len(self.shard_starts)

    def shard_chunks(self, shard_index: int) -> range:
        """Chunk indexes of one shard."""
        end = self.shard_starts[shard_index + 1] if shard_index + 1 < len(self.shard_starts) else len(self.chunks)
        return range(self.shard_starts[shard_index], end)

    def changed_chunks(self, older: Manifest | None) -> list[int]:
        """Chunks to read when holding ``older``: those whose layout or hash differ (all without it)."""
        if older is None:
            return list(range(len(self.chunks)))
        by_place = {(c.tensor_name, c.offset_bytes): c for c in older.chunks}
        changed = []
        for chunk in self.chunks:
            before = by_place.get((chunk.tensor_name, chunk.offset_bytes))
            if (
                before is None
                or not chunk.same_layout(before)
                or before.hash_hex != chunk.hash_hex
                or before.hash_algorithm != chunk.hash_algorithm
            ):
                changed.append(chunk.index)
        tensors_before = {t.name: t for t in older.tensors}
        # A tensor whose dtype or shape changed is re-read whole even where bytes coincide.
        reshaped = {t.name for t in self.tensors if tensors_before.get(t.name) != t}
        return sorted(set(changed) | {c.index for c in self.chunks if c.tensor_name in reshaped})

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (what Redis stores)."""
        return {
            "model": self.model,
            "version": self.version,
            "tensors": [[t.name, t.dtype, list(t.shape), t.size_bytes] for t in self.tensors],
            "chunks": [
                [c.tensor_name, c.offset_bytes, c.size_bytes, c.hash_hex, c.hash_algorithm] for c in self.chunks
            ],
            "root_hash": self.root_hash,
            "chunk_size_bytes": self.chunk_size_bytes,
            "shard_starts": list(self.shard_starts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of :meth:`to_dict`."""
        return cls(
            model=data["model"],
            version=int(data["version"]),
            tensors=tuple(Tensor(name=n, dtype=d, shape=tuple(s), size_bytes=int(b)) for n, d, s, b in data["tensors"]),
            chunks=tuple(
                Chunk(tensor_name=n, index=i, offset_bytes=int(o), size_bytes=int(b), hash_hex=h, hash_algorithm=a)
                for i, (n, o, b, h, a) in enumerate(data["chunks"])
            ),
            root_hash=data["root_hash"],
            chunk_size_bytes=int(data["chunk_size_bytes"]),
            shard_starts=tuple(int(s) for s in data.get("shard_starts", [0])),
        )


def validate(manifest: Manifest) -> None:
    """Raise InvalidArgument, naming the first problem, unless the manifest adds up.

    Checks: model and version set; tensor names unique, dtypes known, sizes equal shape x element
    size; chunks numbered in order, by tensor then offset, each tensor covered exactly with chunks of
    the nominal size (the last may be shorter); one known hash algorithm with well-formed digests;
    the root hash equal to the one computed from the chunks.
    """
    where = f"manifest of {manifest.model!r} v{manifest.version}"
    if not manifest.model:
        raise InvalidArgument("manifest.model must not be empty")
    if manifest.version < 1:
        raise InvalidArgument(f"{where}: version must be >= 1, got {manifest.version}")
    if manifest.chunk_size_bytes <= 0:
        raise InvalidArgument(f"{where}: chunk_size_bytes must be > 0, got {manifest.chunk_size_bytes}")
    if not manifest.tensors:
        raise InvalidArgument(f"{where}: lists no tensors")
    names = [t.name for t in manifest.tensors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidArgument(f"{where}: tensor names repeat: {duplicates[:5]}")
    algorithms = {c.hash_algorithm for c in manifest.chunks}
    if len(algorithms) > 1:
        raise InvalidArgument(f"{where}: chunks mix hash algorithms {sorted(algorithms)}")
    algorithm = next(iter(algorithms), "")
    if algorithm and algorithm not in HASH_ALGORITHMS:
        raise InvalidArgument(f"{where}: unknown hash algorithm {algorithm!r}; expected one of {HASH_ALGORITHMS}")
    digest_len = len(digest(algorithm, b"")) if algorithm else 0
    position = 0
    for tensor in manifest.tensors:
        if not tensor.name:
            raise InvalidArgument(f"{where}: a tensor has an empty name")
        if any(d < 0 for d in tensor.shape):
            raise InvalidArgument(f"{where}: tensor {tensor.name!r} has a negative dimension {list(tensor.shape)}")
        expected = math.prod(tensor.shape) * element_size(tensor.dtype)
        if tensor.size_bytes != expected:
            raise InvalidArgument(
                f"{where}: tensor {tensor.name!r} says {tensor.size_bytes} bytes but {tensor.dtype} "
                f"{list(tensor.shape)} is {expected} bytes"
            )
        offset = 0
        while offset < tensor.size_bytes:
            if position >= len(manifest.chunks):
                raise InvalidArgument(
                    f"{where}: chunks end at byte {offset} of tensor {tensor.name!r} ({tensor.size_bytes} bytes)"
                )
            chunk = manifest.chunks[position]
            want = min(manifest.chunk_size_bytes, tensor.size_bytes - offset)
            if chunk.index != position:
                raise InvalidArgument(f"{where}: chunk at position {position} has index {chunk.index}")
            if (chunk.tensor_name, chunk.offset_bytes, chunk.size_bytes) != (tensor.name, offset, want):
                raise InvalidArgument(
                    f"{where}: chunk {position} covers {chunk.tensor_name!r} [{chunk.offset_bytes}, "
                    f"+{chunk.size_bytes}) but the layout needs {tensor.name!r} [{offset}, +{want})"
                )
            if len(chunk.hash_hex) != digest_len or any(ch not in "0123456789abcdef" for ch in chunk.hash_hex):
                raise InvalidArgument(
                    f"{where}: chunk {position} hash {chunk.hash_hex!r} is not a {algorithm} hex digest"
                )
            offset += want
            position += 1
    if position != len(manifest.chunks):
        raise InvalidArgument(f"{where}: {len(manifest.chunks) - position} chunks beyond the last tensor's bytes")
    expected_root = root_hash(algorithm or "xxh3_128", (c.hash_hex for c in manifest.chunks))
    if manifest.root_hash != expected_root:
        raise InvalidArgument(f"{where}: root_hash {manifest.root_hash!r} does not match its chunks ({expected_root})")


def merge_shards(shards: Sequence[Manifest]) -> Manifest:
    """The committed manifest of a version: shards in index order, chunks renumbered, new root."""
    first = shards[0]
    tensors: list[Tensor] = []
    chunks: list[Chunk] = []
    starts: list[int] = []
    for shard in shards:
        starts.append(len(chunks))
        tensors.extend(shard.tensors)
        for chunk in shard.chunks:
            chunks.append(
                Chunk(
                    tensor_name=chunk.tensor_name,
                    index=len(chunks),
                    offset_bytes=chunk.offset_bytes,
                    size_bytes=chunk.size_bytes,
                    hash_hex=chunk.hash_hex,
                    hash_algorithm=chunk.hash_algorithm,
                )
            )
    algorithm = first.hash_algorithm or "xxh3_128"
    return Manifest(
        model=first.model,
        version=first.version,
        tensors=tuple(tensors),
        chunks=tuple(chunks),
        root_hash=root_hash(algorithm, (c.hash_hex for c in chunks)),
        chunk_size_bytes=first.chunk_size_bytes,
        shard_starts=tuple(starts),
    )


def check_compatible_shards(shards: Sequence[Manifest]) -> None:
    """InvalidArgument when shards of one version disagree on chunking or hashing, or share tensors."""
    seen: dict[str, int] = {}
    for index, shard in enumerate(shards):
        if shard.chunk_size_bytes != shards[0].chunk_size_bytes:
            raise InvalidArgument(
                f"shard {index} uses chunk_size_bytes {shard.chunk_size_bytes}, another shard "
                f"{shards[0].chunk_size_bytes}"
            )
        if shard.hash_algorithm and shards[0].hash_algorithm and shard.hash_algorithm != shards[0].hash_algorithm:
            raise InvalidArgument(
                f"shard {index} hashes with {shard.hash_algorithm}, another with {shards[0].hash_algorithm}"
            )
        for tensor in shard.tensors:
            if tensor.name in seen:
                raise InvalidArgument(
                    f"tensor {tensor.name!r} is in shard {seen[tensor.name]} and shard {index}: shards overlap"
                )
            seen[tensor.name] = index
