"""The decode path: a Llama-family forward pass over a slot-based KV cache, and the sampler.

Hugging Face's ``generate`` spends most of a small model's decode step in framework overhead (4-6 ms
per step here), not arithmetic. This module runs the same weights (the model's own state-dict names)
with the fewest possible torch calls and memory traffic:

- weights laid out once per version (``prepare_weights``, also on every swap): QKV and gate/up fused,
  every matrix stored (in, out) for ``torch.mm`` (MKL's fast path at small batch), each RMSNorm weight
  folded into the matrix it feeds;
- a preallocated cache (on huge pages where Linux allows) whose active rows are kept contiguous (slots
  0..B-1); a step writes each new key and value in place (one ``index_copy_`` per tensor) and attends
  over the valid prefix with batched matmuls and an additive length mask;
- RoPE of a step as one small matrix per sequence (one batched matmul for queries, one for keys);
- prompts prefilled together as padded batches (one SDPA call per layer for many prompts), a prefix
  that all of them share run once;
- a sampler that does temperature, top-k, top-p and seeded sampling for the whole batch at once.

Sampling is seeded per sequence and per position (Gumbel-max with counter-based noise), so a
sequence's tokens do not depend on which other sequences share its batch, on pauses, or on being
continued later from a partial.
"""

from __future__ import annotations

import ctypes
import math
import sys
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
    """One decoder layer: QKV and gate/up fused, matrices stored (in, out) for ``x @ w``, each RMSNorm's
    weight folded into the rows of the matrix it feeds (``(x * r * g) @ w == (x * r) @ (g[:, None] * w)``).

    ``torch.mm`` over a contiguous (in, out) matrix runs 1.3-2x faster at decode batch sizes than
    ``F.linear`` over the (out, in) one; the fold saves one elementwise kernel per norm.
    """

    wqkv: torch.Tensor
    """(hidden, q + 2 kv), ``input_layernorm`` folded in."""
    bqkv: torch.Tensor | None
    wo: torch.Tensor
    w_gate_up: torch.Tensor
    """(hidden, 2 intermediate), ``post_attention_layernorm`` folded in."""
    w_down: torch.Tensor


@dataclass(frozen=True)
class Weights:
    """A weight version laid out for the decode path; built off the decode thread, swapped by reference."""

    embed: torch.Tensor
    layers: tuple[LayerWeights, ...]
    lm_head: torch.Tensor
    """(hidden, vocab), the final norm folded in."""


def check_tensors(arch: Arch, tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError naming the first tensor that is missing, misshapen or not finite."""
    for name, shape in arch.tensor_shapes().items():
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"tensor {name} is missing")
        if tuple(t.shape) != shape:
            raise ValueError(f"tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point() or (t.numel() and not _finite(t)):
            raise ValueError(f"tensor {name} is not a finite floating-point tensor")


def _finite(t: torch.Tensor) -> bool:
    """Whether every element is finite: one min/max reduction (NaN propagates into both, an infinity
    shows in one), some 6x cheaper than ``isfinite(t).all()``, which materialises a mask."""
    low, high = torch.aminmax(t.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def prepare_weights(arch: Arch, tensors: Mapping[str, torch.Tensor]) -> Weights:
    """Lay out ``tensors`` (state-dict names) for decoding; copies, so the source may be reused."""
    check_tensors(arch, tensors)

    def get(name: str) -> torch.Tensor:
        return tensors[name].detach().to(torch.float32)

    def fused(norm: str, *names: str) -> torch.Tensor:
        """The named (out, in) matrices stacked, transposed to (in, out), rows scaled by the norm weight.

        Each source is read once and written once, straight into its columns of the result (no
        concatenated or transposed intermediate).
        """
        parts = [get(name) for name in names]
        out = torch.empty(parts[0].shape[1], sum(p.shape[0] for p in parts))
        scale = get(norm)[:, None] if norm else None
        column = 0
        for part in parts:
            target = out[:, column : column + part.shape[0]]
            if scale is None:
                target.copy_(part.t())
            else:
                torch.mul(part.t(), scale, out=target)
            column += part.shape[0]
        return out

    layers = []
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        biases = [tensors.get(p + f"self_attn.{x}_proj.bias") for x in "qkv"]
        present = [b for b in biases if b is not None]
        bqkv = torch.cat([b.detach().float() for b in present]) if len(present) == len(biases) else None
        attn, mlp = p + "self_attn.", p + "mlp."
        layers.append(
            LayerWeights(
                wqkv=fused(
                    p + "input_layernorm.weight", attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"
                ),
                bqkv=bqkv,
                wo=fused("", attn + "o_proj.weight"),
                w_gate_up=fused(
                    p + "post_attention_layernorm.weight", mlp + "gate_proj.weight", mlp + "up_proj.weight"
                ),
                w_down=fused("", mlp + "down_proj.weight"),
            )
        )
    head = "model.embed_tokens.weight" if arch.tied_embeddings else "lm_head.weight"
    return Weights(
        embed=get("model.embed_tokens.weight").clone(),
        layers=tuple(layers),
        lm_head=fused("model.norm.weight", head),
    )


def _rms(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """RMSNorm without its weight (folded into the next matrix) in four small kernels; ``F.rms_norm``
    runs seven on CPU, two of them dtype copies."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return torch.addcmul(eps, norm, norm, value=1 / x.shape[-1]).rsqrt_().mul(x)


def _negate_first_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., :half], x[..., half:]), dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``signed_sin`` from ``Arch.rope_sin``."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    return x * cos + swapped * signed_sin


_HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def _zeros_on_huge_pages(shape: tuple[int, ...]) -> torch.Tensor:
    """A zeroed float32 tensor whose memory Linux is asked to back with 2 MiB pages.

    A decode step reads every active row's cache in every layer, megabytes scattered over 4 KiB pages;
    on a VM each TLB miss walks two page tables. With transparent huge pages in ``madvise`` mode (the
    common default) nothing gets them unless asked: asking makes a batch-32 step about 5 % faster here.
    Elsewhere, or when the kernel says no, this is ``torch.zeros``.
    """
    nbytes = math.prod(shape) * 4
    if _madvise is None or nbytes < _HUGE_PAGE_BYTES:
        return torch.zeros(shape)
    # Untouched (not yet faulted in) memory, advised before the zeroing touches it.
    raw = torch.empty(nbytes + _HUGE_PAGE_BYTES, dtype=torch.uint8)
    start = -raw.data_ptr() % _HUGE_PAGE_BYTES
    _madvise(raw.data_ptr() + start, nbytes, _MADV_HUGEPAGE)  # advice only: a refusal changes nothing
    return raw[start : start + nbytes].view(torch.float32).view(shape).zero_()


class KVCache:
    """Keys and values of ``num_slots`` sequences of up to ``max_tokens``; active rows are slots 0..B-1."""

    def __init__(self, arch: Arch, num_slots: int, max_tokens: int) -> None:
        shape = (num_slots, arch.num_kv_heads, max_tokens, arch.head_dim)
        self.keys = [_zeros_on_huge_pages(shape) for _ in range(arch.num_layers)]
        self.values = [_zeros_on_huge_pages(shape) for _ in range(arch.num_layers)]
        self.num_slots = num_slots
        self.max_tokens = max_tokens

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        if src == dst or length == 0:
            return
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def compact(self, keep: Sequence[bool], lengths: Sequence[int]) -> list[int]:
        """Make the kept ones of slots 0..len(keep)-1 the slots 0..n-1; the old slot of each new one.

        Kept slots beyond n move into the holes below it (slot i's first ``lengths[i]`` positions), so
        a step in which a few sequences finish copies only as many caches as finished, not every slot
        after them.
        """
        width = sum(keep)
        order = list(range(width))
        holes = [slot for slot in range(width) if not keep[slot]]
        movers = [slot for slot in range(width, len(keep)) if keep[slot]]
        for hole, slot in zip(holes, movers, strict=True):
            self.copy_slot(slot, hole, lengths[slot])
            order[hole] = slot
        return order


