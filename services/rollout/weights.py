"""Weight updates without stopping: watch, fetch into a second buffer, verify, swap between two steps.

The updater talks to the weight hub through the ``WeightSource`` interface, which is the subset of
``clients.weighthub.Reader`` it uses. A fetch lands in a staging buffer (``into=``) that decoding
never reads; the bytes were verified against the hub's hashes by the reader, and the updater checks
names, shapes and finiteness before laying the version out for the decode path (off the engine
thread). Only then is the new version handed to the engine, which swaps a reference between two
decode steps. A version that fails any check is rejected, reported, and the old one stays served.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from services.rollout.decoder import Arch, Weights, prepare_weights
from services.rollout.engine import Engine

logger = logging.getLogger(__name__)


class WeightSource(Protocol):
    """What the updater needs of a weight-hub reader (``clients.weighthub.Reader`` honours it)."""

    async def start(self) -> None:
        """Connect."""
        ...

    async def latest_version(self) -> int:
        """Newest committed version; 0 when none."""
        ...

    def watch(self) -> AsyncIterator[int]:
        """Committed versions as they appear."""
        ...

    async def fetch(self, version: int = 0, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The verified tensors of ``version`` (0 = latest), written into ``into`` where given."""
        ...

    async def close(self) -> None:
        """Disconnect."""
        ...


@dataclass(frozen=True)
class UpdateResult:
    """One completed weight update."""

    served_version: int
    fetch_s: float
    """Fetching, verifying and laying out the version, in the background."""
    stall_s: float
    """Time decoding was held for the swap."""


class WeightUpdater:
    """Keeps an engine on the newest good version of a source; one update at a time."""

    def __init__(self, engine: Engine, arch: Arch, *, model: str = "") -> None:
        self.engine = engine
        self.arch = arch
        self.model = model
        self.pending_version = 0
        self.last_rejected_version = 0
        self.last_rejected_reason = ""
        self._source: WeightSource | None = None
        self._lock = asyncio.Lock()
        self._staging: dict[str, torch.Tensor] | None = None
        self._follow: asyncio.Task[None] | None = None

    @property
    def served_version(self) -> int:
        """Version the engine decodes with."""
        return self.engine.version

    async def attach(self, source: WeightSource, model: str, *, follow: bool) -> None:
        """Use ``source`` (started) for ``model``; with ``follow``, swap in every committed version as it appears."""
        await self.detach()
        self._source = source
        self.model = model
        if follow:
            self._follow = asyncio.create_task(self._follow_versions(source), name=f"follow-{model}")

    async def detach(self) -> None:
        """Stop following and close the source."""
        if self._follow is not None:
            self._follow.cancel()
            try:
                await self._follow
            except asyncio.CancelledError:
                pass
            self._follow = None
        if self._source is not None:
            await self._source.close()
            self._source = None

    async def update(self, version: int = 0) -> UpdateResult:
        """Fetch ``version`` (0 = latest) in the background, verify it, and swap it in.

        DataLoss when it fails verification (the old version stays served), NotFound when the source
        has no such version, FailedPrecondition when no source is attached.
        """
        source = self._source
        if source is None:
            raise FailedPrecondition("no weight-hub model to update from: name weighthub_model or start a rollout")
        async with self._lock:
            if version == 0:
                version = await source.latest_version()
                if version == 0:
                    raise NotFound(f"weight-hub model {self.model!r} has no committed version yet")
            if version == self.served_version:
                return UpdateResult(version, 0.0, 0.0)
            self.pending_version = version
            start = time.perf_counter()
            try:
                weights = await self._fetch_verified(source, version)
            except DataLoss as exc:
                self.last_rejected_version = version
                self.last_rejected_reason = exc.message
                logger.warning("weight version %d rejected, still serving %d: %s", version, self.served_version, exc)
                raise
            finally:
                self.pending_version = 0
            fetch_s = time.perf_counter() - start
            stall_s = await asyncio.wrap_future(self.engine.swap(weights, version))
            logger.info("serving weight version %d (fetch %.3f s, stall %.6f s)", version, fetch_s, stall_s)
            return UpdateResult(version, fetch_s, stall_s)

    async def _fetch_verified(self, source: WeightSource, version: int) -> Weights:
        # The staging buffer is the previous fetch's (decoding reads its own copy, laid out by
        # prepare_weights), handed back to the reader as ``into``; the first fetch allocates it.
        try:
            tensors = await source.fetch(version, into=self._staging)
        except (NotFound, InvalidArgument):
            raise
        except Exception as exc:  # a reader reports a failed hash however it likes; all mean "not this version"
            self._staging = None
            raise DataLoss(f"version {version} failed to fetch or verify: {type(exc).__name__}: {exc}") from None
        self._staging = tensors
        try:
            return await asyncio.to_thread(prepare_weights, self.arch, tensors)
        except ValueError as exc:
            raise DataLoss(f"version {version} does not fit the served model: {exc}") from None

    async def _follow_versions(self, source: WeightSource) -> None:
        while True:
            try:
                latest = await source.latest_version()
                if latest > self.served_version and latest != self.last_rejected_version:
                    await self._try_update(latest)
                async for version in source.watch():
                    if version > self.served_version:
                        await self._try_update(version)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("watching weight-hub model %s failed; retrying", self.model)
                await asyncio.sleep(1.0)

    async def _try_update(self, version: int) -> None:
        try:
            await self.update(version)
        except DataLoss:
            pass  # recorded in last_rejected_*; the next version may be fine


