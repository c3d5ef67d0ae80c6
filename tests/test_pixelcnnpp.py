"""reference.pixelcnnpp and fast.pixelcnnpp: the layers against their definitions, the output
layout against openai/pixel-cnn's, the init, a training step, and validation -- bad input
raises ValueError naming the argument, the expected and the actual, in both implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from chainrule.fast import backend as fb
from chainrule.fast import pixelcnnpp as fast_pp
from chainrule.reference import distributions as dist
from chainrule.reference import metrics
from chainrule.reference import pixelcnnpp as ref_pp

CONFIG = ref_pp.Config(height=4, width=8, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2)
PARAMS = ref_pp.random_params(CONFIG, np.random.default_rng(0))
X = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 8))
IMPLS = {"reference": ref_pp, "fast": fast_pp}


def _params(impl, params=PARAMS):
    return fb.to_torch(params) if impl == "fast" else params


# ----------------------------------------------------------------------------- layers


def test_shifts():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)  # (B, H, W, C)
    d, r = ref_pp.down_shift(x), ref_pp.right_shift(x)
    assert np.all(d[:, 0] == 0) and np.array_equal(d[:, 1:], x[:, :-1])
    assert np.all(r[:, :, 0] == 0) and np.array_equal(r[:, :, 1:], x[:, :, :-1])


def test_conv2d_is_the_sum_over_taps():
    rng = np.random.default_rng(2)
    x, w, b = rng.normal(size=(2, 5, 7, 3)), rng.normal(size=(2, 3, 3, 4)), rng.normal(size=4)
    y = ref_pp.conv2d(x, w, b, stride=2, pad=(1, 0, 1, 1))
    xpad = np.pad(x, ((0, 0), (1, 0), (1, 1), (0, 0)))
    assert y.shape == (2, 3, 4, 4)
    for i in range(3):
        for j in range(4):
            want = b + np.einsum("bacI,acIO->bO", xpad[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 3], w)
            np.testing.assert_allclose(y[:, i, j], want, rtol=1e-13, atol=1e-13)


def test_conv_transpose2d_is_the_adjoint_of_conv2d():
    """<conv(x), y> = <x, conv_transpose(y)> for the same weights and stride, no bias."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(2, 3, 4, 5))
    x, zero_in, zero_out = rng.normal(size=(2, 7, 9, 4)), np.zeros(4), np.zeros(5)
    y = ref_pp.conv2d(x, w, zero_out, stride=2)  # (2, 3, 4, 5)
    z = rng.normal(size=y.shape)
    back = ref_pp.conv_transpose2d(z, np.transpose(w, (0, 1, 3, 2)), zero_in, stride=2)  # (2, 6, 9, 4) covers x
    lhs = np.sum(y * z)
    rhs = np.sum(x[:, : back.shape[1], : back.shape[2]] * back)
    assert math.isclose(lhs, rhs, rel_tol=1e-12)


@pytest.mark.parametrize("deconv,kw", [(ref_pp.down_shifted_deconv2d, 3), (ref_pp.down_right_shifted_deconv2d, 2)])
def test_shifted_deconv_writes_row_i_to_rows_2i_and_2i_plus_1(deconv, kw):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(2, kw, 3, 2)), np.zeros(2)
    x = np.zeros((1, 3, 4, 3))
    x[0, 1, 2] = 1.0  # one input at (1, 2)
    y = deconv(x, w, b)
    assert y.shape == (1, 6, 8, 2)
    rows, cols = np.nonzero(np.any(y[0] != 0, axis=-1))
    assert set(rows) == {2, 3}
    assert set(cols) == ({3, 4, 5} if kw == 3 else {4, 5})


# ----------------------------------------------------------------------------- output layout, init, training


def test_output_is_openai_pixel_cnn_layout():
    """forward's parameters packed back into openai/pixel-cnn's 10 K channels give the raw network
    output exactly (with the log-scale clamp off)."""
    config = ref_pp.Config(**{**CONFIG.__dict__, "min_log_scale": None})
    raw = ref_pp.network(PARAMS, config, X)
    np.testing.assert_array_equal(dist.pack_pixelcnn_output(ref_pp.forward(PARAMS, config, X)), raw)


