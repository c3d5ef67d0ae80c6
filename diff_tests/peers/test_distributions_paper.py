"""reference.distributions.rgb_mixture_log_prob against two independent transcriptions.

1. The PixelCNN++ paper (Salimans et al. 2017), written as the paper writes it: in pixel
   units x in {0, ..., 255} with bins [x - 0.5, x + 0.5], the edge bins open (eq. 2),

       P(x | pi, mu, s) = sum_i pi_i [ sigma((x + 0.5 - mu_i)/s_i) - sigma((x - 0.5 - mu_i)/s_i) ],

   and the channels coupled linearly within one mixture component (eq. 3),

       p(r, g, b) = sum_i pi_i P(r | mu_r,i, s_r,i) P(g | mu_g,i + alpha_i r, s_g,i)
                               P(b | mu_b,i + beta_i r + gamma_i g, s_b,i),

   evaluated with plain Python floats, pixel by pixel, component by component, as a
   probability (not in log space). chainrule's [-1, 1] parameters map to pixel units by
   mu_pix = (m + 1)(levels - 1)/2, s_pix = s (levels - 1)/2, and its coupling
   mu_G = m_G + tanh(c0) c(x_R) with c(x) = 2x/(levels - 1) - 1 becomes
   alpha = tanh(c0) on r in pixels, with base mean (m_G - tanh(c0) + 1)(levels - 1)/2.

2. openai/pixel-cnn's loss on its own (B, H, W, 10K) output layout, transcribed in NumPy:
   the layout `unpack_pixelcnn_output` reads (with its log-scale floor of -7), data scaled
   to [-1, 1], the sigmoid difference where it exceeds 1e-5 and a density approximation
   elsewhere. Where every component takes the exact branch, it must agree with
   `rgb_mixture_log_prob(x, unpack_pixelcnn_output(output))` under the float64 tolerance:
   the check a user of that layout runs on their own loss.

Moderate regime: x drawn from the mixture itself (`rgb_mixture_sample`), log-scales in
[-4, -0.5], so the probabilities are well away from underflow and the direct
probability-space formulas are accurate to ~1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chainrule.reference import distributions as ref
from chainrule.reference.checks import assert_close


def moderate_case(levels, B=2, H=3, W=5, K=3, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "logit_weights": rng.normal(0, 1, (B, H, W, K)),
        "means": rng.normal(0, 0.5, (B, 3, H, W, K)),
        "log_scales": rng.uniform(-4, -0.5, (B, 3, H, W, K)),
        "coeffs": rng.normal(0, 1, (B, 3, H, W, K)),
    }
    x = ref.rgb_mixture_sample(params, rng.random((B, H, W)), rng.random((B, 3, H, W)), levels)
    x[0, :, 0, 0], x[0, :, 0, 1] = 0, levels - 1  # the edge bins
    return x, params


# ----------------------------------------------------------------------------- 1. the paper's formula


def _sigma(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def paper_channel_probability(x: int, mu: float, s: float, top: int) -> float:
    """Eq. 2 for one component, pixel units: the bin [x - 0.5, x + 0.5], open at 0 and at `top`."""
    upper = 1.0 if x == top else _sigma((x + 0.5 - mu) / s)
    lower = 0.0 if x == 0 else _sigma((x - 0.5 - mu) / s)
    return upper - lower


def paper_log_prob(x, params, levels):
    """Eq. 3 pixel by pixel, in pixel units, as a probability. x: (B, 3, H, W) -> (B, H, W)."""
    half = (levels - 1) / 2
    B, _, H, W = x.shape
    K = params["means"].shape[-1]
    out = np.empty((B, H, W))
    for b in range(B):
        for i in range(H):
            for j in range(W):
                w = params["logit_weights"][b, i, j]
                pi = np.exp(w - w.max()) / np.exp(w - w.max()).sum()
                r, g, bl = (int(v) for v in x[b, :, i, j])
                total = 0.0
                for k in range(K):
                    m = params["means"][b, :, i, j, k]
                    s = np.exp(params["log_scales"][b, :, i, j, k]) * half  # scales in pixel units
                    alpha, beta, gamma = np.tanh(params["coeffs"][b, :, i, j, k])
                    mu_r = (m[0] + 1) * half
                    mu_g = (m[1] - alpha + 1) * half + alpha * r  # mu_g + alpha r in pixels
                    mu_b = (m[2] - beta - gamma + 1) * half + beta * r + gamma * g
                    total += pi[k] * (paper_channel_probability(r, mu_r, s[0], levels - 1)
                                      * paper_channel_probability(g, mu_g, s[1], levels - 1)
                                      * paper_channel_probability(bl, mu_b, s[2], levels - 1))  # fmt: skip
                out[b, i, j] = math.log(total)
    return out


@pytest.mark.parametrize("levels", (256, 17, 2))
def test_rgb_mixture_equals_the_paper_formula(levels):
    x, params = moderate_case(levels, seed=levels)
    truth = paper_log_prob(x, params, levels)
    got = ref.rgb_mixture_log_prob(x, params, levels)
    print(assert_close(f"RGB mixture log_prob vs the paper's formula (levels {levels})", truth, got, "float64"))


def test_the_paper_formula_sees_the_coupling():
    """The comparison above is not blind to the coupling: zeroing it changes both sides alike
    and moves the log-probabilities well beyond the tolerance."""
    _, params = moderate_case(256)
    uncoupled = dict(params, coeffs=np.zeros_like(params["coeffs"]))
    rng = np.random.default_rng(1)
    x = ref.rgb_mixture_sample(uncoupled, rng.random((2, 3, 5)), rng.random((2, 3, 3, 5)))  # likely pixels
    a, b = ref.rgb_mixture_log_prob(x, params), ref.rgb_mixture_log_prob(x, uncoupled)
    assert np.abs(a - b).max() > 0.1
    assert_close("uncoupled vs the paper's formula", paper_log_prob(x, uncoupled, 256), b, "float64")


# ----------------------------------------------------------------------------- 2. openai/pixel-cnn's loss on its layout


def _softplus(z):
    return np.logaddexp(0.0, z)


def openai_layout_log_prob(x_scaled, output):
    """openai/pixel-cnn's per-pixel log-likelihood, in NumPy.

    x_scaled: (B, H, W, 3) data in [-1, 1] (channels last); output: (B, H, W, 10K).
    Returns (log p (B, H, W), exact (B, H, W) bool: every component and channel took the
    sigmoid-difference or edge branch, never the density approximation)."""
    B, H, W, C = output.shape
    K = C // 10
    logit_probs = output[..., :K]  # (B, H, W, K)
    rest = output[..., K:].reshape(B, H, W, 3, 3 * K)  # (B, H, W, 3, 3K)
    means = rest[..., :K]
    log_scales = np.maximum(rest[..., K : 2 * K], -7.0)
    coeffs = np.tanh(rest[..., 2 * K :])
    x = x_scaled[..., None]  # (B, H, W, 3, 1)
    m2 = means[..., 1, :] + coeffs[..., 0, :] * x[..., 0, :]
    m3 = means[..., 2, :] + coeffs[..., 1, :] * x[..., 0, :] + coeffs[..., 2, :] * x[..., 1, :]
    means = np.stack([means[..., 0, :], m2, m3], axis=3)  # (B, H, W, 3, K)
    centered = x - means
    inv_stdv = np.exp(-log_scales)
    plus_in = inv_stdv * (centered + 1.0 / 255.0)
    min_in = inv_stdv * (centered - 1.0 / 255.0)
    with np.errstate(over="ignore"):  # exp(-z) = inf for z << 0: the sigmoid is then 0, correctly
        cdf_plus = 1 / (1 + np.exp(-plus_in))
        cdf_min = 1 / (1 + np.exp(-min_in))
    log_cdf_plus = plus_in - _softplus(plus_in)  # the bottom bin
    log_one_minus_cdf_min = -_softplus(min_in)  # the top bin
    cdf_delta = cdf_plus - cdf_min
    mid_in = inv_stdv * centered
    log_pdf_mid = mid_in - log_scales - 2.0 * _softplus(mid_in)
    with np.errstate(divide="ignore"):
        middle = np.where(cdf_delta > 1e-5, np.log(np.maximum(cdf_delta, 1e-12)), log_pdf_mid - np.log(127.5))
    bottom, top = x < -0.999, x > 0.999
    log_probs = np.where(bottom, log_cdf_plus, np.where(top, log_one_minus_cdf_min, middle))
    exact = np.all(bottom | top | (cdf_delta > 1e-5), axis=(3, 4))  # (B, H, W)
    log_probs = log_probs.sum(axis=3) + (logit_probs - logit_probs.max(-1, keepdims=True)
                                         - np.log(np.exp(logit_probs - logit_probs.max(-1, keepdims=True))
                                                  .sum(-1, keepdims=True)))  # fmt: skip
    top_k = log_probs.max(-1)
    return top_k + np.log(np.exp(log_probs - top_k[..., None]).sum(-1)), exact


def test_openai_layout_and_loss_agree_where_exact():
    """A random openai-layout output and 8-bit image: our log-probabilities of the unpacked
    (floored) parameters equal openai/pixel-cnn's loss pixel by pixel wherever its code takes
    the exact branch (which must be most pixels, or the check proves little)."""
    rng = np.random.default_rng(11)
    B, H, W, K = 2, 3, 5, 4
    _, params = moderate_case(256, B, H, W, K, seed=11)
    params["means"] *= 0.5  # components close together and broad enough that openai's code
    params["log_scales"] = rng.uniform(-1.5, -0.3, params["log_scales"].shape)  # mostly takes its exact branch
    params["log_scales"][0, 1, 0, 2, 1] = -9.0  # below openai's floor: unpack must clamp it to -7
    output = ref.pack_pixelcnn_output(params)
    unpacked = ref.unpack_pixelcnn_output(output)
    x = ref.rgb_mixture_sample(unpacked, rng.random((B, H, W)), rng.random((B, 3, H, W)))
    x_scaled = np.transpose(x, (0, 2, 3, 1)) / 127.5 - 1.0  # (B, H, W, 3), openai's scaling
    theirs, exact = openai_layout_log_prob(x_scaled, output)
    ours = ref.rgb_mixture_log_prob(x, unpacked)
    assert exact.mean() >= 0.5, f"only {exact.mean():.0%} of the pixels take openai's exact branch"
    print(assert_close("RGB log_prob vs openai/pixel-cnn's loss (exact-branch pixels)", theirs[exact], ours[exact],
                       "float64"))  # fmt: skip
    assert unpacked["log_scales"][0, 1, 0, 2, 1] == -7.0
    raw = ref.unpack_pixelcnn_output(output, min_log_scale=None)
    assert raw["log_scales"][0, 1, 0, 2, 1] == -9.0
    assert np.array_equal(unpacked["log_scales"] != raw["log_scales"], raw["log_scales"] < -7.0)
