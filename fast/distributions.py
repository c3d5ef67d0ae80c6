"""Image output distributions in torch: the twin of reference/distributions.py.

Same functions, same arguments, same errors, on torch tensors (CPU or CUDA, any float
dtype; bfloat16/float16 parameters are computed with in float32, see `compute_dtype`),
differentiable in the parameters:

    categorical_log_prob / categorical_sample
    discretized_logistic_log_prob / discretized_logistic_mixture_log_prob   (exact)
    discretized_logistic_sample / discretized_logistic_mixture_sample / discretized_logistic_value
    rgb_mixture_log_prob / rgb_mixture_sample                               (PixelCNN++ coupling)
    pack_pixelcnn_output / unpack_pixelcnn_output                           (openai/pixel-cnn layout)

The equations are in reference/distributions.py. The fast path is *exact* too: it
evaluates the same log-sigmoid identity

    log(sigma(a) - sigma(b)) = log sigma(a) + log sigma(-b) + log(1 - exp(-(a - b)))

with the exact bin-edge offsets, so in float64 it agrees with the reference to a few
ulps in every regime (a tiny scale, a far mean, a bin probability below 1e-308), and in
float32 it is as accurate as float32 allows. openai/pixel-cnn's pdf approximation is not
used: the exact form costs a handful of elementwise operations more, and the
approximation has no useful error bound where the scale is small compared with the bin
(it misses log P by a relative 0.5 for means on a bin edge with tiny scales; see
diff_tests/peers/test_distributions_mpmath.py).

Gradients (autograd) are finite wherever 1/s = exp(-log_scale) is finite in the compute
dtype (log_scale > -709 in float64, > -88 in float32); no branch a `where` discards leaks
a NaN into them.

Validation (ValueError naming the argument) makes one host synchronization per call;
models inside a training step may call the underscored functions (`_logistic_log_prob`,
`_rgb_log_prob`, `_logistic_sample`), which skip it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chainrule.fast import sampling as _sampling
from chainrule.reference import distributions as _ref

LOG_SCALE_FLOOR = _ref.LOG_SCALE_FLOOR
RGB_KEYS = _ref.RGB_KEYS
_SMALL_LOG_GAP = _ref._SMALL_LOG_GAP


# ----------------------------------------------------------------------------- validation


def _as_tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    try:
        return torch.as_tensor(a)
    except Exception as e:
        raise ValueError(f"{name}: expected a tensor, got {type(a).__name__}") from e


check_levels = _ref.check_levels


def check_pixels(x, levels: int, name: str = "x") -> torch.Tensor:
    """x as a tensor; ValueError unless it is an integer tensor with entries in [0, levels)."""
    x = _as_tensor(x, name)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer array of levels in [0, {levels}), got {x.dtype}")
    bad = (x < 0) | (x >= levels)
    if x.numel() and bool(bad.any()):
        raise ValueError(f"{name}: expected levels in [0, {levels}), got {int(x[bad].flatten()[0])}")
    return x


def check_finite(a, name: str) -> torch.Tensor:
    """a as a tensor; ValueError unless it is floating with no NaN and no infinity."""
    a = _as_tensor(a, name)
    if not a.is_floating_point():
        raise ValueError(f"{name}: expected a floating array, got {a.dtype}")
    if a.numel():
        finite = torch.isfinite(a).all()
        if not bool(finite):
            kind = "NaN" if bool(torch.isnan(a).any()) else "an infinity"
            raise ValueError(f"{name}: expected finite values, got {kind}")
    return a


def _broadcast(name_shapes) -> tuple:
    try:
        return tuple(torch.broadcast_shapes(*[tuple(s) for _, s in name_shapes]))
    except RuntimeError:
        desc = ", ".join(f"{n} {tuple(s)}" for n, s in name_shapes)
        raise ValueError(f"{name_shapes[-1][0]}: expected shapes that broadcast together, got {desc}") from None


def _check_uniforms(u, shape, device, name) -> torch.Tensor:
    u = _as_tensor(u, name).to(device)
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))
    if u.numel() and bool(outside.any()):
        raise ValueError(f"{name}: expected uniforms in [0, 1), got {float(u[outside].flatten()[0])!r}")
    return u


def compute_dtype(*tensors) -> torch.dtype:
    """The dtype the distributions compute in: the promoted floating dtype of the inputs, but at
    least float32 -- bfloat16/float16 parameters are upcast (as losses are computed in float32
    in mixed-precision training), so a bfloat16 model gets the exact log-probabilities of its
    own rounded parameters, not ones distorted by 8-bit arithmetic."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------- categorical


