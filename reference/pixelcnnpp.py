"""PixelCNN++: two shifted convolution streams, gated resnets, down- and up-sampling with
skip connections, and a discretized logistic mixture output with RGB coupling.

Salimans, Karpathy, Chen, Kingma 2017, "PixelCNN++: Improving the PixelCNN with
Discretized Logistic Mixture Likelihood and Other Modifications" (ICLR 2017); the
architecture of its public implementation (openai/pixel-cnn, pixel_cnn_pp/model.py),
written here as float64 NumPy without weight normalization (see `init`).

Images are (B, C, H, W) integer levels in [0, levels), C = 3 (RGB) or 1 (grayscale),
predicted in raster-scan order; the three channels of a pixel share one network output
and are coupled inside the distribution (reference.distributions.rgb_mixture_log_prob):

    p(x) = prod_{i in raster order} p(x_i | x_<i),
    p(x_i | x_<i) = sum_k pi_k  L(R | m_R,k, s_R,k) L(G | m_G,k + c0_k R, s_G,k)
                                L(B | m_B,k + c1_k R + c2_k G, s_B,k)

with L the discretized logistic, (pi, m, s, c) = the network output at pixel i.

The network (C = nr_filters, feature maps channels-last (B, H, W, C) inside this module):

    x_in   = [ 2 x / (levels - 1) - 1 , 1 ]          image in [-1, 1] plus a channel of ones
    u_0    = down_shift( down_shifted_conv[2x3](x_in) )                     sees rows above
    ul_0   = down_shift( down_shifted_conv[1x3](x_in) )                     sees rows above and
             + right_shift( down_right_shifted_conv[2x1](x_in) )            pixels to the left
    up pass, 3 resolutions (H, H/2, H/4), nr_resnet blocks each, stride-2 convs between:
        u  <- gated_resnet(u,  conv = down_shifted[2x3])
        ul <- gated_resnet(ul, a = u, conv = down_right_shifted[2x2])
    (every u, ul of the up pass is pushed on a stack)
    down pass, resolutions H/4 (nr_resnet blocks), H/2 and H (nr_resnet + 1 blocks),
    stride-2 transposed convs between:
        u  <- gated_resnet(u,  a = pop(u stack))
        ul <- gated_resnet(ul, a = [u, pop(ul stack)])
    out    = nin( elu(ul) )   -> 10 K channels (RGB) or 3 K (grayscale), K = nr_logistic_mix

    gated_resnet(x, a) = x + A * sigmoid(G),   [A, G] = conv2( dropout( concat_elu(c1) ) ),
                         c1 = conv1( concat_elu(x) ) + nin( concat_elu(a) )
    concat_elu(x)      = elu([x, -x])   (channels doubled)

Why it is causal: a down-shifted convolution at (r, c) reads rows r - kh + 1 .. r, and the
shift moves everything one row down, so u at row r sees only rows < r; the down-right
shifted stream at (r, c) sees rows < r and row r left of c. Stride-2 convolutions read
full-resolution rows 2i - 1, 2i for low-resolution row i and the transposed convolutions
write low-resolution row i to rows 2i, 2i + 1 only, so the order survives the resampling.
properties/test_pixelcnnpp.py checks it bit for bit.

Parameters (flat dict of float64 arrays). Convolution weights are (kh, kw, in, out):
    y[n, i, j] = b + sum_{a, c} xpad[n, s i + a, s j + c] @ w[a, c]
and transposed-convolution weights (kh, kw, in, out):  y[n, s i + a, s j + c] += x[n, i, j] @ w[a, c].
(openai/pixel-cnn's TF tensors: conv V (kh, kw, in, out), deconv V (kh, kw, out, in); with
weight normalization W = g V / ||V||, which is what to put here.)

    init.u.w (2, 3, C_in + 1, C)       init.ul_above.w (1, 3, C_in + 1, C)   init.ul_left.w (2, 1, C_in + 1, C)
    up.{level}.{k}.{u,ul}.conv1.w (kh, kw, 2C, C)   .aux.w (2 A, C)   .conv2.w (kh, kw, 2C, 2C)
    down.{level}.{k}.{u,ul}.*         as up, A = C for u, 2C for ul (the concatenation [u, skip])
    downsample.{0,1}.{u,ul}.w (kh, kw, C, C)         stride-2 conv, level -> level + 1
    upsample.{0,1}.{u,ul}.w (kh, kw, C, C)           stride-2 transposed conv, level + 1 -> level
    out.w (C, 10 K or 3 K)
each with its bias `.b` (out,). (kh, kw) = (2, 3) for the u stream, (2, 2) for ul.
Up-pass u blocks have no auxiliary input (no `aux`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from chainrule.reference import distributions as dist, validate
from chainrule.reference.xp import namespace

LEVELS = 3  # resolutions H, H/2, H/4 (two stride-2 down-samplings), as in the paper
U_KERNEL = (2, 3)  # the vertical (down-shifted) stream
UL_KERNEL = (2, 2)  # the vertical-and-horizontal (down-right-shifted) stream


# ----------------------------------------------------------------------------- config


def _positive_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Config:
    """PixelCNN++ hyper-parameters.

    height, width: image size, multiples of 4 (two stride-2 down-samplings).
    channels: 3 (RGB, coupled mixture) or 1 (grayscale mixture).
    nr_filters: C, the width of both streams (the paper: 160).
    nr_resnet: gated resnet blocks per resolution in the up pass (the paper: 5).
    nr_logistic_mix: K mixture components (the paper: 10).
    levels: intensities per channel (256 for 8-bit images).
    dropout_p: dropout rate inside every gated resnet (the paper: 0.5), applied only
        when `forward`/`log_prob` get an rng; sampling never drops out.
    min_log_scale: log-scales are clamped below at this value (openai/pixel-cnn: -7);
        None: no clamp.
    """

    height: int
    width: int
    channels: int = 3
    nr_filters: int = 160
    nr_resnet: int = 5
    nr_logistic_mix: int = 10
    levels: int = 256
    dropout_p: float = 0.5
    min_log_scale: float | None = -7.0

    def __post_init__(self):
        for name in ("height", "width", "nr_filters", "nr_resnet", "nr_logistic_mix"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"Config.{name}: expected a positive int, got {getattr(self, name)!r}")
        for name in ("height", "width"):
            if getattr(self, name) % 4:
                raise ValueError(
                    f"Config.{name}: expected a multiple of 4 (two stride-2 down-samplings), got {getattr(self, name)}"
                )
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"Config.channels: expected 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if not _positive_int(self.levels) or self.levels < 2:
            raise ValueError(f"Config.levels: expected an int >= 2, got {self.levels!r}")
        p = self.dropout_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise ValueError(f"Config.dropout_p: expected a float in [0, 1), got {p!r}")
        m = self.min_log_scale
        if m is not None and (not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m)):
            raise ValueError(f"Config.min_log_scale: expected a finite float or None, got {m!r}")

    @property
    def n_out(self) -> int:
        """Output channels of the network: 10 K (RGB: pi, and m, s, c per channel) or 3 K."""
        return (10 if self.channels == 3 else 3) * self.nr_logistic_mix


def _blocks(config: Config):
    """(pass, level, k, stream, kernel, aux channels) of every gated resnet, in network order."""
    C, R = config.nr_filters, config.nr_resnet
    out = []
    for level in range(LEVELS):
        for k in range(R):
            out.append(("up", level, k, "u", U_KERNEL, 0))
            out.append(("up", level, k, "ul", UL_KERNEL, C))
    for level in reversed(range(LEVELS)):
        for k in range(R + (level < LEVELS - 1)):
            out.append(("down", level, k, "u", U_KERNEL, C))
            out.append(("down", level, k, "ul", UL_KERNEL, 2 * C))
    return out


def block_name(pass_: str, level: int, k: int, stream: str) -> str:
    return f"{pass_}.{level}.{k}.{stream}."


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (the contract `check_params` enforces)."""
    C, cin = config.nr_filters, config.channels + 1
    shapes = {
        "init.u.w": (*U_KERNEL, cin, C), "init.u.b": (C,),
        "init.ul_above.w": (1, 3, cin, C), "init.ul_above.b": (C,),
        "init.ul_left.w": (2, 1, cin, C), "init.ul_left.b": (C,),
    }  # fmt: skip
    for pass_, level, k, stream, (kh, kw), aux in _blocks(config):
        p = block_name(pass_, level, k, stream)
        shapes[p + "conv1.w"], shapes[p + "conv1.b"] = (kh, kw, 2 * C, C), (C,)
        if aux:
            shapes[p + "aux.w"], shapes[p + "aux.b"] = (2 * aux, C), (C,)
        shapes[p + "conv2.w"], shapes[p + "conv2.b"] = (kh, kw, 2 * C, 2 * C), (2 * C,)
    for level in range(LEVELS - 1):
        for kind in ("downsample", "upsample"):
            shapes[f"{kind}.{level}.u.w"], shapes[f"{kind}.{level}.u.b"] = (*U_KERNEL, C, C), (C,)
            shapes[f"{kind}.{level}.ul.w"], shapes[f"{kind}.{level}.ul.b"] = (*UL_KERNEL, C, C), (C,)
    shapes["out.w"], shapes["out.b"] = (C, config.n_out), (config.n_out,)
    return shapes


