"""The job spec: defaults, the shipped default file, and bad specs refused with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from clients.jobspec import JobSpecError, load_job_spec, parse_job_spec
from clients.mainjob import FaultRequest, JobError, check_run_dir

DEFAULT_FILE = Path(__file__).resolve().parents[3] / "deploy" / "jobs" / "default.yaml"


def test_the_shipped_default_is_the_defaults() -> None:
    spec = load_job_spec(DEFAULT_FILE)
    assert spec == parse_job_spec({})
    assert spec.algorithm.name == "dapo" and spec.trainer.num_ranks == 2 and spec.rollout.num_servers == 2
    run = spec.run_config(plan_id="p")
    assert run.dataplane_plan_id == "p" and run.weighthub_model and not run.rollout.colocated
    assert run.warm_start.num_steps > 0 and run.num_ranks == 2


def test_ppo_epochs_and_mini_batches_reach_the_trainer() -> None:
    default = parse_job_spec({}).run_config(plan_id="p")
    assert default.ppo_epochs == 1 and default.mini_batch_size == 0
    run = parse_job_spec({"algorithm": {"ppo_epochs": 2, "mini_batch_size": 32}}).run_config(plan_id="p")
    assert run.ppo_epochs == 2 and run.mini_batch_size == 32


def test_no_rollout_servers_is_synchronous_rl_generated_by_the_trainer() -> None:
    from clients.mainjob import stack_services

    sync = parse_job_spec({"rollout": {"num_servers": 0}})
    assert sync.run_config(plan_id="p").rollout.colocated and "rollout" not in stack_services(sync)
    streaming = parse_job_spec({})
    assert not streaming.run_config(plan_id="p").rollout.colocated and "rollout" in stack_services(streaming)


def test_the_experience_buffer_is_sized_in_training_batches(tmp_path: Path) -> None:
    import yaml

    batch = 16 * 8
    default = yaml.safe_load(parse_job_spec({}).mixture_yaml(tmp_path / "p.jsonl"))
    deeper = yaml.safe_load(parse_job_spec({"rollout": {"buffered_batches": 3}}).mixture_yaml(tmp_path / "p.jsonl"))
    # Whole batches and one group (8) more: groups thinned by drops never leave it full short of a batch.
    assert default["global_batch_size"] == batch and deeper["rl"]["max_buffered_samples"] == 3 * batch + 8
    assert default["rl"]["max_buffered_samples"] == parse_job_spec({}).rollout.buffered_batches * batch + 8


def test_a_partial_spec_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("rollout: {completion_ratio: 0.5}\nmodel: {hidden_size: 64, num_attention_heads: 2}\n")
    spec = load_job_spec(path)
    assert spec.rollout.completion_ratio == 0.5 and spec.rollout.num_servers == 2
    assert '"hidden_size": 64' in spec.model.config_json() and "max_staleness_versions: 2" in spec.mixture_yaml(path)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"rollout": {"completion_ratio": 1.5}}, "rollout.completion_ratio"),
        ({"rollout": {"max_staleness_versions": 0}}, "rollout.max_staleness_versions"),
        ({"algorithm": {"name": "ppo"}}, "algorithm.name"),
        ({"algorithm": {"clip_epsilon_low": -1}}, "algorithm.clip_epsilon_low"),
        ({"algorithm": {"learning_rate": 5}}, "algorithm.learning_rate"),
        ({"trainer": {"num_ranks": 3}}, "trainer.prompts_per_step"),
        ({"trainer": {"num_ranks": "two"}}, "trainer.num_ranks"),
        ({"trainer": {"rl_time_budget_s": 10000}}, "trainer.rl_time_budget_s"),
        ({"task": {"ops": "/"}}, "task.ops"),
        ({"eval": {"num_prompts": 10**6}}, "eval.num_prompts"),
        ({"rolout": {}}, "rolout"),
        ({"model": {"hidden_size": 100, "num_attention_heads": 3}}, "model.hidden_size"),
        ({"algorithm": {"ppo_epochs": 0}}, "algorithm.ppo_epochs"),
        ({"algorithm": {"ppo_epochs": "two"}}, "algorithm.ppo_epochs"),
        ({"algorithm": {"mini_batch_size": 1}}, "algorithm.mini_batch_size"),
        ({"algorithm": {"mini_batch_size": 129}}, "algorithm.mini_batch_size"),
        ({"rollout": {"num_servers": -1}}, "rollout.num_servers"),
        ({"rollout": {"buffered_batches": 0}}, "rollout.buffered_batches"),
        ({"task": {"max_terms": 2}}, "task.max_terms"),
        ({"task": {"max_terms": 9}}, "task.max_terms"),
        # 8 terms of up to 9 write answers of up to 21 characters: 8 tokens cannot hold them.
        ({"task": {"max_terms": 8}, "rollout": {"max_new_tokens": 8}}, "rollout.max_new_tokens"),
    ],
)
def test_a_bad_spec_is_refused_with_the_field_named(data: dict[str, object], field: str) -> None:
    with pytest.raises(JobSpecError) as err:
        parse_job_spec(data)
    assert str(err.value).startswith(field), str(err.value)


def test_unreadable_files_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="cannot read"):
        load_job_spec(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rollout: [1,\n")
    with pytest.raises(JobSpecError, match="not YAML"):
        load_job_spec(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(JobSpecError, match="expected a mapping"):
        load_job_spec(tmp_path / "list.yaml")


def test_fault_requests_and_stale_run_directories(tmp_path: Path) -> None:
    assert FaultRequest.parse("crash@5") == FaultRequest("crash", 5)
    for bad in ("crash", "melt@3", "nan@0", "hang@x"):
        with pytest.raises(JobError, match="--inject-fault"):
            FaultRequest.parse(bad)
    check_run_dir(tmp_path / "new")  # a new directory is fine
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.md").write_text("#")
    with pytest.raises(JobError, match="not empty"):
        check_run_dir(tmp_path / "old")


def test_the_services_environment_is_read_by_the_services(tmp_path: Path) -> None:
    import dataclasses

    from clients.mainjob import service_env
    from services.common.catalog import SERVICES
    from services.common.config import env_name

    read = {"OMP_NUM_THREADS"}  # torch's
    for info in SERVICES:
        cls = info.load_config_class()
        read |= {env_name(cls, info.env_prefix, f.name) for f in dataclasses.fields(cls)}
    env = service_env(parse_job_spec({}), tmp_path)
    assert set(env) <= read, sorted(set(env) - read)
    # The warm start is start-up to the monitor: its allowance grows with the warm start.
    assert float(env["SEEDSTACK_ROBUSTNESS_STARTUP_TIMEOUT_S"]) > 120
