"""``seedctl``: bring a local seedstack up, look at it, take it down.

    seedctl up        a private redis-server (unless REDIS_URL is set), then every service as a
                      subprocess; returns once each is SERVING
    seedctl status    a table: service, address, health, uptime
    seedctl logs SVC  a service's log (JSON lines); -f follows it
    seedctl down      stops everything ``up`` started; no process is left behind
    seedctl incidents the robustness monitor's incident log
    seedctl trace ID  one trace's spans as a tree (default: an RL step's), from <run-dir>/traces
    seedctl gen3d IMG one image to a simulation-ready asset, with progress by stage
    seedctl run JOB   the main RL job of a job spec on a fresh local stack (or, with --stack existing,
                      on one already up), with a report at the end

State and logs live in a run directory (``--run-dir``, else ``SEEDSTACK_RUN_DIR``, else
``runs/stack``), so several stacks can run side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clients.base import probe_health
from services.common.catalog import SERVICES, service_info
from services.common.redis_meta import RedisMeta, ServiceRegistry, connect
from services.common.redis_proc import RedisProcess, redis_answers

STATE_FILE = "stack.json"
DEFAULT_RUN_DIR = "runs/stack"


class SeedctlError(Exception):
    """A failure worth one line to the user (and a non-zero exit)."""


@dataclass
class ProcessState:
    """One process this stack started."""

    name: str
    """Instance name: the service's name, with ``-2``, ``-3``... for extra replicas."""
    pid: int
    log_path: str
    started_unix_s: float
    address: str = ""
    service: str = ""
    """Service (module under services/) this instance runs; empty for redis."""


@dataclass
class StackState:
    """What ``up`` started, written to ``<run-dir>/stack.json``."""

    run_dir: str
    redis_url: str
    redis: ProcessState | None = None
    services: dict[str, ProcessState] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.run_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # atomic: a crash never leaves half a state file

    @classmethod
    def load(cls, run_dir: Path) -> StackState | None:
        path = run_dir / STATE_FILE
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        redis = ProcessState(**raw["redis"]) if raw.get("redis") else None
        services = {k: ProcessState(**v) for k, v in raw.get("services", {}).items()}
        return cls(run_dir=raw["run_dir"], redis_url=raw["redis_url"], redis=redis, services=services)

    def processes(self) -> list[ProcessState]:
        return [*self.services.values(), *([self.redis] if self.redis else [])]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie child counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def start_redis(run_dir: Path) -> ProcessState:
    """A private redis-server on a free loopback port, nothing persisted, in its own session."""
    if shutil.which("redis-server") is None:
        raise SeedctlError("redis-server is not installed and REDIS_URL is not set (apt-get install redis-server)")
    log_path = run_dir / "logs" / "redis.log"
    redis = RedisProcess(run_dir / "redis", log_path=log_path, new_session=True)
    try:
        redis.start(timeout_s=15)
    except RuntimeError as exc:
        raise SeedctlError(str(exc)) from None
    return ProcessState("redis", redis.pid, str(log_path), time.time(), f"127.0.0.1:{redis.port}")


def fixed_port(name: str) -> int:
    """The port the user pinned a service to with ``SEEDSTACK_<SERVICE>_PORT``; 0 (a free one) when unset."""
    variable = f"{service_info(name).env_prefix}PORT"
    text = os.environ.get(variable, "").strip()
    if not text or text == "0":
        return 0
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SeedctlError(f"{variable}={text!r}: expected a TCP port (1..65535), or unset for a free one")
    return int(text)


