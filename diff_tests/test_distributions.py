"""reference.distributions (float64 NumPy, the truth) against every backend of fast.distributions.

The same float64 parameters on every backend, in five regimes of the discretized
logistic -- moderate, tiny scales, means next to a bin edge with tiny scales, far
means, huge scales -- and levels 2, 17 and 256, with the edge pixels 0 and levels-1
always present. Compared: log-probabilities (one logistic, the mixture, PixelCNN++'s
RGB coupling, the categorical), the openai/pixel-cnn layout (pack/unpack, exact),
gradients (autograd vs finite differences of the reference), and samples drawn from
shared uniforms.

Low precision: log-probabilities are judged against the float64 truth relative to the
reference itself run in float32 NumPy (`naive_float32`) on the parameters the side holds
(rounded to float32, or to bfloat16 -- which fast.distributions computes with in float32,
`fast.distributions.compute_dtype`, as NumPy has no bfloat16). Gradients: relative to a
naive torch evaluation of sigma(a) - sigma(b) in the same compute dtype.
Samples are judged like generated tokens (`reference.checks.compare_tokens`), against
the reference's draw from the parameters the side holds: float64 must equal it
everywhere; low precision wherever the reference's continuous draw is clear of a bin
edge (and its component clear of a CDF boundary) by JUDGE_FACTOR times the measured
error of the fast side's draw, and at least MIN_JUDGED of them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from diff_tests.conftest import check
from chainrule.fast import distributions as fast_dist
from chainrule.reference import distributions as ref_dist
from chainrule.reference.checks import (
    FD_ACCURACY,
    JUDGE_FACTOR,
    MIN_JUDGED,
    MIN_JUDGED_COUNT,
    finite_difference_grad,
    naive_float32,
)

LEVELS = (2, 17, 256)
REGIMES = ("moderate", "tiny-scale", "near-edge", "far-mean", "huge-scale")
SHAPE = (3, 5)  # the batch shape of x
SAMPLE_SHAPE = (7, 13)  # the batch shape of the samplers' draws: enough for the MIN_JUDGED rule
K = 3  # mixture components


def _draw(regime: str, levels: int, shape, rng):
    """(means, log_scales) float64 of `shape` for a regime; the bins of x are not involved."""
    if regime == "moderate":
        return rng.normal(0, 0.6, shape), rng.uniform(-7, 0.5, shape)
    if regime == "tiny-scale":
        return rng.uniform(-1.2, 1.2, shape), rng.uniform(-60, -15, shape)
    if regime == "near-edge":  # on or within a few ulps..1e-9 of a bin edge (2j - levels)/(levels - 1)
        j = rng.integers(0, levels + 1, shape)
        edge = (2 * j - levels) / (levels - 1)
        off = rng.choice([0.0, 1e-15, -3e-13, 1e-9], shape)
        return edge + off, rng.uniform(-30, -18, shape)
    if regime == "far-mean":
        return rng.choice([-1, 1], shape) * rng.uniform(5, 60, shape), rng.uniform(-12, -3, shape)
    if regime == "huge-scale":
        return rng.uniform(-3, 3, shape), rng.uniform(5, 40, shape)
    raise ValueError(regime)


def _pixels(levels, shape, rng):
    x = rng.integers(0, levels, shape)
    x.flat[0], x.flat[1] = 0, levels - 1  # the edge bins
    return x


def _seed(kind: int, regime: str, levels: int) -> int:
    return 10_000 * kind + 1_000 * REGIMES.index(regime) + levels


@functools.lru_cache(maxsize=None)
def logistic_case(regime: str, levels: int, shape=SHAPE):
    rng = np.random.default_rng(_seed(0, regime, levels) + len(shape) * shape[-1])
    mean, log_scale = _draw(regime, levels, shape, rng)
    return _pixels(levels, shape, rng), {"mean": mean, "log_scale": log_scale}


@functools.lru_cache(maxsize=None)
def mixture_case(regime: str, levels: int, shape=SHAPE):
    rng = np.random.default_rng(_seed(1, regime, levels) + len(shape) * shape[-1])
    means, log_scales = _draw(regime, levels, shape + (K,), rng)
    w = rng.normal(0, 2, shape + (K,))
    return _pixels(levels, shape, rng), {"logit_weights": w, "means": means, "log_scales": log_scales}


@functools.lru_cache(maxsize=None)
def rgb_case(regime: str, levels: int, B=2, H=3, W=5, Kc=4):
    rng = np.random.default_rng(_seed(2, regime, levels))
    means, log_scales = _draw(regime, levels, (B, 3, H, W, Kc), rng)
    params = {
        "logit_weights": rng.normal(0, 2, (B, H, W, Kc)),
        "means": means,
        "log_scales": log_scales,
        "coeffs": rng.normal(0, 1.5, (B, 3, H, W, Kc)),
    }
    x = rng.integers(0, levels, (B, 3, H, W))
    x[0, :, 0, 0], x[0, :, 0, 1] = 0, levels - 1
    return x, params


# ----------------------------------------------------------------------------- the two sides


def _impl(side):
    """The module under test: fast.distributions on torch, the reference itself on CuPy."""
    return ref_dist if side.is_cupy else fast_dist


def _on(side, params: dict) -> dict:
    return side.params(params)


def _held(side, P) -> dict:
    """The parameters the side holds, exactly, as float64 NumPy (rounded to its dtype)."""
    return {k: side.numpy(v) for k, v in P.items()}


def _naive(side, ref_fn, P):
    """The naive same-dtype baseline: None in float64; else the reference run in float32 NumPy
    on the side's own (rounded) parameters."""
    if not side.low_precision or side.is_cupy:
        return None
    return naive_float32(ref_fn, _held(side, P))


