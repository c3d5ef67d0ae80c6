"""GPT, fast: the twin of reference/gpt.py in torch, on CPU and CUDA, in float64, float32 and bfloat16.

The model, the parameter names, the functions, their arguments and their errors
are those of reference/gpt.py, whose docstrings carry the equations (GPT-2:
Radford et al. 2019; attention: Vaswani et al. 2017). Read that file first;
this one only says how the same numbers are computed fast:

- Attention is torch's fused `scaled_dot_product_attention` (flash-style
  kernels: the (T, T) score matrix is never materialized). `attn_impl="math"`
  computes softmax(Q K^T / sqrt(hs) + mask) V explicitly in the same dtype: the
  naive same-dtype baseline that low-precision results are judged against.
- The KV cache (`KVCache`) is preallocated once: keys and values of shape
  (n_layer, B, nh, max_len, hs). `prefill` and `step` write the new positions
  in place and return the *same* cache object (the reference returns a new one).
- `generate` runs under `torch.inference_mode()`; the prompt's prefill computes
  the LM head for its last position only, each step feeds one token, and the
  loop never waits for the device: the logits of every step are validated once,
  after the loop (a NaN still raises ValueError, naming the step).
- On the CPU, inference picks the linear kernels that measured fastest (see
  "linear layers" below): for one-token decoding of one sequence, the
  matrix-vector products are split over the threads; otherwise oneDNN's linear
  runs on (out, in) copies of the weights, with the GELU fused.
- Config's HF options: the tanh GELU (GPT-2's) is fused as above; the other
  activations run after the same linear kernel, unfused (fast.nn's functions).
  The attention scale (scale_attn, scale_attn_by_inverse_layer_idx) is SDPA's
  `scale=` argument (left at SDPA's default 1/sqrt(hs) for GPT-2's), and an untied
  head runs the head kernels on lm_head.w instead of wte.
- Everything runs in the params' dtype; probabilities for sampling are
  float64 (fast/sampling.py), and log_prob accumulates log-softmax in float32
  (bfloat16/float32 params) or float64.

`forward` and `log_prob` are differentiable with respect to the params (autograd);
the cache functions and `generate` are inference-only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy
import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from chainrule.fast import generation as fast_generation
from chainrule.fast import metrics, nn, sampling
from chainrule.reference import generation
from chainrule.fast.backend import checked_tensors, checked_tokens
from chainrule.reference import gpt as _reference
from chainrule.reference.gpt import Config, check_params, from_hf_gpt2, init, param_shapes, to_hf_gpt2

__all__ = [
    "Config", "param_shapes", "init", "check_params", "from_hf_gpt2", "to_hf_gpt2",
    "KVCache", "forward", "log_prob", "init_cache", "prefill", "step",
    "generate", "greedy", "sample", "beam_search", "check_tokens", "checked_params",
]  # fmt: skip

ATTN_IMPLS = ("sdpa", "math")


# ----------------------------------------------------------------------------- validation


def checked_params(params, config: Config) -> dict:
    """params as a dict of torch tensors of one float dtype on one device; ValueError naming the key.

    NumPy params (or any non-torch arrays) are converted with `to_torch` to float64,
    on the CPU (on CUDA for CuPy arrays).
    """
    return checked_tensors(params, lambda p: check_params(p, config), "wte")


def check_tokens(tokens, config: Config, name: str = "tokens", max_len: int | None = None, min_len: int = 1,
                 device=None) -> torch.Tensor:  # fmt: skip
    """reference.gpt.check_tokens for torch tensors too -> tokens as int64 on `device`.

    ValueError unless `tokens` is a (B, T) integer array with ids in [0, V) and
    min_len <= T <= max_len (default block_size); same messages as the reference.
    """
    max_len = config.block_size if max_len is None else max_len
    return checked_tokens(tokens, config.vocab_size,
                          lambda: _reference.check_tokens(tokens, config, name=name, max_len=max_len, min_len=min_len),
                          name, device, min_len, max_len)  # fmt: skip


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def check_attn_impl(attn_impl):
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl: expected one of {ATTN_IMPLS}, got {attn_impl!r}")


# ----------------------------------------------------------------------------- linear layers
#
# The kernel layer below is public for the decoders built on this model (fast.medusa,
# fast.speculative, fast.parallel_decoding): kernel_mode -> network (the weights as kernels)
# -> run_network / network_block over an empty_cache / KVCache. It computes exactly what
# forward, prefill and step compute; those are the model protocol and check their inputs,
# these do not.
#
# Every linear layer is y = x W + b with W stored (in, out) as in the params; the
# LM head is x W_te^T (x W_head^T untied). Each call of the network first turns the weights into
# kernels x -> y, chosen by a *mode*:
#
#   "plain"   addmm / F.linear: differentiable; on CUDA, and whenever autograd
#             needs the graph (forward / log_prob of params that require grad).
#   "matmul"  CPU inference on M > 1 rows (prefill, batched decoding: compute
#             bound): oneDNN's linear on (out, in) copies of the weights, with
#             the GELU fused; it beats BLAS on the (in, out) layout by about 1.6x
#             at M = 32. float32/bfloat16 (float64 stays on addmm).
#   "matvec"  CPU inference on one row (decoding one sequence: a matrix-vector
#             product, bound by memory bandwidth). BLAS computes it on one
#             thread, which leaves memory bandwidth unused; so the product is
#             split over K into one block per thread, computed as one batched
#             product (torch spreads the batch over the threads), and the partial
#             products summed:  x W = sum_j x[K_j] W[K_j, :].  On (in, out)
#             weights the split is a free view; the head uses a (C, V) copy of its
#             matrix (wte, or lm_head.w when untied).
#
# Small models (4 C^2 < 2^18 weights in GPT-2's MLP matrices) always run plain.
# The copies are made once per weight tensor, remade when it changes in place,
# and live as long as that tensor. The mode depends only on the device,
# dtype, sizes, the thread count and whether a gradient is needed, never on what
# was computed before: a given call always computes the same numbers.

_onednn_linear_op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
_onednn_works: dict[torch.dtype, bool] = {}


def _onednn_usable(dtype: torch.dtype) -> bool:
    """True when oneDNN's linear runs on this CPU in `dtype` and agrees with addmm (probed once)."""
    if dtype not in _onednn_works:
        ok = False
        if _onednn_linear_op is not None and dtype in (torch.float32, torch.bfloat16):
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((3, 5), (5, 7), (7,)))
                want = torch.addmm(b, x, w)
                with torch.no_grad():
                    x_, wt, b_ = x.to(dtype), w.t().contiguous().to(dtype), b.to(dtype)
                    got = _onednn_linear_op(x_, wt, b_, "none", [], "").double()
                    got_gelu = _onednn_linear_op(x_, wt, b_, "gelu", [], "tanh").double()
                    got_head = _onednn_linear_op(x_, wt, None, "none", [], "").double()
                tol = 1e-4 if dtype == torch.float32 else 0.1
                ok = (
                    torch.allclose(got, want, rtol=tol, atol=tol)
                    and torch.allclose(got_gelu, F.gelu(want, approximate="tanh"), rtol=tol, atol=tol)
                    and torch.allclose(got_head, want - b, rtol=tol, atol=tol)
                )
            except Exception:  # not built with oneDNN, or the CPU lacks the instructions
                ok = False
        _onednn_works[dtype] = ok
    return _onednn_works[dtype]