PREFILL_CHUNK_TOKENS = 4096
"""Most padded tokens one batched prefill runs (bounds its activations)."""
MIN_SHARED_PREFIX_SAVING = 32
"""Token positions a shared prefix must save (rows beyond the first x its length) to run it once: below
that, its extra forward call costs more than it saves."""


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
        self._eps = torch.tensor(arch.rms_eps)
        # Row (slot b, head h, position p) of a cache tensor viewed as (slots * heads * max_tokens,
        # head_dim) is _cache_rows[b, h] + p: a step's new keys and values land with one index_copy_ each.
        heads = torch.arange(arch.num_kv_heads)
        self._cache_rows = (torch.arange(cache.num_slots)[:, None] * arch.num_kv_heads + heads) * cache.max_tokens
        half = arch.head_dim // 2
        swapped = torch.cat((torch.arange(half, arch.head_dim), torch.arange(half)))
        # Row j holds a one in column swap(j): x @ (S * sin) is swap_halves(x) * sin.
        self._swap_halves = torch.eye(arch.head_dim)[swapped]

    def flops(self, tokens: int, context: int) -> int:
        """Multiply-adds x 2 of running ``tokens`` tokens that each attend over ``context`` positions:
        the size by which the engine decides whether a step is worth torch's intra-op pool."""
        a = self.arch
        matrices = a.num_layers * (
            a.hidden_size * (2 * self._q + 2 * self._kv) + 3 * a.hidden_size * a.intermediate_size
        )
        attention = a.num_layers * 2 * self._q * context
        return 2 * tokens * (matrices + attention + a.hidden_size * a.vocab_size)

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
        """One padded batch; a prefix that every row shares runs once and is copied into every slot."""
        contexts = [list(c) for _, _, c in rows]
        slots = torch.tensor([slot for _, slot, _ in rows])
        shared = _shared_prefix_length(contexts)
        prefix = None
        if (len(contexts) - 1) * shared >= MIN_SHARED_PREFIX_SAVING:
            prefix = self._forward(w, torch.tensor([contexts[0][:shared]]), 0, None, None)
            for i, (k, v) in enumerate(prefix):
                self.cache.keys[i][slots, :, :shared] = k
                self.cache.values[i][slots, :, :shared] = v
        else:
            shared = 0
        width = max(len(c) for c in contexts) - shared
        if width == 0:
            return
        ids = torch.zeros(len(contexts), width, dtype=torch.int64)
        for r, context in enumerate(contexts):
            ids[r, : len(context) - shared] = torch.tensor(context[shared:], dtype=torch.int64)
        self._forward(w, ids, shared, prefix, slots)

    def _forward(
        self,
        w: Weights,
        ids: torch.Tensor,
        start: int,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None,
        slots: torch.Tensor | None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run ``ids`` (B, T) at positions ``start..start+T-1`` through the layers.

        Each position attends causally within its row and to all of ``prefix`` (per layer, the keys and
        values of positions ``0..start-1``, shared by every row). With ``slots``, the keys and values
        are written there; without, they are returned (the prefix of a later call).
        """
        a = self.arch
        b, t = ids.shape
        x = w.embed.index_select(0, ids.view(-1))
        cos, sin = a.rope_cos[start : start + t], a.rope_sin[start : start + t]
        mask = None if prefix is None else self._columns[None, : start + t] <= self._columns[:t, None] + start
        num_qk_heads = a.num_heads + a.num_kv_heads
        inner = a.intermediate_size
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, lw in enumerate(w.layers):
            qkv = _project(_rms(x, self._eps), lw.wqkv, lw.bqkv).view(b, t, -1)
            qk = _rope(qkv[..., : self._q + self._kv].view(b, t, num_qk_heads, a.head_dim).transpose(1, 2), cos, sin)
            q, k = qk[:, : a.num_heads], qk[:, a.num_heads :]
            v = qkv[..., self._q + self._kv :].view(b, t, a.num_kv_heads, a.head_dim).transpose(1, 2)
            if slots is None:
                kept.append((k, v))
            else:
                self.cache.keys[i][slots, :, start : start + t] = k
                self.cache.values[i][slots, :, start : start + t] = v
            if prefix is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self._gqa)
            else:
                prefix_k, prefix_v = prefix[i]
                k = torch.cat((prefix_k.expand(b, -1, -1, -1), k), dim=2)
                v = torch.cat((prefix_v.expand(b, -1, -1, -1), v), dim=2)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self._gqa)
            x = torch.addmm(x, out.transpose(1, 2).reshape(b * t, self._q), lw.wo)
            gate_up = torch.mm(_rms(x, self._eps), lw.w_gate_up)
            x = torch.addmm(x, F.silu(gate_up[:, :inner]).mul_(gate_up[:, inner:]), lw.w_down)
        return kept

    @torch.inference_mode()
    def step(self, w: Weights, tokens: torch.Tensor, positions: torch.Tensor, max_len: int) -> torch.Tensor:
        """Logits (B, vocab) after feeding ``tokens[b]`` at ``positions[b]`` to slot b, for b < B."""
        a = self.arch
        b = tokens.shape[0]
        d, num_kv, group = a.head_dim, a.num_kv_heads, self._group
        q_end, k_end = self._q, self._q + self._kv
        new_rows = (self._cache_rows[:b] + positions[:, None]).view(-1)
        x = w.embed.index_select(0, tokens)
        # RoPE as one (head_dim, head_dim) matrix per sequence, built once per step: ``x @ rotation`` is
        # ``x * cos + rotate_half(x) * sin`` (two non-zeros per column), one batched matmul per layer for
        # the queries and one for the keys, each landing contiguous (no copies before the cache write
        # or the score matmul).
        sin = a.rope_sin.index_select(0, positions)[:, None, :]
        rotation = torch.addcmul(torch.diag_embed(a.rope_cos.index_select(0, positions)), self._swap_halves, sin)
        # One query per sequence and head: batched matmuls over (sequence, KV head) beat SDPA's kernels at
        # this size; query heads grouped per KV head avoid repeating the cache for GQA. The mask enters as
        # the addend of the score matmul (baddbmm), built once per step for every layer.
        hidden = self._columns[None, :max_len] > positions[:, None]
        bias = torch.zeros(b, num_kv, group, max_len)
        bias.masked_fill_(hidden[:, None, None, :], float("-inf"))
        bias = bias.view(b * num_kv, group, max_len)
        inner = a.intermediate_size
        for i, lw in enumerate(w.layers):
            qkv = _project(_rms(x, self._eps), lw.wqkv, lw.bqkv)
            q = torch.bmm(qkv[:, :q_end].view(b, a.num_heads, d), rotation)
            k = torch.bmm(qkv[:, q_end:k_end].view(b, num_kv, d), rotation)
            keys, values = self.cache.keys[i], self.cache.values[i]
            keys.view(-1, d).index_copy_(0, new_rows, k.view(-1, d))
            values.view(-1, d).index_copy_(0, new_rows, qkv[:, k_end:].reshape(-1, d))
            cached_keys = keys[:b, :, :max_len].reshape(b * num_kv, max_len, d)
            cached_values = values[:b, :, :max_len].reshape(b * num_kv, max_len, d)
            scores = torch.baddbmm(bias, q.view(b * num_kv, group, d), cached_keys.transpose(1, 2), alpha=self._scale)
            probs = torch.softmax(scores, dim=-1)
            out = torch.bmm(probs, cached_values)
            x = torch.addmm(x, out.view(b, self._q), lw.wo)
            gate_up = torch.mm(_rms(x, self._eps), lw.w_gate_up)
            x = torch.addmm(x, F.silu(gate_up[:, :inner]).mul_(gate_up[:, inner:]), lw.w_down)
        return torch.mm(_rms(x, self._eps), w.lm_head)


def _shared_prefix_length(contexts: list[list[int]]) -> int:
    """Length of the prefix every context starts with (0 for fewer than two contexts)."""
    if len(contexts) < 2:
        return 0
    # The lexicographically smallest and largest contexts share exactly the prefix all of them share.
    low, high = min(contexts), max(contexts)
    n = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        n += 1
    return n


def _project(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.mm(x, w) if bias is None else torch.addmm(bias, x, w)


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
    if s.all_greedy:
        # The first maximum, as argmax; max is the cheaper kernel on CPU.
        tokens = logits.max(dim=-1).indices
        return tokens, torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0]
    greedy = s.temperature <= 0
    temperature = torch.where(greedy, torch.ones_like(s.temperature), s.temperature)
    scaled = logits / temperature[:, None]
    logprobs = torch.log_softmax(scaled, dim=-1)
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
