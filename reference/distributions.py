"""Output distributions of image models: a categorical over intensity levels, and the
discretized logistic (mixture) of PixelCNN++ with its RGB coupling, computed exactly.

Pixel values are integers x in [0, levels): levels = 2 for binary images, 17 for the
embedded 8x8 digits, 256 for 8-bit images.

Categorical (van den Oord et al. 2016, "Pixel Recurrent Neural Networks"):

    p(x) = softmax(logits)[x]

Discretized logistic (Salimans et al. 2017, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications", eq. 2). With the data
scaled to [-1, 1], level x has the centre and the bin

    c(x) = 2x/(levels-1) - 1,     [c - h, c + h],   h = 1/(levels-1),

the edge bins extended to (-inf, c(0) + h] and [c(levels-1) - h, +inf). For a logistic
of mean m and scale s = exp(log_scale), with sigma the logistic sigmoid,

    P(x) = sigma((c + h - m)/s) - sigma((c - h - m)/s)  = sigma(a) - sigma(b).

*Exactly*, in log space. The identity

    sigma(a) - sigma(b) = sigma(a) sigma(-b) (1 - exp(-(a - b)))

gives   log P = log sigma(a) + log sigma(-b) + log(1 - exp(-(a - b))),   a - b = 2h/s,

a sum of three terms that are all <= 0, each computed to a few ulps (log sigma(z) =
min(z, 0) - log1p(exp(-|z|)); log(1 - exp(-g)) = log(-expm1(-g))), so no cancellation
anywhere: log P keeps a relative accuracy of 1e-12 (LOG_PROB_RTOL; measured: 2e-16
typically, 6e-14 at worst, where log P ~ -e^-660 inherits a's relative error 660-fold)
where P itself underflows float64 (a tiny scale, a mean far from the bin) and where P
rounds to 1. The edge bins are
log P(0) = log sigma(a) and log P(levels-1) = log sigma(-b). The offsets of the bin
edges from the mean are computed without rounding the edges (see `_edge_offsets`).
openai/pixel-cnn instead subtracts the two sigmoids, switches to a midpoint-density
approximation where the difference falls below 1e-5, and floors the log-probability
at log(1e-12); that approximation misses log P by up to half its value for small scales
(a mean next to a bin edge), hundreds of nats.

Mixture (mixture axis last):   log p(x) = logsumexp_k( log softmax(w)_k + log P_k(x) ).

RGB coupling (PixelCNN++, sec. 2.2): one mixture component k per pixel, shared by the
three channels, and the means of G and B depend linearly on the channels before them:

    mu_R = m_R,   mu_G = m_G + tanh(c0) x_R,   mu_B = m_B + tanh(c1) x_R + tanh(c2) x_G,

x_R, x_G the centres c(x) of the observed (or already sampled) levels, so

    log p(pixel) = logsumexp_k( log pi_k + log P(x_R | m_R,k, s_R,k)
                                + log P(x_G | mu_G,k, s_G,k) + log P(x_B | mu_B,k, s_B,k) ).

RGB mixture parameters are a dict of arrays (K components):

    logit_weights (B, H, W, K)      unnormalized log mixture weights
    means         (B, 3, H, W, K)   m_R, m_G, m_B (before the coupling)
    log_scales    (B, 3, H, W, K)   log s_R, log s_G, log s_B (any finite value)
    coeffs        (B, 3, H, W, K)   the raw (pre-tanh) coupling coefficients:
                                    coeffs[:, 0] = c0 (G from R), coeffs[:, 1] = c1 (B from R),
                                    coeffs[:, 2] = c2 (B from G); axis 1 indexes c0..c2, not colours.

The log-scale floor. openai/pixel-cnn clamps log-scales at -7 (LOG_SCALE_FLOOR) inside
its loss. Here the floor belongs to the *parameterization*, not to the distribution:
`unpack_pixelcnn_output` applies it by default (as a model's output head does), and every
distribution function is exact for any finite log-scale, floored or not.

Samplers take explicit uniforms: the component by inverse CDF over the mixture weights
(`reference.sampling.sample`), the value by the logistic inverse CDF v = m + s log(u/(1-u))
binned to the level whose bin contains v, the channels R, G, B in turn, G and B coupled to
the *sampled* levels of R and G -- so samples follow exactly the distribution the
log-probabilities define (openai/pixel-cnn couples to the continuous, clipped draws).

Every function computes in the floating dtype of its float inputs (float64 for the spec;
float32 gives the naive same-dtype baseline of the tests) and never mutates its inputs.
"""

