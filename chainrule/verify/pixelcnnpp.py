"""`chainrule verify` rows for PixelCNN++ (reference.pixelcnnpp vs fast.pixelcnnpp; the reference
itself on CuPy), on a fixed seeded RGB case (4 x 8, levels 256, edge levels 0 and 255 present):

    the raw network output and log_prob under the tolerance table (low precision against the
    reference run in float32 NumPy on the same parameters); log_prob with dropout from a shared
    rng; the gradient of the mean NLL against finite differences of the reference (float64
    torch backends); cached generation from shared uniforms (float64: every pixel equal to the
    reference's naive generation; every backend: every pixel equal to what the reference sampler
    draws from the conditionals the backend computed, and those conditionals against the
    reference teacher-forced on the generated images); causality in raster order measured on the
    backend's network, bit for bit; normalization: the sum over all 2^6 completions of the last
    two pixels (levels 2) of p(x) / p(first pixels).
"""

from __future__ import annotations

import functools
import math

import numpy

from chainrule.verify import Result, register

SEED = 2017
BATCH = 2


@functools.cache
def _case() -> dict:
    """The fixed case and the reference's network output and log_prob of it."""
    from chainrule.reference import pixelcnnpp as ref

    config = ref.Config(height=4, width=8, channels=3, nr_filters=3, nr_resnet=1, nr_logistic_mix=2)
    params = ref.random_params(config, numpy.random.default_rng(107))
    rng = numpy.random.default_rng(SEED)
    x = rng.integers(0, config.levels, (BATCH, 3, config.height, config.width))
    x[0, :, 0, 0], x[1, :, -1, -1] = 0, config.levels - 1
    return dict(config=config, params=params, x=x, rng_state=rng.bit_generator.state,
                network=ref.network(params, config, x), log_prob=ref.log_prob(params, config, x))


@functools.cache
def _more_truth() -> dict:
    """The rest of the reference's truth (dropout, generation, finite-difference gradients, the
    enumeration case): computed once, when the rows past the quick ones first run."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnnpp as ref

    case = _case()
    config, params, x = case["config"], case["params"], case["x"]
    rng = numpy.random.default_rng(SEED)
    rng.bit_generator.state = case["rng_state"]  # the case's stream, continued where _case left it
    u = rng.random(ref.uniforms_shape(config, BATCH))
    enum_config = ref.Config(height=4, width=4, channels=3, nr_filters=2, nr_resnet=1, nr_logistic_mix=2, levels=2)
    enum_params = ref.random_params(enum_config, numpy.random.default_rng(SEED + 1))
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref.param_shapes(config).items()][::9]

    def mean_nll(p):
        return -float(numpy.sum(ref.log_prob(p, config, x))) / x.size

    fd = [checks.finite_difference_grad(mean_nll, params, n, i, steps=(1e-4,)) for n, i in coords]
    return dict(u=u, log_prob_dropout=ref.log_prob(params, config, x, rng=numpy.random.default_rng(SEED + 2)),
                generated=ref.generate(params, config, u), enum_config=enum_config, enum_params=enum_params,
                coords=coords, grad_fd=numpy.array([d.value for d in fd]),
                grad_fd_err=max(d.error for d in fd))  # fmt: skip


class _Side:
    """The backend's implementation: fast.pixelcnnpp on torch, or the reference on CuPy arrays."""

    def __init__(self, backend):
        self.backend, self.is_cupy = backend, backend.kind == "cupy"
        if self.is_cupy:
            import cupy

            self.cp = cupy

    def params(self, params):
        from chainrule.fast import backend as fb

        if self.is_cupy:
            return {k: self.cp.asarray(v) for k, v in params.items()}
        return fb.to_torch(params, self.backend.device, self.backend.torch_dtype)

    def images(self, x):
        import torch

        return self.cp.asarray(x) if self.is_cupy else torch.as_tensor(x, device=self.backend.device)

    @property
    def module(self):
        from chainrule.fast import pixelcnnpp as fast
        from chainrule.reference import pixelcnnpp as ref

        return ref if self.is_cupy else fast

    def f64(self, a):
        from chainrule.reference.checks import as_float64

        return as_float64(a)

    def network(self, P, config, x):
        import torch

        with torch.no_grad():
            return self.f64(self.module.network(P, config, self.images(x)))

    def log_prob(self, P, config, x, rng=None):
        return self.f64(self.module.log_prob(P, config, self.images(x), rng=rng))

    def pixel_log_probs(self, P, config, x):
        m, xs = self.module, self.images(x)
        return self.f64(m.pixel_log_probs(m.forward(P, config, xs), config, xs))

    def generate(self, P, config, u):
        """(images, their conditionals as forward's dict in float64 NumPy)."""
        from chainrule.reference import pixelcnnpp as ref

        if self.is_cupy:
            x = self.cp.asnumpy(ref.generate(P, config, self.cp.asarray(u)))
            return x, {k: self.f64(v) for k, v in ref.forward(P, config, self.cp.asarray(x)).items()}
        import torch

        from chainrule.fast import pixelcnnpp as fast

        H, W = config.height, config.width
        with torch.inference_mode():
            gen = fast.CachedGenerator(fast.checked_params(P, config), config, u.shape[0], keep_conditionals=True)
            ut = torch.as_tensor(u, device=gen.images.device)
            for r in range(H):
                for c in range(W):
                    gen.draw(ut[:, r, c])
        cond = {}
        for key in gen.conditionals[0]:
            a = self.f64(torch.stack([pp[key] for pp in gen.conditionals], dim=-2))  # (B, [C,] H W, K)
            cond[key] = a.reshape(a.shape[:-2] + (H, W, a.shape[-1]))
        return gen.images.cpu().numpy(), cond


