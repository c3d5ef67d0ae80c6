"""`chainrule verify` rows for the image output distributions (reference.distributions vs
fast.distributions; the reference itself on CuPy):

    log_prob of the discretized logistic, its mixture, PixelCNN++'s coupled RGB mixture and
    the categorical, on a fixed seeded case with the edge levels 0 and levels-1 and both
    moderate and extreme parameters (tiny scales, far means, means on bin edges), under the
    tolerance table (low precision against the reference run in float32 on the parameters
    the backend holds; fast.distributions computes bfloat16 parameters in float32);
    the extreme-regime log-probabilities of float64 backends against 80-digit mpmath, held
    to the module's accuracy claim LOG_PROB_RTOL (where mpmath is installed);
    RGB samples from shared uniforms against the reference's draws from the parameters the
    backend holds (float64: every sample equal; low precision: every sample whose continuous
    draw is clear of a bin edge by JUDGE_FACTOR x the measured error of the backend's draw);
    pack/unpack of openai/pixel-cnn's layout (exact).
"""

from __future__ import annotations

import functools
import math

import numpy

from chainrule.verify import Result, register

LEVELS = 256
SEED = 2017


@functools.cache
def _case() -> dict:
    """The fixed case and its float64 reference truth (computed once per process)."""
    from chainrule.reference import distributions as ref

    rng = numpy.random.default_rng(SEED)
    n = 13
    x = rng.integers(0, LEVELS, (2, n))
    x[:, :2] = (0, LEVELS - 1)
    moderate = (rng.normal(0, 0.6, (1, n)), rng.uniform(-7, 0.5, (1, n)))
    edge = (2 * rng.integers(0, LEVELS, n) - LEVELS + 2) / (LEVELS - 1)  # upper edges of random bins
    extreme = (numpy.concatenate([rng.uniform(-60, 60, 4), edge[:9]])[None], rng.uniform(-40, -12, (1, n)))
    mean = numpy.concatenate([moderate[0], extreme[0]])  # (2, n): row 0 moderate, row 1 extreme
    log_scale = numpy.concatenate([moderate[1], extreme[1]])
    K, B, H, W = 3, 2, 3, 5
    mix = {"logit_weights": rng.normal(0, 2, (2, n, K)), "means": rng.normal(0, 0.6, (2, n, K)),
           "log_scales": rng.uniform(-7, 0.5, (2, n, K))}  # fmt: skip
    mix["means"][1] *= 40  # row 1: far means, tiny scales
    mix["log_scales"][1] -= 25
    rgb = {"logit_weights": rng.normal(0, 1, (B, H, W, K)), "means": rng.normal(0, 0.5, (B, 3, H, W, K)),
           "log_scales": rng.uniform(-4, 0, (B, 3, H, W, K)), "coeffs": rng.normal(0, 1, (B, 3, H, W, K))}  # fmt: skip
    x_rgb = rng.integers(0, LEVELS, (B, 3, H, W))
    x_rgb[0, :, 0, 0], x_rgb[0, :, 0, 1] = 0, LEVELS - 1
    logits = rng.normal(0, 3, (2, n, 17))
    x_cat = rng.integers(0, 17, (2, n))
    u_c, u_v = rng.random((B, H, W)), rng.random((B, 3, H, W))
    case = dict(x=x, logistic={"mean": mean, "log_scale": log_scale}, mix=mix, rgb=rgb, x_rgb=x_rgb,
                cat={"logits": logits}, x_cat=x_cat, u_c=u_c, u_v=u_v)  # fmt: skip
    case["truth"] = {name: fn(p) for name, (fn, p) in _functions(case).items()}
    case["mpmath"] = _mpmath_truth(x[1], mean[1], log_scale[1])
    return case


def _functions(case) -> dict:
    """name -> (reference function of a params dict, its float64 params)."""
    from chainrule.reference import distributions as ref

    x, x_rgb, x_cat = case["x"], case["x_rgb"], case["x_cat"]
    return {
        "discretized logistic log_prob": (
            lambda p: ref.discretized_logistic_log_prob(x, p["mean"], p["log_scale"], LEVELS), case["logistic"]),
        "logistic mixture log_prob": (
            lambda p: ref.discretized_logistic_mixture_log_prob(x, p["logit_weights"], p["means"], p["log_scales"],
                                                                LEVELS), case["mix"]),
        "RGB mixture log_prob": (lambda p: ref.rgb_mixture_log_prob(x_rgb, p, LEVELS), case["rgb"]),
        "categorical log_prob": (lambda p: ref.categorical_log_prob(x_cat, p["logits"]), case["cat"]),
    }  # fmt: skip


