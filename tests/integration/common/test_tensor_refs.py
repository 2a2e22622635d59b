"""A tensor crosses the control plane as a key: Redis holds its reference, the bytes go by carrier."""

from __future__ import annotations

import pytest
import torch
from seedstack.common.v1 import common_pb2

from services.common.errors import InvalidArgument, NotFound
from services.common.redis_meta import RedisMeta
from services.common.tensor_refs import TensorRefStore, to_proto
from services.common.transport import TensorHolder, TensorReader
from tests.support import assert_eventually


async def test_key_in_a_grpc_message_resolves_to_readable_tensors(redis_url: str) -> None:
    store = TensorRefStore(RedisMeta.from_url(redis_url, "dataplane"))
    weights = torch.arange(100_000, dtype=torch.float32).reshape(100, 1000)
    lengths = torch.tensor([3, 1, 4, 1, 5], dtype=torch.int64)
    async with TensorHolder(bind_host="127.0.0.1", carriers=["tcp"]) as holder:
        refs = [await holder.register("weights", weights), await holder.register("lengths", lengths)]
        key = await store.publish(refs, ttl_s=30)
        wire = to_proto(key, refs).SerializeToString()
        # The message is small: a key, the offers and the specs, no bytes and no chunk hashes.
        assert len(wire) < 300
        received = common_pb2.TransferRef.FromString(wire)
        assert [t.name for t in received.tensors] == ["weights", "lengths"]
        assert received.offers[0].carrier == "tcp"

        resolved = {r.meta.name: r for r in await store.resolve(received.key)}
        reader = TensorReader()
        try:
            for name, original in (("weights", weights), ("lengths", lengths)):
                ref = resolved[name]
                dst = torch.empty(ref.meta.shape, dtype=ref.meta.torch_dtype)
                result = await reader.read(ref, dst, carrier="tcp")
                assert result.carrier == "tcp"
                assert torch.equal(dst, original)
        finally:
            await reader.close()
    await store.withdraw(key)
    with pytest.raises(NotFound, match="unknown or its holder stopped renewing it"):
        await store.resolve(key)
    await store.meta.close()


async def test_reference_lapses_unless_renewed_and_bad_keys_are_refused(redis_url: str) -> None:
    store = TensorRefStore(RedisMeta.from_url(redis_url, "weighthub"))
    async with TensorHolder(bind_host="127.0.0.1", carriers=["tcp"]) as holder:
        ref = await holder.register("t", torch.zeros(4))
        key = await store.publish([ref], ttl_s=0.3)
        assert await store.renew(key, ttl_s=0.3)
        await assert_eventually(lambda: _gone(store, key), timeout_s=5, message="reference lapsed")
        assert not await store.renew(key, ttl_s=1)
        with pytest.raises(InvalidArgument, match="names repeat"):
            await store.publish([ref, ref], ttl_s=1)
        with pytest.raises(InvalidArgument, match="without whitespace"):
            await store.publish([ref], ttl_s=1, key="has space")
        with pytest.raises(InvalidArgument, match="at least one"):
            await store.publish([], ttl_s=1)
    await store.meta.close()


async def _gone(store: TensorRefStore, key: str) -> bool:
    try:
        await store.resolve(key)
    except NotFound:
        return True
    return False
