"""Source loaders: worker processes, one or more per source (never one per rank), and their pool.

Each worker owns the sequence numbers ``seq % num_workers == slot`` of one source and answers
``load(seqs)`` with preprocessed samples (or the reason a record was skipped). Work is named by
sequence number, so a worker that dies is replaced by a warm *shadow* process that takes over its
slot and is asked for the very same sequence numbers: no sample is lost or repeated.

Auto-partitioning: a source declared with ``num_loader_workers: 0`` is probed at start (the time to
preprocess a few records), and the worker budget is shared in proportion to cost x mixture share,
so an expensive source gets more workers and does not starve the batch.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument, Unavailable
from services.dataplane.sources import LoadedSample, SourceReader
from services.dataplane.spec import Plan, SourceConf

logger = logging.getLogger(__name__)

PROBE_RECORDS = 16
TARGET_BLOCK_S = 0.05
_READY_TIMEOUT_S = 120.0


def worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Body of a loader worker: wait for its role, then answer load requests until the pipe closes."""
    reader: SourceReader | None = None
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "init":
            _, conf, index, seed, tokenizer = message
            try:
                reader = SourceReader(conf, index, seed, tokenizer)
            except Exception as exc:  # any failure to open a shard is reported, not raised
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
                continue
            conn.send(("ready", reader.num_records, os.getpid()))
        elif kind == "load" and reader is not None:
            started = time.perf_counter()
            results: list[tuple[int, LoadedSample | None, str]] = []
            for seq in message[1]:
                try:
                    results.append((seq, reader.load(seq), ""))
                except Exception as exc:  # a bad record is skipped and reported, never fatal
                    results.append((seq, None, str(exc)))
            conn.send(("loaded", results, time.perf_counter() - started))
        elif kind == "stop":
            return


def _context() -> Any:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["services.dataplane.loader", "numpy"])
    return ctx


@dataclass
class Worker:
    """One loader process and the pipe to it."""

    process: Any
    conn: multiprocessing.connection.Connection
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def pid(self) -> int:
        """Process id."""
        return int(self.process.pid)

    def alive(self) -> bool:
        """Whether the process still runs."""
        return bool(self.process.is_alive())

    def stop(self) -> None:
        """Ask it to stop; kill it if it does not."""
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)
        self.conn.close()


def _spawn() -> Worker:
    parent, child = _context().Pipe()
    process = _context().Process(target=worker_main, args=(child,), daemon=True, name="seedstack-loader")
    process.start()
    child.close()
    return Worker(process, parent)


def _roundtrip(worker: Worker, message: tuple[Any, ...], timeout_s: float = _READY_TIMEOUT_S) -> Any:
    worker.conn.send(message)
    if not worker.conn.poll(timeout_s):
        raise TimeoutError(f"loader worker {worker.pid} did not answer within {timeout_s} s")
    return worker.conn.recv()


@dataclass
class SourceStatsCounters:
    """Loading figures of one source."""

    num_records: int = -1
    num_records_read: int = 0
    num_records_skipped: int = 0
    last_skip_reason: str = ""
    busy_s: float = 0.0
    probe_s_per_record: float = 0.0

    @property
    def s_per_record(self) -> float:
        """Measured preprocessing seconds per record."""
        if self.num_records_read + self.num_records_skipped:
            return self.busy_s / (self.num_records_read + self.num_records_skipped)
        return self.probe_s_per_record


