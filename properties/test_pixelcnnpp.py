"""Properties of PixelCNN++ (reference.pixelcnnpp, and fast.pixelcnnpp where it matters):

  - causality in raster order, bit for bit: the mixture parameters of pixel (i, j) -- all
    three channels, whose coupling lives in the distribution -- depend only on the pixels
    before (i, j), through every resolution of both streams; and they do depend on the
    pixel to the left and the pixel above (the test is not passed by a constant);
  - normalization by enumeration: the sum of p(x) over all 2^16 binary 4 x 4 grayscale
    images is 1 (4 x 4 is the smallest image the two stride-2 down-samplings allow; RGB
    4 x 4 would be 2^48 images); and for RGB, the sum over every completion of the last two
    pixels (2^6 or 3^6 of them) of p(x) / p(first pixels) is 1;
  - cached generation (fast) == naive generation (fast), pixel for pixel, from the same
    uniforms, and the cached conditionals are the teacher-forced ones;
  - dropout is a function of the rng: the same seed gives bit-identical results, another
    seed another result, dropout_p = 0 the evaluation model;
  - purity: no input mutated, equal inputs give bit-identical outputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import pixelcnnpp as fast_pp
from properties.conftest import seeds
from chainrule.reference import pixelcnnpp as ref_pp
from chainrule.reference.checks import TOLERANCES, assert_close, assert_image_causal, assert_pure, enumerate_sequences


@st.composite
def models(draw, channels=None, sizes=(4, 8), levels=(2, 17, 256), max_resnet=2):
    """(config, float64 params from random_params) of a tiny PixelCNN++."""
    config = ref_pp.Config(
        height=draw(st.sampled_from(sizes)),
        width=draw(st.sampled_from(sizes)),
        channels=channels if channels is not None else draw(st.sampled_from((1, 3))),
        nr_filters=draw(st.integers(2, 5)),
        nr_resnet=draw(st.integers(1, max_resnet)),
        nr_logistic_mix=draw(st.integers(1, 3)),
        levels=draw(st.sampled_from(levels)),
    )
    return config, ref_pp.random_params(config, np.random.default_rng(draw(seeds)))


def _images(config, seed, batch=2):
    return np.random.default_rng(seed).integers(0, config.levels, (batch, config.channels, config.height, config.width))


def _outputs(network):
    """The raw network output as (B, n_out, H, W): the layout assert_image_causal reads."""
    return lambda img: np.moveaxis(np.asarray(network(img), dtype=np.float64), -1, 1)


def _assert_uses_neighbours(D):
    """Every pixel's output depends on the pixel to its left and the pixel above (where they exist)."""
    _, H, W = D.shape[:3]
    for i in range(H):
        for j in range(W):
            if j > 0:
                assert D[:, i, j, :, i, j - 1].any(), f"pixel ({i}, {j}) ignores its left neighbour"
            if i > 0:
                assert D[:, i, j, :, i - 1, j].any(), f"pixel ({i}, {j}) ignores the pixel above"


# ----------------------------------------------------------------------------- causality


@given(models(sizes=(4,)), seeds)
def test_reference_is_causal_in_raster_order(model, seed):
    config, params = model
    x = _images(config, seed, batch=1)
    D = assert_image_causal(_outputs(lambda img: ref_pp.network(params, config, img)), x, config.levels,
                            channel_groups=1, n_trials=1, name="reference.pixelcnnpp.network")  # fmt: skip
    _assert_uses_neighbours(D)


def test_fast_is_causal_in_raster_order_float64_and_float32():
    """The torch network, through all three resolutions of a 4 x 8 image (H/4 x W/4 = 1 x 2)."""
    config = ref_pp.Config(height=4, width=8, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2)
    params = ref_pp.random_params(config, np.random.default_rng(4))
    x = _images(config, 5, batch=1)
    for dtype in (torch.float64, torch.float32):
        P = fb.to_torch(params, "cpu", dtype)

        def network(img):
            with torch.no_grad():
                return fast_pp.network(P, config, torch.as_tensor(img)).to(torch.float64).numpy()

        D = assert_image_causal(_outputs(network), x, config.levels, channel_groups=1, n_trials=1,
                                name=f"fast.pixelcnnpp.network[{dtype}]")  # fmt: skip
        _assert_uses_neighbours(D)


# ----------------------------------------------------------------------------- normalization


def test_sum_over_all_binary_4x4_grayscale_images_is_one():
    """sum over all 2^16 images of p(x) = 1: the chain rule of 16 discretized-logistic-mixture
    conditionals, each over 2 levels, is a distribution over images."""
    config = ref_pp.Config(height=4, width=4, channels=1, nr_filters=2, nr_resnet=1, nr_logistic_mix=2, levels=2)
    params = ref_pp.random_params(config, np.random.default_rng(0))
    X = enumerate_sequences(2, 16, max_sequences=1 << 16).reshape(-1, 1, 4, 4)
    lp = np.concatenate([ref_pp.log_prob(params, config, X[i : i + 16384]) for i in range(0, len(X), 16384)])
    assert lp.max() - lp.min() > 1.0, "p(x) is nearly uniform: the sum would be 1 by accident"
    assert abs(math.fsum(np.exp(lp)) - 1.0) <= 1e-12