def _fan_in(shape) -> int:
    return int(numpy.prod(shape[:-1]))


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """Variance-scaling initialization: weights N(0, 1 / fan_in), the second convolution of
    every gated resnet N(0, (0.1^2) / fan_in) (the paper's init_scale 0.1: blocks start near
    the identity), biases 0.

    openai/pixel-cnn instead trains weight-normalized layers, W = g V / ||V||, with a
    data-dependent initialization (g, b set from the statistics of a first batch so every
    pre-activation starts with zero mean and unit variance). Weight normalization is a
    reparameterization of the same function: pass the effective W = g V / ||V|| here.
    The data-dependent initialization is a training recipe, not part of the model; it is
    not reproduced. Returns float64 NumPy arrays, drawn in the order of `param_shapes`.
    """
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".b"):
            params[name] = numpy.zeros(shape)
        else:
            scale = 0.1 if name.endswith("conv2.w") else 1.0
            params[name] = rng.normal(0.0, scale / math.sqrt(_fan_in(shape)), shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters for tests: weights N(0, 1 / fan_in), biases N(0, 0.2^2) -- every gate
    open or shut by O(1), every bias visible, so that a wrong shift or a dropped term
    changes the output by O(1), not by the 0.1 of `init`'s residual branches.
    Drawn in the order of `param_shapes`; returns float64 NumPy arrays."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".b"):
            params[name] = rng.normal(0.0, 0.2, shape)
        else:
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(_fan_in(shape)), shape)
    return params


