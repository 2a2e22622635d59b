"""A tiny model spec so engine tests run in seconds on one thread."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

TINY_MODEL = json.dumps(
    {
        "num_hidden_layers": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    }
)


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A run config of a 1-layer model, small sets and small steps."""
    spec: dict[str, Any] = {
        "model": {"config_json": TINY_MODEL},
        "task": {"num_warm_start": 40, "num_eval": 16},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 4},
        "warm_start": {"num_steps": 2, "batch_size": 8},
        "num_steps": 4,
    }
    spec.update(overrides)
    return spec


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)
