"""The main job's report: ``report.md``, PNG plots and ``figures.json`` in the run directory."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.jobspec import JobSpec
    from clients.mainjob import Timeline


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def compute_figures(spec: JobSpec, timeline: Timeline) -> dict[str, Any]:
    """The job's headline numbers from what it saw."""
    t = timeline
    evals = t.evals
    acc_before = evals[0]["accuracy"] if evals else None
    acc_after = evals[-1]["accuracy"] if len(evals) > 1 else None
    rl_start_s = (t.rl_started_unix_s - t.started_unix_s) if t.rl_started_unix_s else None
    minutes_to_plus10 = None
    if acc_before is not None and rl_start_s is not None:
        for e in evals[1:]:
            if e["accuracy"] >= acc_before + 0.10:
                minutes_to_plus10 = max(e["t_s"] - evals[0]["t_s"], 0.0) / 60
                break
    steps = t.steps
    step_time = sum(s.get("step_time_s", 0.0) for s in steps)
    data_wait = sum(s.get("data_wait_s", 0.0) for s in steps)
    stalls = [s["stall_s"] for s in t.swaps]
    staleness = [sum(int(s.get(f"staleness_{k}", 0)) for s in steps) for k in range(8)]
    idle: dict[str, float] = {}
    training_polls = [p for p in t.polls if p["state"] == "TRAINING"]
    for p in training_polls:
        for name in p["rollout_idle"]:
            idle.setdefault(name, 0.0)
    for name in idle:
        idle[name] = statistics.mean(p["rollout_idle"].get(name, 0.0) for p in training_polls)
    wall_s = t.ended_unix_s - t.started_unix_s
    num_samples = sum(int(s.get("num_samples", 0)) for s in steps)
    figures: dict[str, Any] = {
        "acc_before": acc_before,
        "acc_after": acc_after,
        "acc_best": max((e["accuracy"] for e in evals), default=None),
        "minutes_to_plus10": minutes_to_plus10,
        "wall_s": wall_s,
        "startup_and_warm_start_s": rl_start_s,
        "rl_s": (t.ended_unix_s - t.rl_started_unix_s) if t.rl_started_unix_s else 0.0,
        "end_state": t.end_state,
        "num_rl_steps": len({s.get("step") for s in steps}),
        "num_versions_published": max((p["version"] for p in t.polls), default=0),
        "num_samples_trained": num_samples,
        "samples_per_s": num_samples / step_time if step_time else 0.0,
        "trainer_idle_fraction": data_wait / step_time if step_time else None,
        "rollout_idle_fraction": idle,
        "rollout_final": t.rollout_final,
        "stall_p50_s": _quantile(stalls, 0.5),
        "stall_p95_s": _quantile(stalls, 0.95),
        "num_swaps_seen": len(stalls),
        "staleness_histogram": staleness,
        "reward_first": statistics.mean(s["reward_mean"] for s in steps[:5]) if steps else None,
        "reward_last": statistics.mean(s["reward_mean"] for s in steps[-5:]) if steps else None,
        "ettr": t.ettr.get("ettr"),
        "incidents": _incidents(t),
        "num_alerts": t.num_alerts,
        "recoveries": t.recoveries,
        "num_restarts": len(t.recoveries),
        "fault_lost_steps": sum(int(r["lost_steps"]) for r in t.recoveries),
        "fault_recovery_s": sum(float(r["recovery_s"] or 0.0) for r in t.recoveries) if t.recoveries else None,
        "fault": t.fault,
        "trace": t.trace,
        "failure_reason": t.failure_reason,
        "steps_sampled": any(s.get("sampled") for s in steps),
    }
    return figures


