"""Turning logits into tokens, in torch: the twin of reference/sampling.py.

Same functions, same rules, same errors, on torch tensors (CPU or CUDA), batched
over any leading shape:

    probs(logits)      p = softmax(logits)                          float64
    greedy(logits)     argmax, the first index on ties              int64
    sample(logits, u)  the smallest i with c_i > u, c = cumsum(p)   int64 (inverse CDF)

Precision. Whatever the dtype of the logits (bfloat16, float32, float64), the
probabilities and their cumulative sum are computed in float64, with the
reference's formula p = exp(x - max x) / sum exp(x - max x). In float64 the
cumulative sums therefore agree with the reference's to a few ulps, and the
sampled token differs only when u falls within those few ulps of a boundary
c_i; in low precision the token is the one the *given* logits define exactly,
not one distorted by a low-precision softmax.
"""

from __future__ import annotations

import torch


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as e:  # not array-like
        raise ValueError(f"{name}: expected a tensor, got {type(x).__name__}") from e


def check_logits(logits, name: str = "logits") -> None:
    """Raise ValueError unless `logits` is a float tensor of shape (..., V), V >= 1,
    with no NaN, no +inf, and at least one finite entry per row (as reference.sampling)."""
    logits = _as_tensor(logits, name)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
    if logits.numel() == 0:
        return
    problem = row_problem(logits.amax(dim=-1))
    if problem:
        raise ValueError(f"{name}: {problem}")


def row_problem(row_max: torch.Tensor) -> str:
    """The first problem among rows whose maxima are `row_max`, or "" (one host sync).

    A row's maximum tells all three problems apart: torch's max propagates NaN, so
    it is NaN iff the row holds a NaN; otherwise it is +inf iff the row holds +inf,
    and -inf iff every entry is -inf.
    """
    if bool(torch.isfinite(row_max).all()):
        return ""
    if bool(torch.isnan(row_max).any()):
        return "contains NaN"
    if bool((row_max == torch.inf).any()):
        return "contains +inf"
    return "a row is entirely -inf (no token can be chosen)"


def probs(logits: torch.Tensor) -> torch.Tensor:
    """p = softmax(logits) over the last axis, in float64; -inf logits get probability exactly 0."""
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    return _probs(logits)[0]


def _probs(logits: torch.Tensor):
    """(p, row max) in float64, unchecked: p = exp(x - m) / sum exp(x - m), m = max x."""
    x = logits.to(torch.float64)  # (..., V)
    m = x.amax(dim=-1, keepdim=True)  # (..., 1)
    e = torch.exp(x - m)  # (..., V)
    return e / e.sum(dim=-1, keepdim=True), m[..., 0]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the last axis, the *first* index on ties.  (..., V) -> (...) int64."""
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    return torch.argmax(logits, dim=-1)


def check_uniforms(u, shape: tuple, device, name: str = "u") -> torch.Tensor:
    """u as a float64 tensor on `device`; ValueError unless its shape is `shape` and 0 <= u < 1.

    NaN is rejected too (it is not in [0, 1)).
    """
    try:
        u = torch.as_tensor(u, dtype=torch.float64, device=device)
    except Exception as e:
        raise ValueError(f"{name}: expected an array of uniforms, got {type(u).__name__}") from e
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))  # NaN is outside too
    if bool(outside.any()):
        raise ValueError(f"{name}: expected uniforms in [0, 1), got {float(u[outside][0])!r}")
    return u


def sample(logits: torch.Tensor, u) -> torch.Tensor:
    """Inverse-CDF sampling: the smallest index i with  c_i > u,  where c_i = sum_{j<=i} p_j.

    logits: (..., V); u: (...) uniforms in [0, 1) (tensor or array) -> (...) int64.

    As in the reference: when rounding leaves c_{V-1} <= u, the answer is the
    last token of nonzero probability; a token of probability 0 is never
    returned. p and c are float64 whatever the dtype of the logits.
    """
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    u = check_uniforms(u, logits.shape[:-1], logits.device)
    return _inverse_cdf(logits, u)[0]


def _inverse_cdf(logits: torch.Tensor, u: torch.Tensor):
    """(tokens (...) int64, row max (...) float64) without validation or host sync.

    The row max lets a caller check the logits later (see `row_problem`).
    """
    p, m = _probs(logits)  # (..., V), (...)
    cdf = torch.cumsum(p, dim=-1)  # (..., V) nondecreasing: p >= 0
    above = cdf > u[..., None]  # (..., V) bool
    first_above = torch.argmax(above.to(torch.uint8), dim=-1)  # (...) the first True; 0 if none
    none_above = ~above.gather(-1, first_above[..., None])[..., 0]  # (...)
    V = p.shape[-1]
    positions = torch.arange(V, device=p.device)  # (V,)
    last_nonzero = torch.where(p > 0, positions, 0).amax(dim=-1)  # (...)
    return torch.where(none_above, last_nonzero, first_above), m
