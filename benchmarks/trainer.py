"""Trainer: real learning, RL vs continued SFT, ours vs TRL's GRPOTrainer, step time split, 1 vs 2 ranks.

One run, same model (a 4-layer, hidden-128 Llama built from a config), same task, same warm start:

1. supervised warm start on the task's small labelled set -> held-out greedy accuracy ``acc_sft``;
2. our RL (GRPO, colocated rollouts) for ``budget_s`` -> ``acc_rl``, trained tokens/s, step split;
3. from the same warm-started weights, continued SFT on the same labelled set for ``budget_s``
   -> ``acc_sft_continued`` (what supervised training does with the same labels);
4. from the same weights, TRL's GRPOTrainer (offline, CPU, lr 5e-5, no gradient checkpointing,
   batch 16, 8 generations) for ``budget_s`` -> its accuracy and trained tokens/s;
5. (full mode) a fixed number of RL steps launched with torchrun on 1 and on 2 gloo ranks.

Trained tokens count prompt + completion tokens of every trained sample, for both trainers. All
accuracies come from the same greedy evaluation code on the same held-out set.

Run: ``python -m benchmarks.trainer [--quick] [--json PATH]``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

from benchmarks.report import emit, standard_parser
from services.trainer import task as tasks
from services.trainer.engine import Engine
from services.trainer.spec import RunSpec
from services.trainer.status import read_status

logger = logging.getLogger(__name__)


def base_spec(quick: bool) -> dict[str, Any]:
    """The run config every arm shares."""
    return {
        "algorithm": "grpo",
        "task": {"num_terms": 3, "max_value": 9, "ops": "+", "num_warm_start": 300, "num_eval": 200},
        "warm_start": {"num_steps": 40 if quick else 400, "learning_rate": 3e-3, "batch_size": 32},
        "rollout": {"prompts_per_step": 16, "group_size": 8, "max_new_tokens": 8},
        "optimizer": {"learning_rate": 2e-4, "max_grad_norm": 1.0},
        "num_steps": 10**9,
        "num_threads": 2,
    }


def ours_rl(engine: Engine, budget_s: float) -> dict[str, Any]:
    """Our RL loop for ``budget_s`` seconds; accuracy, tokens/s and the step split."""
    start, cpu_start = time.monotonic(), time.process_time()
    steps: list[dict[str, float]] = []
    trained_tokens = 0
    engine.freeze_reference()
    while time.monotonic() - start < budget_s:
        prompt_before = engine.prompt_cursor
        metrics = engine.advance()
        steps.append(metrics)
        per_prompt_tokens = statistics.mean(
            len(tasks.rl_prompt(engine.task, i)) for i in range(prompt_before, prompt_before + 4)
        )
        trained_tokens += int(metrics["num_tokens"] + metrics["num_samples"] * per_prompt_tokens)
        if len(steps) % 25 == 0:
            elapsed = time.monotonic() - start
            print(
                f"ours RL: step {len(steps)}, {elapsed:.0f}/{budget_s:.0f} s, reward {metrics['reward_mean']:.2f}",
                file=sys.stderr,
            )
    wall, cpu = time.monotonic() - start, time.process_time() - cpu_start
    accuracy, _ = engine.evaluate()
    return {
        "accuracy": accuracy,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": len(steps),
        "trained_tokens_per_s": trained_tokens / wall,
        "trained_tokens_per_cpu_s": trained_tokens / cpu,
        "reward_first_steps": statistics.mean(m["reward_mean"] for m in steps[:3]),
        "reward_last_steps": statistics.mean(m["reward_mean"] for m in steps[-3:]),
        "step_split_s": {
            key: statistics.mean(m[key] for m in steps)
            for key in ("step_time_s", "data_wait_s", "forward_backward_s", "optimizer_s", "publish_s")
        },
        "samples_per_step": statistics.mean(m["num_samples"] for m in steps),
    }


def continued_sft(engine: Engine, budget_s: float) -> dict[str, Any]:
    """More supervised steps on the same labelled set for ``budget_s`` seconds."""
    start = time.monotonic()
    steps = engine.warm_start(num_steps=10**9, time_budget_s=budget_s)
    accuracy, _ = engine.evaluate()
    return {"accuracy": accuracy, "wall_s": time.monotonic() - start, "steps": steps}


def char_tokenizer() -> Any:
    """A Hugging Face fast tokenizer with our ids: one token per byte, newline as EOS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i for i in range(256)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chr(0)))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\n", pad_token=chr(0), padding_side="left")


