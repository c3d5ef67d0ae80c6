"""reference.pixelcnnpp (float64 NumPy, the truth) against every backend of fast.pixelcnnpp.

Small configs with odd widths (nr_filters 2, 3, 5), RGB (levels 256) and grayscale
(levels 17), non-square images (4 x 8, 8 x 4, 8 x 8), the *same* parameters on every
backend, far from the init (`reference.pixelcnnpp.random_params`: every gate and bias
matters). Images contain the edge levels 0 and levels - 1 at known pixels.

Compared: the raw network output, every mixture parameter, log_prob (with and without
dropout from a shared rng), gradients of the mean NLL (autograd vs finite differences of
the reference), and generation from shared uniforms -- cached and naive -- where float64
must draw the reference's pixels exactly, and low precision must draw exactly what the
reference sampler draws from the conditionals the backend computed along its own image,
those conditionals agreeing with the reference's (teacher-forced on that image) under the
tolerance table.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from diff_tests.conftest import check
from chainrule.fast import backend as fb
from chainrule.fast import pixelcnnpp as fast_pp
from chainrule.reference import pixelcnnpp as ref_pp
from chainrule.reference.checks import FD_ACCURACY, as_float64, finite_difference_grad, naive_float32

CONFIGS = {
    "rgb-4x8": ref_pp.Config(height=4, width=8, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2),
    "gray-8x4": ref_pp.Config(height=8, width=4, channels=1, nr_filters=5, nr_resnet=1, nr_logistic_mix=3, levels=17),
    "rgb-8x8-r2": ref_pp.Config(height=8, width=8, channels=3, nr_filters=2, nr_resnet=2, nr_logistic_mix=1),
}
# parameter seeds; a seed is kept only if the finite-difference truth of the gradient test is
# self-consistent to FD_ACCURACY there (elu's second derivative jumps at 0, and the log-scale
# clamp has a kink: an activation within a step of either spoils Richardson extrapolation)
SEEDS = {"rgb-4x8": 107, "gray-8x4": 102, "rgb-8x8-r2": 110}
FD_STEPS = (1e-4,)  # one step (6 evaluations per entry); its self-consistency is asserted below
BATCH = 2


@functools.lru_cache(maxsize=None)
def case(name: str):
    """(config, float64 params, images (B, C, H, W) with edge levels) -- once per process."""
    config = CONFIGS[name]
    params = ref_pp.random_params(config, np.random.default_rng(SEEDS[name]))
    x = np.random.default_rng(7).integers(0, config.levels, (BATCH, config.channels, config.height, config.width))
    x[0, :, 0, 0] = 0  # the edge bins, extended to -inf and +inf
    x[1, :, -1, -1] = config.levels - 1
    x[0, 0, 1, 2] = config.levels - 1
    return config, params, x


class _Side:
    """One backend: torch (fast.pixelcnnpp on its device and dtype) or cupy (the reference on CuPy)."""

    def __init__(self, backend):
        self.backend, self.name, self.dtype = backend, backend.name, backend.dtype
        self.is_cupy = backend.kind == "cupy"
        self.low = self.dtype != "float64"

    def params(self, params):
        if self.is_cupy:
            import cupy

            return {k: cupy.asarray(v) for k, v in params.items()}
        return fb.to_torch(params, self.backend.device, self.backend.torch_dtype)

    def images(self, x):
        if self.is_cupy:
            import cupy

            return cupy.asarray(x)
        return torch.as_tensor(x, dtype=torch.int64, device=self.backend.device)

    def network(self, P, config, x):
        if self.is_cupy:
            return as_float64(ref_pp.network(P, config, self.images(x)))
        with torch.no_grad():
            return as_float64(fast_pp.network(P, config, self.images(x)))

    def forward(self, P, config, x):
        m = ref_pp if self.is_cupy else fast_pp
        return {k: as_float64(v) for k, v in m.forward(P, config, self.images(x)).items()}

    def log_prob(self, P, config, x, rng=None):
        m = ref_pp if self.is_cupy else fast_pp
        return as_float64(m.log_prob(P, config, self.images(x), rng=rng))

    def naive(self, fn, params, config, x):
        """The naive same-dtype baseline: the reference itself in float32 NumPy for float32; for
        bfloat16 (which NumPy lacks), the fast path run on the CPU in bfloat16; None in float64."""
        if not self.low or self.is_cupy:
            return None
        if self.dtype == "float32":
            return naive_float32(lambda P: fn(ref_pp, P), params)
        P = fb.to_torch(params, "cpu", torch.bfloat16)
        with torch.no_grad():
            return as_float64(fn(fast_pp, P))


@pytest.fixture
def side(backend):
    return _Side(backend)


# ----------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize("name", list(CONFIGS))
def test_network_output(side, name):
    config, params, x = case(name)
    truth = ref_pp.network(params, config, x)
    P = side.params(params)
    got = side.network(P, config, x)
    assert got.shape == (BATCH, config.height, config.width, config.n_out)
    check("network output", truth, got, side, naive=side.naive(lambda m, p: m.network(p, config, m_images(m, x)),
                                                                 params, config, x))  # fmt: skip


def m_images(module, x):
    """Images for `module`'s network: NumPy for the reference, a CPU torch tensor for fast."""
    return x if module is ref_pp else torch.as_tensor(x)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_mixture_params(side, name):
    config, params, x = case(name)
    truth = ref_pp.forward(params, config, x)
    got = side.forward(side.params(params), config, x)
    assert sorted(got) == sorted(truth)
    for key in truth:
        naive = side.naive(lambda m, p: m.forward(p, config, m_images(m, x))[key], params, config, x)
        check(f"forward[{key!r}]", truth[key], got[key], side, naive=naive)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_log_prob(side, name):
    config, params, x = case(name)
    truth = ref_pp.log_prob(params, config, x)
    got = side.log_prob(side.params(params), config, x)
    assert got.shape == (BATCH,)
    check("log_prob", truth, got, side, naive=side.naive(lambda m, p: m.log_prob(p, config, m_images(m, x)),
                                                           params, config, x))  # fmt: skip


