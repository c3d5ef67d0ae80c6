"""PixelCNN and Gated PixelCNN: images as sequences, one channel of one pixel at a time.

van den Oord, Kalchbrenner, Kavukcuoglu 2016, "Pixel Recurrent Neural Networks"
(PixelCNN: masked convolutions, masks A and B, the residual block); van den Oord,
Kalchbrenner, Vinyals, Espeholt, Graves, Kavukcuoglu 2016, "Conditional Image
Generation with PixelCNN Decoders" (Gated PixelCNN: vertical and horizontal stacks,
the gated unit, class and spatial conditioning).

The chain rule over raster order (rows top to bottom, pixels left to right) and,
within a pixel, over the channels R, G, B in turn:

    p(x) = prod_{i,j} prod_c p(x[c, i, j] | x[:, <(i,j)], x[<c, i, j])

Every conditional is a categorical over `levels` intensities, computed for all
pixels at once by a network whose output at (c, i, j) depends only on the inputs
the factor conditions on: the masks below make that exact (bit for bit).

Layouts
-------
    x        (B, C, H, W) int64 in [0, levels)          C = config.channels
    logits   (B, C, H, W, levels) float64                logits[b, c, i, j] is the
             unnormalized log-distribution of x[b, c, i, j]
    conv weights (out, in, kh, kw) as torch.nn.Conv2d; biases (out,); class
             embeddings (num_classes, out) (a linear layer (in, out) on one-hot h)
    cond     a (B,) int array of class ids, a (B, S, H, W) float spatial map, or
             a dict {"class": ..., "spatial": ...} with both (Gated PixelCNN only)

The network reads x scaled to [-1, 1]: x / (levels - 1) * 2 - 1.

Channel groups (masks A and B)
------------------------------
The C image channels are G = C groups (one per colour; grayscale: one group). A
layer with n feature channels splits them into G *contiguous* groups: channel k
belongs to group (k * G) // n. When n is a multiple of G the groups are equal
blocks of n / G (R first, then G, then B, as in PixelRNN); otherwise their sizes
differ by at most one (n = 8, G = 3: sizes 3, 3, 2). Every group must be
non-empty, so every layer has at least G channels. The logits' channel axis
(C * levels before the reshape) is grouped the same way, so the block of
channel c is exactly the distribution of image channel c.

At the centre tap of a kernel, output group g may read input group g' iff
    mask A (first layer):  g' <  g     (the colour being predicted is not seen)
    mask B (later layers): g' <= g     (its own group's features, which never saw it)
Taps above the centre row, and left of the centre on the centre row, are open;
taps below, and to the right on the centre row, are zero.

Models
------
PixelCNN (kind="pixelcnn"), with h = config.hidden:
    a   = Conv_A^{k0 x k0}(x)                              C -> 2h, mask A
    for each of n_layers residual blocks (PixelRNN's block, Fig. 5):
    a   = a + Conv_B^{1x1}(relu(Conv_B^{k x k}(relu(Conv_B^{1x1}(relu(a))))))
          2h -> h (1x1) -> h (k x k) -> 2h (1x1)
    logits = Conv_B^{1x1}(relu(Conv_B^{1x1}(relu(a))))     2h -> out_hidden -> C * levels

It has a *blind spot*: a k x k mask-B layer reaches at most k//2 columns to the right,
and only on the rows above; so the receptive field widens to the right by k//2 columns
per row up, and the pixels above-right of the current one beyond that slope are never
seen, however deep the stack (`blind_spot`; `reachable` gives the field at a depth).

Gated PixelCNN (kind="gated"), with p = config.hidden, for layer l = 0..n_layers-1:
    v_pre = Conv_V^{k x k}(v)             rows <= the current one (k//2 + 1 rows of the kernel)
    v     = tanh(v_pre[:p] + c_v) * sigmoid(v_pre[p:] + c_v')
    h_pre = Conv_H^{1 x k}(h) + Link^{1x1}(shift_down(v_pre))
            Conv_H sees pixels left of the current one and, mask A (layer 0) or B, the centre;
            shift_down moves the vertical features one row down: the horizontal stack at
            row i reads the vertical stack of row i - 1, which saw only rows < i
    g     = tanh(h_pre[:p] + c_h) * sigmoid(h_pre[p:] + c_h')
    h     = h + Conv_B^{1x1}(g)           (layer 0: no residual, its input has C channels)
with v = h = x before layer 0 (kernel k0 there, k after), then
    logits = Conv_B^{1x1}(relu(Conv_B^{1x1}(relu(h))))     p -> out_hidden -> C * levels.
The vertical stack grows the receptive field k//2 columns to both sides per layer and
the horizontal one k//2 pixels to the left: with enough layers every earlier pixel is
seen, and there is no blind spot. The gate's 2p pre-activations are grouped as two
copies of the p groups, so tanh(f_k) * sigmoid(g_k) pairs features of one group.

Conditioning (Gated PixelCNN), the terms c added to the gates of every layer (the last
layer's vertical gate feeds nothing, so it has no conditioning parameters):
    class h (num_classes > 0):     c = V^T h = V[label]         V: (num_classes, 2p) per stack
    spatial s (cond_channels > 0): c = Conv^{1x1}(s)            s: (B, S, H, W), per stack
Super-resolution is spatial conditioning on the upsampled low-resolution image
(`super_resolution_cond`).

Parameters are a flat dict of float64 arrays (`param_shapes`); the masks are not
parameters: every forward multiplies the weights by them, so masked weights have
zero gradient and any value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from chainrule.reference import distributions, nn, validate
from chainrule.reference.xp import namespace

KINDS = ("pixelcnn", "gated")


# ----------------------------------------------------------------------------- config


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Config:
    """PixelCNN / Gated PixelCNN hyper-parameters.

    kind: "pixelcnn" or "gated".  channels C (1 grayscale, 3 RGB: the channel groups),
    height H, width W, levels (intensities per channel, >= 2), hidden (h or p above,
    >= channels), n_layers (residual blocks or gated layers, >= 1), kernel_size k
    (odd) and input_kernel k0 (odd, the first layer's), out_hidden (None: 2 * hidden),
    num_classes and cond_channels (0: no conditioning; Gated PixelCNN only).
    """

    kind: str = "pixelcnn"
    channels: int = 1
    height: int = 8
    width: int = 8
    levels: int = 256
    hidden: int = 16
    n_layers: int = 3
    kernel_size: int = 3
    input_kernel: int = 7
    out_hidden: int | None = None
    num_classes: int = 0
    cond_channels: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Config.kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("channels", "height", "width", "hidden", "n_layers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {value!r}")
        if not _is_int(self.levels) or self.levels < 2:
            raise ValueError(f"Config.levels: expected an int >= 2, got {self.levels!r}")
        for name in ("kernel_size", "input_kernel"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1 or value % 2 == 0:
                raise ValueError(f"Config.{name}: expected an odd positive int (square kernels), got {value!r}")
        if self.out_hidden is not None and (not _is_int(self.out_hidden) or self.out_hidden < self.channels):
            raise ValueError(f"Config.out_hidden: expected None or an int >= channels={self.channels}, "
                             f"got {self.out_hidden!r}")  # fmt: skip
        if self.hidden < self.channels:
            raise ValueError(f"Config.hidden: expected an int >= channels={self.channels} (every channel group "
                             f"needs a feature), got {self.hidden}")  # fmt: skip
        for name in ("num_classes", "cond_channels"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"Config.{name}: expected an int >= 0, got {value!r}")
            if value and self.kind != "gated":
                raise ValueError(f"Config.{name}: conditioning needs kind='gated', got kind={self.kind!r}")

    @property
    def n_out_hidden(self) -> int:
        return 2 * self.hidden if self.out_hidden is None else self.out_hidden

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes or self.cond_channels)


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (the contract `check_params` enforces)."""
    C, h, k, k0 = config.channels, config.hidden, config.kernel_size, config.input_kernel
    out = {"out.0.w": (config.n_out_hidden, h if config.kind == "gated" else 2 * h, 1, 1),
           "out.0.b": (config.n_out_hidden,),
           "out.1.w": (C * config.levels, config.n_out_hidden, 1, 1), "out.1.b": (C * config.levels,)}  # fmt: skip
    if config.kind == "pixelcnn":
        shapes = {"in.w": (2 * h, C, k0, k0), "in.b": (2 * h,)}
        for i in range(config.n_layers):
            p = f"blocks.{i}."
            shapes |= {
                p + "reduce.w": (h, 2 * h, 1, 1), p + "reduce.b": (h,),
                p + "conv.w": (h, h, k, k), p + "conv.b": (h,),
                p + "expand.w": (2 * h, h, 1, 1), p + "expand.b": (2 * h,),
            }  # fmt: skip
        return shapes | out
    shapes = {}
    for i in range(config.n_layers):
        p, cin, kk = f"layers.{i}.", C if i == 0 else h, k0 if i == 0 else k
        shapes |= {
            p + "v.w": (2 * h, cin, kk, kk), p + "v.b": (2 * h,),
            p + "h.w": (2 * h, cin, 1, kk), p + "h.b": (2 * h,),
            p + "link.w": (2 * h, 2 * h, 1, 1), p + "link.b": (2 * h,),
            p + "res.w": (h, h, 1, 1), p + "res.b": (h,),
        }  # fmt: skip
        # The last layer's vertical gate output feeds nothing (its v_pre feeds the link): no
        # conditioning parameters for it.
        last = i == config.n_layers - 1
        if config.num_classes:
            shapes |= {} if last else {p + "v_class": (config.num_classes, 2 * h)}
            shapes |= {p + "h_class": (config.num_classes, 2 * h)}
        if config.cond_channels:
            S = config.cond_channels
            shapes |= {} if last else {p + "v_spatial.w": (2 * h, S, 1, 1), p + "v_spatial.b": (2 * h,)}
            shapes |= {p + "h_spatial.w": (2 * h, S, 1, 1), p + "h_spatial.b": (2 * h,)}
    return shapes | out


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """He-style initialization: conv weights N(0, 2 / fan_in), fan_in = in * kh * kw (the
    unmasked count, as torch's Conv2d), class embeddings N(0, 1/num_classes), biases 0."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".b"):
            params[name] = numpy.zeros(shape)
        elif name.endswith("_class"):
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
        else:
            params[name] = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters for testing, far from any trained or initial state so that nothing is
    trivially equal: every weight N(0, 1/fan_in) (fan_in = in * kh * kw), biases N(0, 0.1^2),
    class embeddings N(0, 0.5^2), output-layer weights scaled up to N(0, 4/fan_in) so that
    the categoricals are far from uniform. Small biases keep the ReLUs before the output
    layers alive where they should pass the inputs' influence on. Drawn in the order of
    `param_shapes`."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".b"):
            params[name] = rng.normal(0.0, 0.1, shape)
        elif name.endswith("_class"):
            params[name] = rng.normal(0.0, 0.5, shape)
        else:
            scale = 2.0 if name.startswith("out.1") else 1.0
            params[name] = rng.normal(0.0, scale / math.sqrt(math.prod(shape[1:])), shape)
    return params


# ----------------------------------------------------------------------------- validation


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    validate.check_param_shapes(params, param_shapes(config), "params")


def check_images(x, config: Config, name: str = "x") -> None:
    """ValueError unless x is a (B, C, H, W) integer array, B >= 1, of the config's C, H, W,
    with every value in [0, levels)."""
    if getattr(getattr(x, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"{name}: expected an integer array, got {getattr(x, 'dtype', type(x))}")
    want = (config.channels, config.height, config.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (B, {want[0]}, {want[1]}, {want[2]}) with B >= 1 "
                         f"(channels, height, width of the config), got {tuple(x.shape)}")  # fmt: skip
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= config.levels:
        raise ValueError(f"{name}: pixel values must lie in [0, {config.levels}), got {low if low < 0 else high}")


def check_cond(cond, config: Config, batch: int):
    """cond -> (labels (B,) int or None, spatial (B, S, H, W) float or None); ValueError when it does not
    match the config (missing, unexpected, wrong shape, class id out of range, non-finite map)."""
    labels = spatial = None
    if cond is not None and not config.conditional:
        raise ValueError(f"cond: expected None (the config has num_classes=0 and cond_channels=0), "
                         f"got {type(cond).__name__}")  # fmt: skip
    if isinstance(cond, dict):
        unknown = sorted(set(cond) - {"class", "spatial"})
        if unknown:
            raise ValueError(f"cond: expected keys 'class' and/or 'spatial', got {unknown}")
        labels, spatial = cond.get("class"), cond.get("spatial")
    elif cond is not None:
        if config.num_classes and config.cond_channels:
            raise ValueError("cond: expected a dict {'class': labels, 'spatial': map} (the config has both)")
        if config.num_classes:
            labels = cond
        else:
            spatial = cond
    if config.num_classes and labels is None:
        raise ValueError(f"cond: expected class labels (B,) in [0, {config.num_classes}), got none")
    if config.cond_channels and spatial is None:
        want = (batch, config.cond_channels, config.height, config.width)
        raise ValueError(f"cond: expected a spatial map of shape {want}, got none")
    if labels is not None:
        if not config.num_classes:
            raise ValueError("cond: got class labels, but the config has num_classes=0")
        if getattr(getattr(labels, "dtype", None), "kind", None) not in ("i", "u") or labels.shape != (batch,):
            got = f"{getattr(labels, 'dtype', type(labels))} {tuple(getattr(labels, 'shape', ()))}"
            raise ValueError(f"cond['class']: expected an integer array of shape ({batch},), got {got}")
        if int(labels.min()) < 0 or int(labels.max()) >= config.num_classes:
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise ValueError(f"cond['class']: class ids must lie in [0, {config.num_classes}), got {bad}")
    if spatial is not None:
        if not config.cond_channels:
            raise ValueError("cond: got a spatial map, but the config has cond_channels=0")
        want = (batch, config.cond_channels, config.height, config.width)
        if tuple(getattr(spatial, "shape", ())) != want:
            raise ValueError(f"cond['spatial']: expected shape {want}, got {tuple(getattr(spatial, 'shape', ()))}")
        xp = namespace(spatial)
        if not bool(xp.all(xp.isfinite(spatial))):
            raise ValueError("cond['spatial']: expected finite values, got NaN or inf")
    return labels, spatial


# ----------------------------------------------------------------------------- masks


def channel_groups(n: int, groups: int):
    """(n,) int: the group of each of n feature channels, G contiguous blocks: k -> (k * G) // n.

    n a multiple of G: equal blocks of n / G; otherwise sizes differ by at most one.
    ValueError if n < G (a group would be empty).
    """
    if not _is_int(n) or not _is_int(groups) or groups < 1 or n < groups:
        raise ValueError(f"n: expected at least groups={groups} channels (one per group), got {n}")
    return (numpy.arange(n) * groups) // n


def _check_kernel(kernel) -> tuple[int, int]:
    kh, kw = kernel
    if not (_is_int(kh) and _is_int(kw) and kh >= 1 and kw >= 1 and kh % 2 == 1 and kw % 2 == 1):
        raise ValueError(f"kernel: expected odd (kh, kw) (the centre tap is the current pixel), got {tuple(kernel)}")
    return kh, kw


def causal_mask(kernel, groups_out, groups_in, kind: str):
    """The (out, in, kh, kw) 0/1 mask of a raster-causal convolution (PixelRNN masks A and B).

    kernel: (kh, kw), both odd; groups_out (out,), groups_in (in,): channel groups.
    mask[o, c, a, b] = 1 iff the tap (a, b) is above the centre row, or on it and left
    of the centre, or the centre itself with
        kind "A": groups_in[c] <  groups_out[o]     kind "B": groups_in[c] <= groups_out[o].
    """
    kh, kw = _check_kernel(kernel)
    if kind not in ("A", "B"):
        raise ValueError(f"kind: expected 'A' or 'B', got {kind!r}")
    go, gi = numpy.asarray(groups_out), numpy.asarray(groups_in)
    mask = numpy.zeros((len(go), len(gi), kh, kw))
    mask[:, :, : kh // 2, :] = 1.0  # rows above
    mask[:, :, kh // 2, : kw // 2] = 1.0  # left on the centre row
    centre = gi[None, :] < go[:, None] if kind == "A" else gi[None, :] <= go[:, None]
    mask[:, :, kh // 2, kw // 2] = centre
    return mask


def vertical_mask(kernel, n_out: int, n_in: int):
    """The (out, in, kh, kw) mask of the vertical stack: rows at and above the centre, all columns."""
    kh, kw = _check_kernel(kernel)
    mask = numpy.zeros((n_out, n_in, kh, kw))
    mask[:, :, : kh // 2 + 1, :] = 1.0
    return mask


def horizontal_mask(kernel, groups_out, groups_in, kind: str):
    """The (out, in, 1, kw) mask of the horizontal stack: mask A/B on a one-row kernel
    (taps left of the centre open, the centre by channel group, right of it closed)."""
    kh, kw = _check_kernel(kernel)
    if kh != 1:
        raise ValueError(f"kernel: expected a one-row kernel (1, kw) for the horizontal stack, got {tuple(kernel)}")
    return causal_mask(kernel, groups_out, groups_in, kind)


def masks(config: Config) -> dict:
    """Parameter name -> its mask (absent: unmasked), as float64 NumPy arrays."""
    G, C, h, L = config.channels, config.channels, config.hidden, config.levels
    x_groups = channel_groups(C, G)
    out_groups = channel_groups(C * L, G)  # channel c's logits are block c
    shapes = param_shapes(config)
    m = {}
    if config.kind == "pixelcnn":
        g2h, gh = channel_groups(2 * h, G), channel_groups(h, G)
        m["in.w"] = causal_mask(shapes["in.w"][2:], g2h, x_groups, "A")
        for i in range(config.n_layers):
            p = f"blocks.{i}."
            m[p + "reduce.w"] = causal_mask((1, 1), gh, g2h, "B")
            m[p + "conv.w"] = causal_mask(shapes[p + "conv.w"][2:], gh, gh, "B")
            m[p + "expand.w"] = causal_mask((1, 1), g2h, gh, "B")
        top = g2h
    else:
        gh = channel_groups(h, G)
        gates = numpy.concatenate([gh, gh])  # (2p,): tanh half and sigmoid half share the groups
        for i in range(config.n_layers):
            p = f"layers.{i}."
            gin = x_groups if i == 0 else gh
            m[p + "v.w"] = vertical_mask(shapes[p + "v.w"][2:], 2 * h, len(gin))
            m[p + "h.w"] = horizontal_mask(shapes[p + "h.w"][2:], gates, gin, "A" if i == 0 else "B")
            m[p + "res.w"] = causal_mask((1, 1), gh, gh, "B")
        top = gh
    gout = channel_groups(config.n_out_hidden, G)
    m["out.0.w"] = causal_mask((1, 1), gout, top, "B")
    m["out.1.w"] = causal_mask((1, 1), out_groups, gout, "B")
    return m


# ----------------------------------------------------------------------------- layers


def conv2d(x, w, b=None):
    """'Same' 2-D convolution (cross-correlation, as torch's conv2d) with an odd kernel:

        y[n, o, i, j] = b[o] + sum_{c, a, e} w[o, c, a, e] x_pad[n, c, i + a, j + e]

    x_pad: x zero-padded by kh//2 rows above and below and kw//2 columns left and right.
    x: (B, I, H, W), w: (O, I, kh, kw), b: (O,) -> (B, O, H, W). One term per kernel tap:
    a tap whose weights are (masked to) zero adds exact zeros.
    """
    xp = namespace(x, w)
    kh, kw = _check_kernel(w.shape[2:])
    B, I, H, W = x.shape
    if w.shape[1] != I:
        raise ValueError(f"w: expected {I} input channels (x has {I}), got shape {tuple(w.shape)}")
    x_pad = xp.pad(x, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    y = xp.zeros((B, w.shape[0], H, W), dtype=x.dtype)
    for a in range(kh):
        for e in range(kw):
            window = x_pad[:, :, a : a + H, e : e + W]  # (B, I, H, W)
            y = y + xp.einsum("oc,bchw->bohw", w[:, :, a, e], window)
    return y if b is None else y + b[None, :, None, None]


def masked_conv2d(x, w, b, mask):
    """conv2d with the weights multiplied by a 0/1 mask: y = conv2d(x, w * mask) + b."""
    xp = namespace(x, w)
    return conv2d(x, w * xp.asarray(mask, dtype=w.dtype), b)


def shift_down(v):
    """(B, C, H, W) -> the same map moved one row down, row 0 zero: out[:, :, i] = v[:, :, i - 1]."""
    xp = namespace(v)
    return xp.concatenate([xp.zeros_like(v[:, :, :1]), v[:, :, :-1]], axis=2)


def gate(a, bias=0.0):
    """The gated unit of Gated PixelCNN / WaveNet: tanh(a_f + bias_f) * sigmoid(a_g + bias_g),
    a = [a_f, a_g] split in halves along axis 1 (B, 2p, ...) -> (B, p, ...)."""
    xp = namespace(a)
    a = a + bias
    p = a.shape[1] // 2
    return xp.tanh(a[:, :p]) * (1.0 / (1.0 + xp.exp(-a[:, p:])))


def relu(x):
    xp = namespace(x)
    return xp.maximum(x, 0.0)


def scale_input(x, levels: int, dtype=None):
    """Integer levels -> floats in [-1, 1]: x / (levels - 1) * 2 - 1 (in `dtype`, default float64)."""
    xp = namespace(x)
    return xp.asarray(x, dtype=dtype or xp.float64) / (levels - 1) * 2.0 - 1.0


# ----------------------------------------------------------------------------- the networks


def _pixelcnn(params, config, xf, M):
    """Plain PixelCNN body: scaled x (B, C, H, W) -> top features (B, 2h, H, W)."""
    a = masked_conv2d(xf, params["in.w"], params["in.b"], M["in.w"])  # (B, 2h, H, W)
    for i in range(config.n_layers):
        p = f"blocks.{i}."
        t = masked_conv2d(relu(a), params[p + "reduce.w"], params[p + "reduce.b"], M[p + "reduce.w"])  # (B, h, H, W)
        t = masked_conv2d(relu(t), params[p + "conv.w"], params[p + "conv.b"], M[p + "conv.w"])  # (B, h, H, W)
        a = a + masked_conv2d(relu(t), params[p + "expand.w"], params[p + "expand.b"], M[p + "expand.w"])
    return a


def _cond_terms(params, config, i, labels, spatial):
    """The conditioning terms of layer i for the vertical and horizontal gates: (c_v, c_h),
    each 0.0 or broadcastable to (B, 2p, H, W)."""
    c_v = c_h = 0.0
    p = f"layers.{i}."
    last = i == config.n_layers - 1  # the last layer's vertical gate output is unused: no c_v
    if labels is not None:
        if not last:
            c_v = c_v + nn.embedding(labels, params[p + "v_class"])[:, :, None, None]  # (B, 2p, 1, 1): V^T h
        c_h = c_h + nn.embedding(labels, params[p + "h_class"])[:, :, None, None]
    if spatial is not None:
        if not last:
            c_v = c_v + conv2d(spatial, params[p + "v_spatial.w"], params[p + "v_spatial.b"])  # (B, 2p, H, W)
        c_h = c_h + conv2d(spatial, params[p + "h_spatial.w"], params[p + "h_spatial.b"])
    return c_v, c_h


def gated_layer(params, config, i, v, h, M, labels=None, spatial=None):
    """Gated PixelCNN layer i: (v, h) -> (v', h'); (B, C or p, H, W) each -> (B, p, H, W) each.
    (The last layer's v' is computed for uniformity; nothing uses it.)"""
    p = f"layers.{i}."
    c_v, c_h = _cond_terms(params, config, i, labels, spatial)
    v_pre = masked_conv2d(v, params[p + "v.w"], params[p + "v.b"], M[p + "v.w"])  # (B, 2p, H, W) rows <= i
    h_pre = masked_conv2d(h, params[p + "h.w"], params[p + "h.b"], M[p + "h.w"])  # (B, 2p, H, W) pixels <= j
    h_pre = h_pre + conv2d(shift_down(v_pre), params[p + "link.w"], params[p + "link.b"])  # rows < i only
    g = gate(h_pre, c_h)  # (B, p, H, W)
    h_new = masked_conv2d(g, params[p + "res.w"], params[p + "res.b"], M[p + "res.w"])
    if i > 0:
        h_new = h + h_new
    return gate(v_pre, c_v), h_new


def _gated(params, config, xf, M, labels, spatial):
    """Gated PixelCNN body: scaled x (B, C, H, W) -> horizontal-stack features (B, p, H, W)."""
    v = h = xf
    for i in range(config.n_layers):
        v, h = gated_layer(params, config, i, v, h, M, labels, spatial)
    return h


def forward(params: dict, config: Config, x, *, cond=None):
    """All conditionals at once (teacher forcing): x (B, C, H, W) int -> logits (B, C, H, W, levels).

    logits[b, c, i, j] is the (unnormalized log) distribution of x[b, c, i, j] given the
    pixels before (i, j) in raster order and the channels < c of pixel (i, j); it does
    not depend on any other entry of x, bit for bit. cond: see the module docstring.
    """
    check_params(params, config)
    check_images(x, config)
    xp = namespace(params["out.1.w"])
    x = xp.asarray(x)
    B = x.shape[0]
    labels, spatial = check_cond(cond, config, B)
    M = masks(config)
    dtype = params["out.1.w"].dtype  # float64; float32 for the naive low-precision baseline
    xf = scale_input(x, config.levels, dtype)  # (B, C, H, W) in [-1, 1]
    if config.kind == "pixelcnn":
        top = _pixelcnn(params, config, xf, M)
    else:
        labels = None if labels is None else xp.asarray(labels)
        spatial = None if spatial is None else xp.asarray(spatial, dtype=dtype)
        top = _gated(params, config, xf, M, labels, spatial)
    o = masked_conv2d(relu(top), params["out.0.w"], params["out.0.b"], M["out.0.w"])  # (B, out_hidden, H, W)
    o = masked_conv2d(relu(o), params["out.1.w"], params["out.1.b"], M["out.1.w"])  # (B, C * levels, H, W)
    o = o.reshape(B, config.channels, config.levels, config.height, config.width)
    return xp.moveaxis(o, 2, -1)  # (B, C, H, W, levels)


def log_prob(params: dict, config: Config, x, *, cond=None):
    """Exact chain-rule log-likelihood in nats:

        log p(x) = sum_{c, i, j} log softmax(logits[:, c, i, j])[x[:, c, i, j]]

    x: (B, C, H, W) -> (B,) float64. Bits per dimension:
    reference.metrics.bits_per_dim(-log_prob, C * H * W).
    """
    xp = namespace(params["out.1.w"])
    logits = forward(params, config, x, cond=cond)  # (B, C, H, W, levels)
    terms = distributions.categorical_log_prob(xp.asarray(x), logits)  # (B, C, H, W)
    return xp.sum(terms.reshape(terms.shape[0], -1), axis=1)


# ----------------------------------------------------------------------------- sampling


def generation_order(config: Config) -> list[tuple[int, int, int]]:
    """The (c, i, j) entries in the order of the chain rule: rows, then pixels, then channels."""
    return [(c, i, j) for i in range(config.height) for j in range(config.width) for c in range(config.channels)]


def check_uniforms(u, config: Config, name: str = "u"):
    """ValueError unless u is a (B, C, H, W) float array with values in [0, 1)."""
    want = (config.channels, config.height, config.width)
    shape = tuple(getattr(u, "shape", ()))
    if len(shape) != 4 or shape[1:] != want or shape[0] < 1:
        raise ValueError(f"{name}: expected uniforms of shape (B, {want[0]}, {want[1]}, {want[2]}), got {shape}")
    xp = namespace(u)
    if not bool(xp.all((u >= 0) & (u < 1))):
        raise ValueError(f"{name}: expected uniforms in [0, 1), got a value outside (or NaN)")


def generate(params: dict, config: Config, u, *, cond=None):
    """Naive ancestral sampling, entry by entry in the chain-rule order: for each pixel (i, j)
    in raster order and each channel c, the whole network is run on the image so far and

        x[:, c, i, j] = inverse-CDF sample of softmax(logits[:, c, i, j]) at u[:, c, i, j]

    (`reference.sampling.sample`). u: (B, C, H, W) uniforms in [0, 1) -> x (B, C, H, W) int64.
    The entries not yet generated are 0 while the network runs; causality makes their value
    irrelevant.
    """
    check_params(params, config)
    check_uniforms(u, config)
    xp = namespace(params["out.1.w"])
    u = xp.asarray(u, dtype=xp.float64)
    B = u.shape[0]
    check_cond(cond, config, B)
    x = xp.zeros((B, config.channels, config.height, config.width), dtype=xp.int64)
    for c, i, j in generation_order(config):
        logits = forward(params, config, x, cond=cond)[:, c, i, j]  # (B, levels)
        x = x.copy()
        x[:, c, i, j] = distributions.categorical_sample(logits, u[:, c, i, j])
    return x


def sample(params: dict, config: Config, rng: numpy.random.Generator, batch: int, *, cond=None):
    """Ancestral sampling: u = rng.random((batch, C, H, W)), then `generate` with those uniforms."""
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    u = rng.random((batch, config.channels, config.height, config.width))
    return generate(params, config, u, cond=cond)


# ----------------------------------------------------------------------------- receptive fields and super-resolution


def _open_taps(k: int, centre: bool) -> set[tuple[int, int]]:
    """The (row, column) offsets of the open taps of a k x k raster-causal kernel."""
    r = k // 2
    return {(a - r, e - r) for a in range(k) for e in range(k)
            if a < r or (a == r and (e < r or (e == r and centre)))}  # fmt: skip


def _earlier(config: Config, position) -> numpy.ndarray:
    i, j = position
    H, W = config.height, config.width
    return (numpy.arange(H)[:, None] * W + numpy.arange(W)[None, :]) < i * W + j


def _check_position(config: Config, position) -> tuple[int, int]:
    if len(position) != 2 or not all(_is_int(p) for p in position) or not (
        0 <= position[0] < config.height and 0 <= position[1] < config.width
    ):
        raise ValueError(f"position: expected (i, j) with 0 <= i < {config.height}, 0 <= j < {config.width}, "
                         f"got {tuple(position)}")  # fmt: skip
    return int(position[0]), int(position[1])


def reachable(config: Config, position) -> numpy.ndarray:
    """(H, W) bool: the earlier pixels a plain PixelCNN's output at `position` = (i, j) can depend
    on, derived from the masks alone (no network run).

    A path from input pixel (i', j') to output (i, j) takes one step per layer: the first
    layer (k0 x k0, mask A) moves by one of its open tap offsets (di, dj), each k x k mask-B
    layer by one of its open taps (the 1x1 layers by (0, 0)). The reachable offsets are the
    sums of one step per layer. A network with generic weights depends on exactly these pixels.
    """
    if config.kind != "pixelcnn":
        raise ValueError(f"config.kind: expected 'pixelcnn', got {config.kind!r}")
    i, j = _check_position(config, position)
    reach = _open_taps(config.input_kernel, False)
    step = _open_taps(config.kernel_size, True)
    for _ in range(config.n_layers):
        reach = {(a + s, e + t) for a, e in reach for s, t in step}
    seen = numpy.zeros((config.height, config.width), dtype=bool)
    for a, e in reach:  # input pixel = output pixel + offset
        if 0 <= i + a < config.height and 0 <= j + e < config.width:
            seen[i + a, j + e] = True
    return seen & _earlier(config, (i, j))


def blind_spot(config: Config, position) -> numpy.ndarray:
    """(H, W) bool: the earlier pixels a plain PixelCNN's output at (i, j) misses *however deep*
    the stack is (van den Oord et al. 2016, "Conditional Image Generation...", Fig. 1).

    Each k x k mask-B layer moves at most r = k//2 columns right and then only while moving
    one row up; the first layer (r0 = k0//2) at most r0 right for one row up, or stays on
    the row moving left. A pixel u >= 1 rows up is therefore reachable only if it lies at most
        max(r0 + r (u - 1), r u - 1)
    columns to the right; the blind spot is every earlier pixel further right than that
    (and nothing on the current row). The Gated PixelCNN has none.
    """
    if config.kind != "pixelcnn":
        raise ValueError(f"config.kind: expected 'pixelcnn' (the Gated PixelCNN has no blind spot), "
                         f"got {config.kind!r}")  # fmt: skip
    i, j = _check_position(config, position)
    r0, r = config.input_kernel // 2, config.kernel_size // 2
    up = i - numpy.arange(config.height)[:, None]  # (H, 1) rows above the output
    right = numpy.arange(config.width)[None, :] - j  # (1, W) columns to its right
    limit = numpy.maximum(r0 + r * (up - 1), r * up - 1)
    return (up >= 1) & (right > limit)


def downsample(x, factor: int, levels: int):
    """A low-resolution image: the mean of each factor x factor block, rounded to the nearest level.
    x (B, C, H, W) int with H, W multiples of factor -> (B, C, H / factor, W / factor) int64."""
    xp = namespace(x)
    if not _is_int(factor) or factor < 1:
        raise ValueError(f"factor: expected a positive int, got {factor!r}")
    B, C, H, W = x.shape
    if H % factor or W % factor:
        raise ValueError(f"x: expected height and width multiples of factor={factor}, got {(H, W)}")
    blocks = xp.asarray(x, dtype=xp.float64).reshape(B, C, H // factor, factor, W // factor, factor)
    return xp.clip(xp.rint(blocks.mean(axis=(3, 5))), 0, levels - 1).astype(xp.int64)


def super_resolution_cond(low_res, factor: int, levels: int):
    """The spatial conditioning map of super-resolution: the low-resolution image (B, C, h, w) int
    in [0, levels), scaled to [-1, 1] and upsampled by nearest neighbour to (B, C, h * factor,
    w * factor). Use with a Gated PixelCNN of cond_channels = C and height, width = h * factor,
    w * factor: it then models p(x_high | x_low) (van den Oord et al. 2016, conditioning on a map).
    """
    xp = namespace(low_res)
    if not _is_int(factor) or factor < 1:
        raise ValueError(f"factor: expected a positive int, got {factor!r}")
    if getattr(getattr(low_res, "dtype", None), "kind", None) not in ("i", "u") or low_res.ndim != 4:
        raise ValueError(f"low_res: expected a (B, C, h, w) integer array, got {getattr(low_res, 'dtype', None)} "
                         f"{tuple(getattr(low_res, 'shape', ()))}")  # fmt: skip
    if int(low_res.min()) < 0 or int(low_res.max()) >= levels:
        bad = int(low_res.min()) if int(low_res.min()) < 0 else int(low_res.max())
        raise ValueError(f"low_res: pixel values must lie in [0, {levels}), got {bad}")
    s = scale_input(low_res, levels)  # (B, C, h, w)
    return xp.repeat(xp.repeat(s, factor, axis=2), factor, axis=3)  # (B, C, h f, w f)
