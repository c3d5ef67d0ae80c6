"""`chainrule verify` rows for PixelCNN and Gated PixelCNN (module "pixelcnn").

On each backend, against the float64 NumPy reference on fixed seeded cases:
logits of a plain RGB PixelCNN, log_prob of a class- and spatially-conditioned RGB
Gated PixelCNN (images of all 0 and all levels-1 included), gradients of its mean NLL
(torch backends; vs finite differences of the reference), the entries sampled by the
cached generator from shared uniforms; and on the backend itself: causality in raster
and channel order (bit for bit), normalization over the 16 binary 2x2 images, the
plain PixelCNN's receptive field = what its masks reach (blind spot missed), the Gated
PixelCNN's = every earlier pixel.
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import Result, register

PLAIN = dict(kind="pixelcnn", channels=3, height=4, width=5, levels=7, hidden=7, n_layers=2, kernel_size=3,
             input_kernel=5)  # fmt: skip
GATED = dict(kind="gated", channels=3, height=3, width=5, levels=5, hidden=5, n_layers=3, kernel_size=3,
             input_kernel=5, num_classes=3, cond_channels=2)  # fmt: skip
BINARY = dict(kind="gated", channels=1, height=2, width=2, levels=2, hidden=4, n_layers=2, kernel_size=3,
              input_kernel=3, num_classes=2)  # fmt: skip
FIELD = dict(channels=1, height=5, width=9, levels=4, hidden=8, kernel_size=3, input_kernel=5)
FIELD_POSITION = (4, 3)
SEED, B = 4321, 3


def _sequence(a):
    """(B, C, H, W, ...) -> (B, H W C, ...): the chain-rule order."""
    a = numpy.moveaxis(numpy.asarray(a), 1, 3)
    return a.reshape((a.shape[0], -1) + a.shape[4:])


@functools.cache
def _case() -> dict:
    from chainrule.reference import pixelcnn as pc

    rng = numpy.random.default_rng(SEED)
    case = {}
    for name, args in (("plain", PLAIN), ("gated", GATED)):
        config = pc.Config(**args)
        params = pc.random_params(config, rng)
        x = rng.integers(0, config.levels, (B, config.channels, config.height, config.width))
        x[0], x[1] = 0, config.levels - 1  # the edge bins
        cond = None
        if config.conditional:
            cond = {"class": rng.integers(0, config.num_classes, B),
                    "spatial": rng.normal(size=(B, config.cond_channels, config.height, config.width))}  # fmt: skip
        case[name] = dict(config=config, params=params, x=x, cond=cond, u=rng.random(x.shape))
    g = case["gated"]
    case["plain"]["logits"] = pc.forward(case["plain"]["params"], case["plain"]["config"], case["plain"]["x"])
    g["log_prob"] = pc.log_prob(g["params"], g["config"], g["x"], cond=g["cond"])
    g["grad_coords"] = [("layers.0.v.w", (1, 2, 0, 3)), ("layers.1.h.w", (7, 4, 0, 0)),
                        ("layers.2.link.w", (3, 8, 0, 0)), ("layers.0.v_class", (2, 6)),
                        ("layers.1.h_spatial.w", (2, 1, 0, 0)), ("out.1.w", (12, 4, 0, 0))]  # fmt: skip
    binary = pc.Config(**BINARY)
    case["binary"] = dict(config=binary, params=pc.random_params(binary, rng))
    for kind, layers in (("pixelcnn", 3), ("gated", 5)):
        config = pc.Config(kind=kind, n_layers=layers, **FIELD)
        case["field_" + kind] = dict(config=config, params=pc.random_params(config, rng),
                                     x=rng.integers(0, 4, (3, 1, FIELD["height"], FIELD["width"])))  # fmt: skip
    return case


@functools.cache
def _grad_truth():
    """Finite differences of the Gated case's mean NLL at its grad_coords (float64 reference;
    computed once, when the gradient row first runs)."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnn as pc

    g = _case()["gated"]
    dims = g["x"][0].size

    def mean_nll(p):
        return -float(numpy.mean(pc.log_prob(p, g["config"], g["x"], cond=g["cond"]))) / dims

    return numpy.array([checks.finite_difference_grad(mean_nll, g["params"], n, i).value for n, i in g["grad_coords"]])


