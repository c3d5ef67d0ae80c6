"""Medusa, fast: the twin of reference/medusa.py in torch (CPU and CUDA; float64, float32, bfloat16).

Same heads, tree, verification and functions as reference/medusa.py, whose docstring carries
the method (Cai et al. 2024) and the differences from the public implementation. How the same
numbers are computed fast:

- the base runs on fast.gpt's kernels (the linear-layer kernels of its `_network`) and its
  preallocated `KVCache`; the tree's keys and values are written in place after the P cached
  positions, and acceptance moves the kept path's entries down to [P, P + 1 + a) with one
  gather over all layers at once (the cache length then says the rest is free);
- tree attention is torch's `scaled_dot_product_attention` with a boolean mask (N, P + N):
  the cache, plus the ancestor relation; `attn_impl="math"` spells it out in the same dtype;
- the heads run batched over K (one bmm per block) and, while generating, only on the
  hidden state of the last accepted node (the only one whose head logits are used);
- verification is vectorized over all paths (one host sync per step, for the accept length);
- generation runs under `torch.inference_mode()`; tree buffers are moved to the device once
  per depth the tree is cut to.
- end of sequence (reference.medusa: the rule): the first eos on the accepted path is found
  on the device and travels in the step's one host sync with the accept length; a row that
  emitted an eos stops there (no more tree forwards), and the next row starts.
- `train_heads`: Medusa-1 training of the heads on the frozen base with fast.train's loop
  (AdamW, warmup + cosine, clipping, checkpoints); the base's hidden states are computed
  without gradient.
"""

from __future__ import annotations

import functools
import math

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import gpt as fast_gpt
from chainrule.fast import train as fast_train
from chainrule.fast.backend import to_torch
from chainrule.reference import medusa as _reference
from chainrule.reference.gpt import Config as GPTConfig
from chainrule.reference.speculative import check_eos
from chainrule.reference.medusa import (
    DEFAULT_EPSILON, LOSS_DECAY, MC_SIM_7B_63, MODES, Config, check_base, check_choices, init, loss_weights,
    param_shapes, prune, random_params, tree_buffers,
)  # fmt: skip

__all__ = [
    "Config", "param_shapes", "init", "random_params", "check_choices", "tree_buffers", "prune", "MODES",
    "DEFAULT_EPSILON", "LOSS_DECAY", "MC_SIM_7B_63", "checked_heads", "init_cache", "head_logits", "base_logits",
    "hidden", "forward", "loss",
    "candidates", "tree_attention_mask", "tree_forward", "keep_path", "typical_threshold", "typical_accepts",
    "verify", "generate", "train_heads", "head_trainable",
]  # fmt: skip


# ----------------------------------------------------------------------------- params


def checked_heads(heads, config: Config, like: torch.Tensor) -> dict:
    """heads as torch tensors in the dtype and on the device of `like` (the base's wte);
    NumPy (or other) arrays are converted. ValueError naming a missing or mis-shaped key."""
    if not isinstance(heads, dict):
        raise ValueError(f"heads: expected a dict name -> array, got {type(heads).__name__}")
    _reference.check_params(heads, config)
    if not all(isinstance(v, torch.Tensor) for v in heads.values()):
        heads = to_torch(heads, device=like.device, dtype=torch.float64)
    out = {}
    for name, value in heads.items():
        if value.dtype != like.dtype or value.device != like.device:
            raise ValueError(f"heads[{name!r}]: expected {like.dtype} on {like.device} (as the base's wte), "
                             f"got {value.dtype} on {value.device}")  # fmt: skip
        out[name] = value
    return out


def _checked(params, base_config, heads, config):
    params = fast_gpt.checked_params(params, base_config)
    check_base(base_config, config)
    return params, checked_heads(heads, config, params["wte"])