@register("pixelcnnpp")
def pixelcnnpp_checks(backend, quick=False):
    """PixelCNN++ (reference.pixelcnnpp vs fast.pixelcnnpp) on one backend (quick: network
    output and log_prob)."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnnpp as ref

    case, side, dtype = _case(), _Side(backend), backend.dtype
    config, params, x = case["config"], case["params"], case["x"]
    low = dtype != "float64"
    P = side.params(params)

    def naive(fn):
        """The naive same-dtype baseline of fn(module, params, images_of): float32 -- the reference
        run in float32 NumPy; bfloat16 (which NumPy lacks) -- fast.pixelcnnpp on the CPU in bfloat16."""
        if not low:
            return None
        if dtype == "float32":
            return checks.naive_float32(lambda p: fn(ref, p, lambda a: a), params)
        import torch

        from chainrule.fast import backend as fb
        from chainrule.fast import pixelcnnpp as fast

        with torch.no_grad():
            return checks.as_float64(fn(fast, fb.to_torch(params, "cpu", torch.bfloat16), torch.as_tensor))

    yield checks.compare("network output", case["network"], side.network(P, config, x), dtype,
                         naive=naive(lambda m, p, im: m.network(p, config, im(x))))  # fmt: skip
    yield checks.compare("log_prob", case["log_prob"], side.log_prob(P, config, x), dtype,
                         naive=naive(lambda m, p, im: m.log_prob(p, config, im(x))))  # fmt: skip
    if quick:
        return
    case = case | _more_truth()
    yield checks.compare("log_prob with dropout (shared rng)", case["log_prob_dropout"],
                         side.log_prob(P, config, x, rng=numpy.random.default_rng(SEED + 2)), dtype,
                         naive=naive(lambda m, p, im: m.log_prob(p, config, im(x),
                                                                 rng=numpy.random.default_rng(SEED + 2))))  # fmt: skip
    if backend.kind == "torch" and not low:
        from chainrule.fast import pixelcnnpp as fast

        G = {k: v.detach().clone().requires_grad_(True) for k, v in P.items()}
        (-fast.log_prob(G, config, side.images(x)).sum() / x.size).backward()
        got = numpy.array([float(G[n].grad[i]) for n, i in case["coords"]])
        quantity = f"grad mean NLL vs finite diff ({len(got)} coords)"
        if case["grad_fd_err"] > checks.FD_ACCURACY:
            yield Result(quantity, math.inf, checks.FD_ACCURACY, False,
                         f"finite-difference truth self-consistency {case['grad_fd_err']:.2e}")  # fmt: skip
        else:
            yield checks.compare(quantity, case["grad_fd"], got, dtype)
    # generation from shared uniforms
    images, cond = side.generate(P, config, case["u"])
    redrawn = ref.sample_given(cond, config, case["u"])
    differ = int((redrawn != images).sum())
    yield Result("cached samples = sampler on own conditionals", differ, 0, differ == 0,
                 f"{images.size - differ}/{images.size} entries equal")  # fmt: skip
    truth = ref.forward(params, config, images)
    for key in truth:
        yield checks.compare(f"cached conditionals[{key}]", truth[key], cond[key], dtype,
                             naive=naive(lambda m, p, im, key=key: m.forward(p, config, im(images))[key]))  # fmt: skip
    if not low:
        differ = int((images != case["generated"]).sum())
        yield Result("cached samples = reference naive samples", differ, 0, differ == 0,
                     f"{images.size - differ}/{images.size} entries equal (float64: all must be)")  # fmt: skip
    # causality on the backend, bit for bit
    D = checks.image_dependencies(lambda img: numpy.moveaxis(side.network(P, config, img), -1, 1), x[:1],
                                  levels=config.levels, n_trials=1)  # fmt: skip
    allowed = checks.allowed_image_dependencies(D.shape[0], 3, config.height, config.width, 1)
    forbidden = int((D & ~allowed).any(axis=0).sum())
    yield Result("causality (raster order, bit for bit)", forbidden, 0, forbidden == 0,
                 f"{forbidden} (pixel, input) dependencies on the future")  # fmt: skip
    # normalization over the completions of the last two pixels
    ec, ep = case["enum_config"], side.params(case["enum_params"])
    H, W = ec.height, ec.width
    tails = checks.enumerate_sequences(2, 6)
    X = numpy.repeat(numpy.random.default_rng(SEED + 3).integers(0, 2, (1, 3, H, W)), len(tails), axis=0)
    X[:, :, H - 1, W - 2], X[:, :, H - 1, W - 1] = tails[:, :3], tails[:, 3:]
    lp = side.pixel_log_probs(ep, ec, X).reshape(len(X), -1)
    total = math.fsum(numpy.exp(lp[:, -2:].sum(axis=1)))
    yield checks.compare("sum of p over the 2^6 completions of the last 2 pixels", 1.0, total,
                         "float32" if low else "float64")  # fmt: skip