def test_grayscale_layout_and_log_scale_clamp():
    config = ref_pp.Config(height=4, width=4, channels=1, nr_filters=2, nr_resnet=1, nr_logistic_mix=3, levels=17)
    params = ref_pp.random_params(config, np.random.default_rng(5))
    params["out.b"] = params["out.b"].copy()
    params["out.b"][6:9] = -50.0  # every log-scale far below the clamp
    x = np.random.default_rng(6).integers(0, 17, (2, 1, 4, 4))
    raw, out = ref_pp.network(params, config, x), ref_pp.forward(params, config, x)
    np.testing.assert_array_equal(out["logit_weights"], raw[..., 0:3])
    np.testing.assert_array_equal(out["means"][:, 0], raw[..., 3:6])
    assert np.all(raw[..., 6:9] < -7) and np.all(out["log_scales"] == -7.0)
    got = fast_pp.forward(fb.to_torch(params), config, x)
    assert torch.all(got["log_scales"] == -7.0)


def test_init_starts_near_identity_blocks_and_gives_finite_bits_per_dim():
    config = ref_pp.Config(height=8, width=8, channels=3, nr_filters=8, nr_resnet=1, nr_logistic_mix=5)
    params = ref_pp.init(config, np.random.default_rng(7))
    assert all(np.all(v == 0) for k, v in params.items() if k.endswith(".b"))
    w1, w2 = params["up.0.0.u.conv1.w"], params["up.0.0.u.conv2.w"]
    assert 0.05 < w2.std() * math.sqrt(2 * 3 * 16) / (w1.std() * math.sqrt(2 * 3 * 16)) < 0.2  # init_scale 0.1
    x = np.random.default_rng(8).integers(0, 256, (2, 3, 8, 8))
    bpd = metrics.bits_per_dim(-ref_pp.log_prob(params, config, x), 3 * 8 * 8)
    assert np.all(np.isfinite(bpd)) and np.all(bpd > 0)