def _mpmath_truth(x, mean, log_scale):
    """Exact log P at 80 digits for the extreme row, or None without mpmath."""
    try:
        import mpmath
    except ImportError:
        return None
    mp = mpmath.mp
    out = []
    with mp.workdps(80):
        for xi, m, ls in zip(x.tolist(), mean.tolist(), log_scale.tolist()):
            m, s = mp.mpf(m), mp.exp(mp.mpf(ls))
            a = (mp.mpf(2 * xi - LEVELS + 2) / (LEVELS - 1) - m) / s if xi < LEVELS - 1 else mp.inf
            b = (mp.mpf(2 * xi - LEVELS) / (LEVELS - 1) - m) / s if xi > 0 else -mp.inf

            def sigma(z):
                return 1 / (1 + mp.exp(-z))

            if b > 0:
                out.append(mp.log(sigma(-b) - (sigma(-a) if xi < LEVELS - 1 else 0)))
            elif a < 0:
                out.append(mp.log(sigma(a) - (sigma(b) if xi > 0 else 0)))
            else:
                out.append(mp.log1p(-((sigma(b) if xi > 0 else 0) + (sigma(-a) if xi < LEVELS - 1 else 0))))
    return out


class _Side:
    """The module under test on one backend: fast.distributions (torch) or the reference on CuPy."""

    def __init__(self, backend):
        self.backend, self.dtype = backend, backend.dtype
        if backend.kind == "cupy":
            import cupy

            from chainrule.reference import distributions as mod

            self.mod, self.cp = mod, cupy
        else:
            from chainrule.fast import backend as fb
            from chainrule.fast import distributions as mod

            self.mod, self.fb, self.cp = mod, fb, None

    def params(self, p):
        if self.cp is not None:
            return {k: self.cp.asarray(v) for k, v in p.items()}
        return self.fb.to_torch(p, self.backend.device, self.backend.torch_dtype)

    def ints(self, a):
        if self.cp is not None:
            return self.cp.asarray(a)
        import torch

        return torch.as_tensor(a, device=self.backend.device)

    def uniforms(self, a):
        if self.cp is not None:
            return self.cp.asarray(a)
        import torch

        return torch.as_tensor(a, dtype=torch.float64, device=self.backend.device)

    def numpy(self, a):
        from chainrule.reference.checks import as_float64

        if self.cp is not None:
            a = a.get()
            return a if a.dtype.kind in "iu" else as_float64(a)
        if not a.is_floating_point():
            return a.detach().cpu().numpy()
        return as_float64(a)

    def functions(self, case):
        m, x, xr, xc = self.mod, self.ints(case["x"]), self.ints(case["x_rgb"]), self.ints(case["x_cat"])
        return {
            "discretized logistic log_prob": lambda p: m.discretized_logistic_log_prob(x, p["mean"], p["log_scale"], LEVELS),
            "logistic mixture log_prob": lambda p: m.discretized_logistic_mixture_log_prob(
                x, p["logit_weights"], p["means"], p["log_scales"], LEVELS),
            "RGB mixture log_prob": lambda p: m.rgb_mixture_log_prob(xr, p, LEVELS),
            "categorical log_prob": lambda p: m.categorical_log_prob(xc, p["logits"]),
        }  # fmt: skip


@register("distributions")
def distribution_checks(backend, quick=False):
    """The image output distributions on one backend (quick: the log_prob rows only)."""
    from chainrule.reference import checks
    from chainrule.reference import distributions as ref

    case = _case()
    side = _Side(backend)
    dtype = backend.dtype
    fns = side.functions(case)
    for name, (ref_fn, params) in _functions(case).items():
        P = side.params(params)
        got = side.numpy(fns[name](P))
        naive = None
        if dtype != "float64":  # the reference in float32 NumPy on the parameters the backend holds
            naive = checks.naive_float32(ref_fn, {k: side.numpy(v) for k, v in P.items()})
        yield checks.compare(name, case["truth"][name], got, dtype, naive=naive)
    if quick:
        return

    if dtype == "float64" and case["mpmath"] is not None:
        got = side.numpy(fns["discretized logistic log_prob"](side.params(case["logistic"])))[1]
        import mpmath

        tiny = numpy.finfo(numpy.float64).tiny  # below it log P is no normal float64: absolute rule
        with mpmath.mp.workdps(80):
            errs = [(abs(mpmath.mpf(float(g)) - t), abs(t)) for g, t in zip(got, case["mpmath"])]
            rel = [float(e / a) if a > tiny else (0.0 if e <= tiny else math.inf) for e, a in errs]
        worst = max(rel)
        yield Result("extreme-regime log_prob vs 80-digit mpmath (relative)", worst, ref.LOG_PROB_RTOL,
                     worst <= ref.LOG_PROB_RTOL, f"log P down to {float(min(case['mpmath'])):.3g}; "
                     f"worst relative error {worst:.2e}")  # fmt: skip

    yield _sample_result(side, case)

    P = side.params(case["rgb"])
    rounded = {k: side.numpy(v) for k, v in P.items()}
    packed = side.numpy(side.mod.pack_pixelcnn_output(P))
    back = side.mod.unpack_pixelcnn_output(side.mod.pack_pixelcnn_output(P), min_log_scale=None)
    exact = numpy.array_equal(packed, ref.pack_pixelcnn_output(rounded)) and all(
        numpy.array_equal(side.numpy(back[k]), rounded[k]) for k in ref.RGB_KEYS)
    yield Result("openai layout pack/unpack (exact)", 0.0 if exact else 1.0, 0.0, exact,
                 "bit-identical round trip" if exact else "pack/unpack differ from the reference")  # fmt: skip


