"""A small data-parallel torch.distributed job (gloo, CPU) instrumented with the agent: the fault drill.

Each rank trains the same two-layer regressor on its own shard of generated data and averages
gradients with all-reduce; rank 0 writes a checksummed checkpoint every ``--ckpt-every`` steps.
Faults armed through ``services.robustness.faults`` fire at the planned rank and step. Started by
a sidecar, it resumes from ``SEEDSTACK_ROBUSTNESS_RESUME_STEP`` (validated checkpoint, older ones
on a bad checksum) and skips the data before ``SEEDSTACK_ROBUSTNESS_SKIP_DATA_UNTIL_STEP``; it
rendezvouses through a file per restart generation. Without a controller address it runs as a
plain job (the torchrun baseline).

Run: ``python -m services.robustness.drilljob --dir DIR --steps N`` (RANK and WORLD_SIZE from the
environment, as torchrun sets them).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from services.robustness import checkpoints
from services.robustness.agent import Agent
from services.robustness.faults import FaultPlan, fire_blocking
from services.robustness.model import Phase
from services.robustness.sidecar import ENV_GENERATION, ENV_RESUME_STEP, ENV_SKIP_UNTIL

HIDDEN = 64
BATCH = 32
LEARNING_RATE = 0.05
"""Plain SGD, applied by hand: ``torch.optim`` imports ``torch._dynamo`` on first use (seconds of
start-up on a small machine), which would dominate every restart of this small job."""


def make_batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The data of one rank at one step: a fixed function of (step, rank)."""
    g = torch.Generator().manual_seed(step * 1009 + rank)
    x = torch.randn(BATCH, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True)).tanh()
    return x, y


def main(argv: list[str] | None = None) -> int:
    """Train; exit 0 when all steps are done."""
    parser = argparse.ArgumentParser(prog="python -m services.robustness.drilljob")
    parser.add_argument("--dir", type=Path, required=True, help="checkpoints, rendezvous files, armed faults")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--ckpt-every", type=int, default=5)
    parser.add_argument("--step-time-s", type=float, default=0.05, help="extra compute time per step")
    parser.add_argument("--collective-timeout-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    generation = int(os.environ.get(ENV_GENERATION, "0"))
    resume_step = int(os.environ.get(ENV_RESUME_STEP, "-1"))
    skip_until = int(os.environ.get(ENV_SKIP_UNTIL, "0"))
    torch.set_num_threads(1)
    agent = Agent.from_env()
    if agent is not None:
        agent.start()
    plan = FaultPlan(args.dir / "fault.json", rank)
    if "MASTER_ADDR" in os.environ and agent is None:
        init_method = "env://"
    else:
        init_method = f"file://{args.dir / f'rdzv-{generation}'}"
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=args.collective_timeout_s),
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    params = list(model.parameters())
    start = 0
    if resume_step >= 0:
        if agent is not None:
            agent.set_phase(Phase.CHECKPOINT)
        step, state, rejected = checkpoints.load_good(args.dir, resume_step)
        for r in rejected:
            if agent is not None and rank == 0:
                agent.checkpoint_rejected(r.step, str(r.path), r.expected_sha256, r.actual_sha256, step)
        if state is not None:
            model.load_state_dict(state["model"])
            start = step + 1
    start = max(start, skip_until)
    last_step_s = 0.0
    for step in range(start, args.steps):
        t0 = time.monotonic()
        fault = plan.due(step)
        if agent is not None:
            agent.set_phase(Phase.DATA, step)
        if fault is not None and fault.kind == "data-stall":
            time.sleep(fault.seconds)
        x, y = make_batch(step, rank)
        if agent is not None:
            agent.set_phase(Phase.FORWARD_BACKWARD, step)
        if fault is not None:
            fire_blocking(fault)
        for p in params:
            p.grad = None
        loss = torch.nn.functional.mse_loss(model(x), y)
        if fault is not None and fault.kind == "nan":
            loss = loss * float("nan")
        loss.backward()
        time.sleep(args.step_time_s + (fault.seconds if fault is not None and fault.kind == "slow" else 0.0))
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        local_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
        compute_s = time.monotonic() - t0
        if agent is not None:
            agent.set_phase(Phase.COLLECTIVE, step)
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= world_size
        local_bad = not (math.isfinite(float(loss.detach())) and math.isfinite(local_norm))
        if agent is not None:
            agent.step_metrics(
                step,
                loss=float(loss.detach()),
                grad_norm=local_norm,
                has_nan_or_inf=local_bad,
                step_time_s=last_step_s or compute_s,
                compute_time_s=compute_s,
            )
        # Never apply a step whose averaged gradients hold a NaN.
        if bool(torch.isfinite(flat).all()):
            if agent is not None:
                agent.set_phase(Phase.OPTIMIZER, step)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=-LEARNING_RATE)
        if rank == 0 and args.ckpt_every and step % args.ckpt_every == 0:
            if agent is not None:
                agent.set_phase(Phase.CHECKPOINT, step)
            if fault is not None and fault.kind == "checkpoint-delay":
                time.sleep(fault.seconds)
            path, sha = checkpoints.save(args.dir, step, {"model": model.state_dict()})
            if agent is not None:
                agent.checkpoint_saved(step, str(path), sha)
        last_step_s = time.monotonic() - t0
        if agent is not None:
            agent.set_phase(Phase.DATA, step + 1)
    dist.barrier()
    dist.destroy_process_group()
    if agent is not None:
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
