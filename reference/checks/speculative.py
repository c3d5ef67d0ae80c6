"""Speculative samplers: does one emit the *target's* distribution? A chi-square test.

`speculative_sampler_test` runs your speculative step from a prefix n times and tests the
first `length` emitted tokens against the target's chain rule with
`goodness_of_fit.sampler_goodness_of_fit` (speculative decoding itself:
reference/speculative.py, imported when the test runs).
"""

from __future__ import annotations

import numpy as np

from chainrule.reference.checks.arrays import _to_numpy
from chainrule.reference.checks.goodness_of_fit import GoodnessOfFit, sampler_goodness_of_fit


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