_transposed_copies = WeakIdKeyDictionary()  # weight -> (its state, contiguous copy of its transpose)


def _state(w: torch.Tensor) -> tuple:
    """What `_transposed` checks before reusing a copy of w: the version counter (bumped by every
    in-place operation; inference tensors have none), the storage, and eight entries of w
    spread over it (which catch writes that bypass the counter, through .data or a NumPy view)."""
    rows = torch.linspace(0, w.shape[0] - 1, 8, device=w.device).long()
    cols = torch.linspace(0, w.shape[1] - 1, 8, device=w.device).long()
    version = None if w.is_inference() else w._version
    return version, w.data_ptr(), w.detach()[rows, cols]


def _transposed(w: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of the 2-D w^T, made once and reused while w is unchanged (see `_state`)."""
    state = _state(w)
    hit = _transposed_copies.get(w)
    if hit is not None and hit[0][:2] == state[:2] and torch.equal(hit[0][2], state[2]):
        return hit[1]
    with torch.no_grad():
        copy = w.detach().t().contiguous()
    _transposed_copies[w] = (state, copy)
    return copy


# Below this many weights per matrix the special CPU kernels gain nothing, and their
# thread synchronization makes them slow on a busy machine: small models stay plain.
_CPU_KERNELS_MIN_WEIGHTS = 1 << 18


def kernel_mode(params: dict, rows: int, differentiable: bool) -> str:
    """The kernel mode (see above) for inputs of `rows` rows."""
    wte = params["wte"]
    C = wte.shape[1]
    if differentiable or wte.device.type != "cpu" or 4 * C * C < _CPU_KERNELS_MIN_WEIGHTS:
        return "plain"
    if rows == 1 and torch.get_num_threads() > 1 and wte.dtype != torch.bfloat16:
        return "matvec"
    return "matmul"


ACTIVATIONS = {"gelu_tanh": nn.gelu_tanh, "gelu_erf": nn.gelu_erf, "gelu_fast": nn.gelu_fast, "relu": nn.relu}


def _linear(w, b, mode: str, activation: str | None = None):
    """The kernel x -> act(x W + b) (act: ACTIVATIONS[activation], or none).  x: (M, in), w: (in, out), b: (out,).

    oneDNN fuses the tanh GELU (GPT-2's); the other activations run after the linear kernel."""
    K, N = w.shape
    c = torch.get_num_threads()
    act = None if activation is None else ACTIVATIONS[activation]
    if mode == "matvec" and K % c == 0:
        w_blocks = w.view(c, K // c, N)  # (c, K/c, N): a view
        b_first = torch.zeros((c, 1, N), dtype=b.dtype, device=b.device)  # the bias, added once by the sum
        b_first[0, 0] = b

        def matvec(x):  # x: (1, K)
            y = torch.baddbmm(b_first, x.reshape(c, 1, K // c), w_blocks).sum(dim=0)  # (c, 1, N) -> (1, N)
            return y if act is None else act(y)

        return matvec
    if mode != "plain" and _onednn_usable(w.dtype):
        w_out_in = _transposed(w)  # (N, K)
        if activation in (None, "gelu_tanh"):
            attr, algorithm = ("gelu", "tanh") if activation else ("none", "")
            return lambda x: _onednn_linear_op(x, w_out_in, b, attr, [], algorithm)
        return lambda x: act(_onednn_linear_op(x, w_out_in, b, "none", [], ""))
    if act is not None:
        return lambda x: act(torch.addmm(b, x, w))
    return lambda x: torch.addmm(b, x, w)


def _head(w_head, mode: str):
    """The kernel x -> x W_head^T (the LM head).  x: (M, C), w_head: (V, C), wte (tied) or
    lm_head.w (untied: reference.gpt.head_weight) -> (M, V)."""
    V, C = w_head.shape
    c = torch.get_num_threads()
    if mode == "matvec" and C % c == 0:
        w_blocks = _transposed(w_head).view(c, C // c, V)  # (c, C/c, V)
        return lambda x: torch.bmm(x.reshape(c, 1, C // c), w_blocks).sum(dim=0)  # (1, V)
    if mode != "plain" and _onednn_usable(w_head.dtype):
        return lambda x: _onednn_linear_op(x, w_head, None, "none", [], "")  # w_head is (out, in) already
    return lambda x: F.linear(x, w_head)


# ----------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Layer:
    """One block: LayerNorm parameters and its linear layers as kernels x -> y."""

    ln_1: tuple  # (gain, bias)
    qkv: object  # (M, C) -> (M, 3C)
    proj: object  # (M, C) -> (M, C)
    ln_2: tuple
    fc: object  # (M, C) -> (M, F), the activation included
    fc_proj: object  # (M, F) -> (M, C)
    scale: float | None = None  # the attention scale: None = SDPA's 1/sqrt(hs) (GPT-2's), else Config.attn_scale


@dataclass(frozen=True)
class Network:
    """The params of one call, arranged as kernels of one mode."""

    config: Config
    wte: torch.Tensor
    wpe: torch.Tensor
    ln_f: tuple
    layers: tuple
    head: object  # (M, C) -> (M, V)


def network(params: dict, config: Config, mode: str) -> Network:
    """Checked params turned into the kernels of `mode`."""
    layers = []
    for i in range(config.n_layer):
        p = f"blocks.{i}."

        def linear(name, activation=None):
            return _linear(params[p + name + ".w"], params[p + name + ".b"], mode, activation)

        layers.append(Layer(
            (params[p + "ln_1.g"], params[p + "ln_1.b"]), linear("attn.qkv"), linear("attn.proj"),
            (params[p + "ln_2.g"], params[p + "ln_2.b"]), linear("mlp.fc", config.activation), linear("mlp.proj"),
            attn_scale(config, i),
        ))  # fmt: skip
    head = _head(_reference.head_weight(params, config), mode)
    return Network(config, params["wte"], params["wpe"], (params["ln_f.g"], params["ln_f.b"]), tuple(layers), head)


def attn_scale(config: Config, layer: int) -> float | None:
    """Config.attn_scale(layer) for SDPA's `scale=`, or None (SDPA's default 1/sqrt(hs)) for GPT-2's scale."""
    if config.scale_attn and not config.scale_attn_by_inverse_layer_idx:
        return None
    return config.attn_scale(layer)


def needs_grad(params: dict) -> bool:
    return torch.is_grad_enabled() and any(value.requires_grad for value in params.values())


def _causal_mask(t_query: int, t_key: int, device) -> torch.Tensor:
    """(Tq, Tk) bool, True where allowed: query i sits at absolute position Tk - Tq + i (reference.nn.causal_mask)."""
    q_pos = torch.arange(t_key - t_query, t_key, device=device)[:, None]  # (Tq, 1)
    return torch.arange(t_key, device=device)[None, :] <= q_pos  # (Tq, Tk)


def _attention(q, k, v, attn_impl: str, mask=None, scale=None):
    """Causal attention of the last Tq positions over all Tk = P + Tq (reference.nn.attention),
    or attention under an explicit mask (Tq, Tk) bool, True = may attend (trees, lookahead windows).

    q: (B, nh, Tq, hs), k, v: (B, nh, Tk, hs) -> (B, nh, Tq, hs). scale: the factor of Q K^T,
    None for 1/sqrt(hs).
    """
    Tq, Tk = q.shape[2], k.shape[2]
    if attn_impl == "math":  # the naive same-dtype computation, spelled out
        scores = q @ k.transpose(-2, -1)  # (B, nh, Tq, Tk)
        scores = scores / math.sqrt(q.shape[-1]) if scale is None else scores * scale
        allowed = _causal_mask(Tq, Tk, q.device) if mask is None else mask
        return torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1) @ v  # (B, nh, Tq, hs)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    if Tq == 1:  # one new position sees every key: no mask at all
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if Tq == Tk:  # an empty cache: the plain lower triangle
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    # chunked prefill after a cache: the triangle offset by P = Tk - Tq (SDPA's
    # is_causal aligns it top-left, so the mask is given explicitly)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(Tq, Tk, q.device), scale=scale)


def network_block(config: Config, layer: Layer, x, k_cache, v_cache, P: int, attn_impl: str, mask=None):
    """One pre-LN block (reference.gpt.block) on the T newest positions.

    x: (B, T, C). k_cache, v_cache: None (no cache: attend within x), or the
    layer's (B, nh, max_len, hs) cache, positions [P, P+T) written in place here.
    mask: None (causal) or (T, P+T) bool, True where a new position may attend.
    """
    B, T, C = x.shape
    nh, eps = config.n_head, config.layer_norm_eps
    h = F.layer_norm(x, (C,), *layer.ln_1, eps).view(B * T, C)  # (B*T, C)
    qkv = layer.qkv(h).view(B, T, 3, nh, C // nh)  # (B, T, 3, nh, hs)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
    if k_cache is not None:
        k_cache.narrow(2, P, T).copy_(k)  # positions [P, P+T), in place
        v_cache.narrow(2, P, T).copy_(v)
        k, v = k_cache.narrow(2, 0, P + T), v_cache.narrow(2, 0, P + T)  # (B, nh, P+T, hs)
    y = _attention(q, k, v, attn_impl, mask, layer.scale).transpose(1, 2).reshape(B * T, C)  # (B*T, C)
    x = x + layer.proj(y).view(B, T, C)
    h = F.layer_norm(x, (C,), *layer.ln_2, eps).view(B * T, C)
    return x + layer.fc_proj(layer.fc(h)).view(B, T, C)  # fc: (B*T, F)


def padded_attention_mask(key_mask: torch.Tensor, t_query: int) -> torch.Tensor:
    """reference.gpt.padded_attention_mask: (B, 1, Tq, Tk) bool, causal and (key real or the query itself)."""
    Tk = key_mask.shape[1]
    causal = _causal_mask(t_query, Tk, key_mask.device)  # (Tq, Tk)
    itself = torch.arange(Tk, device=key_mask.device)[None, :] == torch.arange(Tk - t_query, Tk, device=key_mask.device)[:, None]
    return causal & (key_mask[:, None, None, :] | itself)  # (B, 1, Tq, Tk)


def run_network(net: Network, tokens, cache, attn_impl: str, last_only: bool = False, mask=None, positions=None):
    """The network on tokens (B, T) placed after the cache's positions -> logits (B, T, V)
    ((B, 1, V) with last_only: at each row's last real position). With a cache, writes its
    positions and advances its length.

    mask: None, or (B, T) bool, the real tokens of a padded batch (reference.gpt.forward): then,
    or when the cache holds a key mask, attention is `padded_attention_mask` and the logits at
    pad positions are 0; positions: None (P .. P+T-1) or (B, T) int64 position ids. Without
    padding this is the plain causal network, its kernels untouched.
    """
    B, T = tokens.shape
    P = 0 if cache is None else cache.length
    x = F.embedding(tokens, net.wte) + (net.wpe[P : P + T] if positions is None else F.embedding(positions, net.wpe))
    key_mask = None if cache is None else cache.mask
    attn_mask = None
    if mask is not None or key_mask is not None:
        new = torch.ones((B, T), dtype=torch.bool, device=tokens.device) if mask is None else mask
        if cache is None:
            keys = new
        else:
            if key_mask is None:  # the first padded chunk: the cached positions were all real
                key_mask = cache.mask = torch.ones((B, cache.max_len), dtype=torch.bool, device=tokens.device)
            key_mask[:, P : P + T] = new
            keys = key_mask[:, : P + T]
        attn_mask = padded_attention_mask(keys, T)  # (B, 1, T, P+T)
    per_layer = [(None, None)] * len(net.layers) if cache is None else cache.layers
    for layer, (k_cache, v_cache) in zip(net.layers, per_layer):
        x = network_block(net.config, layer, x, k_cache, v_cache, P, attn_impl, attn_mask)
    if cache is not None:
        cache.length = P + T
    if last_only:
        x = x[:, -1:] if mask is None else x[torch.arange(B, device=x.device), last_real(mask)][:, None]  # (B, 1, C)
    C = x.shape[-1]
    x = F.layer_norm(x, (C,), *net.ln_f, net.config.layer_norm_eps)
    logits = net.head(x.reshape(-1, C)).view(B, x.shape[1], -1)  # (B, T, V)
    if mask is not None and not last_only:
        logits = torch.where(mask[:, :, None], logits, 0.0)  # pads: logits 0, by definition
    return logits


def last_real(mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: each row's last real position of a (B, T) bool mask."""
    T = mask.shape[1]
    return T - 1 - torch.argmax(mask.flip(1).to(torch.uint8), dim=1)


def check_attention_mask(attention_mask, shape: tuple, device) -> torch.Tensor:
    """reference.gpt.check_attention_mask for torch tensors too -> bool (B, T) on `device`; same messages."""
    if isinstance(attention_mask, torch.Tensor):
        if attention_mask.is_floating_point() or attention_mask.is_complex():
            raise ValueError(f"attention_mask: expected an integer or bool array of 0 and 1, got {attention_mask.dtype}")
        probe = attention_mask.detach().to("cpu").numpy()
    else:
        probe = numpy.asarray(attention_mask) if hasattr(attention_mask, "__len__") else attention_mask
    return torch.as_tensor(_reference.check_attention_mask(probe, tuple(shape)), device=device)


def _mask_and_positions(config: Config, tokens: torch.Tensor, attention_mask, position_ids, seen):
    """Checked (mask or None, positions or None) on the tokens' device (reference.gpt._mask_and_positions).
    seen: (B,) int64 tensor or int, the real tokens already cached per row."""
    mask = None if attention_mask is None else check_attention_mask(attention_mask, tokens.shape, tokens.device)
    if position_ids is not None:
        probe = position_ids.detach().to("cpu").numpy() if isinstance(position_ids, torch.Tensor) else position_ids
        if isinstance(position_ids, torch.Tensor) and (position_ids.is_floating_point() or position_ids.dtype == torch.bool):
            raise ValueError(f"position_ids: expected an integer array, got {position_ids.dtype}")
        checked = _reference.check_position_ids(numpy.asarray(probe), tuple(tokens.shape), config)
        return mask, torch.as_tensor(checked, device=tokens.device)
    if mask is None:
        return None, None
    seen = torch.as_tensor(seen, device=tokens.device).reshape(-1, 1)
    positions = torch.where(mask, seen + torch.cumsum(mask.long(), dim=1) - 1, 1)  # reference.gpt.positions_from_mask
    if int(positions.max()) >= config.block_size:
        raise ValueError(f"tokens: a row holds more than block_size={config.block_size} real tokens")
    return mask, positions


def forward(params: dict, config: Config, tokens, attention_mask=None, position_ids=None, *,
            attn_impl: str = "sdpa") -> torch.Tensor:  # fmt: skip
    """All next-token logits at once (reference.gpt.forward).

    tokens: (B, T) int (torch or NumPy), 1 <= T <= block_size -> logits (B, T, V)
    in the params' dtype. attention_mask (B, T) 0/1 and position_ids (B, T): a padded
    batch, as the reference (pads' logits 0). attn_impl: "sdpa" (fused) or "math"
    (explicit, same dtype). Differentiable with respect to params that require grad.
    """
    params = checked_params(params, config)
    check_attn_impl(attn_impl)
    tokens = check_tokens(tokens, config, device=params["wte"].device)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, 0)
    differentiable = needs_grad(params)
    with torch.enable_grad() if differentiable else torch.no_grad():
        net = network(params, config, kernel_mode(params, tokens.numel(), differentiable))
        return run_network(net, tokens, None, attn_impl, mask=mask, positions=positions)


def log_prob(params: dict, config: Config, tokens, attention_mask=None, *, attn_impl: str = "sdpa") -> torch.Tensor:
    """Exact chain-rule log-likelihood in nats, bos prepended (reference.gpt.log_prob):

        log p(x_1..x_T) = sum_t ( logits_t[x_t] - logsumexp(logits_t) )

    tokens: (B, T) -> (B,), float64 for float64 params, else float32 (the logits are
    upcast to it before the log-softmax). attention_mask (B, T): the real tokens only
    (metrics.masked_chain_rule_log_prob). Differentiable with respect to params.
    """
    params = checked_params(params, config)
    tokens = check_tokens(tokens, config, device=params["wte"].device)
    if attention_mask is None:
        return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs, attn_impl=attn_impl),
                                           tokens, config.bos_token)  # fmt: skip
    mask = check_attention_mask(attention_mask, tokens.shape, tokens.device)
    return metrics.masked_chain_rule_log_prob(
        lambda inputs, input_mask: forward(params, config, inputs, input_mask, attn_impl=attn_impl),
        tokens, mask, config.bos_token)  # fmt: skip


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values of every layer, preallocated and written in place.

    k, v: (n_layer, B, nh, max_len, hs) in the params' dtype, on their device.
    length: the number of positions filled (0..max_len); `prefill` and `step`
    write positions [length, length + T) and advance it. mask: None while every
    position is real, else (B, max_len) bool, the real positions of a padded batch.
    """

    __slots__ = ("_k", "_v", "_layers", "length", "mask")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, length: int = 0, mask=None):
        self._k, self._v, self.length = k, v, length
        self.mask = mask  # None (every position real) or (B, max_len) bool: the real positions
        self._layers = tuple(zip(k.unbind(0), v.unbind(0)))  # per layer: views (B, nh, max_len, hs)

    @property
    def k(self) -> torch.Tensor:
        """Keys (n_layer, B, nh, max_len, hs); positions >= length are unused."""
        return self._k

    @property
    def v(self) -> torch.Tensor:
        """Values (n_layer, B, nh, max_len, hs); positions >= length are unused."""
        return self._v

    @property
    def layers(self) -> tuple:
        """Per layer (keys, values), views of shape (B, nh, max_len, hs)."""
        return self._layers

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def positions(self) -> torch.Tensor:
        """(B,) int64: each row's next position, the number of real tokens cached."""
        if self.mask is None:
            return torch.full((self.batch,), self.length, dtype=torch.int64, device=self.k.device)
        return self.mask[:, : self.length].sum(dim=1)

    def rows(self, index: torch.Tensor) -> "KVCache":
        """A new cache holding only the rows `index` (B',) (copies)."""
        mask = None if self.mask is None else self.mask[index]
        return KVCache(self.k[:, index], self.v[:, index], self.length, mask)

    def __repr__(self) -> str:
        L, B, nh, max_len, hs = self.k.shape
        return (
            f"KVCache(n_layer={L}, batch={B}, n_head={nh}, max_len={max_len}, head_dim={hs}, "
            f"length={self.length}, dtype={self.k.dtype}, device={self.k.device})"
        )


def empty_cache(config: Config, batch: int, max_len: int, dtype, device, zeros: bool = True) -> KVCache:
    """A KVCache of length 0; zeros=False leaves the memory uninitialized (it is written before it is read)."""
    shape = (config.n_layer, batch, config.n_head, max_len, config.head_dim)
    new = torch.zeros if zeros else torch.empty
    with torch.inference_mode():
        return KVCache(new(shape, dtype=dtype, device=device), new(shape, dtype=dtype, device=device))


def init_cache(params: dict, config: Config, batch: int, max_len: int | None = None) -> KVCache:
    """An empty KV cache for `batch` sequences of up to max_len (default block_size) positions."""
    params = checked_params(params, config)
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    max_len = config.block_size if max_len is None else max_len
    if not _is_int(max_len) or not 1 <= max_len <= config.block_size:
        raise ValueError(f"max_len: expected an int in [1, {config.block_size}], got {max_len!r}")
    wte = params["wte"]
    return empty_cache(config, int(batch), int(max_len), wte.dtype, wte.device)


def check_cache(cache, config: Config, params: dict) -> None:
    if not isinstance(cache, KVCache):
        raise ValueError(f"cache: expected a KVCache (from init_cache), got {type(cache).__name__}")
    want = (config.n_layer, cache.batch, config.n_head, cache.max_len, config.head_dim)
    if tuple(cache.k.shape) != want or tuple(cache.v.shape) != want:
        raise ValueError(f"cache: expected keys and values of shape {want}, got {tuple(cache.k.shape)}")
    wte = params["wte"]
    if cache.k.dtype != wte.dtype or cache.k.device != wte.device:
        raise ValueError(
            f"cache: expected {wte.dtype} on {wte.device} (as the params), got {cache.k.dtype} on {cache.k.device}"
        )


def prefill(params: dict, config: Config, cache: KVCache, tokens, attention_mask=None, position_ids=None):
    """Feed a chunk tokens (B, T) after the cached positions -> (logits (B, T, V), cache).

    Writes the chunk's keys and values into `cache` in place and returns that same
    object. Chunked prefill in any chunk sizes gives the logits of `forward`.
    attention_mask / position_ids: as reference.gpt.prefill (the cache keeps the mask).
    """
    params = checked_params(params, config)
    check_cache(cache, config, params)
    room = min(config.block_size, cache.max_len) - cache.length
    tokens = check_tokens(tokens, config, max_len=room, device=params["wte"].device)
    if tokens.shape[0] != cache.batch:
        raise ValueError(f"tokens: expected batch {cache.batch} (the cache's), got {tokens.shape[0]}")
    with torch.inference_mode():
        seen = cache.positions()
        mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, seen)
        if positions is None and cache.mask is not None:  # an unpadded chunk after a padded cache
            positions = seen[:, None] + torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        net = network(params, config, kernel_mode(params, tokens.numel(), differentiable=False))
        logits = run_network(net, tokens, cache, "sdpa", mask=mask, positions=positions)
    return logits, cache


def step(params: dict, config: Config, cache: KVCache, tokens_t):
    """One decoding step: tokens_t (B,) at each row's next position -> (logits_t (B, V), cache)."""
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, tokens_t[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             attention_mask=None, processors=(), u=None) -> torch.Tensor:  # fmt: skip
    """Autoregressive generation through the KV cache (reference.gpt.generate: the same
    arguments, the same tokens).

    At each step the last logits (float32 for bfloat16/float32 params, float64 for float64)
    pass through the processors, then the next token is the argmax (u None) or the
    inverse-CDF sample with u[:, n] (fast.sampling.sample), token for token the reference's.
    Padded prompts (attention_mask) run with a per-row attention mask and positions; without
    padding the kernels are those of unpadded decoding. With eos or stop sequences a row that
    finishes leaves the batch (its KV cache rows are dropped), so it costs nothing more.
    Returns (B', T0 + n) int64 on the params' device; with num_beams > 1, beam search through
    the KV cache (fast.beam.gpt_beam_search), HF's layout (B * R, T0 + L) as the reference.
    """
    params = checked_params(params, config)
    wte = params["wte"]
    prompt = check_tokens(prompt, config, name="prompt", device=wte.device)
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u,
                          table=sampling.PROCESSORS)  # fmt: skip
    N = run.max_new_tokens
    if run.num_beams > 1:  # HF's _beam_search: (B * R, T0 + L), each prompt's R best hypotheses
        if run.sample:
            raise ValueError("generation_config.do_sample: beam search here is deterministic (num_beams > 1 "
                             "needs do_sample=False; HF's beam sampling is not supported)")
        from chainrule.fast import beam  # fast.beam is built on this module: imported when used
        return beam.as_generate_output(beam.gpt_beam_search(
            params, config, prompt, run.num_beams, N, eos=run.eos_token_id or None, length_penalty=run.length_penalty,
            early_stopping=run.early_stopping, num_return_sequences=run.num_return_sequences, pad=run.pad_token_id,
            attention_mask=attention_mask, processors=run.processors, stop_sequences=run.stop_sequences))
    prompt = check_tokens(prompt, config, name="prompt", max_len=config.block_size + 1 - max(N, 1), device=wte.device)
    mask = None if attention_mask is None else check_attention_mask(attention_mask, prompt.shape, wte.device)
    if run.num_return_sequences > 1:  # each prompt R times in a row, as HF's repeat_interleave
        prompt = prompt.repeat_interleave(run.num_return_sequences, dim=0)
        mask = None if mask is None else mask.repeat_interleave(run.num_return_sequences, dim=0)
    B, T0 = prompt.shape
    if u is not None:
        u = sampling.check_uniforms(u, (B, N), wte.device)
    if N == 0:
        return prompt.clone()
    with torch.inference_mode():
        _, positions = _mask_and_positions(config, prompt, mask, None, 0)
        nets = {}

        def net_for(rows):  # the kernels for `rows` rows, made once per mode
            mode = kernel_mode(params, rows, False)
            if mode not in nets:
                nets[mode] = network(params, config, mode)
            return nets[mode]

        state = {"cache": empty_cache(config, B, T0 + N - 1, wte.dtype, wte.device, zeros=False)}
        logits = run_network(net_for(B * T0), prompt, state["cache"], "sdpa", last_only=True, mask=mask,
                             positions=positions)[:, 0]  # (B, V)  # fmt: skip

        def next_logits(tokens):  # (B',) -> (B', V), the KV cache advanced in place
            cache = state["cache"]
            pos = None if cache.mask is None else cache.positions()[:, None]
            return run_network(net_for(tokens.shape[0]), tokens[:, None], cache, "sdpa", positions=pos)[:, 0]

        def keep(rows):  # drop the finished rows from the cache
            state["cache"] = state["cache"].rows(rows)

        return fast_generation.decode(logits, next_logits, prompt, N, processors=run.processors, u=u,
                                      eos_token_id=run.eos_token_id, pad_token_id=run.pad_token_id,
                                      stop_sequences=run.stop_sequences, keep=keep)  # fmt: skip


def beam_search(params: dict, config: Config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1, pad=None,
                attention_mask=None, processors=(), stop_sequences=()):  # fmt: skip
    """reference.gpt.beam_search through the KV cache: fast.beam.gpt_beam_search (the same
    arguments, the same hypotheses; a BeamSearchResult of torch tensors)."""
    from chainrule.fast import beam  # fast.beam is built on this module: imported when used

    return beam.gpt_beam_search(params, config, prompt, beam_width, max_new_tokens, eos=eos,
                                length_penalty=length_penalty, early_stopping=early_stopping,
                                num_return_sequences=num_return_sequences, pad=pad, attention_mask=attention_mask,
                                processors=processors, stop_sequences=stop_sequences)  # fmt: skip


def greedy(params: dict, config: Config, prompt, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)) exactly as reference.gpt.sample,
    then `generate` with those uniforms: the same seed gives the reference's tokens."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)
