"""StartRun -> GetRun -> StopRun with real rank processes (gloo, torch.distributed's elastic launcher)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from seedstack.trainer.v1 import trainer_pb2 as pb

from clients.base import RPCError
from clients.trainer import TrainerClient
from tests.integration.trainer.conftest import TINY_MODEL
from tests.support import assert_eventually

TERMINAL = (pb.RUN_STATE_COMPLETED, pb.RUN_STATE_STOPPED, pb.RUN_STATE_FAILED)


def config_text(**overrides: object) -> str:
    config: dict[str, object] = {
        "algorithm": "dapo",
        "model": {"config_json": TINY_MODEL},
        "task": {"num_warm_start": 40, "num_eval": 16},
        "num_ranks": 2,
        "device": "cpu",
        "num_steps": 3,
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "warm_start": {"num_steps": 2, "batch_size": 8},
        "policy_loss": {"clip_epsilon_low": 0.2, "clip_epsilon_high": 0.28},
    }
    config.update(overrides)
    return json.dumps(config)


async def wait_ended(client: TrainerClient, run_id: str) -> pb.Run:
    async def ended() -> pb.Run | None:
        run = (await client.get_run(pb.GetRunRequest(run_id=run_id))).run
        return run if run.state in TERMINAL else None

    run: pb.Run = await assert_eventually(ended, timeout_s=120, interval_s=0.5)
    return run


async def test_a_run_completes_on_two_ranks_and_resumes_on_one(trainer: TrainerClient, tmp_path: Path) -> None:
    started = await trainer.start_run(pb.StartRunRequest(request_id="r1", run_config_text=config_text()))
    assert started.resolved_config.algorithm == pb.ALGORITHM_DAPO
    assert started.resolved_config.policy_loss.clip_epsilon_high == pytest.approx(0.28)
    # A retried StartRun gets the same run, not a second one.
    again = await trainer.start_run(pb.StartRunRequest(request_id="r1", run_config_text=config_text()))
    assert again.run_id == started.run_id
    run = await wait_ended(trainer, started.run_id)
    assert run.state == pb.RUN_STATE_COMPLETED, run.failure_reason
    assert run.step == 3 and run.published_version == 4  # the warm-started weights, then one per step
    assert [e.step for e in run.evals] == [0, 3] and all(e.num_prompts == 16 for e in run.evals)
    assert run.latest_step.step_time_s > 0 and run.latest_step.forward_backward_s >= 0
    assert run.last_checkpoint.endswith("step-000003.pt") and Path(run.last_checkpoint).is_file()

    # Resume the 2-rank checkpoint on 1 rank for 2 more steps.
    resumed = await trainer.start_run(
        pb.StartRunRequest(
            request_id="r2",
            run_config_text=config_text(num_ranks=1, num_steps=5, checkpoint={"resume_from": run.last_checkpoint}),
        )
    )
    run2 = await wait_ended(trainer, resumed.run_id)
    assert run2.state == pb.RUN_STATE_COMPLETED, run2.failure_reason
    assert run2.step == 5 and run2.published_version == 6 and run2.evals[0].step == 3


async def test_stop_run_ends_the_ranks_after_a_step_with_a_checkpoint(trainer: TrainerClient) -> None:
    started = await trainer.start_run(
        pb.StartRunRequest(request_id="s", run_config_text=config_text(algorithm="grpo", num_steps=100000))
    )

    async def training() -> bool:
        run = (await trainer.get_run(pb.GetRunRequest(run_id=started.run_id))).run
        assert run.state not in TERMINAL, run.failure_reason
        return run.state == pb.RUN_STATE_TRAINING and run.step >= 1

    await assert_eventually(training, timeout_s=120, interval_s=0.5)
    stopping = await trainer.stop_run(pb.StopRunRequest(request_id="x", run_id=started.run_id, save_checkpoint=True))
    assert stopping.run.state in (pb.RUN_STATE_STOPPING, pb.RUN_STATE_STOPPED)
    run = await wait_ended(trainer, started.run_id)
    assert run.state == pb.RUN_STATE_STOPPED, run.failure_reason
    assert run.last_checkpoint.endswith(f"step-{run.step:06d}.pt")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"algorithm": "ppo"}, "algorithm='ppo'"),
        ({"policy_loss": {"kl_coef": -1}}, "policy_loss.kl_coef"),
        ({"vapo": {"discount": 2}}, "vapo.discount"),
        ({"checkpoint": {"resume_from": "/nonexistent/step.pt"}}, "checkpoint.resume_from"),
        ({"dapo": {"overlong_buffer_tokens": 99}}, "dapo.overlong_buffer_tokens"),
    ],
)
async def test_bad_run_configs_are_refused_naming_the_field(
    trainer: TrainerClient, overrides: dict[str, object], needle: str
) -> None:
    with pytest.raises(RPCError) as err:
        await trainer.start_run(pb.StartRunRequest(request_id="bad", run_config_text=config_text(**overrides)))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details


async def test_a_run_that_fails_reports_why(trainer: TrainerClient, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    started = await trainer.start_run(
        pb.StartRunRequest(
            request_id="f", run_config_text=config_text(num_ranks=1, checkpoint={"resume_from": str(bad)})
        )
    )
    run = await wait_ended(trainer, started.run_id)
    assert run.state == pb.RUN_STATE_FAILED and "checkpoint.resume_from" in run.failure_reason
    with pytest.raises(RPCError) as err:
        await trainer.get_run(pb.GetRunRequest(run_id="run-none"))
    assert err.value.code == grpc.StatusCode.NOT_FOUND
