"""PixelCNN and Gated PixelCNN, fast: the twin of reference/pixelcnn.py in torch (CPU and CUDA).

The models, parameter names, functions, arguments and errors are those of
reference/pixelcnn.py, whose docstrings carry the equations (van den Oord et al. 2016,
"Pixel Recurrent Neural Networks" and "Conditional Image Generation with PixelCNN
Decoders"). Read that file first; this one only says how the same numbers are computed fast:

- `forward` / `log_prob`: convolutions with the masked weights (w * mask, masks built once
  per config, device and dtype), differentiable with respect to the params (autograd):
  training is `-log_prob(params, config, x).mean()` and an optimizer. On the CPU torch's
  conv2d; on CUDA im2col + one matrix product per layer (`impl="gemm"`), so that masked
  weights contribute exact zeros (cuDNN's Winograd/FFT algorithms would not guarantee it,
  and its float32 convolutions default to TF32). Causality is bit-exact either way.
- `generate(..., method="cached")`: fast generation (Ramachandran et al. 2017, "Fast
  Generation for Convolutional Autoregressive Models"). The naive sampler runs the whole
  network on the whole image for every one of the C H W entries. The cached one keeps,
  for every convolution, a cache of its input map, filled position by position as the
  image is generated, and computes each layer *at the new position only*: the
  convolution's open taps (rows at and above the current one) read from the cache as
  one small matrix product per layer. The Gated PixelCNN's vertical stack is computed
  once per row, when the row is complete (it feeds the next row only). Per entry the
  cost is that of one pixel of every layer instead of the whole image: about H W times
  fewer operations. The two produce the same numbers up to summation order, hence the
  same samples from the same uniforms (in float64 every one; see reference.checks.compare_tokens).
- `generate(..., method="naive")`: the reference's loop on the fast forward (the baseline
  of `chainrule bench pixelcnn`).

Everything runs in the params' dtype (float64, float32, bfloat16); the categorical
probabilities for sampling are float64 (fast.sampling), and log_prob takes the
log-softmax in float32 for bfloat16 params.
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import distributions as fdist
from chainrule.fast.backend import checked_tensors
from chainrule.reference import pixelcnn as _reference
from chainrule.reference.pixelcnn import (
    Config,
    blind_spot,
    channel_groups,
    check_params,
    downsample,
    generation_order,
    init,
    masks,
    param_shapes,
    random_params,
    reachable,
)
from chainrule.reference.xp import to_numpy

__all__ = [
    "Config", "param_shapes", "init", "random_params", "check_params", "masks", "channel_groups",
    "blind_spot", "reachable", "generation_order", "downsample", "super_resolution_cond",
    "checked_params", "forward", "log_prob", "generate", "sample", "METHODS", "IMPLS",
]  # fmt: skip

METHODS = ("cached", "naive")


# ----------------------------------------------------------------------------- validation


def checked_params(params, config: Config) -> dict:
    """params as a dict of torch tensors of one float dtype on one device; ValueError naming the key.
    NumPy params are converted to float64 on the CPU (CuPy arrays: on CUDA)."""
    return checked_tensors(params, lambda p: check_params(p, config), "out.1.w")


def check_images(x, config: Config, device, name: str = "x") -> torch.Tensor:
    """reference.pixelcnn.check_images for torch tensors too -> x as int64 on `device`."""
    if not isinstance(x, torch.Tensor):
        _reference.check_images(x, config, name)
        return torch.as_tensor(to_numpy(x), dtype=torch.int64, device=device)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer array, got {x.dtype}")
    want = (config.channels, config.height, config.width)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.shape[0] < 1:
        raise ValueError(f"{name}: expected shape (B, {want[0]}, {want[1]}, {want[2]}) with B >= 1 "
                         f"(channels, height, width of the config), got {tuple(x.shape)}")  # fmt: skip
    low, high = (int(v) for v in torch.aminmax(x))
    if low < 0 or high >= config.levels:
        raise ValueError(f"{name}: pixel values must lie in [0, {config.levels}), got {low if low < 0 else high}")
    return x.to(device=device, dtype=torch.int64)


def _cond(cond, config: Config, batch: int, device, dtype):
    """cond -> (labels (B,) int64 or None, spatial (B, S, H, W) in dtype or None), validated as the reference."""

    def host(a):
        return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else to_numpy(a)

    if isinstance(cond, dict):
        cond_np = {k: host(v) for k, v in cond.items()}
    else:
        cond_np = None if cond is None else host(cond)
    labels, spatial = _reference.check_cond(cond_np, config, batch)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
    if spatial is not None:
        src = cond["spatial"] if isinstance(cond, dict) else cond
        spatial = (src if isinstance(src, torch.Tensor) else torch.as_tensor(spatial)).to(device=device, dtype=dtype)
    return labels, spatial


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


# ----------------------------------------------------------------------------- weights

_MASKS: dict = {}


def _masks(config: Config, device, dtype) -> dict:
    """The masks of `config` as tensors on device in dtype (built once per config, device, dtype).

    Built outside inference mode even when the first caller samples under it: an inference
    tensor in the cache could not be saved for backward by a later training step."""
    key = (config, str(device), dtype)
    if key not in _MASKS:
        if len(_MASKS) >= 64:  # a bounded cache: many configs (property tests) must not accumulate
            _MASKS.clear()
        with torch.inference_mode(False):
            _MASKS[key] = {name: torch.as_tensor(m, dtype=dtype, device=device) for name, m in masks(config).items()}
    return _MASKS[key]


def _masked(params: dict, config: Config) -> dict:
    """params with every masked weight multiplied by its mask (differentiable)."""
    ref = params["out.1.w"]
    M = _masks(config, ref.device, ref.dtype)
    return {name: value * M[name] if name in M else value for name, value in params.items()}


def _conv(x, w, b=None, impl: str = "conv2d"):
    """'Same' conv2d with an odd kernel (the reference's conv2d), three ways:

    "conv2d"  torch's convolution (oneDNN's direct convolution on the CPU).
    "gemm"    im2col (F.unfold) and one matrix product: every output is a plain dot product of
              the weights with its window, so a masked (zero) weight contributes an exact zero.
              The default on CUDA, where cuDNN may pick Winograd or FFT algorithms (whose
              transforms mix masked and open taps, so the future would leak by rounding) and
              runs float32 convolutions in TF32 by default.
    "taps"    the reference's loop, one 1x1 product per kernel tap, summed in the same dtype:
              the naive same-dtype baseline of the low-precision comparisons.
    """
    kh, kw = w.shape[2], w.shape[3]
    if impl == "conv2d":
        return F.conv2d(x, w, b, padding=(kh // 2, kw // 2))
    H, W = x.shape[2], x.shape[3]
    if impl == "gemm":
        cols = F.unfold(x, (kh, kw), padding=(kh // 2, kw // 2))  # (B, I kh kw, H W)
        y = torch.matmul(w.reshape(w.shape[0], -1), cols).reshape(x.shape[0], w.shape[0], H, W)
        return y if b is None else y + b[None, :, None, None]
    xp = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2))
    y = torch.zeros((x.shape[0], w.shape[0], H, W), dtype=x.dtype, device=x.device)
    for a in range(kh):
        for e in range(kw):
            y = y + torch.einsum("oc,bchw->bohw", w[:, :, a, e], xp[:, :, a : a + H, e : e + W])
    return y if b is None else y + b[None, :, None, None]


IMPLS = ("conv2d", "gemm", "taps")


def _check_impl(impl, device) -> str:
    """impl, or its default for the device (None: "conv2d" on the CPU, "gemm" elsewhere)."""
    if impl is None:
        return "conv2d" if torch.device(device).type == "cpu" else "gemm"
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS} or None, got {impl!r}")
    return impl


def _gate(a, bias=0.0):
    a = a + bias
    f, g = a.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


def _scale(x, levels: int, dtype):
    return x.to(dtype) / (levels - 1) * 2.0 - 1.0


def super_resolution_cond(low_res, factor: int, levels: int):
    """reference.pixelcnn.super_resolution_cond for torch tensors (or arrays) -> (B, C, h f, w f) float."""
    if not isinstance(low_res, torch.Tensor):
        return torch.as_tensor(_reference.super_resolution_cond(low_res, factor, levels))
    s = _reference.super_resolution_cond(low_res.detach().cpu().numpy(), factor, levels)
    return torch.as_tensor(s, device=low_res.device)


# ----------------------------------------------------------------------------- forward


def _cond_terms(W, i, labels, spatial, impl="conv2d"):
    p = f"layers.{i}."
    c_v = c_h = 0.0
    if labels is not None:
        if p + "v_class" in W:  # absent in the last layer
            c_v = c_v + W[p + "v_class"][labels][:, :, None, None]  # (B, 2p, 1, 1)
        c_h = c_h + W[p + "h_class"][labels][:, :, None, None]
    if spatial is not None:
        if p + "v_spatial.w" in W:
            c_v = c_v + _conv(spatial, W[p + "v_spatial.w"], W[p + "v_spatial.b"], impl)  # (B, 2p, H, W)
        c_h = c_h + _conv(spatial, W[p + "h_spatial.w"], W[p + "h_spatial.b"], impl)
    return c_v, c_h


def _top(W, config: Config, xf, labels, spatial, impl):
    """The network up to the output layers: scaled x -> top features (B, 2h or p, H, W)."""
    if config.kind == "pixelcnn":
        a = _conv(xf, W["in.w"], W["in.b"], impl)  # (B, 2h, H, W)
        for i in range(config.n_layers):
            p = f"blocks.{i}."
            t = _conv(F.relu(a), W[p + "reduce.w"], W[p + "reduce.b"], impl)
            t = _conv(F.relu(t), W[p + "conv.w"], W[p + "conv.b"], impl)
            a = a + _conv(F.relu(t), W[p + "expand.w"], W[p + "expand.b"], impl)
        return a
    v = h = xf
    for i in range(config.n_layers):
        p = f"layers.{i}."
        c_v, c_h = _cond_terms(W, i, labels, spatial, impl)
        v_pre = _conv(v, W[p + "v.w"], W[p + "v.b"], impl)  # (B, 2p, H, W)
        link = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # shift down one row
        h_pre = _conv(h, W[p + "h.w"], W[p + "h.b"], impl) + _conv(link, W[p + "link.w"], W[p + "link.b"], impl)
        h_new = _conv(_gate(h_pre, c_h), W[p + "res.w"], W[p + "res.b"], impl)
        h = h_new if i == 0 else h + h_new
        v = _gate(v_pre, c_v)
    return h


def forward(params, config: Config, x, *, cond=None, impl: str | None = None) -> torch.Tensor:
    """reference.pixelcnn.forward: x (B, C, H, W) int -> logits (B, C, H, W, levels), in the params' dtype.
    impl: how the convolutions are computed (see `_conv`): None (the device's default: "conv2d" on
    the CPU, "gemm" on CUDA), "conv2d", "gemm", or "taps" (the naive same-dtype baseline)."""
    P = checked_params(params, config)
    ref = P["out.1.w"]
    impl = _check_impl(impl, ref.device)
    x = check_images(x, config, ref.device)
    B = x.shape[0]
    labels, spatial = _cond(cond, config, B, ref.device, ref.dtype)
    W = _masked(P, config)
    top = _top(W, config, _scale(x, config.levels, ref.dtype), labels, spatial, impl)
    o = _conv(F.relu(top), W["out.0.w"], W["out.0.b"], impl)
    o = _conv(F.relu(o), W["out.1.w"], W["out.1.b"], impl)  # (B, C * levels, H, W)
    o = o.reshape(B, config.channels, config.levels, config.height, config.width)
    return o.permute(0, 1, 3, 4, 2)  # (B, C, H, W, levels)


def log_prob(params, config: Config, x, *, cond=None, impl: str | None = None) -> torch.Tensor:
    """reference.pixelcnn.log_prob: (B,) nats. Log-softmax in the params' dtype (float32 for bfloat16)."""
    logits = forward(params, config, x, cond=cond, impl=impl)
    if logits.dtype == torch.bfloat16:
        logits = logits.float()
    x = torch.as_tensor(to_numpy(x) if not isinstance(x, torch.Tensor) else x, device=logits.device)
    terms = fdist.categorical_log_prob(x, logits)  # (B, C, H, W)
    return terms.reshape(terms.shape[0], -1).sum(dim=1)