def _naive_torch_log_prob(x, mean, log_scale, levels):
    """The naive gradient baseline: log of a difference of sigmoids (the smaller tails on each
    side of the mean), in the dtype of mean. Finite in the moderate regime of the gradient test."""
    c = (2 * x.to(mean.dtype) - (levels - 1)) / (levels - 1)
    h = 1.0 / (levels - 1)
    inv = torch.exp(-log_scale)
    a, b = (c + h - mean) * inv, (c - h - mean) * inv
    interior = torch.where(b > 0, torch.sigmoid(-b) - torch.sigmoid(-a), torch.sigmoid(a) - torch.sigmoid(b))
    p = torch.where(x == 0, torch.sigmoid(a), torch.where(x == levels - 1, torch.sigmoid(-b), interior))
    return torch.log(p)


def _naive_torch_mixture(x, w, means, log_scales, levels):
    lp = _naive_torch_log_prob(x[..., None], means, log_scales, levels)
    return torch.logsumexp(torch.log_softmax(w, dim=-1) + lp, dim=-1)


def _naive_rgb(x, p, levels):
    xc = ((2 * x.to(p["means"].dtype) - (levels - 1)) / (levels - 1))[..., None]
    t = torch.tanh(p["coeffs"])
    mu = torch.stack([p["means"][:, 0], p["means"][:, 1] + t[:, 0] * xc[:, 0],
                      p["means"][:, 2] + t[:, 1] * xc[:, 0] + t[:, 2] * xc[:, 1]], dim=1)  # fmt: skip
    lp = _naive_torch_log_prob(x[..., None], mu, p["log_scales"], levels).sum(dim=1)
    return torch.logsumexp(torch.log_softmax(p["logit_weights"], dim=-1) + lp, dim=-1)


