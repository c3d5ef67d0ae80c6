"""reference.pixelcnn and fast.pixelcnn: the masks written out, and bad input raising ValueError that
names the argument, the expected and the actual -- the same errors from both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import pixelcnn as fast_pc
from chainrule.reference import checks, metrics
from chainrule.reference import pixelcnn as pc

CONFIG = pc.Config(kind="gated", channels=3, height=3, width=4, levels=5, hidden=4, n_layers=2,
                   num_classes=2, cond_channels=1)  # fmt: skip
PARAMS = pc.random_params(CONFIG, np.random.default_rng(0))
X = np.random.default_rng(1).integers(0, 5, (2, 3, 3, 4))
COND = {"class": np.array([0, 1]), "spatial": np.zeros((2, 1, 3, 4))}
IMPLS = {"reference": pc, "fast": fast_pc}


# ----------------------------------------------------------------------------- masks


def test_mask_a_and_b_rgb_centre_taps():
    """3x3, one feature per colour: mask A's centre is strictly lower triangular in (out, in) groups,
    mask B's includes the diagonal; rows above and the left tap are open, the rest closed."""
    g = pc.channel_groups(3, 3)
    a, b = pc.causal_mask((3, 3), g, g, "A"), pc.causal_mask((3, 3), g, g, "B")
    assert a[:, :, 1, 1].tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert b[:, :, 1, 1].tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    for m in (a, b):
        assert (m[:, :, 0, :] == 1).all() and (m[:, :, 1, 0] == 1).all()
        assert (m[:, :, 1, 2] == 0).all() and (m[:, :, 2, :] == 0).all()


def test_channel_groups_contiguous_and_uneven():
    assert pc.channel_groups(6, 3).tolist() == [0, 0, 1, 1, 2, 2]
    assert pc.channel_groups(8, 3).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert pc.channel_groups(4, 1).tolist() == [0, 0, 0, 0]
    assert pc.channel_groups(3 * 5, 3).tolist() == [0] * 5 + [1] * 5 + [2] * 5  # logits: block c is channel c
    with pytest.raises(ValueError, match=r"n: expected at least groups=3 channels \(one per group\), got 2"):
        pc.channel_groups(2, 3)


def test_gated_stacks_masks():
    v = pc.vertical_mask((3, 3), 1, 1)[0, 0]
    assert v.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]
    g = pc.channel_groups(3, 3)
    h = pc.horizontal_mask((1, 5), g, g, "B")
    assert h[2, 2, 0].tolist() == [1, 1, 1, 0, 0] and h[0, 2, 0].tolist() == [1, 1, 0, 0, 0]


def test_bits_per_dim_from_log_prob():
    lp = pc.log_prob(PARAMS, CONFIG, X, cond=COND)
    bpd = metrics.bits_per_dim(-lp, 3 * 3 * 4)
    assert np.allclose(bpd * 36 * np.log(2), -lp) and (bpd > 0).all()


def test_draw_receptive_field_writes_a_png(tmp_path):
    config = pc.Config(height=4, width=6, levels=3, hidden=4, n_layers=1, input_kernel=3)
    params = pc.random_params(config, np.random.default_rng(0))
    x = np.zeros((1, 1, 4, 6), dtype=np.int64)
    rf = checks.receptive_field(lambda img: pc.forward(params, config, img), x, (0, 3, 2), levels=3)
    path = checks.draw_receptive_field([rf, rf], str(tmp_path / "rf.png"), positions=[(3, 2)] * 2,
                                       titles=["a", "b"], highlight=[pc.blind_spot(config, (3, 2)), None])  # fmt: skip
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=4), r"Config.kernel_size: expected an odd positive int \(square kernels\), got 4"),
        (dict(input_kernel=(7, 5)), r"Config.input_kernel: expected an odd positive int \(square kernels\), "
                                    r"got \(7, 5\)"),
        (dict(levels=1), r"Config.levels: expected an int >= 2, got 1"),
        (dict(channels=3, hidden=2), r"Config.hidden: expected an int >= channels=3"),
        (dict(kind="pixelrnn"), r"Config.kind: expected one of \('pixelcnn', 'gated'\), got 'pixelrnn'"),
        (dict(num_classes=3), r"Config.num_classes: conditioning needs kind='gated', got kind='pixelcnn'"),
        (dict(height=0), r"Config.height: expected a positive int, got 0"),
    ],
    ids=["even-kernel", "non-square-kernel", "levels", "hidden", "kind", "cond-plain", "height"],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pc.Config(**kwargs)


