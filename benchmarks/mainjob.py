"""The main job end to end: streaming vs synchronous RL on the same budget, stalls, a crash's cost.

One supervised warm start (400 steps, the job's default) runs first, here, on 2 ranks; its
checkpoint is where every arm's RL starts (``checkpoint.resume_from``), so the arms differ only in
what they measure. Each arm is then the main job (``clients.mainjob.run_job``, as ``seedctl run`` runs
it) on a fresh local stack in a subprocess, read back from its ``figures.json``:

- ``streaming``: the default streaming settings (completion ratio alpha 0.75, staleness bound eta 2);
- ``sync``: rounds wait for their slowest answer (alpha 1) and samples are at most one version old
  (eta 1) — the synchronous baseline on the same compute, RL time budget and warm start;
- ``crash``: the streaming arm with one crash injected into trainer rank 1.

``streaming_vs_sync`` is how many times sooner the streaming arm reaches each held-out accuracy than
the sync arm: the time scale k that best maps one accuracy-vs-RL-time curve onto the other (streaming's
accuracy at t against sync's at k * t), least squares over every evaluation of both, so no one noisy
evaluation decides it. Every evaluation uses the same 500 held-out prompts (binomial noise about 2
points, where 100 prompts gave 5); the policy itself still moves by 5-15 points between evaluations.
``streaming_vs_sync_at_target`` is the plain reading (noisier): sync ÷ streaming RL time to where the
curves, each evaluation averaged with its neighbours, cross the warm start's accuracy plus 75 % of the
gain both reach; ``streaming_vs_sync_samples_per_s`` the ratio of trained samples per second.
Without ``--quick`` the two arms run twice in the order streaming, sync, sync, streaming, so that a
load that drifts during the run weighs on both alike; the ratio is the geometric mean of the pairs.

Other ratios: ``acc_before`` / ``acc_after`` (streaming arm), ``minutes_to_plus10``, the trainer's and
rollout servers' idle fractions of both arms, ``stall_p95_s``, ``fault_lost_steps``. A figure an arm
could not produce is 0 in ``ratios`` and null in ``figures``. The load average is recorded at the start
and end of each arm: the machine may be shared, and a load that changes between arms skews the ratio.

``--quick``: 50 s of RL an arm: about 50 s of warm start (2 ranks) and 80 s an arm, 5 to 6 minutes in
all on 2 cores at load 5-10; the crash arm's restart adds about 30 s.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import emit, standard_parser
from clients.jobspec import JobSpec, parse_job_spec
from services.trainer.spec import RunSpec

ARMS: dict[str, dict[str, Any]] = {
    "streaming": {"completion_ratio": 0.75, "max_staleness_versions": 2},
    "sync": {"completion_ratio": 1.0, "max_staleness_versions": 1},
}
TARGET_FRACTION = 0.75
"""The target accuracy: the warm start's plus this fraction of the smaller of the two arms' gains."""
MIN_GAIN = 0.03
"""A smaller common gain is within the noise: no time-to-accuracy then."""
MAX_SCALE = 4.0
SCALE_STEPS = 200
"""Time scales tried: MAX_SCALE ** (i / SCALE_STEPS) for i in -SCALE_STEPS..SCALE_STEPS."""
MIN_OVERLAP = 8
"""Fewest evaluations a time scale must compare."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How long and how often: the quick run and the full one."""

    rl_time_budget_s: float
    eval_every_steps: int
    num_pairs: int
    crash_step: int


QUICK = Sizes(rl_time_budget_s=50, eval_every_steps=4, num_pairs=1, crash_step=8)
FULL = Sizes(rl_time_budget_s=180, eval_every_steps=5, num_pairs=2, crash_step=20)
NUM_EVAL = 500
"""Held-out prompts every evaluation uses (the task's 3-term sums have ~700 outside the warm-start set)."""