class _Impl:
    """The backend's side: fast.pixelcnn on torch, or the reference itself on CuPy arrays."""

    def __init__(self, backend):
        self.cupy = backend.kind == "cupy"
        if self.cupy:
            import cupy

            from chainrule.reference import pixelcnn

            self.xp, self.model = cupy, pixelcnn
        else:
            import torch

            from chainrule.fast import backend as fb
            from chainrule.fast import pixelcnn

            self.torch, self.fb, self.model = torch, fb, pixelcnn
        self.backend = backend

    def params(self, params):
        if self.cupy:
            return {k: self.xp.asarray(v) for k, v in params.items()}
        return self.fb.to_torch(params, device=self.backend.device, dtype=self.backend.torch_dtype)

    def array(self, a):
        a = numpy.asarray(a)
        if self.cupy:
            return self.xp.asarray(a)
        if numpy.issubdtype(a.dtype, numpy.integer):
            return self.torch.as_tensor(a, device=self.backend.device)
        return self.torch.as_tensor(a, device=self.backend.device, dtype=self.backend.torch_dtype)

    def cond(self, cond):
        return None if cond is None else {k: self.array(v) for k, v in cond.items()}

    def numpy(self, a):
        from chainrule.reference.checks import as_float64

        if self.cupy:
            a = a.get()
        elif a.is_floating_point():
            return as_float64(a)
        else:
            a = a.detach().cpu().numpy()
        return numpy.asarray(a)

    def forward(self, P, config, x, cond=None, naive=False):
        kw = {} if self.cupy else {"impl": "taps" if naive else "conv2d"}
        return self.numpy(self.model.forward(P, config, self.array(x), cond=self.cond(cond), **kw))

    def log_prob(self, P, config, x, cond=None, naive=False):
        kw = {} if self.cupy else {"impl": "taps" if naive else "conv2d"}
        return self.numpy(self.model.log_prob(P, config, self.array(x), cond=self.cond(cond), **kw))

    def generate(self, P, config, u, cond=None):
        return self.numpy(self.model.generate(P, config, self.array(u) if self.cupy else u, cond=self.cond(cond)))


def _naive(impl, dtype, reference_fn, method, P, params, config, x, cond=None):
    from chainrule.reference import checks

    if dtype == "float64" or impl.cupy:
        return None
    if dtype == "float32":
        return checks.naive_float32(reference_fn, params, config, x, cond=cond)
    return method(P, config, x, cond, naive=True)