@pytest.mark.parametrize("name", ["rgb-4x8", "gray-8x4"])
def test_log_prob_with_dropout(side, name):
    """Dropout masks come from the rng in the reference's order and shapes: the same seed drops
    the same activations on every backend."""
    config, params, x = case(name)
    truth = ref_pp.log_prob(params, config, x, rng=np.random.default_rng(11))
    assert np.all(np.abs(truth - ref_pp.log_prob(params, config, x)) > 1e-3), "dropout changed nothing"
    got = side.log_prob(side.params(params), config, x, rng=np.random.default_rng(11))
    naive = side.naive(lambda m, p: m.log_prob(p, config, m_images(m, x), rng=np.random.default_rng(11)),
                       params, config, x)  # fmt: skip
    check("log_prob with dropout", truth, got, side, naive=naive)


# ----------------------------------------------------------------------------- gradients


def _mean_nll(params, config, x):
    """Mean NLL per dimension in nats: -(1 / (B C H W)) sum_b log p(x_b)."""
    return -float(np.sum(ref_pp.log_prob(params, config, x))) / x.size


@functools.lru_cache(maxsize=None)
def _gradient_truth(name: str):
    """(coordinates: one random entry of every parameter, finite-difference gradient, its worst
    self-consistency) -- once per process."""
    config, params, x = case(name)
    rng = np.random.default_rng(99)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref_pp.param_shapes(config).items()]
    fd = [finite_difference_grad(lambda p: _mean_nll(p, config, x), params, n, i, steps=FD_STEPS) for n, i in coords]
    return coords, np.array([d.value for d in fd]), max(d.error for d in fd)


