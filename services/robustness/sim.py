"""ETTR at scale, simulated: a long job on many GPUs under a fault trace, with the controller's own
ladder (``RecoveryBudget``) and accounting (``EttrTracker``), against restart-everything-from-the-
last-checkpoint. Every figure it prints is simulated; every parameter is listed with its source.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from services.robustness.ettr import EttrTracker
from services.robustness.localize import outliers_by_stacks, with_layout
from services.robustness.model import FaultKind, RecoveryAction
from services.robustness.recovery import RecoveryBudget

# ByteRobust (Wan et al., SOSP'25), failures by type over three months (ANCHORS.md); the share not
# named there ("other explicit failures": process exits, network, storage) is treated as crashes.
PAPER_MIX = {"cuda_error": 0.36, "code_change": 0.17, "hang": 0.10, "slowdown": 0.008, "nan": 0.003}


@dataclass(frozen=True)
class SimParams:
    """Parameters of the simulation; ``sources`` says where each comes from."""

    num_gpus: int = 9600
    gpus_per_node: int = 8
    days: float = 90.0
    failures_per_1000_node_days: float = 6.5
    step_s: float = 10.0
    checkpoint_every_steps_ours: int = 1
    checkpoint_every_s_baseline: float = 1800.0
    detect_s: dict[str, float] = field(default_factory=dict)
    localize_s: float = 0.0
    restart_in_place_s: float = 0.0
    replace_node_s: float = 0.0
    baseline_restart_s: float = 600.0
    baseline_hang_timeout_s: float = 600.0
    baseline_nan_notice_s: float = 3600.0
    slowdown_factor: float = 0.5
    seed: int = 0

    def sources(self) -> dict[str, str]:
        """Where each parameter comes from."""
        return {
            "num_gpus, days": "ByteRobust paper: a three-month job on 9,600 GPUs",
            "gpus_per_node": "8 GPUs per node (ByteRobust's and Meta's clusters)",
            "failures_per_1000_node_days": "Meta, Kokolis et al. 2024 (Revisiting Reliability in Large-Scale ML "
            "Research Clusters): r_f = 6.50 failures per 1000 node-days on RSC-1 (recalled; not checked against "
            "the paper in this repository)",
            "failure mix": f"ByteRobust paper (ANCHORS.md): {PAPER_MIX}, rest counted as crashes",
            "step_s": "assumed 10 s per step of a large LLM job (sets only the loss granularity)",
            "checkpoint_every_steps_ours": "ByteRobust: checkpoints every step, backed up outside the eviction domain",
            "checkpoint_every_s_baseline": "assumed 30 min, a common periodic checkpoint interval",
            "detect_s, localize_s, restart_in_place_s, replace_node_s": "this run's fault campaign (p50) scaled to "
            "num_gpus by ScalingModel: see figures.sim.scaling for each term, its value and its source",
            "baseline_restart_s": "Meta study (ANCHORS.md): restarts cost 5-20 minutes at scale; 10 min taken",
            "baseline_hang_timeout_s": "NCCL's default collective timeout of 10 min (ANCHORS: 10-30 min)",
            "baseline_nan_notice_s": "assumed 1 h until a person notices a NaN loss curve",
            "slowdown_factor": "assumed: a slow node halves the job's speed until it is removed",
        }


@dataclass
class SimResult:
    """Outcome of one simulated policy."""

    ettr: float
    num_failures: int
    downtime_s: float
    lost_work_s: float
    actions: dict[str, int]


def _trace(p: SimParams) -> list[tuple[float, str]]:
    rng = random.Random(p.seed)
    nodes = p.num_gpus / p.gpus_per_node
    rate_per_s = nodes * p.failures_per_1000_node_days / 1000.0 / 86400.0
    kinds = [*PAPER_MIX, "crash"]
    weights = [*PAPER_MIX.values(), 1.0 - sum(PAPER_MIX.values())]
    out: list[tuple[float, str]] = []
    t, end = 0.0, p.days * 86400.0
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= end:
            return out
        out.append((t, rng.choices(kinds, weights)[0]))


def simulate(p: SimParams, policy: str) -> SimResult:
    """Run the trace under ``policy`` ("controller" or "baseline"); ETTR from ``EttrTracker``."""
    trace = _trace(p)
    end = p.days * 86400.0
    ettr = EttrTracker(start_s=0.0)
    budget = RecoveryBudget(max_attempts=10**9, repeat_window_s=600.0)
    actions: dict[str, int] = {}
    t, step, downtime, lost_work = 0.0, 0, 0.0, 0.0
    last_ckpt_step, last_ckpt_t = 0, 0.0
    slow_until = -1.0
    ettr.on_step(0, 0.0)
    for fault_t, kind in [*trace, (end, "end")]:
        # Train until the fault (slower while a slow node is in the job).
        while t < fault_t:
            dt = p.step_s / (p.slowdown_factor if t < slow_until else 1.0)
            if t + dt > fault_t:
                break
            t += dt
            step += 1
            ettr.on_step(step, t)
            if policy == "controller" and step % p.checkpoint_every_steps_ours == 0:
                last_ckpt_step, last_ckpt_t = step, t
            elif policy == "baseline" and t - last_ckpt_t >= p.checkpoint_every_s_baseline:
                last_ckpt_step, last_ckpt_t = step, t
        if kind == "end":
            break
        t = fault_t
        if kind == "slowdown":
            if policy == "baseline":
                slow_until = end  # nobody notices: it runs slow to the end (or the next restart)
                continue
            slow_until = t + p.detect_s["straggler"]
        detect = {
            "controller": {
                "hang": p.detect_s["hang"],
                "nan": p.detect_s["nan"],
                "slowdown": p.detect_s["straggler"],
            },
            "baseline": {"hang": p.baseline_hang_timeout_s, "nan": p.baseline_nan_notice_s},
        }[policy].get(kind, p.detect_s["crash"] if policy == "controller" else 0.0)
        fault_kind = {"hang": FaultKind.HANG, "nan": FaultKind.NAN, "slowdown": FaultKind.STRAGGLER}.get(
            kind, FaultKind.LOG_ERROR if kind == "cuda_error" else FaultKind.CRASH
        )
        if policy == "controller":
            action = budget.start_action(fault_kind, t, "cuda_error" if kind == "cuda_error" else "")
            budget.recovered(fault_kind, action, t)
            recover = p.replace_node_s if action == RecoveryAction.REPLACE_NODE else p.restart_in_place_s
            down = detect + p.localize_s + recover
        else:
            action = RecoveryAction.RESTART_IN_PLACE
            down = detect + p.baseline_restart_s
        actions[action.name] = actions.get(action.name, 0) + 1
        # Work since the last checkpoint (and, for a NaN, the steps after it) is redone.
        lost_work += max(0.0, t - last_ckpt_t)
        ettr.interrupt()
        ettr.rollback(last_ckpt_step)
        step = last_ckpt_step
        t += down
        downtime += down
        if kind == "slowdown" or policy == "baseline":
            slow_until = -1.0
        last_ckpt_t = t
        ettr.on_step(step, t)
    wall, productive = ettr.figure(end)
    return SimResult(productive / wall, len(trace), downtime, lost_work, actions)


def describe(p: SimParams) -> dict[str, object]:
    """The parameters as JSON."""
    return asdict(p)


@dataclass(frozen=True)
class Campaign:
    """What the fault campaign measured on its small job (p50s), in its own configuration."""

    world_size: int
    crash_detect_s: float
    silent_hang_detect_s: float
    """A rank that went silent (SIGSTOP): found by the liveness timeout."""
    liveness_timeout_s: float
    """The drill's liveness timeout that ``silent_hang_detect_s`` includes."""
    nan_detect_steps: float
    straggler_detect_s: float
    straggler_step_s: float
    """Step time of the job while it waited for the slowed rank."""
    hang_localize_s: float
    """Stack dumps requested from every rank (in parallel) and grouped."""
    restart_in_place_s: float
    replace_node_s: float
    store_op_s: float
    """One round trip to a torch.distributed TCPStore, measured beside the campaign."""