from __future__ import annotations

import contextlib
import math

from chainrule.reference import nn
from chainrule.reference import sampling
from chainrule.reference.xp import namespace

# openai/pixel-cnn's floor on log-scales (applied by `unpack_pixelcnn_output`, not by the distribution).
LOG_SCALE_FLOOR = -7.0

RGB_KEYS = ("logit_weights", "means", "log_scales", "coeffs")

# The accuracy claim of the float64 discretized logistic log-probabilities (verified against
# 80-digit mpmath in diff_tests/peers), the exact value taken at the float64 inputs:
#   one logistic:  |computed - exact| <= LOG_PROB_RTOL |exact| + TINY, in every regime, P
#                  below 1e-308 or within 1e-300 of 1 included (TINY = 2.2e-308: log P itself
#                  must be a normal float64 number to carry a relative error);
#   mixtures:      the same plus MIXTURE_LOG_PROB_ATOL, the rounding of logsumexp where p is
#                  close to 1 (log p = m + log sum exp(. - m) with m = O(1) cancels to ~0).
LOG_PROB_RTOL = 1e-12
MIXTURE_LOG_PROB_ATOL = 1e-15

# Below this log-gap, log(1 - exp(-g)) is evaluated as log g - g/2 (next term g^2/24 < 1e-18).
_SMALL_LOG_GAP = -20.0


# ----------------------------------------------------------------------------- validation


def check_levels(levels) -> int:
    """levels as an int; ValueError unless it is an int >= 2."""
    if isinstance(levels, bool) or not hasattr(levels, "__index__") or int(levels) < 2:
        raise ValueError(f"levels: expected an int >= 2, got {levels!r}")
    return int(levels)


def check_pixels(x, levels: int, name: str = "x"):
    """ValueError unless x is an integer array with every entry in [0, levels)."""
    xp = namespace(x)
    if not hasattr(x, "dtype") or x.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected an integer array of levels in [0, {levels}), got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")  # fmt: skip
    bad = (x < 0) | (x >= levels)
    if bool(xp.any(bad)):
        raise ValueError(f"{name}: expected levels in [0, {levels}), got {int(x[bad].ravel()[0])}")


def check_finite(a, name: str):
    """ValueError unless a is a floating array with no NaN and no infinity."""
    xp = namespace(a)
    if not hasattr(a, "dtype") or a.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating array, got {getattr(a, 'dtype', type(a).__name__)}")
    if bool(xp.any(xp.isnan(a))):
        raise ValueError(f"{name}: expected finite values, got NaN")
    if bool(xp.any(xp.isinf(a))):
        raise ValueError(f"{name}: expected finite values, got an infinity")


def _broadcast_shape(name_shapes) -> tuple:
    """The broadcast shape of the named shapes; ValueError naming them if they do not broadcast."""
    shape: tuple = ()
    for _, s in name_shapes:
        try:
            shape = _broadcast2(shape, tuple(s))
        except ValueError:
            desc = ", ".join(f"{n} {tuple(t)}" for n, t in name_shapes)
            raise ValueError(f"{name_shapes[-1][0]}: expected shapes that broadcast together, got {desc}") from None
    return shape


