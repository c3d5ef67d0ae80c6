"""PixelCNN++ in torch: the network of reference/pixelcnnpp.py (same names, same arguments,
the same parameters), trainable through autograd, and fast cached generation.

The equations, the parameter layout and the paper are in reference/pixelcnnpp.py. Here
feature maps are (B, C, H, W) and every convolution is one torch kernel.

Cached generation (Ramachandran et al. 2017, "Fast Generation for Convolutional
Autoregressive Models"): naive sampling runs the whole network H W times; but the value of
every activation at every position is final as soon as the pixels it depends on are drawn,
so each can be computed once, at that moment, from cached activations of the layer below:

  - the u stream (the vertical stack) at row r depends only on rows < r: when row r starts,
    row r of every u activation is computed at every resolution where a row becomes ready
    (H/2 rows at even r, H/4 rows at r % 4 == 0), by one convolution over a two-row slab;
  - the ul stream at (r, c) depends on the pixels before (r, c): after each pixel, the ul
    activations at (r, c) are computed -- and, where r and c are even (multiples of 4), at
    (r/2, c/2) of the H/2 (and (r/4, c/4) of the H/4) resolution, between the up pass and
    the down pass, exactly when the network's order needs them -- each a matrix product
    over a 2 x 2 patch of cached activations.

Every activation is computed exactly once: the whole generation costs one forward pass
of arithmetic (plus one small operation per layer and pixel), instead of H W passes.
Given the same uniforms it draws the naive sampler's pixels (the conditionals agree to
rounding: float64 ~1e-15).
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import distributions as dist
from chainrule.fast import sampling as fast_sampling
from chainrule.fast.backend import checked_tensors
from chainrule.reference.pixelcnnpp import (  # noqa: F401  (Config and the layout are shared with the reference)
    LEVELS,
    U_KERNEL,
    UL_KERNEL,
    Config,
    block_name,
    check_params,
    param_shapes,
    uniforms_shape,
)
from chainrule.reference.xp import is_cupy



# ----------------------------------------------------------------------------- validation


def checked_params(params, config: Config) -> dict:
    """params as a dict of torch tensors of one float dtype on one device; ValueError naming the key.
    NumPy (or CuPy) params are converted to float64 torch tensors (on CUDA for CuPy)."""
    return checked_tensors(params, lambda p: check_params(p, config), "out.w")


def check_images(x, config: Config, device, name: str = "x") -> torch.Tensor:
    """reference.pixelcnnpp.check_images for torch tensors too -> x as int64 on `device`."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name}: expected an integer array, got {x.dtype}")
        t = x
    else:
        a = numpy.asarray(x.get() if is_cupy(x) else x)
        if a.dtype.kind not in ("i", "u"):
            raise ValueError(f"{name}: expected an integer array, got {a.dtype}")
        t = torch.from_numpy(a.astype(numpy.int64))
    want = (config.channels, config.height, config.width)
    if t.ndim != 4 or tuple(t.shape[1:]) != want or t.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (B, {', '.join(map(str, want))}) with B >= 1, got {tuple(t.shape)}")
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= config.levels:
        raise ValueError(f"{name}: levels must lie in [0, {config.levels}), got {lo if lo < 0 else hi}")
    return t.to(device=device, dtype=torch.int64)


def _check_uniforms(u, config: Config, device) -> torch.Tensor:
    """u (B, H, W, 1 + C) in [0, 1) as float64 on `device` (reference.pixelcnnpp._check_uniforms)."""
    t = u.detach() if isinstance(u, torch.Tensor) else torch.from_numpy(numpy.asarray(u, dtype=numpy.float64))
    t = t.to(device=device, dtype=torch.float64)
    want = uniforms_shape(config, 1)[1:]
    if t.ndim != 4 or tuple(t.shape[1:]) != want or t.shape[0] < 1:
        raise ValueError(f"u: expected shape (B, {', '.join(map(str, want))}) with B >= 1, got {tuple(t.shape)}")
    if not bool(((t >= 0) & (t < 1)).all()):
        raise ValueError("u: expected uniforms in [0, 1), got a value outside (or NaN)")
    return t


# ----------------------------------------------------------------------------- layers (NCHW)


def _conv_w(w):
    """(kh, kw, I, O) -> torch's conv2d weight (O, I, kh, kw)."""
    return w.permute(3, 2, 0, 1)


