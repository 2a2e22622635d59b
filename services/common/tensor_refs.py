"""Tensor references on the control plane: gRPC carries a key, Redis holds what the key means.

A holder publishes a :class:`~services.common.transport.TensorRef` (dtype, shape, size, chunk hashes
and the carriers it offers with their addresses) under a key; the key travels in a gRPC message
(``seedstack.common.v1.TransferRef.key``) and the receiver resolves it here before reading the bytes
through the tensor plane. A reference lives as long as its TTL, renewed while the holder serves it.
"""

from __future__ import annotations

import json
import uuid

from seedstack.common.v1 import common_pb2

from services.common.errors import InvalidArgument, NotFound
from services.common.redis_meta import RedisMeta
from services.common.transport import TensorRef


class TensorRefStore:
    """Publish and resolve tensor references in one service's Redis namespace."""

    def __init__(self, meta: RedisMeta) -> None:
        self.meta = meta

    def _key(self, key: str) -> str:
        if not key or len(key) > 256 or any(c in key for c in " \n\t"):
            raise InvalidArgument(f"tensor reference key {key!r} must be 1-256 characters without whitespace")
        return self.meta.key("tensorref", key)

    async def publish(self, refs: list[TensorRef], *, ttl_s: float, key: str | None = None) -> str:
        """Store ``refs`` (one or several tensors at one holder) under ``key`` (default: a new uuid)."""
        if not refs:
            raise InvalidArgument("publish needs at least one tensor reference")
        names = [r.meta.name for r in refs]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"tensor names repeat within one reference: {sorted(names)}")
        key = key or uuid.uuid4().hex
        payload = "[" + ",".join(r.to_json() for r in refs) + "]"
        await self.meta.client.set(self._key(key), payload, px=int(ttl_s * 1000))
        return key

    async def renew(self, key: str, *, ttl_s: float) -> bool:
        """Extend the reference's life; False when it already lapsed."""
        return bool(await self.meta.client.pexpire(self._key(key), int(ttl_s * 1000)))

    async def resolve(self, key: str) -> list[TensorRef]:
        """The references stored under ``key``; NotFound when unknown or lapsed."""
        raw = await self.meta.client.get(self._key(key))
        if raw is None:
            raise NotFound(f"tensor reference {key!r} is unknown or its holder stopped renewing it")
        return [TensorRef.from_dict(item) for item in json.loads(raw)]

    async def withdraw(self, key: str) -> None:
        """Remove the reference (the holder no longer serves it)."""
        await self.meta.client.delete(self._key(key))


def to_proto(key: str, refs: list[TensorRef]) -> common_pb2.TransferRef:
    """The gRPC form: the key plus, for logs and quick checks, the offers and tensor specs."""
    offers = [common_pb2.TransportOffer(carrier=c.carrier, address=c.address) for c in refs[0].carriers] if refs else []
    tensors = [common_pb2.TensorSpec(name=r.meta.name, dtype=r.meta.dtype, shape=list(r.meta.shape),
                                     size_bytes=r.meta.size_bytes) for r in refs]
    return common_pb2.TransferRef(key=key, offers=offers, tensors=tensors)