@dataclass(frozen=True)
class ScalingModel:
    """How each campaign time grows from ``Campaign.world_size`` ranks to ``num_gpus``.

    - Detection of crashes and silent ranks is per rank (each sidecar and agent talks to the
      controller on its own): it does not grow with the job. At scale it runs under the service's
      default timeouts (``RobustnessConfig``), not the drill's short ones: the measured overhead
      above the drill's timeout is kept and the default timeout added. Hangs with live heartbeats
      (most collective hangs) wait for the no-progress timeout, ``max(hang_min_timeout_s,
      hang_step_multiplier * step_s)``.
    - Stragglers are judged over ``straggler_window_steps * straggler_windows`` steps: detection
      grows with the step time, not with the job.
    - Localisation: dumps are taken in parallel (the campaign's time), then grouped by one
      controller: linear in the number of ranks; the grouping is timed here on ``num_gpus``
      synthetic dumps with the controller's own functions.
    - Restart in place: the per-node relaunch is parallel (the campaign's time), the rendezvous is
      not: every rank makes ``store_ops_per_rank`` round trips to one TCPStore (rendezvous count,
      communicator id, init barrier) and the communicator's bootstrap all-gather is a ring of
      ``num_gpus`` hops; both are linear in the ranks, at the measured store round trip. Loading the
      checkpoint shard is per node, in parallel: bytes per node over the node's read bandwidth.
    - Replacing a node: the restart plus what the campaign measured on top of it (adopting a standby).
    """

    num_gpus: int = 9600
    gpus_per_node: int = 8
    step_s: float = 10.0
    liveness_timeout_s: float = 5.0
    hang_min_timeout_s: float = 30.0
    hang_step_multiplier: float = 5.0
    straggler_window_steps: int = 5
    straggler_windows: int = 3
    store_ops_per_rank: int = 3
    checkpoint_bytes_per_gpu: float = 1.2e9
    checkpoint_read_bytes_per_s_per_node: float = 10e9

    def sources(self) -> dict[str, str]:
        """Where each parameter comes from."""
        return {
            "num_gpus, gpus_per_node, step_s": "as SimParams",
            "liveness_timeout_s, hang_min_timeout_s, hang_step_multiplier, straggler_window_steps, "
            "straggler_windows": "RobustnessConfig defaults (what the service runs with outside drills)",
            "store_ops_per_rank": "c10d rendezvous as torch.distributed does it: a rank-count add, a get of the "
            "communicator id, a barrier add: 3 round trips per rank to the one store",
            "store_op_s": "measured in this run: TCPStore set/get round trips on loopback",
            "checkpoint_bytes_per_gpu": "assumed: a 70B-parameter model's bf16 weights and fp32 Adam state "
            "(16 bytes/parameter, 1.1 TB) sharded over 960 GPUs of one replica",
            "checkpoint_read_bytes_per_s_per_node": "assumed: 10 GB/s per node, reading a peer's in-memory "
            "backup over the network (ByteRobust keeps checkpoints outside the eviction domain)",
        }

    def scale(self, m: Campaign) -> tuple[dict[str, float], dict[str, float]]:
        """(detect_s by kind + localize_s, restart_in_place_s, replace_node_s; every term at both sizes)."""
        n0, n = m.world_size, self.num_gpus
        overhead_s = max(0.0, m.silent_hang_detect_s - m.liveness_timeout_s)
        progress_timeout_s = max(self.hang_min_timeout_s, self.hang_step_multiplier * self.step_s)
        straggler_steps = self.straggler_window_steps * self.straggler_windows
        group_s = grouping_time_s(n)
        rendezvous_s = (n - n0) * (self.store_ops_per_rank + 1) * m.store_op_s
        load_s = self.gpus_per_node * self.checkpoint_bytes_per_gpu / self.checkpoint_read_bytes_per_s_per_node
        restart_s = m.restart_in_place_s + rendezvous_s + load_s
        adopt_s = max(0.0, m.replace_node_s - m.restart_in_place_s)
        terms = {
            "crash_detect_s": m.crash_detect_s,
            "silent_hang_detect_s": overhead_s + self.liveness_timeout_s,
            "progress_hang_detect_s": overhead_s + progress_timeout_s,
            "nan_detect_s": max(m.nan_detect_steps, 1.0) * self.step_s,
            "straggler_detect_s": straggler_steps * self.step_s,
            "straggler_detect_steps_measured": m.straggler_detect_s / max(m.straggler_step_s, 1e-9),
            "localize_dumps_s": m.hang_localize_s,
            "localize_grouping_s": group_s,
            "restart_measured_s": m.restart_in_place_s,
            "rendezvous_added_s": rendezvous_s,
            "checkpoint_load_s": load_s,
            "adopt_standby_s": adopt_s,
        }
        scaled = {
            "crash": m.crash_detect_s,
            "hang": terms["progress_hang_detect_s"],
            "nan": terms["nan_detect_s"],
            "straggler": terms["straggler_detect_s"],
            "localize_s": m.hang_localize_s + group_s,
            "restart_in_place_s": restart_s,
            "replace_node_s": restart_s + adopt_s,
        }
        return scaled, terms


