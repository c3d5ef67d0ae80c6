"""LLaMA-family decoders, fast: the twin of reference/llama.py in torch, on CPU and CUDA, in
float64, float32 and bfloat16.

The model (LLaMA 1-3, Mistral's sliding window, Qwen2's q/k/v biases, Gemma's (1 + w) norm),
the parameter names, the functions, their arguments and their errors are those of
reference/llama.py, whose docstrings carry the equations. Read that file first; this one only
says how the same numbers are computed fast:

- Attention is torch's fused `scaled_dot_product_attention`, and grouped-query attention never
  materializes the repeated keys/values: a decoding step (one query per row) folds each key/value
  head's n_rep query heads into n_rep queries of that head ((B, nh, 1, hd) viewed as
  (B, n_kv, n_rep, hd): one SDPA over the un-repeated cache); a chunk of several queries uses
  SDPA's `enable_gqa=True`. Both measured faster on the CPU than `repeat_interleave` (see
  docs/models.md). `attn_impl="math"` repeats K/V and computes softmax(Q K^T / sqrt(hd) + mask) V
  explicitly in the params' dtype: the naive same-dtype baseline of the tolerance rule.
- RoPE: the angles position * omega_i are computed in float64 (as the reference does, whatever
  the dtype: float32 angles lose digits at large positions), once per call -- one table for the
  whole of `generate`, one (B, T) set for a forward or prefill -- then cos and sin are cast. The
  rotation runs in the params' dtype, in float32 for bfloat16 (one rounding to bfloat16 after it).
- RMSNorm is torch's `F.rms_norm`; bfloat16 activations are normalized in float32 (the mean of
  squares accumulated in float32, the (offset + w) scale applied in float32, one rounding back),
  as HF's LlamaRMSNorm accumulates, with one rounding fewer than HF's. float32 and float64 run in
  their own dtype.
- The KV cache (`KVCache`) is preallocated once: keys and values (n_layer, B, n_kv, max_len, hd)
  (the n_kv heads only: GQA's memory saving), the padding mask (B, max_len) of a padded batch and
  each key's position (B, max_len), which the sliding window is measured in. `prefill` and
  `step` write in place and return the same object (the reference returns a new one).
- Sliding window: a mask causal and (pos_i - pos_j < W), built only when some key can fall
  outside it; an unpadded decoding step instead attends to the cache's last W positions
  (a narrowed view, no mask).
- The linear layers are fast.gpt's kernels (`fast.gpt._linear`, `_head`, the kernel modes of
  `fast.gpt.kernel_mode`: "plain" addmm when differentiable or on CUDA, on the CPU a split
  matrix-vector product for one row and oneDNN on transposed copies for several). Layers
  without a bias get a zero one. bfloat16 inference on a CPU whose oneDNN has no bfloat16
  linear (no AVX-512 BF16 / AMX: torch then emulates bfloat16 matmuls; on two AVX2 cores,
  at 32 rows, 5x (F.linear) to 200x (addmm on (in, out) weights) slower than float32) runs
  those kernels on exact float32 copies of the weights, the outputs rounded to
  bfloat16 (`kernel_mode`'s "float32-..." modes): the numbers of a bfloat16 matmul, which
  accumulates in float32 too, at float32 speed (and float32's bytes per weight).
- `generate` runs under `torch.inference_mode()` through fast/generation.py's `decode` (eos and
  stop sequences drop finished rows from the batch and from the cache, as fast.gpt.generate).

Not here: beam search. `generate` with num_beams > 1 raises ValueError naming
generation_config.num_beams (use reference.llama.generate). Differences from the reference:
none in what is accepted otherwise; the cache is an object, not a dict.

`forward` and `log_prob` are differentiable with respect to the params (autograd); the cache
functions and `generate` are inference-only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy
import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from chainrule.fast import generation as fast_generation
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import metrics, sampling
from chainrule.fast.backend import checked_tensors
from chainrule.fast.gpt import _causal_mask, _head, _linear, check_attention_mask, check_attn_impl, last_real
from chainrule.fast.gpt import needs_grad, padded_attention_mask
from chainrule.reference import generation
from chainrule.reference import llama as _reference
from chainrule.reference.llama import (
    Config,
    check_params,
    config_from_hf,
    convert_rope_layout,
    from_hf,
    init,
    inv_freq,
    param_shapes,
    random_params,
    to_hf,
)

__all__ = [
    "Config", "param_shapes", "init", "random_params", "check_params", "from_hf", "to_hf", "config_from_hf",
    "convert_rope_layout", "KVCache", "forward", "log_prob", "init_cache", "prefill", "step", "generate", "greedy",
    "sample", "check_tokens", "checked_params",
]  # fmt: skip


# ----------------------------------------------------------------------------- validation


def checked_params(params, config: Config) -> dict:
    """params as a dict of torch tensors of one float dtype on one device; ValueError naming the key.
    NumPy params become float64 CPU tensors (CuPy: CUDA), as fast.gpt.checked_params."""
    return checked_tensors(params, lambda p: check_params(p, config), "embed")


def check_tokens(tokens, config: Config, name: str = "tokens", max_len: int | None = None, device=None):
    """reference.llama.check_tokens for torch tensors too -> int64 tokens on `device` (same messages)."""
    return fast_gpt.check_tokens(tokens, _reference._as_gpt_context(config), name=name, max_len=max_len, device=device)


def _mask_and_positions(config: Config, tokens, attention_mask, position_ids, seen):
    """reference.llama._mask_and_positions on torch: (mask or None, positions or None)."""
    return fast_gpt._mask_and_positions(_reference._as_gpt_context(config), tokens, attention_mask, position_ids, seen)


def kernel_mode(params: dict, rows: int, differentiable: bool) -> str:
    """fast.gpt.kernel_mode for these params (its rule on the width C of `embed`), and one more:
    bfloat16 inference on a CPU whose oneDNN has no bfloat16 linear (CPUs without AVX-512 BF16 or
    AMX, where torch's bfloat16 matmul is emulated: 5x to 200x slower than float32 at 32 rows) runs
    "float32-" + the float32 mode: the linear layers on exact float32 copies of the bfloat16
    weights, the bfloat16 activations upcast (exact), float32 accumulation -- which is what a
    bfloat16 matmul accumulates in -- and the outputs rounded to bfloat16."""
    embed = params["embed"]
    mode = fast_gpt.kernel_mode({"wte": embed}, rows, differentiable)
    if mode != "plain" and embed.dtype == torch.bfloat16 and not fast_gpt._onednn_usable(torch.bfloat16):
        probe = torch.empty((0, embed.shape[1]), dtype=torch.float32, device=embed.device)
        return "float32-" + fast_gpt.kernel_mode({"wte": probe}, rows, differentiable)
    return mode


_float32_copies = WeakIdKeyDictionary()  # bfloat16 weight -> (its fast.gpt._state, float32 copy)


def _float32(w: torch.Tensor) -> torch.Tensor:
    """An exact float32 copy of the 2-D bfloat16 w, made once and reused while w is unchanged
    (the check of fast.gpt._transposed: fast.gpt._state)."""
    state = fast_gpt._state(w)
    hit = _float32_copies.get(w)
    if hit is not None and hit[0][:2] == state[:2] and torch.equal(hit[0][2], state[2]):
        return hit[1]
    with torch.no_grad():
        copy = w.detach().float()
    _float32_copies[w] = (state, copy)
    return copy


def _kernel(w: torch.Tensor, b: torch.Tensor, mode: str):
    """x -> x W + b in `mode` (fast.gpt._linear; "float32-..." modes on float32 copies, see kernel_mode)."""
    if not mode.startswith("float32-"):
        return _linear(w, b, mode)
    inner = _linear(_float32(w), b.float(), mode.removeprefix("float32-"))
    return lambda x: inner(x.float()).to(torch.bfloat16)


def _head_kernel(w: torch.Tensor, mode: str):
    """x -> x W^T, W (V, C) (fast.gpt._head; "float32-..." modes on a float32 copy)."""
    if not mode.startswith("float32-"):
        return _head(w, mode)
    inner = _head(_float32(w), mode.removeprefix("float32-"))
    return lambda x: inner(x.float()).to(torch.bfloat16)


# ----------------------------------------------------------------------------- RoPE, RMSNorm, attention


@functools.lru_cache(maxsize=64)
def _inv_freq(config: Config) -> numpy.ndarray:
    return inv_freq(config)  # (hd/2,) float64, scaling included


def rope_cos_sin(config: Config, positions: torch.Tensor, dtype: torch.dtype):
    """cos and sin of the angles position * omega_i, computed in float64, cast to `dtype`.
    positions (...) int -> (..., hd/2) each."""
    omega = torch.as_tensor(_inv_freq(config), dtype=torch.float64, device=positions.device)
    angle = positions.to(torch.float64)[..., None] * omega  # (..., hd/2)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def _rope_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.bfloat16 else dtype


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """reference.nn.rope on x (B, T, H, hd) with cos, sin (B or 1, T, 1, hd/2) in the rotation's
    dtype; returns x's dtype. "half": pairs (x_i, x_{i+d/2}); "interleaved": (x_2i, x_2i+1)."""
    out_dtype = x.dtype
    x = x.to(cos.dtype)
    if layout == "half":
        a, b = x.chunk(2, dim=-1)
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(out_dtype)
    a, b = x.unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, H, hd/2) each
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(out_dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (weight: (C,), offset already added,
    float32 for bfloat16 x: normalized in float32, rounded to bfloat16 once)."""
    if x.dtype == torch.bfloat16:
        return F.rms_norm(x.float(), (x.shape[-1],), weight, eps).to(torch.bfloat16)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def _attention(q, k, v, n_rep: int, attn_impl: str, mask=None):
    """Attention of the last Tq positions over Tk keys, the n_kv key/value heads shared by n_rep
    query heads each (head h reads key/value head h // n_rep, reference.nn.repeat_kv).

    q: (B, nh, Tq, hd), k, v: (B, n_kv, Tk, hd); mask: None (causal: query i at key position
    Tk - Tq + i) or (B or 1, 1, Tq, Tk) / (Tq, Tk) bool, True = may attend -> (B, nh, Tq, hd).
    """
    B, nh, Tq, hd = q.shape
    Tk = k.shape[2]
    if attn_impl == "math":  # the naive same-dtype computation, spelled out
        if n_rep > 1:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)  # (B, nh, Tk, hd)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, Tq, Tk)
        allowed = _causal_mask(Tq, Tk, q.device) if mask is None else mask
        return torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1) @ v
    if Tq == 1:  # one query per head: a group's n_rep heads are n_rep queries of its one K/V head
        n_kv = k.shape[1]
        y = F.scaled_dot_product_attention(q.reshape(B, n_kv, n_rep, hd), k, v, attn_mask=mask)  # (B, n_kv, n_rep, hd)
        return y.reshape(B, nh, 1, hd)  # head g * n_rep + j = query j of K/V head g
    gqa = n_rep > 1
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    # a chunk after a cache: the triangle offset by Tk - Tq (SDPA's is_causal is top-left aligned)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(Tq, Tk, q.device), enable_gqa=gqa)


# ----------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Layer:
    """One block: its RMSNorm weights ((offset + w), float32 for bfloat16) and linear kernels x -> y."""

    attn_norm: torch.Tensor
    q: object  # (M, C) -> (M, nh hd)
    k: object  # (M, C) -> (M, n_kv hd)
    v: object
    o: object  # (M, nh hd) -> (M, C)
    mlp_norm: torch.Tensor
    gate: object  # (M, C) -> (M, I)
    up: object
    down: object  # (M, I) -> (M, C)


@dataclass(frozen=True)
class Network:
    """The params of one call, arranged as kernels of one mode."""

    config: Config
    embed: torch.Tensor
    norm: torch.Tensor
    layers: tuple
    head: object  # (M, C) -> (M, V)


def _norm_weight(w: torch.Tensor, config: Config) -> torch.Tensor:
    w = w + config.norm_offset if config.norm_offset else w
    return w.float() if w.dtype == torch.bfloat16 else w


def network(params: dict, config: Config, mode: str) -> Network:
    """Checked params turned into the kernels of `mode` (fast.gpt._linear; layers without a bias
    get a zero one, added by the same kernel)."""
    embed = params["embed"]
    zeros = {}

    def linear(name: str):
        w = params[name + ".w"]
        b = params.get(name + ".b")
        if b is None:
            n = w.shape[1]
            if n not in zeros:
                zeros[n] = torch.zeros(n, dtype=w.dtype, device=w.device)
            b = zeros[n]
        return _kernel(w, b, mode)

    layers = []
    for i in range(config.n_layer):
        p = f"layers.{i}."
        layers.append(Layer(
            _norm_weight(params[p + "attn_norm.w"], config), linear(p + "attn.q"), linear(p + "attn.k"),
            linear(p + "attn.v"), linear(p + "attn.o"), _norm_weight(params[p + "mlp_norm.w"], config),
            linear(p + "mlp.gate"), linear(p + "mlp.up"), linear(p + "mlp.down"),
        ))  # fmt: skip
    head = _head_kernel(embed if config.tie_word_embeddings else params["lm_head.w"], mode)
    return Network(config, embed, _norm_weight(params["norm.w"], config), tuple(layers), head)


def network_block(config: Config, layer: Layer, x, k_cache, v_cache, P: int, attn_impl: str, mask, cos, sin,
                  key_start: int = 0):  # fmt: skip
    """One pre-RMSNorm block (reference.llama.block) on the T newest positions.

    x: (B, T, C); k_cache, v_cache: None (attend within x) or the layer's (B, n_kv, max_len, hd)
    cache, positions [P, P+T) written here (keys rotated), keys [key_start, P+T) attended.
    mask: None (causal) or a bool mask for `_attention`; cos, sin: (B or 1, T, 1, hd/2).
    """
    B, T, C = x.shape
    nh, n_kv, hd = config.n_head, config.n_kv_head, config.head_dim
    h = rms_norm(x, layer.attn_norm, config.rms_norm_eps).view(B * T, C)
    q = apply_rope(layer.q(h).view(B, T, nh, hd), cos, sin, config.rope_layout).transpose(1, 2)  # (B, nh, T, hd)
    k = apply_rope(layer.k(h).view(B, T, n_kv, hd), cos, sin, config.rope_layout).transpose(1, 2)  # (B, n_kv, T, hd)
    v = layer.v(h).view(B, T, n_kv, hd).transpose(1, 2)  # (B, n_kv, T, hd)
    if k_cache is not None:
        k_cache.narrow(2, P, T).copy_(k)  # positions [P, P+T), in place
        v_cache.narrow(2, P, T).copy_(v)
        k, v = k_cache.narrow(2, key_start, P + T - key_start), v_cache.narrow(2, key_start, P + T - key_start)
    y = _attention(q, k, v, config.n_rep, attn_impl, mask).transpose(1, 2).reshape(B * T, nh * hd)
    x = x + layer.o(y).view(B, T, C)
    h = rms_norm(x, layer.mlp_norm, config.rms_norm_eps).view(B * T, C)
    return x + layer.down(F.silu(layer.gate(h)) * layer.up(h)).view(B, T, C)  # SwiGLU


def _window_plan(config: Config, cache, B: int, T: int, P: int, contiguous: bool, attn_mask, q_pos, device):
    """The sliding window as (attn_mask, key_start): unchanged when no key can fall outside it;
    for an unpadded decoding step the last W keys (key_start); else the mask & (pos_i - pos_j < W)."""
    W = config.sliding_window
    if W is None or (contiguous and P + T <= W):
        return attn_mask, 0
    if contiguous and T == 1 and attn_mask is None:
        return None, P + 1 - W  # keys P+1-W .. P: exactly those with P - j < W
    k_pos = q_pos if cache is None else cache.key_positions[:, : P + T]  # (B or 1, P+T)
    inside = (q_pos[:, None, :, None] - k_pos[:, None, None, :]) < W  # (B or 1, 1, T, P+T)
    return (_causal_mask(T, P + T, device) if attn_mask is None else attn_mask) & inside, 0


def run_network(net: Network, tokens, cache, attn_impl: str, last_only: bool = False, mask=None, positions=None,
                rope=None):  # fmt: skip
    """The network on tokens (B, T) after the cache's positions -> logits (B, T, V) ((B, 1, V) with
    last_only: at each row's last real position). With a cache: writes its keys, values, mask and
    key positions, and advances its length.

    mask: None or (B, T) bool, the real tokens (padded batch: pads' logits 0); positions: None
    (P .. P+T-1) or (B, T) int64; rope: None (cos/sin computed here from the positions) or
    (cos, sin) tables (max_len, hd/2) indexed by position (generate computes them once).
    """
    config = net.config
    B, T = tokens.shape
    P = 0 if cache is None else cache.length
    device = tokens.device
    contiguous = positions is None and (cache is None or cache.contiguous)
    q_pos = torch.arange(P, P + T, device=device)[None] if positions is None else positions  # (B or 1, T)
    rot = _rope_dtype(net.embed.dtype)
    if rope is None:
        cos, sin = rope_cos_sin(config, q_pos, rot)  # (B or 1, T, hd/2)
    elif positions is None:
        cos, sin = rope[0][P : P + T][None], rope[1][P : P + T][None]
    else:
        cos, sin = rope[0][positions], rope[1][positions]
    cos, sin = cos[:, :, None], sin[:, :, None]  # (B or 1, T, 1, hd/2)
    attn_mask = None
    if cache is not None:
        cache.key_positions[:, P : P + T] = q_pos
        cache.contiguous = contiguous
    key_mask = None if cache is None else cache.mask
    if mask is not None or key_mask is not None:
        new = torch.ones((B, T), dtype=torch.bool, device=device) if mask is None else mask
        if cache is None:
            keys = new
        else:
            if key_mask is None:  # the first padded chunk: the cached positions were all real
                key_mask = cache.mask = torch.ones((B, cache.max_len), dtype=torch.bool, device=device)
            key_mask[:, P : P + T] = new
            keys = key_mask[:, : P + T]
        attn_mask = padded_attention_mask(keys, T)  # (B, 1, T, P+T)
    attn_mask, key_start = _window_plan(config, cache, B, T, P, contiguous, attn_mask, q_pos, device)
    x = F.embedding(tokens, net.embed)  # (B, T, C)
    per_layer = [(None, None)] * len(net.layers) if cache is None else cache.layers
    for layer, (k_cache, v_cache) in zip(net.layers, per_layer):
        x = network_block(config, layer, x, k_cache, v_cache, P, attn_impl, attn_mask, cos, sin, key_start)
    if cache is not None:
        cache.length = P + T
    if last_only:
        x = x[:, -1:] if mask is None else x[torch.arange(B, device=device), last_real(mask)][:, None]  # (B, 1, C)
    C = x.shape[-1]
    x = rms_norm(x, net.norm, config.rms_norm_eps)
    logits = net.head(x.reshape(-1, C)).view(B, x.shape[1], -1)  # (B, T, V)
    if mask is not None and not last_only:
        logits = torch.where(mask[:, :, None], logits, 0.0)  # pads: logits 0, by definition
    return logits


# ----------------------------------------------------------------------------- forward and log_prob


def forward(params: dict, config: Config, tokens, attention_mask=None, position_ids=None, *,
            attn_impl: str = "sdpa") -> torch.Tensor:  # fmt: skip
    """All next-token logits at once (reference.llama.forward).

    tokens: (B, T) int (torch or NumPy), 1 <= T <= max_position -> logits (B, T, V) in the params'
    dtype. attention_mask (B, T) 0/1 and position_ids (B, T): padded batches as the reference
    (positions from the mask, pads' logits 0). attn_impl: "sdpa" (fused) or "math" (explicit,
    same dtype). Differentiable with respect to params that require grad.
    """
    params = checked_params(params, config)
    check_attn_impl(attn_impl)
    tokens = check_tokens(tokens, config, device=params["embed"].device)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, 0)
    differentiable = needs_grad(params)
    with torch.enable_grad() if differentiable else torch.no_grad():
        net = network(params, config, kernel_mode(params, tokens.numel(), differentiable))
        return run_network(net, tokens, None, attn_impl, mask=mask, positions=positions)


def log_prob(params: dict, config: Config, tokens, attention_mask=None, *, attn_impl: str = "sdpa") -> torch.Tensor:
    """Exact chain-rule log-likelihood in nats, bos prepended (reference.llama.log_prob).
    tokens (B, T) -> (B,), float64 for float64 params, else float32 (logits upcast before the
    log-softmax). attention_mask: the real tokens only. Differentiable with respect to params."""
    params = checked_params(params, config)
    tokens = check_tokens(tokens, config, device=params["embed"].device)
    if attention_mask is None:
        return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs, attn_impl=attn_impl),
                                           tokens, config.bos_token)  # fmt: skip
    mask = check_attention_mask(attention_mask, tokens.shape, tokens.device)
    return metrics.masked_chain_rule_log_prob(
        lambda inputs, input_mask: forward(params, config, inputs, input_mask, attn_impl=attn_impl),
        tokens, mask, config.bos_token)  # fmt: skip


# ----------------------------------------------------------------------------- KV cache


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


class KVCache(fast_gpt.KVCache):
    """fast.gpt.KVCache for the n_kv key/value heads, with each key's position.

    k, v: (n_layer, B, n_kv, max_len, hd); length; mask: None (every position real) or
    (B, max_len) bool; key_positions: (B, max_len) int64, the position id of each cached key
    (the sliding window is measured in positions); contiguous: True while every cached key's
    position is its index (no padding, no position_ids given).
    """

    __slots__ = ("key_positions", "contiguous")

    def __init__(self, k, v, length: int = 0, mask=None, key_positions=None, contiguous: bool = True):
        super().__init__(k, v, length, mask)
        if key_positions is None:
            key_positions = torch.zeros((k.shape[1], k.shape[3]), dtype=torch.int64, device=k.device)
        self.key_positions = key_positions
        self.contiguous = contiguous

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A new cache holding only the rows `index` (B',) (copies)."""
        mask = None if self.mask is None else self.mask[index]
        return KVCache(self.k[:, index], self.v[:, index], self.length, mask, self.key_positions[index],
                       self.contiguous)  # fmt: skip

    def __repr__(self) -> str:
        L, B, n_kv, max_len, hd = self.k.shape
        return (f"KVCache(n_layer={L}, batch={B}, n_kv_head={n_kv}, max_len={max_len}, head_dim={hd}, "
                f"length={self.length}, dtype={self.k.dtype}, device={self.k.device})")  # fmt: skip


def empty_cache(config: Config, batch: int, max_len: int, dtype, device, zeros: bool = True) -> KVCache:
    """A KVCache of length 0 (zeros=False: uninitialized memory, written before it is read)."""
    shape = (config.n_layer, batch, config.n_kv_head, max_len, config.head_dim)
    new = torch.zeros if zeros else torch.empty
    try:
        with torch.inference_mode():
            return KVCache(new(shape, dtype=dtype, device=device), new(shape, dtype=dtype, device=device))
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        nbytes = 2 * math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raise ValueError(f"max_len: a KV cache of shape {shape} ({nbytes / 2**30:.1f} GiB) cannot be allocated on "
                         f"{device}: {str(error).splitlines()[0]}") from None  # fmt: skip


def init_cache(params: dict, config: Config, batch: int, max_len: int | None = None) -> KVCache:
    """An empty KV cache for `batch` sequences of up to max_len (default max_position) positions."""
    params = checked_params(params, config)
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    max_len = config.max_position if max_len is None else max_len
    if not _is_int(max_len) or not 1 <= max_len <= config.max_position:
        raise ValueError(f"max_len: expected an int in [1, {config.max_position}], got {max_len!r}")
    embed = params["embed"]
    return empty_cache(config, int(batch), int(max_len), embed.dtype, embed.device)


def check_cache(cache, config: Config, params: dict) -> None:
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache: expected a fast.llama.KVCache (from init_cache), got {type(cache).__name__}")
    want = (config.n_layer, cache.batch, config.n_kv_head, cache.max_len, config.head_dim)
    if tuple(cache.k.shape) != want or tuple(cache.v.shape) != want:
        raise ValueError(f"cache: expected keys and values of shape {want}, got {tuple(cache.k.shape)}")
    embed = params["embed"]
    if cache.k.dtype != embed.dtype or cache.k.device != embed.device:
        raise ValueError(f"cache: expected {embed.dtype} on {embed.device} (as the params), "
                         f"got {cache.k.dtype} on {cache.k.device}")  # fmt: skip


def prefill(params: dict, config: Config, cache: KVCache, tokens, attention_mask=None, position_ids=None):
    """Feed tokens (B, T) after the cached positions -> (logits (B, T, V), cache), written in place
    (the same object returned). Position ids continue from the real tokens cached unless given
    (reference.llama.prefill); chunked prefill in any sizes gives the logits of `forward`."""
    params = checked_params(params, config)
    check_cache(cache, config, params)
    room = min(config.max_position, cache.max_len) - cache.length
    tokens = check_tokens(tokens, config, max_len=room, device=params["embed"].device)
    if tokens.shape[0] != cache.batch:
        raise ValueError(f"tokens: expected batch {cache.batch} (the cache's), got {tokens.shape[0]}")
    with torch.inference_mode():
        seen = cache.positions()
        mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, seen)
        if positions is None and cache.mask is not None:  # an unpadded chunk after a padded cache
            positions = seen[:, None] + torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        net = network(params, config, kernel_mode(params, tokens.numel(), differentiable=False))
        logits = run_network(net, tokens, cache, "sdpa", mask=mask, positions=positions)
    return logits, cache


def step(params: dict, config: Config, cache: KVCache, tokens_t):
    """One decoding step: tokens_t (B,) at each row's next position -> (logits_t (B, V), cache)."""
    if getattr(tokens_t, "ndim", None) != 1:
        shape = tuple(tokens_t.shape) if hasattr(tokens_t, "shape") else type(tokens_t)
        raise ValueError(f"tokens_t: expected shape (B,), got {shape}")
    logits, cache = prefill(params, config, cache, tokens_t[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             attention_mask=None, processors=(), u=None) -> torch.Tensor:  # fmt: skip
    """Autoregressive generation through the KV cache (reference.llama.generate: the same
    arguments, the same tokens; fast.gpt.generate's loop).

    Padded prompts (attention_mask) run with a per-row mask and positions; eos and stop sequences
    drop finished rows from the batch and the cache. RoPE's cos/sin are computed once for every
    position the generation reaches. Returns (B', T0 + n) int64 on the params' device.
    num_beams > 1 is refused (ValueError naming generation_config.num_beams): beam search is the
    reference's alone.
    """
    params = checked_params(params, config)
    embed = params["embed"]
    prompt = check_tokens(prompt, config, name="prompt", device=embed.device)
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u,
                          table=sampling.PROCESSORS)  # fmt: skip
    N = run.max_new_tokens
    if run.num_beams > 1:
        raise ValueError(f"generation_config.num_beams: fast.llama has no beam search (expected 1, got "
                         f"{run.num_beams}); reference.llama.generate runs it")  # fmt: skip
    max_prompt = config.max_position + 1 - max(N, 1)  # the last new token is never fed
    prompt = check_tokens(prompt, config, name="prompt", max_len=max_prompt, device=embed.device)
    mask = None if attention_mask is None else check_attention_mask(attention_mask, prompt.shape, embed.device)
    if run.num_return_sequences > 1:  # each prompt R times in a row, as HF's repeat_interleave
        prompt = prompt.repeat_interleave(run.num_return_sequences, dim=0)
        mask = None if mask is None else mask.repeat_interleave(run.num_return_sequences, dim=0)
    B, T0 = prompt.shape
    if u is not None:
        u = sampling.check_uniforms(u, (B, N), embed.device)
    if N == 0:
        return prompt.clone()
    with torch.inference_mode():
        _, positions = _mask_and_positions(config, prompt, mask, None, 0)
        max_len = T0 + N - 1
        rope = rope_cos_sin(config, torch.arange(max_len, device=embed.device), _rope_dtype(embed.dtype))
        nets = {}

        def net_for(rows):  # the kernels for `rows` rows, made once per mode
            mode = kernel_mode(params, rows, False)
            if mode not in nets:
                nets[mode] = network(params, config, mode)
            return nets[mode]

        state = {"cache": empty_cache(config, B, max_len, embed.dtype, embed.device, zeros=False)}
        logits = run_network(net_for(B * T0), prompt, state["cache"], "sdpa", last_only=True, mask=mask,
                             positions=positions, rope=rope)[:, 0]  # (B, V)  # fmt: skip

        def next_logits(tokens):  # (B',) -> (B', V), the KV cache advanced in place
            cache = state["cache"]
            pos = None if cache.mask is None else cache.positions()[:, None]
            return run_network(net_for(tokens.shape[0]), tokens[:, None], cache, "sdpa", positions=pos, rope=rope)[:, 0]

        def keep(rows):  # drop the finished rows from the cache
            state["cache"] = state["cache"].rows(rows)

        return fast_generation.decode(logits, next_logits, prompt, N, processors=run.processors, u=u,
                                      eos_token_id=run.eos_token_id, pad_token_id=run.pad_token_id,
                                      stop_sequences=run.stop_sequences, keep=keep)  # fmt: skip


def greedy(params: dict, config: Config, prompt, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)) (as reference.gpt.sample), then
    `generate` with those uniforms."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)
