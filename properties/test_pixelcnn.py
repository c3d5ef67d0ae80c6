"""Properties of PixelCNN and Gated PixelCNN that hold exactly, on the reference and the fast path.

- causality in raster order AND channel order, bit for bit, for every model (plain, gated,
  class-conditional, spatially conditional), in float64 and float32: the logits of x[c, i, j]
  do not move by one bit when any entry at or after (c, i, j) in the chain-rule order changes;
- receptive fields measured by perturbation: the plain PixelCNN's is exactly the set its masks
  reach, and misses its blind spot; the Gated PixelCNN's covers every earlier entry once deep
  enough (and not before: the test can fail);
- normalization by enumeration: the 16 binary 2x2 images have probabilities summing to 1;
- equivalence: cached generation = naive generation = the reference's, from the same uniforms;
- conditioning: the class and the spatial map change the distribution, each class's is normalized;
- purity: no input mutated, equal inputs give equal outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import pixelcnn as fast_pc
from properties.conftest import seeds
from chainrule.reference import checks
from chainrule.reference import pixelcnn as pc

FAST_DTYPES = {"float64": torch.float64, "float32": torch.float32}
VARIANTS = ("pixelcnn", "gated", "class", "spatial", "class+spatial")


def variant_config(variant: str, **kw) -> pc.Config:
    """The config of one model variant: plain, gated, or gated with class / spatial conditioning."""
    kind = "pixelcnn" if variant == "pixelcnn" else "gated"
    extra = {}
    if "class" in variant:
        extra["num_classes"] = 3
    if "spatial" in variant:
        extra["cond_channels"] = 2
    return pc.Config(kind=kind, **kw, **extra)


def make_cond(config: pc.Config, batch: int, rng: np.random.Generator):
    labels = rng.integers(0, config.num_classes, batch) if config.num_classes else None
    spatial = None
    if config.cond_channels:
        spatial = rng.normal(size=(batch, config.cond_channels, config.height, config.width))
    if labels is not None and spatial is not None:
        return {"class": labels, "spatial": spatial}
    return labels if labels is not None else spatial


@st.composite
def models(draw, variant=None, channels=None):
    """(config, params, x, cond): a tiny model of any variant with generic random weights and an input."""
    variant = draw(st.sampled_from(VARIANTS)) if variant is None else variant
    C = draw(st.sampled_from([1, 3])) if channels is None else channels
    config = variant_config(
        variant, channels=C, height=draw(st.integers(1, 3)), width=draw(st.integers(1, 4)),
        levels=draw(st.integers(2, 5)), hidden=C + draw(st.integers(0, 4)), n_layers=draw(st.integers(1, 2)),
        kernel_size=draw(st.sampled_from([1, 3])), input_kernel=draw(st.sampled_from([1, 3, 5])),
    )  # fmt: skip
    rng = np.random.default_rng(draw(seeds))
    params = pc.random_params(config, rng)
    B = draw(st.integers(1, 2))
    x = rng.integers(0, config.levels, (B, C, config.height, config.width))
    return config, params, x, make_cond(config, B, rng)


def _fast_logits(params, config, cond, dtype, impl=None):
    P = fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    return lambda img: fast_pc.forward(P, config, torch.as_tensor(img), cond=cond, impl=impl)


# ----------------------------------------------------------------------------- causality


@given(models())
def test_reference_is_causal_in_raster_and_channel_order(model):
    config, params, x, cond = model
    D = checks.assert_image_causal(lambda img: pc.forward(params, config, img, cond=cond), x, config.levels,
                                   n_trials=1, name="reference.pixelcnn.forward")  # fmt: skip
    assert D.shape == (config.channels, config.height, config.width) * 2


@pytest.mark.parametrize("dtype", list(FAST_DTYPES))
@given(model=models(), impl=st.sampled_from(fast_pc.IMPLS))
def test_fast_is_causal_bit_exact(dtype, model, impl):
    """Bit-exact in float32 too, with every convolution path: a masked weight is an exact zero, so
    the future adds exact zeros."""
    config, params, x, cond = model
    checks.assert_image_causal(_fast_logits(params, config, cond, dtype, impl), torch.as_tensor(x), config.levels,
                               n_trials=1, name=f"fast.pixelcnn.forward ({dtype}, {impl})")  # fmt: skip


def _rgb_case(variant, n_layers, hidden=12, seed=0):
    config = variant_config(variant, channels=3, height=3, width=4, levels=5, hidden=hidden, n_layers=n_layers,
                            kernel_size=3, input_kernel=5)  # fmt: skip
    rng = np.random.default_rng(seed)
    params = pc.random_params(config, rng)
    x = rng.integers(0, config.levels, (3, 3, config.height, config.width))
    return config, params, x, make_cond(config, 3, rng)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_model_is_causal_rgb(variant):
    """Each variant, RGB, reference and fast float32: causal, and both depend on exactly the same inputs.
    The unconditional Gated PixelCNN also *uses* every earlier entry (full=True: its dependency tensor
    is exactly the allowed one); the plain PixelCNN misses some (its blind spot)."""
    config, params, x, cond = _rgb_case(variant, n_layers=2)
    D = checks.assert_image_causal(lambda img: pc.forward(params, config, img, cond=cond), x, config.levels,
                                   full=variant == "gated", name=f"reference {variant}")  # fmt: skip
    got = checks.image_dependencies(_fast_logits(params, config, cond, "float32"), torch.as_tensor(x),
                                    levels=config.levels)  # fmt: skip
    assert np.array_equal(got, D), "fast float32 and the reference depend on different inputs"
    if variant == "pixelcnn":  # the blind spot: the plain PixelCNN misses allowed dependencies
        allowed = checks.allowed_image_dependencies(3, 3, config.height, config.width, 3)
        assert (allowed & ~D).any()


# ----------------------------------------------------------------------------- receptive fields


def _wide(kind, n_layers, H=6, W=9, k0=3):
    config = pc.Config(kind=kind, channels=1, height=H, width=W, levels=4, hidden=8, n_layers=n_layers,
                       kernel_size=3, input_kernel=k0)  # fmt: skip
    rng = np.random.default_rng(7)
    return config, pc.random_params(config, rng), rng.integers(0, 4, (3, 1, H, W))


@pytest.mark.parametrize("n_layers,position", [(1, (3, 2)), (3, (5, 1)), (4, (4, 3))])
def test_pixelcnn_receptive_field_is_what_its_masks_reach_and_has_the_blind_spot(n_layers, position):
    """Measured bit for bit, the receptive field is exactly `reachable` (derived from the masks alone):
    never inside the blind spot, which is not empty."""
    config, params, x = _wide("pixelcnn", n_layers)
    rf = checks.receptive_field(lambda img: pc.forward(params, config, img), x, (0,) + position, levels=4)[0]
    assert np.array_equal(rf, pc.reachable(config, position)), checks._format_field(rf[None])
    blind = pc.blind_spot(config, position)
    assert blind.any(), "this position should have a blind spot"
    assert not (rf & blind).any()
    i, j = position
    assert blind[i - 1, j + 2] and not rf[i - 1, j + 2]  # two to the right one row up: a 3x3 stack never gets there


def test_blind_spot_remains_however_deep():
    """With depth the reachable set grows to, and stops at, the complement of the blind spot."""
    config = pc.Config(height=7, width=12, kernel_size=3, input_kernel=5, n_layers=12)
    for position in [(6, 2), (3, 0), (5, 9)]:
        earlier = (np.arange(7)[:, None] * 12 + np.arange(12)) < position[0] * 12 + position[1]
        assert np.array_equal(pc.reachable(config, position), earlier & ~pc.blind_spot(config, position))


@pytest.mark.parametrize("n_layers,complete", [(2, False), (5, True)])
def test_gated_receptive_field_covers_every_earlier_pixel_given_enough_layers(n_layers, complete):
    """The Gated PixelCNN at the last pixel of a 6x7 image. The first layer (5x5) reaches 2 columns,
    each further 3x3 layer one more: left in the horizontal stack, to both sides in the vertical one.
    With 5 layers (2 + 4 = 6 columns) the field is every earlier pixel; with 2 it is not."""
    config, params, x = _wide("gated", n_layers, W=7, k0=5)
    position = (5, 6)
    rf = checks.receptive_field(lambda img: pc.forward(params, config, img), x, (0,) + position, levels=4)[0]
    earlier = (np.arange(6)[:, None] * 7 + np.arange(7)) < 5 * 7 + 6
    assert not (rf & ~earlier).any()
    assert np.array_equal(rf, earlier) == complete, checks._format_field(rf[None])


def test_receptive_field_channel_order_at_the_centre():
    """At the predicted pixel itself, channel c sees exactly the channels < c (R: none, G: R, B: R and G)."""
    config, params, x, cond = _rgb_case("gated", n_layers=2)
    for c in range(3):
        rf = checks.receptive_field(lambda img: pc.forward(params, config, img), x, (c, 1, 2), levels=5)
        assert rf[:, 1, 2].tolist() == [k < c for k in range(3)]
        assert not rf[:, 1, 3:].any() and not rf[:, 2].any()


# ----------------------------------------------------------------------------- normalization


def _binary_2x2(variant, seed):
    config = variant_config(variant, channels=1, height=2, width=2, levels=2, hidden=4, n_layers=2,
                            kernel_size=3, input_kernel=3)  # fmt: skip
    rng = np.random.default_rng(seed)
    return config, pc.random_params(config, rng), make_cond(config, 1, rng)


def _repeat_cond(cond, n):
    if cond is None:
        return None
    if isinstance(cond, dict):
        return {k: np.repeat(v, n, axis=0) for k, v in cond.items()}
    return np.repeat(cond, n, axis=0)


@pytest.mark.parametrize("variant", VARIANTS)
@given(seed=seeds)
def test_sum_over_all_16_binary_2x2_images_is_one(variant, seed):
    config, params, cond = _binary_2x2(variant, seed)
    P = fb.to_torch(params, "cpu", torch.float64)

    def ref(seqs):
        return pc.log_prob(params, config, seqs.reshape(-1, 1, 2, 2), cond=_repeat_cond(cond, len(seqs)))

    def fast(seqs):
        x = torch.as_tensor(seqs.reshape(-1, 1, 2, 2))
        return fast_pc.log_prob(P, config, x, cond=_repeat_cond(cond, len(seqs)))

    assert checks.enumerate_log_probs(ref, 2, 4).shape == (16,)
    checks.assert_normalized(ref, vocab_size=2, length=4)
    checks.assert_normalized(fast, vocab_size=2, length=4)


def test_normalization_rgb_binary_1x2():
    """RGB channel order too: all 2^6 binary 1x2 RGB images sum to 1."""
    config = pc.Config(kind="gated", channels=3, height=1, width=2, levels=2, hidden=6, n_layers=2)
    params = pc.random_params(config, np.random.default_rng(3))
    checks.assert_normalized(lambda s: pc.log_prob(params, config, s.reshape(-1, 1, 2, 3).transpose(0, 3, 1, 2)),
                             vocab_size=2, length=6)  # fmt: skip


# ----------------------------------------------------------------------------- generation


def _as_sequence(a):
    """(B, C, H, W, ...) -> (B, H W C, ...): the chain-rule order (rows, pixels, channels)."""
    a = np.moveaxis(np.asarray(a), 1, 3)
    return a.reshape((a.shape[0], -1) + a.shape[4:])


def assert_same_samples(name, x, u, params, config, cond, dtype="float64", fast_logits=None):
    """`reference.checks.assert_tokens` on images: each generated entry against the reference's choice given
    the same earlier entries (the reference's logits of x itself, teacher-forced), from the same uniforms."""
    ref = _as_sequence(pc.forward(params, config, np.asarray(x), cond=cond))  # (B, HWC, levels)
    B = x.shape[0]
    prompt = np.zeros((B, 1), dtype=np.int64)  # compare_tokens wants a prompt: one dummy entry
    tokens = np.concatenate([prompt, _as_sequence(x)], axis=1)
    fast = None if fast_logits is None else _as_sequence(fast_logits)
    return checks.assert_tokens(name, prompt, tokens, ref, dtype, u=_as_sequence(u), fast=fast)


@given(models())
def test_cached_generation_equals_naive_and_reference(model):
    config, params, x, cond = model
    u = np.random.default_rng(int(x.sum())).random(x.shape)
    P = fb.to_torch(params, "cpu", torch.float64)
    cached = fast_pc.generate(P, config, u, cond=cond).numpy()
    naive = fast_pc.generate(P, config, u, cond=cond, method="naive").numpy()
    reference = pc.generate(params, config, u, cond=cond)
    assert_same_samples("cached", cached, u, params, config, cond)
    assert np.array_equal(cached, naive) and np.array_equal(cached, reference)


@pytest.mark.parametrize("variant", ["pixelcnn", "class+spatial"])
def test_cached_generation_float32(variant):
    config, params, _, cond = _rgb_case(variant, n_layers=2)
    u = np.random.default_rng(5).random((3, 3, config.height, config.width))
    P = fb.to_torch(params, "cpu", torch.float32)
    x = fast_pc.generate(P, config, u, cond=cond).numpy()
    logits = fast_pc.forward(P, config, torch.as_tensor(x), cond=cond)
    assert_same_samples("cached float32", x, u, params, config, cond, "float32", fast_logits=checks.as_float64(logits))


# ----------------------------------------------------------------------------- conditioning


def test_class_conditioning_changes_the_distribution_and_each_class_is_normalized():
    config, params, _ = _binary_2x2("class", 11)
    images = checks.enumerate_sequences(2, 4).reshape(16, 1, 2, 2)
    per_class = [pc.log_prob(params, config, images, cond=np.full(16, k)) for k in range(3)]
    for lp in per_class:
        assert abs(np.exp(lp).sum() - 1) < 1e-12
    assert np.abs(per_class[0] - per_class[1]).max() > 1e-3 and np.abs(per_class[1] - per_class[2]).max() > 1e-3
    # log_prob uses each row's own class
    mixed = pc.log_prob(params, config, images, cond=np.arange(16) % 3)
    assert np.array_equal(mixed, np.array([per_class[k % 3][k] for k in range(16)]))


def test_spatial_conditioning_changes_the_distribution():
    config, params, _ = _binary_2x2("spatial", 12)
    images = checks.enumerate_sequences(2, 4).reshape(16, 1, 2, 2)
    s = np.random.default_rng(0).normal(size=(2, 1, 2, 2, 2))
    lp = [pc.log_prob(params, config, images, cond=np.repeat(s[k], 16, axis=0)) for k in range(2)]
    assert np.abs(lp[0] - lp[1]).max() > 1e-3
    assert all(abs(np.exp(a).sum() - 1) < 1e-12 for a in lp)


def test_super_resolution_conditioning():
    """Super-resolution as spatial conditioning: the map is the upsampled low-resolution image, and
    the high-resolution distribution depends on it."""
    lo = np.array([[[[0, 3], [1, 2]]]])  # (1, 1, 2, 2), levels 4
    s = pc.super_resolution_cond(lo, 2, 4)
    assert s.shape == (1, 1, 4, 4)
    assert np.array_equal(s[0, 0], np.kron(lo[0, 0] / 3 * 2 - 1, np.ones((2, 2))))
    hi = np.random.default_rng(0).integers(0, 4, (1, 1, 4, 4))
    assert pc.downsample(hi, 2, 4).shape == (1, 1, 2, 2)
    config = pc.Config(kind="gated", channels=1, height=4, width=4, levels=4, hidden=4, n_layers=2, cond_channels=1)
    params = pc.random_params(config, np.random.default_rng(1))
    a = pc.log_prob(params, config, hi, cond=s)
    b = pc.log_prob(params, config, hi, cond=pc.super_resolution_cond(3 - lo, 2, 4))
    assert abs(a[0] - b[0]) > 1e-3


# ----------------------------------------------------------------------------- purity


def test_purity():
    config, params, x, cond = _rgb_case("class+spatial", n_layers=1, hidden=3)
    u = np.random.default_rng(1).random(x.shape)
    checks.assert_pure(pc.log_prob, params, config, x, cond=cond)
    checks.assert_pure(pc.generate, params, config, u, cond=cond)
    checks.assert_pure(pc.sample, params, config, np.random.default_rng(0), 3, cond=cond)
    P = fb.to_torch(params, "cpu", torch.float64)
    checks.assert_pure(fast_pc.generate, P, config, u, cond=cond)
    checks.assert_pure(fast_pc.sample, P, config, np.random.default_rng(0), 3, cond=cond)
