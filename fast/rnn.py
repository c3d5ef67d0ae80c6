"""Recurrent layers and the recurrent LM, fast: the twin of reference/rnn.py in torch (CPU and CUDA).

The equations, parameter names and layouts (torch.nn.RNN/LSTM/GRU state_dicts: weights
(gates * H, in), the one exception to chainrule's (in, out) rule), the functions, their
arguments and their errors are those of reference/rnn.py; read that file first (Elman
1990; Hochreiter & Schmidhuber 1997 with the forget gate of Gers et al. 2000; Cho et al.
2014; the LM of Mikolov et al. 2010). This one only says how the numbers are computed fast:

- The recurrence runs in torch's fused RNN kernels (`torch._VF.rnn_tanh / rnn_relu /
  lstm / gru`, the kernels behind torch.nn.RNN/LSTM/GRU): on CUDA that is cuDNN
  (all layers and time steps in one call, the input projections of all steps in
  one GEMM), on the CPU ATen's implementation, or oneDNN's for the LSTM at the sizes
  where it measured faster (see `_kernel_flags`). They take the params dict's tensors
  as they are, so `forward` and `log_prob` are differentiable with respect to them.
- float32 means float32 on CUDA too: cuDNN's TF32 math is switched off for the call
  (see `_kernel_flags`).
- `impl="loop"` runs the same recurrence as explicit per-step cells in the same
  dtype: the unfused baseline low-precision results are judged against.
- Generation (`generate`, under torch.inference_mode) feeds the prompt in one fused
  call, then one fused call per token; on CUDA the weights are first copied once into
  cuDNN's packed layout (the compaction torch.nn.RNNBase.flatten_parameters does;
  the caller's tensors are never touched). Logits are validated once, after the loop.
- The cache is a dict {"h": (L, B, H), "c" (LSTM), "length"} of torch tensors; `prefill`
  and `step` return a new one (the state is a new tensor anyway), like the reference.

Everything runs in the params' dtype; log_prob accumulates the log-softmax in
float32 (bfloat16/float32 params) or float64.
"""

from __future__ import annotations

import contextlib

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import generation as fast_generation
from chainrule.fast import metrics, sampling
from chainrule.reference import generation
from chainrule.fast.backend import checked_tensors, checked_tokens
from chainrule.reference import rnn as _reference
from chainrule.reference.rnn import (
    GATES, KINDS, MODES, Config, init, layer_shapes, layer_sizes, param_shapes, random_params, recurrent_params,
)  # fmt: skip
from chainrule.reference.xp import to_numpy

__all__ = [
    "Config", "KINDS", "MODES", "GATES", "init", "random_params", "param_shapes", "layer_shapes", "layer_sizes",
    "recurrent_params", "rnn_tanh", "rnn_relu", "lstm", "gru", "checked_params", "check_tokens",
    "forward", "log_prob", "init_cache", "prefill", "step", "generate", "greedy", "sample",
]  # fmt: skip

IMPLS = ("fused", "loop")
_FUSED = {"rnn_tanh": torch._VF.rnn_tanh, "rnn_relu": torch._VF.rnn_relu, "lstm": torch._VF.lstm,
          "gru": torch._VF.gru}  # fmt: skip


# ----------------------------------------------------------------------------- validation


def _check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")


def _as_input(x, like: torch.Tensor) -> torch.Tensor:
    """x (B, T, I) as a tensor (NumPy/CuPy inputs converted to the params' dtype and device);
    ValueError (the reference's messages) for a wrong kind, rank or length."""
    if not isinstance(x, torch.Tensor):
        if getattr(getattr(x, "dtype", None), "kind", None) != "f":
            raise ValueError(f"x: expected a floating array (B, T, I), got {getattr(x, 'dtype', type(x))}")
        x = torch.as_tensor(to_numpy(x), device=like.device).to(like.dtype)
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating array (B, T, I), got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (B, T, I) (batch first), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"x: expected at least one time step, got T={x.shape[1]}")
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(f"x: expected {like.dtype} on {like.device} (as the params), got {x.dtype} on {x.device}")
    return x