def categorical_log_prob(x, logits) -> torch.Tensor:
    """log softmax(logits)[x].   x: (...) int in [0, levels); logits: (..., levels) -> (...)."""
    logits = _as_tensor(logits, "logits")
    _sampling.check_logits(logits)
    x = check_pixels(x, logits.shape[-1]).to(logits.device)
    if tuple(x.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"x: expected shape {tuple(logits.shape[:-1])} (logits without the last axis), "
                         f"got {tuple(x.shape)}")  # fmt: skip
    logp = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)  # (..., levels)
    return logp.gather(-1, x[..., None].long())[..., 0]


def categorical_sample(logits, u) -> torch.Tensor:
    """Inverse-CDF sampling over the levels (`fast.sampling.sample`). -> (...) int64."""
    return _sampling.sample(logits, u)


# ----------------------------------------------------------------------------- discretized logistic


def log1mexp_of_log(log_g: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-g)) for g = exp(log_g), as reference.distributions.log1mexp_of_log."""
    g = torch.exp(log_g.clamp(_SMALL_LOG_GAP, 40.0))
    series = log_g - torch.exp(log_g.clamp(max=_SMALL_LOG_GAP)) / 2
    return torch.where(log_g < _SMALL_LOG_GAP, series, torch.log(-torch.expm1(-g)))


def _times_levels(mean: torch.Tensor, levels: int):
    """mean (levels - 1) as hi + lo, both products exact (Veltkamp's split; see the reference)."""
    p = round(-math.log2(torch.finfo(mean.dtype).eps)) + 1
    factor = 2.0 ** ((p + 1) // 2) + 1.0
    big = mean * factor
    hi = torch.where(torch.isfinite(big), big - (big - mean), mean)
    lo = mean - hi
    return hi * (levels - 1), lo * (levels - 1)


def _logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x), unchecked; x with integral values, broadcasting with mean and log_scale.
    Computed in compute_dtype (at least float32)."""
    dtype = compute_dtype(mean, log_scale)
    x, mean, log_scale = x.to(dtype), mean.to(dtype), log_scale.to(dtype)
    hi, lo = _times_levels(mean, levels)
    upper = (2 * x - (levels - 2) - hi) - lo  # (levels-1)(e_+ - m), exact up to 2 roundings
    lower = (2 * x - levels - hi) - lo  # (levels-1)(e_- - m)
    inv_scale = torch.exp(-log_scale)  # 1/s
    a = (upper / (levels - 1)) * torch.where((upper == 0) & torch.isinf(inv_scale), 0.0, inv_scale)
    b = (lower / (levels - 1)) * torch.where((lower == 0) & torch.isinf(inv_scale), 0.0, inv_scale)
    log_cdf_upper = F.logsigmoid(a)
    log_sf_lower = F.logsigmoid(-b)
    interior = log_cdf_upper + log_sf_lower + log1mexp_of_log(math.log(2.0 / (levels - 1)) - log_scale)
    return torch.where(x == 0, log_cdf_upper, torch.where(x == levels - 1, log_sf_lower, interior))


def _check_logistic(x, mean, log_scale, levels, mixture=False):
    levels = check_levels(levels)
    mean = check_finite(mean, "means" if mixture else "mean")
    log_scale = check_finite(log_scale, "log_scales" if mixture else "log_scale")
    x = check_pixels(x, levels).to(mean.device)
    xs = tuple(x.shape) + ((1,) if mixture else ())
    s = "s" if mixture else ""
    _broadcast([("x", xs), ("mean" + s, mean.shape), ("log_scale" + s, log_scale.shape)])
    xf = x.to(compute_dtype(mean, log_scale))
    return levels, (xf[..., None] if mixture else xf), mean, log_scale


def discretized_logistic_log_prob(x, mean, log_scale, levels=256) -> torch.Tensor:
    """log P(x) of the discretized logistic, exact (reference.distributions.discretized_logistic_log_prob).
    x: int in [0, levels); mean, log_scale: finite float; broadcasting -> the broadcast shape."""
    levels, xf, mean, log_scale = _check_logistic(x, mean, log_scale, levels)
    return _logistic_log_prob(xf, mean, log_scale, levels)


def _check_weights(logit_weights, means) -> torch.Tensor:
    logit_weights = _as_tensor(logit_weights, "logit_weights")
    _sampling.check_logits(logit_weights, "logit_weights")
    if logit_weights.shape[-1] != means.shape[-1]:
        raise ValueError(f"logit_weights: expected {means.shape[-1]} components on the last axis "
                         f"(as means), got shape {tuple(logit_weights.shape)}")  # fmt: skip
    return logit_weights


def _mixture_log_prob(xf, logit_weights, means, log_scales, levels):
    log_components = _logistic_log_prob(xf, means, log_scales, levels)  # (..., K)
    log_weights = torch.log_softmax(logit_weights.to(log_components.dtype), dim=-1)
    return torch.logsumexp(log_weights + log_components, dim=-1)


def discretized_logistic_mixture_log_prob(x, logit_weights, means, log_scales, levels=256) -> torch.Tensor:
    """logsumexp_k( log_softmax(logit_weights)_k + log P(x | means_k, log_scales_k) ).
    x: (...); logit_weights, means, log_scales: (..., K) -> (...)."""
    levels, xf, means, log_scales = _check_logistic(x, means, log_scales, levels, mixture=True)
    logit_weights = _check_weights(logit_weights, means)
    return _mixture_log_prob(xf, logit_weights, means, log_scales, levels)


def _logistic_value(mean, log_scale, u):
    """v = mean + exp(log_scale) log(u / (1 - u)), unchecked (v = mean where u = 1/2)."""
    dtype = compute_dtype(mean, log_scale)
    mean, log_scale, u = mean.to(dtype), log_scale.to(dtype), u.to(dtype)
    q = torch.where(u > 0, torch.log(torch.where(u > 0, u, 1.0)) - torch.log1p(-u), -math.inf)
    return mean + torch.where(q == 0, 0.0, torch.exp(log_scale) * q)


def _bin_of(v, levels: int) -> torch.Tensor:
    t = torch.floor((v + 1) * ((levels - 1) / 2) + 0.5)
    return t.clamp(0, levels - 1).long()


def _logistic_sample(mean, log_scale, u, levels: int) -> torch.Tensor:
    return _bin_of(_logistic_value(mean, log_scale, u), levels)


def _check_value_args(mean, log_scale, u):
    mean = check_finite(mean, "mean")
    log_scale = check_finite(log_scale, "log_scale")
    shape = _broadcast([("mean", mean.shape), ("log_scale", log_scale.shape)])
    return mean, log_scale, _check_uniforms(u, shape, mean.device, "u")


def discretized_logistic_value(mean, log_scale, u) -> torch.Tensor:
    """The continuous draw mean + exp(log_scale) log(u / (1 - u)) that the sampler bins."""
    return _logistic_value(*_check_value_args(mean, log_scale, u))


def discretized_logistic_sample(mean, log_scale, u, levels=256) -> torch.Tensor:
    """The logistic inverse CDF at u, binned to a level (reference.distributions). -> int64."""
    levels = check_levels(levels)
    return _logistic_sample(*_check_value_args(mean, log_scale, u), levels)


def _pick(a, k):
    return a.gather(-1, k[..., None])[..., 0]


def discretized_logistic_mixture_sample(logit_weights, means, log_scales, u_component, u_value, levels=256):
    """Component by inverse CDF at u_component, then the binned logistic inverse CDF at u_value.
    logit_weights, means, log_scales: (..., K); u_component, u_value: (...) -> (...) int64."""
    levels = check_levels(levels)
    means = check_finite(means, "means")
    log_scales = check_finite(log_scales, "log_scales")
    logit_weights = _as_tensor(logit_weights, "logit_weights")
    if not (tuple(means.shape) == tuple(log_scales.shape) == tuple(logit_weights.shape)):
        raise ValueError(f"log_scales: expected logit_weights, means and log_scales of one shape (..., K), got "
                         f"{tuple(logit_weights.shape)}, {tuple(means.shape)}, {tuple(log_scales.shape)}")  # fmt: skip
    logit_weights = _check_weights(logit_weights, means)
    u_component = _sampling.check_uniforms(u_component, means.shape[:-1], means.device, "u_component")
    u_value = _check_uniforms(u_value, means.shape[:-1], means.device, "u_value")
    k = _sampling.inverse_cdf(logit_weights, u_component)[0]  # (...) logits checked above
    return _logistic_sample(_pick(means, k), _pick(log_scales, k), u_value, levels)


# ----------------------------------------------------------------------------- RGB mixture (PixelCNN++)


def centre(x, levels: int, dtype=torch.float64) -> torch.Tensor:
    """c(x) = (2x - (levels - 1)) / (levels - 1)."""
    return (2 * x.to(dtype) - (levels - 1)) / (levels - 1)


def check_rgb_params(params) -> dict:
    """params with every entry a tensor; ValueError as reference.distributions.check_rgb_params."""
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict with keys {RGB_KEYS}, got {type(params).__name__}")
    missing = [k for k in RGB_KEYS if k not in params]
    if missing:
        raise ValueError(f"params: expected keys {RGB_KEYS}, missing {missing}")
    p = {k: _as_tensor(params[k], f"params[{k!r}]") for k in RGB_KEYS}
    w = p["logit_weights"]
    if w.ndim != 4:
        raise ValueError(f"params['logit_weights']: expected shape (B, H, W, K), got {tuple(w.shape)}")
    B, H, W, K = w.shape
    for key in RGB_KEYS[1:]:
        if tuple(p[key].shape) != (B, 3, H, W, K):
            raise ValueError(f"params[{key!r}]: expected shape {(B, 3, H, W, K)} (B, 3, H, W, K), "
                             f"got {tuple(p[key].shape)}")  # fmt: skip
        check_finite(p[key], f"params[{key!r}]")
    _sampling.check_logits(w, "params['logit_weights']")
    return p


def _rgb_log_prob(x, params, levels: int) -> torch.Tensor:
    """rgb_mixture_log_prob, unchecked. x: (B, 3, H, W) int on the params' device."""
    dtype = compute_dtype(params["means"], params["log_scales"], params["coeffs"])
    means, log_scales, coeffs = (params[k].to(dtype) for k in ("means", "log_scales", "coeffs"))
    xc = centre(x, levels, dtype)[..., None]  # (B, 3, H, W, 1)
    t = torch.tanh(coeffs)  # (B, 3, H, W, K)
    mu_g = means[:, 1] + t[:, 0] * xc[:, 0]
    mu_b = means[:, 2] + t[:, 1] * xc[:, 0] + t[:, 2] * xc[:, 1]
    mu = torch.stack([means[:, 0], mu_g, mu_b], dim=1)  # (B, 3, H, W, K)
    log_components = _logistic_log_prob(x.to(dtype)[..., None], mu, log_scales, levels).sum(dim=1)  # (B, H, W, K)
    log_weights = torch.log_softmax(params["logit_weights"].to(dtype), dim=-1)
    return torch.logsumexp(log_weights + log_components, dim=-1)


def rgb_mixture_log_prob(x, params, levels=256) -> torch.Tensor:
    """log p(pixel) of PixelCNN++'s coupled RGB mixture (reference.distributions.rgb_mixture_log_prob).
    x: (B, 3, H, W) int; params: the dict of RGB_KEYS -> (B, H, W)."""
    p = check_rgb_params(params)
    levels = check_levels(levels)
    x = _as_tensor(x, "x")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected an RGB image batch (B, 3, H, W), got shape {tuple(x.shape)}")
    x = check_pixels(x, levels).to(p["means"].device)
    if tuple(p["means"].shape[:4]) != tuple(x.shape):
        raise ValueError(f"x: expected shape {tuple(p['means'].shape[:4])} (as params), got {tuple(x.shape)}")
    return _rgb_log_prob(x, p, levels)


def _rgb_sample(params, u_component, u_value, levels: int) -> torch.Tensor:
    """rgb_mixture_sample, unchecked."""
    dtype = compute_dtype(params["means"], params["log_scales"], params["coeffs"])
    means, log_scales, coeffs = (params[k].to(dtype) for k in ("means", "log_scales", "coeffs"))
    B, _, H, W, K = means.shape
    k = _sampling.inverse_cdf(params["logit_weights"], u_component)[0]  # (B, H, W)
    kk = k[:, None].expand(B, 3, H, W)
    m, ls, c = (_pick(a, kk) for a in (means, log_scales, coeffs))  # (B, 3, H, W)
    t = torch.tanh(c)
    x_r = _logistic_sample(m[:, 0], ls[:, 0], u_value[:, 0], levels)
    c_r = centre(x_r, levels, dtype)
    x_g = _logistic_sample(m[:, 1] + t[:, 0] * c_r, ls[:, 1], u_value[:, 1], levels)
    c_g = centre(x_g, levels, dtype)
    x_b = _logistic_sample(m[:, 2] + t[:, 1] * c_r + t[:, 2] * c_g, ls[:, 2], u_value[:, 2], levels)
    return torch.stack([x_r, x_g, x_b], dim=1)


def rgb_mixture_sample(params, u_component, u_value, levels=256) -> torch.Tensor:
    """(R, G, B) of every pixel from explicit uniforms, channels in turn with the coupling
    (reference.distributions.rgb_mixture_sample). u_component (B, H, W), u_value (B, 3, H, W)
    -> (B, 3, H, W) int64."""
    p = check_rgb_params(params)
    levels = check_levels(levels)
    B, _, H, W, K = p["means"].shape
    device = p["means"].device
    u_component = _sampling.check_uniforms(u_component, (B, H, W), device, "u_component")
    u_value = _check_uniforms(u_value, (B, 3, H, W), device, "u_value")
    return _rgb_sample(p, u_component, u_value, levels)


# ----------------------------------------------------------------------------- openai/pixel-cnn layout


def unpack_pixelcnn_output(output, *, min_log_scale=LOG_SCALE_FLOOR) -> dict:
    """openai/pixel-cnn's (B, H, W, 10 K) output -> the RGB params dict (layout in the reference)."""
    output = _as_tensor(output, "output")
    if output.ndim != 4 or output.shape[-1] % 10 != 0 or output.shape[-1] == 0:
        raise ValueError(f"output: expected shape (B, H, W, 10 K) with K >= 1, got {tuple(output.shape)}")
    B, H, W, C = output.shape
    K = C // 10
    rest = output[..., K:].reshape(B, H, W, 3, 3 * K).permute(0, 3, 1, 2, 4)  # (B, 3, H, W, 3K)
    log_scales = rest[..., K : 2 * K]
    if min_log_scale is not None:
        log_scales = log_scales.clamp(min=min_log_scale)
    return {
        "logit_weights": output[..., :K].contiguous(),
        "means": rest[..., :K].contiguous(),
        "log_scales": log_scales.contiguous(),
        "coeffs": rest[..., 2 * K :].contiguous(),
    }


def pack_pixelcnn_output(params) -> torch.Tensor:
    """The RGB params dict -> openai/pixel-cnn's (B, H, W, 10 K) layout."""
    p = check_rgb_params(params)
    B, _, H, W, K = p["means"].shape
    rest = torch.cat([p["means"], p["log_scales"], p["coeffs"]], dim=-1)  # (B, 3, H, W, 3K)
    rest = rest.permute(0, 2, 3, 1, 4).reshape(B, H, W, 9 * K)
    return torch.cat([p["logit_weights"], rest], dim=-1)