# ----------------------------------------------------------------------------- log-probabilities


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", REGIMES)
def test_logistic_log_prob(side, regime, levels):
    x, params = logistic_case(regime, levels)

    def ref(p):
        return ref_dist.discretized_logistic_log_prob(x, p["mean"], p["log_scale"], levels)

    truth = ref(params)
    assert np.all(np.isfinite(truth)), "the truth must be finite in every regime"
    P = _on(side, params)
    got = side.numpy(_impl(side).discretized_logistic_log_prob(side.array(x), P["mean"], P["log_scale"], levels))
    check(f"discretized logistic log_prob ({regime}, levels {levels})", truth, got, side, naive=_naive(side, ref, P))


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", REGIMES)
def test_mixture_log_prob(side, regime, levels):
    x, params = mixture_case(regime, levels)

    def ref(p):
        return ref_dist.discretized_logistic_mixture_log_prob(x, p["logit_weights"], p["means"], p["log_scales"], levels)

    P = _on(side, params)
    got = side.numpy(_impl(side).discretized_logistic_mixture_log_prob(
        side.array(x), P["logit_weights"], P["means"], P["log_scales"], levels))  # fmt: skip
    check(f"logistic mixture log_prob ({regime}, levels {levels})", ref(params), got, side, naive=_naive(side, ref, P))


@pytest.mark.parametrize("levels", (256, 5))
@pytest.mark.parametrize("regime", ("moderate", "tiny-scale", "far-mean"))
def test_rgb_mixture_log_prob(side, regime, levels):
    x, params = rgb_case(regime, levels)

    def ref(p):
        return ref_dist.rgb_mixture_log_prob(x, p, levels)

    P = _on(side, params)
    got = side.numpy(_impl(side).rgb_mixture_log_prob(side.array(x), P, levels))
    assert got.shape == x.shape[:1] + x.shape[2:]
    check(f"RGB mixture log_prob ({regime}, levels {levels})", ref(params), got, side, naive=_naive(side, ref, P))


@pytest.mark.parametrize("levels", LEVELS)
def test_categorical_log_prob(side, levels):
    rng = np.random.default_rng(levels)
    logits = rng.normal(0, 3, SHAPE + (levels,))
    logits[0, 0, 0] = -np.inf  # a level of probability 0, never observed
    x = _pixels(levels, SHAPE, rng)
    x[0, 0] = levels - 1

    def ref(p):
        return ref_dist.categorical_log_prob(x, p["logits"])

    P = side.params({"logits": logits})
    got = side.numpy(_impl(side).categorical_log_prob(side.array(x), P["logits"]))
    check(f"categorical log_prob (levels {levels})", ref({"logits": logits}), got, side, naive=_naive(side, ref, P))


def test_pack_unpack_exact(side):
    """The openai/pixel-cnn layout is a permutation: exact in every dtype (on the side's rounded values)."""
    _, params = rgb_case("moderate", 256)
    P = _on(side, params)
    rounded = {k: side.numpy(v) for k, v in P.items()}  # the side's values, exactly, in float64
    packed = side.numpy(_impl(side).pack_pixelcnn_output(P))
    assert np.array_equal(packed, ref_dist.pack_pixelcnn_output(rounded))
    back = _impl(side).unpack_pixelcnn_output(_impl(side).pack_pixelcnn_output(P), min_log_scale=None)
    for k in ref_dist.RGB_KEYS:
        assert np.array_equal(side.numpy(back[k]), rounded[k]), k
    floored = side.numpy(_impl(side).unpack_pixelcnn_output(_impl(side).pack_pixelcnn_output(P))["log_scales"])
    assert np.array_equal(floored, np.maximum(rounded["log_scales"], ref_dist.LOG_SCALE_FLOOR))


# ----------------------------------------------------------------------------- gradients


def _gradient_params():
    """A moderate-regime mixture (levels 17) and RGB mixture (levels 256), where sigma(a) - sigma(b)
    is well conditioned: the naive same-dtype gradient is meaningful there."""
    rng = np.random.default_rng(5)
    x = _pixels(17, (7,), rng)
    mix = {"logit_weights": rng.normal(0, 1, (7, K)), "means": rng.normal(0, 0.5, (7, K)),
           "log_scales": rng.uniform(-2.5, 0.5, (7, K))}  # fmt: skip
    xr = rng.integers(0, 256, (1, 3, 1, 5))
    xr[0, :, 0, 0] = (0, 255, 128)
    rgb = {"logit_weights": rng.normal(0, 1, (1, 1, 5, 2)), "means": rng.normal(0, 0.5, (1, 3, 1, 5, 2)),
           "log_scales": rng.uniform(-2.5, 0.5, (1, 3, 1, 5, 2)), "coeffs": rng.normal(0, 1, (1, 3, 1, 5, 2))}  # fmt: skip
    return x, mix, xr, rgb


