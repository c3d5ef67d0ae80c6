"""Functional neural-network primitives shared by every reference model.

Everything here is float64 and pure. Shapes: `...` is any leading shape.
Linear weights are stored (in, out), so a layer is `x @ w + b`.
"""

from __future__ import annotations

import math

from chainrule.reference.xp import namespace, special


def numpy_errstate(xp):
    """NumPy's overflow warnings off (exp of a large argument is inf on purpose); a no-op elsewhere."""
    import contextlib

    return xp.errstate(over="ignore") if hasattr(xp, "errstate") else contextlib.nullcontext()


def linear(x, w, b=None):
    """y = x W + b.   x: (..., I), w: (I, O), b: (O,) -> (..., O)."""
    y = x @ w
    return y if b is None else y + b


def embedding(ids, table):
    """Row lookup: out[..., :] = table[ids[...], :].   ids: (...) int, table: (N, C) -> (..., C)."""
    return table[ids]


def layer_norm(x, gain, bias, eps=1e-5):
    """LayerNorm (Ba et al. 2016) over the last axis, biased variance as in torch:

        y = (x - mean(x)) / sqrt(var(x) + eps) * gain + bias

    x: (..., C), gain, bias: (C,).
    """
    xp = namespace(x)
    mean = xp.mean(x, axis=-1, keepdims=True)  # (..., 1)
    var = xp.mean((x - mean) ** 2, axis=-1, keepdims=True)  # (..., 1)
    return (x - mean) / xp.sqrt(var + eps) * gain + bias


def gelu_tanh(x):
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), used by GPT-2 ("gelu_new"):

        gelu(x) = 0.5 x (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) ))
    """
    xp = namespace(x)
    return 0.5 * x * (1.0 + xp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    """GELU, exact: gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    xp = namespace(x)
    return 0.5 * x * (1.0 + special(xp).erf(x / math.sqrt(2.0)))


def gelu_fast(x):
    """GELU, tanh approximation as HF transformers' "gelu_fast" computes it:

        gelu_fast(x) = 0.5 x (1 + tanh( 0.7978845608 x (1 + 0.044715 x^2) ))

    the tanh form of `gelu_tanh` with x + 0.044715 x^3 factored and sqrt(2/pi) rounded to
    0.7978845608 (it differs from gelu_tanh by ~1e-12 of x).
    """
    xp = namespace(x)
    return 0.5 * x * (1.0 + xp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def relu(x):
    """ReLU (Nair & Hinton 2010): relu(x) = max(x, 0)."""
    xp = namespace(x)
    return xp.maximum(x, 0.0)


def logsumexp(x, axis=-1, keepdims=False):
    """log sum_i exp(x_i), stable: m + log sum_i exp(x_i - m) with m = max_i x_i.

    A slice that is entirely -inf gives -inf (not NaN); +inf gives +inf.
    """
    xp = namespace(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0.0)  # all -inf (or an inf) slice: shift by 0
    out = m + xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True))
    return out if keepdims else xp.squeeze(out, axis=axis)


def log_softmax(x, axis=-1):
    """log softmax(x)_i = x_i - logsumexp(x).   A -inf entry gets log-probability -inf."""
    return x - logsumexp(x, axis=axis, keepdims=True)