def _broadcast2(s1: tuple, s2: tuple) -> tuple:
    n = max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + s1, (1,) * (n - len(s2)) + s2
    out = []
    for d1, d2 in zip(s1, s2):
        if d1 != d2 and 1 not in (d1, d2):
            raise ValueError("shapes do not broadcast")
        out.append(max(d1, d2) if 0 not in (d1, d2) else 0)
    return tuple(out)


def _quiet(xp):
    """Silence NumPy's floating-point warnings for limits that are handled explicitly
    (exp overflowing to inf where inf is the right answer; 0 x inf in a branch `where` discards)."""
    errstate = getattr(xp, "errstate", None)
    return errstate(over="ignore", under="ignore", invalid="ignore") if errstate is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- categorical


def categorical_log_prob(x, logits):
    """log p(x) = log_softmax(logits)[x].

    x: (...) int in [0, levels); logits: (..., levels) -> (...) log-probabilities (nats).
    """
    sampling.check_logits(logits)
    check_pixels(x, logits.shape[-1])
    if tuple(x.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"x: expected shape {tuple(logits.shape[:-1])} (logits without the last axis), "
                         f"got {tuple(x.shape)}")  # fmt: skip
    xp = namespace(x, logits)
    logp = nn.log_softmax(logits, axis=-1)  # (..., levels)
    index = xp.asarray(x)[..., None].astype(xp.int64)  # (..., 1)
    return xp.take_along_axis(logp, index, axis=-1)[..., 0]  # (...)


def categorical_sample(logits, u):
    """Inverse-CDF sampling over the levels (`reference.sampling.sample`): the smallest
    level i with sum_{j<=i} p_j > u.   logits: (..., levels); u: (...) in [0, 1) -> (...) int64."""
    return sampling.sample(logits, u)


# ----------------------------------------------------------------------------- discretized logistic


def log_sigmoid(z):
    """log sigma(z) = -log(1 + exp(-z)) = min(z, 0) - log1p(exp(-|z|)), accurate for every z
    (about -exp(-z) for large z, about z for very negative z; 0 at +inf, -inf at -inf)."""
    xp = namespace(z)
    return xp.minimum(z, 0) - xp.log1p(xp.exp(-xp.abs(z)))


def log1mexp_of_log(log_g):
    """log(1 - exp(-g)) for g = exp(log_g) > 0, accurate also where g under- or overflows:
    log g - g/2 for log g < -20 (the series log g - g/2 + g^2/24 - ...), else log(-expm1(-g))."""
    xp = namespace(log_g)
    g = xp.exp(xp.clip(log_g, _SMALL_LOG_GAP, 40.0))  # exp(40): 1 - exp(-g) is 1 exactly
    series = log_g - xp.exp(xp.minimum(log_g, _SMALL_LOG_GAP)) / 2
    return xp.where(log_g < _SMALL_LOG_GAP, series, xp.log(-xp.expm1(-g)))


