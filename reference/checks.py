"""Checks: compare an implementation with the reference, and test the properties
every autoregressive model must have.

Three kinds of tools, all usable on *your own* implementation (NumPy, CuPy or
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

3. Generation and gradients:

   - generated tokens (`compare_tokens`, `assert_tokens`): greedy or sampled from
     shared uniforms, each token judged against the reference's choice given the
     same prefix; in low precision only where the reference is clear of a tie by
     more than the implementation's logit error can move it (MIN_JUDGED);
   - KV-cache equivalence (`logits_through_cache`: prefill in chunks + steps);
   - gradients against float64 finite differences (`finite_difference_grad`);
   - the naive float32 baseline of the low-precision rule (`naive_float32`).

A tour, on the reference GPT (put your implementation where `my_forward` is):

    >>> import numpy
    >>> from reference import gpt
    >>> config = gpt.Config(vocab_size=3, block_size=4, n_layer=1, n_head=2, n_embd=4)
    >>> params = gpt.random_params(config, numpy.random.default_rng(0))  # not gpt.init: see there
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


# ----------------------------------------------------------------------------- parameter dicts


def check_param_shapes(params, shapes: dict, name: str = "params") -> None:
    """The model protocol's parameter contract: `params` is a dict holding exactly the keys of
    `shapes` (name -> shape), each an array of that shape. ValueError naming the key otherwise."""
    if not isinstance(params, dict):
        raise ValueError(f"{name}: expected a dict name -> array, got {type(params).__name__}")
    for key, shape in shapes.items():
        if key not in params:
            raise ValueError(f"{name}: missing parameter {key!r} (expected shape {shape})")
        actual = tuple(getattr(params[key], "shape", ()))
        if actual != tuple(shape):
            raise ValueError(f"{name}[{key!r}]: expected shape {tuple(shape)}, got {actual}")
    extra = sorted(set(params) - set(shapes))
    if extra:
        raise ValueError(f"{name}: unexpected parameters {extra}")

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


# ----------------------------------------------------------------------------- token agreement

# A generated token is judged only where the reference's margin is at least JUDGE_FACTOR
# times the largest change the implementation's logit error could make to it.
JUDGE_FACTOR = 4.0

# The fraction of the generated tokens a run must be able to judge (when it generates at
# least MIN_JUDGED_COUNT of them): below it the comparison would prove nothing, and fails.
# float64 judges every token.
MIN_JUDGED: dict[str, dict[str, float]] = {
    "float64": {"greedy": 1.0, "sample": 1.0},
    "float32": {"greedy": 0.5, "sample": 0.5},
    "float16": {"greedy": 0.25, "sample": 0.1},  # bfloat16's floor (no float16 backend here to measure it)
    "bfloat16": {"greedy": 0.25, "sample": 0.1},
}
MIN_JUDGED_COUNT = 20


@dataclass
class TokenComparison:
    """The outcome of `compare_tokens`.

    total: generated tokens (B N); judged: those whose reference margin is clear of the
    implementation's error; needed: how many had to be judged; mismatches: judged tokens
    that differ from the reference's choice (must be 0); problem: why the output could not
    be compared at all (wrong shape, changed prompt, token id out of range), or "".
    max_err and bound (mismatches, 0) make it a row like a `Comparison`.
    """

    quantity: str
    dtype: str
    mode: str  # "greedy" or "sample"
    passed: bool
    total: int = 0
    judged: int = 0
    needed: int = 0
    mismatches: int = 0
    max_logit_err: float | None = None
    first_mismatch: str = ""
    problem: str = ""

    @property
    def max_err(self) -> float:
        return math.inf if self.problem else float(self.mismatches)

    @property
    def bound(self) -> float:
        return 0.0

    @property
    def note(self) -> str:
        if self.problem:
            return self.problem
        err = "" if self.max_logit_err is None else f"; max step logit error {self.max_logit_err:.2e}"
        if self.mismatches:
            return f"{self.mismatches} of {self.judged} judged tokens differ from the reference's choice; {self.first_mismatch}{err}"
        if self.judged < self.needed:
            return (f"only {self.judged} of {self.total} tokens had a margin clear of rounding (needed "
                    f"{self.needed}): the comparison would prove nothing{err}")  # fmt: skip
        return f"{self.judged}/{self.total} tokens judged (need {self.needed}), all equal{err}"

    def __str__(self) -> str:
        verdict = "ok" if self.passed else "MISMATCH"
        return f"{self.quantity} [{self.dtype}, {self.mode}] {verdict}: {self.note}"


def _step_logits(logits, tokens: np.ndarray, n_prompt: int) -> np.ndarray:
    """(B, N, V) float64 step logits: `logits` itself, or logits(tokens[:, :-1])[:, n_prompt - 1:]."""
    if callable(logits):
        return as_float64(logits(tokens[:, :-1]))[:, n_prompt - 1 :]
    return as_float64(logits)


def compare_tokens(quantity: str, prompt, tokens, reference, dtype, *, u=None, fast=None,
                   max_new_tokens: int | None = None, cdf_dtype="float32") -> TokenComparison:  # fmt: skip
    """Judge generated tokens step by step against the reference's choice *given the same prefix*.

    prompt: (B, T0) int, T0 >= 1.
    tokens: (B, T0 + N) int, what the implementation under test generated from `prompt`
        (prompt included): greedy decoding if u is None, else inverse-CDF sampling with
        u[:, n] at step n (the rule of `reference.sampling.sample`).
    u: (B, N) uniforms in [0, 1), or None for greedy.
    reference: the reference's step logits along `tokens`, (B, N, V): row n is the
        distribution of tokens[:, T0 + n] given tokens[:, :T0 + n] (after any logits
        processors). Or a function tokens (B, T0 + N - 1) -> teacher-forced logits
        (B, T0 + N - 1, V), e.g. `lambda x: reference.gpt.forward(params, config, x)`.
    fast: the implementation's own step logits along `tokens`, as it computes them while
        generating (e.g. through its KV cache), in either form. Required in low precision:
        how far they are from the reference's at each step sets which tokens can be
        judged. Optional in float64 (then max_v |fast - reference| is only reported).
    dtype: the precision of the implementation ("float64", "float32", "bfloat16", ...).
    max_new_tokens: if given, tokens must have T0 + max_new_tokens columns.
    cdf_dtype: the precision the implementation accumulates probabilities and their
        cumulative sum in (at least float32 is assumed; fast.sampling uses float64).

    Each generated token is compared with the token the reference picks from the
    implementation's *own* prefix, so a legitimate rounding tie does not end the
    comparison: every later step is still judged, in its new context.

      float64: every token must equal the reference's choice -- by induction, the whole
        sequence equals the reference's own generation.
      low precision: a choice can legitimately flip only where the reference is closer
        to a tie than the implementation's step logits are to the reference's. With
        d = fast - reference at a step, the flip bound is measured, not guessed:
            greedy  top1 - top2 <= max_v d_v - min_v d_v
                    (token j overtakes the top token only if d_j - d_top >= ref_top - ref_j;
                    a common shift of all logits changes nothing)
            sample  min_i |cdf_i - u| <= max_i |fast cdf_i - cdf_i| + V eps(cdf_dtype)
                    (token i's boundary crosses u only if its cumulative probability moves
                    past u; both CDFs in float64 from the step logits, plus V roundings of
                    the implementation's own cumulative sum)
        A token is judged where its reference margin is at least JUDGE_FACTOR times its
        flip bound (room for the generation's logits to differ from `fast` by rounding).
        Every judged token must equal the reference's choice, and if B N >= MIN_JUDGED_COUNT,
        at least a fraction MIN_JUDGED[dtype][mode] of the tokens must be judged.

    A wrong output shape, a changed prompt or a token id outside [0, V) fails the comparison
    (a reference function that validates its input, as reference.gpt.forward does, raises
    ValueError on an out-of-range id first). ValueError for inconsistent arguments.

        >>> import numpy
        >>> logits = numpy.array([[[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]])  # (B=1, N=2, V=3)
        >>> compare_tokens("greedy", [[0]], [[0, 1, 0]], logits, "float64").passed
        True
        >>> compare_tokens("greedy", [[0]], [[0, 2, 0]], logits, "float64").first_mismatch
        'row 0, step 0 (position 1): fast token 2, reference 1 (reference margin 1.000e+00)'
    """
    name = dtype_name(dtype)
    tolerance(name)  # ValueError for an unknown dtype
    mode = "greedy" if u is None else "sample"
    p, x = _to_numpy(prompt), _to_numpy(tokens)
    if p.ndim != 2 or p.shape[1] < 1 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"prompt: expected a (B, T0) integer array with T0 >= 1, got {p.dtype} {p.shape}")
    B, T0 = p.shape

    def failed(problem):
        return TokenComparison(quantity, name, mode, False, problem=problem)

    if x.ndim != 2 or x.shape[0] != B or x.shape[1] < T0 or not np.issubdtype(x.dtype, np.integer):
        return failed(f"expected integer tokens of shape ({B}, {T0} + N) (prompt first), got {x.dtype} {x.shape}")
    N = x.shape[1] - T0
    if max_new_tokens is not None and N != max_new_tokens:
        return failed(f"expected {max_new_tokens} new tokens, got {N}")
    if not np.array_equal(x[:, :T0], p):
        b, t = (int(i) for i in np.argwhere(x[:, :T0] != p)[0])
        return failed(f"the prompt was not returned unchanged: row {b}, position {t}: {x[b, t]}, prompt {p[b, t]}")
    if u is not None:
        u = as_float64(u)
        if u.shape != (B, N):
            return failed(f"expected {u.shape[1] if u.ndim == 2 else '?'} new tokens (one per uniform), got {N}")
    if N == 0:
        return TokenComparison(quantity, name, mode, True)
    ref = _step_logits(reference, x, T0)  # (B, N, V)
    if ref.ndim != 3 or ref.shape[:2] != (B, N):
        if callable(reference):
            raise ValueError(f"reference: expected logits (B, T, V) with T = {T0 + N - 1}, got steps {ref.shape}")
        return failed(f"expected {ref.shape[1] if ref.ndim == 3 else '?'} new tokens (the reference logits'), got {N}")
    V = ref.shape[2]
    got = x[:, T0:]  # (B, N)
    if got.min() < 0 or got.max() >= V:
        bad = np.argwhere((got < 0) | (got >= V))[0]
        return failed(f"token id {got[tuple(bad)]} at row {bad[0]}, step {bad[1]} is outside [0, {V})")
    f = None
    if fast is not None:
        f = _step_logits(fast, x, T0)
        if f.shape != ref.shape:
            raise ValueError(f"fast: expected step logits of shape {ref.shape} (the reference's), got {f.shape}")
    low = name != "float64"
    if low and f is None:
        raise ValueError(f"fast: expected the implementation's step logits in {name} (how far they are from "
                         f"the reference's sets which tokens can be judged), got None")  # fmt: skip
    from chainrule.reference import nn, sampling

    if u is None:
        want = sampling.greedy(ref)  # (B, N)
        top2 = np.sort(ref, axis=-1)[..., -2:]  # (B, N, 2)
        margin = top2[..., 1] - top2[..., 0] if V > 1 else np.full((B, N), np.inf)  # (B, N)
    else:
        want = sampling.sample(ref, u)  # (B, N)
        cdf = np.cumsum(sampling.probs(ref), axis=-1)  # (B, N, V)
        margin = np.min(np.abs(cdf - u[..., None]), axis=-1)  # (B, N)
    flip = err = None
    if f is not None:
        err = _abs_err(ref, f).max(axis=-1)  # (B, N)
        if u is None:
            with np.errstate(invalid="ignore"):
                delta = np.where(f == ref, 0.0, f - ref)  # (B, N, V); 0 at equal infinities
            flip = np.nan_to_num(delta.max(axis=-1) - delta.min(axis=-1), nan=np.inf)  # (B, N)
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                fast_cdf = np.cumsum(nn.softmax(f, axis=-1), axis=-1)  # (B, N, V)
                moved = np.nan_to_num(np.abs(fast_cdf - cdf).max(axis=-1), nan=np.inf)  # (B, N)
            flip = moved + V * _EPS[dtype_name(cdf_dtype)]
    judged = margin >= JUDGE_FACTOR * flip if low else np.ones((B, N), dtype=bool)
    bad = np.argwhere(judged & (got != want))
    first = ""
    if bad.size:
        b, n = (int(i) for i in bad[0])
        first = (f"row {b}, step {n} (position {T0 + n}): fast token {got[b, n]}, reference {want[b, n]} "
                 f"(reference margin {margin[b, n]:.3e}")  # fmt: skip
        if low:
            first += f", {JUDGE_FACTOR:g}x the flip bound {JUDGE_FACTOR * flip[b, n]:.3e}, logit error {err[b, n]:.3e}"
        first += ")"
    total, n_judged = B * N, int(judged.sum())
    needed = math.ceil(MIN_JUDGED[name][mode] * total) if total >= MIN_JUDGED_COUNT else 0
    max_logit_err = None if err is None else float(err.max())
    return TokenComparison(quantity, name, mode, not bad.size and n_judged >= needed, total, n_judged, needed,
                           len(bad), max_logit_err, first)  # fmt: skip


def assert_tokens(quantity: str, prompt, tokens, reference, dtype, **kwargs) -> TokenComparison:
    """`compare_tokens`, raising AssertionError (with the first disagreement) when it fails."""
    result = compare_tokens(quantity, prompt, tokens, reference, dtype, **kwargs)
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
        # a fresh dense copy: .contiguous() may keep a size-1 dimension's odd stride, which .view() refuses
        ac = torch.empty_like(a, device="cpu", memory_format=torch.contiguous_format).copy_(a.detach()).reshape(-1)
        bc = torch.empty_like(b, device="cpu", memory_format=torch.contiguous_format).copy_(b.detach()).reshape(-1)
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


# ----------------------------------------------------------------------------- baselines and equivalences


def naive_float32(fn, params: dict, *args, **kwargs) -> np.ndarray:
    """The naive float32 baseline of the low-precision rule (`compare(..., naive=)`):
    `fn` -- a reference function such as `reference.gpt.forward` -- run on the
    float32-rounded `params` (NumPy, CuPy or torch on any device) in float32 NumPy,
    returned as float64.

    The spec itself in float32 is a computation independent of the implementation
    under test, so a float32 bug anywhere in it (not only in a fused kernel) shows up
    as an error the baseline does not have. AssertionError if fn silently computes in
    another dtype (the baseline would then be float64, and the rule meaningless).

        naive = naive_float32(reference.gpt.forward, params, config, tokens)
        assert_close("logits", truth, my_float32_logits, "float32", naive=naive)
    """
    out = fn({k: as_float64(v).astype(np.float32) for k, v in params.items()}, *args, **kwargs)
    if getattr(out, "dtype", None) != np.float32:
        raise AssertionError(f"naive float32 baseline computed in {getattr(out, 'dtype', type(out))}, not float32")
    return as_float64(out)


def logits_through_cache(model, params, config, tokens, chunks=()) -> np.ndarray:
    """The logits of `tokens` computed incrementally: `model.prefill` chunk by chunk
    (sizes `chunks`), then one `model.step` per remaining token. -> (B, T, V) float64 NumPy.

    model: anything with the KV-cache protocol of reference.gpt and fast.gpt:
        init_cache(params, config, batch) -> cache
        prefill(params, config, cache, tokens (B, Tc)) -> (logits (B, Tc, V), cache)
        step(params, config, cache, tokens_t (B,)) -> (logits_t (B, V), cache)
    tokens: (B, T) in the model's array kind (NumPy, CuPy or torch, on its device).
    chunks: positive prefill sizes summing to at most T (empty: every token is a step).

    Exact attention makes this equal to `forward(params, config, tokens)` up to
    summation order: compare them with `compare`/`assert_close`. Feeding the generated
    tokens of `generate` (all but the last) with chunks=[T0] gives the step logits of the
    generation itself, as `compare_tokens` wants them for `fast`.
    """
    chunks = [int(c) for c in chunks]
    B, T = tokens.shape
    if any(c < 1 for c in chunks) or sum(chunks) > T:
        raise ValueError(f"chunks: expected positive sizes summing to at most T={T}, got {chunks}")
    cache = model.init_cache(params, config, B)
    out, pos = [], 0
    for c in chunks:
        logits, cache = model.prefill(params, config, cache, tokens[:, pos : pos + c])
        out.append(as_float64(logits))  # (B, c, V)
        pos += c
    for t in range(pos, T):
        logits_t, cache = model.step(params, config, cache, tokens[:, t])
        out.append(as_float64(logits_t)[:, None])  # (B, 1, V)
    return np.concatenate(out, axis=1)


# ----------------------------------------------------------------------------- gradients by finite differences

# Steps tried by `finite_difference_grad`; the one whose estimate is most self-consistent wins.
FD_STEPS = (1e-3, 3e-4, 1e-4)
# A finite-difference truth that judges float64 gradients must be accurate to half the
# float64 atol, so that a failure is the implementation's error, not the truth's.
FD_ACCURACY = TOLERANCES["float64"].atol / 2


@dataclass(frozen=True)
class FiniteDifference:
    """A derivative estimated by `finite_difference_grad`."""

    value: float  # the estimate R(h)
    error: float  # |R(h) - R(2h)|, an (over)estimate of its error
    step: float  # the h it came from


def finite_difference_grad(f, params: dict, name: str, index, steps=FD_STEPS) -> FiniteDifference:
    """d f(params) / d params[name][index] of a float64 function, by central differences
    with one Richardson step:

        D(h) = (f(x + h) - f(x - h)) / 2h          error O(h^2)
        R(h) = (4 D(h/2) - D(h)) / 3               error O(h^4)

    Truncation error falls with h, rounding error (~ 1e-16 |f| / h) grows: of `steps`,
    the h where R moves least when h doubles is kept. f: params (dict of NumPy arrays)
    -> float; it gets shifted copies, `params` is not modified. Compare with autograd
    under the float64 tolerance only if `error` <= FD_ACCURACY.

        fd = finite_difference_grad(lambda p: -gpt.log_prob(p, config, x).mean(), params, "wpe", (0, 1))
    """
    if name not in params:
        raise ValueError(f"name: expected one of the parameter names {sorted(params)}, got {name!r}")
    index = tuple(index) if isinstance(index, (tuple, list)) else (index,)
    if len(index) != np.ndim(params[name]):
        raise ValueError(f"index: expected {np.ndim(params[name])} coordinates for {name!r}, got {index}")

    def f_shifted(delta):
        shifted = dict(params)
        shifted[name] = np.array(params[name], dtype=np.float64)
        shifted[name][index] += delta
        return float(f(shifted))

    best = None
    for h in steps:
        D = {s: (f_shifted(s) - f_shifted(-s)) / (2 * s) for s in (h / 2, h, 2 * h)}
        R, R2 = (4 * D[h / 2] - D[h]) / 3, (4 * D[h] - D[2 * h]) / 3
        if best is None or abs(R - R2) < best.error:
            best = FiniteDifference(R, abs(R - R2), h)
    return best


# ----------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class GoodnessOfFit:
    """The result of `sampler_goodness_of_fit`."""

    n: int
    statistic: float  # Pearson's chi-square over the bins
    dof: int  # bins - 1
    p_value: float
    alpha: float
    impossible: int  # draws of a token of probability 0 (any makes the test fail)
    counts: np.ndarray  # (V,) how often each token was drawn
    passed: bool

    def __str__(self):
        verdict = "passed" if self.passed else "FAILED"
        return (f"sampler goodness of fit {verdict}: chi2 = {self.statistic:.4g} on {self.dof} dof, "
                f"p = {self.p_value:.3g} (alpha = {self.alpha}), {self.impossible} draws of "
                f"zero-probability tokens, n = {self.n}")  # fmt: skip


def sampler_goodness_of_fit(sample_fn, probs, n: int, alpha: float = 1e-3) -> GoodnessOfFit:
    """Does `sample_fn` draw tokens with probabilities `probs`? Pearson's chi-square test.

    sample_fn(n) -> n token ids in [0, V) (NumPy, CuPy or torch; e.g.
    `lambda n: my_sample(logits_repeated_n_times, rng.random(n))`); probs: (V,)
    the distribution it should follow. The n draws are counted per token;
    tokens whose expected count n p_i is below 5 are pooled into one bin (pooled
    bins of expected count below 5 are merged into the smallest remaining bin),
    and the test passes iff the chi-square p-value is >= alpha and no token of
    probability 0 was drawn. A correct sampler fails with probability about
    alpha; a sampler off by d in total variation is caught once n d^2 is
    large compared with the number of bins.
    """
    from scipy import stats

    p = as_float64(probs)
    if p.ndim != 1 or p.size < 1 or not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"probs: expected a (V,) vector of finite probabilities >= 0, got shape {p.shape}")
    if abs(p.sum() - 1) > 1e-9:
        raise ValueError(f"probs: expected a sum of 1, got {p.sum()!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha!r}")
    tokens = _to_numpy(sample_fn(n)).reshape(-1)
    if tokens.shape != (n,) or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"sample_fn: expected {n} integer token ids, got dtype {tokens.dtype}, shape {tokens.shape}")
    V = p.size
    if np.any((tokens < 0) | (tokens >= V)):
        raise ValueError(f"sample_fn: expected token ids in [0, {V}), got {tokens[(tokens < 0) | (tokens >= V)][0]}")
    counts = np.bincount(tokens, minlength=V)
    impossible = int(counts[p == 0].sum())
    expected = n * p
    big = expected >= 5
    obs_bins = list(counts[big])
    exp_bins = list(expected[big])
    small = (~big) & (p > 0)
    if small.any():
        obs_bins.append(counts[small].sum())
        exp_bins.append(expected[small].sum())
        if exp_bins[-1] < 5 and len(exp_bins) > 1:  # too small a pool: merge it into the smallest bin
            j = int(np.argmin(exp_bins[:-1]))
            obs_bins[j] += obs_bins.pop()
            exp_bins[j] += exp_bins.pop()
    obs, exp = np.asarray(obs_bins, dtype=np.float64), np.asarray(exp_bins, dtype=np.float64)
    if obs.sum() == 0:  # every draw was of a zero-probability token
        statistic, p_value = math.inf, 0.0
    elif obs.size < 2:  # one bin: nothing to test but the zero-probability tokens
        statistic, p_value = 0.0, 1.0
    else:
        exp = exp * (obs.sum() / exp.sum())  # draws of zero-probability tokens are counted apart
        statistic, p_value = stats.chisquare(obs, exp)
    passed = bool(p_value >= alpha and impossible == 0)
    return GoodnessOfFit(n, float(statistic), max(obs.size - 1, 0), float(p_value), alpha, impossible, counts, passed)


# ----------------------------------------------------------------------------- images: receptive fields and causality
#
# An image model factorizes p(x) over the entries x[c, i, j] in raster order (rows, then
# pixels) and, within a pixel, over channel groups in turn. Its outputs have the layout
# (B, Co, H, W, ...): the output at (o, i, j) belongs to pixel (i, j) and to channel group
# (o * G) // Co, the input entry (c, i, j) to group (c * G) // C, G = channel_groups
# (3 for R, G, B predicted in turn; 1 when a pixel's channels are predicted jointly from the
# pixels before it, as PixelCNN++'s mixture parameters are).


def _image_input(x, levels):
    xn = _to_numpy(x)
    if xn.ndim != 4 or not np.issubdtype(xn.dtype, np.integer):
        raise ValueError(f"x: expected a (B, C, H, W) integer image array, got {xn.dtype} {xn.shape}")
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 2:
        raise ValueError(f"levels: expected an int >= 2, got {levels!r}")
    if xn.size and (xn.min() < 0 or xn.max() >= levels):
        raise ValueError(f"x: expected values in [0, {levels}), got {xn.min()}..{xn.max()}")
    return xn


def _image_output(out, shape_hw) -> np.ndarray:
    o = _to_numpy(out)
    if o.ndim < 4 or o.shape[2:4] != shape_hw:
        raise ValueError(f"fn: expected outputs (B, Co, H, W, ...) with (H, W) = {shape_hw}, got {o.shape}")
    return o


def _changed_entries(base: np.ndarray, out: np.ndarray) -> np.ndarray:
    """(Co, H, W) bool: which outputs differ bit for bit (NaN equals NaN), over batch and trailing axes."""
    if base.shape != out.shape:
        raise ValueError(f"fn: expected the same output shape for every input, got {base.shape} and {out.shape}")
    diff = (base != out) & ~(_isnan(base) & _isnan(out))
    return diff.reshape(diff.shape[:4] + (-1,)).any(axis=(0, 4))


def _perturb_entries(x: np.ndarray, where: np.ndarray, rng, levels) -> np.ndarray:
    """A copy of x (B, C, H, W) with every entry where `where` (C, H, W) is True moved to a different level."""
    y = x.copy()
    shift = rng.integers(1, levels, size=x.shape)
    y[:, where] = (x[:, where] + shift[:, where]) % levels
    return y


def image_dependencies(fn, x, *, levels: int, n_trials: int = 2, seed: int = 0) -> np.ndarray:
    """The full dependency structure of an image function, measured bit for bit.

    fn: x (B, C, H, W) int -> outputs (B, Co, H, W, ...) (NumPy, CuPy or torch in and out).
    Returns D, (Co, H, W, C, H, W) bool: D[o, i, j, c, k, l] is True when changing the input
    entry x[:, c, k, l] (in every batch row, to a different level, `n_trials` random times)
    changed any output at (o, i, j) by even one bit. C H W n_trials + 1 calls of fn.
    """
    xn = _image_input(x, levels)
    rng = np.random.default_rng(seed)
    base = _image_output(fn(x), xn.shape[2:])
    C, H, W = xn.shape[1:]
    D = np.zeros(base.shape[1:4] + (C, H, W), dtype=bool)
    for c, k, l in itertools.product(range(C), range(H), range(W)):
        where = np.zeros((C, H, W), dtype=bool)
        where[c, k, l] = True
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, where, rng, levels), x)), xn.shape[2:])
            D[..., c, k, l] |= _changed_entries(base, out)
    return D


def receptive_field(fn, x, position, *, levels: int, n_trials: int = 2, seed: int = 0) -> np.ndarray:
    """(C, H, W) bool: the input entries the output at `position` = (o, i, j) depends on, bit for bit.

    fn, x, levels, n_trials: as `image_dependencies` (C H W n_trials + 1 calls of fn); the
    output at (o, i, j) is out[:, o, i, j, ...]. For a PixelCNN's logits (B, C, H, W, levels),
    position (c, i, j) is the distribution of x[c, i, j]: its receptive field must lie in the
    pixels before (i, j) and the channels < c of (i, j); `pixels.any(axis=0)` gives the pixels.

        rf = receptive_field(lambda img: my_pixelcnn(img), x, (0, 4, 4), levels=256)
    """
    xn = _image_input(x, levels)
    o, i, j = position
    rng = np.random.default_rng(seed)
    base = _image_output(fn(x), xn.shape[2:])
    if not (0 <= o < base.shape[1] and 0 <= i < base.shape[2] and 0 <= j < base.shape[3]):
        raise ValueError(f"position: expected (o, i, j) inside the output's {base.shape[1:4]}, got {tuple(position)}")
    C, H, W = xn.shape[1:]
    field = np.zeros((C, H, W), dtype=bool)
    for c, k, l in itertools.product(range(C), range(H), range(W)):
        where = np.zeros((C, H, W), dtype=bool)
        where[c, k, l] = True
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, where, rng, levels), x)), xn.shape[2:])
            field[c, k, l] |= bool(_changed_entries(base, out)[o, i, j])
    return field


def image_order_keys(n_channels: int, height: int, width: int, channel_groups: int) -> np.ndarray:
    """(n_channels, H, W) int: each entry's place in the chain-rule order, (i W + j) G + group(c),
    group(c) = (c G) // n_channels. Entries with equal keys are predicted jointly."""
    G = channel_groups
    if isinstance(G, bool) or not isinstance(G, (int, np.integer)) or not 1 <= G <= n_channels:
        raise ValueError(f"channel_groups: expected an int in [1, {n_channels}] (the channel count), got {G!r}")
    group = (np.arange(n_channels) * G) // n_channels
    pixel = np.arange(height)[:, None] * width + np.arange(width)[None, :]
    return pixel[None, :, :] * G + group[:, None, None]


def allowed_image_dependencies(out_channels: int, in_channels: int, height: int, width: int,
                               channel_groups: int) -> np.ndarray:  # fmt: skip
    """(Co, H, W, C, H, W) bool: output (o, i, j) may depend on input (c, k, l) iff the input comes
    earlier in the chain-rule order: pixel (k, l) before (i, j) in raster order, or the same pixel
    and group(c) < group(o)."""
    G = channel_groups
    if not isinstance(G, (int, np.integer)) or isinstance(G, bool) or not 1 <= G <= min(in_channels, out_channels):
        raise ValueError(f"channel_groups: expected an int in [1, min(Co={out_channels}, C={in_channels})], got {G!r}")
    k_out = image_order_keys(out_channels, height, width, G)
    k_in = image_order_keys(in_channels, height, width, G)
    return k_in[None, None, None, :, :, :] < k_out[:, :, :, None, None, None]


def assert_image_causal(fn, x, levels: int, channel_groups: int | None = None, *, full: bool = False,
                        n_trials: int = 2, seed: int = 0, name: str | None = None) -> np.ndarray:  # fmt: skip
    """Assert that an image model is causal in raster order AND in channel order, bit for bit.

    fn: x (B, C, H, W) int -> outputs (B, Co, H, W, ...), e.g. a PixelCNN's logits
    (B, C, H, W, levels). channel_groups: G (default C: every channel its own group, R then
    G then B); the output at (o, i, j) may depend only on pixels before (i, j) in raster
    order and, at (i, j) itself, on input channels of groups < group(o).

    Two experiments, both exact:
      1. the dependency tensor (`image_dependencies`): each input entry perturbed alone;
      2. suffix perturbation: for each place s in the order, every input entry at or after s
         is perturbed at once; the outputs at places <= s must not change by one bit.
    full=True also asserts every allowed dependency is present (a model with no blind spot
    and a receptive field covering the image, such as a deep enough Gated PixelCNN).
    Returns the dependency tensor D (Co, H, W, C, H, W).

        assert_image_causal(lambda img: my_pixelcnn_logits(img), x, levels=256)
        assert_image_causal(lambda img: my_pixelcnnpp_params(img), x, levels=256, channel_groups=1)
    """
    name = name or getattr(fn, "__qualname__", repr(fn))
    xn = _image_input(x, levels)
    C, H, W = xn.shape[1:]
    G = C if channel_groups is None else channel_groups
    image_order_keys(C, H, W, G)  # ValueError for a bad channel_groups before any work
    D = image_dependencies(fn, x, levels=levels, n_trials=n_trials, seed=seed)
    Co = D.shape[0]
    allowed = allowed_image_dependencies(Co, C, H, W, G)
    bad = np.argwhere(D & ~allowed)
    if bad.size:
        o, i, j, c, k, l = (int(v) for v in bad[0])
        raise AssertionError(
            f"{name} is not causal in raster and channel order (channel_groups={G}): the output at channel {o}, "
            f"pixel ({i}, {j}) changed when the input x[:, {c}, {k}, {l}] was perturbed "
            f"({int(bad.shape[0])} forbidden dependencies in all).\n"
            f"Receptive field of that output (channel by channel, 1 = depends):\n{_format_field(D[o, i, j])}"
        )
    rng = np.random.default_rng(seed + 1)
    base = _image_output(fn(x), (H, W))
    k_in = image_order_keys(C, H, W, G)
    k_out = image_order_keys(Co, H, W, G)
    for s in range(H * W * G):
        for _ in range(n_trials):
            out = _image_output(fn(_restore(_perturb_entries(xn, k_in >= s, rng, levels), x)), (H, W))
            moved = np.argwhere(_changed_entries(base, out) & (k_out <= s))
            if moved.size:
                o, i, j = (int(v) for v in moved[0])
                raise AssertionError(
                    f"{name} is not causal (channel_groups={G}): perturbing every input entry from place {s} of "
                    f"the chain-rule order on changed the output at channel {o}, pixel ({i}, {j}) "
                    f"(place {k_out[o, i, j]})."
                )
    if full:
        missing = np.argwhere(allowed & ~D)
        if missing.size:
            o, i, j, c, k, l = (int(v) for v in missing[0])
            raise AssertionError(
                f"{name} ignores part of its context: the output at channel {o}, pixel ({i}, {j}) does not depend "
                f"on the earlier input x[:, {c}, {k}, {l}] ({int(missing.shape[0])} missing dependencies in all).\n"
                f"Receptive field of that output:\n{_format_field(D[o, i, j])}"
            )
    return D


def _format_field(field: np.ndarray) -> str:
    """A (C, H, W) bool field as C grids of 1/. ."""
    out = []
    for c, grid in enumerate(field):
        out.append(f"channel {c}:")
        out += ["  " + " ".join("1" if v else "." for v in row) for row in grid]
    return "\n".join(out)


def draw_receptive_field(fields, path: str, *, positions=None, titles=None, highlight=None,
                         highlight_label: str = "blind spot", legend_label: str = "receptive field") -> str:  # fmt: skip
    """Draw one or more receptive fields side by side into a PNG (matplotlib, Agg backend).

    fields: an (H, W) or (C, H, W) bool array (a `receptive_field`; channels are merged: a pixel
    is drawn if any of its channels is in the field), or a list of them (one panel each).
    positions: the output pixel (i, j) of each panel, drawn in red. titles: one per panel.
    highlight: per panel None or an (H, W) bool mask drawn hatched in orange (e.g. the
    PixelCNN's blind spot). Returns path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    single = isinstance(fields, np.ndarray) or _module(fields) in ("torch", "cupy")
    fields = [fields] if single else list(fields)
    n = len(fields)
    positions = [None] * n if positions is None else ([positions] if single else list(positions))
    titles = [None] * n if titles is None else ([titles] if single else list(titles))
    highlight = [None] * n if highlight is None else ([highlight] if single else list(highlight))
    if not len(positions) == len(titles) == len(highlight) == n:
        raise ValueError(f"positions, titles, highlight: expected {n} entries each (one per field)")
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.9), squeeze=False)
    for ax, field, pos, title, hi in zip(axes[0], fields, positions, titles, highlight):
        f = _to_numpy(field).astype(bool)
        if f.ndim == 3:
            f = f.any(axis=0)
        if f.ndim != 2:
            raise ValueError(f"fields: expected (H, W) or (C, H, W) arrays, got shape {f.shape}")
        H, W = f.shape
        ax.imshow(f.astype(float), cmap=ListedColormap(["#f4f4f4", "#3a6ea5"]), vmin=0, vmax=1)
        if hi is not None:
            for i, j in np.argwhere(_to_numpy(hi).astype(bool)):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="#f5b041", edgecolor="#b9770e", hatch="//"))
        if pos is not None:
            ax.add_patch(Rectangle((pos[1] - 0.5, pos[0] - 0.5), 1, 1, facecolor="#c0392b"))
        ax.set_xticks(np.arange(-0.5, W, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, H, 1), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="both", bottom=False, left=False, labelbottom=False, labelleft=False)
        if title:
            ax.set_title(title, fontsize=10)
    handles = [Patch(color="#3a6ea5", label=legend_label), Patch(color="#c0392b", label="predicted pixel")]
    if any(h is not None for h in highlight):
        handles.append(Patch(facecolor="#f5b041", edgecolor="#b9770e", hatch="//", label=highlight_label))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- speculative samplers


def speculative_sampler_test(step_fn, target, draft, prefix, k: int, n: int, *, length: int = 2,
                             alpha: float = 1e-3, seed: int = 0) -> GoodnessOfFit:  # fmt: skip
    """Does a speculative sampler emit the *target's* distribution? A chi-square test you can run
    on your own implementation (speculative decoding: reference/speculative.py).

    step_fn(target, draft, prefix, k, rng) -> the tokens one speculative step emits (1..k+1 of
    them; NumPy, CuPy, torch or a list), rng a numpy Generator it must take its randomness from;
    target, draft: callables seq (T,) int -> next-token probabilities (V,) (the ones your
    sampler is built on); prefix: (T,) int.

    n times: call step_fn from prefix, and again after the tokens emitted so far until `length`
    tokens are out; the first `length` tokens form one draw. The draws are tested with
    `sampler_goodness_of_fit` against the target's chain rule P[y_1..y_length] =
    prod_t target(prefix + y_<t)[y_t] over all V**length sequences. With length >= 2 the test
    sees accepted draft tokens, residual draws and (k = 1) bonus tokens at once. A step that
    emits no token, more than k + 1 tokens, or ids outside [0, V) raises ValueError. A correct
    sampler fails with probability about alpha; one whose first `length` tokens are off by d in
    total variation is caught once n d^2 is large compared with V**length.
    """
    from chainrule.reference.speculative import target_distribution

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k!r}")
    prefix = np.asarray(prefix)
    truth = target_distribution(target, prefix, length)  # (V,) * length
    V = truth.shape[0]
    rng = np.random.default_rng(seed)

    def draws(count):
        out = np.empty(count, dtype=np.int64)
        for j in range(count):
            seq = [int(t) for t in prefix]
            emitted = []
            while len(emitted) < length:
                got = _to_numpy(step_fn(target, draft, np.asarray(seq, dtype=np.int64), k, rng)).reshape(-1)
                if not 1 <= got.size <= k + 1 or not np.issubdtype(got.dtype, np.integer):
                    raise ValueError(f"step_fn: expected 1 to k + 1 = {k + 1} integer tokens, got {got.tolist()}")
                if np.any((got < 0) | (got >= V)):
                    raise ValueError(f"step_fn: expected token ids in [0, {V}), got {got.tolist()}")
                emitted += got.tolist()
                seq += got.tolist()
            out[j] = np.ravel_multi_index(tuple(emitted[:length]), (V,) * length)
        return out

    return sampler_goodness_of_fit(draws, truth.reshape(-1), n, alpha)
