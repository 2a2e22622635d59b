"""``seedctl run JOB.yaml``: the main job on the local stack, watched live, reported at the end.

1. checks the job spec and the run directory, writes the task's RL prompts into it;
2. brings the stack up (``seedctl up``: Redis, data plane, weight hub, trainer, robustness monitor and
   ``rollout.num_servers`` rollout servers);
3. submits the RL plan to the data plane, starts the trainer run (warm start, then RL on the data
   plane's batches, publishing every version to the weight hub) and the worker loop of every rollout
   server (NextPrompts -> generate -> verify -> PutSamples, following the hub's versions);
4. polls everything once a second and keeps one progress line up to date;
5. writes the report (``clients.jobreport``) and takes the stack down (unless ``--keep-up``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.jobspec import WEIGHTHUB_MODEL, JobSpec

FAULT_KINDS = ("crash", "hang", "nan")
SERVICES = ("dataplane", "weighthub", "trainer", "robustness", "rollout")
POLL_S = 1.0
STARTUP_TIMEOUT_S = 120.0
"""The robustness monitor's start-up allowance before the warm start (its default)."""
WARM_START_S_PER_STEP = 0.5
"""Start-up allowance per warm-start step: about twice the slowest seen (0.28 s on 2 cores, load 20)."""


class JobError(Exception):
    """A failure worth one line to the user."""


@dataclass(frozen=True)
class FaultRequest:
    """``--inject-fault KIND@STEP``."""

    kind: str
    step: int

    @classmethod
    def parse(cls, text: str) -> FaultRequest:
        kind, _, step = text.partition("@")
        kind = kind.strip().lower()
        if kind not in FAULT_KINDS or not step.strip().isdigit() or int(step) < 1:
            raise JobError(
                f"--inject-fault {text!r}: expected KIND@STEP with KIND one of {', '.join(FAULT_KINDS)} and STEP >= 1"
            )
        return cls(kind, int(step))


@dataclass
class Timeline:
    """What the job saw while it ran (the report's raw material)."""

    started_unix_s: float
    polls: list[dict[str, Any]] = field(default_factory=list)
    """One entry per poll: t_s, state, step, version, reward, served versions, idle fractions..."""
    swaps: list[dict[str, Any]] = field(default_factory=list)
    """One entry per weight swap seen: server, version, stall_s, t_s."""
    evals: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    """Every trainer step's figures (the run's steps.jsonl)."""
    run: dict[str, Any] = field(default_factory=dict)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    ettr: dict[str, Any] = field(default_factory=dict)
    rollout_final: dict[str, dict[str, Any]] = field(default_factory=dict)
    trace: dict[str, Any] = field(default_factory=dict)
    rl_started_unix_s: float = 0.0
    ended_unix_s: float = 0.0
    end_state: str = ""
    failure_reason: str = ""
    fault: dict[str, Any] = field(default_factory=dict)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    """One entry per restart of the trainer run from its checkpoint: why, when, lost steps, recovery s."""
    num_alerts: int = 0
    """Alert-only incidents (loss spikes of the RL loss, which moves a lot by nature): counted, not listed."""


def check_run_dir(run_dir: Path) -> None:
    """A run directory must be new or empty: one holding another run's state or report is refused."""
    from clients.seedctl import STATE_FILE, StackState, pid_alive

    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise JobError(f"run directory {run_dir} is a file")
    state = StackState.load(run_dir) if (run_dir / STATE_FILE).exists() else None
    if state is not None:
        alive = [p.name for p in state.processes() if pid_alive(p.pid)]
        if alive:
            raise JobError(
                f"run directory {run_dir} has a stack running ({', '.join(alive)}); "
                f"`seedctl --run-dir {run_dir} down` first, or pick another --run-dir"
            )
        raise JobError(
            f"run directory {run_dir} is stale (state of a stack that is no longer running); "
            "remove it or pick another --run-dir"
        )
    if any(run_dir.iterdir()):
        raise JobError(
            f"run directory {run_dir} is not empty (an earlier run's files); remove it or pick another --run-dir"
        )


def check_redis_url(url: str | None = None) -> None:
    """The Redis ``url`` (default REDIS_URL, when set) names must answer (else every service would fail)."""
    url = os.environ.get("REDIS_URL", "") if url is None else url
    if not url:
        return
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:  # redis raises several kinds; any means "not reachable"
        raise JobError(f"Redis at REDIS_URL={url} is not reachable: {exc}") from None


@dataclass(frozen=True)
class ExistingStack:
    """A stack already up (``seedctl run --stack existing``): the job finds its services, starts and stops none."""

    redis_url: str
    """Redis whose service registry lists the stack's services."""
    traces_dir: Path | None
    """Where the stack's services append their spans (``SEEDSTACK_TRACE_FILE``); None when unknown."""
    fault_file: Path | None = None
    """The armed-fault file the stack's trainer polls (``SEEDSTACK_FAULT_FILE``), known when the caller
    started the stack with it set; None: faults cannot be injected into this stack."""


