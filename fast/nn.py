"""Functional primitives in torch: the twins of reference/nn.py (same names, same arguments).

The equations are in reference/nn.py. Here each function is the torch kernel that
computes it (fused where torch has one), on any device and float dtype, and
differentiable. Linear weights are stored (in, out), as everywhere in chainrule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear(x, w, b=None):
    """y = x W + b.   x: (..., I), w: (I, O), b: (O,) -> (..., O)."""
    y = x @ w
    return y if b is None else y + b


def embedding(ids, table):
    """out[..., :] = table[ids[...], :].   ids: (...) int, table: (N, C) -> (..., C)."""
    return F.embedding(ids, table)


def layer_norm(x, gain, bias, eps=1e-5):
    """LayerNorm over the last axis, biased variance (reference.nn.layer_norm)."""
    return F.layer_norm(x, (x.shape[-1],), gain, bias, eps)


def gelu_tanh(x):
    """GELU, tanh approximation ("gelu_new" of GPT-2)."""
    return F.gelu(x, approximate="tanh")


def gelu_erf(x):
    """GELU, exact: 0.5 x (1 + erf(x / sqrt 2))."""
    return F.gelu(x, approximate="none")


def gelu_fast(x):
    """GELU, HF's "gelu_fast": 0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def relu(x):
    """ReLU: max(x, 0)."""
    return F.relu(x)


def logsumexp(x, axis=-1, keepdims=False):
    """log sum exp over `axis`; an all -inf slice gives -inf."""
    return torch.logsumexp(x, dim=axis, keepdim=keepdims)


def log_softmax(x, axis=-1):
    return F.log_softmax(x, dim=axis)


def softmax(x, axis=-1):
    return F.softmax(x, dim=axis)


def causal_mask(t_query, t_key, device=None):
    """(t_query, t_key) bool, True where allowed: query i sits at position t_key - t_query + i."""
    q_pos = torch.arange(t_query, device=device)[:, None] + (t_key - t_query)  # (Tq, 1)
    return torch.arange(t_key, device=device)[None, :] <= q_pos  # (Tq, Tk)


def attention(q, k, v, mask, scale=None):
    """softmax(Q K^T / sqrt(d) + M) V (or softmax(scale Q K^T + M) V) through fused
    scaled-dot-product attention.

    q: (..., Tq, d), k, v: (..., Tk, d), mask: (Tq, Tk) bool (True = attend) -> (..., Tq, d).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def split_heads(x, n_head):
    """(B, T, C) -> (B, n_head, T, C // n_head)."""
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x):
    """(B, n_head, T, hs) -> (B, T, n_head * hs)."""
    B, nh, T, hs = x.shape
    return x.transpose(1, 2).reshape(B, T, nh * hs)


def causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, n_head):
    """Multi-head causal self-attention, fused qkv (reference.nn.causal_self_attention).

    x: (B, T, C), w_qkv: (C, 3C), w_proj: (C, C) -> (B, T, C).
    """
    q, k, v = linear(x, w_qkv, b_qkv).split(x.shape[-1], dim=-1)  # 3 x (B, T, C)
    q, k, v = (split_heads(a, n_head) for a in (q, k, v))  # (B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
    return linear(merge_heads(y), w_proj, b_proj)  # (B, T, C)