def _stacked(heads: dict, config: Config):
    """Per block j: (W (K, C, C), b (K, 1, C)); and U (K, C, V)."""
    K = config.n_heads
    blocks = []
    for j in range(config.n_layers):
        w = torch.stack([heads[f"heads.{k}.blocks.{j}.w"] for k in range(K)])  # (K, C, C)
        b = torch.stack([heads[f"heads.{k}.blocks.{j}.b"] for k in range(K)])[:, None, :]  # (K, 1, C)
        blocks.append((w, b))
    return blocks, torch.stack([heads[f"heads.{k}.out.w"] for k in range(K)])  # (K, C, V)


def _heads_apply(stacked, h: torch.Tensor) -> torch.Tensor:
    """h (M, C) -> (K, M, V) with stacked head weights."""
    blocks, U = stacked
    z = h.unsqueeze(0).expand(U.shape[0], -1, -1)  # (K, M, C)
    for w, b in blocks:
        z = z + F.silu(torch.baddbmm(b, z, w))  # (K, M, C)
    return torch.bmm(z, U)  # (K, M, V)


def head_logits(heads: dict, config: Config, hidden: torch.Tensor) -> torch.Tensor:
    """All heads' logits (reference.medusa.head_logits): hidden (..., C) -> (K, ..., V)."""
    heads = checked_heads(heads, config, hidden)
    lead = hidden.shape[:-1]
    out = _heads_apply(_stacked(heads, config), hidden.reshape(-1, hidden.shape[-1]))  # (K, M, V)
    return out.reshape(config.n_heads, *lead, config.vocab_size)


def base_logits(params: dict, hidden: torch.Tensor) -> torch.Tensor:
    """The base's LM head h W_te^T (h W_head^T for an untied head, lm_head.w): (..., C) -> (..., V)."""
    return F.linear(hidden, params.get("lm_head.w", params["wte"]))


# ----------------------------------------------------------------------------- the base's hidden states


def _hidden_run(net, tokens, cache, positions=None, mask=None, attn_impl: str = "sdpa", last_only: bool = False):
    """The network on tokens (B, T) after the cache's positions -> hidden (B, T, C) after LN_f.

    Causal (positions None): fast.gpt's blocks. Tree: positions (T,) absolute, mask (T, P+T) bool;
    the tree's keys and values are written at cache positions [P, P+T) and the length advanced."""
    B, T = tokens.shape
    P = 0 if cache is None else cache.length
    pos = net.wpe[P : P + T] if positions is None else net.wpe[positions]
    x = F.embedding(tokens, net.wte) + pos  # (B, T, C)
    per_layer = [(None, None)] * len(net.layers) if cache is None else cache.layers
    for layer, (k_cache, v_cache) in zip(net.layers, per_layer):
        x = fast_gpt.network_block(net.config, layer, x, k_cache, v_cache, P, attn_impl, mask)
    if cache is not None:
        cache.length = P + T
    if last_only:
        x = x[:, -1:]
    return F.layer_norm(x, (x.shape[-1],), *net.ln_f, net.config.layer_norm_eps)


def _net(params, base_config, rows: int, differentiable: bool = False):
    return fast_gpt.network(params, base_config, fast_gpt.kernel_mode(params, rows, differentiable))


def init_cache(params: dict, base_config: GPTConfig, max_len: int) -> fast_gpt.KVCache:
    """An empty KV cache for one sequence with room for max_len positions. Unlike
    fast.gpt.init_cache, max_len may exceed block_size: a tree's N nodes occupy N cache slots
    although their positions (P + depth) stay below block_size."""
    params = fast_gpt.checked_params(params, base_config)
    if not isinstance(max_len, (int, numpy.integer)) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"max_len: expected a positive int, got {max_len!r}")
    wte = params["wte"]
    return fast_gpt.empty_cache(base_config, 1, int(max_len), wte.dtype, wte.device)


def hidden(params: dict, base_config: GPTConfig, tokens, cache: fast_gpt.KVCache):
    """The base's last hidden states of tokens (B, T) after the cache's positions -> (h (B, T, C), cache).
    Writes the cache in place (fast.gpt.prefill's contract) and returns it."""
    params = fast_gpt.checked_params(params, base_config)
    fast_gpt.check_cache(cache, base_config, params)
    tokens = fast_gpt.check_tokens(tokens, base_config, max_len=min(base_config.block_size, cache.max_len)
                                   - cache.length, device=params["wte"].device)  # fmt: skip
    with torch.inference_mode():
        h = _hidden_run(_net(params, base_config, tokens.numel()), tokens, cache)
    return h, cache


