"""The policy model and tokenizer the trainer builds from a ``ModelSpec``.

The rollout server (issue #5) brings its own equivalents in ``services/rollout/model.py``; the two are
to be merged into one helper once both have landed, so trainer and rollout build equal models.

The built-in ``char`` tokenizer is the data plane's: one token per UTF-8 byte (vocabulary 256), so
prompt token ids from the data plane are this model's ids. A newline ends an answer (the EOS token).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from services.common.errors import InvalidArgument
from services.common.lm import llama_config

EOS_TEXT = "\n"
DEFAULT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128,
    "bos_token_id": 1,
    "eos_token_id": 10,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class CharTokenizer:
    """UTF-8 bytes as tokens (the data plane's ``char`` tokenizer); ``eos_id`` is the newline byte."""

    vocab_size: int = 256
    eos_id: int = 10
    pad_id: int = 0

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; stops at the first EOS, drops bytes that do not decode."""
        out = bytearray()
        for i in ids:
            if i == self.eos_id:
                break
            out.append(int(i) & 0xFF)
        return out.decode("utf-8", errors="ignore")


def load_tokenizer(name: str) -> CharTokenizer:
    """The tokenizer a ``ModelSpec.tokenizer`` names; only ``char`` (or empty) is built in here."""
    if name not in ("", "char"):
        raise InvalidArgument(f"model.tokenizer={name!r}: only the built-in 'char' tokenizer is supported")
    return CharTokenizer()


def model_config(config_json: str) -> Any:
    """A ``LlamaConfig`` from JSON (the defaults above where the JSON is silent or empty)."""
    config = llama_config(config_json, DEFAULT_CONFIG)
    if int(config.vocab_size) < 256:
        raise InvalidArgument(f"model.config_json: vocab_size={config.vocab_size} < 256 of the char tokenizer")
    return config


def build_model(config_json: str = "", checkpoint_path: str = "", *, seed: int = 0) -> torch.nn.Module:
    """A causal LM: from a local pretrained checkpoint, or freshly initialised from ``config_json``."""
    from transformers import LlamaForCausalLM

    if checkpoint_path:
        return LlamaForCausalLM.from_pretrained(checkpoint_path, local_files_only=True)
    config = model_config(config_json)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


class ValueModel(torch.nn.Module):
    """VAPO's critic: the policy's architecture with a scalar head per token."""

    def __init__(self, config_json: str, *, seed: int = 0) -> None:
        super().__init__()
        from transformers import LlamaModel

        config = model_config(config_json)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.body = LlamaModel(config)
            self.head = torch.nn.Linear(config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Value per position, shape (batch, length)."""
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.head(hidden).squeeze(-1)  # type: ignore[no-any-return]
