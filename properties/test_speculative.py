"""Properties of speculative decoding (reference/speculative.py) on random context-dependent tables.

- exactness: the exact distribution of the first `length` emitted tokens (every proposal and every
  accept/reject branch enumerated) equals the target's chain rule within 1e-13, for hypothesis-drawn
  V <= 4, k <= 3, length <= 3, with zeros in p and q, drafts equal to the target, point-mass drafts;
- Monte Carlo: speculative_step's first two emitted tokens pass a chi-square test against the
  target's chain rule (reference.checks.speculative_sampler_test);
- the mean number of tokens per step matches expected_tokens_per_step(alpha, k) when every context
  has the same acceptance rate alpha (a z-test on the exact variance of the step length).
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from properties.conftest import seeds
from chainrule.reference import checks
from chainrule.reference import speculative as sp

EXACT_ATOL = 1e-13


class TableModel:
    """A random context-dependent next-token table: seq -> p (V,), drawn once per context from
    default_rng([seed, *seq]) (so equal contexts give equal vectors whatever the call order).

    kind: "dense" (all entries > 0), "zeros" (some entries exactly 0), "point" (one-hot),
    or "like" (the vectors of `base`: the draft equals the target)."""

    def __init__(self, V: int, seed: int, kind: str, base=None):
        self.V, self.seed, self.kind, self.base, self.memo = V, seed, kind, base, {}

    def __call__(self, seq):
        key = tuple(int(t) for t in seq)
        if key not in self.memo:
            self.memo[key] = self._make(key)
        return self.memo[key]

    def _make(self, key):
        if self.kind == "like":
            return self.base(np.asarray(key, dtype=np.int64))
        rng = np.random.default_rng([self.seed, len(key), *key])
        if self.kind == "point":
            return np.eye(self.V)[rng.integers(self.V)]
        w = rng.random(self.V) + 0.05
        if self.kind == "zeros":
            w[rng.random(self.V) < 0.4] = 0.0
            if not w.any():
                w[rng.integers(self.V)] = 1.0
        return w / w.sum()


KINDS_TARGET = ("dense", "zeros", "point")
KINDS_DRAFT = ("dense", "zeros", "point", "like")


@st.composite
def cases(draw):
    V = draw(st.integers(2, 4))
    target = TableModel(V, draw(seeds), draw(st.sampled_from(KINDS_TARGET)))
    draft = TableModel(V, draw(seeds), draw(st.sampled_from(KINDS_DRAFT)), base=target)
    prefix = np.asarray(draw(st.lists(st.integers(0, V - 1), max_size=2)), dtype=np.int64)
    return target, draft, prefix, draw(st.integers(1, 3))


@given(cases(), st.integers(1, 3))
def test_exact_distribution_is_the_target_chain_rule(case, length):
    target, draft, prefix, k = case
    exact = sp.exact_output_distribution(target, draft, prefix, k, length)
    truth = sp.target_distribution(target, prefix, length)
    assert exact.shape == (target.V,) * length
    err = float(np.abs(exact - truth).max())
    assert err <= EXACT_ATOL, f"max |exact - chain rule| = {err:.3g} (V={target.V}, k={k}, length={length})"
    assert abs(math.fsum(exact.ravel()) - 1) <= EXACT_ATOL


@given(cases(), seeds)
def test_monte_carlo_steps_pass_chi_square(case, seed):
    target, draft, prefix, k = case

    def step(t, d, p, k_, rng):
        return sp.speculative_step(t, d, p, k_, rng)

    fit = checks.speculative_sampler_test(step, target, draft, prefix, k, 400, length=2, seed=seed % 2**31)
    assert fit.passed, str(fit)


class ConstantAlpha:
    """Target and draft whose vectors at every context are one fixed pair (p, q), permuted by a
    context-dependent permutation: context-dependent models with the same acceptance rate
    alpha = sum min(p, q) everywhere."""

    def __init__(self, p, q, seed):
        self.p, self.q, self.seed, self.memo = p, q, seed, {}

    def _perm(self, seq):
        key = tuple(int(t) for t in seq)
        if key not in self.memo:
            self.memo[key] = np.random.default_rng([self.seed, len(key), *key]).permutation(self.p.shape[0])
        return self.memo[key]

    def target(self, seq):
        return self.p[self._perm(seq)]

    def draft(self, seq):
        return self.q[self._perm(seq)]


def _step_length_moments(alpha: float, k: int):
    """Mean and variance of the number of tokens one step emits: N = j w.p. alpha^(j-1) (1 - alpha)
    for j <= k, N = k + 1 w.p. alpha^k."""
    probs = [alpha ** (j - 1) * (1 - alpha) for j in range(1, k + 1)] + [alpha**k]
    values = np.arange(1, k + 2)
    mean = float(np.dot(probs, values))
    return mean, float(np.dot(probs, (values - mean) ** 2))


@given(st.integers(2, 4), st.integers(1, 3), seeds)
def test_mean_tokens_per_step_matches_theory(V, k, seed):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(V)), rng.dirichlet(np.ones(V))
    models = ConstantAlpha(p, q, seed)
    alpha = float(sp.acceptance_rate(p, q))
    expected = sp.expected_tokens_per_step(alpha, k)
    mean, var = _step_length_moments(alpha, k)
    assert abs(mean - expected) <= 1e-12  # the closed form is the mean of the truncated geometric
    n = 600
    lengths = [sp.speculative_step(models.target, models.draft, rng.integers(0, V, rng.integers(0, 4)), k, rng).shape[0]
               for _ in range(n)]  # fmt: skip
    z = (np.mean(lengths) - expected) / math.sqrt(var / n) if var > 0 else 0.0
    assert var > 0 or all(m == expected for m in lengths)
    assert abs(z) <= 4.5, f"mean {np.mean(lengths):.4f} vs {expected:.4f} (alpha={alpha:.3f}, k={k}): z = {z:.2f}"