def _teacher_hidden(params, base_config, tokens, attn_impl="sdpa"):
    """h (B, T, C) without a cache (differentiable with respect to params that require grad)."""
    differentiable = fast_gpt.needs_grad(params)
    with torch.enable_grad() if differentiable else torch.no_grad():
        return _hidden_run(_net(params, base_config, tokens.numel(), differentiable), tokens, None,
                           attn_impl=attn_impl)  # fmt: skip


def forward(params: dict, base_config: GPTConfig, heads: dict, config: Config, tokens, *, attn_impl: str = "sdpa"):
    """Teacher forcing (reference.medusa.forward) -> (logits (B, T, V), head logits (K, B, T, V))."""
    params, heads = _checked(params, base_config, heads, config)
    fast_gpt.check_attn_impl(attn_impl)
    tokens = fast_gpt.check_tokens(tokens, base_config, device=params["wte"].device)
    h = _teacher_hidden(params, base_config, tokens, attn_impl)
    return base_logits(params, h), head_logits(heads, config, h)


def _per_example_loss(heads, config, h, tokens, lam) -> torch.Tensor:
    """(B,) sum_k lambda_k mean_t -log p^(k)_t(x_{t+k+2}), in float32 (float64 for float64)."""
    T = tokens.shape[1]
    medusa = head_logits(heads, config, h)  # (K, B, T, V)
    acc = torch.float64 if medusa.dtype == torch.float64 else torch.float32
    total = 0.0
    for k in range(config.n_heads):
        logits = medusa[k, :, : T - k - 2].to(acc)  # (B, T-k-2, V)
        target = tokens[:, k + 2 :]
        nll = torch.logsumexp(logits, dim=-1) - logits.gather(-1, target[:, :, None])[:, :, 0]  # (B, T-k-2)
        total = total + lam[k] * nll.mean(dim=1)
    return total


def loss(params: dict, base_config: GPTConfig, heads: dict, config: Config, tokens, weights=None) -> torch.Tensor:
    """The Medusa-1 loss (reference.medusa.loss): sum_k lambda_k mean -log p^(k)_t(x_{t+k+2}).
    Differentiable with respect to the heads (and the base params, if they require grad)."""
    lam = loss_weights(config, weights)
    params, heads = _checked(params, base_config, heads, config)
    tokens = fast_gpt.check_tokens(tokens, base_config, min_len=config.n_heads + 2, device=params["wte"].device)
    h = _teacher_hidden(params, base_config, tokens)
    return _per_example_loss(heads, config, h, tokens, lam).mean()


# ----------------------------------------------------------------------------- the tree


def _device_buffers(buffers: dict, device) -> dict:
    """The tree buffers as torch tensors on `device` (plus the host copies)."""
    out = {k: torch.as_tensor(v, device=device) for k, v in buffers.items() if k != "choices"}
    out["host"] = buffers
    # derived indices verification uses at every step, made once
    paths = out["paths"]
    out["parent0"] = out["parent"].clamp(min=0)  # the root's "parent" is itself (never used)
    out["tail"] = paths[:, 1:].clamp(min=0)  # (L, D): the path's nodes below the root, padding -> 0
    out["valid"] = torch.arange(1, paths.shape[1], device=device)[None, :] < out["path_length"][:, None]  # (L, D)
    out["head1"], out["rank1"] = out["head"][1:], out["rank"][1:]
    return out


def _on(buffers: dict, device) -> dict:
    if "host" in buffers and buffers["mask"].device == torch.device(device):
        return buffers
    return _device_buffers(buffers.get("host", buffers), device)