def locate_stack(stack_dir: Path) -> ExistingStack:
    """The stack in ``$REDIS_URL``, else the one ``seedctl up`` started in ``stack_dir``; its span files
    are ``stack_dir/traces`` unless ``stack_dir`` holds another stack (compose and Kubernetes mount the
    shared runs volume so that the services write their spans there)."""
    from clients.seedctl import STATE_FILE, StackState

    state = None
    if (stack_dir / STATE_FILE).exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            state = StackState.load(stack_dir)
    url = os.environ.get("REDIS_URL", "")
    if not url:
        if state is None:
            raise JobError(
                f"--stack existing: REDIS_URL is not set and {stack_dir} holds no stack; set REDIS_URL to the "
                f"stack's Redis, or start one with `seedctl --run-dir {stack_dir} up --replicas rollout=2`"
            )
        url = state.redis_url
    same = state is None or state.redis_url == url
    return ExistingStack(url, (stack_dir / "traces") if same else None)


async def resolve_stack(stack: ExistingStack, num_rollout_servers: int, timeout_s: float) -> dict[str, str]:
    """Instance name -> address of the job's services in the stack's registry, each SERVING: ``rollout``,
    ``rollout-2``... for the first ``num_rollout_servers`` rollout servers. Waits up to ``timeout_s`` (a
    stack may still be starting, as a Kubernetes Job's is); JobError names what is missing."""
    from clients.base import probe_health
    from services.common.redis_meta import RedisMeta, ServiceRegistry, connect

    meta = RedisMeta(connect(stack.redis_url, retries=1), "registry")
    registry = ServiceRegistry(meta)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            serving: dict[str, list[str]] = {}
            for name in SERVICES:
                registered = sorted({str(r["address"]) for r in await registry.resolve(name)})
                serving[name] = [a for a in registered if await probe_health(a) == "SERVING"]
            missing = [n for n in SERVICES if n != "rollout" and not serving[n]]
            if len(serving["rollout"]) < num_rollout_servers:
                missing.append(
                    f"rollout (rollout.num_servers={num_rollout_servers}, {len(serving['rollout'])} SERVING)"
                )
            if not missing:
                break
            if time.monotonic() > deadline:
                raise JobError(
                    f"the stack at {stack.redis_url} has no SERVING {', '.join(missing)} in its service registry "
                    f"after {timeout_s:.0f} s"
                )
            await asyncio.sleep(POLL_S)
    finally:
        await meta.close()
    addresses = {name: serving[name][0] for name in SERVICES if name != "rollout"}
    for i, address in enumerate(serving["rollout"][:num_rollout_servers], start=1):
        addresses["rollout" if i == 1 else f"rollout-{i}"] = address
    return addresses


def service_env(spec: JobSpec, run_dir: Path) -> dict[str, str]:
    """Environment of the services this job starts: the model, loopback binds, the trainer's runs dir, the
    rollout servers' niceness."""
    startup_s = STARTUP_TIMEOUT_S + WARM_START_S_PER_STEP * spec.warm_start.num_steps
    return {
        "SEEDSTACK_ROLLOUT_MODEL_CONFIG_JSON": spec.model.config_json(),
        "SEEDSTACK_ROLLOUT_NUM_THREADS": "1",
        # The rollout servers share the cores with the trainer's ranks: their decoding fills the time
        # the ranks leave (waits, collectives) instead of slowing each step, the job's critical path.
        "SEEDSTACK_ROLLOUT_NICE": "10",
        "SEEDSTACK_ROLLOUT_MODEL_SEED": str(spec.seed),
        "SEEDSTACK_ROLLOUT_WEIGHTS_BIND_HOST": "127.0.0.1",
        "SEEDSTACK_TRAINER_PUBLISH_BIND_HOST": "127.0.0.1",
        "SEEDSTACK_TRAINER_RUNS_DIR": str((run_dir / "trainer").resolve()),
        # A hung run is stopped to restart it: its ranks are killed this long after the stop request.
        "SEEDSTACK_TRAINER_STOP_TIMEOUT_S": "15",
        # The monitor counts the warm start as start-up (no RL step yet): 400 warm-start steps have taken
        # 110 s and more on 2 cores under load, past its 120 s default, and were restarted as a hang.
        "SEEDSTACK_ROBUSTNESS_STARTUP_TIMEOUT_S": f"{startup_s:g}",
        "OMP_NUM_THREADS": "1",
    }


def stack_services(spec: JobSpec) -> list[str]:
    """The services a fresh stack for ``spec`` starts: no rollout server when the trainer generates."""
    return [n for n in SERVICES if n != "rollout" or spec.rollout.num_servers > 0]


def arm_fault(fault_file: Path, fault: FaultRequest, num_ranks: int) -> None:
    """Arm ``fault`` in the file the trainer's ranks poll, for rank 1 (rank 0 with one rank)."""
    from services.robustness.faults import ArmedFault, arm

    # "hang" blocks the rank's main thread while its heartbeats go on: no progress, as a real hang.
    arm(fault_file, ArmedFault({"hang": "block"}.get(fault.kind, fault.kind), rank=1 % num_ranks, step=fault.step))