def _as_state(h, name: str, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    if h is None:
        return torch.zeros(shape, dtype=like.dtype, device=like.device)
    if not isinstance(h, torch.Tensor):
        if getattr(getattr(h, "dtype", None), "kind", None) != "f":
            raise ValueError(f"{name}: expected a floating array of shape {shape} (num_layers, B, H), "
                             f"got {getattr(h, 'dtype', type(h))}")  # fmt: skip
        h = torch.as_tensor(to_numpy(h), device=like.device).to(like.dtype)
    if not h.is_floating_point() or tuple(h.shape) != shape:
        raise ValueError(f"{name}: expected a floating array of shape {shape} (num_layers, B, H), "
                         f"got {h.dtype} {tuple(h.shape)}")  # fmt: skip
    if h.dtype != like.dtype or h.device != like.device:
        raise ValueError(f"{name}: expected {like.dtype} on {like.device} (as the params), got {h.dtype} on {h.device}")
    return h


def _flat_weights(params: dict, L: int, bias: bool) -> list:
    """The weights in the order the fused kernels take them: per layer w_ih, w_hh(, b_ih, b_hh)."""
    names = ("weight_ih", "weight_hh") + (("bias_ih", "bias_hh") if bias else ())
    return [params[f"{n}_l{k}"] for k in range(L) for n in names]


# ----------------------------------------------------------------------------- the recurrence


# On the CPU, torch runs the LSTM in oneDNN (float32/bfloat16) when oneDNN is enabled. Measured
# here: for real sizes (hidden 256-650, B T >= 64) oneDNN is 1.5-5x faster than ATen's own
# kernel, but at tiny sizes it is no faster and for some shapes (hidden 3 or 4) it takes
# 50-250 ms per call instead of 0.15 ms; and for one-row steps (B T = 1) ATen's kernel is
# about 2x faster. So oneDNN is used from these sizes up, ATen's kernel below them.
_ONEDNN_MIN_HIDDEN = 64
_ONEDNN_MIN_ROWS = 32


def _onednn(x, H: int) -> bool:
    return H >= _ONEDNN_MIN_HIDDEN and x.shape[0] * x.shape[1] >= _ONEDNN_MIN_ROWS


@contextlib.contextmanager
def _kernel_flags(x, H: int, mode: str):
    """The backend flags of one fused call (global torch flags, set for the call and restored):
    on CUDA, float32 stays float32 -- cuDNN's TF32 tensor-core math, which torch allows by
    default (torch.backends.cudnn.allow_tf32), would round the products' inputs to 10-bit
    mantissas, so it is switched off; on the CPU, the LSTM uses oneDNN only at the sizes above."""
    if x.is_cuda and x.dtype == torch.float32 and torch._C._get_cudnn_allow_tf32():
        torch._C._set_cudnn_allow_tf32(False)
        try:
            yield
        finally:
            torch._C._set_cudnn_allow_tf32(True)
    elif x.device.type == "cpu" and mode == "lstm" and not _onednn(x, H) and torch._C._get_mkldnn_enabled():
        torch._C._set_mkldnn_enabled(False)  # ATen's kernel
        try:
            yield
        finally:
            torch._C._set_mkldnn_enabled(True)
    else:
        yield


def _fused(mode: str, flat: list, bias: bool, L: int, x, h0, c0):
    """One call of torch's fused kernel -> (outputs (B, T, H), h_n, c_n or None)."""
    with _kernel_flags(x, h0.shape[-1], mode):
        if mode == "lstm":
            out, h_n, c_n = torch._VF.lstm(x, (h0, c0), flat, bias, L, 0.0, False, False, True)
            return out, h_n, c_n
        out, h_n = _FUSED[mode](x, h0, flat, bias, L, 0.0, False, False, True)
        return out, h_n, None


def _loop(mode: str, params: dict, bias: bool, L: int, x, h0, c0):
    """The same recurrence as explicit cells in the input dtype (reference._layers, in torch)."""
    h_n, c_n = [], []
    for k in range(L):
        w_ih, w_hh = params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"]
        b_ih, b_hh = (params[f"bias_ih_l{k}"], params[f"bias_hh_l{k}"]) if bias else (None, None)
        h, c = h0[k], (c0[k] if mode == "lstm" else None)
        outputs = []
        for t in range(x.shape[1]):
            gi, gh = F.linear(x[:, t], w_ih, b_ih), F.linear(h, w_hh, b_hh)  # (B, G H)
            if mode == "lstm":
                i, f, g, o = (gi + gh).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif mode == "gru":
                r_i, z_i, n_i = gi.chunk(3, dim=-1)
                r_h, z_h, n_h = gh.chunk(3, dim=-1)
                r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
                n = torch.tanh(n_i + r * n_h)
                h = (1 - z) * n + z * h
            else:
                h = torch.tanh(gi + gh) if mode == "rnn_tanh" else torch.relu(gi + gh)
            outputs.append(h)
        x = torch.stack(outputs, dim=1)  # (B, T, H)
        h_n.append(h)
        c_n.append(c)
    return x, torch.stack(h_n), (torch.stack(c_n) if mode == "lstm" else None)


def _layers(mode: str, params: dict, x, h0, c0, impl: str = "fused"):
    _check_impl(impl)
    I, H, L, bias = layer_sizes(params, mode)  # names and shapes checked
    params = checked_tensors(params, lambda p: None, "weight_ih_l0")
    like = params["weight_ih_l0"]
    x = _as_input(x, like)
    if x.shape[2] != I:
        raise ValueError(f"x: expected input size I={I} (weight_ih_l0 is (G*H, I)), got {x.shape[2]}")
    B = x.shape[0]
    h0 = _as_state(h0, "h0" if mode != "lstm" else "state[0] (h0)", (L, B, H), like)
    c0 = _as_state(c0, "state[1] (c0)", (L, B, H), like) if mode == "lstm" else None
    if impl == "loop":
        return _loop(mode, params, bias, L, x, h0, c0)
    return _fused(mode, _flat_weights(params, L, bias), bias, L, x, h0, c0)


def rnn_tanh(params: dict, x, h0=None, *, impl: str = "fused"):
    """Elman layers with tanh (reference.rnn.rnn_tanh) -> (outputs (B, T, H), h_n (L, B, H))."""
    out, h_n, _ = _layers("rnn_tanh", params, x, h0, None, impl)
    return out, h_n


def rnn_relu(params: dict, x, h0=None, *, impl: str = "fused"):
    """Elman layers with relu (reference.rnn.rnn_relu) -> (outputs (B, T, H), h_n (L, B, H))."""
    out, h_n, _ = _layers("rnn_relu", params, x, h0, None, impl)
    return out, h_n


def lstm(params: dict, x, state=None, *, impl: str = "fused"):
    """LSTM layers (reference.rnn.lstm) -> (outputs (B, T, H), (h_n, c_n)), each (L, B, H)."""
    if state is None:
        h0 = c0 = None
    elif isinstance(state, (tuple, list)) and len(state) == 2:
        h0, c0 = state
    else:
        raise ValueError(f"state: expected None or a pair (h0, c0) of (L, B, H) arrays, got {type(state).__name__}")
    out, h_n, c_n = _layers("lstm", params, x, h0, c0, impl)
    return out, (h_n, c_n)


def gru(params: dict, x, h0=None, *, impl: str = "fused"):
    """GRU layers (reference.rnn.gru) -> (outputs (B, T, H), h_n (L, B, H))."""
    out, h_n, _ = _layers("gru", params, x, h0, None, impl)
    return out, h_n


# ============================================================================= the language model


def checked_params(params, config: Config) -> dict:
    """params as torch tensors of one float dtype on one device; ValueError naming the key."""
    return checked_tensors(params, lambda p: _reference.check_params(p, config), "wte")


def check_tokens(tokens, config: Config, name: str = "tokens", device=None) -> torch.Tensor:
    """reference.rnn.check_tokens for torch tensors too -> tokens as int64 on `device`."""
    return checked_tokens(tokens, config.vocab_size, lambda: _reference.check_tokens(tokens, config, name=name),
                          name, device)


def _needs_grad(params: dict) -> bool:
    return torch.is_grad_enabled() and any(value.requires_grad for value in params.values())


def _stack(params: dict, config: Config, x, h0, c0, impl: str, flat=None):
    """The recurrent stack on embeddings x (B, T, E) -> (outputs (B, T, H), h_n, c_n or None)."""
    L = config.n_layer
    if impl == "loop":
        return _loop(config.mode, recurrent_params(params), True, L, x, h0, c0)
    if flat is None:
        flat = _flat_weights(recurrent_params(params), L, True)
    return _fused(config.mode, flat, True, L, x, h0, c0)


def _head(params: dict, out):
    """logits = out W_head + b_head.   out: (B, T, H) -> (B, T, V)."""
    B, T, H = out.shape
    return torch.addmm(params["head.b"], out.reshape(B * T, H), params["head.w"]).view(B, T, -1)


def _zeros(params: dict, config: Config, batch: int):
    wte = params["wte"]
    return torch.zeros((config.n_layer, batch, config.hidden), dtype=wte.dtype, device=wte.device)


def forward(params: dict, config: Config, tokens, *, impl: str = "fused") -> torch.Tensor:
    """All next-token logits at once, from the zero state (reference.rnn.forward).

    tokens: (B, T) int (torch or NumPy), T >= 1 -> logits (B, T, V) in the params' dtype.
    impl: "fused" (torch's RNN kernels) or "loop" (explicit cells, same dtype).
    Differentiable with respect to params that require grad.
    """
    params = checked_params(params, config)
    _check_impl(impl)
    tokens = check_tokens(tokens, config, device=params["wte"].device)
    with torch.enable_grad() if _needs_grad(params) else torch.no_grad():
        h0 = _zeros(params, config, tokens.shape[0])
        out, _, _ = _stack(params, config, F.embedding(tokens, params["wte"]), h0, h0, impl)
        return _head(params, out)


def log_prob(params: dict, config: Config, tokens, *, impl: str = "fused") -> torch.Tensor:
    """Exact chain-rule log-likelihood in nats, bos prepended (reference.rnn.log_prob).

    tokens: (B, T) -> (B,), float64 for float64 params, else float32. Differentiable.
    """
    params = checked_params(params, config)
    tokens = check_tokens(tokens, config, device=params["wte"].device)
    return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs, impl=impl), tokens,
                                       config.bos_token)