def test_a_few_adam_steps_lower_the_nll():
    """Training support: autograd through fast.pixelcnnpp.log_prob (with dropout from an rng)."""
    config = ref_pp.Config(height=4, width=4, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2,
                           dropout_p=0.1)  # fmt: skip
    params = {k: v.requires_grad_(True) for k, v in fb.to_torch(ref_pp.init(config, np.random.default_rng(9)),
                                                                    dtype=torch.float32).items()}  # fmt: skip
    x = torch.as_tensor(np.random.default_rng(10).integers(100, 156, (4, 3, 4, 4)))
    opt = torch.optim.Adam(params.values(), lr=3e-2)
    rng = np.random.default_rng(11)

    def nll():
        with torch.no_grad():
            return float(-fast_pp.log_prob(params, config, x).mean())

    before = nll()
    for _ in range(10):
        opt.zero_grad()
        (-fast_pp.log_prob(params, config, x, rng=rng).mean()).backward()
        opt.step()
    assert nll() < before - 1.0


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field,value",
    [("height", 6), ("width", 0), ("channels", 2), ("nr_filters", 0), ("nr_resnet", 1.5), ("nr_logistic_mix", -1),
     ("levels", 1), ("dropout_p", 1.0), ("min_log_scale", math.nan)],
)  # fmt: skip
def test_bad_config(field, value):
    with pytest.raises(ValueError, match=f"Config.{field}"):
        ref_pp.Config(**{**CONFIG.__dict__, field: value})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "x,match",
    [
        (np.full((1, 3, 4, 8), 256), r"x: levels must lie in \[0, 256\), got 256"),
        (np.full((1, 3, 4, 8), -1), r"x: levels must lie in \[0, 256\), got -1"),
        (np.zeros((1, 1, 4, 8), dtype=np.int64), r"x: expected shape \(B, 3, 4, 8\)"),
        (np.zeros((1, 3, 8, 4), dtype=np.int64), r"x: expected shape \(B, 3, 4, 8\)"),
        (np.zeros((3, 4, 8), dtype=np.int64), r"x: expected shape"),
        (np.zeros((1, 3, 4, 8)), "x: expected an integer array"),
    ],
)
def test_bad_images(impl, x, match):
    m = IMPLS[impl]
    x = torch.as_tensor(x) if impl == "fast" else x
    for fn in (m.forward, m.log_prob):
        with pytest.raises(ValueError, match=match):
            fn(_params(impl), CONFIG, x)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_params(impl):
    m, P = IMPLS[impl], _params(impl)
    with pytest.raises(ValueError, match="missing parameter 'out.w'"):
        m.forward({k: v for k, v in P.items() if k != "out.w"}, CONFIG, X)
    with pytest.raises(ValueError, match=r"params\['init.u.w'\]: expected shape \(2, 3, 4, 3\)"):
        m.forward({**P, "init.u.w": P["init.u.w"][:1]}, CONFIG, X)
    with pytest.raises(ValueError, match="unexpected parameters"):
        m.forward({**P, "extra": P["out.b"]}, CONFIG, X)


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_log_scales_raise(impl):
    """A NaN in the network's log-scale outputs is an error in log_prob and in generation, not a NaN."""
    params = dict(PARAMS)
    params["out.b"] = PARAMS["out.b"].copy()
    params["out.b"][2 + 2 + 1] = np.nan  # log-scale of component 1 of R (openai layout: K logits, then R: m, s, c)
    m, P = IMPLS[impl], _params(impl, params)
    with pytest.raises(ValueError, match="log_scales"):
        m.log_prob(P, CONFIG, X)
    u = np.random.default_rng(0).random(ref_pp.uniforms_shape(CONFIG, 1))
    with pytest.raises(ValueError, match="(log_scales|not finite)"):
        m.generate(P, CONFIG, u)


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_uniforms_and_batch(impl):
    m, P = IMPLS[impl], _params(impl)
    with pytest.raises(ValueError, match=r"u: expected shape \(B, 4, 8, 4\)"):
        m.generate(P, CONFIG, np.full((1, 4, 8, 3), 0.5))
    with pytest.raises(ValueError, match=r"u: expected uniforms in \[0, 1\)"):
        m.generate(P, CONFIG, np.full((1, 4, 8, 4), 1.0))
    with pytest.raises(ValueError, match="batch: expected a positive int"):
        m.sample(P, CONFIG, np.random.default_rng(0), 0)


def test_fast_rejects_mixed_dtypes():
    P = fb.to_torch(PARAMS)
    P["init.u.b"] = P["init.u.b"].float()
    with pytest.raises(ValueError, match=r"params\['init.u.b'\]: expected torch.float64"):
        fast_pp.forward(P, CONFIG, X)


def test_cache_refuses_misuse():
    config = ref_pp.Config(height=4, width=4, channels=1, nr_filters=2, nr_resnet=1, nr_logistic_mix=1)
    params = ref_pp.random_params(config, np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch: expected a positive int"):
        fast_pp.init_cache(params, config, 0)
    with torch.inference_mode():
        cache = fast_pp.init_cache(params, config, 1)
        with pytest.raises(ValueError, match=r"push: call conditional\(\) for this pixel first"):
            cache.push(torch.zeros((1, 1), dtype=torch.int64))
        cache.conditional()
        with pytest.raises(ValueError, match=r"pixel: expected integer levels of shape \(1, 1\)"):
            cache.push(torch.zeros((1, 3), dtype=torch.int64))
        cache.push(torch.zeros((1, 1), dtype=torch.int64))
        for _ in range(15):
            cache.draw(torch.full((1, 2), 0.5, dtype=torch.float64))
        with pytest.raises(ValueError, match="all 16 pixels are drawn"):
            cache.draw(torch.full((1, 2), 0.5, dtype=torch.float64))
