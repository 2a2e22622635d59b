"""The main-job benchmark's reading of two accuracy curves: time to the same accuracy, noise and all."""

from __future__ import annotations

import math
import random

from benchmarks.mainjob import compare_fitted, fit_curve


def curve(tau: float, gain: float, span: float, noise: float, seed: int) -> list[tuple[float, float]]:
    """Evaluations every 2 s of ``0.35 + gain * (1 - exp(-t / tau))``, each off by up to ``noise``."""
    rng = random.Random(seed)
    return [
        (t, 0.35 + gain * (1 - math.exp(-t / tau)) + (rng.uniform(-noise, noise) if t else 0.0))
        for t in (2.0 * i for i in range(int(span / 2) + 1))
    ]


def test_twice_as_fast_a_rise_reads_as_twice_as_fast_through_evaluation_noise() -> None:
    # Streaming rises with tau 10 s, sync with 20 s, each evaluation off by up to 5 points.
    ratios = [
        compare_fitted({"streaming": curve(10, 0.25, 50, 0.05, s), "sync": curve(20, 0.25, 50, 0.05, s + 1)}, 0.35)[
            "sync_over_streaming"
        ]
        for s in range(5)
    ]
    # One pair reads 1.5-2.2 for a true 2 (hence two pairs without --quick); never the other way round.
    assert all(1.3 < r < 3.0 for r in ratios), ratios
    assert 1.6 < math.exp(sum(math.log(r) for r in ratios) / len(ratios)) < 2.4


def test_the_target_is_a_level_both_runs_reached() -> None:
    # A slow, nearly straight curve fits a far asymptote; the target stays within what it reached.
    fast, slow = curve(5, 0.25, 50, 0.0, 0), curve(400, 1.0, 50, 0.0, 0)
    fit = fit_curve(slow, 0.35)
    assert fit is not None and fit["reached"] < 0.15
    out = compare_fitted({"streaming": fast, "sync": slow}, 0.35)
    assert out["target_accuracy"] <= max(a for _, a in slow)
    assert out["sync_over_streaming"] > 3


def test_no_gain_no_time_to_accuracy() -> None:
    flat = [(2.0 * i, 0.35) for i in range(20)]
    assert "sync_over_streaming" not in compare_fitted({"streaming": flat, "sync": curve(10, 0.2, 40, 0.0, 0)}, 0.35)


def test_cpu_per_step_by_process_covers_the_rl_loop_only() -> None:
    from benchmarks.mainjob import CpuSampler

    sampler = CpuSampler([], names={})
    # Start-up (t 0-10 s) costs the trainer 30 CPU seconds; then 10 steps cost rollout 2 s and trainer 5 s.
    sampler.by_process = [
        (1000.0, {"trainer": 0.0, "rollout": 0.0}),
        (1010.0, {"trainer": 30.0, "rollout": 1.0}),
        (1020.0, {"trainer": 35.0, "rollout": 3.0}),
    ]
    evals = [{"step": 0, "t_s": 10.0, "accuracy": 0.4}, {"step": 10, "t_s": 20.0, "accuracy": 0.5}]
    per_step = sampler.per_step(evals, started_unix_s=1000.0)
    assert per_step == {"rollout": 0.2, "trainer": 0.5}
    assert sampler.per_step(evals[:1], started_unix_s=1000.0) == {}
