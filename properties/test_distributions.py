"""Properties of the image output distributions (reference.distributions, and fast in float64).

Normalization: the probabilities of all levels sum to 1 for random *and* extreme
parameters (tiny and huge scales, far means, means on bin edges), levels 2, 17, 256 --
one logistic, mixtures, the categorical, and PixelCNN++'s coupled RGB mixture (summed
over all levels^3 colours of a pixel).
Exact invariances, bit for bit: the reflection x -> levels-1-x, mean -> -mean; a one-
component mixture is the logistic itself; pack/unpack of the openai/pixel-cnn layout
round-trips; purity.
Samplers: goodness of fit of draws from explicit uniforms against the exact
probabilities, for the logistic, the mixture, the categorical and the coupled RGB
mixture, reference and fast -- and a sampler with a wrong coupling is caught.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chainrule.fast import distributions as fast
from chainrule.reference import distributions as ref
from chainrule.reference.checks import assert_pure, sampler_goodness_of_fit

LEVELS = st.sampled_from([2, 17, 256])
EPS = 2.0**-52

# Means anywhere from far left to far right, on or off bin edges; log-scales from 1e-26 to 1e17.
means = st.one_of(st.floats(-1.5, 1.5), st.floats(-200, 200), st.integers(-300, 300).map(lambda j: j / 255))
log_scales = st.one_of(st.floats(-8, 2), st.floats(-60, 40))


def _normalization_error(log_p):
    """|sum_x exp(log p(x)) - 1| with an exactly rounded sum (math.fsum), per row of (L, ...)."""
    p = np.exp(np.moveaxis(log_p, 0, -1))
    flat = p.reshape(-1, p.shape[-1])
    return max(abs(math.fsum(row) - 1.0) for row in flat)


def _bound(levels):
    """The rounding a sum of `levels` probabilities, each with relative error ~4 eps, can show."""
    return 8 * levels * EPS


@given(LEVELS, hnp.arrays(np.float64, (3,), elements=means), hnp.arrays(np.float64, (3,), elements=log_scales))
def test_logistic_probabilities_sum_to_one(levels, mean, log_scale):
    x = np.arange(levels)[:, None]  # (L, 1) against (3,) parameters
    log_p = ref.discretized_logistic_log_prob(x, mean, log_scale, levels)  # (L, 3)
    assert np.all(log_p <= 0) and not np.any(np.isnan(log_p))
    assert _normalization_error(log_p) <= _bound(levels)
    got = fast.discretized_logistic_log_prob(torch.as_tensor(x), torch.as_tensor(mean), torch.as_tensor(log_scale), levels)
    assert _normalization_error(got.numpy()) <= _bound(levels)


@given(LEVELS, st.integers(1, 5), st.integers(0, 2**32 - 1), st.sampled_from(["moderate", "extreme"]))
def test_mixture_probabilities_sum_to_one(levels, K, seed, regime):
    rng = np.random.default_rng(seed)
    if regime == "moderate":
        m, ls = rng.normal(0, 0.7, (3, K)), rng.uniform(-7, 1, (3, K))
    else:
        m, ls = rng.uniform(-80, 80, (3, K)), rng.choice([-45.0, -20.0, -3.0, 12.0, 35.0], (3, K))
    w = rng.normal(0, 3, (3, K))
    x = np.broadcast_to(np.arange(levels)[:, None], (levels, 3))
    log_p = ref.discretized_logistic_mixture_log_prob(x, w, m, ls, levels)
    assert _normalization_error(log_p) <= _bound(levels) + ref.MIXTURE_LOG_PROB_ATOL * levels


@given(LEVELS, st.integers(0, 2**32 - 1))
def test_categorical_probabilities_sum_to_one(levels, seed):
    logits = np.random.default_rng(seed).normal(0, 5, (2, levels))
    x = np.broadcast_to(np.arange(levels)[:, None], (levels, 2))
    log_p = ref.categorical_log_prob(x, np.broadcast_to(logits, (levels, 2, levels)))
    assert _normalization_error(log_p) <= _bound(levels)


@pytest.mark.parametrize("levels", [2, 5])
@pytest.mark.parametrize("regime", ["moderate", "extreme"])
def test_rgb_mixture_sums_to_one_over_all_colours(levels, regime):
    """sum over all levels^3 (r, g, b) of p(r, g, b) = 1 at every pixel: the coupling makes
    G and B conditionals, which must each be normalized for every earlier channel value."""
    rng = np.random.default_rng(levels)
    H, W, K = 2, 3, 3
    spread, low, high = (0.6, -5, 0.5) if regime == "moderate" else (3.0, -40, 30)
    params = {
        "logit_weights": rng.normal(0, 2, (1, H, W, K)),
        "means": rng.normal(0, spread, (1, 3, H, W, K)),
        "log_scales": rng.uniform(low, high, (1, 3, H, W, K)),
        "coeffs": rng.normal(0, 2, (1, 3, H, W, K)),
    }
    colours = np.stack(np.meshgrid(*[np.arange(levels)] * 3, indexing="ij"), 0).reshape(3, -1).T  # (L^3, 3)
    n = len(colours)
    x = np.broadcast_to(colours[:, :, None, None], (n, 3, H, W))
    batch = {k: np.broadcast_to(v, (n,) + v.shape[1:]) for k, v in params.items()}
    log_p = ref.rgb_mixture_log_prob(x, batch, levels)  # (n, H, W)
    assert _normalization_error(log_p) <= _bound(n) + ref.MIXTURE_LOG_PROB_ATOL * n


# ----------------------------------------------------------------------------- exact invariances


@given(LEVELS, st.integers(0, 2**32 - 1), hnp.arrays(np.float64, (5,), elements=means),
       hnp.arrays(np.float64, (5,), elements=log_scales))  # fmt: skip
def test_reflection_is_exact(levels, seed, mean, log_scale):
    """P(x | m, s) = P(levels-1-x | -m, s), bit for bit: the edges of the reflected bin are the
    negated edges, the exact offsets negate exactly, and the three log terms only swap."""
    x = np.random.default_rng(seed).integers(0, levels, 5)
    a = ref.discretized_logistic_log_prob(x, mean, log_scale, levels)
    b = ref.discretized_logistic_log_prob(levels - 1 - x, -mean, log_scale, levels)
    assert np.array_equal(a, b)
    t = lambda v: torch.as_tensor(v)  # noqa: E731
    fa = fast.discretized_logistic_log_prob(t(x), t(mean), t(log_scale), levels)
    fb = fast.discretized_logistic_log_prob(t(levels - 1 - x), t(-mean), t(log_scale), levels)
    assert torch.equal(fa, fb)


@given(LEVELS, st.integers(0, 2**32 - 1))
def test_one_component_mixture_is_the_logistic(levels, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, levels, 7)
    m, ls, w = rng.normal(0, 2, (7, 1)), rng.uniform(-30, 10, (7, 1)), rng.normal(0, 5, (7, 1))
    mix = ref.discretized_logistic_mixture_log_prob(x, w, m, ls, levels)
    assert np.array_equal(mix, ref.discretized_logistic_log_prob(x, m[:, 0], ls[:, 0], levels))


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(B, H, W, K, seed):
    rng = np.random.default_rng(seed)
    output = rng.normal(0, 4, (B, H, W, 10 * K))
    params = ref.unpack_pixelcnn_output(output, min_log_scale=None)
    assert np.array_equal(ref.pack_pixelcnn_output(params), output)
    floored = ref.unpack_pixelcnn_output(output)
    assert np.array_equal(floored["log_scales"], np.maximum(params["log_scales"], ref.LOG_SCALE_FLOOR))
    for k in ("logit_weights", "means", "coeffs"):
        assert np.array_equal(floored[k], params[k])
    # the documented channel of one parameter: colour c, component k -> K + 3K c + {0, K, 2K} + k
    c, k = int(rng.integers(0, 3)), int(rng.integers(0, K))
    assert params["means"][0, c, 0, 0, k] == output[0, 0, 0, K + 3 * K * c + k]
    assert params["log_scales"][0, c, 0, 0, k] == output[0, 0, 0, K + 3 * K * c + K + k]
    assert params["coeffs"][0, c, 0, 0, k] == output[0, 0, 0, K + 3 * K * c + 2 * K + k]


def _rgb_params(rng, B=2, H=2, W=3, K=3):
    return {
        "logit_weights": rng.normal(0, 1, (B, H, W, K)),
        "means": rng.normal(0, 0.5, (B, 3, H, W, K)),
        "log_scales": rng.uniform(-4, 0, (B, 3, H, W, K)),
        "coeffs": rng.normal(0, 1, (B, 3, H, W, K)),
    }


def test_purity():
    rng = np.random.default_rng(0)
    params = _rgb_params(rng)
    x = rng.integers(0, 256, (2, 3, 2, 3))
    assert_pure(ref.rgb_mixture_log_prob, x, params)
    assert_pure(ref.rgb_mixture_sample, params, rng.random((2, 2, 3)), rng.random((2, 3, 2, 3)))
    assert_pure(ref.pack_pixelcnn_output, params)
    assert_pure(ref.unpack_pixelcnn_output, ref.pack_pixelcnn_output(params))
    m, ls, w = params["means"][:, 0], params["log_scales"][:, 0], params["logit_weights"]
    assert_pure(ref.discretized_logistic_mixture_log_prob, x[:, 0], w, m, ls)
    assert_pure(ref.discretized_logistic_mixture_sample, w, m, ls, rng.random((2, 2, 3)), rng.random((2, 2, 3)))
    tp = {k: torch.as_tensor(v) for k, v in params.items()}
    assert_pure(fast.rgb_mixture_log_prob, torch.as_tensor(x), tp)
    assert_pure(fast.rgb_mixture_sample, tp, torch.as_tensor(rng.random((2, 2, 3))), torch.as_tensor(rng.random((2, 3, 2, 3))))


# ----------------------------------------------------------------------------- samplers: goodness of fit

N_DRAWS = 20_000


def _draw_logistic(module, levels, n, rng):
    mean, log_scale = np.full(n, 0.21), np.full(n, -2.3)
    u = rng.random(n)
    if module is fast:
        return fast.discretized_logistic_sample(torch.as_tensor(mean), torch.as_tensor(log_scale), torch.as_tensor(u), levels)
    return ref.discretized_logistic_sample(mean, log_scale, u, levels)


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_logistic_sampler_goodness_of_fit(module, levels):
    rng = np.random.default_rng(levels)
    probs = np.exp(ref.discretized_logistic_log_prob(np.arange(levels), np.array(0.21), np.array(-2.3), levels))
    fit = sampler_goodness_of_fit(lambda n: _draw_logistic(module, levels, n, rng), probs, N_DRAWS)
    assert fit.passed, str(fit)


MIX = {"logit_weights": np.array([0.3, -1.0, 1.2]), "means": np.array([-0.5, 0.1, 0.55]),
       "log_scales": np.array([-2.0, -3.5, -1.6])}  # fmt: skip


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_mixture_sampler_goodness_of_fit(module):
    levels = 17
    probs = np.exp(ref.discretized_logistic_mixture_log_prob(np.arange(levels), *[np.broadcast_to(MIX[k], (levels, 3))
                                                             for k in ("logit_weights", "means", "log_scales")], levels))  # fmt: skip
    rng = np.random.default_rng(1)

    def draw(n):
        args = [np.broadcast_to(MIX[k], (n, 3)) for k in ("logit_weights", "means", "log_scales")] + [rng.random(n), rng.random(n)]
        if module is fast:
            args = [torch.as_tensor(np.ascontiguousarray(a)) for a in args]
        return module.discretized_logistic_mixture_sample(*args, levels)

    fit = sampler_goodness_of_fit(draw, probs, N_DRAWS)
    assert fit.passed, str(fit)


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_categorical_sampler_goodness_of_fit(module):
    logits = np.random.default_rng(2).normal(0, 1.5, 17)
    rng = np.random.default_rng(3)

    def draw(n):
        L, u = np.broadcast_to(logits, (n, 17)), rng.random(n)
        if module is fast:
            return fast.categorical_sample(torch.as_tensor(np.ascontiguousarray(L)), torch.as_tensor(u))
        return ref.categorical_sample(L, u)

    fit = sampler_goodness_of_fit(draw, ref.nn.softmax(logits), N_DRAWS)
    assert fit.passed, str(fit)


def _one_pixel_rgb(levels):
    rng = np.random.default_rng(4)
    return {
        "logit_weights": rng.normal(0, 1, (1, 1, 1, 2)),
        "means": rng.normal(0, 0.4, (1, 3, 1, 1, 2)),
        "log_scales": rng.uniform(-1.5, -0.5, (1, 3, 1, 1, 2)),
        "coeffs": np.array([2.0, -1.5, 1.0]).reshape(1, 3, 1, 1, 1) * np.ones((1, 3, 1, 1, 2)),  # strong coupling
    }


def _rgb_colour_probs(params, levels):
    """p of every colour r * L^2 + g * L + b of one pixel, by rgb_mixture_log_prob."""
    colours = np.stack(np.meshgrid(*[np.arange(levels)] * 3, indexing="ij"), 0).reshape(3, -1).T
    n = len(colours)
    batch = {k: np.broadcast_to(v, (n,) + v.shape[1:]) for k, v in params.items()}
    return np.exp(ref.rgb_mixture_log_prob(colours[:, :, None, None], batch, levels)[:, 0, 0])


def _rgb_draws(module, params, levels, rng, n):
    batch = {k: np.ascontiguousarray(np.broadcast_to(v, (n,) + v.shape[1:])) for k, v in params.items()}
    uc, uv = rng.random((n, 1, 1)), rng.random((n, 3, 1, 1))
    if module is fast:
        x = fast.rgb_mixture_sample({k: torch.as_tensor(v) for k, v in batch.items()}, torch.as_tensor(uc),
                                    torch.as_tensor(uv), levels).numpy()  # fmt: skip
    else:
        x = ref.rgb_mixture_sample(batch, uc, uv, levels)
    x = x[:, :, 0, 0]
    return x[:, 0] * levels**2 + x[:, 1] * levels + x[:, 2]


@pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])
def test_rgb_sampler_goodness_of_fit(module):
    """The coupled sampler (R, then G given R, then B given R and G, one shared component)
    draws colours with exactly the probabilities rgb_mixture_log_prob assigns."""
    levels = 5
    params = _one_pixel_rgb(levels)
    rng = np.random.default_rng(5)
    fit = sampler_goodness_of_fit(lambda n: _rgb_draws(module, params, levels, rng, n),
                                  _rgb_colour_probs(params, levels), N_DRAWS)  # fmt: skip
    assert fit.passed, str(fit)


def test_rgb_goodness_of_fit_catches_a_wrong_coupling():
    """The test above can fail: a sampler that couples G and B with the signs of c flipped
    (an easy bug) draws from another distribution, and the goodness of fit sees it."""
    levels = 5
    params = _one_pixel_rgb(levels)
    wrong = dict(params, coeffs=-params["coeffs"])
    rng = np.random.default_rng(6)
    fit = sampler_goodness_of_fit(lambda n: _rgb_draws(ref, wrong, levels, rng, n),
                                  _rgb_colour_probs(params, levels), N_DRAWS)  # fmt: skip
    assert not fit.passed, str(fit)
