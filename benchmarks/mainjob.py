"""The main job end to end: streaming vs synchronous RL on the same budget, stalls, a crash's cost.

One supervised warm start (400 steps, the job's default) runs first, here, on 2 ranks; its
checkpoint is where every arm's RL starts (``checkpoint.resume_from``), with the same seed, so the
arms differ only in how they generate. One local stack then serves every arm in turn (each arm is
the main job as ``seedctl run --stack existing`` runs it: its own data-plane plan, trainer run and
monitor job), read back from the arm's ``figures.json`` and the trainer's ``steps.jsonl``:

- ``streaming``: the job's streaming defaults on 2 rollout servers: a round closes when alpha = 0.75
  of its answers are done, the rest continue under newer versions (partial rollout); samples at most
  eta = 2 versions old; an experience buffer of ``rollout.buffered_batches`` training batches;
- ``sync``: synchronous RL as a user runs it on one box (``rollout.num_servers: 0``): the trainer's
  ranks generate each batch with the policy they train (the rollout servers' decode code), wait for
  every answer of it (alpha 1) and train; no version lag but for the groups that the last fill round
  made beyond the batch (dynamic sampling), used by the next step instead of being thrown away;
- ``crash``: the streaming arm, shorter, with one crash injected into trainer rank 1.

``streaming_vs_sync`` is sync's RL time to the same held-out accuracy over streaming's, on fitted
curves: each arm's evaluations (500 held-out prompts each; the policy still swings 5-15 points between
them) are fitted with ``start + gain * (1 - exp(-t / tau))`` and the target is the start plus 75 % of
the smaller gain the two fits reached within their runs, a level both reach. Beside it: the same on
the training loop's own clock (``_train_clock``: evaluations and checkpoints left out), on the stack's
CPU seconds (``_cpu``: the compute each arm used, whatever else the shared machine ran), per RL step
(``_per_step``: sample efficiency), the least-squares time scale between the two raw curves
(``_time_scale``), the plain reading of the smoothed curves at the target (``_at_target``) and the
throughput ratios. Without
``--quick`` the two arms run twice, in the order sync, streaming, streaming, sync, so that a load
that drifts weighs on both alike; each ratio is the geometric mean of the pairs.

``figures.arms.*.breakdown`` is one RL step of each arm: wall time per step, waiting for (or, sync,
generating) the batch, forward/backward, optimiser, publishing, the time between steps (evaluations,
checkpoints), the samples' staleness, and the share of the samples the rollout servers generated
that were trained on; ``cpu`` is the stack's CPU seconds and the whole machine's over the arm, and
``cpu_per_step_by_process`` each of the stack's processes' CPU seconds per RL step between the first
and the last evaluation (``trainer/ranks``: torchrun and the ranks; no start-up): where the compute goes.

Other ratios: ``acc_before`` / ``acc_after`` (streaming arm), ``minutes_to_plus10``, trainer and
rollout idle fractions (sync: the share of each step the ranks were not generating),
``stall_p95_s``, ``fault_lost_steps``, ``fault_recovered``. A figure an arm could not produce is 0 in
``ratios`` and null in ``figures``. The load average is recorded at the start and end of each arm.

``--quick``: 50 s of RL an arm (25 s for the crash arm): 28-100 s of warm start, 6-16 s of stack
start-up, 60-75 s an arm: 3.4 minutes quiet (load 2-3), up to 5.5 at a load average of 26 (it was
6-7 minutes with a stack started and stopped for each arm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import emit, standard_parser
from clients.jobspec import JobSpec, parse_job_spec
from clients.mainjob import ExistingStack
from services.trainer.spec import RunSpec

ARMS: dict[str, dict[str, Any]] = {
    # The job's streaming defaults: rounds close at alpha 0.75, partials continue under newer versions,
    # samples at most 2 versions old, an experience buffer of one batch (and one group).
    "streaming": {"num_servers": 2, "completion_ratio": 0.75, "max_staleness_versions": 2, "buffered_batches": 1},
    # Synchronous RL: the trainer's ranks generate each batch with the policy they train, wait for every
    # answer of it (alpha 1), then train (no version lag; eta 1 only lets the groups a fill round made
    # beyond the batch, for dynamic sampling, be used by the next step rather than thrown away).
    "sync": {"num_servers": 0, "completion_ratio": 1.0, "max_staleness_versions": 1},
}
SYNC_MODEL = "policy-sync"
"""The sync arm publishes under its own weight-hub name: the rollout servers, idle in that arm, follow
``policy`` and would otherwise fetch every version it publishes."""
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
    crash_rl_time_budget_s: float


QUICK = Sizes(rl_time_budget_s=50, eval_every_steps=4, num_pairs=1, crash_step=8, crash_rl_time_budget_s=25)
FULL = Sizes(rl_time_budget_s=180, eval_every_steps=5, num_pairs=2, crash_step=20, crash_rl_time_budget_s=90)
NUM_EVAL = 500
"""Held-out prompts every evaluation uses (the task's 3-term sums have ~700 outside the warm-start set)."""


def job_dict(sizes: Sizes, rl_time_budget_s: float = 0.0, **rollout: Any) -> dict[str, Any]:
    """The job spec of one arm (plain form)."""
    budget = rl_time_budget_s or sizes.rl_time_budget_s
    return {
        "name": "bench",
        "rollout": dict(rollout),
        # Start-up on the shared stack (trainer launch, checkpoint load) takes 5-15 s; the rest is slack.
        "time_budget_s": budget + 180,
        "trainer": {"rl_time_budget_s": budget, "checkpoint_every_steps": 5},
        "task": {"num_eval": NUM_EVAL},
        "eval": {"every_steps": sizes.eval_every_steps, "num_prompts": NUM_EVAL},
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class WarmStartedJob(JobSpec):
    """The main job with RL resumed from a trainer checkpoint rather than warm-started on its own."""

    resume_from: str = ""
    """Trainer checkpoint the run resumes from (a warm start shared by several jobs)."""
    weighthub_model: str = ""
    """Weight-hub name the run publishes under; empty for the job's own."""

    def run_config(self, *, plan_id: str) -> RunSpec:
        """The job's run config, resuming from ``resume_from``."""
        config = super().run_config(plan_id=plan_id).to_dict()
        config["checkpoint"]["resume_from"] = self.resume_from
        if self.weighthub_model:
            config["weighthub_model"] = self.weighthub_model
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


def start_stack(spec: JobSpec, stack_dir: Path) -> tuple[Any, ExistingStack]:
    """One local stack for every arm (each arm is its own plan, trainer run and monitor job on it), its
    trainer polling ``stack_dir/fault.json`` so that the crash arm can arm a fault there."""
    from clients.mainjob import SERVICES, service_env
    from clients.seedctl import up

    stack_dir.mkdir(parents=True, exist_ok=True)
    os.environ.update(service_env(spec, stack_dir))
    fault_file = (stack_dir / "fault.json").resolve()
    os.environ["SEEDSTACK_FAULT_FILE"] = str(fault_file)
    with contextlib.redirect_stdout(sys.stderr):
        state = up(stack_dir, spec.startup_timeout_s, list(SERVICES), {"rollout": spec.rollout.num_servers})
    return state, ExistingStack(state.redis_url, stack_dir / "traces", fault_file)


def run_arm(
    name: str,
    job: dict[str, Any],
    checkpoint: str,
    workdir: Path,
    stack: ExistingStack,
    stack_pids: list[int],
    *,
    names: dict[int, str] | None = None,
    fault: str = "",
    weighthub_model: str = "",
) -> dict[str, Any]:
    """One arm as the main job (``seedctl run --stack existing``) on the shared stack; its figures (plus
    exit status, wall time, load) and the trainer's per-step figures."""
    from clients.mainjob import FaultRequest, JobError, run_job

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    run_dir = workdir / name
    base = parse_job_spec(job, str(path))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(JobSpec)}
    spec = WarmStartedJob(**fields, resume_from=checkpoint, weighthub_model=weighthub_model)
    print(f"mainjob bench: arm {name} ...", file=sys.stderr, flush=True)
    load = [os.getloadavg()[0]]
    t0, cpu0 = time.monotonic(), cpu_seconds(stack_pids)
    sampler = CpuSampler(stack_pids, names=names)
    sampler.start()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            code = run_job(
                spec, path, run_dir, fault=FaultRequest.parse(fault) if fault else None, out=sys.stderr, stack=stack
            )
    except JobError as exc:
        print(f"mainjob bench: arm {name}: {exc}", file=sys.stderr)
        code = 1
    load.append(os.getloadavg()[0])
    sampler.stop()
    cpu1 = cpu_seconds(stack_pids)
    figures_path = run_dir / "figures.json"
    data = json.loads(figures_path.read_text()) if figures_path.exists() else {"figures": {}, "evals": []}
    out = dict(data["figures"])
    steps_file = Path(str(data.get("run", {}).get("run_dir", ""))) / "steps.jsonl"
    steps = (
        [json.loads(line) for line in steps_file.read_text().splitlines() if line.strip()]
        if steps_file.is_file()
        else []
    )
    out.update(
        {
            "exit_status": code,
            "bench_wall_s": time.monotonic() - t0,
            "load_average_1m": load,
            "evals": data["evals"],
            "breakdown": breakdown(out, steps),
            "cpu": {
                "stack_cpu_s": cpu1["stack"] - cpu0["stack"],
                "machine_busy_cpu_s": cpu1["machine_busy"] - cpu0["machine_busy"],
                "wall_s": time.monotonic() - t0,
                "num_cpus": os.cpu_count(),
            },
            "train_clock": train_clock(data["evals"], steps),
            "cpu_clock": sampler.clock(data["evals"], float(data.get("started_unix_s") or 0.0)),
            "cpu_per_step_by_process": sampler.per_step(data["evals"], float(data.get("started_unix_s") or 0.0)),
        }
    )
    print(
        f"mainjob bench: arm {name}: exit {code} in {out['bench_wall_s']:.0f} s, "
        f"{out.get('num_rl_steps')} RL steps, acc {out.get('acc_before')} -> {out.get('acc_after')}",
        file=sys.stderr,
        flush=True,
    )
    return out


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the stack (its processes, their children alive or ended, such as the
    trainer's ranks) and by the whole machine (every process: other work on a shared box too)."""
    import psutil

    stack = sum(process_cpu_seconds(pids).values())
    machine = psutil.cpu_times()
    return {"stack": stack, "machine_busy": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)}


def process_cpu_seconds(pids: list[int], names: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds so far of each of the stack's processes (``names[pid]``, else the pid) with its ended
    children; its live descendants under ``NAME/ranks`` for the trainer (torchrun and its ranks), else
    ``NAME/children`` (the data plane's loader workers)."""
    import psutil

    out: dict[str, float] = {}
    for pid in pids:
        name = (names or {}).get(pid, str(pid))
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            out[name] = out.get(name, 0.0) + t.user + t.system + t.children_user + t.children_system
            below = f"{name}/ranks" if name == "trainer" else f"{name}/children"
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    # A live child's own time and its ended children's (torchrun's ranks before it ends).
                    c = child.cpu_times()
                    out[below] = out.get(below, 0.0) + c.user + c.system + c.children_user + c.children_system
        except psutil.Error:
            continue
    return out


class CpuSampler:
    """The stack's CPU seconds, in all and per process, sampled every half second in a thread while an arm
    runs."""

    def __init__(self, pids: list[int], every_s: float = 0.5, names: dict[int, str] | None = None) -> None:
        import threading

        self.pids = pids
        self.names = names or {}
        self.every_s = every_s
        self.by_process: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.by_process.append((time.time(), process_cpu_seconds(self.pids, self.names)))
            self._stop.wait(self.every_s)

    @property
    def samples(self) -> list[tuple[float, float]]:
        """(unix time, the stack's CPU seconds in all) of each sample."""
        return [(t, sum(per_process.values())) for t, per_process in self.by_process]

    def clock(self, evals: list[dict[str, Any]], started_unix_s: float) -> list[tuple[float, float]]:
        """(stack CPU seconds since the first evaluation, accuracy) of each evaluation: accuracy against
        compute spent, whatever else the machine ran meanwhile."""
        samples = self.samples
        if not evals or not started_unix_s or len(samples) < 2:
            return []

        def at(unix_s: float) -> float:
            return float(_at(samples, min(max(unix_s, samples[0][0]), samples[-1][0])))

        base = at(started_unix_s + float(evals[0]["t_s"]))
        return [(at(started_unix_s + float(e["t_s"])) - base, float(e["accuracy"])) for e in evals]

    def per_step(self, evals: list[dict[str, Any]], started_unix_s: float) -> dict[str, float]:
        """CPU seconds per RL step of each process from the first evaluation to the last (the RL loop:
        steps, their evaluations and checkpoints; no start-up): where an arm's compute goes."""
        if len(evals) < 2 or not started_unix_s or len(self.by_process) < 2:
            return {}
        num_steps = int(evals[-1]["step"]) - int(evals[0]["step"])

        def nearest(unix_s: float) -> dict[str, float]:
            return min(self.by_process, key=lambda sample: abs(sample[0] - unix_s))[1]

        first = nearest(started_unix_s + float(evals[0]["t_s"]))
        last = nearest(started_unix_s + float(evals[-1]["t_s"]))
        if num_steps <= 0:
            return {}
        return {name: (cpu - first.get(name, 0.0)) / num_steps for name, cpu in sorted(last.items())}


def breakdown(figures: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One RL step of an arm, on average: where its wall time goes (the trainer's own timings), how
    stale its samples were, and how many generated samples were trained on."""
    if not steps:
        return {}
    n = len(steps)

    def mean(key: str) -> float:
        return sum(float(s.get(key, 0.0)) for s in steps) / n

    wall_per_step = float(figures.get("rl_s") or 0.0) / n
    step_s, publish_s = mean("step_time_s"), mean("publish_s")
    trained = sum(int(s.get("num_samples", 0)) for s in steps)
    staleness = [sum(float(s.get(f"staleness_{k}", 0.0)) for s in steps) / max(trained, 1) for k in range(4)]
    return {
        "num_steps": n,
        "wall_per_step_s": wall_per_step,
        # data_wait: NextBatch (streaming), or generating the batch and NextBatch (sync, colocated).
        "data_wait_s": mean("data_wait_s"),
        "forward_backward_s": mean("forward_backward_s"),
        "optimizer_s": mean("optimizer_s"),
        "other_step_s": step_s - mean("data_wait_s") - mean("forward_backward_s") - mean("optimizer_s"),
        "publish_s": publish_s,
        # Evaluations (every eval.every_steps), checkpoints, status reports between steps.
        "between_steps_s": wall_per_step - step_s - publish_s,
        "staleness_fractions_0_to_3": staleness,
        "samples_trained": trained,
    }


def count_generated(arm: dict[str, Any], finished_before: int) -> int:
    """Record in ``arm``'s breakdown how many samples the rollout servers finished during it (their
    counters run over the shared stack's life) and which share of them was trained on; the new total."""
    total = sum(int(r.get("num_samples_finished", 0)) for r in (arm.get("rollout_final") or {}).values())
    b = arm.get("breakdown") or {}
    if b and total > finished_before:
        b["samples_generated_by_rollout_servers"] = total - finished_before
        b["trained_of_generated"] = b["samples_trained"] / (total - finished_before)
    return max(total, finished_before)


def train_clock(evals: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(seconds of training loop, accuracy) of each evaluation: the steps' own time (batch, update,
    publish) up to the evaluated step, without the evaluations and checkpoints between steps."""
    cumulative = {0: 0.0}
    total = 0.0
    for s in sorted(steps, key=lambda s: int(s["step"])):
        total += float(s.get("step_time_s", 0.0)) + float(s.get("publish_s", 0.0))
        cumulative[int(s["step"])] = total
    return [(cumulative[int(e["step"])], float(e["accuracy"])) for e in evals if int(e["step"]) in cumulative]


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


def fit_curve(points: list[tuple[float, float]], start: float) -> dict[str, float] | None:
    """The saturating curve ``start + gain * (1 - exp(-t / tau))`` closest (least squares) to the points:
    every evaluation of the arm shapes it, so one evaluation 5-15 points off moves it little. Its gain,
    time constant tau (on the points' clock), the RMS residual; None with fewer than 4 points."""
    if len(points) < 4 or points[-1][0] <= 0:
        return None
    best: dict[str, float] | None = None
    span = points[-1][0]
    for i in range(-SCALE_STEPS, SCALE_STEPS + 1):
        tau = span * 10 ** (2 * i / SCALE_STEPS)  # span / 100 .. span * 100
        xs = [1.0 - math.exp(-t / tau) for t, _ in points]
        xx = sum(x * x for x in xs)
        if xx <= 0:
            continue
        gain = sum(x * (a - start) for x, (_, a) in zip(xs, points, strict=True)) / xx
        error = sum((start + gain * x - a) ** 2 for x, (_, a) in zip(xs, points, strict=True)) / len(points)
        if best is None or error < best["mse"]:
            best = {"gain": gain, "tau": tau, "mse": error}
    if best is None:
        return None
    # What the fit says the arm reached by its last evaluation (a near-straight curve fits a far
    # asymptote: the gain alone would put a common target beyond what either arm reached).
    reached = best["gain"] * (1.0 - math.exp(-span / best["tau"]))
    return {"gain": best["gain"], "tau": best["tau"], "reached": reached, "rms": math.sqrt(best["mse"])}


def fitted_time_to(fit: dict[str, float], gain: float) -> float | None:
    """When the fitted curve has gained ``gain``; None when it never does."""
    if fit["gain"] <= 0 or gain >= fit["gain"]:
        return None
    return -fit["tau"] * math.log(1.0 - gain / fit["gain"])


def compare_fitted(curves: dict[str, list[tuple[float, float]]], start: float) -> dict[str, Any]:
    """Time to the same accuracy on fitted curves: the target is the start plus TARGET_FRACTION of the
    smaller gain the fits reached within their runs (a level both arms reach); sync's time to it over
    streaming's."""
    fits = {name: fit_curve(points, start) for name, points in curves.items()}
    out: dict[str, Any] = {"fits": fits}
    if any(f is None or f["reached"] < MIN_GAIN for f in fits.values()):
        return out
    gain = TARGET_FRACTION * min(f["reached"] for f in fits.values() if f is not None)
    times = {name: fitted_time_to(f, gain) for name, f in fits.items() if f is not None}
    out.update(target_accuracy=start + gain, time_to_target=times)
    if times.get("sync") and times.get("streaming"):
        out["sync_over_streaming"] = times["sync"] / times["streaming"]  # type: ignore[operator]
    return out


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
    out["fitted"] = compare_fitted(raw, start)
    out["fitted_per_step"] = compare_fitted(
        {
            name: [(float(e["step"]), float(e["accuracy"])) for e in arm["evals"]]
            for name, arm in (("streaming", streaming), ("sync", sync))
        },
        start,
    )
    # The same fit on the training loop's own clock (evaluations and checkpoints left out), and per RL
    # step (sample efficiency: below 1 when streaming needs more steps than sync for the same accuracy).
    for clock in ("train_clock", "cpu_clock"):
        if streaming.get(clock) and sync.get(clock):
            points = {
                "streaming": [(float(t), float(a)) for t, a in streaming[clock]],
                "sync": [(float(t), float(a)) for t, a in sync[clock]],
            }
            out[f"time_scale_{clock}"] = time_scale(points["streaming"], points["sync"])
            out[f"fitted_{clock}"] = compare_fitted(points, start)
    out["step_scale"] = time_scale(
        [(float(e["step"]), float(e["accuracy"])) for e in streaming["evals"]],
        [(float(e["step"]), float(e["accuracy"])) for e in sync["evals"]],
    )
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


def main() -> None:
    parser = standard_parser(__doc__ or "")
    parser.add_argument("--keep-dir", type=Path, metavar="DIR", help="keep the arms' run directories here")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    t0, load_start = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mainjob-") as tmp:
        workdir = Path(tmp) if args.keep_dir is None else args.keep_dir
        spec = parse_job_spec(job_dict(sizes, **ARMS["streaming"]))
        print(f"mainjob bench: warm start ({spec.warm_start.num_steps} steps) ...", file=sys.stderr, flush=True)
        warm = warm_start(spec, workdir / "warm-start")
        print(
            f"mainjob bench: warm start: {warm['sft_s']:.0f} s, held-out accuracy {warm['accuracy']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        stack_t0 = time.monotonic()
        state, stack = start_stack(spec, workdir / "stack")
        stack_up_s = time.monotonic() - stack_t0
        pids = [p.pid for p in state.processes()]
        names = {p.pid: p.name for p in state.processes()}
        try:
            # Sync first: until a streaming arm starts them, the rollout servers follow no model.
            order = ["sync", "streaming"]
            runs: dict[str, list[dict[str, Any]]] = {"streaming": [], "sync": []}
            finished = 0
            for pair in range(sizes.num_pairs):
                for name in order if pair % 2 == 0 else order[::-1]:
                    arm = run_arm(
                        f"{name}-{pair}",
                        job_dict(sizes, **ARMS[name]),
                        warm["checkpoint"],
                        workdir,
                        stack,
                        pids,
                        names=names,
                        weighthub_model=SYNC_MODEL if name == "sync" else "",
                    )
                    finished = count_generated(arm, finished)
                    runs[name].append(arm)
            crash_job = job_dict(sizes, sizes.crash_rl_time_budget_s, **ARMS["streaming"])
            crash = run_arm(
                "crash",
                crash_job,
                warm["checkpoint"],
                workdir,
                stack,
                pids,
                names=names,
                fault=f"crash@{sizes.crash_step}",
            )
            count_generated(crash, finished)
        finally:
            from clients.seedctl import stop_processes

            stop_processes(state.processes())
    pairs = [compare(a, b) for a, b in zip(runs["streaming"], runs["sync"], strict=True)]
    streaming = runs["streaming"][0]
    ratio = _geomean([p.get("fitted", {}).get("sync_over_streaming") for p in pairs])
    ratio_time_scale = _geomean([p.get("time_scale") for p in pairs])
    ratio_train_clock = _geomean([p.get("fitted_train_clock", {}).get("sync_over_streaming") for p in pairs])
    ratio_cpu = _geomean([p.get("fitted_cpu_clock", {}).get("sync_over_streaming") for p in pairs])
    ratio_steps = _geomean([p.get("fitted_per_step", {}).get("sync_over_streaming") for p in pairs])
    ratio_target = _geomean([p.get("at_target", {}).get("sync_over_streaming") for p in pairs])
    throughput = _geomean(
        [
            (a.get("samples_per_s") or 0.0) / b["samples_per_s"] if b.get("samples_per_s") else None
            for a, b in zip(runs["streaming"], runs["sync"], strict=True)
        ]
    )
    steps_per_s = _geomean(
        [
            (int(a.get("num_rl_steps") or 0) / a["rl_s"]) / (int(b.get("num_rl_steps") or 0) / b["rl_s"])
            if a.get("rl_s") and b.get("rl_s") and b.get("num_rl_steps")
            else None
            for a, b in zip(runs["streaming"], runs["sync"], strict=True)
        ]
    )
    bench_wall_s = time.monotonic() - t0
    per_arm = {
        name: {
            "rl_steps_per_minute": [
                60 * int(a.get("num_rl_steps") or 0) / a["rl_s"] if a.get("rl_s") else None for a in arms
            ],
            "trainer_idle_fraction": [a.get("trainer_idle_fraction") for a in arms],
            "rollout_idle_fraction": [_rollout_idle(a) for a in arms],
            "samples_per_s": [a.get("samples_per_s") for a in arms],
        }
        for name, arms in runs.items()
    }
    figures = {
        "warm_start": warm,
        "stack_up_s": stack_up_s,
        "arms": {
            **{f"{name}-{i}": arm for name, arms in runs.items() for i, arm in enumerate(arms)},
            "crash": crash,
        },
        "pairs": pairs,
        "per_arm": per_arm,
        # RL wall time past the RL budget (the restart, the report), the crash arm's less the clean one's.
        "crash_extra_wall_s": _rl_wall_s(crash) - _rl_wall_s(streaming),
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
        "streaming_vs_sync_time_scale": ratio_time_scale or 0.0,
        "streaming_vs_sync_at_target": ratio_target or 0.0,
        "streaming_vs_sync_train_clock": ratio_train_clock or 0.0,
        "streaming_vs_sync_cpu": ratio_cpu or 0.0,
        "streaming_vs_sync_per_step": ratio_steps or 0.0,
        "streaming_vs_sync_steps_per_s": steps_per_s or 0.0,
        "streaming_vs_sync_samples_per_s": throughput or 0.0,
        "trainer_idle_streaming": first(per_arm["streaming"]["trainer_idle_fraction"]),
        "trainer_idle_sync": first(per_arm["sync"]["trainer_idle_fraction"]),
        "rollout_idle_streaming": first(per_arm["streaming"]["rollout_idle_fraction"]),
        "rollout_idle_sync": first(per_arm["sync"]["rollout_idle_fraction"]),
        "stall_p95_s": streaming.get("stall_p95_s") or 0.0,
        "fault_lost_steps": int(crash.get("fault_lost_steps") or 0) if crash.get("recoveries") else 0,
        "fault_recovered": int(bool(crash.get("recoveries")) and crash.get("end_state") == "COMPLETED"),
        "bench_minutes": bench_wall_s / 60,
    }
    emit(
        "mainjob",
        config={"quick": args.quick, **dataclasses.asdict(sizes), "num_eval": NUM_EVAL, "arms": ARMS},
        figures=figures,
        ratios=ratios,
        json_path=args.json,
    )


def _rollout_idle(arm: dict[str, Any]) -> float | None:
    """Mean idle fraction of the rollout servers; for the sync arm (the ranks generate) the share of
    each step the ranks spent not generating."""
    idle = arm.get("rollout_idle_fraction") or {}
    if idle:
        return sum(idle.values()) / len(idle)
    b = arm.get("breakdown") or {}
    step_s = b.get("data_wait_s", 0.0) + b.get("forward_backward_s", 0.0) + b.get("optimizer_s", 0.0)
    return 1.0 - b["data_wait_s"] / step_s if step_s else None


def _rl_wall_s(arm: dict[str, Any]) -> float:
    """RL wall time past the arm's RL budget."""
    rl_s = float(arm.get("wall_s") or 0.0) - float(arm.get("startup_and_warm_start_s") or 0.0)
    return rl_s - float(arm.get("rl_time_budget_s") or 0.0)


if __name__ == "__main__":
    main()