def _times_levels(mean, levels: int):
    """mean * (levels - 1) as an unevaluated sum hi + lo of two *exact* products.

    Veltkamp's split: mean = m_hi + m_lo with m_hi of ceil(p/2) fewer bits than the
    p-bit mantissa; for levels - 1 < 2^(p - ceil(p/2)) (2^26 in float64, 2^12 in float32)
    both m_hi (levels-1) and m_lo (levels-1) are exact. Where the split would overflow
    (|mean| > 1e299) m_hi = mean (the offset is then dominated by the mean anyway).
    """
    xp = namespace(mean)
    p = xp.finfo(mean.dtype).nmant + 1
    factor = 2.0 ** ((p + 1) // 2) + 1.0
    with _quiet(xp):
        big = mean * factor
        hi = big - (big - mean)
    hi = xp.where(xp.isfinite(big), hi, mean)
    lo = mean - hi
    return hi * (levels - 1), lo * (levels - 1)


def _edge_offsets(x, mean, levels: int):
    """(levels - 1) (e_+ - m) and (levels - 1) (e_- - m) for the bin edges e_+- = c(x) +- h.

    (levels - 1) e_+ = 2x - levels + 2 and (levels - 1) e_- = 2x - levels are integers, so
    with the exact product of `_times_levels` the offsets carry one or two roundings
    *relative to themselves* even when the mean sits next to an edge (rounding the edge
    first would cost an absolute 1e-16, which a scale of 1e-12 turns into 1e-4 in a).
    x: float, broadcast with mean.
    """
    hi, lo = _times_levels(mean, levels)
    upper = (2 * x - (levels - 2) - hi) - lo
    lower = (2 * x - levels - hi) - lo
    return upper, lower


def _standardize(offset, inv_scale, levels: int):
    """a = offset / ((levels - 1) s) with 1/s = inv_scale; 0 where the offset is 0
    and 1/s overflowed to inf (not the NaN of 0 x inf)."""
    xp = namespace(offset)
    return (offset / (levels - 1)) * xp.where((offset == 0) & xp.isinf(inv_scale), 0, inv_scale)


def _check_logistic(x, mean, log_scale, levels, mixture=False):
    """Validate and return (levels, the broadcast float x)."""
    levels = check_levels(levels)
    check_pixels(x, levels)
    check_finite(mean, "means" if mixture else "mean")
    check_finite(log_scale, "log_scales" if mixture else "log_scale")
    xs = tuple(x.shape) + ((1,) if mixture else ())
    _broadcast_shape([("x", xs), ("mean" + ("s" if mixture else ""), mean.shape),
                      ("log_scale" + ("s" if mixture else ""), log_scale.shape)])  # fmt: skip
    xp = namespace(x, mean, log_scale)
    dtype = xp.result_type(mean, log_scale)
    xf = xp.asarray(x).astype(dtype)
    return levels, (xf[..., None] if mixture else xf)


def _logistic_log_prob(x, mean, log_scale, levels: int):
    """log P(x) of the discretized logistic, unchecked; x float (integral values), broadcast."""
    xp = namespace(x, mean, log_scale)
    upper, lower = _edge_offsets(x, mean, levels)  # (levels-1)(e_+ - m), (levels-1)(e_- - m)
    with _quiet(xp):
        inv_scale = xp.exp(-log_scale)  # 1/s (inf where s underflows: a, b become +-inf or 0)
    a = _standardize(upper, inv_scale, levels)  # (e_+ - m)/s
    b = _standardize(lower, inv_scale, levels)  # (e_- - m)/s
    log_gap = math.log(2.0 / (levels - 1)) - log_scale  # log(a - b) = log(2h/s)
    log_cdf_upper = log_sigmoid(a)  # log sigma(a)
    log_sf_lower = log_sigmoid(-b)  # log (1 - sigma(b))
    interior = log_cdf_upper + log_sf_lower + log1mexp_of_log(log_gap)
    return xp.where(x == 0, log_cdf_upper, xp.where(x == levels - 1, log_sf_lower, interior))


def discretized_logistic_log_prob(x, mean, log_scale, levels=256):
    """log P(x) of a logistic(mean, exp(log_scale)) discretized to `levels` bins on [-1, 1]
    (Salimans et al. 2017, eq. 2), exact in log space (see the module docstring):

        log P = log sigma(a) + log sigma(-b) + log(1 - exp(-2h/s)),
        a = (c(x) + h - mean)/s,  b = (c(x) - h - mean)/s,  c(x) = 2x/(levels-1) - 1,  h = 1/(levels-1),

    log sigma(a) alone for x = 0 and log sigma(-b) alone for x = levels - 1.

    x: int in [0, levels); mean, log_scale: float, finite; all three broadcast together.
    Returns the broadcast shape, in the dtype of mean/log_scale. Any finite log_scale
    (no floor; see LOG_SCALE_FLOOR).
    """
    levels, xf = _check_logistic(x, mean, log_scale, levels)
    return _logistic_log_prob(xf, mean, log_scale, levels)


def _check_weights(logit_weights, means):
    sampling.check_logits(logit_weights, "logit_weights")
    if logit_weights.shape[-1] != means.shape[-1]:
        raise ValueError(f"logit_weights: expected {means.shape[-1]} components on the last axis "
                         f"(as means), got shape {tuple(logit_weights.shape)}")  # fmt: skip


def discretized_logistic_mixture_log_prob(x, logit_weights, means, log_scales, levels=256):
    """log p(x) = logsumexp_k( log_softmax(logit_weights)_k + log P(x | means_k, log_scales_k) ).

    x: (...) int in [0, levels); logit_weights, means, log_scales: (..., K) (broadcasting
    with x[..., None]) -> (...) log-probabilities (nats).
    """
    levels, xf = _check_logistic(x, means, log_scales, levels, mixture=True)
    _check_weights(logit_weights, means)
    log_components = _logistic_log_prob(xf, means, log_scales, levels)  # (..., K)
    return nn.logsumexp(nn.log_softmax(logit_weights, axis=-1) + log_components, axis=-1)  # (...)


def _check_uniforms(u, shape, name, like=None):
    """u as an array of the namespace of `like` (NumPy uniforms go to the GPU with CuPy parameters);
    ValueError unless its shape is `shape` and every entry is in [0, 1) (NaN is not)."""
    xp = namespace(u, like)
    u = xp.asarray(u)
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))
    if bool(xp.any(outside)):
        raise ValueError(f"{name}: expected uniforms in [0, 1), got {float(u[outside].ravel()[0])!r}")
    return u