def job_dict(sizes: Sizes, **rollout: Any) -> dict[str, Any]:
    """The job spec of one arm (plain form)."""
    return {
        "name": "bench",
        "rollout": dict(rollout),
        # Start-up (stack, trainer launch, checkpoint load) takes 20-40 s; the rest is slack for a loaded box.
        "time_budget_s": sizes.rl_time_budget_s + 240,
        "trainer": {"rl_time_budget_s": sizes.rl_time_budget_s, "checkpoint_every_steps": 5},
        "task": {"num_eval": NUM_EVAL},
        "eval": {"every_steps": sizes.eval_every_steps, "num_prompts": NUM_EVAL},
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class WarmStartedJob(JobSpec):
    """The main job with RL resumed from a trainer checkpoint rather than warm-started on its own."""

    resume_from: str = ""
    """Trainer checkpoint the run resumes from (a warm start shared by several jobs)."""

    def run_config(self, *, plan_id: str) -> RunSpec:
        """The job's run config, resuming from ``resume_from``."""
        config = super().run_config(plan_id=plan_id).to_dict()
        config["checkpoint"]["resume_from"] = self.resume_from
        return RunSpec.from_dict(config)


def _warm_start_rank(rank: int, world: int, port: int, config: dict[str, Any], directory: Path) -> None:
    """One rank of the warm start (``torch.multiprocessing.spawn``); rank 0 writes ``directory/warm.json``."""
    import torch
    import torch.distributed as dist

    from services.trainer.engine import Comm, Engine

    # One thread a rank: on 2 cores shared with other work, more threads spin against each other.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        t0 = time.monotonic()
        engine = Engine(RunSpec.from_dict(config), comm=Comm(rank, world), checkpoint_dir=directory)
        num_steps = engine.warm_start()
        sft_s = time.monotonic() - t0
        accuracy, num_prompts = engine.evaluate()
        path = engine.save_checkpoint(engine.checkpoint_path(0))
        if rank == 0:
            result = {"checkpoint": str(path), "num_steps": num_steps, "num_ranks": world, "sft_s": sft_s}
            result.update(accuracy=accuracy, num_prompts=num_prompts)
            (directory / "warm.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def warm_start(spec: JobSpec, directory: Path) -> dict[str, Any]:
    """The job's supervised warm start, here on up to 2 ranks (its batches do not depend on the rank
    count): the checkpoint every arm resumes from, its held-out accuracy and the seconds it took."""
    import torch.multiprocessing

    from services.common.redis_proc import free_port

    world = min(2, len(os.sched_getaffinity(0)))
    config = spec.run_config(plan_id="").to_dict()
    config.update(num_ranks=world, num_threads=1, dataplane_plan_id="", weighthub_model="")
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    torch.multiprocessing.spawn(_warm_start_rank, args=(world, free_port(), config, directory), nprocs=world)
    return {**json.loads((directory / "warm.json").read_text()), "wall_s": time.monotonic() - t0}


def run_arm_child(argv: list[str]) -> int:
    """In the arm's own process: ``JOB.yaml RUN_DIR CHECKPOINT [FAULT]`` -> the job's exit status."""
    from clients.mainjob import FaultRequest, JobError, run_job

    job_path, run_dir, checkpoint = Path(argv[0]), Path(argv[1]), argv[2]
    base = parse_job_spec(yaml.safe_load(job_path.read_text()), str(job_path))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(JobSpec)}
    spec = WarmStartedJob(**fields, resume_from=checkpoint)
    try:
        return run_job(spec, job_path, run_dir, fault=FaultRequest.parse(argv[3]) if len(argv) > 3 else None)
    except JobError as exc:
        print(f"seedctl run: {exc}", file=sys.stderr)
        return 1


def run_arm(name: str, job: dict[str, Any], checkpoint: str, workdir: Path, fault: str = "") -> dict[str, Any]:
    """One arm as the main job in a subprocess; its figures (plus exit status, wall time, load)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    run_dir = workdir / name
    command = [
        sys.executable,
        "-c",
        "import sys; from benchmarks.mainjob import run_arm_child; sys.exit(run_arm_child(sys.argv[1:]))",
        str(path),
        str(run_dir),
        checkpoint,
    ] + ([fault] if fault else [])
    print(f"mainjob bench: arm {name} ...", file=sys.stderr, flush=True)
    load = [os.getloadavg()[0]]
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=job["time_budget_s"] + 300)
    load.append(os.getloadavg()[0])
    figures_path = run_dir / "figures.json"
    data = json.loads(figures_path.read_text()) if figures_path.exists() else {"figures": {}, "evals": []}
    out = dict(data["figures"])
    out.update(
        {
            "exit_status": done.returncode,
            "bench_wall_s": time.monotonic() - t0,
            "load_average_1m": load,
            "evals": data["evals"],
        }
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        print("\n".join(f"  {line}" for line in tail), file=sys.stderr)
    print(
        f"mainjob bench: arm {name}: exit {done.returncode} in {out['bench_wall_s']:.0f} s, "
        f"{out.get('num_rl_steps')} RL steps, acc {out.get('acc_before')} -> {out.get('acc_after')}",
        file=sys.stderr,
        flush=True,
    )
    return out


def smoothed(evals: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(RL seconds, accuracy averaged with the neighbouring evaluations) for each evaluation."""
    if not evals:
        return []
    t0 = evals[0]["t_s"]
    acc = [float(e["accuracy"]) for e in evals]
    return [
        (float(e["t_s"] - t0), sum(acc[max(i - 1, 0) : i + 2]) / len(acc[max(i - 1, 0) : i + 2]))
        for i, e in enumerate(evals)
    ]


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Seconds at which ``curve`` first reaches ``target``, interpolated between its points."""
    for (t_a, a), (t_b, b) in itertools.pairwise(curve):
        if b >= target:
            return t_a if a >= target else t_a + (t_b - t_a) * (target - a) / (b - a)
    return None


def _at(curve: list[tuple[float, float]], t: float) -> float:
    """``curve`` (points in time order) at ``t`` within its span, linearly interpolated."""
    for (t_a, a), (t_b, b) in itertools.pairwise(curve):
        if t <= t_b:
            return a if t_b == t_a else a + (b - a) * (t - t_a) / (t_b - t_a)
    return curve[-1][1]


def time_scale(fast: list[tuple[float, float]], slow: list[tuple[float, float]]) -> float | None:
    """k such that accuracy ``fast(t)`` best matches ``slow(k * t)``: how many times sooner ``fast`` reaches
    each accuracy. Least squares over every evaluation of both runs (each against the other's curve where
    they overlap), so no single noisy evaluation decides it; k from 1/4 to 4, None with too little overlap."""
    best: tuple[float, float] | None = None
    for i in range(-SCALE_STEPS, SCALE_STEPS + 1):
        k = MAX_SCALE ** (i / SCALE_STEPS)
        residuals = [a - _at(slow, k * t) for t, a in fast[1:] if k * t <= slow[-1][0]]
        residuals += [a - _at(fast, t / k) for t, a in slow[1:] if t / k <= fast[-1][0]]
        if len(residuals) < MIN_OVERLAP:
            continue
        error = sum(r * r for r in residuals) / len(residuals)
        if best is None or error < best[0]:
            best = (error, k)
    return None if best is None else best[1]


def compare(streaming: dict[str, Any], sync: dict[str, Any]) -> dict[str, Any]:
    """Time to the same accuracy of one streaming and one sync arm (smoothed curves)."""
    curves = {"streaming": smoothed(streaming["evals"]), "sync": smoothed(sync["evals"])}
    out: dict[str, Any] = {"curves": curves}
    if not all(len(c) >= 3 for c in curves.values()):
        return out
    start = (streaming["evals"][0]["accuracy"] + sync["evals"][0]["accuracy"]) / 2
    gain = min(max(a for _, a in c) for c in curves.values()) - start
    out.update(acc_start=start, common_gain=gain)
    # The same RL time for both: where the shorter curve ends.
    end = min(c[-1][0] for c in curves.values())
    out["acc_at_equal_time"] = {name: next(a for t, a in reversed(c) if t <= end) for name, c in curves.items()}
    if gain < MIN_GAIN:
        return out
    raw = {
        name: [(float(e["t_s"] - arm["evals"][0]["t_s"]), float(e["accuracy"])) for e in arm["evals"]]
        for name, arm in (("streaming", streaming), ("sync", sync))
    }
    out["time_scale"] = time_scale(raw["streaming"], raw["sync"])
    for key, fraction in (("at_target", TARGET_FRACTION), ("at_half_gain", 0.5)):
        target = start + fraction * gain
        times = {name: time_to(c, target) for name, c in curves.items()}
        ratio = times["sync"] / times["streaming"] if times["sync"] and times["streaming"] else None
        out[key] = {"target_accuracy": target, "rl_s": times, "sync_over_streaming": ratio}
    return out


def _geomean(values: list[float | None]) -> float | None:
    if not values or any(not v for v in values):
        return None
    return math.exp(sum(math.log(v) for v in values if v) / len(values))


def _mean_idle(arm: dict[str, Any]) -> float | None:
    idle = arm.get("rollout_idle_fraction") or {}
    return sum(idle.values()) / len(idle) if idle else None


def main() -> None:
    args = standard_parser(__doc__ or "").parse_args()
    sizes = QUICK if args.quick else FULL
    t0, load_start = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mainjob-") as tmp:
        workdir = Path(tmp)
        spec = parse_job_spec(job_dict(sizes, **ARMS["streaming"]))
        print(f"mainjob bench: warm start ({spec.warm_start.num_steps} steps) ...", file=sys.stderr, flush=True)
        warm = warm_start(spec, workdir / "warm-start")
        print(
            f"mainjob bench: warm start: {warm['sft_s']:.0f} s, held-out accuracy {warm['accuracy']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        order = ["streaming", "sync"]
        runs: dict[str, list[dict[str, Any]]] = {"streaming": [], "sync": []}
        for pair in range(sizes.num_pairs):
            for name in order if pair % 2 == 0 else order[::-1]:
                runs[name].append(run_arm(f"{name}-{pair}", job_dict(sizes, **ARMS[name]), warm["checkpoint"], workdir))
        crash_job = job_dict(sizes, **ARMS["streaming"])
        crash = run_arm("crash", crash_job, warm["checkpoint"], workdir, fault=f"crash@{sizes.crash_step}")
    pairs = [compare(a, b) for a, b in zip(runs["streaming"], runs["sync"], strict=True)]
    streaming = runs["streaming"][0]
    ratio = _geomean([p.get("time_scale") for p in pairs])
    ratio_target = _geomean([p.get("at_target", {}).get("sync_over_streaming") for p in pairs])
    throughput = _geomean(
        [
            (a.get("samples_per_s") or 0.0) / b["samples_per_s"] if b.get("samples_per_s") else None
            for a, b in zip(runs["streaming"], runs["sync"], strict=True)
        ]
    )
    # Steps the restart redid (from the checkpoint to the crash); without a restart, the steps never made.
    lost = crash.get("fault_lost_steps")
    if not crash.get("recoveries"):
        lost = max(int(streaming.get("num_rl_steps") or 0) - int(crash.get("num_rl_steps") or 0), 0)
    bench_wall_s = time.monotonic() - t0
    per_arm = {
        name: {
            "rl_steps_per_minute": [
                60 * int(a.get("num_rl_steps") or 0) / a["rl_s"] if a.get("rl_s") else None for a in arms
            ],
            "trainer_idle_fraction": [a.get("trainer_idle_fraction") for a in arms],
            "rollout_idle_fraction": [_mean_idle(a) for a in arms],
            "samples_per_s": [a.get("samples_per_s") for a in arms],
        }
        for name, arms in runs.items()
    }
    figures = {
        "warm_start": warm,
        "arms": {
            **{f"{name}-{i}": arm for name, arms in runs.items() for i, arm in enumerate(arms)},
            "crash": crash,
        },
        "pairs": pairs,
        "per_arm": per_arm,
        # After start-up: RL, the restart, the report (start-up times vary with the load).
        "crash_extra_wall_s": _rl_wall_s(crash) - _rl_wall_s(streaming),
        "crash_fewer_rl_steps": int(streaming.get("num_rl_steps") or 0) - int(crash.get("num_rl_steps") or 0),
        "crash_run_end_state": crash.get("end_state"),
        "crash_recovery_s": crash.get("fault_recovery_s"),
        "crash_acc_after": crash.get("acc_after"),
        "bench_wall_s": bench_wall_s,
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0], "num_cpus": os.cpu_count()},
    }

    def first(values: list[Any]) -> float:
        return float(values[0] or 0.0) if values else 0.0

    ratios = {
        "acc_before": streaming.get("acc_before") or 0.0,
        "acc_after": streaming.get("acc_after") or 0.0,
        "minutes_to_plus10": streaming.get("minutes_to_plus10") or 0.0,
        "streaming_vs_sync": ratio or 0.0,
        "streaming_vs_sync_at_target": ratio_target or 0.0,
        "streaming_vs_sync_samples_per_s": throughput or 0.0,
        "trainer_idle_streaming": first(per_arm["streaming"]["trainer_idle_fraction"]),
        "trainer_idle_sync": first(per_arm["sync"]["trainer_idle_fraction"]),
        "rollout_idle_streaming": first(per_arm["streaming"]["rollout_idle_fraction"]),
        "rollout_idle_sync": first(per_arm["sync"]["rollout_idle_fraction"]),
        "stall_p95_s": streaming.get("stall_p95_s") or 0.0,
        "fault_lost_steps": lost or 0,
        "bench_minutes": bench_wall_s / 60,
    }
    emit(
        "mainjob",
        config={"quick": args.quick, **dataclasses.asdict(sizes), "num_eval": NUM_EVAL, "arms": ARMS},
        figures=figures,
        ratios=ratios,
        json_path=args.json,
    )


def _rl_wall_s(arm: dict[str, Any]) -> float:
    return float(arm.get("wall_s") or 0.0) - float(arm.get("startup_and_warm_start_s") or 0.0)


if __name__ == "__main__":
    main()
