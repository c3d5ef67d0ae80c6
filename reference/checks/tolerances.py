"""The tolerance table, and the comparison of a result with the float64 truth under it.

float64 must agree elementwise: |got - truth| <= atol + rtol |truth|. Low precision is judged
against the float64 truth *relative to a naive computation in the same dtype* (the rule of
the FlashAttention tests, Dao et al. 2022):
    |got - truth| <= k * max |naive - truth| + atol + eps |truth|,
eps |truth| being one ulp of the answer in that dtype. Without a naive result, the elementwise
atol + rtol rule of the table applies. `compare` returns the worst offender (a `Comparison`);
`assert_close` raises with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.arrays import _abs_err, as_float64


# ----------------------------------------------------------------------------- the tolerance table


@dataclass(frozen=True)
class Tolerance:
    """How close `got` must be to the float64 truth.

    rtol, atol: the elementwise rule |got - truth| <= atol + rtol |truth|.
    k: the low-precision factor: |got - truth| <= k * max |naive - truth| + atol + eps |truth|,
       where `naive` is the same computation done naively in the same dtype
       (None: the dtype is judged elementwise only, as float64 is).
    """

    rtol: float
    atol: float
    k: float | None = None


TOLERANCES: dict[str, Tolerance] = {
    # Reference and fast path both in float64: ~1e-16 per operation, and the
    # tiny models of the tests lose at most a few digits; 1e-10 leaves room for
    # a different summation order (fused attention, chunked prefill), never for a bug.
    "float64": Tolerance(rtol=1e-10, atol=1e-10, k=None),
    # float32 (eps 1.2e-7): a fused kernel may be at most k = 3 times worse than
    # the naive float32 computation, plus an absolute floor of 1e-5 (logits and
    # log-probabilities of the test models are O(1)..O(100)).
    "float32": Tolerance(rtol=1e-5, atol=1e-5, k=3.0),
    # float16 (eps 9.8e-4), for users' kernels.
    "float16": Tolerance(rtol=1e-3, atol=1e-3, k=3.0),
    # bfloat16 (eps 7.8e-3): the same factor k; the floor is 1e-2 on O(1) logits.
    "bfloat16": Tolerance(rtol=2e-2, atol=1e-2, k=3.0),
}

# Machine epsilon (one ulp at 1.0) per dtype: the rounding floor of the low-precision rule.
_EPS = {"float64": 2.0**-52, "float32": 2.0**-23, "float16": 2.0**-10, "bfloat16": 2.0**-7}

_DTYPE_ALIASES = {
    "f64": "float64", "fp64": "float64", "double": "float64",
    "f32": "float32", "fp32": "float32", "float": "float32",
    "f16": "float16", "fp16": "float16", "half": "float16",
    "bf16": "bfloat16",
}  # fmt: skip


def dtype_name(dtype) -> str:
    """The canonical name ("float64", "float32", ...) of a dtype given as a string,
    a NumPy dtype or scalar type, a torch dtype, or anything with a `.dtype`
    (an array, a tensor, a backend description)."""
    if isinstance(dtype, str):
        name = dtype.lower().removeprefix("torch.")
    elif isinstance(dtype, np.dtype):
        name = dtype.name
    elif isinstance(dtype, type):
        name = np.dtype(dtype).name
    elif type(dtype).__name__ == "dtype" and type(dtype).__module__.split(".")[0] == "torch":
        name = str(dtype).removeprefix("torch.")
    elif hasattr(dtype, "dtype"):
        return dtype_name(dtype.dtype)
    else:
        raise ValueError(f"dtype: expected a dtype name, NumPy or torch dtype, got {dtype!r}")
    return _DTYPE_ALIASES.get(name, name)


def tolerance(dtype) -> Tolerance:
    """The row of TOLERANCES for `dtype` ("float32", numpy.float32, torch.float32, ...)."""
    name = dtype_name(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"dtype: expected one of {sorted(TOLERANCES)}, got {name!r}")
    return TOLERANCES[name]


# ----------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """The outcome of `compare`: the worst offender, and the bound it was held to.

    max_err: max |got - truth| over all entries.
    bound: the allowed error at `worst_index` (the k rule: one bound for all entries).
    used: the fraction of the tolerance used at the worst entry (passed iff used <= 1).
    worst_index: the entry that came closest to (or furthest past) its bound.
    """

    quantity: str
    dtype: str
    max_err: float
    bound: float
    passed: bool
    worst_index: tuple
    truth_value: float
    got_value: float
    naive_err: float | None = None
    rule: str = ""
    used: float = 0.0

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "MISMATCH"
        naive = "" if self.naive_err is None else f"; naive same-dtype error {self.naive_err:.3e}"
        return (
            f"{self.quantity} [{self.dtype}] {verdict}: max |fast - reference| = {self.max_err:.3e}; "
            f"worst at index {self.worst_index}: reference {self.truth_value!r}, fast {self.got_value!r}, "
            f"allowed {self.bound:.3e} ({self.rule}; {self.used:.2f} of the tolerance used){naive}"
        )


def compare(quantity: str, truth, got, dtype, naive=None) -> Comparison:
    """Compare `got` with the float64 `truth` under the tolerance of `dtype`.

    quantity: a name for messages ("logits", "log_prob", ...).
    truth, got, naive: arrays of the same shape (NumPy, CuPy or torch, any float dtype).
    dtype: the precision `got` was computed in (selects the row of TOLERANCES).
    naive: the same quantity computed naively in that dtype; with it, a low-precision
        dtype is judged entry by entry by
            |got - truth| <= k * max |naive - truth| + atol + eps_dtype |truth|
        (eps_dtype |truth|: one ulp of the answer, the rounding no same-dtype result escapes).
        Without it (or for float64), entry by entry:  |got - truth| <= atol + rtol |truth|.

    Equal infinities agree; a NaN, or an infinity where the truth is finite, never does.

        >>> compare("p", [0.5, 0.25], [0.5, 0.25 + 1e-12], "float64").passed
        True
        >>> compare("p", [0.5, 0.25], [0.5, 0.26], "float64").worst_index
        (1,)
    """
    tol = tolerance(dtype)
    name = dtype_name(dtype)
    t, g = as_float64(truth), as_float64(got)
    if t.shape != g.shape:
        raise ValueError(f"{quantity}: expected shape {t.shape} (the reference's), got {g.shape}")
    err = _abs_err(t, g)
    max_err = float(err.max()) if err.size else 0.0
    naive_err = None
    if naive is not None:
        n = as_float64(naive)
        if n.shape != t.shape:
            raise ValueError(f"naive: expected shape {t.shape} (the reference's), got {n.shape}")
        naive_err = float(_abs_err(t, n).max()) if n.size else 0.0
        if not math.isfinite(naive_err):
            raise ValueError(f"naive: expected a finite error against the reference, got {naive_err}")
    if err.size == 0:
        return Comparison(quantity, name, 0.0, tol.atol, True, (), math.nan, math.nan, naive_err, "empty", 0.0)
    if naive_err is not None and tol.k is not None:
        # One ulp of the answer itself (eps |truth|) joins the floor: no computation in this
        # dtype can beat the rounding of its own result, and a naive run that happens to round
        # luckily on a few large entries (a sum of log-probabilities of -290, say) must not
        # turn the rule into "be luckier than that".
        allowed = np.where(np.isfinite(t), tol.k * naive_err + tol.atol + _EPS[name] * np.abs(t), 0.0)
        rule = f"{tol.k:g} x naive error + atol {tol.atol:g} + 1 ulp x |reference|"
    else:
        allowed = np.where(np.isfinite(t), tol.atol + tol.rtol * np.abs(t), 0.0)
        rule = f"atol {tol.atol:g} + rtol {tol.rtol:g} x |reference|"
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(err == 0, 0.0, err / allowed)
    flat = int(np.argmax(ratio))
    bound = float(allowed.flat[flat])
    used = float(ratio.flat[flat])
    index = tuple(int(i) for i in np.unravel_index(flat, t.shape))
    return Comparison(
        quantity, name, max_err, bound, bool(used <= 1.0), index,
        float(t.flat[flat]), float(g.flat[flat]), naive_err, rule, used,
    )  # fmt: skip


def assert_close(quantity: str, truth, got, dtype, naive=None) -> Comparison:
    """`compare`, raising AssertionError (with the worst offender) when it fails.
    Returns the Comparison, whose `max_err` can be logged."""
    result = compare(quantity, truth, got, dtype, naive=naive)
    if not result.passed:
        raise AssertionError(str(result))
    return result
