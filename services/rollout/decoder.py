"""The decode path: a Llama-family forward pass over a slot-based KV cache, and the sampler.

Hugging Face's ``generate`` spends most of a small model's decode step in framework overhead (4-6 ms
per step here), not arithmetic. This module runs the same weights (the model's own state-dict names)
with the fewest possible torch calls: fused QKV and gate/up projections, rotary embedding of queries and
keys in one call, a preallocated cache whose active rows are kept contiguous (slots 0..B-1), prompts
prefilled together as padded batches (one SDPA call per layer for many prompts), and a sampler that
does temperature, top-k, top-p and seeded sampling for the whole batch at once.

Sampling is seeded per sequence and per position (Gumbel-max with counter-based noise), so a
sequence's tokens do not depend on which other sequences share its batch, on pauses, or on being
continued later from a partial.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from services.common.errors import InvalidArgument

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Arch:
    """Shape of a Llama-family model, read from its Hugging Face config and rotary module."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    rms_eps: float
    max_positions: int
    tied_embeddings: bool
    rope_cos: torch.Tensor
    """cos of every position, (max_positions, head_dim), attention scaling applied."""
    rope_sin: torch.Tensor
    """sin of every position, like ``rope_cos``, its first half negated: ``rotate_half(x) * sin`` becomes
    ``swap_halves(x) * rope_sin`` (bit-identical, one op fewer)."""

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """The state-dict names and shapes a weight version must provide (biases optional)."""
        h, d = self.hidden_size, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, h),
            "model.norm.weight": (h,),
        }
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (self.num_heads * d, h)
            shapes[p + "self_attn.k_proj.weight"] = (self.num_kv_heads * d, h)
            shapes[p + "self_attn.v_proj.weight"] = (self.num_kv_heads * d, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, self.num_heads * d)
            shapes[p + "mlp.gate_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.up_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.down_proj.weight"] = (h, self.intermediate_size)
        if not self.tied_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes


