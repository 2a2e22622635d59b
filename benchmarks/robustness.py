"""Robustness monitor: a fault campaign on a real gloo job, torchrun beside it, and simulated ETTR at scale.

1. Campaign: a 4-rank gloo drill job under sidecars and the controller (real processes, real Redis).
   Faults are injected one at a time - crash (SIGKILL), hang (SIGSTOP), NaN (in the loss), straggler
   (a rank's compute slowed) - and each incident's detection latency (from injection), blamed rank,
   localisation and recovery time and lost steps are read back from ListIncidents.
2. False alarms: harmless disturbances (a long checkpoint save, a data stall, one-off slow steps);
   any incident opened during them counts.
3. torchrun alone on the same job (both faults at once, two jobs): the time until a surviving rank
   is gone - torchrun tore it down after the crash; after the hang only the collective timeout ends
   it (measured with a short timeout, reported with PyTorch's default).
4. Simulated ETTR of a three-month, 9,600-GPU job (``services.robustness.sim``): the campaign's
   measured p50 times scaled to the job's size by ``ScalingModel`` (every term, value and source in
   ``figures.sim.scaling``), against restart-everything-from-the-last-checkpoint; the ETTR with the
   unscaled campaign times is beside it for comparison.

Run: ``python -m benchmarks.robustness [--quick] [--json PATH]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from seedstack.robustness.v1 import robustness_pb2 as pb

from benchmarks.report import Progress, emit, standard_parser
from services.common.redis_proc import RedisProcess, free_port
from services.robustness.drill import FAST, Drill, running_drill
from services.robustness.faults import ArmedFault, arm
from services.robustness.sim import Campaign, ScalingModel, SimParams, simulate, store_round_trip_s

logger = logging.getLogger(__name__)

CKPT_EVERY = 5
STEP_TIME_S = 0.05
"""The drill job's compute time per step (its default)."""
SLOW_S = 0.25
"""Extra compute time per step of the rank made a straggler."""
TORCH_DEFAULT_TIMEOUT_S = 1800.0
"""torch.distributed's default process-group timeout (30 min) that a hang waits for under torchrun."""


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _wait_progress(drill: Drill, past: int, timeout_s: float = 120.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = drill.controller.jobs.get("drill")
        if job is not None and job.progress_step > past and job.incident_id is None:
            return job.progress_step
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no progress past step {past}")


async def _wait_incident(drill: Drill, known: int, timeout_s: float = 120.0) -> pb.Incident:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [i for i in await drill.incidents() if i.fault != pb.FAULT_KIND_LOSS_SPIKE]
        if len(found) > known and found[0].state in (pb.INCIDENT_STATE_RECOVERED, pb.INCIDENT_STATE_UNRECOVERED):
            return found[0]
        await asyncio.sleep(0.1)
    raise TimeoutError("incident not closed")


async def campaign(redis_url: str, workdir: Path, per_type: int, progress: Progress) -> dict[str, Any]:
    """Inject ``per_type`` faults of each type into one drill job; per-type records."""
    records: dict[str, list[dict[str, float]]] = {k: [] for k in ("crash", "hang", "nan", "straggler")}
    false_alarms: list[str] = []
    wall_s: dict[str, float] = {}
    started = time.monotonic()
    config = {"max_recovery_attempts": 10**6, "repeat_window_s": 0.001}
    async with running_drill(
        redis_url, workdir, num_standbys=per_type, ranks_per_host=1, ckpt_every=CKPT_EVERY, config=config
    ) as drill:
        fault_file = workdir / "fault.json"
        step = await _wait_progress(drill, 5)
        wall_s["startup"] = time.monotonic() - started
        # Harmless disturbances first: none may open an incident. Each fires at a planned step (a
        # checkpoint delay only acts on a checkpoint step) and is judged a few steps after it.
        ckpt_step = (step // CKPT_EVERY + 2) * CKPT_EVERY
        for name, fault in [
            ("long checkpoint", ArmedFault("checkpoint-delay", rank=0, step=ckpt_step, seconds=4.0)),
            ("data stall", ArmedFault("data-stall", rank=1, step=ckpt_step + 3, seconds=2.0)),
            ("one-off slow steps", ArmedFault("slow", rank=2, step=ckpt_step + 6, seconds=0.6)),
        ]:
            before = len(await drill.incidents())
            arm(fault_file, fault)
            step = await _wait_progress(drill, fault.step + 2)
            found = await drill.incidents()
            for incident in found[: len(found) - before]:
                false_alarms.append(f"{name}: {pb.FaultKind.Name(incident.fault)}: {incident.summary}")
        wall_s["disturbances"] = time.monotonic() - started - wall_s["startup"]
        rank_cycle = [1, 2, 3, 0]
        known = len(await drill.incidents())
        for i in range(per_type):
            for kind in ("crash", "hang", "nan", "straggler"):
                target = rank_cycle[(i + len(kind)) % 4]
                step = await _wait_progress(drill, drill.controller.jobs["drill"].progress_step + 3)
                injected = time.time()
                fault_step = -1
                if kind == "crash":
                    os.kill(drill.rank_pid(target), signal.SIGKILL)
                elif kind == "hang":
                    os.kill(drill.rank_pid(target), signal.SIGSTOP)
                elif kind == "nan":
                    fault_step = step + 2
                    arm(fault_file, ArmedFault("nan", rank=target, step=fault_step))
                else:
                    slow_task = asyncio.create_task(_keep_slow(fault_file, target))
                incident = await _wait_incident(drill, known)
                if kind == "straggler":
                    slow_task.cancel()
                    arm(fault_file, ArmedFault("slow", rank=target, step=10**9))
                known = len(await drill.incidents())
                detected = incident.detected_at.ToNanoseconds() / 1e9
                inject_to_detect = detected - injected
                if kind == "nan":
                    # Injection is armed ahead: latency in steps from the NaN step to detection.
                    inject_to_detect = 0.0
                domain = await drill.controller.list_incidents("drill", None, 5)
                detected_step = next(d.detected_step for d in domain if d.incident_id == incident.incident_id)
                records[kind].append(
                    {
                        "detect_s": max(0.0, inject_to_detect),
                        "detect_steps": float(max(0, detected_step - fault_step) if fault_step >= 0 else 0),
                        "blamed_right": float(bool(incident.suspect_ranks) and incident.suspect_ranks[0] == target),
                        "culprit_in_suspects": float(target in incident.suspect_ranks),
                        "localize_s": incident.localization_s,
                        "recover_s": incident.recovery_s,
                        "lost_steps": float(incident.num_lost_steps),
                        "recovered": float(incident.state == pb.INCIDENT_STATE_RECOVERED),
                        "fault_matches": float(incident.fault == _expected(kind)),
                    }
                )
                progress.advance()
    wall_s["injections"] = time.monotonic() - started - wall_s["startup"] - wall_s["disturbances"]
    return {"records": records, "false_alarms": false_alarms, "wall_s": wall_s}


def _expected(kind: str) -> int:
    return {
        "crash": pb.FAULT_KIND_CRASH,
        "hang": pb.FAULT_KIND_HANG,
        "nan": pb.FAULT_KIND_NAN,
        "straggler": pb.FAULT_KIND_STRAGGLER,
    }[kind]


async def _keep_slow(fault_file: Path, rank: int) -> None:
    while True:
        arm(fault_file, ArmedFault("slow", rank=rank, step=-1, seconds=SLOW_S))
        await asyncio.sleep(0.15)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def torchrun_baseline(workdir: Path, timeout_s: float) -> dict[str, float]:
    """Seconds until torchrun alone can see a SIGKILLed and a SIGSTOPped rank: until a surviving rank
    is gone (torchrun tore it down after the crash; the collective timeout ended it after the hang).

    Both jobs run at once; each is killed, process group and ranks, as soon as it has been measured.
    """
    jobs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    out: dict[str, float] = {}
    try:
        for kind in ("crash", "hang"):
            run_dir = workdir / f"torchrun-{kind}"
            run_dir.mkdir()
            cmd = [
                str(Path(sys.executable).with_name("torchrun")),
                "--nproc-per-node",
                "4",
                "--max-restarts",
                "0",
                "--master-port",
                str(free_port()),
                "-m",
                "services.robustness.drilljob",
                "--dir",
                str(run_dir),
                "--steps",
                "100000",
                "--collective-timeout-s",
                str(timeout_s),
                "--step-time-s",
                "0.05",
            ]
            jobs[kind] = (
                subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True),
                run_dir,
            )
        deadline = time.monotonic() + 120
        while not all(list(d.glob("ckpt-*.json")) for _, d in jobs.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        injected: dict[str, tuple[float, list[int]]] = {}
        for kind, (proc, run_dir) in jobs.items():
            found = subprocess.run(["pgrep", "-f", f"drilljob --dir {run_dir} "], capture_output=True, text=True)
            pids = sorted(int(p) for p in found.stdout.split() if int(p) != proc.pid)
            os.kill(pids[-1], signal.SIGKILL if kind == "crash" else signal.SIGSTOP)
            injected[kind] = (time.monotonic(), pids[:-1])
        deadline = time.monotonic() + timeout_s + 60
        while len(out) < len(jobs) and time.monotonic() < deadline:
            for kind, (started, survivors) in injected.items():
                if kind not in out and not all(_alive(p) for p in survivors):
                    out[kind] = time.monotonic() - started
            time.sleep(0.02)
    finally:
        for proc, run_dir in jobs.values():
            found = subprocess.run(["pgrep", "-f", f"drilljob --dir {run_dir} "], capture_output=True, text=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            for pid in (int(p) for p in found.stdout.split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    missing = [k for k in jobs if k not in out]
    if missing:
        raise TimeoutError(f"torchrun never noticed the {missing} fault(s)")
    return out


async def run(quick: bool) -> dict[str, Any]:
    per_type = 2 if quick else 30
    torchrun_timeout_s = 2.0 if quick else 20.0
    progress = Progress("injections", total=per_type * 4)
    with tempfile.TemporaryDirectory(prefix="robustness-bench-") as tmp:
        workdir = Path(tmp)
        redis = RedisProcess(workdir)
        redis.start()
        started = time.monotonic()
        try:
            (workdir / "campaign").mkdir()
            result = await campaign(redis.url, workdir / "campaign", per_type, progress)
        finally:
            redis.stop()
        progress.finish()
        campaign_s = time.monotonic() - started
        torchrun = torchrun_baseline(workdir, torchrun_timeout_s)
        torchrun_s = time.monotonic() - started - campaign_s
    recs = result["records"]

    def col(kind: str, key: str) -> list[float]:
        return [r[key] for r in recs[kind]]

    figures: dict[str, Any] = {}
    for kind in recs:
        figures[kind] = {
            "num_injections": len(recs[kind]),
            "detect_s_p50": _pct(col(kind, "detect_s"), 0.5),
            "detect_s_p95": _pct(col(kind, "detect_s"), 0.95),
            "detect_steps_p95": _pct(col(kind, "detect_steps"), 0.95),
            "blamed_right": statistics.fmean(col(kind, "blamed_right")),
            "culprit_in_suspects": statistics.fmean(col(kind, "culprit_in_suspects")),
            "localize_s_p50": _pct(col(kind, "localize_s"), 0.5),
            "recover_s_p50": _pct(col(kind, "recover_s"), 0.5),
            "recover_s_p95": _pct(col(kind, "recover_s"), 0.95),
            "lost_steps_mean": statistics.fmean(col(kind, "lost_steps")),
            "recovered": statistics.fmean(col(kind, "recovered")),
            "classified_right": statistics.fmean(col(kind, "fault_matches")),
        }
    figures["false_alarm_disturbances"] = result["false_alarms"]
    figures["torchrun_measured_s"] = torchrun
    figures["torchrun_collective_timeout_s"] = torchrun_timeout_s
    figures["wall_s"] = {"campaign": campaign_s, **result["wall_s"], "torchrun": torchrun_s}
    all_blamed = [r["blamed_right"] for k in recs for r in recs[k]]
    measured = Campaign(
        world_size=4,
        crash_detect_s=figures["crash"]["detect_s_p50"],
        silent_hang_detect_s=figures["hang"]["detect_s_p50"],
        liveness_timeout_s=FAST["liveness_timeout_s"],
        nan_detect_steps=figures["nan"]["detect_steps_p95"],
        straggler_detect_s=figures["straggler"]["detect_s_p50"],
        straggler_step_s=STEP_TIME_S + SLOW_S,
        hang_localize_s=figures["hang"]["localize_s_p50"],
        restart_in_place_s=figures["crash"]["recover_s_p50"],
        replace_node_s=figures["straggler"]["recover_s_p50"],
        store_op_s=store_round_trip_s(),
    )
    model = ScalingModel()
    scaled, terms = model.scale(measured)
    params = SimParams(
        detect_s={k: scaled[k] for k in ("crash", "hang", "nan", "straggler")},
        localize_s=scaled["localize_s"],
        restart_in_place_s=scaled["restart_in_place_s"],
        replace_node_s=scaled["replace_node_s"],
    )
    unscaled = SimParams(
        detect_s={
            "crash": measured.crash_detect_s,
            "hang": measured.silent_hang_detect_s,
            "nan": max(measured.nan_detect_steps, 1.0) * params.step_s,
            "straggler": measured.straggler_detect_s,
        },
        localize_s=measured.hang_localize_s,
        restart_in_place_s=measured.restart_in_place_s,
        replace_node_s=measured.replace_node_s,
    )
    ours, baseline = simulate(params, "controller"), simulate(params, "baseline")
    figures["sim"] = {
        "params": dict(params.__dict__),
        "sources": params.sources(),
        "scaling": {
            "campaign": dict(measured.__dict__),
            "model": dict(model.__dict__),
            "model_sources": model.sources(),
            "terms": terms,
            "doc": " ".join((ScalingModel.__doc__ or "").split()),
        },
        "controller": ours.__dict__,
        "baseline": baseline.__dict__,
        "controller_unscaled_campaign_times": simulate(unscaled, "controller").__dict__,
        "paper_ettr": 0.97,
    }
    hang_torchrun = torchrun["hang"] - torchrun_timeout_s + TORCH_DEFAULT_TIMEOUT_S
    ratios = {
        "crash_detect_p95_s": figures["crash"]["detect_s_p95"],
        "hang_detect_p95_s": figures["hang"]["detect_s_p95"],
        "nan_detect_p95_steps": figures["nan"]["detect_steps_p95"],
        "straggler_detect_p95_s": figures["straggler"]["detect_s_p95"],
        "localization_accuracy": statistics.fmean(all_blamed),
        "false_alarms": len(result["false_alarms"]),
        "torchrun_crash_detect_s": torchrun["crash"],
        "torchrun_hang_detect_s": hang_torchrun,
        "hang_detect_speedup_vs_torchrun": hang_torchrun / max(figures["hang"]["detect_s_p95"], 1e-3),
        "sim_ettr": ours.ettr,
        "sim_ettr_baseline": baseline.ettr,
        "paper_ettr": 0.97,
    }
    return {
        "config": {"quick": quick, "ranks": 4, "backend": "gloo", "injections_per_type": per_type},
        "figures": figures,
        "ratios": ratios,
        "simulated": ["sim", "sim_ettr", "sim_ettr_baseline"],
    }


def main() -> None:
    parser = standard_parser(__doc__.split("\n")[0])
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    out = asyncio.run(run(args.quick))
    emit("robustness", json_path=args.json, **out)


if __name__ == "__main__":
    main()
