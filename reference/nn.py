"""Functional neural-network primitives shared by every reference model.

Everything here is float64 and pure. Shapes: `...` is any leading shape.
Linear weights are stored (in, out), so a layer is `x @ w + b`.
"""

from __future__ import annotations

import math

from chainrule.reference.xp import namespace, special


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


def attention(q, k, v, mask):
    """Scaled dot-product attention (Vaswani et al. 2017) with an explicit mask:

        A = softmax( Q K^T / sqrt(d) + M ),   out = A V,   M_ij = 0 if mask_ij else -inf

    q: (..., Tq, d), k, v: (..., Tk, d), mask: (Tq, Tk) bool -> (..., Tq, d).
    Every query must be allowed at least one key (a fully masked row is undefined).
    """
    xp = namespace(q)
    d = q.shape[-1]
    scores = (q @ xp.swapaxes(k, -1, -2)) / math.sqrt(d)  # (..., Tq, Tk)
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