_DUMP = """Thread 0x00007f01 (most recent call first):
  File "/x/threading.py", line 320 in wait
  File "/x/agent.py", line 10 in _run_thread

Current thread 0x00007f02 (most recent call first):
  File "/x/distributed_c10d.py", line {line} in all_reduce
  File "/x/train.py", line 120 in step
  File "/x/train.py", line 200 in main
"""
_BLOCKED = """Current thread 0x00007f09 (most recent call first):
  File "/x/loader.py", line 77 in next_batch
  File "/x/train.py", line 101 in main
"""


def grouping_time_s(num_ranks: int) -> float:
    """Seconds the controller takes to group ``num_ranks`` stack dumps and order the suspects (timed)."""
    dumps = {r: _DUMP.format(line=2000 + r % 7) for r in range(num_ranks)}
    dumps[num_ranks // 2] = _BLOCKED
    ranks = list(range(num_ranks))
    groups = {r: {"tp": [r - r % 8 + i for i in range(8)]} for r in ranks}
    started = time.perf_counter()
    suspects = with_layout(outliers_by_stacks(dumps, ranks), ranks, groups)
    elapsed = time.perf_counter() - started
    if suspects[0] != num_ranks // 2:
        raise AssertionError(f"grouping blamed rank {suspects[0]}, not {num_ranks // 2}")
    return elapsed


def store_round_trip_s(num_ops: int = 2000) -> float:
    """Mean seconds of one set/get round trip to a torch.distributed TCPStore on loopback."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, 1, True, timedelta(seconds=30))
    store.set("warm", "1")
    started = time.perf_counter()
    for i in range(num_ops // 2):
        store.set(f"k{i % 64}", "x")
        store.get(f"k{i % 64}")
    elapsed = time.perf_counter() - started
    del store
    return elapsed / (2 * (num_ops // 2))
