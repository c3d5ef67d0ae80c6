"""Batch invariance: a row's outputs must not depend on the other rows of its batch.

A served model computes each request inside a batch whose size and companions change from
call to call. If a row's output depends on them -- a matmul whose summation order follows the
batch size (BLAS blocking, split-K chosen by shape), a reduction over the flattened batch, a
batch statistic -- the same prompt gives different logits depending on who else was served
with it, and greedy decoding can take a different token: the model disagrees with itself.
(He et al. 2025, "Defeating Nondeterminism in LLM Inference", Thinking Machines Lab.)

`batch_invariance` runs any implementation on each row alone, then inside batches of other
sizes (1, 2, 8, 33 by default: 1 is a second run alone, which catches run-to-run
nondeterminism) with the row first, last and at a random index among random companion rows,
and measures the difference of the row's outputs: max |diff|, max difference in ulps of the
output dtype, and the fraction of outputs that are bit-identical. `assert_batch_invariant`
raises when a difference exceeds `ulps` (0: bit for bit), naming the worst row and position.
Nothing here has a tolerance from the table: batch invariance is a property one either has
exactly or measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.arrays import _module, _restore, _to_numpy, as_float64
from chainrule.reference.checks.tolerances import dtype_name

BATCH_SIZES = (1, 2, 8, 33)
PLACEMENTS = ("first", "last", "random")

# Bits of the significand after the point, and the smallest normal exponent, per float dtype:
# one ulp of x is 2**(max(floor(log2 |x|), emin) - bits).
_FLOAT_FORMAT = {"float64": (52, -1022), "float32": (23, -126), "float16": (10, -14), "bfloat16": (7, -126)}


@dataclass(frozen=True)
class BatchInvariance:
    """The outcome of `batch_invariance`, over every row, batch size, placement and output.

    max_abs: max |batched - alone|; max_ulps: the same in ulps of the output dtype (at the
    larger magnitude of the two); identical: the fraction of outputs bit-identical (NaN = NaN).
    worst: (batch size, index of the row in that batch, row of `tokens`, position in the row's
    outputs) of the largest difference in ulps, or None when everything is identical.
    by_batch_size: batch size -> (max_abs, max_ulps, identical).
    """

    dtype: str
    max_abs: float
    max_ulps: float
    identical: float
    worst: tuple | None
    by_batch_size: dict
    calls: int

    @property
    def exact(self) -> bool:
        """Whether every output is bit-identical to the row's output alone."""
        return self.identical == 1.0

    def __str__(self) -> str:
        verdict = "exact" if self.exact else "NOT bit-exact"
        sizes = ", ".join(f"B={n}: {u:.3g} ulps" for n, (_, u, _) in self.by_batch_size.items())
        where = ""
        if self.worst is not None:
            n, index, row, position = self.worst
            where = f"; worst: row {row} at index {index} of a batch of {n}, position {position}"
        return (f"batch invariance [{self.dtype}] {verdict}: max |batched - alone| = {self.max_abs:.3e} "
                f"({self.max_ulps:.3g} ulps), {100 * self.identical:.2f}% bit-identical ({sizes}){where}")


def ulp(x: np.ndarray, dtype: str) -> np.ndarray:
    """One unit in the last place of the float64 values x in `dtype` (1 for integer dtypes)."""
    if dtype not in _FLOAT_FORMAT:
        return np.ones_like(x)
    bits, emin = _FLOAT_FORMAT[dtype]
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log2(np.abs(x)))  # -inf at 0
    return np.exp2(np.maximum(exponent, emin) - bits)


def ulp_diff(alone: np.ndarray, batched: np.ndarray, dtype: str) -> np.ndarray:
    """|batched - alone| in ulps of `dtype` at the larger magnitude of the two: 0 where equal (NaN
    = NaN, equal infinities), inf where one is NaN or a mismatched infinity."""
    same = (alone == batched) | (np.isnan(alone) & np.isnan(batched))
    with np.errstate(invalid="ignore", over="ignore"):
        scale = ulp(np.maximum(np.abs(alone), np.abs(batched)), dtype)
        out = np.abs(batched - alone) / scale
    out = np.where(same, 0.0, out)
    return np.where(np.isnan(out), np.inf, out)


def _companions(t: np.ndarray, others, vocab_size, rng) -> np.ndarray:
    """The rows to fill batches with, (N, T): `others`; or 64 random rows of ids in [0, vocab_size);
    or 64 rows of the entries of `tokens` shuffled."""
    if others is None and vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
            raise ValueError(f"vocab_size: expected an int >= 1, got {vocab_size!r}")
        return rng.integers(0, vocab_size, size=(64, t.shape[1]))
    if others is None:
        return np.stack([rng.permutation(t.ravel())[: t.shape[1]] for _ in range(64)])
    o = _to_numpy(others)
    if o.ndim != 2 or o.shape[1] != t.shape[1] or o.shape[0] < 1 or not np.issubdtype(o.dtype, np.integer):
        raise ValueError(f"others: expected an integer array (N, T={t.shape[1]}), N >= 1, got {o.dtype} {o.shape}")
    return o


