"""Bad input to `seedctl run`, read without starting anything: each says which and why in one line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from clients.jobspec import parse_job_spec
from clients.mainjob import ExistingStack, JobError, check_redis_url, check_run_dir, locate_stack, run_job
from clients.seedctl import SeedctlError, StackState, exit_reason, fixed_port, port_in_use
from tests.support import free_port


def test_a_stale_run_directory_is_refused_by_name(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # The state of a stack whose processes are gone (a pid no process has: beyond the kernel's maximum).
    StackState(run_dir=str(run_dir), redis_url="redis://127.0.0.1:1/0").save()
    state = json.loads((run_dir / "stack.json").read_text())
    state["services"] = {"trainer": {"name": "trainer", "pid": 2**22 + 1, "log_path": "x", "started_unix_s": 0}}
    (run_dir / "stack.json").write_text(json.dumps(state))
    with pytest.raises(JobError, match=r"run directory .*/run is stale \(state of a stack that is no longer running\)"):
        check_run_dir(run_dir)
    (tmp_path / "file").write_text("")
    with pytest.raises(JobError, match="is a file"):
        check_run_dir(tmp_path / "file")


def test_redis_not_reachable_names_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(JobError, match=f"Redis at REDIS_URL={url} is not reachable"):
        check_redis_url(url)


def test_a_pinned_port_in_use_is_found_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEEDSTACK_TRAINER_PORT", raising=False)
    assert fixed_port("trainer") == 0  # unset: a free port
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("SEEDSTACK_TRAINER_PORT", str(port))
        assert fixed_port("trainer") == port and port_in_use(port)
    monkeypatch.setenv("SEEDSTACK_TRAINER_PORT", "http")
    with pytest.raises(SeedctlError, match="SEEDSTACK_TRAINER_PORT='http': expected a TCP port"):
        fixed_port("trainer")


def test_why_a_service_exited_is_read_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text(
        '{"level": "INFO", "msg": "starting"}\n'
        "Traceback (most recent call last):\n"
        '  File "grpc/_common.py", line 179, in validate_port_binding_result\n'
        "RuntimeError: Failed to bind to address [::]:50055; set GRPC_VERBOSITY=debug environment variable\n"
    )
    assert exit_reason(str(log)) == "port 50055 is already in use (could not bind [::]:50055)"
    log.write_text("gen3d: invalid configuration: SEEDSTACK_GEN3D_MAX_MESSAGE_BYTES: max_message_bytes=12\n")
    assert exit_reason(str(log)).startswith("gen3d: invalid configuration: SEEDSTACK_GEN3D_MAX_MESSAGE_BYTES")
    log.write_text(
        '{"level": "ERROR", "msg": "model failed to load", "exc": "Traceback...\\nOSError: no such file: m.gguf"}\n'
        '{"level": "INFO", "msg": "trainer stopped"}\n'
    )
    assert exit_reason(str(log)) == "model failed to load: OSError: no such file: m.gguf"
    assert exit_reason(str(tmp_path / "none.log")) == "no log"


def test_an_existing_stack_is_found_from_redis_url_or_the_stack_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(JobError, match=r"REDIS_URL is not set and .*/stack holds no stack"):
        locate_stack(tmp_path / "stack")
    (tmp_path / "stack").mkdir()
    StackState(run_dir=str(tmp_path / "stack"), redis_url="redis://127.0.0.1:7001/0").save()
    assert locate_stack(tmp_path / "stack") == ExistingStack("redis://127.0.0.1:7001/0", tmp_path / "stack" / "traces")
    monkeypatch.setenv("REDIS_URL", "redis://elsewhere:6379/0")  # another stack: its spans are not these
    assert locate_stack(tmp_path / "stack") == ExistingStack("redis://elsewhere:6379/0", None)
    # Compose and Kubernetes: REDIS_URL, and the services' span files on the shared volume.
    assert locate_stack(tmp_path / "none") == ExistingStack("redis://elsewhere:6379/0", tmp_path / "none" / "traces")


def test_an_existing_stack_is_not_the_jobs_to_fault_or_keep_up(tmp_path: Path) -> None:
    from clients.mainjob import FaultRequest

    stack = ExistingStack(f"redis://127.0.0.1:{free_port()}/0", None)
    spec = parse_job_spec({})
    with pytest.raises(JobError, match="--inject-fault needs a fresh stack"):
        run_job(spec, Path("x.yaml"), tmp_path / "a", fault=FaultRequest("crash", 3), stack=stack)
    with pytest.raises(JobError, match="--keep-up needs a fresh stack"):
        run_job(spec, Path("x.yaml"), tmp_path / "a", keep_up=True, stack=stack)
    with pytest.raises(JobError, match="is not reachable"):
        run_job(spec, Path("x.yaml"), tmp_path / "a", stack=stack)
    assert not (tmp_path / "a").exists()
