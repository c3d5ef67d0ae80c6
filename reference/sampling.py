"""Turning logits into tokens: probabilities, greedy choice and inverse-CDF sampling.

All functions act on the last axis of a batch of logits (any leading shape).
Randomness enters only as explicit uniforms `u` in [0, 1), so that every
implementation that follows this spec draws the *same* token from the same u.
"""

from __future__ import annotations

from reference import nn
from reference.xp import namespace


def check_logits(logits, name="logits"):
    """Raise ValueError unless `logits` is a float array of shape (..., V), V >= 1,
    with no NaN, no +inf, and at least one finite entry per row."""
    xp = namespace(logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
    if bool(xp.any(xp.isnan(logits))):
        raise ValueError(f"{name}: contains NaN")
    if bool(xp.any(logits == xp.inf)):
        raise ValueError(f"{name}: contains +inf")
    if bool(xp.any(xp.all(logits == -xp.inf, axis=-1))):
        raise ValueError(f"{name}: a row is entirely -inf (no token can be chosen)")


def probs(logits):
    """p = softmax(logits) over the last axis; -inf logits get probability exactly 0."""
    check_logits(logits)
    return nn.softmax(logits, axis=-1)


def greedy(logits):
    """argmax over the last axis, the *first* index on ties.  (..., V) -> (...) int64."""
    check_logits(logits)
    xp = namespace(logits)
    return xp.argmax(logits, axis=-1).astype(xp.int64)


def sample(logits, u):
    """Inverse-CDF sampling: the smallest index i with  c_i > u,  where c_i = sum_{j<=i} p_j.

    logits: (..., V); u: (...) uniforms in [0, 1) -> (...) int64.

    Because c is computed in floating point, its last value may fall short of
    1 and u may exceed it; the answer is then the last token of nonzero
    probability. A token of probability 0 is never returned: its cumulative
    value equals its predecessor's, so it can never be the *first* to exceed u.
    """
    xp = namespace(logits)
    p = probs(logits)  # (..., V)
    u = xp.asarray(u, dtype=xp.float64)
    if u.shape != p.shape[:-1]:
        raise ValueError(f"u: expected shape {tuple(p.shape[:-1])}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))  # NaN is outside too
    if bool(xp.any(outside)):
        raise ValueError(f"u: expected uniforms in [0, 1), got {float(u[outside].ravel()[0])!r}")
    cdf = xp.cumsum(p, axis=-1)  # (..., V)
    V = p.shape[-1]
    last_nonzero = V - 1 - xp.argmax(xp.flip(p > 0, axis=-1), axis=-1)  # (...)
    first_above = xp.argmax(cdf > u[..., None], axis=-1)  # (...) 0 if none exceeds u
    none_above = ~xp.any(cdf > u[..., None], axis=-1)
    return xp.where(none_above, last_nonzero, first_above).astype(xp.int64)