def _mix_loss_ref(x, p):
    return float(np.sum(ref_dist.discretized_logistic_mixture_log_prob(x, p["logit_weights"], p["means"], p["log_scales"], 17)))


def _rgb_loss_ref(x, p):
    return float(np.sum(ref_dist.rgb_mixture_log_prob(x, p, 256)))


@functools.lru_cache(maxsize=None)
def _gradient_truth():
    x, mix, xr, rgb = _gradient_params()
    out = {}
    for what, loss, xx, params in (("mixture", _mix_loss_ref, x, mix), ("rgb", _rgb_loss_ref, xr, rgb)):
        rng = np.random.default_rng(len(what))
        coords = [(n, tuple(int(rng.integers(0, s)) for s in v.shape)) for n, v in params.items() for _ in range(3)]
        fd = [finite_difference_grad(lambda p: loss(xx, p), params, n, i) for n, i in coords]
        out[what] = (coords, np.array([d.value for d in fd]), max(d.error for d in fd))
    return out


@pytest.mark.parametrize("what", ("mixture", "rgb"))
def test_gradients(side, what):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    x, mix, xr, rgb = _gradient_params()
    coords, truth, fd_err = _gradient_truth()[what]
    assert fd_err <= FD_ACCURACY, f"finite differences not accurate enough to judge gradients: {fd_err:.2e}"
    assert np.abs(truth).max() > 1e-2, "the sampled gradient entries are all ~0: the test would prove nothing"

    def autograd(naive):
        params = mix if what == "mixture" else rgb
        P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
        Q = {k: v.to(fast_dist.compute_dtype(v)) for k, v in P.items()} if naive else P  # the compute dtype
        if what == "mixture":
            fn = _naive_torch_mixture if naive else fast_dist.discretized_logistic_mixture_log_prob
            loss = fn(side.array(x), Q["logit_weights"], Q["means"], Q["log_scales"], 17).sum()
        else:
            loss = (_naive_rgb(side.array(xr), Q, 256) if naive else fast_dist.rgb_mixture_log_prob(side.array(xr), Q, 256)).sum()
        loss.backward()
        return np.array([side.numpy(P[n].grad[i]) for n, i in coords], dtype=np.float64)

    got = autograd(False)
    naive = autograd(True) if side.low_precision else None
    check(f"grad sum log_prob ({what})", truth, got, side, naive=naive)


# ----------------------------------------------------------------------------- samples from shared uniforms


def _edge_margin(v, levels):
    """Distance (in level units) from the continuous draw v in [-1, 1] coordinates to the
    nearest bin edge that `bin_of` can cross (edges at k + 1/2, k = 0..levels-2)."""
    t = (v + 1) * ((levels - 1) / 2)
    with np.errstate(invalid="ignore"):
        nearest = np.clip(np.round(t - 0.5), 0, levels - 2) + 0.5
        margin = np.abs(t - nearest)
    return np.where(np.isfinite(t), margin, np.inf)


def _value_err(truth_v, got_v) -> float:
    """max |got - truth| of the continuous draws, over the finite draws of the reference (an
    infinite draw, at u = 0, must be matched exactly; a mismatch makes the error infinite)."""
    finite = np.isfinite(truth_v)
    if not np.array_equal(got_v[~finite], truth_v[~finite]):
        return float("inf")
    return float(np.abs(got_v[finite] - truth_v[finite]).max(initial=0.0))


