"""Typed async client of the DataPlane service (seedstack.dataplane.v1.DataPlane)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Any

from seedstack.common.v1 import common_pb2
from seedstack.dataplane.v1 import dataplane_pb2 as pb
from seedstack.dataplane.v1 import dataplane_pb2_grpc as pb_grpc

from clients.base import BaseClient


class DataPlaneClient(BaseClient):
    """One method per RPC of ``seedstack.dataplane.v1.DataPlane``; errors raise ``clients.base.RPCError``."""

    stub_class = pb_grpc.DataPlaneStub
    service_name = "dataplane"

    async def submit_plan(
        self, request: pb.SubmitPlanRequest, *, timeout_s: float | None = None
    ) -> pb.SubmitPlanResponse:
        """Call DataPlane.SubmitPlan (retried on UNAVAILABLE)."""
        return await self._unary("SubmitPlan", request, timeout_s)  # type: ignore[no-any-return]

    async def close_plan(self, request: pb.ClosePlanRequest, *, timeout_s: float | None = None) -> pb.ClosePlanResponse:
        """Call DataPlane.ClosePlan (retried on UNAVAILABLE)."""
        return await self._unary("ClosePlan", request, timeout_s)  # type: ignore[no-any-return]

    async def next_prompts(
        self, request: pb.NextPromptsRequest, *, timeout_s: float | None = None
    ) -> pb.NextPromptsResponse:
        """Call DataPlane.NextPrompts (retried on UNAVAILABLE)."""
        return await self._unary("NextPrompts", request, timeout_s)  # type: ignore[no-any-return]

    async def put_samples(
        self, requests: AsyncIterable[pb.PutSamplesRequest], *, timeout_s: float | None = None
    ) -> pb.PutSamplesResponse:
        """Stream requests to DataPlane.PutSamples; returns its one response."""
        return await self._client_stream("PutSamples", requests, timeout_s)  # type: ignore[no-any-return]

    async def next_batch(self, request: pb.NextBatchRequest, *, timeout_s: float | None = None) -> pb.NextBatchResponse:
        """Call DataPlane.NextBatch (retried on UNAVAILABLE)."""
        return await self._unary("NextBatch", request, timeout_s)  # type: ignore[no-any-return]

    async def checkpoint(
        self, request: pb.CheckpointRequest, *, timeout_s: float | None = None
    ) -> pb.CheckpointResponse:
        """Call DataPlane.Checkpoint (retried on UNAVAILABLE)."""
        return await self._unary("Checkpoint", request, timeout_s)  # type: ignore[no-any-return]

    async def restore(self, request: pb.RestoreRequest, *, timeout_s: float | None = None) -> pb.RestoreResponse:
        """Call DataPlane.Restore (retried on UNAVAILABLE)."""
        return await self._unary("Restore", request, timeout_s)  # type: ignore[no-any-return]

    async def stats(self, request: pb.StatsRequest, *, timeout_s: float | None = None) -> pb.StatsResponse:
        """Call DataPlane.Stats (retried on UNAVAILABLE)."""
        return await self._unary("Stats", request, timeout_s)  # type: ignore[no-any-return]

    async def batches(
        self,
        plan_id: str,
        rank: int,
        *,
        start_step: int = 0,
        num_steps: int | None = None,
        prefetch: int = 2,
        policy_version: Callable[[], int] | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.NextBatchResponse]:
        """Iterate over this rank's batches from ``start_step``, like a DataLoader, ``prefetch`` steps ahead.

        ``async for batch in client.batches(plan_id, rank): ...`` — the next ``prefetch`` NextBatch
        calls run in the background while the loop body trains on the current one. RL trainers pass
        ``policy_version`` (called when each request is sent) so staleness is judged against it.
        """
        if prefetch < 0:
            raise ValueError(f"prefetch={prefetch} must be >= 0")
        pending: deque[asyncio.Task[pb.NextBatchResponse]] = deque()
        next_step = start_step
        end = None if num_steps is None else start_step + num_steps

        def launch() -> None:
            nonlocal next_step
            request = pb.NextBatchRequest(
                plan_id=plan_id, rank=rank, step=next_step, policy_version=policy_version() if policy_version else 0
            )
            pending.append(asyncio.create_task(self.next_batch(request, timeout_s=timeout_s)))
            next_step += 1

        try:
            while end is None or next_step < end or pending:
                while (end is None or next_step < end) and len(pending) <= prefetch:
                    launch()
                yield await pending.popleft()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def put_sample_list(
        self, plan_id: str, producer_id: str, samples: list[common_pb2.Sample], *, per_message: int = 64
    ) -> pb.PutSamplesResponse:
        """PutSamples for a list, sent in messages of ``per_message`` samples."""

        async def requests() -> AsyncIterator[pb.PutSamplesRequest]:
            for i in range(0, len(samples), per_message):
                yield pb.PutSamplesRequest(
                    plan_id=plan_id, producer_id=producer_id, samples=samples[i : i + per_message]
                )

        return await self.put_samples(requests())


class SyncBatches:
    """``for batch in SyncBatches(address, plan_id, rank)``: the async iterator behind a plain loop.

    For training loops that are not asyncio: a background thread runs the client and prefetches.
    """

    def __init__(self, address: str, plan_id: str, rank: int, **kwargs: Any) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, int(kwargs.get("prefetch", 2))))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run(address, plan_id, rank, kwargs)), daemon=True, name="dataplane-batches"
        )
        self._thread.start()

    async def _run(self, address: str, plan_id: str, rank: int, kwargs: dict[str, Any]) -> None:
        try:
            async with DataPlaneClient(address) as client:
                async for batch in client.batches(plan_id, rank, **kwargs):
                    while not self._stop.is_set():
                        try:
                            self._queue.put(("batch", batch), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        return
            self._queue.put(("end", None))
        except Exception as exc:  # handed to the consumer's thread, raised there
            self._queue.put(("error", exc))

    def __iter__(self) -> Iterator[pb.NextBatchResponse]:
        while True:
            kind, value = self._queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        """Stop prefetching and wait for the thread."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        self._thread.join()