def candidates(logits_last: torch.Tensor, medusa_last: torch.Tensor, buffers: dict) -> torch.Tensor:
    """Node tokens (reference.medusa.candidates): root = argmax (first on ties); node i = the
    rank[i]-th token of head head[i] by decreasing logit (lower id first on ties). -> (N,) int64."""
    b = _on(buffers, logits_last.device)
    order = torch.sort(medusa_last, dim=-1, descending=True, stable=True).indices  # (K, V)
    root = torch.argmax(logits_last).reshape(1)
    return torch.cat([root, order[b["head1"], b["rank1"]]])  # (N,)


def tree_attention_mask(P: int, buffers: dict, device="cpu") -> torch.Tensor:
    """(N, P + N) bool: the cache, then the ancestor-or-self relation."""
    b = _on(buffers, device)
    N = b["mask"].shape[0]
    return torch.cat([torch.ones((N, P), dtype=torch.bool, device=b["mask"].device), b["mask"]], dim=1)


def _tree_hidden(net, cache, tree_tokens, b, attn_impl="sdpa", mask_buffer=None):
    """h (N, C) of the tree's nodes after the cache's P positions (writes their keys and values).
    mask_buffer: an all-True (>= N, >= P + N) bool buffer to build the mask in (restored after)."""
    P, N = cache.length, b["mask"].shape[0]
    if mask_buffer is None:
        mask = tree_attention_mask(P, b, tree_tokens.device)
    else:
        mask = mask_buffer[:N, : P + N]
        mask[:, P:].copy_(b["mask"])
    h = _hidden_run(net, tree_tokens[None, :], cache, positions=P + b["depth"], mask=mask, attn_impl=attn_impl)[0]
    if mask_buffer is not None:
        mask[:, P:] = True
    return h


def tree_forward(params: dict, base_config: GPTConfig, heads: dict, config: Config, cache: fast_gpt.KVCache,
                 tree_tokens, buffers: dict, *, attn_impl: str = "sdpa"):  # fmt: skip
    """One base forward over the tree (reference.medusa.tree_forward) after the cache's P
    positions of one sequence -> (logits (N, V), head logits (K, N, V), cache). Writes the N
    nodes' keys and values at [P, P + N) in place; the cache needs room for them."""
    params, heads = _checked(params, base_config, heads, config)
    fast_gpt.check_cache(cache, base_config, params)
    device = params["wte"].device
    b = _on(buffers, device)
    N, P = b["mask"].shape[0], cache.length
    if cache.batch != 1:
        raise ValueError(f"cache: expected batch 1 (one sequence), got {cache.batch}")
    if P + N > cache.max_len:
        raise ValueError(f"cache: expected room for {N} tree nodes after {P} positions, got max_len {cache.max_len}")
    if P + int(b["host"]["depth"].max()) >= base_config.block_size:
        raise ValueError(f"cache: the tree reaches position {P + int(b['host']['depth'].max())}, "
                         f"beyond block_size={base_config.block_size}")  # fmt: skip
    tokens = torch.as_tensor(tree_tokens, dtype=torch.int64, device=device)
    with torch.inference_mode():
        h = _tree_hidden(_net(params, base_config, N), cache, tokens, b, attn_impl)  # (N, C)
        return base_logits(params, h), _heads_apply(_stacked(heads, config), h), cache


def keep_path(cache: fast_gpt.KVCache, P: int, nodes) -> fast_gpt.KVCache:
    """In place: the tree nodes `nodes` (root first) move to [P, P + len(nodes)), the length
    becomes P + len(nodes) (the other nodes' entries are dropped). Returns the same cache."""
    idx = P + torch.as_tensor(nodes, dtype=torch.int64, device=cache.k.device)
    n = idx.numel()
    with torch.inference_mode():
        for kv in (cache.k, cache.v):  # (L, B, nh, max_len, hs): all layers at once
            kv[:, :, :, P : P + n] = kv[:, :, :, idx]  # the gather copies before the write
    cache.length = P + n
    return cache


# ----------------------------------------------------------------------------- verification


