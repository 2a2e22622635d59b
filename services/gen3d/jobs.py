"""Asynchronous jobs: metadata in Redis, each job's work in a child process, files in the asset store.

Keys (under ``seedstack:gen3d:``): ``job:<id>`` the job's JSON record; ``request:<request id>`` the
job a request id created (so a retried submit returns the same job); ``queue`` the ids waiting for a
worker. Every change of a record bumps its ``version`` and is announced on the channel
``events:<id>``; watchers re-read the record on each announcement (and every second anyway, so a
lost message costs a second, not the watch). On start, jobs left queued or running by a previous
process are queued again: a restarted service rebuilds its work from Redis. At most ``num_workers``
jobs run at once, each in a child process under ``time_limit_s`` (see ``worker``): a job that
crashes its process or runs too long fails with the reason, and the service goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from services.common.errors import InvalidArgument, NotFound, SeedstackError
from services.common.redis_meta import RedisMeta
from services.gen3d.store import AssetStore
from services.gen3d.worker import JobFailed, Runner, run_in_child

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = (SUCCEEDED, FAILED)
REQUEST_TTL_S = 7 * 24 * 3600

DEFAULT_TIME_LIMIT_S = 600.0
"""Longest a job may run when the manager is not told otherwise."""


class JobManager:
    """Submits, runs and reports jobs."""

    def __init__(
        self,
        meta: RedisMeta,
        store: AssetStore,
        runner: Runner,
        *,
        num_workers: int = 1,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        self.meta = meta
        self.store = store
        self.runner = runner
        self.num_workers = num_workers
        self.time_limit_s = time_limit_s
        self._tasks: list[asyncio.Task[None]] = []
        self._locks: dict[str, asyncio.Lock] = {}

    # Records ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> dict[str, Any]:
        """The job's record; NotFound when there is none."""
        if not job_id:
            raise InvalidArgument("job_id is empty")
        record = await self.meta.get_json(self.meta.key("job", job_id))
        if record is None:
            raise NotFound(f"no job {job_id!r}")
        return dict(record)

    async def _update(self, job_id: str, **changes: Any) -> dict[str, Any]:
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            record = await self.get(job_id)
            record.update(changes)
            record["version"] += 1
            record["updated_at"] = time.time()
            await self.meta.put_many({self.meta.key("job", job_id): record})
            await self.meta.client.publish(self.meta.key("events", job_id), str(record["version"]))
        if record["state"] in TERMINAL:
            self._locks.pop(job_id, None)
        return record

    async def submit(self, request_id: str, kind: str, spec: dict[str, Any]) -> str:
        """Queue a job for ``spec``; the same ``request_id`` always returns the same job."""
        if not request_id:
            raise InvalidArgument("request_id is empty: every submit needs an idempotency key")
        job_id = uuid.uuid4().hex
        request_key = self.meta.key("request", request_id)
        if not await self.meta.client.set(request_key, job_id, nx=True, ex=REQUEST_TTL_S):
            existing = await self.meta.client.get(request_key)
            return str(existing)
        now = time.time()
        record = {
            "job_id": job_id,
            "kind": kind,
            "state": QUEUED,
            "stage": "",
            "progress": 0.0,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            "stage_timings": {},
            "notes": [],
            "failure_reason": "",
            "assets": [],
            "scene_drop_test": None,
            "files": [],
            "spec": spec,
        }
        async with self.meta.client.pipeline(transaction=True) as pipe:
            pipe.set(self.meta.key("job", job_id), json.dumps(record))
            pipe.lpush(self.meta.key("queue"), job_id)
            await pipe.execute()
        logger.info("job %s (%s) queued", job_id, kind)
        return job_id

    async def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """The record now and after each change, ending with the final state."""
        pubsub = self.meta.client.pubsub()
        await pubsub.subscribe(self.meta.key("events", job_id))
        try:
            record = await self.get(job_id)
            yield record
            version = record["version"]
            while record["state"] not in TERMINAL:
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                record = await self.get(job_id)
                if record["version"] != version:
                    version = record["version"]
                    yield record
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    # Workers ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Queue again what a previous process left unfinished, then start the workers."""
        cursor = 0
        requeue = []
        while True:
            cursor, keys = await self.meta.client.scan(cursor, match=self.meta.key("job", "*"), count=200)
            for key in keys:
                record = await self.meta.get_json(str(key))
                if record and record["state"] in (QUEUED, RUNNING):
                    requeue.append(record["job_id"])
            if cursor == 0:
                break
        if requeue:
            queued = set(await self.meta.client.lrange(self.meta.key("queue"), 0, -1))
            for job_id in requeue:
                if job_id not in queued:
                    await self._update(job_id, state=QUEUED, stage="", progress=0.0)
                    await self.meta.client.lpush(self.meta.key("queue"), job_id)
            logger.info("re-queued %d unfinished job(s) from Redis", len(requeue))
        self._tasks = [asyncio.create_task(self._worker(i), name=f"gen3d-worker-{i}") for i in range(self.num_workers)]

    async def stop(self) -> None:
        """Stop taking jobs; a job mid-run has its process killed and runs again after a restart."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []

    async def _worker(self, index: int) -> None:
        while True:
            try:
                popped = await self.meta.client.brpop([self.meta.key("queue")], timeout=1)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %d: reading the queue failed; retrying", index)
                await asyncio.sleep(1.0)
                continue
            if popped is None:
                continue
            await self.run_one(str(popped[1]))

    async def run_one(self, job_id: str) -> None:
        """Run one job to its final state; its failure becomes the job's, never the worker's."""
        try:
            record = await self._update(job_id, state=RUNNING, stage="", progress=0.0)
        except NotFound:
            logger.warning("queued job %s has no record; skipped", job_id)
            return
        timings: dict[str, float] = {}
        last: dict[str, Any] = {"stage": "", "t": time.perf_counter()}

        def close_stage() -> None:
            if last["stage"]:
                timings[last["stage"]] = timings.get(last["stage"], 0.0) + time.perf_counter() - last["t"]

        async def on_stage(stage: str, progress: float) -> None:
            close_stage()
            last.update(stage=stage, t=time.perf_counter())
            await self._update(job_id, stage=stage, progress=progress, stage_timings=dict(timings))

        work = self.store.work_dir(job_id)
        started = time.perf_counter()
        try:
            names, results = await run_in_child(
                self.runner, record["spec"], work, time_limit_s=self.time_limit_s, on_stage=on_stage
            )
            close_stage()
            files = self.store.publish(job_id, work, names)
        except JobFailed as exc:
            close_stage()
            logger.info("job %s failed: %s", job_id, exc.reason)
            await self._update(job_id, state=FAILED, failure_reason=exc.reason, stage_timings=timings)
            return
        except SeedstackError as exc:
            logger.info("job %s failed: %s", job_id, exc.message)
            await self._update(job_id, state=FAILED, failure_reason=exc.message, stage_timings=timings)
            return
        except Exception as exc:
            logger.exception("job %s failed with an internal error", job_id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            await self._update(job_id, state=FAILED, failure_reason=reason, stage_timings=timings)
            return
        await self._update(
            job_id, state=SUCCEEDED, progress=1.0, stage_timings=timings, files=[asdict(f) for f in files], **results
        )
        logger.info("job %s succeeded in %.1f s", job_id, time.perf_counter() - started)