# ----------------------------------------------------------------------------- validation


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    validate.check_param_shapes(params, param_shapes(config), "params")


def check_images(x, config: Config, name: str = "x") -> None:
    """ValueError unless x is a (B, C, H, W) integer array of the config's shape, levels in [0, levels)."""
    if getattr(getattr(x, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"{name}: expected an integer array, got {getattr(x, 'dtype', type(x))}")
    want = (config.channels, config.height, config.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, want))}) with B >= 1, got {tuple(x.shape)}")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= config.levels:
        raise ValueError(f"{name}: levels must lie in [0, {config.levels}), got {lo if lo < 0 else hi}")


# ----------------------------------------------------------------------------- layers


def concat_elu(x):
    """concat_elu(x) = elu([x, -x]) along the channel (last) axis: (..., C) -> (..., 2C).
    elu(z) = z for z > 0, exp(z) - 1 otherwise."""
    xp = namespace(x)
    return elu(xp.concatenate([x, -x], axis=-1))


def elu(x):
    """elu(z) = z for z > 0, exp(z) - 1 otherwise."""
    xp = namespace(x)
    return xp.where(x > 0, x, xp.expm1(xp.minimum(x, 0.0)))


def sigmoid(x):
    """sigma(z) = 1 / (1 + exp(-z)), computed as (1 + tanh(z / 2)) / 2 (no overflow)."""
    xp = namespace(x)
    return 0.5 * (1.0 + xp.tanh(0.5 * x))


def nin(x, w, b):
    """Network-in-network (a 1x1 convolution): y = x W + b.   x (..., I), w (I, O) -> (..., O)."""
    return x @ w + b


