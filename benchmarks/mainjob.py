"""The main job end to end: streaming vs synchronous RL on the same budget, stalls, a crash's cost.

Each arm is one ``seedctl run`` of the same job spec on a fresh local stack (subprocess), read back
from its ``figures.json``:

- ``streaming``: the default streaming settings (completion ratio alpha 0.75, staleness bound eta 2);
- ``sync``: rounds wait for their slowest answer (alpha 1) and samples are at most one version old
  (eta 1) — the synchronous baseline on the same compute and RL time budget;
- ``crash``: the streaming arm with one crash injected into trainer rank 1.

Ratios: ``acc_before`` / ``acc_after`` (streaming arm), ``minutes_to_plus10``, ``streaming_vs_sync``
(sync ÷ streaming RL time to the accuracy both reached), ``stall_p95_s``, ``fault_lost_steps``.
A figure an arm could not produce is 0 in ``ratios`` and null in ``figures``.

``--quick``: each arm the default warm start, then 70 s of RL with 100 held-out prompts every 5
steps: long enough to gain more than 10 points (about 3 minutes an arm on 2 loaded cores). The load
average at the start and end is recorded: the arms run one after the other, so a load that changes
between them skews ``streaming_vs_sync``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import emit, standard_parser


def _job(quick: bool, **rollout: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "bench", "rollout": dict(rollout)}
    if quick:
        # Sized to learn, not only to run: the default warm start (a shorter one starts RL too weak to
        # move: 300 steps gave 27 % held out and +8 points in 50 s of RL, 120 steps 5 % and +2.5), then
        # 70 s of RL, which gains well over 10 points (35 % -> 60 % in 60 s on the loaded 2 cores). A
        # smaller held-out set evaluated every 5 steps gives time-to-accuracy a finer grain.
        spec.update(
            {
                "time_budget_s": 270,
                "trainer": {"rl_time_budget_s": 70, "checkpoint_every_steps": 5},
                "task": {"num_eval": 100, "num_rl_prompts": 5000},
                "eval": {"every_steps": 5, "num_prompts": 100},
            }
        )
    return spec


def run_arm(name: str, job: dict[str, Any], workdir: Path, fault: str = "") -> dict[str, Any]:
    """One ``seedctl run``; its figures (plus the exit status and wall time)."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    run_dir = workdir / name
    command = [sys.executable, "-m", "clients.seedctl", "--run-dir", str(run_dir), "run", str(path)]
    if fault:
        command += ["--inject-fault", fault]
    print(f"mainjob bench: arm {name} ...", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    figures_path = run_dir / "figures.json"
    data = json.loads(figures_path.read_text()) if figures_path.exists() else {"figures": {}, "evals": []}
    out = dict(data["figures"])
    out.update({"exit_status": done.returncode, "bench_wall_s": time.monotonic() - t0, "evals": data["evals"]})
    print(
        f"mainjob bench: arm {name}: exit {done.returncode}, acc {out.get('acc_before')} -> {out.get('acc_after')}",
        file=sys.stderr,
        flush=True,
    )
    return out


def _rl_wall_s(arm: dict[str, Any]) -> float:
    return float(arm.get("wall_s") or 0.0) - float(arm.get("startup_and_warm_start_s") or 0.0)


def minutes_to(evals: list[dict[str, Any]], target: float) -> float | None:
    """RL minutes from the first evaluation to the first one at or above ``target``."""
    if not evals:
        return None
    for e in evals[1:]:
        if e["accuracy"] >= target:
            return float(e["t_s"] - evals[0]["t_s"]) / 60
    return None


def main() -> None:
    args = standard_parser(__doc__ or "").parse_args()
    t0, load_start = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mainjob-") as tmp:
        workdir = Path(tmp)
        streaming = run_arm("streaming", _job(args.quick, completion_ratio=0.75, max_staleness_versions=2), workdir)
        sync = run_arm("sync", _job(args.quick, completion_ratio=1.0, max_staleness_versions=1), workdir)
        crash = run_arm(
            "crash",
            _job(args.quick, completion_ratio=0.75, max_staleness_versions=2),
            workdir,
            fault="crash@8" if args.quick else "crash@20",
        )
    reached = [a["acc_best"] for a in (streaming, sync) if a.get("acc_best") is not None]
    target = min(reached) if len(reached) == 2 else None
    t_stream = minutes_to(streaming["evals"], target) if target is not None else None
    t_sync = minutes_to(sync["evals"], target) if target is not None else None
    # Steps the restart redid (from the checkpoint to the crash); without a restart, the steps never made.
    lost = crash.get("fault_lost_steps")
    if not crash.get("recoveries"):
        lost = max(int(streaming.get("num_rl_steps") or 0) - int(crash.get("num_rl_steps") or 0), 0)
    figures = {
        "arms": {"streaming": streaming, "sync": sync, "crash": crash},
        "target_accuracy": target,
        "streaming_minutes_to_target": t_stream,
        "sync_minutes_to_target": t_sync,
        # After start-up and warm start: RL, the restart, the report (start-up times vary with the load).
        "crash_extra_wall_s": _rl_wall_s(crash) - _rl_wall_s(streaming),
        "crash_fewer_rl_steps": int(streaming.get("num_rl_steps") or 0) - int(crash.get("num_rl_steps") or 0),
        "crash_run_end_state": crash.get("end_state"),
        "crash_recovery_s": crash.get("fault_recovery_s"),
        "crash_acc_after": crash.get("acc_after"),
        "bench_wall_s": time.monotonic() - t0,
        "load_average_1m": {"start": load_start, "end": os.getloadavg()[0], "num_cpus": os.cpu_count()},
    }
    ratios = {
        "acc_before": streaming.get("acc_before") or 0.0,
        "acc_after": streaming.get("acc_after") or 0.0,
        "minutes_to_plus10": streaming.get("minutes_to_plus10") or 0.0,
        "streaming_vs_sync": (t_sync / t_stream) if t_sync and t_stream else 0.0,
        "stall_p95_s": streaming.get("stall_p95_s") or 0.0,
        "fault_lost_steps": lost or 0,
    }
    emit(
        "mainjob",
        config={"quick": args.quick, "arms": ["streaming", "sync", "crash"]},
        figures=figures,
        ratios=ratios,
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