@pytest.mark.parametrize("name", ["rgb-4x8", "gray-8x4"])
def test_gradient_of_mean_nll(side, name):
    """Autograd through the fast network and distribution against float64 finite differences of the
    reference, at one entry of every parameter tensor. float32 is held to the table's elementwise
    rule (the loss is a mean: O(1) gradients)."""
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    config, params, x = case(name)
    coords, truth, fd_err = _gradient_truth(name)
    print(f"[{side.name}] finite-difference self-consistency {fd_err:.2e}")
    assert fd_err <= FD_ACCURACY, f"the finite-difference truth is not accurate enough ({fd_err:.2e})"
    assert np.abs(truth).max() > 1e-3, "the sampled gradient entries are all ~0: the test would prove nothing"
    P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
    loss = -fast_pp.log_prob(P, config, side.images(x)).sum() / x.size
    loss.backward()
    got = np.array([float(P[n].grad[i]) for n, i in coords])
    if side.dtype == "bfloat16":
        pytest.skip("bfloat16 gradients have no same-dtype baseline here; float32 and float64 are checked")
    check("grad mean NLL", truth, got, side)


# ----------------------------------------------------------------------------- generation


def _cached_run(P, config, u):
    """Drive fast.pixelcnnpp.CachedGenerator pixel by pixel -> (images, its conditionals as forward's dict)."""
    B, H, W = u.shape[0], config.height, config.width
    with torch.inference_mode():
        gen = fast_pp.CachedGenerator(fast_pp.checked_params(P, config), config, B, keep_conditionals=True)
        ut = torch.as_tensor(u, device=gen.images.device)
        for r in range(H):
            for c in range(W):
                gen.draw(ut[:, r, c])
    out = {}
    for key in gen.conditionals[0]:
        stacked = torch.stack([pp[key] for pp in gen.conditionals], dim=-2)  # (B, [C,] H W, K)
        out[key] = as_float64(stacked).reshape(stacked.shape[:-2] + (H, W, stacked.shape[-1]))
    return gen.images.cpu().numpy(), out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_samples_from_shared_uniforms(side, name):
    """float64: the cached and the naive generation draw the reference's pixels, every one.
    Low precision: the cached generator's pixels are exactly what the reference sampler draws
    from the conditionals it computed (so the sampler and the caching are exact), and those
    conditionals agree with the reference teacher-forced on the generated image."""
    config, params, _ = case(name)
    u = np.random.default_rng(5).random(ref_pp.uniforms_shape(config, BATCH))
    P = side.params(params)
    if side.is_cupy:
        import cupy

        got = cupy.asnumpy(ref_pp.generate(P, config, cupy.asarray(u)))
        np.testing.assert_array_equal(got, ref_pp.generate(params, config, u))
        return
    x_cached, cond = _cached_run(P, config, u)
    np.testing.assert_array_equal(ref_pp.sample_given(cond, config, u), x_cached,
                                  err_msg="the cached generator did not draw what its conditionals give")  # fmt: skip
    truth = ref_pp.forward(params, config, x_cached)
    for key in truth:
        naive = side.naive(lambda m, p: m.forward(p, config, m_images(m, x_cached))[key], params, config, x_cached)
        check(f"cached conditionals[{key!r}]", truth[key], cond[key], side, naive=naive)
    if not side.low:
        want = ref_pp.generate(params, config, u)
        np.testing.assert_array_equal(x_cached, want, err_msg="cached generation differs from the reference")
        naive_x = fast_pp.generate(P, config, u, cached=False).cpu().numpy()
        np.testing.assert_array_equal(naive_x, want, err_msg="naive generation differs from the reference")
        assert np.unique(want).size > 3, "the samples are (nearly) constant: the test would prove little"


def test_sample_with_rng_matches_reference():
    """sample(rng) draws u = rng.random(uniforms_shape) exactly as the reference does."""
    config, params, _ = case("gray-8x4")
    got = fast_pp.sample(fb.to_torch(params), config, np.random.default_rng(3), BATCH).numpy()
    np.testing.assert_array_equal(got, ref_pp.sample(params, config, np.random.default_rng(3), BATCH))