# ----------------------------------------------------------------------------- generation


def _check_uniforms(u, config: Config, device) -> torch.Tensor:
    if isinstance(u, torch.Tensor):
        u_host = u.detach().to("cpu", torch.float64).numpy()
    else:
        u_host = numpy.asarray(to_numpy(u), dtype=numpy.float64)
    _reference.check_uniforms(u_host, config)
    return torch.as_tensor(u_host, dtype=torch.float64, device=device)


def generate(params, config: Config, u, *, cond=None, method: str = "cached") -> torch.Tensor:
    """reference.pixelcnn.generate: ancestral sampling from explicit uniforms u (B, C, H, W) in
    [0, 1), entry by entry in the chain-rule order -> x (B, C, H, W) int64.

    method "cached": fast generation from per-layer caches (module docstring); "naive": the
    whole network on the whole image for every entry, as the reference does.
    """
    _check_method(method)
    P = checked_params(params, config)
    ref = P["out.1.w"]
    u = _check_uniforms(u, config, ref.device)
    B = u.shape[0]
    labels, spatial = _cond(cond, config, B, ref.device, ref.dtype)
    with torch.inference_mode():
        if method == "naive":
            return _generate_naive(P, config, u, labels, spatial)
        W = _masked(P, config)
        if config.kind == "pixelcnn":
            return _generate_cached_pixelcnn(W, config, u)
        return _generate_cached_gated(W, config, u, labels, spatial)


