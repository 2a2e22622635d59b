"""Detection, localisation, the recovery ladder, ETTR and checkpoints, without network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.common.errors import ConfigError
from services.robustness import checkpoints
from services.robustness.config import RobustnessConfig
from services.robustness.detect import HangTimeouts, LossSpikeDetector, StragglerDetector, match_signature
from services.robustness.ettr import EttrTracker
from services.robustness.faults import ArmedFault, FaultPlan, arm, corrupt_file
from services.robustness.localize import outliers_by_phase, outliers_by_stacks, stack_signature, with_layout
from services.robustness.model import FaultKind, Phase, RecoveryAction
from services.robustness.recovery import RecoveryBudget

WAITING = """Thread 0x00007f01 (most recent call first):
  File "/x/threading.py", line 320 in wait
  File "/x/agent.py", line 10 in _run_thread

Current thread 0x00007f02 (most recent call first):
  File "/x/distributed_c10d.py", line {line} in all_reduce
  File "/x/drilljob.py", line 120 in main
"""
BLOCKED = """Current thread 0x00007f09 (most recent call first):
  File "/x/faults.py", line 77 in fire_blocking
  File "/x/drilljob.py", line 101 in main
"""


def test_checkpoint_phase_gets_its_own_longer_timeout_learned_from_saves() -> None:
    t = HangTimeouts(min_timeout_s=3.0, multiplier=5.0, checkpoint_min_timeout_s=10.0, startup_timeout_s=60.0)
    for _ in range(10):
        t.observe_step(0.1)
    assert t.timeout_s(Phase.FORWARD_BACKWARD) == 3.0
    t.observe_step(2.0)  # a slow step seen: the compute timeout adapts
    assert t.timeout_s(Phase.COLLECTIVE) == 10.0
    t.observe_phase(Phase.CHECKPOINT, 8.0)
    assert t.timeout_s(Phase.CHECKPOINT) == 40.0
    assert t.timeout_s(Phase.STARTUP) == 60.0


def test_straggler_needs_several_slow_windows_of_compute_time() -> None:
    d = StragglerDetector(ratio=1.5, window_steps=5, num_windows=3)
    found: list[int] = []
    for step in range(40):
        for rank in range(4):
            d.observe(rank, step, 0.3 if rank == 2 and step >= 10 else 0.1)
        found = d.close_window_if_due(step, range(4))
        if step < 20:
            assert found == [], step
        if found:
            break
    assert found == [2]


def test_one_slow_window_is_not_a_straggler() -> None:
    d = StragglerDetector(ratio=1.5, window_steps=5, num_windows=3)
    for step in range(60):
        for rank in range(4):
            d.observe(rank, step, 0.5 if rank == 1 and 10 <= step < 15 else 0.1)
        assert d.close_window_if_due(step, range(4)) == []


def test_loss_spike_and_error_signatures() -> None:
    d = LossSpikeDetector(ratio=10.0)
    assert not any(d.observe(1.0 + 0.01 * i) for i in range(20))
    assert d.observe(50.0)
    assert match_signature("RuntimeError: CUDA error: an illegal memory access was encountered") == "cuda_error"
    assert match_signature("NCCL WARN Connect to 10.0.0.1 failed") == "nccl_error"
    assert match_signature("step 10 loss 0.3") is None


def test_stacks_group_and_the_outliers_are_blamed() -> None:
    dumps = {0: WAITING.format(line=11), 1: WAITING.format(line=12), 2: BLOCKED, 3: WAITING.format(line=11)}
    assert stack_signature(dumps[0]) == stack_signature(dumps[1])
    assert outliers_by_stacks(dumps, [0, 1, 2, 3]) == [2]
    # A rank that could not answer (stopped) comes first.
    assert outliers_by_stacks({0: dumps[0], 1: dumps[1], 3: dumps[3]}, [0, 1, 2, 3]) == [2]


def test_phase_outliers_and_layout_keep_the_culprit_in_the_suspects() -> None:
    phases = {0: Phase.COLLECTIVE, 1: Phase.COLLECTIVE, 2: Phase.FORWARD_BACKWARD, 3: Phase.COLLECTIVE}
    assert outliers_by_phase(phases, {0: 7, 1: 7, 2: 7, 3: 7}) == [2]
    groups = {r: {"dp": [0, 1, 2, 3], "tp": [r - r % 2, r - r % 2 + 1]} for r in range(4)}
    assert with_layout([2], [0, 1, 2, 3], groups) == [2, 3, 0, 1]
    assert sorted(with_layout([], [0, 1, 2, 3], groups)) == [0, 1, 2, 3]


def test_ladder_climbs_and_a_repeating_fault_stops_within_the_budget() -> None:
    budget = RecoveryBudget(max_attempts=3, repeat_window_s=600.0)
    assert budget.start_action(FaultKind.CRASH, 0.0) == RecoveryAction.RESTART_IN_PLACE
    budget.recovered(FaultKind.CRASH, RecoveryAction.RESTART_IN_PLACE, 10.0)
    assert budget.start_action(FaultKind.CRASH, 20.0) == RecoveryAction.REPLACE_NODE
    budget.recovered(FaultKind.CRASH, RecoveryAction.REPLACE_NODE, 30.0)
    assert budget.start_action(FaultKind.CRASH, 40.0) == RecoveryAction.ROLLBACK
    assert budget.start_action(FaultKind.CRASH, 50.0) == RecoveryAction.STOP_JOB
    fresh = RecoveryBudget(max_attempts=5, repeat_window_s=600.0)
    assert fresh.start_action(FaultKind.NAN, 0.0) == RecoveryAction.ROLLBACK
    assert fresh.start_action(FaultKind.STRAGGLER, 0.0) == RecoveryAction.REPLACE_NODE
    assert fresh.start_action(FaultKind.LOG_ERROR, 0.0, "ecc_error") == RecoveryAction.REPLACE_NODE


def test_ettr_counts_kept_steps_only() -> None:
    e = EttrTracker(start_s=0.0)
    e.on_step(0, 10.0)  # start-up before the first step is not productive
    for step in range(1, 11):
        e.on_step(step, 10.0 + step)
    assert e.figure(20.0) == (20.0, 10.0)
    e.interrupt()
    e.rollback(5)  # steps 6..10 are redone: their 5 s are lost
    assert e.figure(30.0) == (30.0, 5.0)
    e.on_step(6, 32.0)  # first step after the restart holds the restart
    e.on_step(7, 33.0)
    assert e.figure(33.0) == (33.0, 6.0)
    assert e.figure(33.0, window_s=10.0) == (10.0, 1.0)
    assert EttrTracker.from_json(e.to_json()).figure(33.0) == (33.0, 6.0)


def test_corrupt_checkpoint_is_rejected_and_an_older_one_loaded(tmp_path: Path) -> None:
    for step in (5, 10):
        checkpoints.save(tmp_path, step, {"w": torch.full((64,), float(step))})
    corrupt_file(tmp_path / "ckpt-00000010.pt")
    step, state, rejected = checkpoints.load_good(tmp_path, 10)
    assert step == 5 and float(state["w"][0]) == 5.0
    assert [r.step for r in rejected] == [10] and rejected[0].actual_sha256 != rejected[0].expected_sha256
    corrupt_file(tmp_path / "ckpt-00000005.pt")
    assert checkpoints.load_good(tmp_path, 10)[0] == -1


def test_fault_plan_fires_once_on_its_rank_and_step(tmp_path: Path) -> None:
    path = tmp_path / "fault.json"
    plan, other = FaultPlan(path, rank=1), FaultPlan(path, rank=0)
    arm(path, ArmedFault("nan", rank=1, step=3))
    assert plan.due(2) is None and other.due(3) is None
    fired = plan.due(3)
    assert fired is not None and fired.kind == "nan"
    assert plan.due(3) is None
    # Fired means disarmed: a process restarted from an earlier checkpoint does not fire it again.
    assert not path.exists() and FaultPlan(path, rank=1).due(3) is None
    with pytest.raises(ValueError, match="kind='melt'"):
        arm(path, ArmedFault("melt", rank=0))


def test_config_names_the_bad_field() -> None:
    with pytest.raises(ConfigError, match="liveness_timeout_s"):
        RobustnessConfig(redis_url="redis://x", heartbeat_interval_s=1.0, liveness_timeout_s=1.5)
    with pytest.raises(ConfigError, match="straggler_ratio"):
        RobustnessConfig(redis_url="redis://x", straggler_ratio=1.0)