def _deconv_w(w):
    """(kh, kw, I, O) -> torch's conv_transpose2d weight (I, O, kh, kw)."""
    return w.permute(2, 3, 0, 1)


def concat_elu(x):
    """elu([x, -x]) along the channel axis (dim 1): (B, C, ...) -> (B, 2C, ...)."""
    return F.elu(torch.cat([x, -x], dim=1))


def nin(x, w, b):
    """1x1 convolution: (B, I, H, W), w (I, O) -> (B, O, H, W)."""
    return torch.einsum("bihw,io->bohw", x, w) + b[:, None, None]


def down_shifted_conv2d(x, w, b, stride: int = 1):
    """reference.pixelcnnpp.down_shifted_conv2d: pad kh - 1 on top, (kw - 1)/2 left and right."""
    kh, kw = w.shape[:2]
    return F.conv2d(F.pad(x, ((kw - 1) // 2, (kw - 1) // 2, kh - 1, 0)), _conv_w(w), b, stride=stride)


def down_right_shifted_conv2d(x, w, b, stride: int = 1):
    """reference.pixelcnnpp.down_right_shifted_conv2d: pad kh - 1 on top, kw - 1 on the left."""
    kh, kw = w.shape[:2]
    return F.conv2d(F.pad(x, (kw - 1, 0, kh - 1, 0)), _conv_w(w), b, stride=stride)


def down_shifted_deconv2d(x, w, b, stride: int = 2):
    """reference.pixelcnnpp.down_shifted_deconv2d: (H, W) -> (s H, s W)."""
    kw = w.shape[1]
    y = F.conv_transpose2d(x, _deconv_w(w), b, stride=stride)
    H, W = x.shape[2], x.shape[3]
    return y[:, :, : stride * H, (kw - 1) // 2 : (kw - 1) // 2 + stride * W]


def down_right_shifted_deconv2d(x, w, b, stride: int = 2):
    """reference.pixelcnnpp.down_right_shifted_deconv2d: (H, W) -> (s H, s W)."""
    y = F.conv_transpose2d(x, _deconv_w(w), b, stride=stride)
    return y[:, :, : stride * x.shape[2], : stride * x.shape[3]]


def down_shift(x):
    """y[:, :, i] = x[:, :, i - 1], row 0 zeros."""
    return F.pad(x[:, :, :-1], (0, 0, 1, 0))


def right_shift(x):
    """y[..., j] = x[..., j - 1], column 0 zeros."""
    return F.pad(x[..., :-1], (1, 0))


def dropout(x, p: float, rng):
    """reference.pixelcnnpp.dropout: the mask rng.random(shape) >= p drawn in the reference's
    channels-last shape (B, H, W, C), so the same rng state drops the same entries."""
    if rng is None or p == 0.0:
        return x
    B, C, H, W = x.shape
    keep = torch.from_numpy(rng.random((B, H, W, C)) >= p).permute(0, 3, 1, 2).to(x.device)
    return torch.where(keep, x / (1.0 - p), torch.zeros((), dtype=x.dtype, device=x.device))


def gated_resnet(params: dict, prefix: str, x, a, conv, dropout_p: float = 0.0, rng=None):
    """x + A sigmoid(G), [A, G] = conv2(dropout(concat_elu(conv1(concat_elu(x)) + nin(concat_elu(a)))))."""
    C = x.shape[1]
    c1 = conv(concat_elu(x), params[prefix + "conv1.w"], params[prefix + "conv1.b"])  # (B, C, H, W)
    if a is not None:
        c1 = c1 + nin(concat_elu(a), params[prefix + "aux.w"], params[prefix + "aux.b"])
    c2 = conv(dropout(concat_elu(c1), dropout_p, rng), params[prefix + "conv2.w"], params[prefix + "conv2.b"])
    return x + c2[:, :C] * torch.sigmoid(c2[:, C:])  # (B, C, H, W)


# ----------------------------------------------------------------------------- the network


def _x_in(x, config: Config, dtype):
    """Images (B, C, H, W) int -> [2 x / (levels - 1) - 1, 1] (B, C + 1, H, W) in `dtype`.
    The scaling is done in float64, then rounded once."""
    xf = (2.0 * x.to(torch.float64) / (config.levels - 1) - 1.0).to(dtype)
    return torch.cat([xf, torch.ones_like(xf[:, :1])], dim=1)


def network(params: dict, config: Config, x, rng=None):
    """reference.pixelcnnpp.network: images (B, C, H, W) int64 tensor -> raw outputs (B, H, W, n_out)."""
    p = params
    drop = config.dropout_p if rng is not None else 0.0
    x_in = _x_in(x, config, p["out.w"].dtype)
    u = down_shift(down_shifted_conv2d(x_in, p["init.u.w"], p["init.u.b"]))  # (B, C, H, W)
    ul = down_shift(down_shifted_conv2d(x_in, p["init.ul_above.w"], p["init.ul_above.b"])) + right_shift(
        down_right_shifted_conv2d(x_in, p["init.ul_left.w"], p["init.ul_left.b"])
    )
    u_stack, ul_stack = [u], [ul]
    for level in range(LEVELS):
        if level > 0:
            q = f"downsample.{level - 1}."
            u_stack.append(down_shifted_conv2d(u_stack[-1], p[q + "u.w"], p[q + "u.b"], stride=2))
            ul_stack.append(down_right_shifted_conv2d(ul_stack[-1], p[q + "ul.w"], p[q + "ul.b"], stride=2))
        for k in range(config.nr_resnet):
            u = gated_resnet(p, block_name("up", level, k, "u"), u_stack[-1], None, down_shifted_conv2d, drop, rng)
            u_stack.append(u)
            ul_stack.append(gated_resnet(p, block_name("up", level, k, "ul"), ul_stack[-1], u,
                                         down_right_shifted_conv2d, drop, rng))  # fmt: skip
    u, ul = u_stack.pop(), ul_stack.pop()
    for level in reversed(range(LEVELS)):
        if level < LEVELS - 1:
            q = f"upsample.{level}."
            u = down_shifted_deconv2d(u, p[q + "u.w"], p[q + "u.b"])
            ul = down_right_shifted_deconv2d(ul, p[q + "ul.w"], p[q + "ul.b"])
        for k in range(config.nr_resnet + (level < LEVELS - 1)):
            u = gated_resnet(p, block_name("down", level, k, "u"), u, u_stack.pop(), down_shifted_conv2d, drop, rng)
            aux = torch.cat([u, ul_stack.pop()], dim=1)  # (B, 2C, h, w)
            ul = gated_resnet(p, block_name("down", level, k, "ul"), ul, aux, down_right_shifted_conv2d, drop, rng)
    out = nin(F.elu(ul), p["out.w"], p["out.b"])  # (B, n_out, H, W)
    return out.permute(0, 2, 3, 1)  # (B, H, W, n_out)


def output_params(raw, config: Config) -> dict:
    """reference.pixelcnnpp.output_params: raw (B, H, W, n_out) -> the mixture parameters."""
    K = config.nr_logistic_mix
    if config.channels == 3:
        return dist.unpack_pixelcnn_output(raw, min_log_scale=config.min_log_scale)
    log_scales = raw[:, None, :, :, 2 * K : 3 * K]
    if config.min_log_scale is not None:
        log_scales = log_scales.clamp(min=config.min_log_scale)
    return {"logit_weights": raw[..., :K], "means": raw[:, None, :, :, K : 2 * K], "log_scales": log_scales}


def _needs_grad(params: dict) -> bool:
    return torch.is_grad_enabled() and any(v.requires_grad for v in params.values())


def forward(params: dict, config: Config, x, *, rng=None) -> dict:
    """reference.pixelcnnpp.forward: images (B, C, H, W) int (torch or NumPy) -> the mixture
    parameters of every pixel (torch, the params' dtype). Differentiable with respect to params
    that require grad. rng: dropout masks from this NumPy Generator (the reference's masks)."""
    params = checked_params(params, config)
    x = check_images(x, config, params["out.w"].device)
    with torch.enable_grad() if _needs_grad(params) else torch.no_grad():
        return output_params(network(params, config, x, rng), config)


def pixel_log_probs(out: dict, config: Config, x):
    """log p(x_i | x_<i) of every pixel (B, H, W) from `forward`'s output, float64 for float64
    params, else float32 (the distribution is evaluated in at least float32)."""
    dtype = torch.float64 if out["means"].dtype == torch.float64 else torch.float32
    out = {k: v.to(dtype) for k, v in out.items()}
    if config.channels == 3:
        return dist.rgb_mixture_log_prob(x, out, levels=config.levels)
    return dist.discretized_logistic_mixture_log_prob(
        x[:, 0], out["logit_weights"], out["means"][:, 0], out["log_scales"][:, 0], levels=config.levels
    )


def log_prob(params: dict, config: Config, x, *, rng=None):
    """reference.pixelcnnpp.log_prob: (B,) nats, float64 for float64 params, else float32.
    Differentiable with respect to params (the training loss is -log_prob(..., rng=rng).mean())."""
    params = checked_params(params, config)
    x = check_images(x, config, params["out.w"].device)
    with torch.enable_grad() if _needs_grad(params) else torch.no_grad():
        out = output_params(network(params, config, x, rng), config)
        return pixel_log_probs(out, config, x).sum(dim=(1, 2))


# ----------------------------------------------------------------------------- sampling


def _sample_pixel(pp: dict, config: Config, u):
    """One pixel from its parameters (logit_weights (B, K), the others (B, C, K)) and
    uniforms u (B, 1 + C) -> (B, C) int64 (reference.pixelcnnpp.sample_pixel). Unchecked:
    the caller validates the parameters (`_raise_if_not_finite`).

    The sampler runs in float64 whatever the network's dtype: a float32 (bfloat16) generation
    draws exactly the pixels the reference sampler draws from its conditionals (upcast), so a
    low-precision sample differs from the reference only through the conditionals' rounding."""
    pp = {k: (v[:, None, None] if k == "logit_weights" else v[:, :, None, None]).to(torch.float64)
          for k, v in pp.items()}  # fmt: skip
    u_component = u[:, None, None, 0]  # (B, 1, 1)
    if config.channels == 3:
        u_value = u[:, 1:, None, None]  # (B, 3, 1, 1)
        return dist._rgb_sample(pp, u_component, u_value, config.levels)[:, :, 0, 0]
    k = fast_sampling.inverse_cdf(pp["logit_weights"], u_component)[0]  # (B, 1, 1)
    m, ls = dist._pick(pp["means"][:, 0], k), dist._pick(pp["log_scales"][:, 0], k)
    return dist._logistic_sample(m, ls, u[:, None, None, 1], config.levels)[:, None, 0, 0]


def _raise_if_not_finite(finite: torch.Tensor) -> None:
    """finite: (H W,) bool, per pixel whether every network output was finite; ValueError otherwise."""
    if not bool(finite.all()):  # the one host sync of a generation
        pos = int((~finite).nonzero()[0, 0])
        raise ValueError(f"params: the network output at pixel {pos} (raster order) is not finite (NaN or inf)")


def _generate_naive(params: dict, config: Config, u):
    """The reference's loop on torch: the whole network once per pixel."""
    B, H, W = u.shape[0], config.height, config.width
    x = torch.zeros((B, config.channels, H, W), dtype=torch.int64, device=u.device)
    finite = torch.ones(H * W, dtype=torch.bool, device=u.device)
    for r in range(H):
        for c in range(W):
            raw = network(params, config, x)[:, r : r + 1, c : c + 1]  # (B, 1, 1, n_out)
            finite[r * W + c] = torch.isfinite(raw).all()
            out = output_params(raw, config)
            pp = {k: (v[:, 0, 0] if k == "logit_weights" else v[:, :, 0, 0]) for k, v in out.items()}
            x[:, :, r, c] = _sample_pixel(pp, config, u[:, r, c])
    _raise_if_not_finite(finite)
    return x


def generate(params: dict, config: Config, u, *, cached: bool = True) -> torch.Tensor:
    """Ancestral sampling in raster order from explicit uniforms u (B, H, W, 1 + C)
    (reference.pixelcnnpp.uniforms_shape), NumPy or torch -> (B, C, H, W) int64 on the
    params' device. cached=True: the cached generator (`CachedGenerator`); False: the
    network on the whole image for every pixel, as reference.pixelcnnpp.generate.
    Both draw the same pixels as the reference from the same u (up to rounding ties)."""
    params = checked_params(params, config)
    u = _check_uniforms(u, config, params["out.w"].device)
    with torch.inference_mode():
        if not cached:
            return _generate_naive(params, config, u)
        gen = CachedGenerator(params, config, u.shape[0])
        for r in range(config.height):
            for c in range(config.width):
                gen.draw(u[:, r, c])
        _raise_if_not_finite(gen.finite)
        return gen.images


def init_cache(params: dict, config: Config, batch: int, *, keep_conditionals: bool = False) -> "CachedGenerator":
    """An empty cached generator for `batch` images (see CachedGenerator: conditional / push / draw).
    Use it under torch.inference_mode() (or no_grad): it writes its buffers in place."""
    params = checked_params(params, config)
    if not isinstance(batch, (int, numpy.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    return CachedGenerator(params, config, int(batch), keep_conditionals=keep_conditionals)


def sample(params: dict, config: Config, rng: numpy.random.Generator, batch: int, *, cached: bool = True):
    """u = rng.random(uniforms_shape(config, batch)) exactly as reference.pixelcnnpp.sample, then `generate`."""
    if not isinstance(batch, (int, numpy.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    return generate(params, config, rng.random(uniforms_shape(config, batch)), cached=cached)


# ----------------------------------------------------------------------------- cached generation


class _Block:
    """One gated resnet's weights in the two forms the generator uses: convolution weights
    for whole rows (u stream), and for single positions (ul stream) matrices acting on the
    flattened patch -- conv1 and the aux nin fused into one:

        c1 = elu([v, -v]) M1 + (b1 + b_aux),   v = [patch (C kh kw, in (c, a, b) order), aux (A)]
    """

    def __init__(self, params: dict, prefix: str):
        w1 = _conv_w(params[prefix + "conv1.w"])  # (C, 2C, kh, kw)
        C = self.C = w1.shape[0]
        self.w1, self.b1 = w1, params[prefix + "conv1.b"]
        self.w2, self.b2 = _conv_w(params[prefix + "conv2.w"]), params[prefix + "conv2.b"]
        self.wa = params.get(prefix + "aux.w")  # (2A, C) or None
        self.ba = params.get(prefix + "aux.b")
        self.m2 = self.w2.reshape(2 * C, -1).t().contiguous()  # (2C kh kw, 2C)
        pos, neg = w1[:, :C].reshape(C, -1).t(), w1[:, C:].reshape(C, -1).t()  # (C kh kw, C) each
        if self.wa is None:
            self.m1, self.bias1 = torch.cat([pos, neg]).contiguous(), self.b1
        else:
            A = self.wa.shape[0] // 2
            self.m1 = torch.cat([pos, self.wa[:A], neg, self.wa[A:]]).contiguous()  # (2 (C kh kw + A), C)
            self.bias1 = self.b1 + self.ba


class CachedGenerator:
    """State of a cached PixelCNN++ generation: every activation of the network kept in a
    zero-padded buffer (B, C, h + 1, w + 2) (one zero row on top, one zero column each side:
    the padding of the shifted convolutions), filled as its positions become final.

    The model protocol's incremental interface (reference/gpt.py's init_cache / step, for pixels):
    `conditional()` gives the next pixel's mixture parameters, `push(pixel)` appends a pixel;
    `draw(u_pixel)` = push(sample(conditional(), u_pixel)), returning the pixel (B, C).
    `images` is the (B, C, H, W) int64 batch, pixels not yet drawn 0.
    `conditionals` (optional) keeps each pixel's mixture parameters as the generator computed
    them; `finite` (H W,) whether each pixel's network output was finite (draw does not check:
    no host sync per pixel; `generate` checks once at the end).
    """

    def __init__(self, params: dict, config: Config, batch: int, keep_conditionals: bool = False):
        """params: checked torch params (`checked_params`); batch: images generated at once."""
        p = params
        self.config, self.B = config, batch
        self.pos = 0  # the next pixel, raster order
        self._pending = None  # the conditional of pixel `pos`, once computed
        w0 = p["out.w"]
        dt, dev = w0.dtype, w0.device
        C, R, H, W = config.nr_filters, config.nr_resnet, config.height, config.width
        self.images = torch.zeros((batch, config.channels, H, W), dtype=torch.int64, device=dev)
        self.finite = torch.ones(H * W, dtype=torch.bool, device=dev)  # per pixel: all network outputs finite
        self.conditionals = [] if keep_conditionals else None

        def buf(level, channels=C):
            return torch.zeros((batch, channels, (H >> level) + 1, (W >> level) + 2), dtype=dt, device=dev)

        # the input [x, 1] with two zero rows on top (u_0 reads rows r - 2, r - 1)
        self.x_in = torch.zeros((batch, config.channels + 1, H + 2, W + 2), dtype=dt, device=dev)
        self.x_in[:, -1, 2:, 1 : W + 1] = 1.0
        self.w_init_u = (_conv_w(p["init.u.w"]), p["init.u.b"])
        self.w_above = (_conv_w(p["init.ul_above.w"]), p["init.ul_above.b"])
        self.m_left = (_conv_w(p["init.ul_left.w"]).reshape(C, -1).t().contiguous(), p["init.ul_left.b"])
        self.ul_above = torch.zeros((batch, C, W), dtype=dt, device=dev)  # the current row's above-part of ul_0

        self.blocks = {}
        for pass_ in ("up", "down"):
            for level in range(LEVELS):
                n = R if pass_ == "up" or level == LEVELS - 1 else R + 1
                for k in range(n):
                    for s in ("u", "ul"):
                        self.blocks[(pass_, level, k, s)] = _Block(p, block_name(pass_, level, k, s))
        self.down_w = {(lv, s): (_conv_w(p[f"downsample.{lv}.{s}.w"]), p[f"downsample.{lv}.{s}.b"])
                       for lv in range(LEVELS - 1) for s in ("u", "ul")}  # fmt: skip
        self.down_m = {lv: self.down_w[(lv, "ul")][0].reshape(C, -1).t().contiguous() for lv in range(LEVELS - 1)}
        self.up_w = {(lv, s): (_deconv_w(p[f"upsample.{lv}.{s}.w"]), p[f"upsample.{lv}.{s}.b"])
                     for lv in range(LEVELS - 1) for s in ("u", "ul")}  # fmt: skip
        self.out_w, self.out_b = p["out.w"], p["out.b"]

        # activation buffers. up[s][level][k]: k = 0 the level's input (u_0 / ul_0 or the
        # down-sampled map), k >= 1 the output of up block k - 1; c1 per block; down[s][level][k]:
        # k = 0 the level's input (up-sampled, or the top of the stack at H/4), k >= 1 block outputs.
        self.up = {s: [[buf(lv) for _ in range(R + 1)] for lv in range(LEVELS)] for s in ("u", "ul")}
        self.down = {s: [[buf(lv) for _ in range(R + (lv < LEVELS - 1) + 1)] for lv in range(LEVELS)]
                     for s in ("u", "ul")}  # fmt: skip
        self.c1 = {key: buf(key[1]) for key in self.blocks}
        for s in ("u", "ul"):  # the H/4 down pass starts from the top of the up stack: the same buffer
            self.down[s][LEVELS - 1][0] = self.up[s][LEVELS - 1][R]

    # ---- the u stream: whole rows

    def _u_block_row(self, key, xbuf, i, aux_buf, outbuf):
        """Row i of a u-stream gated resnet: input rows i - 1, i from xbuf, aux row i from aux_buf."""
        blk, c1buf = self.blocks[key], self.c1[key]
        c1 = F.conv2d(concat_elu(xbuf[:, :, i : i + 2]), blk.w1, blk.b1)  # (B, C, 1, w)
        if aux_buf is not None:
            c1 = c1 + nin(concat_elu(aux_buf[:, :, i + 1 : i + 2, 1:-1]), blk.wa, blk.ba)
        c1buf[:, :, i + 1, 1:-1] = c1[:, :, 0]
        c2 = F.conv2d(concat_elu(c1buf[:, :, i : i + 2]), blk.w2, blk.b2)  # (B, 2C, 1, w)
        C = blk.C
        outbuf[:, :, i + 1, 1:-1] = xbuf[:, :, i + 1, 1:-1] + c2[:, :C, 0] * torch.sigmoid(c2[:, C:, 0])

    def _u_rows(self, r: int):
        """Row r of every u activation (rows < r of the image are drawn), and the rows of the
        lower resolutions that become final with it."""
        cfg, R = self.config, self.config.nr_resnet
        up, down = self.up["u"], self.down["u"]
        if r > 0:  # u_0 = down_shift(conv[2x3](x_in)): rows r - 2, r - 1 of the image
            up[0][0][:, :, r + 1, 1:-1] = F.conv2d(self.x_in[:, :, r : r + 2], *self.w_init_u)[:, :, 0]
            self.ul_above = F.conv2d(self.x_in[:, :, r + 1 : r + 2], *self.w_above)[:, :, 0]  # (B, C, W)
        levels = [lv for lv in range(LEVELS) if r % (1 << lv) == 0]
        for lv in levels:  # up pass
            i = r >> lv
            if lv > 0:  # stride-2 down-sampling of rows 2i - 1, 2i of the level above
                w, b = self.down_w[(lv - 1, "u")]
                slab = up[lv - 1][R][:, :, 2 * i : 2 * i + 2]  # (B, C, 2, 2w + 2)
                up[lv][0][:, :, i + 1, 1:-1] = F.conv2d(slab, w, b, stride=(1, 2))[:, :, 0]
            for k in range(R):
                self._u_block_row(("up", lv, k, "u"), up[lv][k], i, None, up[lv][k + 1])
        for lv in reversed(levels):  # down pass
            i = r >> lv
            n = R if lv == LEVELS - 1 else R + 1
            if lv < LEVELS - 1:  # transposed conv: row i of this level from row i // 2 of the one below
                w, b = self.up_w[(lv, "u")]
                src = down[lv + 1][-1][:, :, i // 2 + 1 : i // 2 + 2, 1:-1]  # (B, C, 1, w / 2)
                y = F.conv_transpose2d(src, w[:, :, i % 2 : i % 2 + 1], b, stride=(1, 2))  # (B, C, 1, w + 1)
                down[lv][0][:, :, i + 1, 1:-1] = y[:, :, 0, 1 : 1 + (cfg.width >> lv)]
            for k in range(n):
                skip = up[lv][R - 1 - k] if lv == LEVELS - 1 else up[lv][R - k]
                self._u_block_row(("down", lv, k, "u"), down[lv][k], i, skip, down[lv][k + 1])

    # ---- the ul stream: single positions

    def _ul_block_at(self, key, xbuf, i, j, aux, outbuf):
        """A ul-stream gated resnet at (i, j): input patch rows i - 1..i, columns j - 1..j of
        xbuf, aux: a list of (B, A_n) tensors (concatenated). Writes and returns the output (B, C)."""
        blk, c1buf = self.blocks[key], self.c1[key]
        v = torch.cat([xbuf[:, :, i : i + 2, j : j + 2].reshape(self.B, -1), *aux], dim=1)  # (B, 4C + A)
        c1 = torch.addmm(blk.bias1, F.elu(torch.cat([v, -v], dim=1)), blk.m1)  # (B, C)
        c1buf[:, :, i + 1, j + 1] = c1
        c2 = torch.addmm(blk.b2, concat_elu(c1buf[:, :, i : i + 2, j : j + 2]).reshape(self.B, -1), blk.m2)  # (B, 2C)
        C = blk.C
        out = torch.addcmul(xbuf[:, :, i + 1, j + 1], c2[:, :C], torch.sigmoid(c2[:, C:]))
        outbuf[:, :, i + 1, j + 1] = out
        return out

    def _ul_at(self, r: int, c: int):
        """Every ul activation that becomes final with the pixels before (r, c); returns the last
        (B, C) ul at (r, c)."""
        R, B = self.config.nr_resnet, self.B
        up, down, u_up, u_down = self.up["ul"], self.down["ul"], self.up["u"], self.down["u"]
        # ul_0 = down_shift(conv[1x3](x)) + right_shift(conv[2x1](x)) at (r, c)
        v = self.ul_above[:, :, c] if r > 0 else torch.zeros_like(self.ul_above[:, :, c])
        if c > 0:
            m, b = self.m_left
            v = v + torch.addmm(b, self.x_in[:, :, r + 1 : r + 3, c].reshape(B, -1), m)
        up[0][0][:, :, r + 1, c + 1] = v
        levels = [lv for lv in range(LEVELS) if r % (1 << lv) == 0 and c % (1 << lv) == 0]
        for lv in levels:  # up pass
            i, j = r >> lv, c >> lv
            if lv > 0:  # stride-2 down-sampling: rows 2i - 1..2i, columns 2j - 1..2j of the level above
                patch = up[lv - 1][R][:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(B, -1)
                up[lv][0][:, :, i + 1, j + 1] = torch.addmm(self.down_w[(lv - 1, "ul")][1], patch, self.down_m[lv - 1])
            for k in range(R):
                aux = [u_up[lv][k + 1][:, :, i + 1, j + 1]]
                self._ul_block_at(("up", lv, k, "ul"), up[lv][k], i, j, aux, up[lv][k + 1])
        out = None
        for lv in reversed(levels):  # down pass
            i, j = r >> lv, c >> lv
            n = R if lv == LEVELS - 1 else R + 1
            if lv < LEVELS - 1:  # transposed conv: (i, j) gets (i // 2, j // 2) through tap (i % 2, j % 2)
                w, b = self.up_w[(lv, "ul")]
                src = down[lv + 1][-1][:, :, i // 2 + 1, j // 2 + 1]  # (B, C)
                down[lv][0][:, :, i + 1, j + 1] = torch.addmm(b, src, w[:, :, i % 2, j % 2])
            for k in range(n):
                skip = up[lv][R - 1 - k] if lv == LEVELS - 1 else up[lv][R - k]
                aux = [u_down[lv][k + 1][:, :, i + 1, j + 1], skip[:, :, i + 1, j + 1]]  # [u, skip]: (B, 2C)
                out = self._ul_block_at(("down", lv, k, "ul"), down[lv][k], i, j, aux, down[lv][k + 1])
        return out

    def conditional(self) -> dict:
        """The mixture parameters of the next pixel (raster order) given the pixels pushed so far:
        logit_weights (B, K), means and log_scales (and coeffs for RGB) (B, C, K). Computes the
        activations that became final with the last pushed pixel; a second call before `push`
        returns the same parameters without recomputing."""
        cfg = self.config
        if self.pos >= cfg.height * cfg.width:
            raise ValueError(f"conditional: all {cfg.height * cfg.width} pixels are drawn")
        if self._pending is not None:
            return self._pending
        r, c = divmod(self.pos, cfg.width)
        if c == 0:
            self._u_rows(r)
        ul = self._ul_at(r, c)  # (B, C)
        raw = torch.addmm(self.out_b, F.elu(ul), self.out_w)  # (B, n_out)
        self.finite[self.pos] = torch.isfinite(raw).all()
        out = output_params(raw[:, None, None, :], cfg)
        self._pending = {k: (v[:, 0, 0] if k == "logit_weights" else v[:, :, 0, 0]) for k, v in out.items()}
        if self.conditionals is not None:
            self.conditionals.append(self._pending)
        return self._pending

    def push(self, pixel) -> None:
        """Append the next pixel (B, C) int levels in [0, levels) -- drawn, or given (teacher
        forcing through the cache). `conditional` must have been called for it first."""
        cfg = self.config
        if self._pending is None:
            raise ValueError("push: call conditional() for this pixel first (its activations are computed there)")
        pixel = torch.as_tensor(pixel, device=self.images.device)
        if tuple(pixel.shape) != (self.B, cfg.channels) or pixel.is_floating_point():
            raise ValueError(f"pixel: expected integer levels of shape {(self.B, cfg.channels)}, got "
                             f"{pixel.dtype} {tuple(pixel.shape)}")  # fmt: skip
        r, c = divmod(self.pos, cfg.width)
        self.images[:, :, r, c] = pixel
        xf = (2.0 * pixel.to(torch.float64) / (cfg.levels - 1) - 1.0).to(self.x_in.dtype)
        self.x_in[:, : cfg.channels, r + 2, c + 1] = xf
        self.pos += 1
        self._pending = None

    def draw(self, u_pixel) -> torch.Tensor:
        """Sample the next pixel in raster order from its uniforms u_pixel (B, 1 + C) and push it
        -> (B, C) int64. No validation of the levels drawn (the sampler's are in range)."""
        pixel = _sample_pixel(self.conditional(), self.config, u_pixel)  # (B, C)
        r, c = divmod(self.pos, self.config.width)
        self.images[:, :, r, c] = pixel
        self.x_in[:, : self.config.channels, r + 2, c + 1] = (
            2.0 * pixel.to(torch.float64) / (self.config.levels - 1) - 1.0
        ).to(self.x_in.dtype)
        self.pos += 1
        self._pending = None
        return pixel