def logistic_quantile(u):
    """The standard logistic inverse CDF log(u / (1 - u)) = log u - log1p(-u); -inf at u = 0."""
    xp = namespace(u)
    positive = u > 0
    return xp.where(positive, xp.log(xp.where(positive, u, 1)) - xp.log1p(-u), -xp.inf)


def bin_of(v, levels: int):
    """The level whose bin contains v in [-1, 1] coordinates: floor((v + 1)(levels - 1)/2 + 1/2),
    clipped to [0, levels - 1] (the edge bins reach to -inf and +inf). -> int64."""
    xp = namespace(v)
    t = xp.floor((v + 1) * ((levels - 1) / 2) + 0.5)
    return xp.clip(t, 0, levels - 1).astype(xp.int64)


def _logistic_value(mean, log_scale, u):
    """v = mean + exp(log_scale) log(u / (1 - u)), unchecked (v = mean where u = 1/2, even for s = inf)."""
    xp = namespace(mean, log_scale, u)
    q = logistic_quantile(u.astype(xp.result_type(mean, log_scale)))  # standard logistic draw
    with _quiet(xp):
        s = xp.exp(log_scale)
        return mean + xp.where(q == 0, 0, s * q)


def _logistic_sample(mean, log_scale, u, levels: int):
    """The binned logistic inverse CDF, unchecked."""
    return bin_of(_logistic_value(mean, log_scale, u), levels)


def discretized_logistic_value(mean, log_scale, u):
    """The continuous draw v = mean + exp(log_scale) log(u / (1 - u)) (the logistic inverse CDF
    at u, in [-1, 1] coordinates) that `discretized_logistic_sample` bins; for judging how close
    a sample came to a bin edge. mean, log_scale: float (broadcasting); u: the broadcast shape."""
    check_finite(mean, "mean")
    check_finite(log_scale, "log_scale")
    shape = _broadcast_shape([("mean", mean.shape), ("log_scale", log_scale.shape)])
    return _logistic_value(mean, log_scale, _check_uniforms(u, shape, "u", like=mean))