def softmax(x, axis=-1):
    """softmax(x)_i = exp(x_i - m) / sum_j exp(x_j - m), m = max_j x_j (so no overflow)."""
    xp = namespace(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def causal_mask(t_query, t_key, xp=None):
    """Boolean (t_query, t_key) mask, True where attention is allowed.

    The queries are the *last* t_query positions of a sequence of length t_key
    (t_key - t_query earlier positions come from a cache), so query i sits at
    absolute position p_i = t_key - t_query + i and may attend to key j iff j <= p_i.
    With t_query == t_key this is the lower triangle (diagonal included).
    """
    if xp is None:
        xp = namespace()
    offset = t_key - t_query
    q_pos = xp.arange(t_query)[:, None] + offset  # (Tq, 1)
    k_pos = xp.arange(t_key)[None, :]  # (1, Tk)
    return k_pos <= q_pos


def attention(q, k, v, mask, scale=None):
    """Scaled dot-product attention (Vaswani et al. 2017) with an explicit mask:

        A = softmax( Q K^T / sqrt(d) + M ),   out = A V,   M_ij = 0 if mask_ij else -inf

    or, with `scale` s given, softmax( s Q K^T + M ) (GPT-2's options: s = 1, or
    1 / (sqrt(d) (layer + 1)); see reference.gpt.Config.attn_scale).
    q: (..., Tq, d), k, v: (..., Tk, d), mask: (Tq, Tk) bool -> (..., Tq, d).
    Every query must be allowed at least one key (a fully masked row is undefined).
    """
    xp = namespace(q)
    d = q.shape[-1]
    # contiguous keys and values: the products' rounding then does not depend on how a cache laid
    # them out in memory (a strided view is summed in another order by BLAS)
    k, v = xp.ascontiguousarray(k), xp.ascontiguousarray(v)
    scores = q @ xp.swapaxes(k, -1, -2)  # (..., Tq, Tk)
    scores = scores / math.sqrt(d) if scale is None else scores * scale
    scores = xp.where(mask, scores, -xp.inf)
    return softmax(scores, axis=-1) @ v  # (..., Tq, d)


def split_heads(x, n_head):
    """(B, T, C) -> (B, n_head, T, C // n_head)."""
    xp = namespace(x)
    B, T, C = x.shape
    return xp.transpose(x.reshape(B, T, n_head, C // n_head), (0, 2, 1, 3))


def merge_heads(x):
    """(B, n_head, T, hs) -> (B, T, n_head * hs)."""
    xp = namespace(x)
    B, nh, T, hs = x.shape
    return xp.transpose(x, (0, 2, 1, 3)).reshape(B, T, nh * hs)


def causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """Multi-head causal self-attention with a fused qkv projection (GPT-2 layout):

        [Q K V] = x W_qkv + b_qkv,  head h: softmax(Q_h K_h^T / sqrt(hs) + causal) V_h,
        out = concat_h(head_h) W_proj + b_proj

    x: (B, T, C), w_qkv: (C, 3C), w_proj: (C, C) -> (B, T, C).
    """
    xp = namespace(x)
    T = x.shape[1]
    q, k, v = xp.split(linear(x, w_qkv, b_qkv), 3, axis=-1)  # 3 x (B, T, C)
    q, k, v = (split_heads(a, n_head) for a in (q, k, v))  # (B, nh, T, hs)
    y = attention(q, k, v, causal_mask(T, T, xp))  # (B, nh, T, hs)
    return linear(merge_heads(y), w_proj, b_proj)  # (B, T, C)


# ----------------------------------------------------------------------------- LLaMA-family pieces


def rms_norm(x, weight, eps=1e-6, offset=0.0):
    """RMSNorm (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization") over the last axis:

        y = x / sqrt(mean(x^2) + eps) * (offset + w)

    offset 0: LLaMA, Mistral, Qwen2 (w x-hat); offset 1: Gemma ((1 + w) x-hat, w initialized at 0).
    x: (..., C), weight: (C,).
    """
    xp = namespace(x)
    return x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps) * (offset + weight)


def silu(x):
    """SiLU (swish): x sigmoid(x) = x / (1 + exp(-x)), in x's dtype (exp(-x) = inf gives -0)."""
    xp = namespace(x)
    with numpy_errstate(xp):
        return x / (1.0 + xp.exp(-x))


def swiglu(x, w_gate, w_up, w_down):
    """SwiGLU MLP (Shazeer 2020, "GLU Variants Improve Transformer"), as LLaMA:

        y = ( silu(x W_gate) * (x W_up) ) W_down

    x: (..., C), w_gate, w_up: (C, I), w_down: (I, C) -> (..., C).
    """
    return linear(silu(linear(x, w_gate)) * linear(x, w_up), w_down)


def rope_inv_freq(head_dim: int, theta: float, xp=None):
    """RoPE's inverse frequencies (Su et al. 2021, "RoFormer"): omega_i = theta^(-2i / d), i < d/2 -> (d/2,)."""
    if xp is None:
        import numpy as xp
    return 1.0 / theta ** (xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)


def rope_cos_sin(positions, inv_freq):
    """cos and sin of the rotation angles  angle[..., i] = position * omega_i.

    positions: (...) int, inv_freq: (d/2,) -> cos, sin: (..., d/2) float64.
    """
    xp = namespace(inv_freq)
    angle = xp.asarray(positions, dtype=xp.float64)[..., None] * inv_freq  # (..., d/2)
    return xp.cos(angle), xp.sin(angle)


def rope(x, cos, sin, layout: str = "half"):
    """Rotary position embedding: rotate each pair of coordinates (a, b) of x by its angle,

        (a, b) -> (a cos - b sin,  a sin + b cos).

    The pairs, in the two public layouts:
      "interleaved"  (x[2i], x[2i+1])       the paper and Meta's code
      "half"         (x[i], x[i + d/2])     HF transformers ("rotate_half")
    The same model in the other layout has the rows of W_q and W_k permuted within each head
    (`rope_permutation`). x: (..., T, d), cos, sin: (..., T, d/2) broadcastable -> (..., T, d).
    """
    xp = namespace(x)
    d = x.shape[-1]
    if layout == "half":
        a, b = x[..., : d // 2], x[..., d // 2 :]
        return xp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        out = xp.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out
    raise ValueError(f"layout: expected 'half' or 'interleaved', got {layout!r}")


def rope_permutation(head_dim: int, xp=None):
    """The index map from the interleaved to the half layout within one head:
    half[j] = interleaved[perm[j]], perm = (0, 2, 4, ..., d-2, 1, 3, ..., d-1).
    (HF's convert_llama_weights_to_hf permutes W_q and W_k rows so, head by head.)"""
    if xp is None:
        import numpy as xp
    return xp.concatenate([xp.arange(0, head_dim, 2), xp.arange(1, head_dim, 2)])


def repeat_kv(x, n_rep: int):
    """Grouped-query attention's shared heads (Ainslie et al. 2023): each key/value head serves
    n_rep query heads. x: (B, n_kv, T, d) -> (B, n_kv * n_rep, T, d), head h = x[:, h // n_rep]."""
    xp = namespace(x)
    return x if n_rep == 1 else xp.repeat(x, n_rep, axis=1)
