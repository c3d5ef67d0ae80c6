"""Samplers: does a sampler draw tokens with the probabilities it should? Pearson's chi-square test.

`sampler_goodness_of_fit` counts n draws per token, pools the rare ones and tests them against
the distribution with scipy.stats.chisquare (scipy is imported when the test runs); a draw of
a token of probability 0 fails it outright.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chainrule.reference.checks.arrays import _to_numpy, as_float64


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