def typical_threshold(logits: torch.Tensor, epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
                      temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """min(epsilon, delta exp(-H(p))), p = softmax(logits / T), H exact (reference.medusa.typical_threshold).
    Computed in float64 (float32 for float32/bfloat16 logits). (..., V) -> (...)."""
    epsilon, delta, temperature = _reference._check_epsilon_delta(epsilon, delta, temperature)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(logits.to(acc) / temperature, dim=-1)
    p = logp.exp()
    H = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(dim=-1)  # 0 log 0 = 0
    return torch.clamp(delta * torch.exp(-H), max=epsilon)


def typical_accepts(logits: torch.Tensor, tokens, epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
                    temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
    """p(x) > min(epsilon, delta exp(-H(p))) (reference.medusa.typical_accepts). -> (...) bool."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    tokens = torch.as_tensor(tokens, dtype=torch.int64, device=logits.device)
    p = torch.softmax(logits.to(acc) / temperature, dim=-1)
    px = p.gather(-1, tokens[..., None])[..., 0]
    return px > typical_threshold(logits, epsilon, delta, temperature)


def _verify(tree_logits, tree_tokens, b, mode, epsilon, delta, temperature):
    """-> (row tensor, a tensor) on the device, no host sync."""
    parent, tail = b["parent0"], b["tail"]
    if mode == "greedy":
        ok = tree_tokens == torch.argmax(tree_logits, dim=-1)[parent]  # (N,)
    else:
        parent_logits = tree_logits[parent]  # (N, V)
        ok = typical_accepts(parent_logits, tree_tokens, epsilon, delta, temperature)
        acc = torch.float64 if tree_logits.dtype == torch.float64 else torch.float32
        logp = torch.log_softmax(parent_logits.to(acc) / temperature, dim=-1)
        score = logp.gather(-1, tree_tokens[:, None])[:, 0]  # (N,)
    passed = ok[tail] & b["valid"]  # (L, D): padding never passes
    run = torch.cumprod(passed.to(torch.int64), dim=1)  # (L, D): 1 while every node so far passed
    a = run.sum(dim=1)  # (L,)
    if mode == "greedy":
        row = torch.argmax(a)  # the first longest
    else:
        s = (score[tail] * run).sum(dim=1)  # (L,) sum of log p over the accepted
        s = torch.where(a == a.max(), s, torch.full_like(s, -math.inf))
        row = torch.argmax(s)  # the first of the best
    return row, a[row]


def verify(tree_logits: torch.Tensor, tree_tokens, buffers: dict, mode: str = "greedy",
           epsilon: float = DEFAULT_EPSILON, delta: float | None = None, temperature: float = 1.0):  # fmt: skip
    """The accepted path (reference.medusa.verify) -> (path row, a) as ints."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "typical":
        _reference._check_epsilon_delta(epsilon, delta, temperature)
    b = _on(buffers, tree_logits.device)
    tokens = torch.as_tensor(tree_tokens, dtype=torch.int64, device=tree_logits.device)
    row, a = _verify(tree_logits, tokens, b, mode, epsilon, delta, temperature)
    return int(row), int(a)


# ----------------------------------------------------------------------------- generation


def generate(params: dict, base_config: GPTConfig, heads: dict, config: Config, prompt, max_new_tokens: int,
             choices, *, mode: str = "greedy", epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
             temperature: float = 1.0, eos_token_id=None, pad_token_id=None):  # fmt: skip
    """Medusa decoding (reference.medusa.generate) -> (tokens (B, T0 + n) int64 on the params'
    device, per row an int64 NumPy array of the accept length of each tree forward).

    Rows are decoded one after the other, each with its own preallocated cache. Greedy mode
    gives fast.gpt.greedy's tokens (the argmax of the same logits, up to the rounding of a
    different attention order in low precision). eos_token_id, pad_token_id: as the reference
    (a row ends at its first emitted eos, n = the most tokens any row emitted, pad after)."""
    params, heads = _checked(params, base_config, heads, config)
    if not isinstance(max_new_tokens, (int, numpy.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if mode == "typical":
        _reference._check_epsilon_delta(epsilon, delta, temperature)
    choices = check_choices(choices, config)
    eos, pad = check_eos(eos_token_id, pad_token_id, base_config.vocab_size)
    N = int(max_new_tokens)
    wte = params["wte"]
    prompt = fast_gpt.check_tokens(prompt, base_config, name="prompt", max_len=base_config.block_size + 1 - max(N, 1),
                                   device=wte.device)  # fmt: skip
    if N == 0:
        return prompt.clone(), tuple(numpy.zeros(0, dtype=numpy.int64) for _ in range(prompt.shape[0]))
    trees = _trees(choices, wte.device)
    n_nodes = trees[max(trees)]["mask"].shape[0]
    eos_ids = torch.as_tensor(eos, dtype=torch.int64, device=wte.device) if eos else None
    rows, accepted = [], []
    with torch.inference_mode():
        stacked = _stacked(heads, config)
        for r in range(prompt.shape[0]):
            new, a = _generate_row(params, base_config, stacked, prompt[r : r + 1], N, trees, n_nodes, mode,
                                   epsilon, delta, temperature, eos_ids)  # fmt: skip
            rows.append(new)
            accepted.append(numpy.asarray(a, dtype=numpy.int64))
        B, T0 = prompt.shape
        n = max(new.shape[0] for new in rows)
        out = torch.full((B, T0 + n), 0 if pad is None else pad, dtype=torch.int64, device=wte.device)
        out[:, :T0] = prompt
        for r, new in enumerate(rows):  # rows that ended earlier keep the pad after their eos
            out[r, T0 : T0 + new.shape[0]] = new
    return out, tuple(accepted)


@functools.lru_cache(maxsize=16)
def _trees(choices: tuple, device: torch.device) -> dict:
    """depth d -> the device buffers of the tree cut to depth d (made once per tree and device)."""
    depth = max(len(c) for c in choices)
    return {d: _device_buffers(tree_buffers(prune(choices, d)), device) for d in range(1, depth + 1)}


def _first_eos(tokens: torch.Tensor, eos_ids: torch.Tensor, upto) -> torch.Tensor:
    """The index of the first eos among tokens[: upto + 1] (upto: an int or a 0-d tensor), or
    len(tokens) when there is none; on the device (no host sync)."""
    hit = torch.isin(tokens, eos_ids) & (torch.arange(tokens.shape[0], device=tokens.device) <= upto)
    return torch.where(hit.any(), hit.to(torch.int64).argmax(), tokens.shape[0])


def _generate_row(params, base_config, stacked, prompt, N, trees, n_nodes, mode, epsilon, delta, temperature,
                  eos_ids):  # fmt: skip
    """One sequence: prompt (1, T0) -> (its new tokens (n,), n <= N, ending at the first eos;
    the accept length of each tree forward)."""
    wte = params["wte"]
    T0 = prompt.shape[1]
    cache = fast_gpt.empty_cache(base_config, 1, T0 + N + n_nodes, wte.dtype, wte.device, zeros=False)
    mask_buffer = torch.ones((n_nodes, cache.max_len), dtype=torch.bool, device=wte.device)
    prefill_net = _net(params, base_config, T0)
    h = _hidden_run(prefill_net, prompt, cache, last_only=True)[0]  # (1, C)
    tree_net, step_net = _net(params, base_config, n_nodes), _net(params, base_config, 1)
    logits_last, medusa_last = prefill_net.head(h)[0], _heads_apply(stacked, h)[:, 0]  # (V,), (K, V)
    out = torch.empty(N, dtype=torch.int64, device=wte.device)
    n, accepted, max_depth = 0, [], max(trees)
    while n < N:
        remaining = N - n
        if remaining == 1:
            out[n] = torch.argmax(logits_last)
            n += 1
            break
        P = cache.length
        depth = min(max_depth, remaining - 1, base_config.block_size - 1 - P)
        if depth == 0:  # the root at the last position: a plain step
            root = torch.argmax(logits_last).reshape(1, 1)
            out[n] = root[0, 0]
            n += 1
            accepted.append(0)
            if eos_ids is not None and bool(torch.isin(root, eos_ids).any()):  # a host sync, near block_size only
                break
            h = _hidden_run(step_net, root, cache)[0]  # (1, C)
            logits_last, medusa_last = step_net.head(h)[0], _heads_apply(stacked, h)[:, 0]
            continue
        b = trees[depth]
        tokens = candidates(logits_last, medusa_last, b)  # (N_nodes,)
        hs = _tree_hidden(tree_net, cache, tokens, b, mask_buffer=mask_buffer)  # (N_nodes, C)
        tree_logits = tree_net.head(hs)  # (N_nodes, V)
        row, a = _verify(tree_logits, tokens, b, mode, epsilon, delta, temperature)
        if eos_ids is None:
            a, first = int(a), None  # the step's one host sync
        else:  # the first eos on the accepted path, found on the device
            a, first = torch.stack([a, _first_eos(tokens[b["paths"][row].clamp(min=0)], eos_ids, a)]).tolist()
        nodes = b["paths"][row, : a + 1]
        out[n : n + a + 1] = tokens[nodes]
        accepted.append(a)
        if first is not None and first <= a:  # ends at the eos: what follows it is discarded
            n += first + 1
            break
        n += a + 1
        keep_path(cache, P, nodes)
        last = nodes[-1]
        logits_last = tree_logits[last]
        medusa_last = _heads_apply(stacked, hs[last][None, :])[:, 0]  # (K, V): the heads on one node only
    return out[:n], accepted


# ----------------------------------------------------------------------------- training the heads


def head_trainable(params: dict, base_config: GPTConfig, heads: dict, config: Config, weights=None,
                   device="cpu", dtype=torch.float32) -> fast_train.Trainable:  # fmt: skip
    """The heads as a `fast.train.Trainable` on the frozen base: its log_prob(heads, batch) is
    -T * sum_k lambda_k mean_t -log p^(k)_t(x_{t+k+2}) per example (T units per example), so
    the loop's loss per unit is exactly the Medusa-1 loss (reference.medusa.loss). The base's
    hidden states are computed without gradient, in `dtype` on `device`."""
    lam = loss_weights(config, weights)
    check_base(base_config, config)
    _reference.check_params(heads, config)
    if all(isinstance(v, torch.Tensor) for v in params.values()):
        base = {k: v.detach().to(device=device, dtype=dtype) for k, v in params.items()}
    else:
        base = to_torch(params, device=device, dtype=dtype)
    base = fast_gpt.checked_params(base, base_config)

    def log_prob(head_params, batch, rng=None):
        if batch.ndim != 2 or batch.shape[1] < config.n_heads + 2:
            raise ValueError(f"batch: expected (B, T) with T >= n_heads + 2 = {config.n_heads + 2}, "
                             f"got {tuple(batch.shape)}")  # fmt: skip
        with torch.no_grad():
            h = _hidden_run(_net(base, base_config, batch.numel()), batch, None)  # (B, T, C)
        h = h.to(next(iter(head_params.values())).dtype)
        return -batch.shape[1] * _per_example_loss(head_params, config, h, batch, lam)

    return fast_train.Trainable(name="medusa", config=config, params=heads, log_prob=log_prob, metric="nats")


def train_heads(params: dict, base_config: GPTConfig, heads: dict, config: Config, train_data, val_data=None,
                cfg: fast_train.TrainConfig | None = None, *, weights=None, out_dir=None, progress=False):  # fmt: skip
    """Medusa-1: train the heads on the frozen base with fast.train.train (AdamW, warmup +
    cosine, clipping, checkpoints). train_data: (n, T) int sequences, T >= n_heads + 2.
    Returns fast.train's TrainResult (its params: the trained heads)."""
    cfg = cfg or fast_train.TrainConfig()
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    trainable = head_trainable(params, base_config, heads, config, weights, device=cfg.device, dtype=dtype)
    return fast_train.train(trainable, train_data, val_data, cfg, out_dir=out_dir, progress=progress)