@register("pixelcnn")
def pixelcnn_checks(backend, quick=False):
    """PixelCNN and Gated PixelCNN (reference.pixelcnn vs fast.pixelcnn) on one backend (quick:
    the plain logits and the Gated log_prob)."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnn as pc

    case = _case()
    dtype = backend.dtype
    impl = _Impl(backend)

    p = case["plain"]
    P = impl.params(p["params"])
    naive = _naive(impl, dtype, pc.forward, impl.forward, P, p["params"], p["config"], p["x"])
    yield checks.compare("PixelCNN logits", p["logits"], impl.forward(P, p["config"], p["x"]), dtype, naive=naive)

    g = case["gated"]
    G = impl.params(g["params"])
    naive = _naive(impl, dtype, pc.log_prob, impl.log_prob, G, g["params"], g["config"], g["x"], g["cond"])
    got = impl.log_prob(G, g["config"], g["x"], g["cond"])
    yield checks.compare("Gated (class+spatial) log_prob", g["log_prob"], got, dtype, naive=naive)
    if quick:
        return
    if not impl.cupy:
        yield checks.compare("Gated grad mean NLL", _grad_truth(), _grad(impl, g, "conv2d"), dtype,
                             naive=None if dtype == "float64" else _grad(impl, g, "taps"))  # fmt: skip

    for name, c in (("PixelCNN", p), ("Gated", g)):
        Pc = P if c is p else G
        x = impl.generate(Pc, c["config"], c["u"], c["cond"]).astype(numpy.int64)
        reference = _sequence(pc.forward(c["params"], c["config"], x, cond=c["cond"]))
        fast = _sequence(impl.forward(Pc, c["config"], x, c["cond"]))
        prompt = numpy.zeros((B, 1), dtype=numpy.int64)
        yield checks.compare_tokens(f"{name} cached samples (shared u)", prompt,
                                    numpy.concatenate([prompt, _sequence(x)], axis=1), reference, dtype,
                                    u=_sequence(c["u"]), fast=fast)  # fmt: skip

    yield _causality(impl, p, P, "PixelCNN")
    yield _causality(impl, g, G, "Gated (class+spatial)")
    yield _normalization(impl, case["binary"], dtype)
    yield _field(impl, case["field_pixelcnn"])
    yield _field(impl, case["field_gated"])


def _grad(impl, g, which):
    P = {k: v.detach().clone().requires_grad_(True) for k, v in impl.params(g["params"]).items()}
    x = g["x"]
    lp = impl.model.log_prob(P, g["config"], impl.array(x), cond=impl.cond(g["cond"]), impl=which)
    (-lp.mean() / x[0].size).backward()
    return numpy.array([float(P[n].grad[i]) for n, i in g["grad_coords"]])


def _causality(impl, c, P, name) -> Result:
    """The dependency tensor of x -> logits on the backend, bit for bit; max_err = forbidden dependencies."""
    from chainrule.reference import checks

    config = c["config"]
    D = checks.image_dependencies(lambda img: impl.forward(P, config, img, c["cond"]), c["x"], levels=config.levels,
                                  n_trials=1)  # fmt: skip
    allowed = checks.allowed_image_dependencies(config.channels, config.channels, config.height, config.width,
                                                config.channels)  # fmt: skip
    forbidden = int((D & ~allowed).sum())
    note = (f"raster + RGB channel order: {forbidden} dependencies on later entries, "
            f"{int(D.sum())} of {int(allowed.sum())} allowed ones present")  # fmt: skip
    return Result(f"{name} causality (bit-exact)", forbidden, 0, forbidden == 0, note)


def _normalization(impl, c, dtype) -> Result:
    from chainrule.reference import checks

    config = c["config"]
    P = impl.params(c["params"])
    totals = []
    for k in range(config.num_classes):
        lp = checks.enumerate_log_probs(
            lambda s: impl.log_prob(P, config, s.reshape(-1, 1, 2, 2), {"class": numpy.full(len(s), k)}), 2, 4)
        totals.append(float(numpy.exp(lp).sum()))
    err = max(abs(t - 1.0) for t in totals)
    bound = checks.tolerance(dtype).atol
    return Result("Gated (class) sum p over 16 binary 2x2", err, bound, err <= bound,
                  "per class: " + ", ".join(f"{t:.15f}" for t in totals))  # fmt: skip


def _field(impl, c) -> Result:
    """Receptive field at the last pixel, measured on the backend: PixelCNN = what its masks reach
    (the blind spot missed), Gated PixelCNN = every earlier pixel. max_err = pixels that differ."""
    from chainrule.reference import checks
    from chainrule.reference import pixelcnn as pc

    config = c["config"]
    P = impl.params(c["params"])
    rf = checks.receptive_field(lambda img: impl.forward(P, config, img), c["x"], (0,) + FIELD_POSITION,
                                levels=config.levels)[0]  # fmt: skip
    H, W = config.height, config.width
    earlier = (numpy.arange(H)[:, None] * W + numpy.arange(W)) < FIELD_POSITION[0] * W + FIELD_POSITION[1]
    if config.kind == "pixelcnn":
        want, blind = pc.reachable(config, FIELD_POSITION), pc.blind_spot(config, FIELD_POSITION)
        wrong = int((rf != want).sum())
        ok = wrong == 0 and blind.any() and not (rf & blind).any()
        note = f"{int(rf.sum())} of {int(earlier.sum())} earlier pixels seen; blind spot of {int(blind.sum())} missed"
        return Result("PixelCNN receptive field (blind spot)", wrong, 0, ok, note)
    wrong = int((rf != earlier).sum())
    return Result("Gated receptive field (complete)", wrong, 0, wrong == 0,
                  f"{int(rf.sum())} of {int(earlier.sum())} earlier pixels seen")  # fmt: skip
