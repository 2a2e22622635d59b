"""One training rank: ``torchrun --nproc-per-node N -m services.trainer.rank --spec FILE --run-dir DIR``.

The trainer service launches exactly this through torch.distributed's elastic launcher; cluster users
run it with plain ``torchrun`` (any rendezvous). The spec is the run config as JSON or YAML (the
fields of ``services.trainer.spec.RunSpec``). Rank 0 writes ``DIR/status.json``; creating ``DIR/stop``
(``{"save_checkpoint": true}``) ends the run after the current step.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from services.common.logs import init_logging
from services.common.telemetry import init_telemetry, shutdown_telemetry
from services.robustness.agent import Agent
from services.robustness.faults import FaultPlan, fire_blocking
from services.robustness.model import Phase
from services.trainer.engine import Comm, Control, Engine, NullReporter, Reporter
from services.trainer.remote import connect_feed, connect_sink
from services.trainer.spec import RunSpec
from services.trainer.status import STOP_FILE, StatusFile

logger = logging.getLogger(__name__)

ENV_FAULT_FILE = "SEEDSTACK_FAULT_FILE"
"""Armed-fault file (``services.robustness.faults.arm``) this rank's fault plan polls; unset for none."""


def start_agent() -> Agent | None:
    """The robustness monitor's agent of this rank, when the launcher said where the monitor is."""
    agent = Agent.from_env()
    if agent is not None:
        agent.start(timeout_s=10)  # phase STARTUP until the first warm-start or RL step reports
    return agent


class MonitorReports:
    """What this rank tells its robustness agent. Steps are the RL steps, as in checkpoints, logs and the
    run's status; the warm start, which has none, is start-up progress."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def warm_start_step(self, done: int) -> None:
        """Warm-start step ``done`` finished: start-up progress (it restarts the monitor's hang timer), still
        in the start-up phase, so its allowance covers each warm-start step (and the evaluation and first
        RL step after the last)."""
        self.agent.startup_progress(done)

    def rl_step(self, step: int, metrics: dict[str, float]) -> None:
        """RL step ``step`` finished. ``has_nan_or_inf`` is this rank's own finding before the all-reduce
        (after it every rank sees the same NaN); for a step not applied the loss and gradient norm are
        this rank's own too, so a rank whose figures were finite is not blamed for another's NaN."""
        applied = bool(metrics["applied"])
        self.agent.set_phase(Phase.FORWARD_BACKWARD, step)
        self.agent.step_metrics(
            step,
            loss=metrics["policy_loss"] if applied else metrics["local_policy_loss"],
            grad_norm=metrics["grad_norm"] if applied else metrics["local_grad_norm"],
            has_nan_or_inf=bool(metrics["local_nonfinite"]),
            step_time_s=metrics["step_time_s"],
            compute_time_s=metrics["forward_backward_s"],
        )

    def skipped_step(self, step: int) -> None:
        """RL step ``step`` was skipped (its batch dropped): progress; the next step's data comes next."""
        self.agent.set_phase(Phase.DATA, step + 1)


def main(argv: list[str] | None = None) -> int:
    """Run this rank to the end of the run; exit status 0 when it completed or was stopped."""
    parser = argparse.ArgumentParser(prog="python -m services.trainer.rank", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="run config (JSON or YAML)")
    parser.add_argument("--run-dir", type=Path, required=True, help="status, stop file and default checkpoints")
    args = parser.parse_args(argv)
    init_logging("trainer")
    init_telemetry("trainer-rank")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    spec = RunSpec.from_dict(yaml.safe_load(args.spec.read_text()) or {})
    torch.set_num_threads(spec.num_threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in os.environ:
        if spec.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if spec.device == "cuda" else "gloo")
    comm = Comm.from_env()
    reporter: Reporter = StatusFile(args.run_dir) if comm.rank == 0 else NullReporter()
    sink = feed = None
    try:
        if spec.rollout.prompts_per_step % comm.world:
            raise ValueError(
                f"rollout.prompts_per_step={spec.rollout.prompts_per_step} is not a multiple of "
                f"the {comm.world} ranks launched"
            )
        sink = connect_sink(spec, comm.rank, comm.world)
        feed = connect_feed(spec, comm.rank)
        checkpoint_dir = Path(spec.checkpoint.dir) if spec.checkpoint.dir else args.run_dir / "checkpoints"
        engine = Engine(spec, comm=comm, reporter=reporter, sink=sink, feed=feed, checkpoint_dir=checkpoint_dir)
        agent = start_agent()
        reports = MonitorReports(agent) if agent is not None else None
        faults = FaultPlan(Path(os.environ[ENV_FAULT_FILE]), comm.rank) if os.environ.get(ENV_FAULT_FILE) else None

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if reports is not None:
                reports.rl_step(step, metrics)
            fault = faults.due(step + 1) if faults is not None else None
            if fault is not None:
                logger.warning("injected fault %s at step %d on rank %d", fault.kind, step + 1, comm.rank)
                if fault.kind == "nan":
                    engine.poison_next_loss = True
                else:
                    fire_blocking(fault)

        try:
            engine.run(
                Control(stop_file=args.run_dir / STOP_FILE),
                on_step=on_step,
                on_warm_start_step=reports.warm_start_step if reports is not None else None,
                on_skipped_step=reports.skipped_step if reports is not None else None,
            )
        finally:
            if agent is not None:
                agent.close()
        return 0
    except Exception as exc:
        reason = f"rank {comm.rank}: {type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        logger.error("%s\n%s", reason, traceback.format_exc())
        (args.run_dir / f"error-rank{comm.rank}.txt").write_text(reason)
        reporter.state("FAILED", reason)
        return 1
    finally:
        for resource in (sink, feed):
            if resource is not None:
                resource.close()
        if dist.is_initialized():
            dist.destroy_process_group()
        shutdown_telemetry()


if __name__ == "__main__":
    sys.exit(main())
