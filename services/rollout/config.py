"""Configuration of the rollout server: environment variables prefixed ``SEEDSTACK_ROLLOUT_``."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.common.config import ServerConfig, check


@dataclass(frozen=True, kw_only=True)
class RolloutConfig(ServerConfig):
    """Settings of the rollout server and verifiers service."""

    port: int = 50054
    """TCP port to serve gRPC on; 0 picks a free one."""
    model_config_json: str = ""
    """Hugging Face config of the served model as JSON; empty for the built-in 4-layer Llama."""
    model_checkpoint_path: str = ""
    """Local checkpoint directory or .gguf file to serve instead of a freshly built model."""
    tokenizer: str = "char"
    """Tokenizer: "char" (UTF-8 bytes, the data plane's), a local tokenizer directory, or empty for the checkpoint's."""
    model_seed: int = 0
    """Seed of the initial weights of a model built from its config."""
    max_batch_size: int = 64
    """Sequences decoded together (KV-cache slots)."""
    max_context_tokens: int = 512
    """Prompt plus completion tokens one sequence may hold."""
    max_new_tokens: int = 256
    """Largest max_new_tokens a request may ask for."""
    default_max_new_tokens: int = 64
    """max_new_tokens of a request that leaves it 0."""
    max_samples_per_prompt: int = 64
    """Largest n per prompt."""
    max_sequences_per_request: int = 4096
    """Most sequences (prompts times n) one Generate call may queue."""
    num_threads: int = 1
    """torch intra-op threads; 1 is fastest for small models on a shared machine."""
    nice: int = 0
    """Scheduling niceness the server's threads take at start (0-19): on cores shared with the trainer
    (``seedctl run`` sets 10) its decoding yields to the trainer's step, the job's critical path."""
    weighthub_model: str = ""
    """Weight-hub model to follow from the start; empty to serve the built-in weights until told."""
    weights_bind_host: str = "0.0.0.0"
    """Address this server's tensor-plane listener binds, to serve the versions it holds to peers."""
    code_timeout_s: float = 5.0
    """Wall-clock limit of one code verification."""
    code_memory_bytes: int = 512 * 1024 * 1024
    """Address-space limit of one code verification."""
    max_concurrent_verifications: int = 2
    """Code sandboxes running at once."""
    stats_window_s: float = 10.0
    """Window of the rates Stats reports."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_config_json:
            try:
                ok = isinstance(json.loads(self.model_config_json), dict)
            except ValueError:
                ok = False
            check(ok, "model_config_json", self.model_config_json, "expected a JSON object")
        check(
            bool(self.tokenizer or self.model_checkpoint_path),
            "tokenizer",
            self.tokenizer,
            "must not be empty unless model_checkpoint_path brings one",
        )
        check(1 <= self.max_batch_size <= 4096, "max_batch_size", self.max_batch_size, "must be in 1..4096")
        check(2 <= self.max_context_tokens <= 1 << 20, "max_context_tokens", self.max_context_tokens, "must be >= 2")
        check(
            1 <= self.max_new_tokens < self.max_context_tokens,
            "max_new_tokens",
            self.max_new_tokens,
            "must be >= 1 and below max_context_tokens",
        )
        check(
            1 <= self.default_max_new_tokens <= self.max_new_tokens,
            "default_max_new_tokens",
            self.default_max_new_tokens,
            "must be in 1..max_new_tokens",
        )
        check(self.max_samples_per_prompt >= 1, "max_samples_per_prompt", self.max_samples_per_prompt, "must be >= 1")
        check(
            self.max_sequences_per_request >= 1,
            "max_sequences_per_request",
            self.max_sequences_per_request,
            "must be >= 1",
        )
        check(1 <= self.num_threads <= 256, "num_threads", self.num_threads, "must be in 1..256")
        check(0 <= self.nice <= 19, "nice", self.nice, "must be in 0..19")
        check(0 < self.code_timeout_s <= 600, "code_timeout_s", self.code_timeout_s, "must be in (0, 600]")
        check(self.code_memory_bytes >= 64 << 20, "code_memory_bytes", self.code_memory_bytes, "must be >= 64 MiB")
        check(
            1 <= self.max_concurrent_verifications <= 64,
            "max_concurrent_verifications",
            self.max_concurrent_verifications,
            "must be in 1..64",
        )
        check(self.stats_window_s > 0, "stats_window_s", self.stats_window_s, "must be > 0")