def read_arch(model: torch.nn.Module) -> Arch:
    """The ``Arch`` of a Hugging Face causal LM; InvalidArgument for an architecture this path cannot run."""
    # Hugging Face configs and submodules are dynamic attributes; typed as Any on purpose.
    config: Any = model.config
    names = list(getattr(config, "architectures", None) or [type(model).__name__])
    if type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise InvalidArgument(f"model architecture {names} is not supported; supported: {SUPPORTED_ARCHITECTURES}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise InvalidArgument(f"model hidden_act={config.hidden_act!r}: only 'silu' is supported")
    num_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    max_positions = int(config.max_position_embeddings)
    inner: Any = model.model
    rotary: Any = inner.rotary_emb
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] * rotary.inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    return Arch(
        num_layers=int(config.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        hidden_size=int(config.hidden_size),
        intermediate_size=int(config.intermediate_size),
        vocab_size=int(config.vocab_size),
        rms_eps=float(config.rms_norm_eps),
        max_positions=max_positions,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        rope_cos=(emb.cos() * scaling).contiguous(),
        rope_sin=_negate_first_half(emb.sin() * scaling).contiguous(),
    )


@dataclass(frozen=True)
class LayerWeights:
    """One decoder layer, with QKV and gate/up fused."""

    ln1: torch.Tensor
    wqkv: torch.Tensor
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    ln2: torch.Tensor
    w_gate_up: torch.Tensor
    w_down: torch.Tensor


@dataclass(frozen=True)
class Weights:
    """A weight version laid out for the decode path; built off the decode thread, swapped by reference."""

    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    norm: torch.Tensor
    lm_head: torch.Tensor


def check_tensors(arch: Arch, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError naming the first tensor that is missing, misshapen or not finite."""
    for name, shape in arch.tensor_shapes().items():
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"tensor {name} is missing")
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"tensor {name} is not a finite floating-point tensor")


def prepare_weights(arch: Arch, tensors: Mapping[str, torch.Tensor]) -> Weights:
    """Lay out ``tensors`` (state-dict names) for decoding; copies, so the source may be reused."""
    check_tensors(arch, tensors)

    def get(name: str) -> torch.Tensor:
        return tensors[name].detach().to(torch.float32)

    layers = []
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        biases = [tensors.get(p + f"self_attn.{x}_proj.bias") for x in "qkv"]
        present = [b for b in biases if b is not None]
        bqkv = torch.cat([b.detach().float() for b in present]) if len(present) == len(biases) else None
        layers.append(
            LayerWeights(
                ln1=get(p + "input_layernorm.weight").clone(),
                wqkv=torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"]).contiguous(),
                bqkv=bqkv,
                wo=get(p + "self_attn.o_proj.weight").clone(),
                ln2=get(p + "post_attention_layernorm.weight").clone(),
                w_gate_up=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]).contiguous(),
                w_down=get(p + "mlp.down_proj.weight").clone(),
            )
        )
    embed = get("model.embed_tokens.weight").clone()
    lm_head = embed if arch.tied_embeddings else get("lm_head.weight").clone()
    return Weights(embed=embed, layers=tuple(layers), norm=get("model.norm.weight").clone(), lm_head=lm_head)


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _negate_first_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., :half], x[..., half:]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``signed_sin`` from ``Arch.rope_sin``."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos + swapped * signed_sin


class KVCache:
    """Keys and values of ``num_slots`` sequences of up to ``max_tokens``; active rows are slots 0..B-1."""

    def __init__(self, arch: Arch, num_slots: int, max_tokens: int) -> None:
        shape = (num_slots, arch.num_kv_heads, max_tokens, arch.head_dim)
        self.keys = [torch.zeros(shape) for _ in range(arch.num_layers)]
        self.values = [torch.zeros(shape) for _ in range(arch.num_layers)]
        self.num_slots = num_slots
        self.max_tokens = max_tokens

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        if src == dst or length == 0:
            return
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


PREFILL_CHUNK_TOKENS = 4096
"""Most padded tokens one batched prefill runs (bounds its activations)."""


class Decoder:
    """Prefill and batched decode steps of one architecture over one ``KVCache``."""

    def __init__(self, arch: Arch, cache: KVCache) -> None:
        self.arch = arch
        self.cache = cache
        self._gqa = arch.num_kv_heads != arch.num_heads
        self._q = arch.num_heads * arch.head_dim
        self._kv = arch.num_kv_heads * arch.head_dim
        self._group = arch.num_heads // arch.num_kv_heads
        self._scale = arch.head_dim**-0.5
        self._columns = torch.arange(cache.max_tokens)

    def prefill(self, w: Weights, token_ids: list[int], slot: int) -> None:
        """Write the keys and values of ``token_ids`` (positions 0..T-1) into ``slot``."""
        self.prefill_many(w, [token_ids], [slot])

    @torch.inference_mode()
    def prefill_many(self, w: Weights, contexts: Sequence[Sequence[int]], slots: Sequence[int]) -> None:
        """Prefill ``contexts[i]`` into ``slots[i]``; contexts of similar length run as one padded batch.

        Rows are right-padded: under the causal mask a real position never sees a pad, and the pads'
        keys land beyond the row's length, where decode steps overwrite them before they become visible.
        """
        rows = sorted((len(c), slot, c) for c, slot in zip(contexts, slots, strict=True) if c)
        chunk: list[tuple[int, int, Sequence[int]]] = []
        for row in rows:
            # Sorted by length, so the new row is the longest: it sets the padded width.
            if chunk and (row[0] * (len(chunk) + 1) > PREFILL_CHUNK_TOKENS or row[0] > 2 * chunk[0][0] + 16):
                self._prefill_rows(w, chunk)
                chunk = []
            chunk.append(row)
        if chunk:
            self._prefill_rows(w, chunk)

    def _prefill_rows(self, w: Weights, rows: list[tuple[int, int, Sequence[int]]]) -> None:
        a = self.arch
        b, t = len(rows), rows[-1][0]
        ids = torch.zeros(b, t, dtype=torch.int64)
        for r, (n, _, context) in enumerate(rows):
            ids[r, :n] = torch.as_tensor(context, dtype=torch.int64)
        slots = torch.tensor([slot for _, slot, _ in rows])
        x = w.embed[ids]
        cos, sin = a.rope_cos[:t], a.rope_sin[:t]
        num_qk_heads = a.num_heads + a.num_kv_heads
        for i, lw in enumerate(w.layers):
            h = _rms(x, lw.ln1, a.rms_eps)
            qkv = F.linear(h, lw.wqkv, lw.bqkv)
            qk = _rope(qkv[..., : self._q + self._kv].view(b, t, num_qk_heads, a.head_dim).transpose(1, 2), cos, sin)
            q, k = qk[:, : a.num_heads], qk[:, a.num_heads :]
            v = qkv[..., self._q + self._kv :].view(b, t, a.num_kv_heads, a.head_dim).transpose(1, 2)
            self.cache.keys[i][slots, :, :t] = k
            self.cache.values[i][slots, :, :t] = v
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self._gqa)
            x = x + F.linear(out.transpose(1, 2).reshape(b, t, self._q), lw.wo)
            h = _rms(x, lw.ln2, a.rms_eps)
            gate, up = F.linear(h, lw.w_gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, lw.w_down)

    @torch.inference_mode()
    def step(self, w: Weights, tokens: torch.Tensor, positions: torch.Tensor, max_len: int) -> torch.Tensor:
        """Logits (B, vocab) after feeding ``tokens[b]`` at ``positions[b]`` to slot b, for b < B."""
        a = self.arch
        b = tokens.shape[0]
        rows = torch.arange(b)
        x = w.embed[tokens]
        cos = a.rope_cos[positions][:, None, :]
        sin = a.rope_sin[positions][:, None, :]
        # One query per sequence and head: batched matmuls over (sequence, KV head) beat SDPA's kernels at
        # this size; query heads grouped per KV head avoid repeating the cache for GQA. The mask enters as
        # the addend of the score matmul (baddbmm), built once per step for every layer.
        hidden = self._columns[None, :max_len] > positions[:, None]
        bias = torch.zeros(b, a.num_kv_heads, self._group, max_len)
        bias.masked_fill_(hidden[:, None, None, :], float("-inf"))
        bias = bias.view(b * a.num_kv_heads, self._group, max_len)
        num_qk_heads = a.num_heads + a.num_kv_heads
        shape = (a.hidden_size,)
        for i, lw in enumerate(w.layers):
            h = F.rms_norm(x, shape, lw.ln1, a.rms_eps)
            qkv = F.linear(h, lw.wqkv, lw.bqkv)
            qk = _rope(qkv[:, : self._q + self._kv].view(b, num_qk_heads, a.head_dim), cos, sin)
            k = qk[:, a.num_heads :]
            v = qkv[:, self._q + self._kv :].view(b, a.num_kv_heads, a.head_dim)
            keys, values = self.cache.keys[i], self.cache.values[i]
            keys[rows, :, positions] = k
            values[rows, :, positions] = v
            q = qk[:, : a.num_heads].reshape(b * a.num_kv_heads, self._group, a.head_dim)
            cached_keys = keys[:b, :, :max_len].reshape(b * a.num_kv_heads, max_len, a.head_dim)
            scores = torch.baddbmm(bias, q, cached_keys.transpose(1, 2), alpha=self._scale)
            probs = torch.softmax(scores, dim=-1)
            out = torch.bmm(probs, values[:b, :, :max_len].reshape(b * a.num_kv_heads, max_len, a.head_dim))
            x = torch.addmm(x, out.view(b, self._q), lw.wo.t())
            h = F.rms_norm(x, shape, lw.ln2, a.rms_eps)
            gate, up = F.linear(h, lw.w_gate_up).chunk(2, dim=-1)
            x = torch.addmm(x, F.silu(gate) * up, lw.w_down.t())
        return F.linear(F.rms_norm(x, shape, w.norm, a.rms_eps), w.lm_head)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply), elementwise on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """``_mix32`` on a Python int (the same low 32 bits), for keys computed once per sequence."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def seed_key(seed: int, sample_index: int) -> int:
    """The 32-bit noise key of sample ``sample_index`` of a request seeded with ``seed``."""
    a = _mix32_int((seed & _MASK32) + 0x3C6EF372)
    b = _mix32_int(((seed >> 32) & _MASK32) + 0x1B873593)
    c = _mix32_int((sample_index & _MASK32) + 0x5BD1E995)
    return _mix32_int(a ^ _mix32_int(b ^ _mix32_int(c)))


@dataclass
class SamplerBatch:
    """Per-row sampling settings of one decode step."""

    temperature: torch.Tensor
    """(B,) float; 0 means greedy."""
    top_k: torch.Tensor
    """(B,) int; 0 means off."""
    top_p: torch.Tensor
    """(B,) float; 1 means off."""
    keys: torch.Tensor
    """(B,) int64 noise keys."""
    counters: torch.Tensor
    """(B,) int64 position of the token being sampled within its completion."""
    any_top_k: bool
    any_top_p: bool
    all_greedy: bool


@torch.inference_mode()
def sample(logits: torch.Tensor, s: SamplerBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and their behaviour log-probabilities for one step.

    The log-probability is that of the sampling distribution before truncation: ``log_softmax(logits / T)``
    (``T = 1`` for greedy rows).
    """
    logits = logits.float()
    greedy = s.temperature <= 0
    temperature = torch.where(greedy, torch.ones_like(s.temperature), s.temperature)
    scaled = logits / temperature[:, None]
    logprobs = torch.log_softmax(scaled, dim=-1)
    if s.all_greedy:
        tokens = torch.argmax(logits, dim=-1)
        return tokens, logprobs.gather(1, tokens[:, None])[:, 0]
    filtered = scaled
    if s.any_top_k:
        vocab = logits.shape[-1]
        k = torch.where(s.top_k > 0, s.top_k.clamp(max=vocab), torch.full_like(s.top_k, vocab))
        kth = torch.sort(scaled, dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
        filtered = filtered.masked_fill(filtered < kth, float("-inf"))
    if s.any_top_p:
        sorted_scores, order = torch.sort(filtered, dim=-1, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= s.top_p[:, None]
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        filtered = filtered.masked_fill(drop, float("-inf"))
    vocab_ids = torch.arange(logits.shape[-1], dtype=torch.int64)
    base = _mix32(s.keys ^ _mix32((s.counters * 0x9E3779B1 + 0x7F4A7C15) & _MASK32))
    bits = _mix32((base[:, None] + vocab_ids[None, :] * 0x27D4EB2F) & _MASK32)
    uniform = ((bits.double() + 0.5) / 4294967296.0).clamp(1e-12, 1 - 1e-12)
    gumbel = (-torch.log(-torch.log(uniform))).float()
    tokens = torch.argmax(filtered + gumbel, dim=-1)
    tokens = torch.where(greedy, torch.argmax(logits, dim=-1), tokens)
    return tokens, logprobs.gather(1, tokens[:, None])[:, 0]