def run_job(
    spec: JobSpec,
    spec_path: Path,
    run_dir: Path,
    *,
    keep_up: bool = False,
    fault: FaultRequest | None = None,
    out: Any = None,
    stack: ExistingStack | None = None,
) -> int:
    """The whole job; returns the exit status (0: the run completed and the report is written).

    With ``stack`` the job runs on that stack as it is (the services' environment is the stack's), else on
    a fresh local stack it starts and, unless ``keep_up``, stops."""
    from clients.seedctl import STATE_FILE, SeedctlError, StackState, stop_processes, up

    out = out or sys.stdout
    if stack is not None and ((fault is not None and stack.fault_file is None) or keep_up):
        raise JobError(
            f"{'--inject-fault' if fault is not None else '--keep-up'} needs a fresh stack: an existing stack "
            "keeps running as it is (the fault is armed in the environment of the trainer the job starts)"
        )
    check_run_dir(run_dir)
    check_redis_url(None if stack is None else stack.redis_url)
    run_dir.mkdir(parents=True, exist_ok=True)
    report_path = run_dir / "report.md"
    print(f"seedctl run: run directory {run_dir}", file=out)
    print(f"seedctl run: report will be {report_path} (plots and figures.json beside it)", file=out)
    (run_dir / "job.json").write_text(
        json.dumps(
            {
                "spec_file": str(spec_path),
                "spec": spec.to_dict(),
                "fault": fault.__dict__ if fault else None,
                "stack": "fresh" if stack is None else {"redis_url": stack.redis_url},
            },
            indent=2,
        )
    )
    prompts_path = run_dir / "rl_prompts.jsonl"
    spec.write_rl_prompts(prompts_path)
    t0 = time.time()
    if stack is not None:
        try:
            addresses = asyncio.run(resolve_stack(stack, spec.rollout.num_servers, spec.startup_timeout_s))
        except KeyboardInterrupt:
            return 130
        print(
            f"seedctl run: existing stack at {stack.redis_url}: "
            + ", ".join(f"{n} {a}" for n, a in sorted(addresses.items())),
            file=out,
        )
        if spec.model.config_json():
            print(
                "seedctl run: the rollout servers must serve the spec's model: "
                f"SEEDSTACK_ROLLOUT_MODEL_CONFIG_JSON='{spec.model.config_json()}' in their environment",
                file=out,
            )
        if fault is not None and stack.fault_file is not None:
            arm_fault(stack.fault_file, fault, spec.trainer.num_ranks)
        try:
            return _run_and_report(
                spec,
                run_dir,
                prompts_path,
                addresses,
                Timeline(started_unix_s=t0),
                fault,
                out,
                stack.traces_dir,
                fault_file=stack.fault_file,
            )
        finally:
            if fault is not None and stack.fault_file is not None:
                stack.fault_file.unlink(missing_ok=True)  # a fault that did not fire must not hit the next job
    os.environ.update(service_env(spec, run_dir))
    fault_file = None
    if fault is not None:
        fault_file = (run_dir / "fault.json").resolve()
        arm_fault(fault_file, fault, spec.trainer.num_ranks)
        os.environ["SEEDSTACK_FAULT_FILE"] = str(fault_file)
    state = StackState(run_dir=str(run_dir), redis_url="")
    try:
        state = up(run_dir, spec.startup_timeout_s, stack_services(spec), {"rollout": spec.rollout.num_servers})
    except SeedctlError as exc:
        raise JobError(f"stack did not start: {str(exc).splitlines()[0]} (logs in {run_dir}/logs/)") from None
    except KeyboardInterrupt:  # up() has stopped what it started
        print("\nseedctl run: interrupted while the stack started; nothing left running", file=out)
        return 130
    job_file = run_dir / "job.json"
    job_file.write_text(
        json.dumps({**json.loads(job_file.read_text()), "pids": [p.pid for p in state.processes()]}, indent=2)
    )
    addresses = {name: p.address for name, p in state.services.items()}

    def stop_stack() -> None:
        if not keep_up:
            stop_processes(state.processes())
            (run_dir / STATE_FILE).unlink(missing_ok=True)

    try:
        return _run_and_report(
            spec,
            run_dir,
            prompts_path,
            addresses,
            Timeline(started_unix_s=t0),
            fault,
            out,
            run_dir / "traces",
            stop_stack=stop_stack,
            keep_up=keep_up,
            fault_file=fault_file,
        )
    finally:
        stop_stack()  # whatever went wrong after start-up, the stack this job started goes down (or was already)


