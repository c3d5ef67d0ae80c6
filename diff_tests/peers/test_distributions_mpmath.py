"""reference.distributions' discretized logistic against 80-digit mpmath.

The peer evaluates the definition directly -- P = sigma(a) - sigma(b) with the exact
rational bin edges (2x - levels + 2)/(levels - 1) and (2x - levels)/(levels - 1), at
the float64 inputs taken exactly -- in arbitrary precision, with mpmath's unbounded
exponent, so probabilities far below 1e-308 are still numbers. (Where both sigmoids
are near 1 it subtracts the upper tails sigma(-b) - sigma(-a) instead, which is the
same number without the loss of 10^5 digits.) Nothing of the reference's log-sigmoid
identity or its exact edge offsets is reused.

Claim checked (reference.distributions.LOG_PROB_RTOL): |log P - exact| <= 1e-12 |exact|
in every regime: moderate, tiny scales (P down to exp(-1e20)), means within ulps of a
bin edge with scales down to e^-30, far means, huge scales (P ~ e^-40), and the edge
bins; for one logistic and for mixtures. openai/pixel-cnn's pdf approximation is
measured in the same regimes and shown to be off by far more (it is not used here).
"""

from __future__ import annotations

import numpy as np
import pytest

mpmath = pytest.importorskip("mpmath")

from chainrule.reference import distributions as ref  # noqa: E402

mp = mpmath.mp
DPS = 80
LEVELS = (2, 17, 256)
REGIMES = ("moderate", "tiny-scale", "near-edge", "far-mean", "huge-scale", "underflow")


def exact_log_prob(x: int, mean: float, log_scale: float, levels: int):
    """log P(x) at 80 digits, from the definition (the inputs are taken as exact binary numbers).

    With the tail masses below and above the bin, T_lo = sigma(b) and T_hi = sigma(-a) = 1 - sigma(a),
    P = 1 - T_lo - T_hi; each case is evaluated where its subtraction does not cancel:
    both tails near 1/2 or less -> log1p(-(T_lo + T_hi)); the bin far above the mean (b > 0) ->
    T_hi(b) - T_hi(a) = sigma(-b) - sigma(-a); far below (a < 0) -> sigma(a) - sigma(b).
    """
    with mp.workdps(DPS):
        m, s = mp.mpf(float(mean)), mp.exp(mp.mpf(float(log_scale)))
        upper = mp.mpf(2 * x - levels + 2) / (levels - 1)
        lower = mp.mpf(2 * x - levels) / (levels - 1)

        def sigma(z):
            return 1 / (1 + mp.exp(-z))

        a = (upper - m) / s if x < levels - 1 else mp.inf
        b = (lower - m) / s if x > 0 else -mp.inf
        t_lo = sigma(b) if x > 0 else mp.mpf(0)
        t_hi = sigma(-a) if x < levels - 1 else mp.mpf(0)
        if b > 0:  # both tails are near 0 and 1: the mass above the bin's lower edge minus above its upper
            return mp.log(sigma(-b) - t_hi)
        if a < 0:
            return mp.log(sigma(a) - t_lo)
        return mp.log1p(-(t_lo + t_hi))


def exact_mixture(x, w, means, log_scales, levels):
    with mp.workdps(DPS):
        logw = [mp.mpf(float(v)) for v in w]
        norm = mp.log(mp.fsum(mp.exp(v) for v in logw))
        terms = [logw[k] - norm + exact_log_prob(x, means[k], log_scales[k], levels) for k in range(len(w))]
        top = max(terms)
        return top + mp.log(mp.fsum(mp.exp(t - top) for t in terms))


def draw(regime, levels, n, rng):
    """(x, mean, log_scale) arrays of n cases in a regime."""
    x = rng.integers(0, levels, n)
    x[:2] = (0, levels - 1)
    if regime == "moderate":
        return x, rng.normal(0, 0.7, n), rng.uniform(-7, 1, n)
    if regime == "tiny-scale":
        return x, rng.uniform(-1.2, 1.2, n), rng.uniform(-45, -10, n)
    if regime == "near-edge":  # mean on, or a few ulps from, an edge of x's own bin (or a neighbour's)
        j = 2 * x - levels + rng.choice([0, 2, -2, 4], n)
        edge = j / (levels - 1)
        ulps = rng.integers(-4, 5, n)
        return x, np.array([np.nextafter(e, np.sign(u) * np.inf) if u else e for e, u in zip(edge, ulps)]) \
            + 0.0 * ulps, rng.uniform(-30, -10, n)
    if regime == "far-mean":
        return x, rng.choice([-1, 1], n) * rng.uniform(3, 200, n), rng.uniform(-10, 0, n)
    if regime == "huge-scale":
        return x, rng.uniform(-5, 5, n), rng.uniform(3, 40, n)
    if regime == "underflow":  # P < 1e-308 on purpose (log P < -709): the mean on the far side of x
        side = np.where(2 * x > levels - 1, -1.0, 1.0)
        return x, side * rng.uniform(1.5, 5, n), rng.uniform(-12, -8, n)
    raise ValueError(regime)


TINY = np.finfo(np.float64).tiny  # below it log P is not a normal float64 number


