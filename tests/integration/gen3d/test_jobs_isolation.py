"""Jobs run in child processes: a crash or a runaway job fails that job with the reason, the rest go on."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from services.common.redis_meta import RedisMeta
from services.gen3d import jobs as jobs_mod
from services.gen3d.jobs import JobManager
from services.gen3d.store import AssetStore
from tests.integration.gen3d import runners


async def _final(jobs: JobManager, job_id: str) -> dict[str, Any]:
    records = [record async for record in jobs.watch(job_id)]
    return records[-1]


async def test_crash_and_time_limit_fail_the_job_and_the_next_job_runs(redis_url: str, tmp_path: Path) -> None:
    meta = RedisMeta.from_url(redis_url, "gen3d")
    store = AssetStore(tmp_path / "store")
    jobs = JobManager(meta, store, runners.scripted, num_workers=1, time_limit_s=4.0)
    await jobs.start()
    try:
        ids = {do: await jobs.submit(do, "object", {"do": do}) for do in ("crash", "hang", "raise", "ok")}
        final = {do: await _final(jobs, job_id) for do, job_id in ids.items()}
    finally:
        await jobs.stop()
        await meta.close()
    crash, hang, bug, ok = (final[k] for k in ("crash", "hang", "raise", "ok"))
    assert crash["state"] == jobs_mod.FAILED
    assert crash["failure_reason"] == "the worker process died (killed by SIGSEGV) in stage geometry"
    assert hang["state"] == jobs_mod.FAILED
    assert hang["failure_reason"] == "passed its time limit of 4 s (in stage geometry)"
    assert bug["state"] == jobs_mod.FAILED
    assert bug["failure_reason"] == "internal error: RuntimeError: a bug in the pipeline"
    # The service's own process lived through all of that, and the next job ran in a process of its own.
    assert ok["state"] == jobs_mod.SUCCEEDED, ok["failure_reason"]
    assert ok["notes"] != [f"pid {os.getpid()}"]
    assert [f["name"] for f in ok["files"]] == ["out.txt"]
    assert (store.root / ok["files"][0]["store_path"]).read_text() == "made in a child process\n"
    assert set(ok["stage_timings"]) == {"mask", "geometry"}