def port_in_use(port: int) -> bool:
    """True when something already listens on ``port`` (the services bind every address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


def start_service(name: str, run_dir: Path, redis_url: str, instance: str = "") -> ProcessState:
    """``python -m services.<name>`` on a free port (or the one ``SEEDSTACK_<SERVICE>_PORT`` pins the
    first instance to), logs to ``<run-dir>/logs/<instance>.log``."""
    info = service_info(name)
    instance = instance or name
    log_path = run_dir / "logs" / f"{instance}.log"
    env = dict(os.environ)
    port = fixed_port(name) if instance == name else 0
    env.update({
        "REDIS_URL": redis_url,
        f"{info.env_prefix}PORT": str(port),  # a free port's number reaches us through the service registry
        f"{info.env_prefix}HOST": env.get(f"{info.env_prefix}HOST", "127.0.0.1"),
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("SEEDSTACK_TRACE_FILE", str((run_dir / "traces" / f"{instance}.jsonl").resolve()))
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"services.{name}"], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
    return ProcessState(instance, proc.pid, str(log_path), time.time(), service=name)


async def _registered_address(registry: ServiceRegistry, name: str, pid: int) -> str:
    """The address the process ``pid`` of service ``name`` registered, or ""."""
    for record in await registry.resolve(name):
        if int(record.get("pid", -1)) == pid and record.get("host") == socket.gethostname():
            return str(record["address"])
    return ""


def _tail(path: str, num_lines: int = 8) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-num_lines:])
    except OSError:
        return "(no log)"


def exit_reason(log_path: str) -> str:
    """Why a service exited, in one line, from the end of its log: its last error (a JSON log record's
    message, or the last line of a traceback); a failed bind reads as the port being in use."""
    try:
        lines = [line.strip() for line in Path(log_path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    reason = ""
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if str(record.get("level", "")).upper() in ("ERROR", "CRITICAL"):
                reason = str(record.get("msg", ""))
                exception = str(record.get("exc") or "").strip()
                if exception:
                    reason += f": {exception.splitlines()[-1]}"
                break
            continue
        reason = line
        break
    bind = re.search(r"Failed to bind to address (\S+?)[;:]?(\s|$)", reason)
    if bind:
        return f"port {bind.group(1).rsplit(':', 1)[-1]} is already in use (could not bind {bind.group(1)})"
    return reason or "no error in its log"


def stop_processes(processes: list[ProcessState], grace_s: float = 10.0) -> int:
    """SIGTERM each process group, SIGKILL what is left after ``grace_s``; returns how many ran.

    Redis goes last, once the services are gone: a service's graceful stop deregisters it from Redis,
    and with Redis already down that call retries for up to ~7 s (redis_meta.connect's backoff), which
    with the gRPC grace could run past ``grace_s`` and get the service killed mid-shutdown.
    """
    running = [p for p in processes if pid_alive(p.pid)]
    _terminate([p for p in running if p.name != "redis"], grace_s)
    _terminate([p for p in running if p.name == "redis"], grace_s)
    return len(running)


def _terminate(running: list[ProcessState], grace_s: float) -> None:
    for p in running:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_alive(p.pid) for p in running):
        _reap()
        time.sleep(0.05)
    for p in running:
        if pid_alive(p.pid):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _reap()


def _reap() -> None:
    """Collect exited children so they don't linger as zombies."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def up(run_dir: Path, timeout_s: float, only: list[str] | None = None,
       replicas: dict[str, int] | None = None) -> StackState:
    """Start the stack; raise SeedctlError (after stopping what started) if any service fails."""
    previous = StackState.load(run_dir)
    if previous is not None:
        alive = [p.name for p in previous.processes() if pid_alive(p.pid)]
        if alive:
            raise SeedctlError(f"a stack is already running in {run_dir} ({', '.join(alive)}); "
                               f"run `seedctl --run-dir {run_dir} down` first")
        print(f"seedctl: removing stale state of a stack that is no longer running in {run_dir}")
        (run_dir / STATE_FILE).unlink()
    names = only or [s.name for s in SERVICES]
    replicas = replicas or {}
    for name in [*names, *replicas]:
        service_info(name)
    for name in names:
        port = fixed_port(name)
        if port and port_in_use(port):
            variable = f"{service_info(name).env_prefix}PORT"
            raise SeedctlError(f"{name}: port {port} ({variable}) is already in use by another process; "
                               f"stop it or unset {variable} to use a free port")
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    state = StackState(run_dir=str(run_dir), redis_url=os.environ.get("REDIS_URL", ""))
    try:
        if not state.redis_url:
            state.redis = start_redis(run_dir)
            state.redis_url = f"redis://{state.redis.address}/0"
            print(f"seedctl: redis-server on {state.redis.address} (pid {state.redis.pid})")
        state.save()
        for name in names:
            for i in range(1, replicas.get(name, 1) + 1):
                instance = name if i == 1 else f"{name}-{i}"
                state.services[instance] = start_service(name, run_dir, state.redis_url, instance)
            state.save()
        asyncio.run(_wait_serving(state, timeout_s))
        state.save()
    except BaseException:
        stop_processes(state.processes())
        (run_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return state


async def _wait_serving(state: StackState, timeout_s: float) -> None:
    # One registry connection for the whole wait, not one per service per poll.
    meta = RedisMeta(connect(state.redis_url, retries=1), "registry")
    try:
        await _poll_serving(state, ServiceRegistry(meta), timeout_s)
    finally:
        await meta.close()


async def _poll_serving(state: StackState, registry: ServiceRegistry, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(state.services)
    while pending:
        for name, proc in list(pending.items()):
            if not pid_alive(proc.pid):
                raise SeedctlError(f"{name} exited during start-up: {exit_reason(proc.log_path)}; "
                                   f"last lines of {proc.log_path}:\n{_tail(proc.log_path)}")
            if not proc.address:
                proc.address = await _registered_address(registry, proc.service or name, proc.pid)
            if proc.address and await probe_health(proc.address) == "SERVING":
                print(f"seedctl: {name:<11} SERVING on {proc.address} "
                      f"({time.time() - proc.started_unix_s:.1f} s)")
                del pending[name]
        if pending and time.monotonic() > deadline:
            status = {n: (p.address or "not registered") for n, p in pending.items()}
            raise SeedctlError(f"not SERVING within {timeout_s:.0f} s: {status}; see {state.run_dir}/logs/")
        if pending:
            await asyncio.sleep(0.1)


def parse_replicas(text: str) -> dict[str, int]:
    """``"rollout=2,trainer=1"`` -> {"rollout": 2, "trainer": 1}; SeedctlError on a bad entry."""
    replicas: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, count = item.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise SeedctlError(f"--replicas {item!r}: expected SERVICE=N with N >= 1")
        replicas[name.strip()] = int(count)
    return replicas


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


async def status_rows(state: StackState) -> list[tuple[str, str, str, str]]:
    """(service, address, health, uptime) for each process of the stack."""
    rows = []
    if state.redis:
        alive = pid_alive(state.redis.pid)
        rows.append(("redis", state.redis.address, "SERVING" if alive and redis_answers(
            int(state.redis.address.rsplit(":", 1)[1])) else "DOWN", _uptime(time.time() - state.redis.started_unix_s)))
    else:
        rows.append(("redis", state.redis_url, "EXTERNAL", "-"))
    for name, proc in state.services.items():
        if not pid_alive(proc.pid):
            rows.append((name, proc.address, "EXITED", "-"))
            continue
        rows.append((name, proc.address, await probe_health(proc.address) if proc.address else "STARTING",
                     _uptime(time.time() - proc.started_unix_s)))
    return rows


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str] = ("SERVICE", "ADDRESS", "HEALTH", "UPTIME")
                ) -> None:
    """Rows under an upper-case header, columns padded to their widest cell."""
    header = [h.upper() for h in header]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _require_state(run_dir: Path) -> StackState:
    state = StackState.load(run_dir)
    if state is None:
        raise SeedctlError(f"no stack in {run_dir} (start one with `seedctl --run-dir {run_dir} up`)")
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="seedctl", description="Run and inspect a local seedstack.")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="state and logs of this stack (default: $SEEDSTACK_RUN_DIR or runs/stack; "
                        "for `run`, a new runs/job-<date>-<time>)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start redis (unless REDIS_URL is set) and every service; wait until SERVING")
    p_up.add_argument("--timeout-s", type=float, default=120.0, help="how long to wait for SERVING")
    p_up.add_argument("--services", default="", help="comma-separated subset (default: all)")
    p_up.add_argument("--replicas", default="", help="instances per service, e.g. rollout=2 (default: 1 each)")
    sub.add_parser("status", help="table of service, address, health, uptime")
    p_logs = sub.add_parser("logs", help="print a service's log")
    p_logs.add_argument("service", help="service name, or redis")
    p_logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p_logs.add_argument("-n", "--lines", type=int, default=0, help="only the last N lines")
    sub.add_parser("down", help="stop everything `up` started")
    p_inc = sub.add_parser("incidents", help="the robustness monitor's incident log as a table")
    p_inc.add_argument("--job", default="", help="only this job's incidents")
    p_inc.add_argument("-n", "--max", type=int, default=50, help="at most this many, newest first")
    p_gen3d = sub.add_parser("gen3d", help="turn one image into a simulation-ready asset (GLB, URDF, MJCF)")
    p_gen3d.add_argument("image", type=Path, help="PNG or JPEG of one object")
    p_gen3d.add_argument("--out", type=Path, default=Path("assets"), help="folder for the asset files")
    p_gen3d.add_argument("--class", dest="object_class", default="", help="object class, e.g. mug (sets defaults)")
    p_gen3d.add_argument("--size-m", type=float, default=0.0, help="largest dimension in metres (0 = class default)")
    p_trace = sub.add_parser("trace", help="one trace as a tree of spans, from the span files in <run-dir>/traces")
    p_trace.add_argument("trace_id", nargs="?", default="",
                         help="trace id (default: the RL step trace `seedctl run` picks)")
    p_run = sub.add_parser("run", help="run an RL job spec on a fresh local stack; report in the run directory")
    p_run.add_argument("job", type=Path, help="job spec (YAML), e.g. deploy/jobs/default.yaml")
    p_run.add_argument("--keep-up", action="store_true", help="leave the stack running at the end")
    p_run.add_argument("--inject-fault", default="", metavar="KIND@STEP",
                       help="inject crash, hang or nan into trainer rank 1 at RL step STEP")
    p_run.add_argument("--stack", choices=("fresh", "existing"), default="fresh",
                       help="fresh: start a local stack for the job and stop it after (default); existing: run on "
                       "a stack that is already up (compose, Kubernetes, `seedctl up`), found through the service "
                       "registry in $REDIS_URL, else in the Redis of the `seedctl up` stack in $SEEDSTACK_RUN_DIR "
                       "or runs/stack; nothing is started or stopped")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir or (
        Path("runs") / f"job-{time.strftime('%Y%m%d-%H%M%S')}" if args.command == "run"
        else Path(os.environ.get("SEEDSTACK_RUN_DIR", DEFAULT_RUN_DIR)))
    try:
        if args.command == "up":
            only = [s.strip() for s in args.services.split(",") if s.strip()] or None
            started = up(run_dir, args.timeout_s, only, parse_replicas(args.replicas))
            print(f"seedctl: stack up in {run_dir} (redis {started.redis_url}); "
                  f"`seedctl --run-dir {run_dir} status` shows it, `seedctl --run-dir {run_dir} down` stops it")
        elif args.command == "status":
            print_table(asyncio.run(status_rows(_require_state(run_dir))))
        elif args.command == "logs":
            _logs(_require_state(run_dir), args.service, args.follow, args.lines)
        elif args.command == "incidents":
            from clients.robustness import INCIDENT_COLUMNS, incidents_table

            rows = asyncio.run(incidents_table(_service_target(run_dir, "robustness"), args.job, args.max))
            print_table([[row[c] for c in INCIDENT_COLUMNS] for row in rows], INCIDENT_COLUMNS)
        elif args.command == "gen3d":
            from clients.gen3d import run_gen3d_cli

            return asyncio.run(run_gen3d_cli(_service_target(run_dir, "gen3d"), args.image, args.out,
                                             object_class=args.object_class, size_hint_m=args.size_m))
        elif args.command == "run":
            from clients.jobspec import JobSpecError, load_job_spec
            from clients.mainjob import FaultRequest, JobError, locate_stack, run_job

            try:
                fault = FaultRequest.parse(args.inject_fault) if args.inject_fault else None
                spec = load_job_spec(args.job)
                # A stopped job (docker stop, a CI timeout, kill) takes its fresh stack down as Ctrl-C does.
                signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
                stack = None
                if args.stack == "existing":
                    stack = locate_stack(Path(os.environ.get("SEEDSTACK_RUN_DIR", DEFAULT_RUN_DIR)))
                return run_job(spec, args.job, run_dir, keep_up=args.keep_up, fault=fault, stack=stack)
            except (JobSpecError, JobError) as exc:
                print(f"seedctl run: {exc}", file=sys.stderr)
                return 1
        elif args.command == "trace":
            _trace(run_dir / "traces", args.trace_id)
        elif args.command == "down":
            existing = StackState.load(run_dir)
            if existing is None:
                print(f"seedctl: nothing running in {run_dir}")
                return 0
            num = stop_processes(existing.processes())
            (run_dir / STATE_FILE).unlink(missing_ok=True)
            print(f"seedctl: stopped {num} process(es) in {run_dir}")
    except SeedctlError as exc:
        print(f"seedctl: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:
        print(f"seedctl: {exc.args[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _service_target(run_dir: Path, service: str) -> str:
    """The service's address in this run dir's stack, else REDIS_URL (resolved through the registry)."""
    state = StackState.load(run_dir)
    if state is not None and service in state.services and state.services[service].address:
        return state.services[service].address
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    raise SeedctlError(f"no {service} in {run_dir} and REDIS_URL is not set; start a stack with `seedctl up`")


def _trace(traces_dir: Path, trace_id: str) -> None:
    from clients.mainjob import find_step_trace, read_spans, trace_lines

    if not trace_id:
        trace_id = str(find_step_trace(traces_dir).get("trace_id", ""))
        if not trace_id:
            raise SeedctlError(f"no RL step (trainer.rl_step span) in the span files of {traces_dir}")
    lines = trace_lines(read_spans(traces_dir), trace_id)
    if not lines:
        raise SeedctlError(f"no span of trace {trace_id} in {traces_dir}/*.jsonl")
    print(f"trace {trace_id} (start offset, duration, service: span)")
    print("\n".join(lines))


def _logs(state: StackState, service: str, follow: bool, num_lines: int) -> None:
    procs: dict[str, Any] = {p.name: p for p in state.processes()}
    if service not in procs:
        raise SeedctlError(f"no process named {service!r} in this stack; have: {sorted(procs)}")
    path = Path(procs[service].log_path)
    with path.open(errors="replace") as f:
        lines = f.readlines()
        sys.stdout.writelines(lines[-num_lines:] if num_lines else lines)
        sys.stdout.flush()
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
