"""Bengio et al.'s neural probabilistic LM, fast: the twin of reference/nplm.py in torch (CPU and CUDA).

The model (Bengio, Ducharme, Vincent & Jauvin 2003: y = b + W x + U tanh(d + H x), x the
concatenated features of the n - 1 previous words, most recent first), its parameter
names, functions, arguments, errors and bos convention are those of reference/nplm.py;
read that file first. Here:

- The windows of all positions are one strided view (`unfold`) of the bos-padded
  tokens, their features one embedding gather, (B, T, n-1, m) viewed as (B, T, (n-1) m):
  no per-position loop.
- `impl="fused"`: the output layer is ONE matrix product, [tanh(d + x H), x] [U; W] + b,
  the direct connections folded into the hidden-to-output GEMM (K = h + (n-1) m), so the
  (B T, V) logits are written once. `impl="plain"` spells the equation term by term in
  the same dtype (the baseline low-precision results are judged against).
- Generation keeps the window as a (B, n-1) tensor, stacks [U; W] once, and checks the
  logits once after the loop (a NaN still raises ValueError naming the step).

`forward` and `log_prob` are differentiable with respect to the params (autograd).
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import generation as fast_generation
from chainrule.fast import metrics, sampling
from chainrule.reference import generation
from chainrule.fast.backend import checked_tensors, checked_tokens
from chainrule.reference import nplm as _reference
from chainrule.reference.nplm import Config, init, param_shapes, random_params

__all__ = ["Config", "init", "random_params", "param_shapes", "checked_params", "check_tokens", "windows",
           "forward", "log_prob", "init_cache", "prefill", "step", "generate", "greedy", "sample"]  # fmt: skip

IMPLS = ("fused", "plain")


def checked_params(params, config: Config) -> dict:
    """params as torch tensors of one float dtype on one device (NumPy -> float64 CPU); ValueError naming the key."""
    return checked_tensors(params, lambda p: _reference.check_params(p, config), "C")


def check_tokens(tokens, config: Config, name: str = "tokens", device=None) -> torch.Tensor:
    """reference.nplm.check_tokens for torch tensors too -> tokens as int64 on `device`."""
    return checked_tokens(tokens, config.vocab_size, lambda: _reference.check_tokens(tokens, config, name=name),
                          name, device)


def _check_impl(impl):
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")


def windows(config: Config, tokens: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
    """out[b, t, j] = tokens[b, t - j], most recent first; before the start, `history`
    (B, n-1) (most recent first; default all bos).  tokens: (B, T) -> (B, T, n-1), a view."""
    B, T = tokens.shape
    k = config.context
    if k == 0:
        return tokens.new_empty((B, T, 0))
    if history is None:
        history = tokens.new_full((B, k), config.bos_token)
    padded = torch.cat([history.flip(1), tokens], dim=1)  # (B, k+T), oldest first
    return padded.unfold(1, k, 1)[:, 1:].flip(-1)  # (B, T, k)


def _features(params: dict, config: Config, window: torch.Tensor) -> torch.Tensor:
    """x: the concatenated features of each window.  (..., n-1) -> (..., (n-1) m)."""
    return F.embedding(window, params["C"]).flatten(-2)


def _output_weights(params: dict, config: Config) -> torch.Tensor:
    """[U; W] ((h + (n-1) m), V): hidden-to-output and direct weights stacked for one GEMM."""
    return torch.cat([params["U"], params["W"]], dim=0) if config.direct else params["U"]


def _logits(params: dict, config: Config, x: torch.Tensor, impl: str, UW=None) -> torch.Tensor:
    """y = b + W x + U tanh(d + H x) on features x (M, (n-1) m) -> (M, V)."""
    if impl == "plain":
        y = params["b"] + torch.tanh(params["d"] + x @ params["H"]) @ params["U"]
        return y + x @ params["W"] if config.direct else y
    a = torch.tanh(torch.addmm(params["d"], x, params["H"]))  # (M, h)
    if config.direct:
        a = torch.cat([a, x], dim=-1)  # (M, h + (n-1) m)
    return torch.addmm(params["b"], a, _output_weights(params, config) if UW is None else UW)  # (M, V)


def _needs_grad(params: dict) -> bool:
    return torch.is_grad_enabled() and any(value.requires_grad for value in params.values())


def forward(params: dict, config: Config, tokens, *, impl: str = "fused") -> torch.Tensor:
    """All next-token logits at once (reference.nplm.forward): tokens (B, T) -> (B, T, V) in the
    params' dtype. impl: "fused" (one output GEMM) or "plain" (term by term). Differentiable."""
    params = checked_params(params, config)
    _check_impl(impl)
    tokens = check_tokens(tokens, config, device=params["C"].device)
    B, T = tokens.shape
    with torch.enable_grad() if _needs_grad(params) else torch.no_grad():
        x = _features(params, config, windows(config, tokens)).reshape(B * T, -1)  # (B T, (n-1) m)
        return _logits(params, config, x, impl).view(B, T, -1)