def _incidents(t: Timeline) -> list[dict[str, Any]]:
    """The monitor's incidents, each with what ended it in this job: the monitor's command carried out by
    the trainer service (a new incarnation of the run from its checkpoint: crash, hang, NaN rollback), the
    job's own restart when no monitor runs, or the trainer's guard skipping a NaN step before the
    optimizer; the monitor's ladder as it recorded it stays in ``monitor_actions``."""
    skipped = [int(s["step"]) for s in t.steps if "applied" in s and not s["applied"]]
    rows = []
    for inc in t.incidents:
        row = dict(inc, monitor_actions=inc.get("actions"), monitor_state=inc.get("state"))
        restart = next((r for r in t.recoveries if r["failed_run"] == inc.get("job")), None)
        if restart is not None:
            by = (
                f"monitor: {', '.join(restart['actions'])} by the trainer service"
                if restart.get("actions")
                else "job restarted the trainer (no monitor)"
            )
            step = restart.get("checkpoint_step")
            row["actions"] = f"{by}, from " + ("the start" if step is None else f"its step-{step} checkpoint")
            row["state"] = "recovered" if restart["recovery_s"] is not None else "unrecovered"
            row["recover_s"] = "-" if restart["recovery_s"] is None else f"{restart['recovery_s']:.1f}"
            row["lost_steps"] = str(restart["lost_steps"])
        elif inc.get("fault") == "nan" and skipped:
            row["actions"] = f"trainer's guard skipped step {', '.join(map(str, skipped[:3]))} before the optimizer"
            row["state"] = "recovered"
            row["recover_s"], row["lost_steps"] = "0.0", "0"
        rows.append(row)
    return rows