def _judge(quantity, side, truth_x, got_x, judged):
    """Every judged sample equal to the reference's; float64: every sample; low precision: at
    least MIN_JUDGED[dtype]["sample"] of them judged (when there are MIN_JUDGED_COUNT or more)."""
    truth_x, got_x = np.asarray(truth_x), np.asarray(got_x)
    assert got_x.shape == truth_x.shape and np.issubdtype(got_x.dtype, np.integer), (got_x.shape, got_x.dtype)
    if side.dtype == "float64":
        judged = np.ones(truth_x.shape, dtype=bool)
    bad = judged & (got_x != truth_x)
    n, j = truth_x.size, int(judged.sum())
    print(f"[{side.name}] {quantity}: {j}/{n} samples judged, {int(bad.sum())} differ")
    assert not bad.any(), (f"{quantity}: {int(bad.sum())} of {j} judged samples differ from the reference, first at "
                           f"{tuple(int(i) for i in np.argwhere(bad)[0])}")  # fmt: skip
    needed = MIN_JUDGED.get(side.dtype, MIN_JUDGED["bfloat16"])["sample"]
    if n >= MIN_JUDGED_COUNT:
        assert j >= needed * n, f"{quantity}: only {j} of {n} samples clear of rounding: the comparison proves nothing"


def _judged(side, truth_v, got_v, levels):
    """Low precision: where the reference's draw is clear of a bin edge by JUDGE_FACTOR times the
    measured difference of the fast side's draw (float64: everywhere, see `_judge`)."""
    return _edge_margin(truth_v, levels) > JUDGE_FACTOR * _value_err(truth_v, got_v) * (levels - 1) / 2


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", ("moderate", "near-edge", "far-mean"))
def test_logistic_samples(side, regime, levels):
    if regime == "near-edge" and side.low_precision:
        pytest.skip("near-edge: with scales below 1e-8 every draw lies within low-precision rounding of a bin edge")
    _, params = logistic_case(regime, levels, SAMPLE_SHAPE)
    u = np.random.default_rng(levels + 1).random(SAMPLE_SHAPE)
    u.flat[0] = 0.0  # the smallest uniform: level 0
    P = _on(side, params)
    held = _held(side, P)
    mean, ls = held["mean"], held["log_scale"]
    truth_v = ref_dist.discretized_logistic_value(mean, ls, u)
    truth_x = ref_dist.discretized_logistic_sample(mean, ls, u, levels)
    impl = _impl(side)
    got_v = side.numpy(impl.discretized_logistic_value(P["mean"], P["log_scale"], side.array(u, torch.float64)))
    got_x = side.numpy(impl.discretized_logistic_sample(P["mean"], P["log_scale"], side.array(u, torch.float64), levels))
    _judge(f"discretized logistic samples ({regime}, levels {levels})", side, truth_x, got_x,
           _judged(side, truth_v, got_v, levels))  # fmt: skip


def _component_clear(logit_weights, u):
    """Where the component the reference draws at u is clear of a CDF boundary by more than
    the fast side's float64 softmax can move it (it computes the CDF in float64 from the same
    held logits: JUDGE_FACTOR x (K + 2) ulps)."""
    cdf = np.cumsum(ref_dist.nn.softmax(logit_weights), axis=-1)
    return np.abs(cdf - u[..., None]).min(axis=-1) > JUDGE_FACTOR * (logit_weights.shape[-1] + 2) * 2.0**-52


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("regime", ("moderate", "far-mean"))
def test_mixture_samples(side, regime, levels):
    _, params = mixture_case(regime, levels, SAMPLE_SHAPE)
    rng = np.random.default_rng(levels + 2)
    uc, uv = rng.random(SAMPLE_SHAPE), rng.random(SAMPLE_SHAPE)
    P = _on(side, params)
    held = _held(side, P)
    w, m, ls = held["logit_weights"], held["means"], held["log_scales"]
    truth_x = ref_dist.discretized_logistic_mixture_sample(w, m, ls, uc, uv, levels)
    got_x = side.numpy(_impl(side).discretized_logistic_mixture_sample(
        P["logit_weights"], P["means"], P["log_scales"], side.array(uc, torch.float64),
        side.array(uv, torch.float64), levels))  # fmt: skip
    judged = np.ones(SAMPLE_SHAPE, dtype=bool)
    if side.low_precision and not side.is_cupy:
        k = ref_dist.sampling.sample(w, uc)  # the reference's components
        pick = lambda a: np.take_along_axis(a, k[..., None], -1)[..., 0]  # noqa: E731
        truth_v = ref_dist.discretized_logistic_value(pick(m), pick(ls), uv)
        kt = side.array(k)[..., None]
        got_v = side.numpy(fast_dist.discretized_logistic_value(
            P["means"].gather(-1, kt)[..., 0], P["log_scales"].gather(-1, kt)[..., 0], side.array(uv, torch.float64)))  # fmt: skip
        judged = _component_clear(w, uc) & _judged(side, truth_v, got_v, levels)
    _judge(f"mixture samples ({regime}, levels {levels})", side, truth_x, got_x, judged)