def discretized_logistic_sample(mean, log_scale, u, levels=256):
    """x = bin_of(mean + exp(log_scale) log(u / (1 - u))): the logistic inverse CDF at u,
    binned (see `bin_of`), so P(x = k) is exactly `discretized_logistic_log_prob`'s P(k).

    mean, log_scale: float (broadcasting); u: uniforms in [0, 1) of the broadcast shape
    -> int64 levels of that shape.
    """
    levels = check_levels(levels)
    check_finite(mean, "mean")
    check_finite(log_scale, "log_scale")
    shape = _broadcast_shape([("mean", mean.shape), ("log_scale", log_scale.shape)])
    u = _check_uniforms(u, shape, "u", like=mean)
    return _logistic_sample(mean, log_scale, u, levels)


def _pick(a, k):
    """a[..., k[...]] along the last axis. a: (..., K), k: (...) int -> (...)."""
    xp = namespace(a, k)
    return xp.take_along_axis(a, k[..., None], axis=-1)[..., 0]


def discretized_logistic_mixture_sample(logit_weights, means, log_scales, u_component, u_value, levels=256):
    """Ancestral sampling of the mixture: the component k by inverse CDF over softmax(logit_weights)
    at u_component (`reference.sampling.sample`), then the value by `discretized_logistic_sample`
    of component k at u_value.

    logit_weights, means, log_scales: (..., K); u_component, u_value: (...) -> (...) int64.
    """
    levels = check_levels(levels)
    check_finite(means, "means")
    check_finite(log_scales, "log_scales")
    if tuple(means.shape) != tuple(log_scales.shape) or tuple(logit_weights.shape) != tuple(means.shape):
        raise ValueError(f"log_scales: expected logit_weights, means and log_scales of one shape (..., K), got "
                         f"{tuple(logit_weights.shape)}, {tuple(means.shape)}, {tuple(log_scales.shape)}")  # fmt: skip
    _check_weights(logit_weights, means)
    u_component = _check_uniforms(u_component, means.shape[:-1], "u_component", like=means)
    u_value = _check_uniforms(u_value, means.shape[:-1], "u_value", like=means)
    k = sampling.sample(logit_weights, u_component)  # (...)
    return _logistic_sample(_pick(means, k), _pick(log_scales, k), u_value, levels)


# ----------------------------------------------------------------------------- RGB mixture (PixelCNN++)


def centre(x, levels: int, dtype=None):
    """The bin centre c(x) = (2x - (levels - 1)) / (levels - 1) of level x in [-1, 1] (one rounding)."""
    xp = namespace(x)
    return (2 * x.astype(dtype or xp.float64) - (levels - 1)) / (levels - 1)


def check_rgb_params(params) -> int:
    """ValueError unless params holds RGB_KEYS with shapes logit_weights (B, H, W, K) and
    means/log_scales/coeffs (B, 3, H, W, K), finite. Returns K."""
    if not isinstance(params, dict):
        raise ValueError(f"params: expected a dict with keys {RGB_KEYS}, got {type(params).__name__}")
    missing = [k for k in RGB_KEYS if k not in params]
    if missing:
        raise ValueError(f"params: expected keys {RGB_KEYS}, missing {missing}")
    w = params["logit_weights"]
    if w.ndim != 4:
        raise ValueError(f"params['logit_weights']: expected shape (B, H, W, K), got {tuple(w.shape)}")
    B, H, W, K = w.shape
    for key in RGB_KEYS[1:]:
        a = params[key]
        if tuple(a.shape) != (B, 3, H, W, K):
            raise ValueError(f"params[{key!r}]: expected shape {(B, 3, H, W, K)} (B, 3, H, W, K), got {tuple(a.shape)}")
        check_finite(a, f"params[{key!r}]")
    sampling.check_logits(w, "params['logit_weights']")
    return K


