"""The local stack as a user runs it: `seedctl up`, status, a trace across services, `seedctl down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.base import probe_health
from clients.seedctl import StackState, pid_alive
from services.common.redis_meta import RedisMeta, ServiceRegistry
from tests.support import RedisProcess, assert_eventually

pytestmark = pytest.mark.e2e

SERVICES = {"weighthub", "dataplane", "robustness", "rollout", "trainer", "gen3d"}


def seedctl(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SEEDSTACK_TRACE_FILE")}
    return subprocess.run([sys.executable, "-m", "clients.seedctl", "--run-dir", str(run_dir), *args],
                          capture_output=True, text=True, timeout=180, env={**base, **(env or {})})


def _spans(run_dir: Path) -> list[dict[str, object]]:
    spans = []
    for path in (run_dir / "traces").glob("*.jsonl"):
        spans += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return spans


def _trace_across_services(run_dir: Path) -> tuple[str, set[str]] | None:
    by_trace: dict[str, set[str]] = {}
    for span in _spans(run_dir):
        by_trace.setdefault(str(span["trace_id"]), set()).add(str(span["service"]))
    for trace_id, services in by_trace.items():
        if len(services) >= 2:
            return trace_id, services
    return None


async def test_up_status_trace_down_leaves_nothing_running(tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    started = seedctl(run_dir, "up")
    assert started.returncode == 0, started.stderr + started.stdout
    state = StackState.load(run_dir)
    assert state is not None and set(state.services) == SERVICES and state.redis is not None
    try:
        status = seedctl(run_dir, "status")
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines()[1:]}
        assert set(rows) == SERVICES | {"redis"}
        assert all(row[2] == "SERVING" for row in rows.values()), status.stdout
        for name, proc in state.services.items():
            assert rows[name][1] == proc.address and await probe_health(proc.address) == "SERVING"
        # rollout and trainer check the weight hub and data plane through traced health calls, so the
        # span files soon hold one trace with spans from two services.
        found = await assert_eventually(lambda: _trace_across_services(run_dir), timeout_s=15,
                                        message="a trace with spans from two services")
        _, services = found
        assert {"rollout", "trainer"} & services and {"weighthub", "dataplane"} & services
        logs = seedctl(run_dir, "logs", "weighthub")
        assert logs.returncode == 0 and '"service": "weighthub"' in logs.stdout
    finally:
        stopped = seedctl(run_dir, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped 7 process(es)" in stopped.stdout
    assert not [p.name for p in state.processes() if pid_alive(p.pid)]
    for proc in state.services.values():
        text = Path(proc.log_path).read_text()
        assert f"{proc.name} stopped" in text, f"{proc.name} did not shut down gracefully:\n{text[-2000:]}"
    assert StackState.load(run_dir) is None


def test_a_service_that_fails_to_start_is_named_and_nothing_is_left_behind(tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    result = seedctl(run_dir, "up", env={"SEEDSTACK_GEN3D_MAX_MESSAGE_BYTES": "12"})
    assert result.returncode == 1
    assert "gen3d exited during start-up" in result.stderr
    assert "SEEDSTACK_GEN3D_MAX_MESSAGE_BYTES: max_message_bytes=12" in result.stderr
    assert StackState.load(run_dir) is None
    leftover = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_replicas_and_a_second_up_in_the_same_run_dir_is_refused(tmp_path: Path, redis_url: str) -> None:
    run_dir = tmp_path / "stack"
    started = seedctl(run_dir, "up", "--services", "weighthub", "--replicas", "weighthub=2",
                      env={"REDIS_URL": redis_url})
    assert started.returncode == 0, started.stderr
    state = StackState.load(run_dir)
    assert state is not None and set(state.services) == {"weighthub", "weighthub-2"}
    assert len({p.address for p in state.services.values()}) == 2
    try:
        again = seedctl(run_dir, "up", "--services", "weighthub", env={"REDIS_URL": redis_url})
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        assert seedctl(run_dir, "down").returncode == 0


async def test_services_ride_out_a_redis_restart(tmp_path: Path, own_redis: RedisProcess) -> None:
    run_dir = tmp_path / "stack"
    assert seedctl(run_dir, "up", "--services", "weighthub", env={"REDIS_URL": own_redis.url}).returncode == 0
    state = StackState.load(run_dir)
    assert state is not None
    address = state.services["weighthub"].address
    try:
        own_redis.stop()
        await assert_eventually(lambda: _status(address, "NOT_SERVING"), timeout_s=20,
                                message="health follows Redis down")
        own_redis.start()
        await assert_eventually(lambda: _status(address, "SERVING"), timeout_s=20,
                                message="health follows Redis back up, same process")
        assert pid_alive(state.services["weighthub"].pid)
        # The registry entry, lost with Redis's memory, is written again by the refresher.
        meta = RedisMeta.from_url(own_redis.url, "registry")
        try:
            await assert_eventually(lambda: _registered(meta, address), timeout_s=20,
                                    message="registry entry restored after the restart")
        finally:
            await meta.close()
    finally:
        assert seedctl(run_dir, "down").returncode == 0


async def _status(address: str, expected: str) -> bool:
    return await probe_health(address) == expected


async def _registered(meta: RedisMeta, address: str) -> bool:
    return [r["address"] for r in await ServiceRegistry(meta).resolve("weighthub")] == [address]
