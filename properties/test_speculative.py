"""Properties of speculative decoding (reference/speculative.py) on random context-dependent tables.

- exactness: the exact distribution of the first `length` emitted tokens (every proposal and every
  accept/reject branch enumerated) equals the target's chain rule within 1e-13, for hypothesis-drawn
  V <= 4, k <= 3, length <= 3, with zeros in p and q, drafts equal to the target, point-mass drafts;
- Monte Carlo: speculative_step's first two emitted tokens pass a chi-square test against the
  target's chain rule (reference.checks.speculative_sampler_test);
- the mean number of tokens per step matches expected_tokens_per_step(alpha, k) when every context
  has the same acceptance rate alpha (a z-test on the exact variance of the step length);
- end of sequence: with eos ids, the exact output distribution (every branch enumerated, blocks
  cut after their first eos, pad after) equals the target's chain rule stopped at its first eos
  (V 3..4, k <= 3, length 3..4), and an oracle that keeps the tokens after an eos is caught;
  `generate` with eos is `generate` without it cut after the first emitted eos (the same
  uniforms), and its draws pass a chi-square test against the chain rule stopped at eos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
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


# ----------------------------------------------------------------------------- end of sequence


@st.composite
def eos_cases(draw):
    """(target, draft, prefix, k, length, eos ids, pad id or None): V = 3..4, lengths 3..4."""
    V = draw(st.integers(3, 4))
    target = TableModel(V, draw(seeds), draw(st.sampled_from(KINDS_TARGET)))
    draft = TableModel(V, draw(seeds), draw(st.sampled_from(KINDS_DRAFT)), base=target)
    prefix = np.asarray(draw(st.lists(st.integers(0, V - 1), max_size=2)), dtype=np.int64)
    eos = draw(st.one_of(st.integers(0, V - 1), st.lists(st.integers(0, V - 1), min_size=1, max_size=2, unique=True)))
    pad = draw(st.one_of(st.none(), st.integers(0, V - 1)))
    return target, draft, prefix, draw(st.integers(1, 3)), draw(st.integers(3, 4)), eos, pad


@given(eos_cases())
def test_exact_distribution_with_eos_is_the_chain_rule_stopped_at_eos(case):
    target, draft, prefix, k, length, eos, pad = case
    exact = sp.exact_output_distribution(target, draft, prefix, k, length, eos_token_id=eos, pad_token_id=pad)
    truth = sp.target_distribution(target, prefix, length, eos_token_id=eos, pad_token_id=pad)
    err = float(np.abs(exact - truth).max())
    assert err <= EXACT_ATOL, f"max |exact - chain rule with eos| = {err:.3g} (V={target.V}, k={k}, eos={eos})"
    assert abs(math.fsum(exact.ravel()) - 1) <= EXACT_ATOL
    ids = (eos,) if isinstance(eos, int) else tuple(eos)
    pad = ids[0] if pad is None else pad
    for ys in zip(*np.nonzero(exact)):  # every sequence of positive probability: pad after its first eos
        ends = [t for t, y in enumerate(ys) if y in ids]
        assert not ends or all(y == pad for y in ys[ends[0] + 1 :]), ys


def test_exact_distribution_with_eos_catches_tokens_kept_after_eos(monkeypatch):
    """The oracle is not vacuous: a decoder that stops at eos but keeps the tokens after it in the
    same accepted block (the bonus token, later drafts) emits sequences the chain rule forbids."""
    V = 3
    target, draft = TableModel(V, 1, "dense"), TableModel(V, 2, "like", base=TableModel(V, 1, "dense"))
    args = (target, draft, np.array([0]), 2, 3)
    truth = sp.target_distribution(target, [0], 3, eos_token_id=1)
    assert np.abs(sp.exact_output_distribution(*args, eos_token_id=1) - truth).max() <= EXACT_ATOL
    monkeypatch.setattr(sp, "cut_at_eos", lambda block, eos: (tuple(block), any(t in eos for t in block)))
    assert np.abs(sp.exact_output_distribution(*args, eos_token_id=1) - truth).max() > 1e-2


@given(eos_cases(), seeds)
def test_generate_with_eos_is_generate_cut_at_the_first_eos(case, seed):
    target, draft, prefix, k, length, eos, pad = case
    N = 3 * length
    u = np.random.default_rng(seed).random((N, 2 * k + 1))
    full, full_accepted = sp.generate(target, draft, prefix, k, N, u=u)
    tokens, accepted = sp.generate(target, draft, prefix, k, N, u=u, eos_token_id=eos, pad_token_id=pad)
    ids = (eos,) if isinstance(eos, int) else tuple(eos)
    new = full[len(prefix) :].tolist()
    ends = [t for t, y in enumerate(new) if y in ids]
    want = full[: len(prefix) + ends[0] + 1] if ends else full
    assert tokens.tolist() == want.tolist()
    assert accepted.tolist() == full_accepted[: len(accepted)].tolist()  # the same steps, fewer of them
    before_last = int(np.sum(accepted[:-1] + 1))  # tokens emitted by every step but the last, which emits 1..a+1
    assert before_last < len(tokens) - len(prefix) <= before_last + int(accepted[-1]) + 1


@pytest.mark.parametrize("kinds", [("dense", "dense"), ("zeros", "like")])
def test_generate_with_eos_monte_carlo(kinds):
    """generate itself (k = 2, eos = 2, pad = 0, rng): its first 3 tokens, padded, against the
    target's chain rule stopped at eos (chi-square over the 27 sequences)."""
    V, k, length = 3, 2, 3
    target = TableModel(V, 11, kinds[0])
    draft = TableModel(V, 12, kinds[1], base=target)
    truth = sp.target_distribution(target, [1], length, eos_token_id=2, pad_token_id=0).ravel()
    rng = np.random.default_rng(13)

    def draws(n):
        out = []
        for _ in range(n):
            tokens, _ = sp.generate(target, draft, np.array([1]), k, length, rng, eos_token_id=2, pad_token_id=0)
            ys = tokens[1:].tolist() + [0] * (length + 1 - len(tokens))
            out.append(int(np.ravel_multi_index(tuple(ys), (V,) * length)))
        return np.array(out)

    fit = checks.sampler_goodness_of_fit(draws, truth, 1500)
    assert fit.passed, str(fit)