# ----------------------------------------------------------------------------- recurrent state


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """The zero state {"h": (L, B, H)} (+ "c" for the LSTM), in the params' dtype and device, length 0."""
    params = checked_params(params, config)
    if not isinstance(batch, (int, numpy.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    cache = {"h": _zeros(params, config, int(batch)), "length": 0}
    return cache | {"c": _zeros(params, config, int(batch))} if config.kind == "lstm" else cache


def _check_cache(cache, config: Config, params: dict) -> int:
    keys = {"h", "length"} | ({"c"} if config.kind == "lstm" else set())
    if not isinstance(cache, dict) or set(cache) != keys:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected a dict with keys {sorted(keys)} (from init_cache), got {got}")
    wte = params["wte"]
    for key in keys - {"length"}:
        t = cache[key]
        if not isinstance(t, torch.Tensor) or t.dtype != wte.dtype or t.device != wte.device or t.ndim != 3 \
                or tuple(t.shape[::2]) != (config.n_layer, config.hidden):  # fmt: skip
            got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"cache[{key!r}]: expected {wte.dtype} ({config.n_layer}, B, {config.hidden}) on "
                             f"{wte.device}, got {got}")  # fmt: skip
    return cache["h"].shape[1]


def prefill(params: dict, config: Config, cache: dict, tokens):
    """Feed tokens (B, T) after the cached state -> (logits (B, T, V), new cache). Pure."""
    params = checked_params(params, config)
    batch = _check_cache(cache, config, params)
    tokens = check_tokens(tokens, config, device=params["wte"].device)
    if tokens.shape[0] != batch:
        raise ValueError(f"tokens: expected batch {batch} (the cache's), got {tokens.shape[0]}")
    with torch.inference_mode():
        x = F.embedding(tokens, params["wte"])  # (B, T, E)
        out, h, c = _stack(params, config, x, cache["h"], cache.get("c"), "fused")
        new = {"h": h, "length": cache["length"] + tokens.shape[1]}
        return _head(params, out), (new | {"c": c} if c is not None else new)


def step(params: dict, config: Config, cache: dict, tokens_t):
    """One step: tokens_t (B,) -> (logits_t (B, V), new cache). Pure."""
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, tokens_t[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def _packed(flat: list, config: Config) -> list:
    """On CUDA with cuDNN: copies of the weights packed into cuDNN's one contiguous buffer (what
    nn.RNNBase.flatten_parameters does to a module's own weights), so that the kernel does not
    repack them at every step. Elsewhere, `flat` itself."""
    w = flat[0]
    if not (w.is_cuda and torch.backends.cudnn.is_acceptable(w) and torch._use_cudnn_rnn_flatten_weight()):
        return flat
    from torch.backends.cudnn import rnn as cudnn_rnn

    copies = [t.detach().clone() for t in flat]
    try:
        with torch.cuda.device_of(w), torch.no_grad():
            torch._cudnn_rnn_flatten_weight(copies, 4, config.n_embd, cudnn_rnn.get_cudnn_mode(config.mode.upper()),
                                            config.hidden, 0, config.n_layer, True, False)  # fmt: skip
    except RuntimeError:  # a cuDNN that cannot pack these weights: the kernel packs them at each call instead
        return flat
    return copies


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             processors=(), u=None) -> torch.Tensor:  # fmt: skip
    """Autoregressive generation through the recurrent state (reference.rnn.generate).

    prompt: (B, T0) int, T0 >= 1. At each step the last logits (float32 for bfloat16/float32
    params, float64 for float64) pass through `processors`, then the next token is the argmax
    (u is None) or the inverse-CDF sample with u[:, n] (u: (B, max_new_tokens) uniforms in
    [0, 1), NumPy or torch), token for token the reference's. generation_config and eos as
    reference.rnn.generate (finished rows feed pad until every row has finished).
    Returns (B', T0 + n) int64.
    """
    params = checked_params(params, config)
    wte = params["wte"]
    prompt = check_tokens(prompt, config, name="prompt", device=wte.device)
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u,
                          table=sampling.PROCESSORS).without_beams("fast.rnn")  # fmt: skip
    N = run.max_new_tokens
    prompt = prompt.repeat_interleave(run.num_return_sequences, dim=0)
    B, T0 = prompt.shape
    if u is not None:
        u = sampling.check_uniforms(u, (B, N), wte.device)
    if N == 0:
        return prompt.clone()
    with torch.inference_mode():
        flat = _packed(_flat_weights(recurrent_params(params), config.n_layer, True), config)
        h = c = _zeros(params, config, B)
        o, h, c = _fused(config.mode, flat, True, config.n_layer, F.embedding(prompt, wte), h, c)  # (B, T0, H)
        head_w, head_b = params["head.w"], params["head.b"]
        state = [h, c]

        def next_logits(tokens):  # (B,) -> (B, V), the recurrent state advanced
            x = F.embedding(tokens, wte)[:, None]  # (B, 1, E)
            o, state[0], state[1] = _fused(config.mode, flat, True, config.n_layer, x, *state)
            return torch.addmm(head_b, o[:, 0], head_w)  # (B, V)

        logits = torch.addmm(head_b, o[:, -1], head_w)  # (B, V)
        return fast_generation.decode(logits, next_logits, prompt, N, u=u, **run.decode_kwargs())


def greedy(params: dict, config: Config, prompt, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)) exactly as reference.rnn.sample,
    then `generate` with those uniforms: the same seed gives the reference's tokens."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)