def _plots(run_dir: Path, spec: JobSpec, t: Timeline, figures: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    def save(fig: Any, name: str, caption: str) -> None:
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=110)
        plt.close(fig)
        made.append((name, caption))

    t0 = t.started_unix_s
    # Reward and held-out accuracy against time.
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if t.steps:
        ax.plot(
            [(s["at"] - t0) / 60 for s in t.steps],
            [s["reward_mean"] for s in t.steps],
            ".",
            alpha=0.35,
            color="tab:blue",
            label="reward per step",
        )
        window = 10
        rewards = [s["reward_mean"] for s in t.steps]
        smooth = [statistics.mean(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
        ax.plot([(s["at"] - t0) / 60 for s in t.steps], smooth, color="tab:blue", label=f"reward ({window}-step mean)")
    if t.evals:
        ax.plot(
            [e["t_s"] / 60 for e in t.evals],
            [e["accuracy"] for e in t.evals],
            "o-",
            color="tab:red",
            label="held-out greedy accuracy",
        )
    if t.rl_started_unix_s:
        ax.axvline((t.rl_started_unix_s - t0) / 60, color="grey", ls="--", lw=1)
        ax.text((t.rl_started_unix_s - t0) / 60, 1.02, " RL starts", color="grey", fontsize=8, va="bottom")
    for inc in t.incidents:
        ax.axvline(inc.get("t_s", 0) / 60, color="tab:purple", ls=":", lw=1.5)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("fraction")
    ax.set_title("Reward and held-out accuracy")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # a run that ended before its first step has nothing to label
        ax.legend(loc="lower right", fontsize=8)
    save(fig, "reward_accuracy.png", "Reward per RL step and held-out greedy accuracy against wall time")

    # Idle fractions.
    fig, ax = plt.subplots(figsize=(8, 4.2))
    polls = [p for p in t.polls if p["state"] == "TRAINING"]
    for name in sorted({n for p in polls for n in p["rollout_idle"]}):
        ax.plot([p["t_s"] / 60 for p in polls], [p["rollout_idle"].get(name, 0) for p in polls], label=f"{name} idle")
    if t.steps:
        idle = [s.get("data_wait_s", 0) / max(s.get("step_time_s", 1e-9), 1e-9) for s in t.steps]
        window = 10
        smooth = [statistics.mean(idle[max(0, i - window + 1) : i + 1]) for i in range(len(idle))]
        ax.plot(
            [(s["at"] - t0) / 60 for s in t.steps],
            smooth,
            color="black",
            lw=2,
            label="trainer idle (waiting for data, 10-step mean)",
        )
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("idle fraction")
    ax.set_title("Rollout and trainer idle fractions during RL")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper right")
    save(fig, "idle_fractions.png", "Idle fraction of each rollout server (10 s window) and of the trainer")

    # Weight-sync stall per version.
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for name in sorted({s["server"] for s in t.swaps}):
        mine = [s for s in t.swaps if s["server"] == name]
        ax.plot([s["version"] for s in mine], [1000 * s["stall_s"] for s in mine], "o", alpha=0.7, label=name)
    ax.set_xlabel("weight version swapped in")
    ax.set_ylabel("decode stall of the swap (ms)")
    p95 = figures.get("stall_p95_s")
    title = "Weight-sync stall per version"
    if p95 is not None:
        title += f" (p50 {1000 * figures['stall_p50_s']:.1f} ms, p95 {1000 * p95:.1f} ms)"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if t.swaps:
        ax.legend(fontsize=8)
    save(fig, "weight_sync_stall.png", "Decoding stall each rollout server saw when it swapped in a new version")

    # Staleness histogram.
    fig, ax = plt.subplots(figsize=(6.5, 4))
    hist = figures["staleness_histogram"]
    labels = [str(k) for k in range(7)] + ["7+"]
    ax.bar(labels, hist, color="tab:green")
    ax.set_xlabel("staleness (versions behind the policy being trained)")
    ax.set_ylabel("samples trained on")
    ax.set_title(f"Staleness of trained samples (bound η = {spec.rollout.max_staleness_versions})")
    ax.grid(alpha=0.3, axis="y")
    save(fig, "staleness.png", "Samples trained on, by how many versions older than the trainer's policy they were")

    # ETTR.
    fig, ax = plt.subplots(figsize=(8, 4))
    series = t.ettr.get("series") or []
    if series:
        ax.plot([p[0] / 60 for p in series], [p[1] for p in series], color="tab:orange", label="ETTR (cumulative)")
    if figures.get("ettr") is not None:
        ax.axhline(figures["ettr"], color="tab:orange", ls="--", lw=1, label=f"final {figures['ettr']:.3f}")
    labelled: set[str] = set()
    for inc in t.incidents:
        kind = str(inc.get("fault"))
        ax.axvline(
            inc.get("t_s", 0) / 60,
            color="tab:purple",
            ls=":",
            lw=1.5,
            label=None if kind in labelled else f"incident: {kind}",
        )
        labelled.add(kind)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("minutes since start")
    ax.set_ylabel("productive time / wall time")
    ax.set_title("ETTR (robustness monitor)")
    ax.grid(alpha=0.3)
    if series or figures.get("ettr") is not None:
        ax.legend(fontsize=8, loc="lower right")
    save(fig, "ettr.png", "Effective training time ratio as the robustness monitor accounts it")
    return made


def _fmt(value: Any, pct: bool = False, unit: str = "") -> str:
    if value is None:
        return "-"
    if pct:
        return f"{100 * value:.1f} %"
    if isinstance(value, float):
        return f"{value:.3g}{unit}"
    return f"{value}{unit}"


def _trace_section(trace: dict[str, Any], run_dir: Path) -> list[str]:
    """The report's lines on the RL step followed as one trace: its id, the services in it and how to view it."""
    lines = ["## One RL step as one trace", ""]
    if not trace.get("trace_id"):
        return [*lines, f"No RL step trace: {trace.get('note', 'no spans')}.", ""]
    services = ", ".join(trace.get("services", [])) or "-"
    lines += [
        f"RL step {trace.get('step')} is trace `{trace['trace_id']}`: {trace.get('num_spans', '?')} spans "
        f"from {services}"
        + (f" (not in it: {', '.join(trace['missing'])})" if trace.get("missing") else " (all four services)")
        + ".",
        "",
        f"View it as a tree: `{trace.get('view')}`; the spans are JSON lines in "
        + ", ".join(f"[{Path(f).name}]({os.path.relpath(f, run_dir)})" for f in trace.get("files", []))
        + ".",
        "",
    ]
    return lines


def write_report(spec: JobSpec, run_dir: Path, timeline: Timeline) -> dict[str, Any]:
    """``report.md`` + PNGs + ``figures.json`` in ``run_dir``; returns the figures."""
    figures = compute_figures(spec, timeline)
    plots = _plots(run_dir, spec, timeline, figures)
    (run_dir / "figures.json").write_text(
        json.dumps(
            {
                "figures": figures,
                "evals": timeline.evals,
                "swaps": timeline.swaps,
                "run": timeline.run,
                "started_unix_s": timeline.started_unix_s,
            },
            indent=2,
        )
    )
    f = figures
    lines = [
        f"# seedstack main job: {spec.name}",
        "",
        f"{spec.algorithm.name.upper()} on the generated arithmetic task ({spec.task.num_terms} terms, "
        f"operands 0..{spec.task.max_value}, ops `{spec.task.ops}`): {spec.trainer.num_ranks} trainer ranks, "
        + (
            f"{spec.rollout.num_servers} rollout servers, alpha = {spec.rollout.completion_ratio}, "
            f"η = {spec.rollout.max_staleness_versions}"
            if spec.rollout.num_servers
            else "synchronous: the trainer's ranks generate each batch with the policy they train"
        )
        + f". Run `{timeline.run.get('run_id', '-')}`, "
        f"plan `{timeline.run.get('plan_id', '-')}`; ended **{f['end_state'] or '-'}**"
        + (f" ({f['failure_reason']})" if f["failure_reason"] else "")
        + ".",
        "",
        "| figure | value |",
        "|---|---|",
        f"| held-out accuracy before RL (after warm start) | {_fmt(f['acc_before'], pct=True)} |",
        f"| held-out accuracy after RL | {_fmt(f['acc_after'], pct=True)} |",
        f"| best held-out accuracy | {_fmt(f['acc_best'], pct=True)} |",
        f"| minutes of RL to +10 points | {_fmt(f['minutes_to_plus10'])} |",
        f"| wall time (of which start-up + warm start) | {f['wall_s'] / 60:.1f} min "
        f"({_fmt(f['startup_and_warm_start_s'], unit=' s')}) |",
        f"| RL steps / versions published | {f['num_rl_steps']} / {f['num_versions_published']} |",
        f"| reward, first 5 → last 5 steps | {_fmt(f['reward_first'])} → {_fmt(f['reward_last'])} |",
        f"| samples trained, samples/s | {f['num_samples_trained']}, {f['samples_per_s']:.1f} |",
        f"| trainer idle (waiting for data) | {_fmt(f['trainer_idle_fraction'], pct=True)} |",
        "| rollout idle (mean during RL) | "
        + (", ".join(f"{n} {_fmt(v, pct=True)}" for n, v in f["rollout_idle_fraction"].items()) or "-")
        + " |",
        f"| weight-sync stall p50 / p95 | {_fmt(f['stall_p50_s'], unit=' s')} / {_fmt(f['stall_p95_s'], unit=' s')} "
        f"({f['num_swaps_seen']} swaps seen) |",
        f"| ETTR | {_fmt(f['ettr'])} |",
        "",
        "Versions served at the end: "
        + (
            ", ".join(
                f"{n} v{v['served_version']} ({v['num_weight_swaps']} swaps, {v['num_samples_finished']} samples)"
                for n, v in f["rollout_final"].items()
            )
            or "-"
        )
        + ".",
        "",
    ]
    if f["steps_sampled"]:
        lines += [
            "Step figures are the trainer's latest step at each poll (its steps.jsonl is not readable from "
            "here): steps between two polls are missing, so step and sample counts are low.",
            "",
        ]
    if f["incidents"]:
        lines += [
            "## Incidents (robustness monitor)",
            "",
            "| fault | detected at | blamed ranks | state | recovery | detect s | recover s | lost steps | summary |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for inc in f["incidents"]:
            lines.append(
                f"| {inc.get('fault')} | {inc.get('t_s', 0):.0f} s | {inc.get('suspects')} | {inc.get('state')} | "
                f"{inc.get('actions')} | {inc.get('detect_s')} | {inc.get('recover_s')} | "
                f"{inc.get('lost_steps')} | {inc.get('summary')} |"
            )
        lines.append("")
    if f["recoveries"]:
        lines += [
            f"Restarts: {f['num_restarts']}, {f['fault_lost_steps']} step(s) lost, "
            f"{_fmt(f['fault_recovery_s'], unit=' s')} from detection to training again.",
            "",
        ]
    if f["num_alerts"]:
        lines += [f"Loss-spike alerts (alert only, no action; the RL loss moves by nature): {f['num_alerts']}.", ""]
    if f["fault"] and not f["incidents"]:
        lines += [f"Injected fault: {f['fault']}; the monitor recorded no incident.", ""]
    lines += _trace_section(f["trace"], run_dir)
    lines += ["## Plots", ""]
    for name, caption in plots:
        lines += [f"![{caption}]({name})", "", f"*{caption}.*", ""]
    lines += ["Figures as JSON: `figures.json`; services' logs: `logs/`; spans: `traces/`.", ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return figures