class LoaderPool:
    """The loader workers of one plan, with a shadow that replaces any worker that dies."""

    def __init__(self, plan: Plan, max_loader_workers: int) -> None:
        self.plan = plan
        self.max_loader_workers = max_loader_workers
        self.workers: list[list[Worker]] = [[] for _ in plan.sources]
        self.stats = [SourceStatsCounters() for _ in plan.sources]
        self.num_replaced = 0
        self.recovery_s: list[float] = []
        self._shadow: Worker | None = None
        self._closed = False

    def _init(self, worker: Worker, index: int) -> int:
        conf: SourceConf = self.plan.sources[index]
        reply = _roundtrip(worker, ("init", conf, index, self.plan.seed, self.plan.tokenizer))
        if reply[0] == "error":
            raise InvalidArgument(f"sources[{index}] ({conf.name}): cannot open: {reply[1]}")
        return int(reply[1])

    def _start_worker(self, index: int) -> Worker:
        worker = _spawn()
        try:
            num_records = self._init(worker, index)
        except BaseException:
            worker.stop()
            raise
        if num_records == 0:
            worker.stop()
            raise InvalidArgument(f"sources[{index}] ({self.plan.sources[index].name}): holds no records")
        self.stats[index].num_records = num_records
        return worker

    def start_blocking(self) -> None:
        """Start one worker per source, probe their cost, add workers where auto-partitioning asks."""
        try:
            for index in range(len(self.plan.sources)):
                self.workers[index].append(self._start_worker(index))
            for index in range(len(self.plan.sources)):
                # The first records pay for opening files and caches: time the next ones.
                _roundtrip(self.workers[index][0], ("load", list(range(PROBE_RECORDS))))
                reply = _roundtrip(self.workers[index][0], ("load", list(range(PROBE_RECORDS, 2 * PROBE_RECORDS))))
                ok = sum(1 for _, sample, _ in reply[1] if sample is not None)
                if ok == 0:
                    reasons = "; ".join(sorted({r for _, _, r in reply[1]})[:3])
                    name = self.plan.sources[index].name
                    raise InvalidArgument(f"sources[{index}] ({name}): no usable record among the first: {reasons}")
                self.stats[index].probe_s_per_record = reply[2] / PROBE_RECORDS
            for index, count in enumerate(self.partition()):
                while len(self.workers[index]) < count:
                    self.workers[index].append(self._start_worker(index))
            self._shadow = _spawn()
        except BaseException:
            self.close_blocking()
            raise

    def partition(self) -> list[int]:
        """Workers per source: as declared, else enough to preprocess a look-ahead block in time.

        A source needs ``s_per_record x share x samples per block`` seconds of preprocessing per
        block; it gets one worker per ``TARGET_BLOCK_S`` of that, within the plan's worker budget,
        handed out one at a time to the source with the most work per worker.
        """
        declared = [s.num_loader_workers for s in self.plan.sources]
        auto = [i for i, n in enumerate(declared) if n == 0]
        counts = [max(1, n) for n in declared]
        budget = self.max_loader_workers - sum(counts)
        shares = self.plan.weights_at(0)
        per_block = self.plan.global_batch_size * self.plan.lookahead_batches
        need = {i: self.stats[i].probe_s_per_record * shares[i] * per_block / TARGET_BLOCK_S for i in auto}
        while budget > 0 and auto:
            best = max(auto, key=lambda i: (need[i] / counts[i], -i))
            if need[best] <= counts[best]:
                break
            counts[best] += 1
            budget -= 1
        return counts

    async def start(self) -> None:
        """``start_blocking`` off the event loop."""
        await asyncio.to_thread(self.start_blocking)

    def pids(self) -> list[int]:
        """Process ids of every loader worker (the shadow included)."""
        pids = [w.pid for ws in self.workers for w in ws]
        if self._shadow is not None:
            pids.append(self._shadow.pid)
        return pids

    async def _replace(self, index: int, slot: int) -> Worker:
        """Put the shadow (or a fresh process) in the place of a dead worker; start a new shadow."""
        started = time.perf_counter()
        dead = self.workers[index][slot]
        await asyncio.to_thread(dead.stop)
        shadow, self._shadow = self._shadow, None
        if shadow is None or not shadow.alive():
            shadow = await asyncio.to_thread(_spawn)
        await asyncio.to_thread(self._init, shadow, index)
        self.workers[index][slot] = shadow
        self.num_replaced += 1
        self.recovery_s.append(time.perf_counter() - started)
        logger.warning(
            "loader worker %d of source %s died; shadow %d took over in %.3f s",
            dead.pid,
            self.plan.sources[index].name,
            shadow.pid,
            self.recovery_s[-1],
        )
        if not self._closed:
            self._shadow = await asyncio.to_thread(_spawn)
        return shadow

    @staticmethod
    async def _exchange(worker: Worker, message: tuple[Any, ...]) -> Any:
        async with worker.lock:
            return await asyncio.to_thread(_roundtrip, worker, message)

    async def _load_part(self, index: int, slot: int, seqs: list[int]) -> list[tuple[int, LoadedSample | None, str]]:
        for _ in range(3):
            worker = self.workers[index][slot]
            # Shielded: a cancelled caller must not leave a reply unread in the pipe for the next one.
            exchange = asyncio.ensure_future(self._exchange(worker, ("load", seqs)))
            try:
                reply = await asyncio.shield(exchange)
            except (EOFError, OSError, TimeoutError) as exc:
                logger.warning("loader worker %d failed (%s); replacing it", worker.pid, exc)
                reply = None
            if reply is not None and [seq for seq, _, _ in reply[1]] != seqs:
                raise AssertionError(f"loader worker {worker.pid} answered other sequence numbers")
            if reply is not None:
                self.stats[index].busy_s += float(reply[2])
                return list(reply[1])
            if self._closed:
                break
            await self._replace(index, slot)
        raise Unavailable(f"loader of source {self.plan.sources[index].name} keeps failing; retry")

    async def load(self, index: int, seqs: list[int]) -> dict[int, LoadedSample | None]:
        """Samples of source ``index`` for ``seqs`` (None for a skipped record, which is counted)."""
        workers = self.workers[index]
        parts: dict[int, list[int]] = {}
        for seq in seqs:
            parts.setdefault(seq % len(workers), []).append(seq)
        replies = await asyncio.gather(*(self._load_part(index, slot, part) for slot, part in parts.items()))
        out: dict[int, LoadedSample | None] = {}
        stats = self.stats[index]
        for reply in replies:
            for seq, sample, reason in reply:
                out[seq] = sample
                if sample is None:
                    stats.num_records_skipped += 1
                    stats.last_skip_reason = reason
                else:
                    stats.num_records_read += 1
        return out

    def close_blocking(self) -> None:
        """Stop every worker."""
        self._closed = True
        for ws in self.workers:
            for w in ws:
                w.stop()
            ws.clear()
        if self._shadow is not None:
            self._shadow.stop()
            self._shadow = None

    async def close(self) -> None:
        """``close_blocking`` off the event loop."""
        await asyncio.to_thread(self.close_blocking)