def conv2d(x, w, b, stride: int = 1, pad=(0, 0, 0, 0)):
    """2-D convolution, channels-last, zero padding (top, bottom, left, right), VALID after padding:

        y[n, i, j] = b + sum_{a < kh, c < kw} xpad[n, s i + a, s j + c] @ w[a, c]

    x: (B, H, W, I), w: (kh, kw, I, O), b: (O,) -> (B, Ho, Wo, O),
    Ho = (H + top + bottom - kh) // s + 1 (Wo likewise).
    """
    xp = namespace(x, w)
    top, bottom, left, right = pad
    xpad = xp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw = w.shape[:2]
    Ho = (xpad.shape[1] - kh) // stride + 1
    Wo = (xpad.shape[2] - kw) // stride + 1
    y = xp.zeros((x.shape[0], Ho, Wo, w.shape[3]), dtype=x.dtype)
    for a in range(kh):
        for c in range(kw):
            window = xpad[:, a : a + stride * (Ho - 1) + 1 : stride, c : c + stride * (Wo - 1) + 1 : stride]
            y = y + window @ w[a, c]  # (B, Ho, Wo, O)
    return y + b


def conv_transpose2d(x, w, b, stride: int):
    """2-D transposed convolution (the adjoint of `conv2d` with the same stride), channels-last:

        y[n, s i + a, s j + c] += x[n, i, j] @ w[a, c]        then + b

    x: (B, H, W, I), w: (kh, kw, I, O) -> (B, s (H - 1) + kh, s (W - 1) + kw, O) (uncropped).
    """
    xp = namespace(x, w)
    B, H, W, _ = x.shape
    kh, kw = w.shape[:2]
    y = xp.zeros((B, stride * (H - 1) + kh, stride * (W - 1) + kw, w.shape[3]), dtype=x.dtype)
    for a in range(kh):
        for c in range(kw):
            y[:, a : a + stride * (H - 1) + 1 : stride, c : c + stride * (W - 1) + 1 : stride] += x @ w[a, c]
    return y + b