def sample(params, config: Config, rng: numpy.random.Generator, batch: int, *, cond=None,
           method: str = "cached") -> torch.Tensor:  # fmt: skip
    """Ancestral sampling: u = rng.random((batch, C, H, W)) (as the reference draws it), then `generate`."""
    if not isinstance(batch, (int, numpy.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    u = rng.random((batch, config.channels, config.height, config.width))
    return generate(params, config, u, cond=cond, method=method)


def _draw(logits, u):
    """Inverse-CDF draws (B,) from logits (B, levels), probabilities in float64 (fast.sampling)."""
    return fdist.categorical_sample(logits, u)


def _generate_naive(P, config, u, labels, spatial):
    B, C, H, Wd = u.shape
    x = torch.zeros((B, C, H, Wd), dtype=torch.int64, device=u.device)
    cond = {}
    if labels is not None:
        cond["class"] = labels
    if spatial is not None:
        cond["spatial"] = spatial
    for c, i, j in generation_order(config):
        logits = forward(P, config, x, cond=cond or None)[:, c, i, j]  # (B, levels)
        x[:, c, i, j] = _draw(logits, u[:, c, i, j])
    return x


def _window_matrix(w, rows: int):
    """A (O, I, kh, kw) masked weight restricted to its first `rows` kernel rows, as an
    (I * rows * kw, O) matrix acting on a flattened (I, rows, kw) window."""
    return w[:, :, :rows, :].reshape(w.shape[0], -1).t().contiguous()


def _generate_cached_pixelcnn(W, config, u):
    """Plain PixelCNN: every layer computed at the new position only, from caches of its input.

    Caches (zero-padded maps, written as positions are generated):
      xc       (B, C, H + r0, W + 2 r0)  the scaled image (top and side padding of the k0 x k0 kernel)
      tc[l]    (B, h, H + r, W + 2 r)    the input of block l's k x k conv, relu(reduce(relu(a)))
    At (i, j) a k x k conv reads the window of rows i-r..i and columns j-r..j+r of its cache:
    the open taps (the masked weights zero the rest; entries not yet written hold 0).
    """
    B, C, H, Wd = u.shape
    L, dtype, dev = config.levels, W["out.1.w"].dtype, u.device
    r0, r = config.input_kernel // 2, config.kernel_size // 2
    k0, k = 2 * r0 + 1, 2 * r + 1
    x = torch.zeros((B, C, H, Wd), dtype=torch.int64, device=dev)
    xc = torch.zeros((B, C, H + r0, Wd + 2 * r0), dtype=dtype, device=dev)
    tc = [torch.zeros((B, config.hidden, H + r, Wd + 2 * r), dtype=dtype, device=dev) for _ in range(config.n_layers)]
    w_in, b_in = _window_matrix(W["in.w"], r0 + 1), W["in.b"]
    blocks = []
    for l in range(config.n_layers):
        p = f"blocks.{l}."
        blocks.append((W[p + "reduce.w"][:, :, 0, 0].t(), W[p + "reduce.b"], _window_matrix(W[p + "conv.w"], r + 1),
                       W[p + "conv.b"], W[p + "expand.w"][:, :, 0, 0].t(), W[p + "expand.b"]))  # fmt: skip
    w0, b0 = W["out.0.w"][:, :, 0, 0].t(), W["out.0.b"]
    w1, b1 = W["out.1.w"][:, :, 0, 0].t(), W["out.1.b"]
    for i in range(H):
        for j in range(Wd):
            for c in range(C):
                a = torch.addmm(b_in, xc[:, :, i : i + r0 + 1, j : j + k0].reshape(B, -1), w_in)  # (B, 2h)
                for l, (wr, br, wc, bc, we, be) in enumerate(blocks):
                    t = F.relu(torch.addmm(br, F.relu(a), wr))  # (B, h)
                    tc[l][:, :, i + r, j + r] = t
                    t = torch.addmm(bc, tc[l][:, :, i : i + r + 1, j : j + k].reshape(B, -1), wc)  # (B, h)
                    a = a + torch.addmm(be, F.relu(t), we)
                o = torch.addmm(b0, F.relu(a), w0)
                logits = torch.addmm(b1[c * L : (c + 1) * L], F.relu(o), w1[:, c * L : (c + 1) * L])  # (B, levels)
                x[:, c, i, j] = _draw(logits, u[:, c, i, j])
                xc[:, c, i + r0, j + r0] = x[:, c, i, j].to(dtype) / (L - 1) * 2.0 - 1.0
    return x


def _generate_cached_gated(W, config, u, labels, spatial):
    """Gated PixelCNN: the horizontal stack per position, the vertical stack per completed row.

    Caches, per layer l with kernel k_l = 2 r_l + 1 (k0 for l = 0):
      vc[l]    (B, I_l, H + r_l, W + 2 r_l)  the vertical stack's input (rows written when complete)
      hc[l]    (B, I_l, H, W + r_l)          the horizontal stack's input (left padding)
      link[l]  (B, 2p, W)                    Link(v_pre of the previous row): the vertical stack's
                                             contribution to the current row (row 0: the link bias)
    """
    B, C, H, Wd = u.shape
    L, dtype, dev, p = config.levels, W["out.1.w"].dtype, u.device, config.hidden
    n = config.n_layers
    radius = [config.input_kernel // 2] + [config.kernel_size // 2] * (n - 1)
    n_in = [C] + [p] * (n - 1)
    vc = [torch.zeros((B, n_in[l], H + radius[l], Wd + 2 * radius[l]), dtype=dtype, device=dev) for l in range(n)]
    hc = [torch.zeros((B, n_in[l], H, Wd + radius[l]), dtype=dtype, device=dev) for l in range(n)]
    link = [W[f"layers.{l}.link.b"][None, :, None].expand(B, 2 * p, Wd).clone() for l in range(n)]
    layers = []
    for l in range(n):
        q, r = f"layers.{l}.", radius[l]
        c_v, c_h = _cond_terms(W, l, labels, spatial, _check_impl(None, dev))
        c_v = torch.as_tensor(c_v, dtype=dtype, device=dev).expand(B, 2 * p, H, Wd)
        c_h = torch.as_tensor(c_h, dtype=dtype, device=dev).expand(B, 2 * p, H, Wd)
        layers.append(dict(
            v_w=W[q + "v.w"][:, :, : r + 1, :].reshape(2 * p, -1), v_b=W[q + "v.b"],
            h_w=W[q + "h.w"][:, :, 0, : r + 1].reshape(2 * p, -1).t().contiguous(), h_b=W[q + "h.b"],
            link_w=W[q + "link.w"][:, :, 0, 0], link_b=W[q + "link.b"],
            res_w=W[q + "res.w"][:, :, 0, 0].t(), res_b=W[q + "res.b"], c_v=c_v, c_h=c_h,
        ))  # fmt: skip
    w0, b0 = W["out.0.w"][:, :, 0, 0].t(), W["out.0.b"]
    w1, b1 = W["out.1.w"][:, :, 0, 0].t(), W["out.1.b"]
    x = torch.zeros((B, C, H, Wd), dtype=torch.int64, device=dev)
    for i in range(H):
        for j in range(Wd):
            for c in range(C):
                h = None
                for l, ly in enumerate(layers):
                    r = radius[l]
                    if l > 0:
                        hc[l][:, :, i, j + r] = h
                    window = hc[l][:, :, i, j : j + r + 1].reshape(B, -1)  # (B, I_l (r+1)) pixels <= j
                    h_pre = torch.addmm(ly["h_b"], window, ly["h_w"]) + link[l][:, :, j]  # (B, 2p)
                    h_new = torch.addmm(ly["res_b"], _gate(h_pre, ly["c_h"][:, :, i, j]), ly["res_w"])
                    h = h_new if l == 0 else hc[l][:, :, i, j + r] + h_new
                o = torch.addmm(b0, F.relu(h), w0)
                logits = torch.addmm(b1[c * L : (c + 1) * L], F.relu(o), w1[:, c * L : (c + 1) * L])  # (B, levels)
                x[:, c, i, j] = _draw(logits, u[:, c, i, j])
                value = x[:, c, i, j].to(dtype) / (L - 1) * 2.0 - 1.0
                hc[0][:, c, i, j + radius[0]] = value
                vc[0][:, c, i + radius[0], j + radius[0]] = value
        # row i is complete: the vertical stack on row i, for every layer; its links feed row i + 1
        for l, ly in enumerate(layers):
            r = radius[l]
            cols = F.unfold(vc[l][:, :, i : i + r + 1, :], (r + 1, 2 * r + 1))  # (B, I_l (r+1) k_l, W)
            v_pre = torch.matmul(ly["v_w"], cols) + ly["v_b"][None, :, None]  # (B, 2p, W)
            if i + 1 < H:
                link[l] = torch.einsum("oc,bcw->bow", ly["link_w"], v_pre) + ly["link_b"][None, :, None]
            if l + 1 < n:
                r1 = radius[l + 1]
                vc[l + 1][:, :, i + r1, r1 : r1 + Wd] = _gate(v_pre, ly["c_v"][:, :, i])
    return x