def batch_invariance(fn, tokens, *, others=None, vocab_size: int | None = None, batch_sizes=BATCH_SIZES,
                     seed: int = 0) -> BatchInvariance:  # fmt: skip
    """Measure how much each row's outputs change with the other rows of its batch.

    fn(tokens (B, T)) -> outputs (B, ...): your model's forward (NumPy, CuPy or torch in and out:
    the inputs are given in the kind, dtype and device of `tokens`). tokens: (B0, T) int, the
    rows to test. For each row: fn on the row alone (B = 1) is the baseline; then for each
    batch size n in `batch_sizes` and each placement (the row first, last, at a random index)
    fn on a batch of n rows, the others drawn at random from `others` ((N, T) int), and the
    row's outputs compared with its baseline. Without `others`: random rows of ids in
    [0, vocab_size) when vocab_size is given, else rows of the entries of `tokens` shuffled (valid
    ids of your vocabulary; but a `tokens` of one repeated id gives companions equal to the row,
    which hide a batch statistic: pass vocab_size). n = 1 runs the row alone again (run-to-run
    determinism). Returns a BatchInvariance; deterministic in `seed`.

        >>> import numpy
        >>> tokens = numpy.array([[1, 2, 3], [4, 0, 2]])
        >>> def batch_norm_leak(x):  # normalizes with statistics of the whole batch
        ...     h = x.astype(float)
        ...     return (h - h.mean()) / (h.std() + 1.0)
        >>> result = batch_invariance(batch_norm_leak, tokens)
        >>> result.exact, result.max_abs > 0.1
        (False, True)
        >>> batch_invariance(lambda x: numpy.sin(x + 0.5), tokens).identical
        1.0
    """
    if not callable(fn):
        raise ValueError(f"fn: expected a callable tokens (B, T) -> outputs (B, ...), got {type(fn).__name__}")
    t = _to_numpy(tokens)
    if t.ndim != 2 or not np.issubdtype(t.dtype, np.integer) or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"tokens: expected an integer array of shape (B, T), B, T >= 1, got {t.dtype} {t.shape}")
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in sizes):
        raise ValueError(f"batch_sizes: expected positive ints, got {batch_sizes!r}")
    rng = np.random.default_rng(seed)
    pool = _companions(t, others, vocab_size, rng)

    def run(batch: np.ndarray) -> np.ndarray:
        out = fn(_restore(batch, tokens))
        if getattr(out, "shape", (None,))[0] != batch.shape[0]:
            got = getattr(out, "shape", out)
            raise ValueError(f"fn: expected outputs of shape (B={batch.shape[0]}, ...), got {got}")
        return out

    first = run(t[:1])
    dtype = dtype_name(first.dtype) if _module(first) in ("torch", "numpy", "cupy") else "float64"
    alone = [as_float64(first)[0]] + [as_float64(run(t[b : b + 1]))[0] for b in range(1, len(t))]
    by_size, worst, worst_ulps, calls, all_same, all_total = {}, None, 0.0, len(t), 0, 0
    for n in sizes:
        max_abs, max_ulps, same, total = 0.0, 0.0, 0, 0
        for placement in PLACEMENTS if n > 1 else ("first",):
            for b in range(len(t)):
                index = {"first": 0, "last": n - 1, "random": int(rng.integers(n))}[placement]
                batch = pool[rng.integers(len(pool), size=n)].astype(t.dtype)
                batch[index] = t[b]
                got = as_float64(run(batch))[index]
                calls += 1
                if got.shape != alone[b].shape:
                    raise ValueError(f"fn: a row's outputs have shape {got.shape} in a batch of {n}, "
                                     f"{alone[b].shape} alone")  # fmt: skip
                ulps = ulp_diff(alone[b], got, dtype)
                with np.errstate(invalid="ignore"):
                    diff = np.where(ulps == 0, 0.0, np.abs(got - alone[b]))
                max_abs = max(max_abs, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
                max_ulps = max(max_ulps, float(ulps.max(initial=0.0)))
                same += int((ulps == 0).sum())
                total += ulps.size
                if ulps.size and ulps.max() > worst_ulps:
                    worst_ulps = float(ulps.max())
                    worst = (n, index, b, tuple(int(i) for i in np.unravel_index(np.argmax(ulps), ulps.shape)))
        by_size[n] = (max_abs, max_ulps, same / total if total else 1.0)
        all_same, all_total = all_same + same, all_total + total
    identical = all_same / all_total if all_total else 1.0
    return BatchInvariance(
        dtype=dtype, max_abs=max(s[0] for s in by_size.values()), max_ulps=max(s[1] for s in by_size.values()),
        identical=identical, worst=worst, by_batch_size=by_size, calls=calls,
    )  # fmt: skip


def assert_batch_invariant(fn, tokens, ulps: float = 0, *, others=None, vocab_size: int | None = None,
                           batch_sizes=BATCH_SIZES, seed: int = 0) -> BatchInvariance:  # fmt: skip
    """`batch_invariance`, raising AssertionError (naming the worst row, its index in the batch,
    the batch size and the position) when a row's outputs in a batch differ from its outputs
    alone by more than `ulps` units in the last place of the output dtype (0: bit for bit).
    Returns the BatchInvariance.

        >>> import numpy
        >>> from chainrule.reference import gpt
        >>> config = gpt.Config(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=8)
        >>> params = gpt.random_params(config, numpy.random.default_rng(0))
        >>> tokens = numpy.array([[1, 2, 3, 4], [4, 0, 2, 2]])
        >>> assert_batch_invariant(lambda x: gpt.forward(params, config, x), tokens).exact
        True
        >>> def batch_dependent(x):  # adds a rounding error that depends on the batch size
        ...     return gpt.forward(params, config, x) * (1 + 2.0**-52 * (len(x) - 1))
        >>> assert_batch_invariant(batch_dependent, tokens)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: batch invariance [float64] NOT bit-exact: ...
    """
    if isinstance(ulps, bool) or not isinstance(ulps, (int, float, np.integer, np.floating)) or not ulps >= 0:
        raise ValueError(f"ulps: expected a number >= 0, got {ulps!r}")
    result = batch_invariance(fn, tokens, others=others, vocab_size=vocab_size, batch_sizes=batch_sizes, seed=seed)
    if result.max_ulps > ulps:
        raise AssertionError(f"{result} (allowed {ulps} ulps)")
    return result