@pytest.mark.parametrize("kernel", [(2, 3), (3, 4), (0, 1)])
def test_even_kernels_rejected_by_masks_and_conv(kernel):
    with pytest.raises(ValueError, match=r"kernel: expected odd \(kh, kw\)"):
        pc.causal_mask(kernel, [0], [0], "B")
    with pytest.raises(ValueError, match=r"kernel: expected odd \(kh, kw\)"):
        pc.conv2d(np.zeros((1, 1, 3, 3)), np.zeros((1, 1) + kernel))


# ----------------------------------------------------------------------------- inputs


def _arr(impl, a):
    return torch.as_tensor(a) if impl == "fast" else np.asarray(a)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fn", ["forward", "log_prob"])
@pytest.mark.parametrize(
    "x,match",
    [
        (np.full((1, 3, 3, 4), 5), r"x: pixel values must lie in \[0, 5\), got 5"),
        (np.full((1, 3, 3, 4), -1), r"x: pixel values must lie in \[0, 5\), got -1"),
        (np.zeros((1, 1, 3, 4), dtype=np.int64), r"x: expected shape \(B, 3, 3, 4\) with B >= 1 .*got \(1, 1, 3, 4\)"),
        (np.zeros((1, 3, 4, 3), dtype=np.int64), r"x: expected shape \(B, 3, 3, 4\) .*got \(1, 3, 4, 3\)"),
        (np.zeros((3, 3, 4), dtype=np.int64), r"x: expected shape \(B, 3, 3, 4\) .*got \(3, 3, 4\)"),
        (np.zeros((1, 3, 3, 4)), r"x: expected an integer array, got .*float"),
    ],
    ids=["too-large", "negative", "channels", "height-width", "3-D", "float"],
)
def test_bad_images(impl, fn, x, match):
    with pytest.raises(ValueError, match=match):
        getattr(IMPLS[impl], fn)(PARAMS, CONFIG, _arr(impl, x), cond=COND)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "cond,match",
    [
        (None, r"cond: expected class labels \(B,\) in \[0, 2\), got none"),
        (np.array([0, 1]), r"cond: expected a dict \{'class': labels, 'spatial': map\}"),
        ({"class": np.array([0, 2]), "spatial": np.zeros((2, 1, 3, 4))},
         r"cond\['class'\]: class ids must lie in \[0, 2\), got 2"),
        ({"class": np.array([0]), "spatial": np.zeros((2, 1, 3, 4))},
         r"cond\['class'\]: expected an integer array of shape \(2,\)"),
        ({"class": np.array([0, 1]), "spatial": np.full((2, 1, 3, 4), np.nan)},
         r"cond\['spatial'\]: expected finite values, got NaN"),
        ({"class": np.array([0, 1]), "spatial": np.zeros((2, 2, 3, 4))},
         r"cond\['spatial'\]: expected shape \(2, 1, 3, 4\), got \(2, 2, 3, 4\)"),
        ({"class": np.array([0, 1])}, r"cond: expected a spatial map of shape \(2, 1, 3, 4\), got none"),
        ({"label": np.array([0, 1])}, r"cond: expected keys 'class' and/or 'spatial', got \['label'\]"),
    ],
    ids=["missing", "not-a-dict", "class-range", "class-shape", "nan-map", "map-shape", "no-map", "unknown-key"],
)
def test_bad_cond(impl, cond, match):
    if impl == "fast" and isinstance(cond, dict):
        cond = {k: torch.as_tensor(v) for k, v in cond.items()}
    with pytest.raises(ValueError, match=match):
        IMPLS[impl].log_prob(PARAMS, CONFIG, _arr(impl, X), cond=cond)


