"""reference.distributions and fast.distributions: hand-computed cases and bad input.

Hand cases are values one can check on paper: sigma(0) = 1/2, a three-level bin of
width 1 at scale 1 has mass sigma(1/2) - sigma(-1/2) = tanh(1/4), the inverse CDF
boundaries of the logistic, the openai/pixel-cnn channel layout for K = 1. Bad input
raises ValueError naming the argument, on both sides.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chainrule.fast import distributions as fast
from chainrule.reference import distributions as ref

MODULES = pytest.mark.parametrize("module", [ref, fast], ids=["reference", "fast"])


def _args(module, *arrays):
    """The arrays as NumPy (reference) or torch tensors (fast)."""
    if module is fast:
        return [torch.as_tensor(np.asarray(a)) if isinstance(a, np.ndarray) else a for a in arrays]
    return list(arrays)


def _np(a):
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _params(module, params):
    return {k: torch.as_tensor(v) for k, v in params.items()} if module is fast else params


# ----------------------------------------------------------------------------- hand cases


@MODULES
def test_hand_values(module):
    def lp(x, m, ls, levels):
        args = _args(module, np.array(x), np.array(m), np.array(ls))
        return float(_np(module.discretized_logistic_log_prob(*args, levels)))

    # two levels, mean on the single inner edge 0: each level has mass sigma(0) = 1/2, any scale
    for ls in (-30.0, 0.0, 25.0):
        assert lp(0, 0.0, ls, 2) == pytest.approx(-math.log(2), rel=1e-15)
        assert lp(1, 0.0, ls, 2) == pytest.approx(-math.log(2), rel=1e-15)
    # three levels: centres -1, 0, 1, the middle bin [-1/2, 1/2]; scale 1: sigma(1/2) - sigma(-1/2) = tanh(1/4)
    assert lp(1, 0.0, 0.0, 3) == pytest.approx(math.log(math.tanh(0.25)), rel=1e-15)
    assert lp(0, 0.0, 0.0, 3) == pytest.approx(-math.log1p(math.exp(0.5)), rel=1e-15)  # sigma(-1/2)
    # the top bin of 256 levels, mean at its centre 1: 1 - sigma(-(1/255)/s) = sigma(1/(255 s))
    s = math.exp(-4.0)
    assert lp(255, 1.0, -4.0, 256) == pytest.approx(-math.log1p(math.exp(-1 / (255 * s))), rel=1e-15)
    # far in the tail, where P = e^-1000 underflows float64: the top bin of 3 levels is [1/2, inf);
    # with mean -999.5 and s = 1, b = 1/2 + 999.5 = 1000 and log P = log sigma(-1000) = -1000 - log1p(e^-1000)
    got = lp(2, -999.5, 0.0, 3)
    assert got == pytest.approx(-1000 - math.log1p(math.exp(-1000)), rel=1e-15)
    # and an interior bin: level 1 of 3 ([-1/2, 1/2]) with mean 1000.5, s = 1: a = -1000, b = -1001,
    # log P = log sigma(-1000) + log sigma(1001) + log(1 - e^-1) = -1000 + log(1 - 1/e) to double precision
    assert lp(1, 1000.5, 0.0, 3) == pytest.approx(-1000 + math.log(1 - math.exp(-1)), rel=1e-15)


@MODULES
def test_mixture_and_categorical_hand_values(module):
    x = np.array([1])
    # two equal components = one component
    m, ls = np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]])
    w = np.array([[0.3, 0.3]])
    got = float(_np(module.discretized_logistic_mixture_log_prob(*_args(module, x, w, m, ls), 3)[0]))
    assert got == pytest.approx(math.log(math.tanh(0.25)), rel=1e-15)
    # weights 1/4, 3/4 on bins of mass tanh(1/4) (mean 0) and sigma(-1/2)... at level 1 with means 0 and 1:
    m2, w2 = np.array([[0.0, 1.0]]), np.array([[0.0, math.log(3)]])
    p1 = math.tanh(0.25)
    p2 = 1 / (1 + math.exp(-(0.5 - 1))) - 1 / (1 + math.exp(-(-0.5 - 1)))
    got = float(_np(module.discretized_logistic_mixture_log_prob(*_args(module, x, w2, m2, ls), 3)[0]))
    assert got == pytest.approx(math.log(0.25 * p1 + 0.75 * p2), rel=1e-14)
    # categorical: logits [0, log 3] -> p(1) = 3/4
    got = float(_np(module.categorical_log_prob(*_args(module, np.array([1]), np.array([[0.0, math.log(3)]])))[0]))
    assert got == pytest.approx(math.log(0.75), rel=1e-15)


@MODULES
def test_logistic_sampler_boundaries(module):
    """Three levels, mean 0, scale 1: edges at -1/2 and 1/2, CDF there sigma(-1/2) = 0.3775, sigma(1/2) = 0.6225."""
    u = np.array([0.0, 0.37, 0.38, 0.5, 0.62, 0.63, 1 - 1e-16])
    m, ls = np.zeros(7), np.zeros(7)
    got = _np(module.discretized_logistic_sample(*_args(module, m, ls, u), 3))
    assert got.tolist() == [0, 0, 1, 1, 1, 2, 2]
    assert got.dtype == np.int64


@MODULES
def test_rgb_hand_case(module):
    """K = 1: log p(r, g, b) = log P(r | m_R) + log P(g | m_G + tanh(c0) c(r)) + log P(b | m_B + tanh(c1) c(r) + tanh(c2) c(g))."""
    levels = 17
    m, ls, c = np.array([0.1, -0.2, 0.3]), np.array([-1.0, -2.0, -1.5]), np.array([0.7, -0.4, 1.3])
    params = {"logit_weights": np.zeros((1, 1, 1, 1)), "means": m.reshape(1, 3, 1, 1, 1),
              "log_scales": ls.reshape(1, 3, 1, 1, 1), "coeffs": c.reshape(1, 3, 1, 1, 1)}  # fmt: skip
    x = np.array([3, 9, 16]).reshape(1, 3, 1, 1)
    cr, cg = 2 * 3 / 16 - 1, 2 * 9 / 16 - 1
    mus = [m[0], m[1] + math.tanh(c[0]) * cr, m[2] + math.tanh(c[1]) * cr + math.tanh(c[2]) * cg]
    expected = sum(float(ref.discretized_logistic_log_prob(np.array(v), np.array(mu), np.array(s), levels))
                   for v, mu, s in zip((3, 9, 16), mus, ls))  # fmt: skip
    got = float(_np(module.rgb_mixture_log_prob(*_args(module, x), _params(module, params), levels)).reshape(()))
    assert got == pytest.approx(expected, rel=1e-14)
    # sampling at the uniforms that invert to exactly these levels' centres gives them back
    u = np.array([1 / (1 + math.exp(-(ctr - mu) / math.exp(s))) for ctr, mu, s in
                  zip((cr, cg, 2 * 16 / 16 - 1 - 1 / 32), mus, ls)]).reshape(1, 3, 1, 1)  # fmt: skip
    drawn = module.rgb_mixture_sample(_params(module, params), *_args(module, np.zeros((1, 1, 1)), u), levels=levels)
    assert _np(drawn).reshape(3).tolist() == [3, 9, 16]


def test_openai_layout_for_one_component():
    """K = 1: channels [w, m_R, ls_R, c0, m_G, ls_G, c1, m_B, ls_B, c2] (colour c: 1 + 3c + {0, 1, 2})."""
    output = np.arange(10, dtype=np.float64).reshape(1, 1, 1, 10) - 9.0  # -9 .. 0
    p = ref.unpack_pixelcnn_output(output, min_log_scale=None)
    assert p["logit_weights"].reshape(()) == -9.0
    assert p["means"].reshape(3).tolist() == [-8.0, -5.0, -2.0]
    assert p["log_scales"].reshape(3).tolist() == [-7.0, -4.0, -1.0]
    assert p["coeffs"].reshape(3).tolist() == [-6.0, -3.0, 0.0]
    floored = ref.unpack_pixelcnn_output(output - 5.0)
    assert floored["log_scales"].reshape(3).tolist() == [-7.0, -7.0, -6.0]  # max(., -7)
    assert ref.LOG_SCALE_FLOOR == -7.0
    t = fast.unpack_pixelcnn_output(torch.as_tensor(output), min_log_scale=None)
    assert all(np.array_equal(t[k].numpy(), p[k]) for k in p)


# ----------------------------------------------------------------------------- bad input


def _logistic_call(module, x, mean, log_scale, levels=256):
    return module.discretized_logistic_log_prob(*_args(module, x, mean, log_scale), levels)


@MODULES
@pytest.mark.parametrize(
    "x, mean, log_scale, levels, match",
    [
        (np.array([256]), np.zeros(1), np.zeros(1), 256, r"x: expected levels in \[0, 256\), got 256"),
        (np.array([-1]), np.zeros(1), np.zeros(1), 256, r"x: expected levels in \[0, 256\), got -1"),
        (np.array([2]), np.zeros(1), np.zeros(1), 2, r"x: expected levels in \[0, 2\), got 2"),
        (np.array([0.5]), np.zeros(1), np.zeros(1), 256, r"x: expected an integer array"),
        (np.array([1]), np.zeros(1), np.array([np.nan]), 256, r"log_scale: expected finite values, got NaN"),
        (np.array([1]), np.array([np.nan]), np.zeros(1), 256, r"mean: expected finite values, got NaN"),
        (np.array([1]), np.array([np.inf]), np.zeros(1), 256, r"mean: expected finite values, got an infinity"),
        (np.array([1]), np.zeros(1), np.zeros(1), 1, r"levels: expected an int >= 2, got 1"),
        (np.array([1]), np.zeros(1), np.zeros(1), 2.5, r"levels: expected an int >= 2, got 2.5"),
        (np.array([1]), np.zeros(1), np.zeros(1), True, r"levels: expected an int >= 2, got True"),
        (np.array([1, 2]), np.zeros(3), np.zeros(1), 256, r"expected shapes that broadcast together"),
        (np.array([1]), np.zeros(1, dtype=np.int64), np.zeros(1), 256, r"mean: expected a floating array"),
    ],
)
def test_bad_logistic_input(module, x, mean, log_scale, levels, match):
    with pytest.raises(ValueError, match=match):
        _logistic_call(module, x, mean, log_scale, levels)


@MODULES
def test_bad_mixture_input(module):
    x, m, ls, w = np.array([1, 2]), np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"logit_weights: expected 3 components on the last axis"):
        module.discretized_logistic_mixture_log_prob(*_args(module, x, np.zeros((2, 4)), m, ls), 17)
    with pytest.raises(ValueError, match=r"log_scales: expected finite values, got NaN"):
        module.discretized_logistic_mixture_log_prob(*_args(module, x, w, m, np.full((2, 3), np.nan)), 17)
    with pytest.raises(ValueError, match=r"logit_weights: contains NaN"):
        module.discretized_logistic_mixture_log_prob(*_args(module, x, np.full((2, 3), np.nan), m, ls), 17)
    with pytest.raises(ValueError, match=r"x: expected levels in \[0, 17\), got 17"):
        module.discretized_logistic_mixture_log_prob(*_args(module, np.array([1, 17]), w, m, ls), 17)
    with pytest.raises(ValueError, match=r"u_value: expected shape \(2,\), got \(3,\)"):
        module.discretized_logistic_mixture_sample(*_args(module, w, m, ls, np.zeros(2), np.zeros(3)), 17)
    with pytest.raises(ValueError, match=r"u_value: expected uniforms in \[0, 1\), got 1.0"):
        module.discretized_logistic_mixture_sample(*_args(module, w, m, ls, np.zeros(2), np.ones(2)), 17)
    with pytest.raises(ValueError, match=r"u: expected uniforms in \[0, 1\), got -0.5"):
        module.discretized_logistic_sample(*_args(module, np.zeros(2), np.zeros(2), np.array([0.1, -0.5])), 17)


def _rgb(B=1, H=2, W=2, K=2):
    rng = np.random.default_rng(0)
    return {"logit_weights": rng.normal(size=(B, H, W, K)), "means": rng.normal(size=(B, 3, H, W, K)),
            "log_scales": rng.normal(size=(B, 3, H, W, K)), "coeffs": rng.normal(size=(B, 3, H, W, K))}  # fmt: skip


@MODULES
def test_bad_rgb_input(module):
    params = _rgb()
    P = _params(module, params)
    x = np.zeros((1, 3, 2, 2), dtype=np.int64)
    for channels in (1, 4):
        with pytest.raises(ValueError, match=rf"x: expected an RGB image batch \(B, 3, H, W\), got shape \(1, {channels}, 2, 2\)"):
            module.rgb_mixture_log_prob(*_args(module, np.zeros((1, channels, 2, 2), dtype=np.int64)), P)
    with pytest.raises(ValueError, match=r"x: expected levels in \[0, 256\), got 300"):
        module.rgb_mixture_log_prob(*_args(module, x + 300), P)
    with pytest.raises(ValueError, match=r"x: expected shape \(1, 3, 2, 2\) \(as params\), got \(1, 3, 2, 3\)"):
        module.rgb_mixture_log_prob(*_args(module, np.zeros((1, 3, 2, 3), dtype=np.int64)), P)
    bad = dict(params, log_scales=np.where(np.arange(2) == 1, np.nan, params["log_scales"]))
    with pytest.raises(ValueError, match=r"params\['log_scales'\]: expected finite values, got NaN"):
        module.rgb_mixture_log_prob(*_args(module, x), _params(module, bad))
    with pytest.raises(ValueError, match=r"params: expected keys .* missing \['coeffs'\]"):
        module.rgb_mixture_log_prob(*_args(module, x), {k: v for k, v in P.items() if k != "coeffs"})
    with pytest.raises(ValueError, match=r"params\['means'\]: expected shape \(1, 3, 2, 2, 2\)"):
        module.rgb_mixture_log_prob(*_args(module, x), dict(P, means=P["means"][:, :2]))
    with pytest.raises(ValueError, match=r"u_value: expected shape \(1, 3, 2, 2\)"):
        module.rgb_mixture_sample(P, *_args(module, np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 2))))
    with pytest.raises(ValueError, match=r"u_component: expected shape \(1, 2, 2\)"):
        module.rgb_mixture_sample(P, *_args(module, np.zeros((1, 2, 3)), np.zeros((1, 3, 2, 2))))
    with pytest.raises(ValueError, match=r"output: expected shape \(B, H, W, 10 K\) with K >= 1, got \(1, 2, 2, 15\)"):
        module.unpack_pixelcnn_output(*_args(module, np.zeros((1, 2, 2, 15))))


@MODULES
def test_bad_categorical_input(module):
    with pytest.raises(ValueError, match=r"x: expected levels in \[0, 3\), got 3"):
        module.categorical_log_prob(*_args(module, np.array([3]), np.zeros((1, 3))))
    with pytest.raises(ValueError, match=r"x: expected shape \(2,\) \(logits without the last axis\), got \(1,\)"):
        module.categorical_log_prob(*_args(module, np.array([0]), np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"logits: contains NaN"):
        module.categorical_log_prob(*_args(module, np.array([0]), np.full((1, 3), np.nan)))