def trl_grpo(engine: Engine, budget_s: float, workdir: Path) -> dict[str, Any]:
    """TRL's GRPOTrainer from the engine's current weights for ``budget_s`` seconds."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = char_tokenizer()
    model: Any = engine.model
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    prompts = [tasks.rl_prompt(engine.task, 10**6 + i) for i in range(20000)]
    counted = {"tokens": 0}

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        counted["tokens"] += sum(len(p) + len(c) + 1 for p, c in zip(prompts, completions, strict=True))
        return [tasks.verify(p, c) for p, c in zip(prompts, completions, strict=True)]

    class Budget(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.monotonic()
            self.steps = 0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.steps += 1
            if time.monotonic() - self.start >= budget_s:
                control.should_training_stop = True
            return control

    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=8,
        learning_rate=5e-5,
        gradient_checkpointing=False,
        use_cpu=True,
        max_steps=10**6,
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        temperature=1.0,
        beta=0.0,
        seed=0,
        disable_tqdm=True,
    )
    budget = Budget()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[budget],
    )
    budget.start, cpu_start = time.monotonic(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # the HF Trainer prints its summary; stdout is the JSON
        trainer.train()
    wall, cpu = time.monotonic() - budget.start, time.process_time() - cpu_start
    trained: Any = trainer.model
    engine.model = trained.float()
    accuracy, _ = engine.evaluate()
    return {
        "accuracy": accuracy,
        "wall_s": wall,
        "cpu_s": cpu,
        "steps": budget.steps,
        "trained_tokens_per_s": counted["tokens"] / wall,
        "trained_tokens_per_cpu_s": counted["tokens"] / cpu,
    }


def ranks_scaling(spec: dict[str, Any], num_steps: int, workdir: Path) -> dict[str, Any]:
    """Samples/s of ``num_steps`` RL steps launched by torchrun on 1 and on 2 gloo ranks."""
    out: dict[str, Any] = {}
    for ranks in (1, 2):
        run_dir = workdir / f"ranks{ranks}"
        run_dir.mkdir()
        run_spec = dict(
            spec,
            num_ranks=ranks,
            num_threads=1,
            num_steps=num_steps,
            warm_start={"num_steps": 0},
            task=dict(spec["task"], num_eval=16),
        )
        (run_dir / "spec.json").write_text(json.dumps(run_spec))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nnodes=1",
                f"--nproc-per-node={ranks}",
                "--max-restarts=0",
                "-m",
                "services.trainer.rank",
                "--spec",
                str(run_dir / "spec.json"),
                "--run-dir",
                str(run_dir),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
        )
        metrics = read_status(run_dir)["metrics"]
        out[f"ranks_{ranks}"] = {"samples_per_s": metrics["samples_per_s"], "step_time_s": metrics["step_time_s"]}
    out["speedup_2_over_1"] = out["ranks_2"]["samples_per_s"] / out["ranks_1"]["samples_per_s"]
    return out


def main() -> None:
    parser = standard_parser(__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=None, help="wall time of each arm (RL, SFT, TRL)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads of every arm (default 2; 1 on a crowded machine)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")
    budget_s = args.budget_s or (6.0 if args.quick else 150.0)
    spec_dict = base_spec(args.quick)
    if args.threads:
        spec_dict["num_threads"] = args.threads
    torch.set_num_threads(spec_dict["num_threads"])
    spec = RunSpec.from_dict(spec_dict)
    engine = Engine(spec)
    t0 = time.monotonic()
    engine.warm_start()
    warm_s = time.monotonic() - t0
    acc_before, _ = engine.evaluate()
    warm_state = copy.deepcopy(engine.model.state_dict())
    print(f"warm start: {warm_s:.0f} s, held-out accuracy {acc_before:.3f}", file=sys.stderr)

    rl = ours_rl(engine, budget_s)
    print(f"ours RL: {rl['accuracy']:.3f} after {rl['wall_s']:.0f} s", file=sys.stderr)

    engine.model.load_state_dict(warm_state)
    sft = continued_sft(engine, budget_s)
    print(f"continued SFT: {sft['accuracy']:.3f}", file=sys.stderr)

    engine.model.load_state_dict(warm_state)
    with tempfile.TemporaryDirectory() as tmp:
        trl = trl_grpo(engine, budget_s, Path(tmp))
        print(f"TRL GRPO: {trl['accuracy']:.3f} after {trl['wall_s']:.0f} s", file=sys.stderr)
        scaling = None if args.quick else ranks_scaling(spec_dict, 6, Path(tmp))

    figures = {
        "warm_start_s": warm_s,
        "acc_sft": acc_before,
        "ours_rl": rl,
        "continued_sft": sft,
        "trl_grpo": trl,
        "ranks_scaling": scaling,
    }
    ratios = {
        "acc_sft": acc_before,
        "acc_rl": rl["accuracy"],
        "acc_sft_continued": sft["accuracy"],
        "rl_minutes": rl["wall_s"] / 60.0,
        "rl_gain_points": 100.0 * (rl["accuracy"] - acc_before),
        "rl_beats_sft_continued": rl["accuracy"] > sft["accuracy"],
        "vs_trl_accuracy": rl["accuracy"] / max(trl["accuracy"], 1e-9),
        "vs_trl_tokens_per_s": rl["trained_tokens_per_s"] / max(trl["trained_tokens_per_s"], 1e-9),
        # The same per CPU-second of this process: steadier than wall time on a shared machine.
        "vs_trl_tokens_per_cpu_s": rl["trained_tokens_per_cpu_s"] / max(trl["trained_tokens_per_cpu_s"], 1e-9),
    }
    if scaling is not None:
        ratios["ranks_2_over_1_samples_per_s"] = scaling["speedup_2_over_1"]
    emit(
        "trainer",
        config={"quick": args.quick, "budget_s": budget_s, "spec": spec_dict},
        figures=figures,
        ratios=ratios,
        json_path=args.json,
    )


if __name__ == "__main__":
    main()
