"""Generated tokens judged against the reference's choice given the same prefix.

`compare_tokens` (and `assert_tokens`) check greedy or sampled generations -- sampled from
shared uniforms by inverse-CDF sampling -- token by token: in float64 every token must equal
the reference's choice; in low precision a token is judged only where the reference is clear
of a tie by more than the implementation's logit error can move it (JUDGE_FACTOR), and a run
must be able to judge enough of its tokens (MIN_JUDGED) to prove anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.arrays import _abs_err, _to_numpy, as_float64
from chainrule.reference.checks.tolerances import _EPS, dtype_name, tolerance


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
        at least a fraction `MIN_JUDGED[dtype][mode]` of the tokens must be judged.

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