def test_cond_for_an_unconditional_model():
    config = pc.Config(kind="gated", channels=1, height=2, width=2, levels=2, hidden=2, n_layers=1)
    params = pc.random_params(config, np.random.default_rng(0))
    x = np.zeros((1, 1, 2, 2), dtype=np.int64)
    with pytest.raises(ValueError, match=r"cond: expected None \(the config has num_classes=0 and cond_channels=0\)"):
        pc.log_prob(params, config, x, cond=np.zeros((1, 1, 2, 2)))
    spatial_only = pc.Config(kind="gated", channels=1, height=2, width=2, levels=2, hidden=2, n_layers=1,
                             cond_channels=1)  # fmt: skip
    params = pc.random_params(spatial_only, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"cond: got class labels, but the config has num_classes=0"):
        pc.log_prob(params, spatial_only, x, cond={"class": np.array([0]), "spatial": np.zeros((1, 1, 2, 2))})


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "u,match",
    [
        (np.full((2, 3, 3, 4), 1.0), r"u: expected uniforms in \[0, 1\)"),
        (np.full((2, 3, 3, 4), np.nan), r"u: expected uniforms in \[0, 1\)"),
        (np.zeros((2, 1, 3, 4)), r"u: expected uniforms of shape \(B, 3, 3, 4\), got \(2, 1, 3, 4\)"),
    ],
    ids=["one", "nan", "shape"],
)
def test_bad_uniforms(impl, u, match):
    with pytest.raises(ValueError, match=match):
        IMPLS[impl].generate(PARAMS, CONFIG, u, cond=COND)


def test_bad_params_and_method():
    bad = dict(PARAMS)
    bad["layers.0.v.w"] = bad["layers.0.v.w"][:, :, :2]
    for impl in (pc, fast_pc):
        with pytest.raises(ValueError, match=r"params\['layers.0.v.w'\]: expected shape \(8, 3, 7, 7\), "
                                             r"got \(8, 3, 2, 7\)"):
            impl.log_prob(bad, CONFIG, X, cond=COND)
    missing = {k: v for k, v in PARAMS.items() if k != "out.0.b"}
    with pytest.raises(ValueError, match=r"params: missing parameter 'out.0.b'"):
        pc.forward(missing, CONFIG, X, cond=COND)
    with pytest.raises(ValueError, match=r"method: expected one of \('cached', 'naive'\), got 'fast'"):
        fast_pc.generate(PARAMS, CONFIG, np.zeros((2, 3, 3, 4)), cond=COND, method="fast")
    with pytest.raises(ValueError, match=r"impl: expected one of \('conv2d', 'gemm', 'taps'\) or None, got 'fft'"):
        fast_pc.forward(PARAMS, CONFIG, X, cond=COND, impl="fft")
    with pytest.raises(ValueError, match=r"batch: expected a positive int, got 0"):
        pc.sample(PARAMS, CONFIG, np.random.default_rng(0), 0, cond=COND)


def test_receptive_field_and_causality_checks_reject_bad_input():
    f = lambda img: pc.forward(PARAMS, CONFIG, img, cond=COND)  # noqa: E731
    with pytest.raises(ValueError, match=r"x: expected values in \[0, 5\)"):
        checks.receptive_field(f, X + 5, (0, 0, 0), levels=5)
    with pytest.raises(ValueError, match=r"position: expected \(o, i, j\) inside the output's \(3, 3, 4\), "
                                         r"got \(0, 3, 0\)"):
        checks.receptive_field(f, X, (0, 3, 0), levels=5)
    with pytest.raises(ValueError, match=r"channel_groups: expected an int in \[1, 3\]"):
        checks.assert_image_causal(f, X, 5, channel_groups=4)


def test_image_causality_check_catches_a_leak():
    """The checker is not vacuous: a model whose centre tap reads its own colour (mask B in the first
    layer) is caught, and so is one that reads the next pixel."""
    config = pc.Config(kind="pixelcnn", channels=3, height=2, width=3, levels=4, hidden=3, n_layers=1,
                       kernel_size=3, input_kernel=3)  # fmt: skip
    params = pc.random_params(config, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 4, (2, 3, 2, 3))
    g3, gx = pc.channel_groups(6, 3), pc.channel_groups(3, 3)
    leaky = dict(pc.masks(config))
    leaky["in.w"] = pc.causal_mask((3, 3), g3, gx, "B")

    def forward_with(masks):
        def f(img):
            real = pc.masks
            pc.masks = lambda c: masks
            try:
                return pc.forward(params, config, img)
            finally:
                pc.masks = real

        return f

    with pytest.raises(AssertionError, match=r"not causal in raster and channel order"):
        checks.assert_image_causal(forward_with(leaky), x, 4)
    ahead = dict(pc.masks(config))
    ahead["in.w"] = ahead["in.w"].copy()
    ahead["in.w"][:, :, 1, 2] = 1.0  # the pixel to the right
    with pytest.raises(AssertionError, match=r"not causal"):
        checks.assert_image_causal(forward_with(ahead), x, 4)
    checks.assert_image_causal(forward_with(pc.masks(config)), x, 4)