@given(models(channels=3, sizes=(4,), levels=(2, 3), max_resnet=1), seeds)
def test_rgb_completions_of_the_last_two_pixels_sum_to_one(model, seed):
    """Fix the first H W - 2 pixels, enumerate all levels^6 values of the last two RGB pixels:
    sum_completions p(x) / p(first pixels) = 1 (the coupled mixture of two successive pixels is
    a distribution), and the first pixels' log-probabilities do not move by one bit."""
    config, params = model
    L, H, W = config.levels, config.height, config.width
    prefix = _images(config, seed, batch=1)
    tails = enumerate_sequences(L, 6)  # (L^6, 6): R, G, B of pixel H W - 2, then of pixel H W - 1
    X = np.repeat(prefix, len(tails), axis=0)  # (N, 3, H, W)
    X[:, :, H - 1, W - 2] = tails[:, :3]
    X[:, :, H - 1, W - 1] = tails[:, 3:]
    per_pixel = ref_pp.pixel_log_probs(ref_pp.forward(params, config, X), config, X).reshape(len(X), -1)  # (N, H W)
    head = per_pixel[:, :-2]
    assert np.all(head == head[:1]), "the first pixels' conditionals moved with the last two pixels"
    total = math.fsum(np.exp(per_pixel[:, -2:].sum(axis=1)))
    assert abs(total - 1.0) <= 1e-12, f"sum over completions = {total!r}"


# ----------------------------------------------------------------------------- cached generation


@given(models(), seeds)
def test_cached_generation_equals_naive(model, seed):
    """float64: the cached generator draws exactly the naive generator's pixels from the same
    uniforms, and the conditionals it computed are the teacher-forced ones on its images."""
    config, params = model
    P = fb.to_torch(params)
    u = np.random.default_rng(seed).random(ref_pp.uniforms_shape(config, 2))
    naive = fast_pp.generate(P, config, u, cached=False).numpy()
    with torch.inference_mode():
        gen = fast_pp.CachedGenerator(P, config, 2, keep_conditionals=True)
        ut = torch.as_tensor(u)
        for r in range(config.height):
            for c in range(config.width):
                gen.draw(ut[:, r, c])
    np.testing.assert_array_equal(gen.images.numpy(), naive)
    _assert_conditionals_are_forward(P, config, naive, gen.conditionals)


@given(models(), seeds)
def test_teacher_forcing_through_the_cache_is_forward(model, seed):
    """Any images pushed pixel by pixel through the cache (not only its own samples) get the
    conditionals of `forward`: every cached activation is the network's."""
    config, params = model
    P = fb.to_torch(params)
    x = _images(config, seed)
    with torch.inference_mode():
        cache = fast_pp.init_cache(P, config, 2, keep_conditionals=True)
        for r in range(config.height):
            for c in range(config.width):
                cache.conditional()
                cache.push(torch.as_tensor(x[:, :, r, c]))
    _assert_conditionals_are_forward(P, config, x, cache.conditionals)


def _assert_conditionals_are_forward(P, config, x, conditionals):
    for key, value in fast_pp.forward(P, config, x).items():
        K = value.shape[-1]
        want = value.reshape(2, -1, K) if key == "logit_weights" else value.reshape(2, config.channels, -1, K)
        got = torch.stack([pp[key] for pp in conditionals], dim=-2)  # (B, [C,] H W, K)
        assert_close(f"cached conditionals[{key!r}]", want, got, "float64")


# ----------------------------------------------------------------------------- dropout


@given(models(sizes=(4,), max_resnet=1), seeds)
def test_dropout_is_a_function_of_the_rng(model, seed):
    config, params = model
    x = _images(config, seed)
    a = ref_pp.log_prob(params, config, x, rng=np.random.default_rng(seed))
    b = ref_pp.log_prob(params, config, x, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)
    P = fb.to_torch(params)
    fa = fast_pp.log_prob(P, config, x, rng=np.random.default_rng(seed)).numpy()
    np.testing.assert_array_equal(fa, fast_pp.log_prob(P, config, x, rng=np.random.default_rng(seed)).numpy())
    assert_close("log_prob with dropout, fast vs reference", a, fa, "float64")
    other = ref_pp.log_prob(params, config, x, rng=np.random.default_rng(seed + 1))
    assert np.any(other != a), "another rng dropped the same activations"
    evaluation = ref_pp.log_prob(params, config, x)
    no_dropout = ref_pp.Config(**{**config.__dict__, "dropout_p": 0.0})
    np.testing.assert_array_equal(ref_pp.log_prob(params, no_dropout, x, rng=np.random.default_rng(seed)), evaluation)


# ----------------------------------------------------------------------------- purity


@given(models(sizes=(4,), max_resnet=1), seeds)
def test_log_prob_is_pure(model, seed):
    config, params = model
    x = _images(config, seed)
    assert_pure(ref_pp.forward, params, config, x)
    assert_pure(ref_pp.log_prob, params, config, x, rng=np.random.default_rng(seed))
    assert_pure(fast_pp.log_prob, fb.to_torch(params), config, torch.as_tensor(x), rng=np.random.default_rng(seed))


def test_generation_is_pure():
    config = ref_pp.Config(height=4, width=8, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2)
    params = ref_pp.random_params(config, np.random.default_rng(8))
    assert_pure(ref_pp.sample, params, config, np.random.default_rng(9), 2)
    u = np.random.default_rng(10).random(ref_pp.uniforms_shape(config, 2))
    P = fb.to_torch(params)
    assert_pure(fast_pp.generate, P, config, u)
    assert_pure(fast_pp.generate, P, config, torch.as_tensor(u), cached=False)
