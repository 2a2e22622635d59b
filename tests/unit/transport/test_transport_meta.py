"""Tensor metadata and carrier references: chunking, hashing, and their dict / JSON round trips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from services.common.transport import (
    ByteRange,
    CarrierAddress,
    TensorMeta,
    TensorRef,
    compute_meta,
)
from services.common.transport.meta import dtype_from_name, hash_bytes, split_host_port


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((10, 10), torch.float32), ((7,), torch.bfloat16), ((3, 3), torch.bool), ((0,), torch.int64), ((), torch.float16)],
)
def test_meta_round_trips_through_json(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    tensor = torch.zeros(shape, dtype=dtype)
    meta = compute_meta("w", tensor, chunk_size_bytes=64)
    again = TensorMeta.from_dict(json.loads(json.dumps(meta.to_dict())))
    assert again == meta
    assert again.torch_dtype == dtype
    assert again.size_bytes == tensor.numel() * tensor.element_size()
    assert again.num_chunks == -(-again.size_bytes // 64)


def test_chunk_ranges_cover_the_tensor_exactly() -> None:
    meta = compute_meta("w", torch.arange(250, dtype=torch.uint8), chunk_size_bytes=100)
    assert [meta.chunk_range(i) for i in range(meta.num_chunks)] == [
        ByteRange(0, 100),
        ByteRange(100, 100),
        ByteRange(200, 50),
    ]
    assert list(meta.chunks_covering(ByteRange(99, 2))) == [0, 1]
    assert list(meta.chunks_covering(ByteRange(200, 0))) == []
    with pytest.raises(IndexError):
        meta.chunk_range(3)
    with pytest.raises(ValueError, match="exceeds"):
        meta.chunks_covering(ByteRange(240, 20))


def test_content_id_ignores_the_name_but_not_the_bytes() -> None:
    a = compute_meta("a", torch.ones(1000))
    b = compute_meta("b", torch.ones(1000))
    c = compute_meta("a", torch.zeros(1000))
    assert a.root_hash == b.root_hash
    assert a.root_hash != c.root_hash


def test_changed_chunks_is_the_delta() -> None:
    old = torch.zeros(1000, dtype=torch.uint8)
    new = old.clone()
    new[550] = 1
    before = compute_meta("w", old, chunk_size_bytes=100)
    after = compute_meta("w", new, chunk_size_bytes=100)
    assert after.changed_chunks(before) == [5]
    assert compute_meta("w", new, chunk_size_bytes=200).changed_chunks(before) == list(range(5))


def test_tampered_metadata_is_refused() -> None:
    data = compute_meta("w", torch.ones(1000), chunk_size_bytes=1000).to_dict()
    data["chunk_hashes"][1] = "0" * 32
    with pytest.raises(ValueError, match="root_hash"):
        TensorMeta.from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"size_bytes": 12}, "does not match shape"),
        ({"chunk_size_bytes": 0}, "chunk_size_bytes"),
        ({"hash_algo": "md5"}, "unknown hash algorithm"),
        ({"dtype": "float99"}, "unknown dtype"),
        ({"chunk_hashes": ("x",)}, "chunk hashes"),
    ],
)
def test_inconsistent_metadata_is_refused(change: dict[str, object], message: str) -> None:
    meta = compute_meta("w", torch.ones(4), chunk_size_bytes=8)
    fields = {**meta.to_dict(), "root_hash": "", **change}
    with pytest.raises(ValueError, match=message):
        TensorMeta.from_dict(fields)


def test_missing_key_is_a_value_error() -> None:
    data = compute_meta("w", torch.ones(4)).to_dict()
    del data["dtype"]
    with pytest.raises(ValueError, match="dtype"):
        TensorMeta.from_dict(data)


def test_reference_round_trips_through_json() -> None:
    meta = compute_meta("layer.0", torch.ones(3, 3))
    ref = TensorRef(
        meta=meta,
        carriers=(
            CarrierAddress(carrier="tcp", address="10.0.0.1:41234", host="h1"),
            CarrierAddress(carrier="shm", address="@seg", host="h1"),
            CarrierAddress(carrier="ucx", address="[fe80::1]:5555", host="h1", rdma=True),
        ),
        holder_id="trainer-0",
    )
    assert TensorRef.from_json(ref.to_json()) == ref
    assert ref.to_dict()["carriers"][0] == {
        "carrier": "tcp",
        "address": "10.0.0.1:41234",
        "host": "h1",
        "rdma": False,
        "cuda": False,
    }
    moved = ref.at_holder(ref.carriers[:1], "rollout-3")
    assert moved.meta == ref.meta and moved.holder_id == "rollout-3"


def test_bad_carrier_addresses() -> None:
    with pytest.raises(ValueError, match="unknown carrier"):
        CarrierAddress(carrier="carrier-pigeon", address="x", host="h")
    with pytest.raises(ValueError, match="empty"):
        CarrierAddress(carrier="tcp", address="", host="h")
    assert split_host_port("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="host:port"):
        split_host_port("localhost")


def test_hash_algorithms() -> None:
    data = b"seedstack" * 1000
    digests = {algo: hash_bytes(algo, data) for algo in ("xxh3_64", "xxh3_128", "blake2b")}
    assert len(set(digests.values())) == 3
    assert len(digests["xxh3_64"]) == 16 and len(digests["xxh3_128"]) == 32
    with pytest.raises(ValueError, match="unknown hash"):
        hash_bytes("crc32", data)
    blake = compute_meta("w", torch.ones(10), hash_algo="blake2b")
    assert replace(blake, root_hash="") == blake  # the derived root hash is recomputed identically


def test_dtype_names() -> None:
    assert dtype_from_name("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError):
        dtype_from_name("Tensor")
