"""Checks: compare an implementation with the reference, and test the properties
every autoregressive model must have.

Two kinds of tools, both usable on *your own* implementation (NumPy, CuPy or
torch; torch is imported only when a torch tensor shows up):

1. Numerical agreement with a float64 truth, under the one tolerance table.
   float64 must agree elementwise: |got - truth| <= atol + rtol |truth|.
   Low precision is judged against the float64 truth *relative to a naive
   computation in the same dtype* (the rule of the FlashAttention tests,
   Dao et al. 2022):  |got - truth| <= k * max |naive - truth| + atol + eps |truth|,
   eps |truth| being one ulp of the answer in that dtype.
   Without a naive result, the elementwise atol + rtol rule of the table applies.

2. Exact properties, checked bit for bit where the math is exact:

   - causality as the full dependency structure (`dependency_matrix`,
     `assert_causal`): perturb the input at one position, see which output
     positions change;
   - normalization by enumeration (`enumerate_log_probs`, `assert_normalized`):
     for a tiny vocabulary, sum_x p(x) over all V**T sequences is 1;
   - purity and determinism (`assert_pure`): no input is mutated, and two calls
     on equal inputs return bit-identical outputs.

A tour, on the reference GPT (put your implementation where `my_forward` is):

    >>> import numpy
    >>> from reference import gpt
    >>> config = gpt.Config(vocab_size=3, block_size=4, n_layer=1, n_head=2, n_embd=4)
    >>> params = gpt.init(config, numpy.random.default_rng(0))
    >>> tokens = numpy.array([[0, 2, 1, 1], [1, 0, 0, 2]])
    >>> truth = gpt.forward(params, config, tokens)
    >>> def my_forward(p, tok):  # e.g. the model with float32-rounded weights
    ...     return gpt.forward({k: v.astype("float32").astype("float64") for k, v in p.items()}, config, tok)
    >>> assert_close("logits", truth, my_forward(params, tokens), "float32").passed
    True
    >>> assert_causal(lambda tok: my_forward(params, tok), tokens, vocab_size=3, full=True).astype(int)
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [1, 1, 1, 0],
           [1, 1, 1, 1]])
    >>> round(assert_normalized(lambda x: gpt.log_prob(params, config, x), vocab_size=3, length=3), 12)
    1.0
    >>> out = assert_pure(gpt.sample, params, config, numpy.random.default_rng(0), tokens[:, :1], 3)

Why bit for bit: a model that is causal "up to 1e-7" reads the future. Masked
positions must contribute exact zeros (exp(-inf) = 0), so the outputs at
positions < t are the same floating-point numbers whatever the tokens at
positions >= t are, in every dtype.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass

import numpy as np

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


# ----------------------------------------------------------------------------- array plumbing


def _module(a) -> str:
    return type(a).__module__.split(".")[0]


def as_float64(a) -> np.ndarray:
    """A float64 NumPy copy of a NumPy/CuPy array, torch tensor (any device, any
    dtype, bfloat16 included), list or scalar. Exact for every float dtype."""
    if _module(a) == "torch":
        import torch

        return a.detach().to(device="cpu", dtype=torch.float64).numpy()
    if _module(a) == "cupy":
        a = a.get()
    return np.array(a, dtype=np.float64)


def _abs_err(truth: np.ndarray, got: np.ndarray) -> np.ndarray:
    """|got - truth|, with 0 where both are equal (equal infinities, or both NaN)
    and +inf where they cannot be compared (one NaN, or a mismatched infinity)."""
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - truth)
    same = (got == truth) | (np.isnan(got) & np.isnan(truth))
    err = np.where(same, 0.0, err)
    return np.where(np.isnan(err), np.inf, err)


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


# ----------------------------------------------------------------------------- causality


def _restore(a: np.ndarray, like):
    """`a` (NumPy) converted back to the kind, dtype and device of `like`."""
    if _module(like) == "torch":
        import torch

        return torch.as_tensor(a).to(device=like.device, dtype=like.dtype)
    if _module(like) == "cupy":
        import cupy

        return cupy.asarray(a, dtype=like.dtype)
    return np.asarray(a, dtype=np.asarray(like).dtype)


def _to_numpy(a) -> np.ndarray:
    if _module(a) == "torch":
        return a.detach().cpu().numpy()
    if _module(a) == "cupy":
        return a.get()
    return np.asarray(a)


def _changed(base: np.ndarray, out: np.ndarray, time_axis: int) -> np.ndarray:
    """(T,) bool: which positions along `time_axis` differ bit for bit (NaN equals NaN)."""
    if base.shape != out.shape:
        raise ValueError(f"fn: expected the same output shape for every input, got {base.shape} and {out.shape}")
    diff = (base != out) & ~(np.isnan(base) & np.isnan(out))
    diff = np.moveaxis(diff, time_axis, 0)
    return diff.reshape(diff.shape[0], -1).any(axis=1)


def _perturb(x: np.ndarray, positions, rng, vocab_size, noise) -> np.ndarray:
    """A copy of x (B, T, ...) with every entry at the given time positions changed:
    integer tokens move to a different id in [0, vocab_size), floats get N(0, noise^2) added."""
    y = x.copy()
    part = y[:, positions]
    if np.issubdtype(x.dtype, np.integer):
        y[:, positions] = (part + rng.integers(1, vocab_size, size=part.shape)) % vocab_size
    else:
        y[:, positions] = part + noise * rng.standard_normal(part.shape)
    return y


def _check_inputs(x, vocab_size):
    xn = _to_numpy(x)
    if xn.ndim < 2:
        raise ValueError(f"x: expected shape (B, T, ...), got {xn.shape}")
    if np.issubdtype(xn.dtype, np.integer):
        if vocab_size is None or vocab_size < 2:
            raise ValueError(f"vocab_size: expected an int >= 2 for integer inputs, got {vocab_size!r}")
    elif not np.issubdtype(xn.dtype, np.floating):
        raise ValueError(f"x: expected integer tokens or floats, got dtype {xn.dtype}")
    return xn


def dependency_matrix(fn, x, *, vocab_size=None, n_trials=2, seed=0, noise=1.0, time_axis=1) -> np.ndarray:
    """The dependency structure of a sequence function, measured bit for bit.

    fn: x (B, T_in, ...) -> outputs with a time axis `time_axis` of length T_out
        (e.g. tokens (B, T) -> logits (B, T, V)). NumPy, CuPy or torch in and out.
    x: integer tokens (then `vocab_size` is required: a perturbed token moves to a
       different id) or floats (perturbed by N(0, noise^2)).

    Returns D, a (T_out, T_in) bool matrix: D[t_out, t_in] is True when changing the
    inputs at position t_in (in every batch row, `n_trials` random times) changed
    any output at position t_out by even one bit.

    For a GPT, D must be exactly lower triangular (diagonal included), and for a
    generic model it is the full lower triangle:

        >>> import numpy
        >>> x = numpy.array([[0, 1, 2]])
        >>> dependency_matrix(lambda t: numpy.cumsum(t, axis=1), x, vocab_size=3).astype(int)
        array([[1, 0, 0],
               [1, 1, 0],
               [1, 1, 1]])
    """
    xn = _check_inputs(x, vocab_size)
    rng = np.random.default_rng(seed)
    base = _to_numpy(fn(x))
    T_in, T_out = xn.shape[1], base.shape[time_axis]
    D = np.zeros((T_out, T_in), dtype=bool)
    for t_in in range(T_in):
        for _ in range(n_trials):
            xp = _perturb(xn, [t_in], rng, vocab_size, noise)
            D[:, t_in] |= _changed(base, _to_numpy(fn(_restore(xp, x))), time_axis)
    return D


def format_dependency_matrix(D: np.ndarray) -> str:
    """D as a grid of 0/1, rows = output positions, columns = input positions."""
    rows = ["out\\in " + " ".join(str(j % 10) for j in range(D.shape[1]))]
    rows += [f"{i:>6} " + " ".join("1" if d else "." for d in row) for i, row in enumerate(D)]
    return "\n".join(rows)


def allowed_dependencies(T_out: int, T_in: int, shift: int = 0) -> np.ndarray:
    """(T_out, T_in) bool: output t may depend on input s iff s <= t - shift."""
    return np.arange(T_in)[None, :] <= np.arange(T_out)[:, None] - shift


def assert_causal(
    fn, x, *, shift=0, full=False, vocab_size=None, n_trials=2, seed=0, noise=1.0, time_axis=1, name=None
) -> np.ndarray:
    """Assert that output position t depends only on input positions <= t - shift, bit for bit.

    shift=0: the GPT convention -- logits[:, t] may depend on tokens[:, :t+1]
             (they predict token t+1).
    shift=1: strictly previous inputs -- e.g. a PixelCNN/WaveNet output at t, or a
             per-token log-likelihood term log p(x_t | x_<t) seen as a function of x
             *excluding* x_t itself.

    Two experiments, both exact:
      1. the dependency matrix (`dependency_matrix`): single positions perturbed;
      2. suffix perturbation: for each s, every input at positions >= s is perturbed
         at once; outputs at positions < s + shift must not change by one bit.
    full=True also asserts every allowed dependency is present (a generic model's
    output t depends on *all* of its allowed inputs: a truncated context is a bug too).

    AssertionError names the first violating (output position, input position) and
    prints the measured matrix. Returns the dependency matrix.

        assert_causal(lambda tok: my_model(tok), tokens, vocab_size=V)            # GPT-style
        assert_causal(lambda img: my_pixelcnn(img), x, shift=1, vocab_size=256)   # strictly previous
    """
    name = name or getattr(fn, "__qualname__", repr(fn))
    xn = _check_inputs(x, vocab_size)
    D = dependency_matrix(fn, x, vocab_size=vocab_size, n_trials=n_trials, seed=seed, noise=noise,
                          time_axis=time_axis)  # fmt: skip
    T_out, T_in = D.shape
    allowed = allowed_dependencies(T_out, T_in, shift)
    bad = np.argwhere(D & ~allowed)
    if bad.size:
        t_out, t_in = (int(i) for i in bad[0])
        raise AssertionError(
            f"{name} is not causal (shift={shift}): output position {t_out} changed when the input at "
            f"position {t_in} was perturbed (allowed: inputs at positions <= {t_out - shift}).\n"
            f"Dependency matrix (1 = output depends on input):\n{format_dependency_matrix(D)}"
        )
    rng = np.random.default_rng(seed + 1)
    base = _to_numpy(fn(x))
    for s in range(T_in):
        for _ in range(n_trials):
            xp = _perturb(xn, list(range(s, T_in)), rng, vocab_size, noise)
            changed = _changed(base, _to_numpy(fn(_restore(xp, x))), time_axis)
            protected = np.flatnonzero(changed[: max(0, min(T_out, s + shift))])
            if protected.size:
                raise AssertionError(
                    f"{name} is not causal (shift={shift}): perturbing every input at positions >= {s} "
                    f"changed the output at position {int(protected[0])} (outputs at positions < {s + shift} "
                    f"must stay bit-for-bit unchanged)."
                )
    if full:
        missing = np.argwhere(allowed & ~D)
        if missing.size:
            t_out, t_in = (int(i) for i in missing[0])
            raise AssertionError(
                f"{name} ignores part of its context: output position {t_out} does not depend on the input "
                f"at position {t_in} (allowed with shift={shift}, and a generic model uses it).\n"
                f"Dependency matrix (1 = output depends on input):\n{format_dependency_matrix(D)}"
            )
    return D


# ----------------------------------------------------------------------------- normalization


def enumerate_sequences(vocab_size: int, length: int, max_sequences: int = 1_000_000) -> np.ndarray:
    """All vocab_size**length sequences, lexicographic order, as an (N, length) int64 array."""
    if not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 1):
        raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
    if not (isinstance(length, (int, np.integer)) and length >= 1):
        raise ValueError(f"length: expected a positive int, got {length!r}")
    n = vocab_size**length
    if n > max_sequences:
        raise ValueError(f"vocab_size**length: expected at most {max_sequences} sequences, got {n}")
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), dtype=np.int64).reshape(n, length)


def enumerate_log_probs(log_prob_fn, vocab_size: int, length: int, batch: int = 1024) -> np.ndarray:
    """log p(x) for every sequence x of `length` tokens in [0, vocab_size), in
    lexicographic order (as `enumerate_sequences`), as float64.

    log_prob_fn: tokens (N, length) int64 NumPy -> (N,) log-probabilities in nats
    (NumPy, CuPy or torch); called on chunks of at most `batch` sequences.

        lp = enumerate_log_probs(lambda x: reference.gpt.log_prob(params, config, x), 3, 3)
        lp.shape  # (27,)
    """
    seqs = enumerate_sequences(vocab_size, length)
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        lp = as_float64(log_prob_fn(chunk))
        if lp.shape != (len(chunk),):
            raise ValueError(f"log_prob_fn: expected shape ({len(chunk)},), got {lp.shape}")
        out.append(lp)
    return np.concatenate(out)


def assert_normalized(log_prob_fn, vocab_size: int, length: int, atol: float = 1e-12, batch: int = 1024) -> float:
    """Assert sum over all vocab_size**length sequences of exp(log p(x)) = 1 within atol.

    A sequence model's log_prob must define a distribution over sequences of each
    length: the chain rule guarantees it when each conditional is a softmax and
    the model is causal; a model that peeks at x_t while scoring x_t sums to more
    than 1. Returns the sum. Use for V**T up to ~1e6.

        assert_normalized(lambda x: reference.gpt.log_prob(params, config, x), vocab_size=3, length=3)
    """
    lp = enumerate_log_probs(log_prob_fn, vocab_size, length, batch=batch)
    if np.isnan(lp).any() or (lp == np.inf).any():
        bad = int(np.flatnonzero(np.isnan(lp) | (lp == np.inf))[0])
        seq = enumerate_sequences(vocab_size, length)[bad].tolist()
        raise AssertionError(f"log_prob_fn: log p of sequence {seq} is {lp[bad]}")
    total = math.fsum(np.exp(lp))
    if not abs(total - 1.0) <= atol:
        worst = int(np.argmax(lp))
        raise AssertionError(
            f"log_prob_fn is not normalized: the sum over all {vocab_size}**{length} = {lp.size} sequences "
            f"of p(x) is {total!r} (|sum - 1| = {abs(total - 1.0):.3e} > atol {atol:g}); "
            f"largest p(x) = {math.exp(lp[worst])!r} at x = {enumerate_sequences(vocab_size, length)[worst].tolist()}"
        )
    return total


# ----------------------------------------------------------------------------- purity


def _snapshot(obj):
    """An independent deep copy of arrays, tensors, containers and generators."""
    mod = _module(obj)
    if isinstance(obj, np.ndarray) or mod == "cupy":
        return obj.copy()
    if mod == "torch" and hasattr(obj, "detach"):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _snapshot(v)) for k, v in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_snapshot(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_snapshot(v) for v in obj)
    return copy.deepcopy(obj)


def _first_diff_index(a: np.ndarray, b: np.ndarray):
    with np.errstate(invalid="ignore"):
        neq = (a != b) & ~(_isnan(a) & _isnan(b))
    idx = np.argwhere(neq)
    if idx.size:
        i = tuple(int(j) for j in idx[0])
        return f"first at index {i}: {a[i]!r} vs {b[i]!r}"
    return "same values, different bit patterns (-0.0 vs 0.0, or NaN payloads)"


def _isnan(a: np.ndarray) -> np.ndarray:
    return np.isnan(a) if np.issubdtype(a.dtype, np.inexact) else np.zeros(a.shape, dtype=bool)


def _diff(a, b, path: str) -> str | None:
    """A description of the first difference between a and b (bit for bit), or None."""
    if isinstance(a, np.random.Generator):
        return None  # explicit randomness: consuming it is the point
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    mod = _module(a)
    if mod == "cupy":
        a, b = a.get(), b.get()
    if isinstance(a, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
        if a.dtype == object:
            return None if np.array_equal(a, b) else f"{path}: object arrays differ"
        if np.ascontiguousarray(a).tobytes() != np.ascontiguousarray(b).tobytes():
            return f"{path}: values differ, {_first_diff_index(a, b)}"
        return None
    if mod == "torch" and hasattr(a, "detach"):
        import torch

        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return (f"{path}: shape/dtype/device {tuple(a.shape)} {a.dtype} {a.device} "
                    f"vs {tuple(b.shape)} {b.dtype} {b.device}")  # fmt: skip
        ac, bc = a.detach().cpu().contiguous().reshape(-1), b.detach().cpu().contiguous().reshape(-1)
        if not torch.equal(ac.view(torch.uint8), bc.view(torch.uint8)):
            an = ac.to(torch.float64).numpy() if ac.is_floating_point() else ac.numpy()
            bn = bc.to(torch.float64).numpy() if bc.is_floating_point() else bc.numpy()
            return f"{path}: values differ, {_first_diff_index(an.reshape(tuple(a.shape)), bn.reshape(tuple(b.shape)))}"
        return None
    if isinstance(a, dict):
        if list(a.keys()) != list(b.keys()):
            return f"{path}: keys {list(a.keys())} vs {list(b.keys())}"
        for k in a:
            d = _diff(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float):
        same = (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
        return None if same else f"{path}: {a!r} vs {b!r}"
    if isinstance(a, (int, str, bytes, bool, type(None), complex, np.generic)):
        return None if a == b else f"{path}: {a!r} vs {b!r}"
    if hasattr(a, "__dict__"):
        return _diff(vars(a), vars(b), path)
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def assert_pure(fn, *args, **kwargs):
    """Assert that fn(*args, **kwargs) mutates none of its inputs and is deterministic.

    The inputs (NumPy/CuPy arrays, torch tensors, dicts, lists, tuples, dataclasses,
    numpy Generators) are deep-copied; fn is called on the originals, the originals
    are compared bit for bit with the copies, then fn is called again on fresh copies
    and both outputs must be bit-identical. A numpy Generator argument may be consumed
    (that is how randomness enters); the second call gets it in its original state,
    so it must reproduce the same draws. Returns the output of the first call.

        assert_pure(reference.gpt.forward, params, config, tokens)
        assert_pure(reference.gpt.sample, params, config, numpy.random.default_rng(0), prompt, 5)
    """
    name = getattr(fn, "__qualname__", repr(fn))
    saved_args, saved_kwargs = _snapshot(args), _snapshot(kwargs)
    out = fn(*args, **kwargs)
    d = _diff(saved_args, args, "args") or _diff(saved_kwargs, kwargs, "kwargs")
    if d:
        raise AssertionError(f"{name} mutated its input: {d} (before vs after the call)")
    again = fn(*_snapshot(saved_args), **_snapshot(saved_kwargs))
    d = _diff(out, again, "output")
    if d:
        raise AssertionError(f"{name} is not deterministic: two calls on equal inputs differ: {d}")
    return out