def log_prob(params: dict, config: Config, tokens, *, impl: str = "fused") -> torch.Tensor:
    """Exact chain-rule log-likelihood in nats, bos prepended (reference.nplm.log_prob).

    tokens: (B, T) -> (B,), float64 for float64 params, else float32. Differentiable.
    """
    params = checked_params(params, config)
    tokens = check_tokens(tokens, config, device=params["C"].device)
    return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs, impl=impl), tokens,
                                       config.bos_token)


# ----------------------------------------------------------------------------- the window as a cache


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """{"window": (B, n-1) int64 all bos (most recent first), "length": 0} on the params' device."""
    params = checked_params(params, config)
    if not isinstance(batch, (int, numpy.integer)) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    window = torch.full((int(batch), config.context), config.bos_token, dtype=torch.int64, device=params["C"].device)
    return {"window": window, "length": 0}


def prefill(params: dict, config: Config, cache: dict, tokens):
    """Feed tokens (B, T) after the cached window -> (logits (B, T, V), new cache). Pure."""
    params = checked_params(params, config)
    if not isinstance(cache, dict) or set(cache) != {"window", "length"}:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected a dict with keys ['length', 'window'] (from init_cache), got {got}")
    history = cache["window"]
    if not isinstance(history, torch.Tensor) or history.ndim != 2 or history.shape[1] != config.context:
        raise ValueError(f"cache['window']: expected a (B, {config.context}) tensor, got {getattr(history, 'shape', None)}")
    tokens = check_tokens(tokens, config, device=params["C"].device)
    B, T = tokens.shape
    if B != history.shape[0]:
        raise ValueError(f"tokens: expected batch {history.shape[0]} (the cache's), got {B}")
    with torch.inference_mode():
        win = windows(config, tokens, history)  # (B, T, k)
        logits = _logits(params, config, _features(params, config, win).reshape(B * T, -1), "fused").view(B, T, -1)
        new = win[:, -1].clone() if config.context else history.clone()  # the window after the last token
    return logits, {"window": new, "length": cache["length"] + T}


def step(params: dict, config: Config, cache: dict, tokens_t):
    """One step: tokens_t (B,) -> (logits_t (B, V), new cache). Pure."""
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, tokens_t[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             processors=(), u=None) -> torch.Tensor:  # fmt: skip
    """Autoregressive generation through the window (reference.nplm.generate).

    prompt: (B, T0) int, T0 >= 1. At each step the last logits (float32 for bfloat16/float32
    params, float64 for float64) pass through `processors`, then the next token is the argmax
    (u is None) or the inverse-CDF sample with u[:, n] (u: (B, max_new_tokens) in [0, 1)),
    token for token the reference's. generation_config and eos as reference.nplm.generate
    (finished rows feed pad until every row has finished). Returns (B', T0 + n) int64.
    """
    params = checked_params(params, config)
    C = params["C"]
    prompt = check_tokens(prompt, config, name="prompt", device=C.device)
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u,
                          table=sampling.PROCESSORS).without_beams("fast.nplm")  # fmt: skip
    N = run.max_new_tokens
    prompt = prompt.repeat_interleave(run.num_return_sequences, dim=0)
    B, T0 = prompt.shape
    k = config.context
    if u is not None:
        u = sampling.check_uniforms(u, (B, N), C.device)
    if N == 0:
        return prompt.clone()
    with torch.inference_mode():
        UW = _output_weights(params, config)  # stacked once
        window = [windows(config, prompt)[:, -1].clone()]  # (B, k): the window after the prompt

        def next_logits(tokens):  # (B,) -> (B, V), the window shifted
            if k:
                window[0] = torch.cat([tokens[:, None], window[0][:, :-1]], dim=1)  # (B, k), most recent first
            return _logits(params, config, _features(params, config, window[0]), "fused", UW)

        logits = _logits(params, config, _features(params, config, window[0]), "fused", UW)  # (B, V)
        return fast_generation.decode(logits, next_logits, prompt, N, u=u, **run.decode_kwargs())


def greedy(params: dict, config: Config, prompt, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)) exactly as reference.nplm.sample,
    then `generate` with those uniforms: the same seed gives the reference's tokens."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)