@pytest.mark.parametrize("levels", (256, 5))
def test_rgb_samples(side, levels):
    """R, G, B in turn with the coupling, from shared uniforms."""
    _, params = rgb_case("moderate", levels, B=3, H=5, W=7, Kc=3)
    rng = np.random.default_rng(levels + 3)
    B, _, H, W, Kc = params["means"].shape
    uc, uv = rng.random((B, H, W)), rng.random((B, 3, H, W))
    P = _on(side, params)
    held = _held(side, P)
    truth_x = ref_dist.rgb_mixture_sample(held, uc, uv, levels)
    got_x = side.numpy(_impl(side).rgb_mixture_sample(P, side.array(uc, torch.float64),
                                                      side.array(uv, torch.float64), levels))  # fmt: skip
    judged = np.ones(truth_x.shape, dtype=bool)
    if side.low_precision and not side.is_cupy:
        k = ref_dist.sampling.sample(held["logit_weights"], uc)  # (B, H, W)
        kk = np.broadcast_to(k[:, None, ..., None], (B, 3, H, W, 1))
        m, ls, c = (np.take_along_axis(held[n], kk, -1)[..., 0] for n in ("means", "log_scales", "coeffs"))
        xc = ref_dist.centre(truth_x, levels)  # the reference's sampled levels, as coupling inputs
        mu = np.stack([m[:, 0], ref_dist.coupled_mean_g(m[:, 1], c[:, 0], xc[:, 0]),
                       ref_dist.coupled_mean_b(m[:, 2], c[:, 1], c[:, 2], xc[:, 0], xc[:, 1])], axis=1)  # fmt: skip
        kt = side.array(np.ascontiguousarray(kk))
        mt, lst, ct = (P[n].gather(-1, kt)[..., 0] for n in ("means", "log_scales", "coeffs"))
        dt = fast_dist.compute_dtype(mt)
        mt, lst, t, xct = mt.to(dt), lst.to(dt), ct.to(dt).tanh(), side.array(xc, torch.float64).to(dt)
        mu_fast = torch.stack([mt[:, 0], mt[:, 1] + t[:, 0] * xct[:, 0],
                               mt[:, 2] + t[:, 1] * xct[:, 0] + t[:, 2] * xct[:, 1]], dim=1)  # fmt: skip
        truth_v = ref_dist.discretized_logistic_value(mu, ls, uv)
        got_v = side.numpy(fast_dist.discretized_logistic_value(mu_fast, lst, side.array(uv, torch.float64)))
        # a channel is judged if its component and every channel up to it are clear (the coupling)
        clear = np.cumprod(_judged(side, truth_v, got_v, levels), axis=1).astype(bool)
        judged = clear & _component_clear(held["logit_weights"], uc)[:, None]
    _judge(f"RGB samples (levels {levels})", side, truth_x, got_x, judged)


@pytest.mark.parametrize("levels", (2, 17, 256))
def test_categorical_samples(side, levels):
    rng = np.random.default_rng(levels + 4)
    logits = rng.normal(0, 2, (29, levels))
    u = rng.random(29)
    L = side.params({"logits": logits})["logits"]
    held = side.numpy(L)
    truth_x = ref_dist.categorical_sample(held, u)
    got_x = side.numpy(_impl(side).categorical_sample(L, side.array(u, torch.float64)))
    _judge(f"categorical samples (levels {levels})", side, truth_x, got_x, _component_clear(held, u))