class MemoryWeightSource:
    """An in-process stand-in for the weight hub honouring ``WeightSource``: for tests and benchmarks only.

    Versions are published as tensor dicts with a blake2b digest per tensor; ``fetch`` copies into
    ``into`` and verifies the digests like the hub's reader verifies chunk hashes.
    """

    def __init__(self) -> None:
        self._versions: dict[int, tuple[dict[str, torch.Tensor], dict[str, str]]] = {}
        self._changed = asyncio.Condition()
        self.num_fetches = 0

    @staticmethod
    def _digest(t: torch.Tensor) -> str:
        return hashlib.blake2b(t.detach().contiguous().view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to close."""

    async def publish(self, version: int, tensors: Mapping[str, torch.Tensor]) -> int:
        """Commit ``version`` (copies the tensors)."""
        copies = {k: v.detach().clone() for k, v in tensors.items()}
        self._versions[version] = (copies, {k: self._digest(v) for k, v in copies.items()})
        async with self._changed:
            self._changed.notify_all()
        return version

    def corrupt(self, version: int, name: str) -> None:
        """Flip bits of one stored tensor after its digest was taken (a bad chunk on a holder)."""
        self._versions[version][0][name].view(-1)[0] += 1.0

    async def latest_version(self) -> int:
        """Newest version; 0 when none."""
        return max(self._versions, default=0)

    def _newer_than(self, floor: int) -> bool:
        return max(self._versions, default=0) > floor

    async def watch(self) -> AsyncIterator[int]:
        """Each new newest version as it is published."""
        seen = max(self._versions, default=0)
        while True:
            floor = seen
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._newer_than, floor))
            seen = max(self._versions)
            yield seen

    async def fetch(self, version: int = 0, into: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Copy ``version`` into ``into`` (or fresh tensors) and verify every digest."""
        version = version or max(self._versions, default=0)
        if version not in self._versions:
            raise NotFound(f"version {version} does not exist")
        self.num_fetches += 1
        tensors, digests = self._versions[version]
        out: dict[str, torch.Tensor] = {}
        for name, t in tensors.items():
            target = into.get(name) if into is not None else None
            if target is not None and target.shape == t.shape:
                target.copy_(t)
                out[name] = target
            else:
                out[name] = t.clone()
            if self._digest(out[name]) != digests[name]:
                raise DataLoss(f"tensor {name} of version {version} failed its hash check")
            await asyncio.sleep(0)
        return out