def _check_image(x, params, levels):
    levels = check_levels(levels)
    if not hasattr(x, "ndim") or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected an RGB image batch (B, 3, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    check_pixels(x, levels)
    B, _, H, W = x.shape
    if tuple(params["means"].shape[:4]) != (B, 3, H, W):
        raise ValueError(f"x: expected shape {tuple(params['means'].shape[:4])} (as params), got {tuple(x.shape)}")
    return levels


def coupled_mean_g(m_g, c0, x_r):
    """mu_G = m_G + tanh(c0) x_R   (x_R: the centre of R's level, in [-1, 1])."""
    xp = namespace(m_g)
    return m_g + xp.tanh(c0) * x_r


def coupled_mean_b(m_b, c1, c2, x_r, x_g):
    """mu_B = m_B + tanh(c1) x_R + tanh(c2) x_G."""
    xp = namespace(m_b)
    return m_b + xp.tanh(c1) * x_r + xp.tanh(c2) * x_g


def rgb_mixture_log_prob(x, params, levels=256):
    """log p(pixel) of PixelCNN++'s coupled RGB mixture (Salimans et al. 2017, sec. 2.2):

        log p(x_R, x_G, x_B) = logsumexp_k( log softmax(logit_weights)_k
                                  + log P(x_R | m_R,   s_R)
                                  + log P(x_G | m_G + tanh(c0) x_R, s_G)
                                  + log P(x_B | m_B + tanh(c1) x_R + tanh(c2) x_G, s_B) )

    with P the exact `discretized_logistic_log_prob` and x_R, x_G the centres c(x) of the levels.

    x: (B, 3, H, W) int in [0, levels), channels R, G, B; params: the dict of the module
    docstring -> (B, H, W) log-probabilities (nats) of each pixel's triple.
    """
    check_rgb_params(params)
    levels = _check_image(x, params, levels)
    xp = namespace(x, params)
    x = xp.asarray(x)
    means, log_scales, coeffs = params["means"], params["log_scales"], params["coeffs"]
    dtype = xp.result_type(means, log_scales)
    xc = centre(x, levels, dtype)[..., None]  # (B, 3, H, W, 1)
    mu_r = means[:, 0]  # (B, H, W, K)
    mu_g = coupled_mean_g(means[:, 1], coeffs[:, 0], xc[:, 0])
    mu_b = coupled_mean_b(means[:, 2], coeffs[:, 1], coeffs[:, 2], xc[:, 0], xc[:, 1])
    xf = x.astype(dtype)[..., None]  # (B, 3, H, W, 1)
    log_components = (
        _logistic_log_prob(xf[:, 0], mu_r, log_scales[:, 0], levels)
        + _logistic_log_prob(xf[:, 1], mu_g, log_scales[:, 1], levels)
        + _logistic_log_prob(xf[:, 2], mu_b, log_scales[:, 2], levels)
    )  # (B, H, W, K)
    log_weights = nn.log_softmax(params["logit_weights"], axis=-1)  # (B, H, W, K)
    return nn.logsumexp(log_weights + log_components, axis=-1)  # (B, H, W)


def rgb_mixture_sample(params, u_component, u_value, levels=256):
    """Sample every pixel's (R, G, B) from the coupled RGB mixture, from explicit uniforms:

        k   = inverse CDF of softmax(logit_weights) at u_component           (shared by R, G, B)
        x_R = discretized_logistic_sample(m_R,k, s_R,k, u_value[:, 0])
        x_G = discretized_logistic_sample(m_G,k + tanh(c0_k) c(x_R), s_G,k, u_value[:, 1])
        x_B = discretized_logistic_sample(m_B,k + tanh(c1_k) c(x_R) + tanh(c2_k) c(x_G), s_B,k, u_value[:, 2])

    params: the dict of the module docstring; u_component: (B, H, W), u_value: (B, 3, H, W),
    uniforms in [0, 1) -> x (B, 3, H, W) int64, channels R, G, B.
    """
    check_rgb_params(params)
    levels = check_levels(levels)
    xp = namespace(params)
    means, log_scales, coeffs = params["means"], params["log_scales"], params["coeffs"]
    B, _, H, W, K = means.shape
    u_component = _check_uniforms(u_component, (B, H, W), "u_component", like=means)
    u_value = _check_uniforms(u_value, (B, 3, H, W), "u_value", like=means)
    k = sampling.sample(params["logit_weights"], u_component)  # (B, H, W)
    kk = xp.broadcast_to(k[:, None], (B, 3, H, W))  # (B, 3, H, W)
    m, ls, c = (_pick(a, kk) for a in (means, log_scales, coeffs))  # (B, 3, H, W) each
    dtype = xp.result_type(means, log_scales)
    x_r = _logistic_sample(m[:, 0], ls[:, 0], u_value[:, 0], levels)  # (B, H, W)
    c_r = centre(x_r, levels, dtype)
    x_g = _logistic_sample(coupled_mean_g(m[:, 1], c[:, 0], c_r), ls[:, 1], u_value[:, 1], levels)
    c_g = centre(x_g, levels, dtype)
    x_b = _logistic_sample(coupled_mean_b(m[:, 2], c[:, 1], c[:, 2], c_r, c_g), ls[:, 2], u_value[:, 2], levels)
    return xp.stack([x_r, x_g, x_b], axis=1)  # (B, 3, H, W)


# ----------------------------------------------------------------------------- openai/pixel-cnn layout


def unpack_pixelcnn_output(output, *, min_log_scale=LOG_SCALE_FLOOR):
    """openai/pixel-cnn's output tensor -> RGB mixture params (the dict of the module docstring).

    output: (B, H, W, 10 K), channels last as in openai/pixel-cnn: channels [0, K) are the
    logit weights; the remaining 9K, reshaped to (3, 3K), give for colour c = 0, 1, 2

        means      output[..., K + 3K c + k]
        log_scales output[..., K + 3K c + K + k]
        coeffs     output[..., K + 3K c + 2K + k]   (raw; index c here is c0, c1, c2)

    min_log_scale: the floor max(log_scale, min_log_scale) of openai/pixel-cnn (-7); None
    keeps the raw values (then `pack_pixelcnn_output` inverts this exactly).
    """
    xp = namespace(output)
    if not hasattr(output, "ndim") or output.ndim != 4 or output.shape[-1] % 10 != 0 or output.shape[-1] == 0:
        raise ValueError(f"output: expected shape (B, H, W, 10 K) with K >= 1, got {tuple(getattr(output, 'shape', ()))}")
    B, H, W, C = output.shape
    K = C // 10
    rest = output[..., K:].reshape(B, H, W, 3, 3 * K)  # (B, H, W, 3, 3K)
    rest = xp.transpose(rest, (0, 3, 1, 2, 4))  # (B, 3, H, W, 3K)
    log_scales = rest[..., K : 2 * K]
    if min_log_scale is not None:
        log_scales = xp.maximum(log_scales, min_log_scale)
    return {
        "logit_weights": xp.array(output[..., :K]),  # (B, H, W, K)
        "means": xp.array(rest[..., :K]),  # (B, 3, H, W, K)
        "log_scales": xp.array(log_scales),
        "coeffs": xp.array(rest[..., 2 * K :]),
    }


def pack_pixelcnn_output(params):
    """RGB mixture params -> openai/pixel-cnn's (B, H, W, 10 K) layout (see `unpack_pixelcnn_output`)."""
    check_rgb_params(params)
    xp = namespace(params)
    B, _, H, W, K = params["means"].shape
    rest = xp.concatenate([params["means"], params["log_scales"], params["coeffs"]], axis=-1)  # (B, 3, H, W, 3K)
    rest = xp.transpose(rest, (0, 2, 3, 1, 4)).reshape(B, H, W, 9 * K)  # (B, H, W, 9K)
    return xp.concatenate([params["logit_weights"], rest], axis=-1)  # (B, H, W, 10K)