def down_shifted_conv2d(x, w, b, stride: int = 1):
    """Convolution whose output at (i, j) reads input rows s i - kh + 1 .. s i and the kw
    columns centred on s j: zero padding kh - 1 on top, (kw - 1) / 2 left and right."""
    kh, kw = w.shape[:2]
    return conv2d(x, w, b, stride, ((kh - 1), 0, (kw - 1) // 2, (kw - 1) // 2))


def down_right_shifted_conv2d(x, w, b, stride: int = 1):
    """Convolution whose output at (i, j) reads input rows s i - kh + 1 .. s i and columns
    s j - kw + 1 .. s j: zero padding kh - 1 on top, kw - 1 on the left."""
    kh, kw = w.shape[:2]
    return conv2d(x, w, b, stride, ((kh - 1), 0, (kw - 1), 0))


def down_shifted_deconv2d(x, w, b, stride: int = 2):
    """Transposed convolution up-sampling (H, W) -> (s H, s W), cropped so that input row i
    reaches output rows s i .. s i + kh - 1 only (never above): rows [0, s H), columns
    [(kw - 1) / 2, (kw - 1) / 2 + s W) of `conv_transpose2d`."""
    kw = w.shape[1]
    y = conv_transpose2d(x, w, b, stride)
    H, W = x.shape[1], x.shape[2]
    return y[:, : stride * H, (kw - 1) // 2 : (kw - 1) // 2 + stride * W]


def down_right_shifted_deconv2d(x, w, b, stride: int = 2):
    """Transposed convolution up-sampling (H, W) -> (s H, s W), input (i, j) reaching
    output rows s i .., columns s j .. only: rows [0, s H), columns [0, s W)."""
    y = conv_transpose2d(x, w, b, stride)
    return y[:, : stride * x.shape[1], : stride * x.shape[2]]


def down_shift(x):
    """Move every row one down, row 0 becomes zeros:  y[:, i] = x[:, i - 1], y[:, 0] = 0.  (B, H, W, C)."""
    xp = namespace(x)
    return xp.concatenate([xp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def right_shift(x):
    """Move every column one right, column 0 becomes zeros:  y[:, :, j] = x[:, :, j - 1].  (B, H, W, C)."""
    xp = namespace(x)
    return xp.concatenate([xp.zeros_like(x[:, :, :1]), x[:, :, :-1]], axis=2)


def dropout(x, p: float, rng):
    """Inverted dropout: keep each entry with probability 1 - p, scale kept entries by 1 / (1 - p).

    The mask is  rng.random(x.shape) >= p  (a NumPy Generator, drawn in x's channels-last
    shape), so the same rng state gives the same mask everywhere. rng None or p = 0: identity.
    """
    if rng is None or p == 0.0:
        return x
    xp = namespace(x)
    keep = xp.asarray(rng.random(x.shape) >= p)
    return xp.where(keep, x / x.dtype.type(1.0 - p), x.dtype.type(0.0))


def gated_resnet(params: dict, prefix: str, x, a, conv, dropout_p: float = 0.0, rng=None):
    """x + A * sigmoid(G), with [A, G] = conv2(dropout(concat_elu(c1))) split in two halves and

        c1 = conv1(concat_elu(x)) + nin(concat_elu(a))        (the nin term only when a is given)

    x: (B, H, W, C), a: (B, H, W, A) or None; conv: down_shifted_conv2d or
    down_right_shifted_conv2d. -> (B, H, W, C).
    """
    C = x.shape[-1]
    c1 = conv(concat_elu(x), params[prefix + "conv1.w"], params[prefix + "conv1.b"])  # (B, H, W, C)
    if a is not None:
        c1 = c1 + nin(concat_elu(a), params[prefix + "aux.w"], params[prefix + "aux.b"])
    h = dropout(concat_elu(c1), dropout_p, rng)  # (B, H, W, 2C)
    c2 = conv(h, params[prefix + "conv2.w"], params[prefix + "conv2.b"])  # (B, H, W, 2C)
    gate_a, gate_b = c2[..., :C], c2[..., C:]
    return x + gate_a * sigmoid(gate_b)


# ----------------------------------------------------------------------------- the network


def scale_images(x, levels: int):
    """Integer levels -> [-1, 1]:  2 x / (levels - 1) - 1  (float64)."""
    xp = namespace(x)
    return 2.0 * xp.asarray(x, dtype=xp.float64) / (levels - 1) - 1.0


def network(params: dict, config: Config, x, rng=None):
    """The two-stream network on images x (B, C, H, W) int -> raw outputs (B, H, W, n_out).

    rng: a NumPy Generator for dropout (masks drawn block by block in network order), or
    None (no dropout: evaluation and sampling).
    """
    xp = namespace(params["out.w"])
    p = params
    dtype = p["out.w"].dtype  # float64 for the spec; float32 params give the naive float32 baseline
    drop = config.dropout_p if rng is not None else 0.0
    xf = xp.moveaxis(scale_images(xp.asarray(x), config.levels), 1, -1).astype(dtype)  # (B, H, W, C_in)
    x_in = xp.concatenate([xf, xp.ones(xf.shape[:-1] + (1,), dtype=dtype)], axis=-1)  # (B, H, W, C_in + 1)

    u = down_shift(down_shifted_conv2d(x_in, p["init.u.w"], p["init.u.b"]))  # (B, H, W, C)
    ul = down_shift(down_shifted_conv2d(x_in, p["init.ul_above.w"], p["init.ul_above.b"])) + right_shift(
        down_right_shifted_conv2d(x_in, p["init.ul_left.w"], p["init.ul_left.b"])
    )  # (B, H, W, C)
    u_stack, ul_stack = [u], [ul]

    # up pass: H -> H/2 -> H/4
    for level in range(LEVELS):
        if level > 0:
            q = f"downsample.{level - 1}."
            u_stack.append(down_shifted_conv2d(u_stack[-1], p[q + "u.w"], p[q + "u.b"], stride=2))
            ul_stack.append(down_right_shifted_conv2d(ul_stack[-1], p[q + "ul.w"], p[q + "ul.b"], stride=2))
        for k in range(config.nr_resnet):
            u = gated_resnet(p, block_name("up", level, k, "u"), u_stack[-1], None, down_shifted_conv2d, drop, rng)
            u_stack.append(u)
            ul = gated_resnet(p, block_name("up", level, k, "ul"), ul_stack[-1], u, down_right_shifted_conv2d,
                              drop, rng)  # fmt: skip
            ul_stack.append(ul)

    # down pass: H/4 -> H/2 -> H, popping the skip connections
    u, ul = u_stack.pop(), ul_stack.pop()
    for level in reversed(range(LEVELS)):
        if level < LEVELS - 1:
            q = f"upsample.{level}."
            u = down_shifted_deconv2d(u, p[q + "u.w"], p[q + "u.b"])
            ul = down_right_shifted_deconv2d(ul, p[q + "ul.w"], p[q + "ul.b"])
        for k in range(config.nr_resnet + (level < LEVELS - 1)):
            u = gated_resnet(p, block_name("down", level, k, "u"), u, u_stack.pop(), down_shifted_conv2d, drop, rng)
            aux = xp.concatenate([u, ul_stack.pop()], axis=-1)  # (B, h, w, 2C)
            ul = gated_resnet(p, block_name("down", level, k, "ul"), ul, aux, down_right_shifted_conv2d, drop, rng)
    assert not u_stack and not ul_stack
    return nin(elu(ul), p["out.w"], p["out.b"])  # (B, H, W, n_out)


def output_params(raw, config: Config) -> dict:
    """Raw network outputs (B, H, W, n_out) -> the mixture parameters of every pixel:

    RGB (n_out = 10 K, openai/pixel-cnn's layout, `reference.distributions.unpack_pixelcnn_output`):
        logit_weights (B, H, W, K), means, log_scales, coeffs (B, 3, H, W, K) (coeffs pre-tanh)
    grayscale (n_out = 3 K: [logits | means | log-scales]):
        logit_weights (B, H, W, K), means, log_scales (B, 1, H, W, K)
    log_scales are clamped below at config.min_log_scale (when not None).
    """
    xp = namespace(raw)
    K = config.nr_logistic_mix
    if config.channels == 3:
        return dist.unpack_pixelcnn_output(raw, min_log_scale=config.min_log_scale)
    log_scales = raw[:, None, :, :, 2 * K : 3 * K]
    if config.min_log_scale is not None:
        log_scales = xp.maximum(log_scales, config.min_log_scale)
    return {"logit_weights": raw[..., :K], "means": raw[:, None, :, :, K : 2 * K], "log_scales": log_scales}


def forward(params: dict, config: Config, x, *, rng=None) -> dict:
    """All conditionals at once (teacher forcing): images x (B, C, H, W) int -> the mixture
    parameters of p(x_i | x_<i) at every pixel i (see `output_params` for the dict).

    rng: dropout (training) with masks from this NumPy Generator; None for evaluation.
    """
    check_params(params, config)
    check_images(x, config)
    return output_params(network(params, config, x, rng), config)


def pixel_log_probs(out: dict, config: Config, x):
    """log p(x_i | x_<i) of every pixel, nats: (B, H, W) float64, from `forward`'s output."""
    xp = namespace(out["means"])
    x = xp.asarray(x)
    if config.channels == 3:
        return dist.rgb_mixture_log_prob(x, out, levels=config.levels)
    return dist.discretized_logistic_mixture_log_prob(
        x[:, 0], out["logit_weights"], out["means"][:, 0], out["log_scales"][:, 0], levels=config.levels
    )


def log_prob(params: dict, config: Config, x, *, rng=None):
    """Exact log-likelihood in nats, the chain rule over pixels in raster order:

        log p(x) = sum_{r, c} log p(x[:, :, r, c] | pixels before (r, c))

    x: (B, C, H, W) int -> (B,) float64. bits/dim = -log_prob / (C H W log 2)
    (reference.metrics). rng: dropout masks (training objective) or None.
    """
    xp = namespace(params["out.w"])
    out = forward(params, config, x, rng=rng)
    return xp.sum(pixel_log_probs(out, config, x), axis=(1, 2))


# ----------------------------------------------------------------------------- sampling


def uniforms_shape(config: Config, batch: int) -> tuple[int, ...]:
    """The shape of the uniforms `generate` takes: (B, H, W, 1 + C), per pixel one uniform for
    the mixture component (inverse CDF over the weights) and one per channel (logistic inverse CDF)."""
    return (batch, config.height, config.width, config.channels + 1)


def pixel_params(out: dict, r: int, c: int) -> dict:
    """The mixture parameters of pixel (r, c) from `forward`'s output, as a batch of one-pixel
    images: logit_weights (B, 1, 1, K), the others (B, C, 1, 1, K)."""
    return {k: (v[:, r : r + 1, c : c + 1] if k == "logit_weights" else v[:, :, r : r + 1, c : c + 1])
            for k, v in out.items()}  # fmt: skip


def sample_pixel(pp: dict, config: Config, u):
    """One pixel from its mixture parameters (`pixel_params`) and uniforms u (B, 1 + C):
    u[:, 0] picks the component (shared by the channels), u[:, 1 + ch] the value of channel ch,
    channels in order R, G, B through the coupling. -> (B, C) int64."""
    xp = namespace(u)
    u_component = u[:, None, None, 0]  # (B, 1, 1)
    if config.channels == 3:
        u_value = xp.moveaxis(u[:, None, None, 1:], -1, 1)  # (B, 3, 1, 1)
        return dist.rgb_mixture_sample(pp, u_component, u_value, levels=config.levels)[:, :, 0, 0]
    x = dist.discretized_logistic_mixture_sample(
        pp["logit_weights"], pp["means"][:, 0], pp["log_scales"][:, 0], u_component, u[:, None, None, 1],
        levels=config.levels,
    )  # (B, 1, 1)
    return x[:, None, 0, 0]


def sample_given(out: dict, config: Config, u):
    """Every pixel drawn from its own given conditional (`forward`'s output `out`) with the
    uniforms u (B, H, W, 1 + C): the pixels a generation that computed exactly these
    conditionals draws. Teacher forcing on a generated image x, sample_given(forward(x), u) == x
    is the check that x was drawn from the model with u. -> (B, C, H, W) int64."""
    xp = namespace(u)
    u = _check_uniforms(u, config)
    if config.channels == 3:
        return dist.rgb_mixture_sample(out, u[..., 0], xp.moveaxis(u[..., 1:], -1, 1), levels=config.levels)
    x = dist.discretized_logistic_mixture_sample(
        out["logit_weights"], out["means"][:, 0], out["log_scales"][:, 0], u[..., 0], u[..., 1], levels=config.levels
    )  # (B, H, W)
    return x[:, None]


def _check_uniforms(u, config: Config):
    xp = namespace(u)
    u = xp.asarray(u, dtype=xp.float64)
    if u.ndim != 4 or tuple(u.shape[1:]) != uniforms_shape(config, 1)[1:] or u.shape[0] < 1:
        want = ", ".join(map(str, uniforms_shape(config, 1)[1:]))
        raise ValueError(f"u: expected shape (B, {want}) with B >= 1, got {tuple(u.shape)}")
    if bool(xp.any(~((u >= 0) & (u < 1)))):
        raise ValueError("u: expected uniforms in [0, 1), got a value outside (or NaN)")
    return u


def generate(params: dict, config: Config, u):
    """Naive ancestral sampling, pixel by pixel in raster order, from explicit uniforms:

        for each pixel i:  (pi, m, s, c) = network(x)[i]     (the whole image, recomputed)
                           x_i = sample(pi, m, s, c; u[:, r, c])   R, then G | R, then B | R, G

    The network sees zeros at the pixels not yet drawn; causality makes their values
    irrelevant. u: (B, H, W, 1 + C) uniforms in [0, 1) (`uniforms_shape`). Returns (B, C, H, W)
    int64. Exactly H W network evaluations: the spec, not the fast way (fast.pixelcnnpp).
    """
    check_params(params, config)
    u = _check_uniforms(u, config)
    xp = namespace(params["out.w"], u)
    u = xp.asarray(u)  # on the params' device
    B = u.shape[0]
    x = xp.zeros((B, config.channels, config.height, config.width), dtype=xp.int64)
    for r in range(config.height):
        for c in range(config.width):
            out = output_params(network(params, config, x), config)
            x = x.copy()  # pure: the image handed to the network above is never written
            x[:, :, r, c] = sample_pixel(pixel_params(out, r, c), config, u[:, r, c])
    return x


def sample(params: dict, config: Config, rng: numpy.random.Generator, batch: int):
    """Ancestral sampling of `batch` images: u = rng.random(uniforms_shape(config, batch)),
    then `generate(params, config, u)`."""
    if not _positive_int(batch):
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    return generate(params, config, rng.random(uniforms_shape(config, batch)))