def _run_and_report(
    spec: JobSpec,
    run_dir: Path,
    prompts_path: Path,
    addresses: dict[str, str],
    timeline: Timeline,
    fault: FaultRequest | None,
    out: Any,
    traces_dir: Path | None,
    *,
    stop_stack: Callable[[], None] | None = None,
    keep_up: bool = False,
    fault_file: Path | None = None,
) -> int:
    """Drive the job on the stack at ``addresses``, take a fresh stack down (``stop_stack``), write the report."""
    from clients.jobreport import write_report

    code = 1
    try:
        code = asyncio.run(_drive(spec, run_dir, prompts_path, addresses, timeline, fault, out, fault_file))
    except KeyboardInterrupt:
        print("\nseedctl run: interrupted" + ("; taking the stack down" if stop_stack else ""), file=out)
        code = 130
    finally:
        timeline.ended_unix_s = timeline.ended_unix_s or time.time()
        if stop_stack is not None:
            stop_stack()
    timeline.trace = find_step_trace(traces_dir, timeline.started_unix_s) if traces_dir is not None else {}
    if not timeline.trace:
        where = f"the span files in {traces_dir}" if traces_dir else "a span file here (the stack exports elsewhere)"
        timeline.trace = {"note": f"no trainer.rl_step span in {where}"}
    report_path = run_dir / "report.md"
    if timeline.polls:
        figures = write_report(spec, run_dir, timeline)
        acc = figures.get("acc_before"), figures.get("acc_after")
        print(
            f"seedctl run: {timeline.end_state.lower() or 'ended'} in {figures['wall_s'] / 60:.1f} min; "
            f"held-out accuracy {_pct(acc[0])} -> {_pct(acc[1])}; report {report_path}",
            file=out,
        )
        if timeline.trace.get("trace_id"):
            print(f"seedctl run: one RL step as one trace: {timeline.trace['view']}", file=out)
    if stop_stack is None:
        print("seedctl run: the existing stack keeps running (the job started and stops none of it)", file=out)
    elif keep_up:
        print(f"seedctl run: stack left up; `seedctl --run-dir {run_dir} down` stops it", file=out)
    else:
        print(f"seedctl run: stack down ({run_dir}/logs/ keeps the services' logs)", file=out)
    return code


STEP_TRACE_SERVICES = ("dataplane", "rollout", "trainer", "weighthub")
"""Services one RL step's trace crosses: prompts, generation, the update, the new version."""


