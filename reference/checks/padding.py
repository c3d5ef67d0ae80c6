"""Padding invariance: a row's outputs must not depend on the padding it is batched with.

A model that serves padded batches is correct only if every real position's output is the
one the row gets alone: same attention over its real tokens, same position ids. Two classic
bugs break this -- position ids counted over the pads (HF's own GPT-2 forward with left
padding and no position_ids), and pads not masked out of attention -- and both show up here
as a difference at real positions.

`compare_padding` runs any implementation's forward on every row alone and inside padded
batches (left padding, right padding, and one mixed batch whose rows carry different amounts
of padding), and reports the worst difference at real positions under the tolerance table;
`assert_padding_invariant` raises when it exceeds the tolerance of `dtype`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.arrays import _abs_err, _restore, _to_numpy, as_float64
from chainrule.reference.checks.tolerances import compare

SIDES = ("left", "right", "mixed")


@dataclass(frozen=True)
class PaddingComparison:
    """The outcome of `compare_padding`: per layout (left, right, mixed) the worst difference at
    real positions between the padded batch and the rows alone, and whether all are in tolerance."""

    dtype: str
    worst: dict  # layout -> max |padded - alone| at real positions
    passed: bool
    details: tuple  # the failing comparisons' messages

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "NOT padding invariant"
        parts = ", ".join(f"{side} {err:.3e}" for side, err in self.worst.items())
        tail = "" if self.passed else "; " + "; ".join(self.details)
        return f"padding invariance [{self.dtype}] {verdict}: max |padded - alone| at real positions: {parts}{tail}"


def padded_batch(tokens: np.ndarray, pad: int, side: str, pad_id: int):
    """tokens (B, T) with `pad` copies of pad_id on `side` ("left" or "right") of every row
    -> (tokens (B, T + pad), mask (B, T + pad), offset (B,): each row's first real column)."""
    B, T = tokens.shape
    start = pad if side == "left" else 0
    out = np.full((B, T + pad), pad_id, dtype=tokens.dtype)
    out[:, start : start + T] = tokens
    mask = np.zeros(out.shape, dtype=np.int64)
    mask[:, start : start + T] = 1
    return out, mask, np.full(B, start, dtype=np.int64)


def _layouts(tokens: np.ndarray, pad_id: int, max_pad: int, rng):
    """(name, tokens, mask, offsets) for the three layouts."""
    B = tokens.shape[0]
    left = padded_batch(tokens, max_pad, "left", pad_id)
    right = padded_batch(tokens, max_pad, "right", pad_id)
    # mixed: each row its own amount of left padding, the rest of the width padded on the right
    amounts = rng.integers(0, max_pad + 1, size=B)
    amounts[0] = max_pad  # at least one row padded by the full amount
    T = tokens.shape[1]
    out = np.full((B, T + max_pad), pad_id, dtype=tokens.dtype)
    mask = np.zeros(out.shape, dtype=np.int64)
    for b in range(B):
        out[b, amounts[b] : amounts[b] + T] = tokens[b]
        mask[b, amounts[b] : amounts[b] + T] = 1
    return [("left",) + left, ("right",) + right, ("mixed", out, mask, amounts.astype(np.int64))]


def compare_padding(fn, tokens, *, dtype="float64", pad_id: int = 0, max_pad: int = 3, seed: int = 0):
    """Run fn on each row alone and in padded batches; compare the outputs at real positions.

    fn(tokens (B, T), attention_mask (B, T) of 1/0) -> outputs (B, T, ...): your model's
    forward on a padded batch (NumPy, CuPy or torch in and out: the inputs are given in the
    kind, and on the device, of `tokens`). tokens: (B, T) int, the real rows. dtype: the
    precision fn computes in (the tolerance table's row). pad_id: the id put at pads (a real
    model must ignore it); max_pad >= 1 pads per row.
    Returns a PaddingComparison; the reference for each row is fn on that row alone with a
    mask of ones.
    """
    t = _to_numpy(tokens)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer) or t.shape[1] < 1:
        raise ValueError(f"tokens: expected an integer array of shape (B, T), T >= 1, got {t.dtype} {t.shape}")
    if isinstance(max_pad, bool) or not isinstance(max_pad, (int, np.integer)) or max_pad < 1:
        raise ValueError(f"max_pad: expected an int >= 1, got {max_pad!r}")
    if not callable(fn):
        raise ValueError(f"fn: expected a callable (tokens, attention_mask) -> outputs, got {type(fn).__name__}")
    rng = np.random.default_rng(seed)
    B, T = t.shape
    alone = [as_float64(fn(_restore(t[b : b + 1], tokens), _restore(np.ones((1, T), dtype=np.int64), tokens)))[0]
             for b in range(B)]  # fmt: skip
    worst, details, passed = {}, [], True
    for name, padded, mask, offset in _layouts(t, pad_id, max_pad, rng):
        out = as_float64(fn(_restore(padded, tokens), _restore(mask, tokens)))
        if out.shape[:2] != padded.shape:
            raise ValueError(f"fn: expected outputs of shape (B, T, ...) = {padded.shape} + ..., got {out.shape}")
        got = np.stack([out[b, offset[b] : offset[b] + T] for b in range(B)])  # (B, T, ...) real positions
        truth = np.stack(alone)
        worst[name] = float(_abs_err(truth, got).max())
        result = compare(f"{name}-padded outputs", truth, got, dtype)
        if not result.passed:
            passed = False
            details.append(str(result))
    return PaddingComparison(dtype=str(dtype), worst=worst, passed=passed, details=tuple(details))


def assert_padding_invariant(fn, tokens, *, dtype="float64", pad_id: int = 0, max_pad: int = 3, seed: int = 0):
    """`compare_padding`, raising AssertionError (naming the layout and the worst position) when a
    row's outputs inside a padded batch differ from its outputs alone beyond the tolerance of
    `dtype`. Returns the PaddingComparison.

        >>> import numpy
        >>> from chainrule.reference import gpt
        >>> config = gpt.Config(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=4)
        >>> params = gpt.random_params(config, numpy.random.default_rng(0))
        >>> tokens = numpy.array([[1, 2, 3], [4, 0, 2]])
        >>> assert_padding_invariant(lambda x, m: gpt.forward(params, config, x, m), tokens).passed
        True
        >>> def counted_over_pads(x, m):  # position ids 0..T-1 whatever the mask: HF GPT-2's forward bug
        ...     return gpt.forward(params, config, x, m, position_ids=numpy.tile(numpy.arange(x.shape[1]), (len(x), 1)))
        >>> result = compare_padding(counted_over_pads, tokens)
        >>> result.passed, result.worst["right"] < 1e-12, result.worst["left"] > 0.1
        (False, True, True)
    """
    result = compare_padding(fn, tokens, dtype=dtype, pad_id=pad_id, max_pad=max_pad, seed=seed)
    if not result.passed:
        raise AssertionError(str(result))
    return result