def used(got, truth, atol=0.0):
    """|got - exact| / (LOG_PROB_RTOL |exact| + TINY + atol) per entry: the fraction of the claim used."""
    with mp.workdps(DPS):
        return np.array([float(abs(mp.mpf(float(g)) - t) / (ref.LOG_PROB_RTOL * abs(t) + TINY + atol))
                         for g, t in zip(got, truth)])  # fmt: skip


def relative_errors(got, truth):
    with mp.workdps(DPS):
        return np.array([float(abs((mp.mpf(float(g)) - t) / t)) if abs(t) > TINY else 0.0
                         for g, t in zip(got, truth)])  # fmt: skip


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", REGIMES)
def test_logistic_log_prob_against_mpmath(regime, levels):
    rng = np.random.default_rng(REGIMES.index(regime) * 1000 + levels)
    x, mean, log_scale = draw(regime, levels, 40, rng)
    got = ref.discretized_logistic_log_prob(x, mean, log_scale, levels)
    truth = [exact_log_prob(int(xi), m, s, levels) for xi, m, s in zip(x, mean, log_scale)]
    rel, frac = relative_errors(got, truth), used(got, truth)
    worst = int(np.argmax(frac))
    print(f"{regime}, levels {levels}: worst relative error {rel.max():.2e}; {frac[worst]:.2g} of the claim used at "
          f"x={x[worst]}, mean={mean[worst]!r}, log_scale={log_scale[worst]!r}: exact "
          f"{mpmath.nstr(truth[worst], 17)}, got {got[worst]!r}")  # fmt: skip
    assert frac[worst] <= 1, f"error {frac[worst]:.3g} times the claim LOG_PROB_RTOL |exact| + TINY"
    if regime == "underflow":
        assert sum(t < -709 for t in truth) >= 20, "the underflow regime must reach P < 1e-308"
    if regime == "tiny-scale":
        assert min(truth) < -1e12, "the tiny-scale regime must reach astronomically small P"


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", ("moderate", "tiny-scale", "near-edge", "underflow"))
def test_mixture_log_prob_against_mpmath(regime, levels):
    rng = np.random.default_rng(REGIMES.index(regime) * 1000 + levels + 7)
    n, K = 15, 3
    x, means, log_scales = draw(regime, levels, n * K, rng)
    x = x[:n]
    x[:2] = (0, levels - 1)
    means, log_scales = means.reshape(n, K), log_scales.reshape(n, K)
    w = rng.normal(0, 3, (n, K))
    got = ref.discretized_logistic_mixture_log_prob(x, w, means, log_scales, levels)
    truth = [exact_mixture(int(x[i]), w[i], means[i], log_scales[i], levels) for i in range(n)]
    frac = used(got, truth, ref.MIXTURE_LOG_PROB_ATOL)
    with mp.workdps(DPS):
        abs_err = max(float(abs(mp.mpf(float(g)) - t)) for g, t in zip(got, truth))
    print(f"mixture {regime}, levels {levels}: worst error absolute {abs_err:.2e}, "
          f"{frac.max():.2g} of the claim used")  # fmt: skip
    assert frac.max() <= 1, f"error {frac.max():.3g} times the claim LOG_PROB_RTOL |exact| + TINY + MIXTURE_LOG_PROB_ATOL"


def openai_approximation(x, mean, log_scale, levels):
    """openai/pixel-cnn's evaluation (without its log-scale floor, to compare like with like):
    the sigmoid difference where it exceeds 1e-5, else the density at the centre times the bin
    width; the difference floored at 1e-12; the edge bins through softplus."""
    c = 2 * x / (levels - 1) - 1
    inv = np.exp(-log_scale)
    plus, minus, mid = inv * (c + 1 / (levels - 1) - mean), inv * (c - 1 / (levels - 1) - mean), inv * (c - mean)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        softplus = lambda z: np.logaddexp(0, z)  # noqa: E731
        delta = 1 / (1 + np.exp(-plus)) - 1 / (1 + np.exp(-minus))
        log_pdf_mid = mid - log_scale - 2 * softplus(mid)
        inner = np.where(delta > 1e-5, np.log(np.maximum(delta, 1e-12)), log_pdf_mid - np.log((levels - 1) / 2))
        return np.where(x == 0, plus - softplus(plus), np.where(x == levels - 1, -softplus(minus), inner))


def test_openai_approximation_is_not_exact():
    """The documented reason for the exact form: in the tiny-scale and near-edge regimes the pdf
    approximation misses log P by orders of magnitude more than LOG_PROB_RTOL; ours does not."""
    rng = np.random.default_rng(3)
    x, mean, log_scale = draw("near-edge", 256, 40, rng)
    truth = [exact_log_prob(int(xi), m, s, 256) for xi, m, s in zip(x, mean, log_scale)]
    ours = relative_errors(ref.discretized_logistic_log_prob(x, mean, log_scale, 256), truth)
    theirs = relative_errors(openai_approximation(x, mean, log_scale, 256), truth)
    print(f"near-edge, levels 256: worst relative error ours {ours.max():.2e}, openai approximation {theirs.max():.2e}")
    assert ours.max() <= ref.LOG_PROB_RTOL < 1e-3 < theirs.max()