def _sample_result(side, case) -> Result:
    """RGB samples from the shared uniforms against the reference's draws from the held parameters."""
    from chainrule.reference import checks
    from chainrule.reference import distributions as ref

    P = side.params(case["rgb"])
    held = {k: side.numpy(v) for k, v in P.items()}  # float64: the case itself
    got = side.numpy(side.mod.rgb_mixture_sample(P, side.uniforms(case["u_c"]), side.uniforms(case["u_v"]), LEVELS))
    truth = ref.rgb_mixture_sample(held, case["u_c"], case["u_v"], LEVELS)
    n = truth.size
    if side.dtype == "float64":
        bad = int((got != truth).sum())
        return Result("RGB samples from shared uniforms", bad, 0, bad == 0, f"{n - bad}/{n} samples equal")
    # low precision: a channel is judged where its component is clear of a CDF boundary and its
    # draw and those of the channels before it are clear of a bin edge
    import torch

    k = ref.sampling.sample(held["logit_weights"], case["u_c"])
    B, _, H, W, K = held["means"].shape
    kk = numpy.broadcast_to(k[:, None, ..., None], (B, 3, H, W, 1))
    m, ls, c = (numpy.take_along_axis(held[name], kk, -1)[..., 0] for name in ("means", "log_scales", "coeffs"))
    xc = ref.centre(truth, LEVELS)
    mu = numpy.stack([m[:, 0], ref.coupled_mean_g(m[:, 1], c[:, 0], xc[:, 0]),
                      ref.coupled_mean_b(m[:, 2], c[:, 1], c[:, 2], xc[:, 0], xc[:, 1])], 1)  # fmt: skip
    v = ref.discretized_logistic_value(mu, ls, case["u_v"])
    # the backend's own continuous draws, for the reference's components and earlier channels
    kt = torch.as_tensor(numpy.ascontiguousarray(kk), device=side.backend.device)
    dt = side.mod.compute_dtype(P["means"])
    mt, lst, ct = (P[name].gather(-1, kt)[..., 0].to(dt) for name in ("means", "log_scales", "coeffs"))
    xct, tc = torch.as_tensor(xc, device=side.backend.device).to(dt), torch.tanh(ct)
    mu_fast = torch.stack([mt[:, 0], mt[:, 1] + tc[:, 0] * xct[:, 0],
                           mt[:, 2] + tc[:, 1] * xct[:, 0] + tc[:, 2] * xct[:, 1]], 1)  # fmt: skip
    v_fast = side.numpy(side.mod.discretized_logistic_value(mu_fast, lst, side.uniforms(case["u_v"])))
    finite = numpy.isfinite(v)
    err = float(numpy.abs(v_fast[finite] - v[finite]).max(initial=0.0))
    t = (v + 1) * (LEVELS - 1) / 2
    margin = numpy.abs(t - (numpy.clip(numpy.round(t - 0.5), 0, LEVELS - 2) + 0.5))
    cdf = numpy.cumsum(ref.nn.softmax(held["logit_weights"]), -1)
    comp_ok = numpy.abs(cdf - case["u_c"][..., None]).min(-1) > checks.JUDGE_FACTOR * (K + 2) * 2.0**-52
    judged = numpy.cumprod(margin > checks.JUDGE_FACTOR * err * (LEVELS - 1) / 2, axis=1).astype(bool)
    judged &= comp_ok[:, None]
    bad = int((judged & (got != truth)).sum())
    need = checks.MIN_JUDGED.get(side.dtype, checks.MIN_JUDGED["bfloat16"])["sample"]
    ok = bad == 0 and judged.sum() >= need * n
    return Result("RGB samples from shared uniforms", bad, 0, ok,
                  f"{int(judged.sum())}/{n} samples judged (need {math.ceil(need * n)}), {bad} differ")  # fmt: skip