def test_blind_spot_picture(tmp_path):
    """The README picture, small: drawn from measured fields; the gated one complete, the plain one
    missing its (non-empty) blind spot."""
    from chainrule import pictures

    f = pictures.blind_spot_fields(size=7, position=(5, 3), layers=4)
    assert np.array_equal(f["gated"], f["earlier"])
    assert f["blind_spot"].any() and not (f["pixelcnn"] & f["blind_spot"]).any()
    path = pictures.blind_spot_picture(str(tmp_path / "blind.png"), size=7, position=(5, 3), layers=4)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_training_lowers_the_nll():
    """fast.pixelcnn trains by autograd: a few Adam steps on a fixed batch lower its NLL (bits/dim)."""
    config = pc.Config(kind="gated", channels=1, height=4, width=4, levels=4, hidden=6, n_layers=2, num_classes=2)
    rng = np.random.default_rng(0)
    params = {k: torch.as_tensor(v).requires_grad_(True) for k, v in pc.init(config, rng).items()}
    x = torch.as_tensor(rng.integers(0, 4, (8, 1, 4, 4)))
    labels = torch.as_tensor(np.arange(8) % 2)
    opt = torch.optim.Adam(params.values(), lr=1e-2)

    def bpd():
        return metrics.bits_per_dim(-fast_pc.log_prob(params, config, x, cond=labels).mean(), 16)

    before = float(bpd().detach())
    for _ in range(30):
        opt.zero_grad()
        loss = bpd()
        loss.backward()
        opt.step()
    assert float(bpd().detach()) < before - 0.1


def test_image_causality_with_one_channel_group():
    """channel_groups=1 (a pixel's channels predicted jointly from the pixels before it, any number of
    output channels, as PixelCNN++'s mixture parameters): strictly-earlier-pixel functions pass, a
    function reading the current pixel fails, and full=True sees every earlier pixel used."""
    x = np.random.default_rng(0).integers(0, 4, (2, 3, 2, 3))

    def earlier_sum(img):  # out[b, o, i, j] = (o + 1) * sum of all channels of the pixels before (i, j)
        flat = img.reshape(img.shape[0], 3, -1).sum(axis=1).astype(np.float64)  # (B, H W)
        before = np.cumsum(flat, axis=1) - flat
        return (np.arange(1, 6)[None, :, None] * before[:, None, :]).reshape(img.shape[0], 5, 2, 3)

    D = checks.assert_image_causal(earlier_sum, x, 4, channel_groups=1, full=True)
    assert D.shape == (5, 2, 3, 3, 2, 3)
    with pytest.raises(AssertionError, match="not causal"):
        checks.assert_image_causal(lambda img: earlier_sum(img) + img[:, :1].sum(axis=1, keepdims=True), x, 4,
                                   channel_groups=1)  # fmt: skip


def test_sample_from_a_seed_is_the_same_in_reference_and_fast():
    config = pc.Config(kind="pixelcnn", channels=3, height=2, width=3, levels=6, hidden=4, n_layers=1)
    params = pc.random_params(config, np.random.default_rng(0))
    ref = pc.sample(params, config, np.random.default_rng(5), 2)
    fast = fast_pc.sample(params, config, np.random.default_rng(5), 2).numpy()
    assert ref.shape == (2, 3, 2, 3) and ref.dtype == np.int64 and np.array_equal(ref, fast)


def test_training_after_sampling_the_same_config():
    """fast.pixelcnn caches its masks per config; the first use may be sampling, under
    torch.inference_mode. A training step of the same config afterwards must still
    differentiate through the cached masks."""
    config = pc.Config(kind="gated", height=3, width=3, channels=1, levels=4, hidden=4, n_layers=1, input_kernel=3)
    fast_pc._MASKS.clear()
    params = {k: torch.from_numpy(v).requires_grad_() for k, v in pc.init(config, np.random.default_rng(0)).items()}
    fast_pc.generate(params, config, torch.from_numpy(np.random.default_rng(1).random((1, 1, 3, 3))))
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 4, (2, 1, 3, 3)))
    loss = -fast_pc.log_prob(params, config, x).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