def read_spans(traces_dir: Path) -> list[dict[str, Any]]:
    """Every span in the JSON-lines span files (``SEEDSTACK_TRACE_FILE``) of ``traces_dir``, with its file."""
    spans: list[dict[str, Any]] = []
    for path in sorted(traces_dir.glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                span = json.loads(line)
                if isinstance(span, dict) and span.get("trace_id"):
                    spans.append({**span, "file": path.name})
    return spans


def find_step_trace(traces_dir: Path, since_unix_s: float = 0.0) -> dict[str, Any]:
    """The trace of one RL step (a ``trainer.rl_step`` span begun after ``since_unix_s``: an existing
    stack's span files hold earlier jobs too): the one reaching the most of data plane, rollout, trainer
    and weight hub, earliest among equals in the second half of the run (past start-up effects). Its id,
    step, services, the ones it misses, span count, files and the command that shows it; {} when no span
    file there holds such a step."""
    spans = read_spans(traces_dir)
    services: dict[str, set[str]] = {}
    num_spans: dict[str, int] = {}
    files: dict[str, set[str]] = {}
    for span in spans:
        trace_id = str(span["trace_id"])
        services.setdefault(trace_id, set()).add(str(span.get("service")))
        num_spans[trace_id] = num_spans.get(trace_id, 0) + 1
        files.setdefault(trace_id, set()).add(span["file"])
    steps = sorted(
        (
            s
            for s in spans
            if s.get("name") == "trainer.rl_step" and int(s.get("start_unix_ns") or 0) >= since_unix_s * 1e9
        ),
        key=lambda s: int(s.get("start_unix_ns") or 0),
    )
    if not steps:
        return {}

    def covered(trace_id: str) -> set[str]:  # the trainer's ranks export as "trainer-rank"
        return {name.split("-")[0] for name in services[trace_id]} & set(STEP_TRACE_SERVICES)

    def reach(span: dict[str, Any]) -> tuple[int, int]:
        return len(covered(str(span["trace_id"]))), len(services[str(span["trace_id"])])

    best = max(steps[len(steps) // 2 :], key=reach)
    trace_id = str(best["trace_id"])
    return {
        "trace_id": trace_id,
        "step": best.get("attributes", {}).get("rl.step"),
        "services": sorted(services[trace_id]),
        "missing": sorted(set(STEP_TRACE_SERVICES) - covered(trace_id)),
        "num_spans": num_spans[trace_id],
        "files": [str(traces_dir / name) for name in sorted(files[trace_id])],
        "view": f"seedctl --run-dir {traces_dir.parent} trace {trace_id}",
    }


def trace_lines(spans: list[dict[str, Any]], trace_id: str) -> list[str]:
    """One trace's spans as an indented tree (child under parent, in start order): offset, duration,
    service, name; spans whose parent is in no file (another process not exporting) start a root."""
    mine = sorted((s for s in spans if s.get("trace_id") == trace_id), key=lambda s: int(s.get("start_unix_ns") or 0))
    if not mine:
        return []
    ids = {s.get("span_id") for s in mine}
    children: dict[Any, list[dict[str, Any]]] = {}
    for span in mine:
        parent = span.get("parent_span_id")
        children.setdefault(parent if parent in ids else None, []).append(span)
    t0 = int(mine[0].get("start_unix_ns") or 0)
    lines: list[str] = []

    def walk(span: dict[str, Any], depth: int) -> None:
        start, end = int(span.get("start_unix_ns") or 0), int(span.get("end_unix_ns") or 0)
        status = "" if span.get("status") in ("UNSET", "OK", None) else f"  [{span.get('status')}]"
        lines.append(
            f"{(start - t0) / 1e6:9.1f} ms {(end - start) / 1e6:9.1f} ms  {'  ' * depth}"
            f"{span.get('service')}: {span.get('name')}{status}"
        )
        for child in children.get(span.get("span_id"), []):
            walk(child, depth + 1)

    for root in children.get(None, []):
        walk(root, 0)
    return lines


def latest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest ``step-NNNNNN.pt`` the trainer wrote there, with its step; None when there is none."""
    found = sorted((int(p.stem.removeprefix("step-")), p) for p in directory.glob("step-*.pt") if p.stem[5:].isdigit())
    return found[-1] if found else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


async def _drive(
    spec: JobSpec,
    run_dir: Path,
    prompts_path: Path,
    addresses: dict[str, str],
    timeline: Timeline,
    fault: FaultRequest | None,
    out: Any,
    fault_file: Path | None = None,
) -> int:
    from seedstack.dataplane.v1 import dataplane_pb2 as dp
    from seedstack.robustness.v1 import robustness_pb2 as rb
    from seedstack.rollout.v1 import rollout_pb2 as rp
    from seedstack.trainer.v1 import trainer_pb2 as tp

    from clients.base import RPCError
    from clients.dataplane import DataPlaneClient
    from clients.robustness import RobustnessClient, incident_row
    from clients.rollout import RolloutClient
    from clients.trainer import TrainerClient

    job_id = uuid.uuid4().hex[:8]
    servers = sorted(n for n in addresses if n.split("-")[0] == "rollout")
    deadline = timeline.started_unix_s + spec.time_budget_s
    async with contextlib.AsyncExitStack() as stack:
        dataplane = await stack.enter_async_context(DataPlaneClient(addresses["dataplane"]))
        trainer = await stack.enter_async_context(TrainerClient(addresses["trainer"]))
        rollouts = {n: await stack.enter_async_context(RolloutClient(addresses[n])) for n in servers}
        robustness = (
            await stack.enter_async_context(RobustnessClient(addresses["robustness"]))
            if "robustness" in addresses
            else None
        )
        try:
            plan_id = (
                await dataplane.submit_plan(
                    dp.SubmitPlanRequest(request_id=f"job-{job_id}-plan", mixture_yaml=spec.mixture_yaml(prompts_path))
                )
            ).plan_id
            run_config = spec.run_config(plan_id=plan_id).to_dict()
            for local in ("dataplane_address", "weighthub_address", "publish_bind_host"):
                run_config.pop(local)
            run_id = (
                await trainer.start_run(
                    tp.StartRunRequest(request_id=f"job-{job_id}-run", run_config_text=json.dumps(run_config))
                )
            ).run_id
        except RPCError as exc:
            raise JobError(f"{exc.method}: {exc.code.name}: {exc.details}") from None

        async def start_rollouts() -> None:
            """The rollout servers' worker loops on the plan, following the run's versions. Started once the
            run trains: its first version is out and the data plane knows it from the first NextBatch, so
            no server spends the start generating with an earlier job's weights samples the plan drops."""
            r = spec.rollout
            try:
                for name, client in rollouts.items():
                    await client.start_rollout(
                        rp.StartRolloutRequest(
                            request_id=f"job-{job_id}-{name}",
                            dataplane_plan_id=plan_id,
                            weighthub_model=WEIGHTHUB_MODEL,
                            sampling=rp.SamplingParams(temperature=r.temperature, max_new_tokens=r.max_new_tokens),
                            num_prompts_per_round=r.prompts_per_round,
                            completion_ratio=r.completion_ratio,
                            max_staleness_versions=r.max_staleness_versions,
                        )
                    )
            except RPCError as exc:
                raise JobError(f"{exc.method}: {exc.code.name}: {exc.details}") from None

        rollouts_started = False
        print(
            f"seedctl run: plan {plan_id}, trainer run {run_id}, {len(servers)} rollout servers; "
            f"RL for {spec.trainer.rl_time_budget_s:.0f} s after the warm start",
            file=out,
        )
        timeline.run = {"run_id": run_id, "plan_id": plan_id, "run_dir": str(run_dir / "trainer" / run_id)}
        run_ids = [run_id]
        earlier_evals: list[dict[str, Any]] = []
        segment_rl_started = 0.0
        rl_used_s = 0.0
        last_swaps = {n: 0 for n in servers}
        stopping = False
        progress = Progress(out)
        plan_stats = None
        sampled_steps: dict[tuple[str, int], dict[str, Any]] = {}
        """The latest step of each poll: the report's steps when the trainer's steps.jsonl is not readable here."""

        tracked: dict[str, dict[str, Any]] = {}

        async def monitor_incidents() -> list[Any]:
            """The monitor's crash, hang and NaN incidents of the run, oldest first."""
            if robustness is None:
                return []
            with contextlib.suppress(RPCError):
                reply = await robustness.list_incidents(rb.ListIncidentsRequest(job_id=run_id), timeout_s=5)
                faults = (rb.FAULT_KIND_CRASH, rb.FAULT_KIND_HANG, rb.FAULT_KIND_NAN)
                found = [i for i in reply.incidents if i.fault in faults]
                return sorted(found, key=lambda i: i.detected_at.ToNanoseconds())
            return []

        def track(incidents: list[Any], run: Any) -> None:
            """One recovery per incident: the monitor restarts the run through the trainer service (a new
            incarnation of the same run from its checkpoint); the job only records it."""
            import re

            for incident in incidents:
                kind = rb.FaultKind.Name(incident.fault).removeprefix("FAULT_KIND_").lower()
                entry = tracked.get(incident.incident_id)
                if entry is None:
                    entry = tracked[incident.incident_id] = {
                        "why": f"monitor: {incident.summary}",
                        "failed_run": run_id,
                        "run_id": run_id,
                        "t_s": incident.detected_at.ToNanoseconds() / 1e9 - timeline.started_unix_s,
                        "monitor_fault": kind,
                        "blamed_rank": int(incident.suspect_ranks[0]) if incident.suspect_ranks else None,
                        "detection_s": float(incident.detection_s),
                        "failed_step": int(run.step),
                        "checkpoint_step": None,
                        "lost_steps": 0,
                        "recovery_s": None,
                    }
                    timeline.recoveries.append(entry)
                    progress.note(f"monitor: {kind} incident: {incident.summary}")
                if entry["recovery_s"] is None and incident.state == rb.INCIDENT_STATE_RECOVERED:
                    lost = int(incident.num_lost_steps)
                    resumed = [
                        int(m.group(1))
                        for s in incident.recovery_steps
                        if (m := re.search(r"from step (\d+)", s.detail))
                    ]
                    entry.update(
                        recovery_s=float(incident.recovery_s),
                        lost_steps=lost,
                        checkpoint_step=resumed[-1] if resumed else max(entry["failed_step"] - lost, 0),
                        actions=[
                            rb.RecoveryAction.Name(s.action).removeprefix("RECOVERY_ACTION_").lower()
                            for s in incident.recovery_steps
                        ],
                    )
                    progress.note(
                        f"monitor: {kind} recovered by {', '.join(entry['actions'])} in {incident.recovery_s:.1f} s "
                        f"(the trainer restarted the run from its step-{entry['checkpoint_step']} checkpoint, "
                        f"{lost} step(s) lost)"
                    )

        async def restart(run: Any, why: str, incident: Any) -> str | None:
            """Stop what is left of the run, then start it again from its last checkpoint; the new run id."""
            detected = time.time()
            if tp.RunState.Name(run.state).removeprefix("RUN_STATE_") not in ("COMPLETED", "STOPPED", "FAILED"):
                await trainer.stop_run(tp.StopRunRequest(request_id=f"job-{job_id}-halt-{run_id}", run_id=run_id))
                end = time.time() + 60
                while time.time() < end:
                    run = (await trainer.get_run(tp.GetRunRequest(run_id=run_id))).run
                    if tp.RunState.Name(run.state).removeprefix("RUN_STATE_") in ("COMPLETED", "STOPPED", "FAILED"):
                        break
                    await asyncio.sleep(POLL_S)
            checkpoint = latest_checkpoint(run_dir / "trainer" / run_id / "checkpoints")
            if checkpoint is None:
                progress.note(f"{why}; no checkpoint to restart from")
                return None
            if fault_file is not None:
                # An injected fault fires once, not again after the restart.
                await asyncio.to_thread(fault_file.unlink, True)
            resumed = dict(run_config)
            resumed["checkpoint"] = {**run_config["checkpoint"], "resume_from": str(checkpoint[1])}
            resumed["time_budget_s"] = max(spec.trainer.rl_time_budget_s - rl_used_s, 10.0)
            new_id = (
                await trainer.start_run(
                    tp.StartRunRequest(
                        request_id=f"job-{job_id}-run-{len(run_ids)}", run_config_text=json.dumps(resumed)
                    )
                )
            ).run_id
            timeline.recoveries.append(
                {
                    "why": why,
                    "failed_run": run_id,
                    "run_id": new_id,
                    "t_s": detected - timeline.started_unix_s,
                    "monitor_fault": rb.FaultKind.Name(incident.fault).removeprefix("FAULT_KIND_").lower()
                    if incident is not None
                    else "",
                    "failed_step": int(run.step),
                    "checkpoint_step": checkpoint[0],
                    "lost_steps": max(int(run.step) - checkpoint[0], 0),
                    "recovery_s": None,
                    "_detected_unix_s": detected,
                }
            )
            progress.note(
                f"{why}: restarting the trainer from its step-{checkpoint[0]} checkpoint "
                f"({max(int(run.step) - checkpoint[0], 0)} step(s) lost) as run {new_id}"
            )
            return new_id

        while True:
            now = time.time()
            run = (await trainer.get_run(tp.GetRunRequest(run_id=run_id))).run
            state = tp.RunState.Name(run.state).removeprefix("RUN_STATE_")
            if state == "TRAINING" and not segment_rl_started:
                segment_rl_started = now
            if state == "TRAINING" and not rollouts_started:
                await start_rollouts()
                rollouts_started = True
            track(await monitor_incidents(), run)
            # Without a monitor nothing restarts a failed run but the job itself (from its last checkpoint).
            if (
                robustness is None
                and state == "FAILED"
                and not stopping
                and len(run_ids) <= spec.trainer.max_restarts
                and now < deadline - 30
            ):
                why = f"trainer run failed: {run.failure_reason.splitlines()[0] if run.failure_reason else '?'}"
                rl_used_s += (now - segment_rl_started) if segment_rl_started else 0.0
                earlier_evals = timeline.evals
                try:
                    new_id = await restart(run, why, None)
                except RPCError as exc:
                    progress.note(f"restart failed: {exc.method}: {exc.code.name}: {exc.details}")
                    new_id = None
                if new_id is not None:
                    run_id = new_id
                    run_ids.append(run_id)
                    timeline.run.update(run_id=run_id, run_dir=str(run_dir / "trainer" / run_id), run_ids=run_ids)
                    segment_rl_started = 0.0
                    continue
            pending = timeline.recoveries[-1] if timeline.recoveries else None
            if (
                pending
                and "_detected_unix_s" in pending
                and pending["recovery_s"] is None
                and run.step > pending["checkpoint_step"]
            ):
                pending["recovery_s"] = now - pending.pop("_detected_unix_s")
            stats: dict[str, Any] = {}
            for name, client in rollouts.items():
                with contextlib.suppress(RPCError):
                    stats[name] = await client.stats(rp.StatsRequest(), timeout_s=5)
            with contextlib.suppress(RPCError):
                plan_stats = await dataplane.stats(dp.StatsRequest(plan_id=plan_id), timeout_s=5)
            if state == "TRAINING" and not timeline.rl_started_unix_s:
                timeline.rl_started_unix_s = now
            for name, s in stats.items():
                if s.num_weight_swaps > last_swaps[name]:
                    timeline.swaps.append(
                        {
                            "server": name,
                            "version": int(s.served_version),
                            "stall_s": float(s.last_swap_stall_s),
                            "t_s": now - timeline.started_unix_s,
                            "num_swaps": int(s.num_weight_swaps),
                        }
                    )
                    last_swaps[name] = int(s.num_weight_swaps)
            timeline.evals = earlier_evals + [
                {
                    "step": int(e.step),
                    "accuracy": float(e.accuracy),
                    "num_prompts": int(e.num_prompts),
                    "t_s": e.evaluated_at.ToNanoseconds() / 1e9 - timeline.started_unix_s,
                }
                for e in run.evals
                if not earlier_evals or e.step > earlier_evals[-1]["step"]
            ]
            served = [int(s.served_version) for s in stats.values()]
            poll = {
                "t_s": now - timeline.started_unix_s,
                "state": state,
                "step": int(run.step),
                "version": int(run.published_version),
                "reward": float(run.latest_step.reward_mean) if run.HasField("latest_step") else None,
                "trainer_samples_per_s": float(run.latest_step.samples_per_s) if run.HasField("latest_step") else 0.0,
                "dataplane_samples_per_s": float(plan_stats.samples_per_s) if plan_stats else 0.0,
                "served": {n: int(s.served_version) for n, s in stats.items()},
                "rollout_idle": {n: float(s.idle_fraction) for n, s in stats.items()},
                "decode_tokens_per_s": {n: float(s.decode_tokens_per_s) for n, s in stats.items()},
                "lag": (int(run.published_version) - min(served)) if served and run.published_version else 0,
            }
            timeline.polls.append(poll)
            if run.HasField("latest_step") and run.step:
                sampled_steps.setdefault(
                    (run_id, int(run.step)),
                    {
                        "step": int(run.step),
                        "at": run.updated_at.ToNanoseconds() / 1e9,
                        "reward_mean": float(run.latest_step.reward_mean),
                        "step_time_s": float(run.latest_step.step_time_s),
                        "data_wait_s": float(run.latest_step.data_wait_s),
                        "num_samples": int(run.latest_step.num_samples),
                        "run_id": run_id,
                        "sampled": True,
                    },
                )
            progress.show(spec, timeline, poll)
            if robustness is not None and timeline.rl_started_unix_s:
                with contextlib.suppress(RPCError):
                    ettr = await robustness.get_ettr(rb.GetEttrRequest(job_id=run_id), timeout_s=5)
                    if ettr.cumulative.wall_s > 0:
                        series = timeline.ettr.setdefault("series", [])
                        series.append([poll["t_s"], float(ettr.cumulative.ettr)])
                        timeline.ettr["ettr"] = float(ettr.cumulative.ettr)
            if state in ("COMPLETED", "STOPPED", "FAILED"):
                timeline.end_state = state
                timeline.failure_reason = run.failure_reason
                break
            if now > deadline and not stopping:
                progress.note(f"job time budget ({spec.time_budget_s:.0f} s) spent: stopping the run")
                await trainer.stop_run(tp.StopRunRequest(request_id=f"job-{job_id}-stop", run_id=run_id))
                stopping = True
            if now > deadline + 120:
                timeline.end_state, timeline.failure_reason = "FAILED", "did not stop within 120 s of the budget"
                break
            await asyncio.sleep(POLL_S)
        progress.done()
        timeline.ended_unix_s = time.time()
        for name, client in rollouts.items():
            with contextlib.suppress(RPCError):
                await client.stop_rollout(rp.StopRolloutRequest(request_id=f"job-{job_id}-stop-{name}"), timeout_s=10)
            with contextlib.suppress(RPCError):
                s = await client.stats(rp.StatsRequest(), timeout_s=5)
                timeline.rollout_final[name] = {
                    "served_version": int(s.served_version),
                    "num_weight_swaps": int(s.num_weight_swaps),
                    "num_samples_finished": int(s.num_samples_finished),
                    "num_tokens_generated": int(s.num_tokens_generated),
                }
        for pending in timeline.recoveries:
            pending.pop("_detected_unix_s", None)
        if robustness is not None:
            for rid in run_ids:
                with contextlib.suppress(RPCError):
                    reply = await robustness.list_incidents(rb.ListIncidentsRequest(job_id=rid), timeout_s=10)
                    for incident in sorted(reply.incidents, key=lambda i: i.detected_at.ToNanoseconds()):
                        if incident.summary.endswith("(alert only)"):
                            timeline.num_alerts += 1
                            continue
                        row: dict[str, Any] = incident_row(incident)
                        row["t_s"] = incident.detected_at.ToNanoseconds() / 1e9 - timeline.started_unix_s
                        timeline.incidents.append(row)
        if fault is not None:
            timeline.fault = {"kind": fault.kind, "step": fault.step, "rank": 1 % spec.trainer.num_ranks}
        # The trainer's runs directory: the job's own on a fresh stack; on an existing stack the one its
        # checkpoint paths name, readable when the job shares the trainer's disk (compose and k8s mount it).
        trainer_runs = Path(run.last_checkpoint).parent.parent.parent if run.last_checkpoint else run_dir / "trainer"
        timeline.run["run_dir"] = str(trainer_runs / run_id)
        for rid in run_ids:
            steps_file = trainer_runs / rid / "steps.jsonl"
            if steps_file.exists():
                lines = steps_file.read_text().splitlines()
                timeline.steps += [{**json.loads(line), "run_id": rid} for line in lines if line.strip()]
            else:
                timeline.steps += [v for k, v in sorted(sampled_steps.items()) if k[0] == rid]
    if timeline.end_state == "FAILED":
        reason = timeline.failure_reason.splitlines()[0] if timeline.failure_reason else "?"
        print(f"seedctl run: the trainer run failed: {reason}", file=out)
        return 1
    return 0


class Progress:
    """One live line (rewritten in place on a terminal, printed every 15 s otherwise)."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self._last_print = 0.0
        self._width = 0

    def show(self, spec: JobSpec, timeline: Timeline, poll: dict[str, Any]) -> None:
        elapsed = poll["t_s"]
        acc = timeline.evals[-1]["accuracy"] if timeline.evals else None
        if timeline.rl_started_unix_s:
            rl_left = spec.trainer.rl_time_budget_s - (time.time() - timeline.rl_started_unix_s)
            eta = f"ETA {max(rl_left, 0) + 15:.0f}s"
        else:
            eta = "ETA warm start"
        samples_per_s = poll["dataplane_samples_per_s"] or poll["trainer_samples_per_s"]
        reward = "-" if poll["reward"] is None else f"{poll['reward']:.2f}"
        line = (
            f"[{elapsed:5.0f}s] {poll['state'].lower():<9} step {poll['step']:>4}  reward {reward}  "
            f"held-out acc {_pct(acc)}  {samples_per_s:5.1f} samples/s  version {poll['version']} "
            f"(lag {poll['lag']})  {eta}"
        )
        if self.tty:
            self.out.write("\r" + line.ljust(self._width))
            self.out.flush()
            self._width = len(line)
        elif time.monotonic() - self._last_print >= 15:
            print(line, file=self.out, flush=True)
            self._last_print = time.monotonic()

    def note(self, text: str) -> None:
        self.done()
        print(f"seedctl run: {text}", file=self.out, flush=True)

    def done(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0
