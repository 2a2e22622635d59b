"""Manifests: validation of what a publisher sends, shard merging, delta chunks."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.errors import InvalidArgument
from services.weighthub.versions import (
    Chunk,
    Manifest,
    Tensor,
    check_compatible_shards,
    digest,
    merge_shards,
    root_hash,
    validate,
)


def manifest(
    version: int = 1, *, tensors: dict[str, int] | None = None, chunk_size: int = 16, salt: str = ""
) -> Manifest:
    """float32 tensors of the given element counts, chunked by ``chunk_size`` bytes."""
    tensors = tensors or {"a": 10, "b": 3}
    specs, chunks = [], []
    for name, numel in tensors.items():
        size = numel * 4
        specs.append(Tensor(name=name, dtype="float32", shape=(numel,), size_bytes=size))
        for offset in range(0, size, chunk_size):
            chunks.append(
                Chunk(
                    tensor_name=name,
                    index=len(chunks),
                    offset_bytes=offset,
                    size_bytes=min(chunk_size, size - offset),
                    hash_hex=digest("xxh3_128", f"{name}{offset}{salt}".encode()),
                    hash_algorithm="xxh3_128",
                )
            )
    return Manifest(
        model="policy",
        version=version,
        tensors=tuple(specs),
        chunks=tuple(chunks),
        root_hash=root_hash("xxh3_128", (c.hash_hex for c in chunks)),
        chunk_size_bytes=chunk_size,
    )


def test_a_consistent_manifest_validates_and_round_trips() -> None:
    m = manifest()
    validate(m)
    assert len(m.chunks) == 3 + 1 and m.size_bytes == 52
    assert Manifest.from_dict(m.to_dict()) == m


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: dataclasses.replace(
                m, tensors=(dataclasses.replace(m.tensors[0], size_bytes=41), *m.tensors[1:])
            ),
            "says 41 bytes",
        ),
        (lambda m: dataclasses.replace(m, chunks=m.chunks[:-1]), "chunks end"),
        (lambda m: dataclasses.replace(m, root_hash="0" * 32), "root_hash"),
        (lambda m: dataclasses.replace(m, version=0), "version must be >= 1"),
        (
            lambda m: dataclasses.replace(
                m, tensors=(dataclasses.replace(m.tensors[0], dtype="float99"), *m.tensors[1:])
            ),
            "unknown dtype",
        ),
        (
            lambda m: dataclasses.replace(m, chunks=(dataclasses.replace(m.chunks[0], offset_bytes=4), *m.chunks[1:])),
            "layout needs",
        ),
        (lambda m: dataclasses.replace(m, tensors=(*m.tensors, m.tensors[0])), "repeat"),
    ],
)
def test_manifests_that_do_not_add_up_are_refused_with_the_reason(change, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=message):
        validate(change(manifest()))


def test_shards_merge_in_order_with_renumbered_chunks_and_a_new_root() -> None:
    first, second = manifest(tensors={"a": 10}), manifest(tensors={"b": 3})
    merged = merge_shards([first, second])
    validate(merged)
    assert [c.index for c in merged.chunks] == [0, 1, 2, 3]
    assert merged.shard_starts == (0, 3)
    assert list(merged.shard_chunks(1)) == [3]
    with pytest.raises(InvalidArgument, match="overlap"):
        check_compatible_shards([first, manifest(tensors={"a": 10})])


def test_changed_chunks_are_those_whose_hash_or_layout_differ() -> None:
    old = manifest(1)
    new_chunks = list(old.chunks)
    new_chunks[1] = dataclasses.replace(new_chunks[1], hash_hex=digest("xxh3_128", b"changed"))
    new = dataclasses.replace(old, version=2, chunks=tuple(new_chunks))
    assert new.changed_chunks(old) == [1]
    assert new.changed_chunks(None) == [0, 1, 2, 3]
    reshaped = manifest(2, tensors={"a": 10, "b": 4})
    assert reshaped.changed_chunks(old) == [3]
