"""Speculative decoding, fast: batched speculative generation with fast.gpt target and draft.

The twin of reference/speculative.py, whose docstring carries the algorithm (Leviathan et al.
2023; Chen et al. 2023), the degenerate cases and the uniform layout; read it first. Here:

    generate(target, draft, prompt, k, max_new_tokens, rng=None, *, u=None, processors=(),
             eos_token_id=None, pad_token_id=None)
        target, draft: (params, config) of two fast.gpt models with one vocabulary;
        prompt (B, T0) -> (tokens (B, T0 + n) int64, accepted (B, S) int64)

Row b is, step for step, the reference's `generate(gpt_model(target), gpt_model(draft),
prompt[b], k, max_new_tokens, u=u[b], eos_token_id=...)`: the same uniform layout
(u: (B, max_new_tokens, 2k + 1), step s of row b consumes u[b, s]), the same inverse-CDF and
acceptance arithmetic in float64, the same end of sequence (the first eos a row emits ends it,
kept; the rest of that step's block discarded). The reference's row has T0 + n_b tokens; here
it is followed by pad_token_id (default: the first eos id) up to n = max_b n_b
(n = max_new_tokens without eos). accepted[b, s] is the number of draft tokens row b's
verification accepted at its step s (0..k, accepted drafts cut off by an eos or by
max_new_tokens included), -1 after the row ended; S = the steps run, until every row ended.

How it runs:
- Each step is k draft forwards (one token each, the first may carry one catch-up token, see
  below) and ONE target forward over k + 1 positions (the last context token and the k drafts),
  which yields p_1..p_{k+1} at once.
- Both models' logits pass through the same `processors` (callables (M, V) -> (M, V) on rows of
  logits, applied in order; the target's k + 1 positions are processed as k + 1 rows, so a
  processor must act on each row alone: temperature, top_k, top_p, ... not repetition_penalty),
  then become float64 probabilities, softmax(x - max x) computed in float64 (as fast.sampling
  does, whatever the logits' dtype). The draft's q is exactly the processed
  distribution its token was drawn from, and the same q enters the ratio p/q and the residual.
- KV caches are preallocated (fast.gpt.KVCache) and *rolled back* on rejection by resetting a
  length: positions past it are stale and are overwritten before they are read again.
- Batch strategy: every row keeps its own context length (rows accept different numbers of
  tokens). A forward writes row b's new keys/values at its own positions and masks attention per
  row (keys at positions <= the query's); when all rows are at the same length (always for one
  sequence) it runs fast.gpt's own shared-offset kernels (a one-token draft step is exactly
  fast.gpt's step; a multi-token pass writes the cache as fast.gpt does and slices its causal
  mask from one triangle made once, not rebuilt in every layer). Rows run in lockstep.
- Finished rows cost nothing: a row that has emitted an eos or max_new_tokens tokens leaves the
  batch (its tokens go to the result; the caches, the working tokens and the uniforms keep
  only the live rows, one gather when rows end), and generation stops when no row is left.
- Per-step cost beyond the k + 1 forwards (batch 1 of small models is bound by per-operation
  overhead, so operations are counted): the drafts are written into the output in place and the
  target pass reads them there; the acceptance test, the index a and the final token are a
  few batched tensor operations with no loop over k (the bonus case is the residual against a
  zero "q_{k+1}", which is p_{k+1} itself, so one draw covers both); the per-row bookkeeping
  is plain Python on the one synchronized copy of the acceptance counts.
- The draft has not seen the last draft token x_k when all k were accepted (it was never fed);
  the next step's first draft forward then feeds the last two context tokens as one chunk (for
  rows that need only one, the earlier position is recomputed: the same keys and values up to
  rounding).
- One host synchronization per step: the acceptance counts decide the next positions. The logits
  are validated once, after the loop (NaN, +inf, or a row entirely -inf after the processors
  raise ValueError then, naming the model).

Lengths: T0 + max_new_tokens + k - 1 <= block_size of both models (the last step's drafts and
the target pass over them must fit, even when their tokens are cut off).
"""

from __future__ import annotations

import numpy
import torch
import torch.nn.functional as F

from chainrule.fast import gpt, sampling
from chainrule.reference.speculative import (acceptance_rate, check_eos, expected_speedup, expected_tokens_per_step,
                                             uniforms_per_step)  # fmt: skip

__all__ = ["generate", "inverse_cdf", "residual", "acceptance_rate", "expected_tokens_per_step",
           "expected_speedup", "uniforms_per_step"]  # fmt: skip


# ----------------------------------------------------------------------------- sampling arithmetic (reference's)


def inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """reference.speculative.inverse_cdf, batched: the smallest i with cumsum(w)_i > u * sum(w)
    (the last i with w_i > 0 when rounding leaves none).  w: (..., V) >= 0, u: (...) -> (...) int64.

    As min(first, last): with w >= 0 the cumsum is constant from the last positive w_i on, so
    c_last = sum(w), and any first i with c_i > u sum(w) comes at or before it; no such i gives
    V (searchsorted's "none"), and the minimum picks the last positive w_i. (A row with no positive
    weight gives 0; probabilities from a softmax of finite logits always have one.)"""
    c = torch.cumsum(w, dim=-1)  # (..., V) nondecreasing
    first = torch.searchsorted(c, u[..., None] * c[..., -1:], right=True)[..., 0]  # (...) first c_i > u c_V; V if none
    positions, zero = _positions(w.shape[-1], w.device)
    last_positive = torch.where(w > 0, positions, zero).amax(dim=-1)  # (...)
    return torch.minimum(first, last_positive)


_POSITIONS: dict = {}


def _positions(V: int, device) -> tuple:
    """(arange(V), 0) int64 on `device`, made once (never written)."""
    key = (V, str(device))
    if key not in _POSITIONS:
        _POSITIONS[key] = torch.arange(V, device=device), torch.zeros((), dtype=torch.int64, device=device)
    return _POSITIONS[key]


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """reference.speculative.residual, batched: max(0, p - q), or p where that row vanishes.  (..., V)."""
    r = (p - q).clamp_(min=0.0)
    return torch.where((r.sum(dim=-1) > 0)[..., None], r, p)


# ----------------------------------------------------------------------------- a GPT with per-row positions


class _Model:
    """A fast.gpt model, its KV cache, and forwards at per-row positions."""

    def __init__(self, params, config, batch: int, max_len: int, processors, name: str):
        self.params = gpt.checked_params(params, config)
        self.config, self.name, self.processors = config, name, tuple(processors)
        wte = self.params["wte"]
        self.cache = gpt.empty_cache(config, batch, max_len, wte.dtype, wte.device)
        self.logits_dtype = torch.float64 if wte.dtype == torch.float64 else torch.float32
        self._nets = {}  # rows -> network, mode -> network
        self.rows = torch.arange(batch, device=wte.device)
        self.row_max = []
        self.triangle = None

    def keep(self, live: torch.Tensor) -> None:
        """Keep only the batch rows `live` (int64 indices, in order): the cache's rows are gathered
        (one copy of the cache per call; it is called when rows end)."""
        self.cache = gpt.KVCache(self.cache.k[:, live], self.cache.v[:, live], self.cache.length)
        self.rows = self.rows[: live.shape[0]]

    def _net(self, rows: int):
        """The network with fast.gpt's kernels for inputs of `rows` rows (made once per mode)."""
        net = self._nets.get(rows)
        if net is None:
            mode = gpt.kernel_mode(self.params, rows, False)
            net = self._nets[mode] = self._nets.get(mode) or gpt.network(self.params, self.config, mode)
            self._nets[rows] = net
        return net

    def feed(self, tokens: torch.Tensor, lengths, last_only: bool = False) -> torch.Tensor:
        """Feed tokens (B, T), row b at positions lengths[b] .. lengths[b] + T - 1 (its cache holds the
        positions before; these are written) -> logits (B, T, V) ((B, 1, V) with last_only).
        lengths: (B,) ints, or one int when every row is at the same position."""
        B, T = tokens.shape
        net = self._net(B * T)
        if not isinstance(lengths, int):
            if not (lengths == lengths[0]).all():
                return self._run_rows(net, tokens, lengths, last_only)
            lengths = int(lengths[0])
        if T == 1 or lengths == 0:  # fast.gpt's own kernels (one new position, or an empty cache)
            self.cache.length = lengths
            return gpt.run_network(net, tokens, self.cache, "sdpa", last_only=last_only)
        return self._run_rows(net, tokens, lengths, last_only)

    def probs(self, tokens: torch.Tensor, lengths, last_only: bool = False) -> torch.Tensor:
        """`feed`, then the processors, -> float64 probabilities (B, T, V) ((B, 1, V) with last_only)."""
        logits = self.feed(tokens, lengths, last_only)
        B, T, V = logits.shape
        flat = logits.view(B * T, V)  # (B*T, V)
        if flat.dtype != self.logits_dtype:
            flat = flat.to(self.logits_dtype)
        if self.processors:
            for process in self.processors:
                flat = process(flat)
            if not (isinstance(flat, torch.Tensor) and flat.is_floating_point() and flat.shape == (B * T, V)):
                raise ValueError(f"processors: expected floating logits of shape {(B * T, V)}, got "
                                 f"{getattr(flat, 'shape', type(flat))}")  # fmt: skip
        self.row_max.append(flat.amax(dim=-1))  # checked once, after the loop (no host sync here)
        return torch.softmax(flat, dim=-1, dtype=torch.float64).view(B, T, V)  # exp(x - max) / sum, float64

    def check(self) -> None:
        """ValueError if any logits fed to sampling held NaN/+inf or a row was entirely -inf."""
        if self.row_max:
            problem = sampling.row_problem(torch.cat([m.reshape(-1) for m in self.row_max]))
            if problem:
                raise ValueError(f"{self.name} logits: {problem} (after processors)")

    def _run_rows(self, net, tokens, lengths, last_only):
        """fast.gpt.run_network with row b's tokens at positions lengths[b] + t, attention masked per row (keys at
        positions <= the query's). lengths: (B,) ints, or one int P for all rows: then the cache is
        written as fast.gpt does and the mask is a slice of one causal triangle, shared by every layer
        (fast.gpt rebuilds it in each layer: a cost the k+1-position target pass pays at every step)."""
        B, T = tokens.shape
        config = self.config
        nh, eps = config.n_head, config.layer_norm_eps
        if isinstance(lengths, int):
            P = lengths
            Tk = P + T
            allowed = self._triangle()[P:Tk, :Tk]  # (T, Tk)
            x = F.embedding(tokens, net.wte) + net.wpe[P:Tk]  # (B, T, C)
        else:
            P = None
            start = torch.as_tensor(lengths, device=tokens.device)
            pos = start[:, None] + torch.arange(T, device=tokens.device)  # (B, T)
            Tk = int(lengths.max()) + T
            keys = torch.arange(Tk, device=tokens.device)
            allowed = (keys[None, None, :] <= pos[:, :, None])[:, None]  # (B, 1, T, Tk)
            x = F.embedding(tokens, net.wte) + net.wpe[pos]  # (B, T, C)
        C = x.shape[-1]
        for layer, (k_cache, v_cache) in zip(net.layers, self.cache.layers):
            h = F.layer_norm(x, (C,), *layer.ln_1, eps).reshape(B * T, C)
            q, k, v = layer.qkv(h).view(B, T, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)  # (B, nh, T, hs)
            if P is not None:
                k_cache.narrow(2, P, T).copy_(k)  # positions [P, P+T), in place
                v_cache.narrow(2, P, T).copy_(v)
            else:
                k_cache[self.rows[:, None], :, pos] = k.transpose(1, 2)  # (B, T, nh, hs) at row b's positions
                v_cache[self.rows[:, None], :, pos] = v.transpose(1, 2)
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :Tk], v_cache[:, :, :Tk], attn_mask=allowed,
                                               scale=layer.scale)  # fmt: skip
            x = x + layer.proj(y.transpose(1, 2).reshape(B * T, C)).view(B, T, C)
            h = F.layer_norm(x, (C,), *layer.ln_2, eps).reshape(B * T, C)
            x = x + layer.fc_proj(layer.fc(h)).view(B, T, C)
        if last_only:
            x = x[:, -1:]
        x = F.layer_norm(x, (C,), *net.ln_f, eps)
        return net.head(x.reshape(-1, C)).view(B, x.shape[1], -1)

    def _triangle(self) -> torch.Tensor:
        """(max_len, max_len) bool, True where key position <= query position (made once)."""
        if self.triangle is None:
            n = self.cache.max_len
            positions = torch.arange(n, device=self.rows.device)
            self.triangle = positions[None, :] <= positions[:, None]
        return self.triangle


# ----------------------------------------------------------------------------- generation


def _pair(model, name: str):
    if not (isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[1], gpt.Config)):
        raise ValueError(f"{name}: expected (params, config) of a GPT, got {type(model).__name__}")
    return model


def generate(target, draft, prompt, k: int, max_new_tokens: int, rng=None, *, u=None, processors=(),
             eos_token_id=None, pad_token_id=None):  # fmt: skip
    """Batched speculative generation (module docstring) -> (tokens (B, T0 + n) int64, accepted (B, S) int64).

    target, draft: (params, config) of fast.gpt models (same vocab_size, params on one device);
    prompt: (B, T0) int, T0 >= 1; k >= 1 draft tokens per step; N = max_new_tokens.
    Randomness: rng (a numpy Generator: u = rng.random((B, N, 2k + 1))) or explicit
    u (B, N, 2k + 1) in [0, 1), the reference's layout per row.
    End of sequence (reference.speculative: the rule): eos_token_id (an id or a sequence of ids
    in [0, V)) ends a row at the first eos it emits; pad_token_id (an id in [0, V), default the
    first eos id) fills the row after it. n = the most tokens any row emitted (n = N without
    eos); S = the steps run, until every row has ended.
    """
    (tp, tc), (dp, dc) = _pair(target, "target"), _pair(draft, "draft")
    if tc.vocab_size != dc.vocab_size:
        raise ValueError(f"draft: expected vocab_size {tc.vocab_size} (the target's), got {dc.vocab_size}")
    if isinstance(k, bool) or not isinstance(k, (int, numpy.integer)) or k < 1:
        raise ValueError(f"k: expected an int >= 1 (draft tokens per step), got {k!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, numpy.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    eos, pad = check_eos(eos_token_id, pad_token_id, tc.vocab_size)
    k, N = int(k), int(max_new_tokens)
    tp = gpt.checked_params(tp, tc)
    dp = gpt.checked_params(dp, dc)
    device = tp["wte"].device
    if dp["wte"].device != device:
        raise ValueError(f"draft params: expected them on {device} (as the target's), got {dp['wte'].device}")
    room = min(tc.block_size, dc.block_size)
    prompt = gpt.check_tokens(prompt, tc, name="prompt", max_len=max(room + 1 - N - k, 0), device=device)
    B, T0 = prompt.shape
    if (rng is None) == (u is None):
        raise ValueError("rng, u: expected exactly one of a numpy Generator and explicit uniforms")
    if u is None:
        if not isinstance(rng, numpy.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        u = rng.random((B, N, 2 * k + 1))
    u = sampling.check_uniforms(u, (B, N, 2 * k + 1), device)
    if N == 0:
        return prompt.clone(), torch.zeros((B, 0), dtype=torch.int64, device=device)
    with torch.inference_mode():
        return _generate(tp, tc, dp, dc, prompt, k, N, u, processors, eos, pad)


def _generate(tp, tc, dp, dc, prompt, k, N, u, processors, eos, pad):
    B, T0 = prompt.shape
    V, device = tc.vocab_size, prompt.device
    max_len = T0 + N + k - 1
    T_, D_ = _Model(tp, tc, B, max_len, processors, "target"), _Model(dp, dc, B, max_len, processors, "draft")
    # the batch holds the live rows only: row i of out, u, the caches and L is the original row rows[i]
    out = torch.zeros((B, T0 + N + k + 1), dtype=torch.int64, device=device)  # room for a whole last block
    out[:, :T0] = prompt
    result = torch.full((B, T0 + N), 0 if pad is None else pad, dtype=torch.int64, device=device)
    rows = list(range(B))
    emitted = [0] * B  # new tokens per original row, once it has ended
    # per-row bookkeeping in plain Python (B is small; numpy's per-call cost dominates there)
    L = [T0] * B  # context length per live row
    accepted = numpy.full((B, N), -1, dtype=numpy.int64)
    eos_ids = torch.as_tensor(eos, dtype=torch.int64, device=device) if eos else None
    if T0 > 1:  # both caches hold every context position but the last
        T_.feed(prompt[:, :-1], 0, last_only=True)
        D_.feed(prompt[:, :-1], 0, last_only=True)
    width, s = 1, 0  # width: context tokens the draft is fed first (2 after a fully accepted step)
    steps_w = torch.arange(k + 1, device=device)
    no_q = torch.zeros((B, 1, V), dtype=torch.float64, device=device)  # "q_{k+1}": the residual there is p_{k+1}
    u_draft, u_test, u_last = u[:, :, :k], u[:, :, k : 2 * k], u[:, :, 2 * k]  # the uniform layout, as views
    while rows:
        n = len(rows)
        # P: the one context length of all rows (always for one sequence), else None (per-row positions)
        P = L[0] if L.count(L[0]) == n else None
        if P is None:
            at = numpy.asarray(L)  # (n,)
            idx = torch.as_tensor(at, device=device)
        # draft k tokens, each from the processed q it is drawn from
        if P is not None:
            q = D_.probs(out[:, P - width : P], P - width, last_only=True)  # (n, 1, V)
        else:
            q = D_.probs(out.gather(1, idx[:, None] - width + steps_w[:width]), at - width, last_only=True)
        qs, xs = [q], []
        for i in range(k):
            xs.append(inverse_cdf(q[:, 0], u_draft[:, s, i]))  # (n,)
            if i + 1 < k:
                q = D_.probs(xs[-1][:, None], P + i if P is not None else at + i)  # (n, 1, V)
                qs.append(q)
        x = torch.stack(xs, dim=1)  # (n, k)
        q = torch.cat(qs + [no_q[:n]], dim=1)  # (n, k+1, V): q_1 .. q_k, 0
        # one target pass over the last context token and the k drafts: p_1 .. p_{k+1}
        if P is not None:
            out[:, P : P + k] = x  # the drafts in place: x_1..x_a stay, the rest is overwritten later
            p = T_.probs(out[:, P - 1 : P + k], P - 1)  # (n, k+1, V)
        else:
            p = T_.probs(torch.cat([out.gather(1, idx[:, None] - 1), x], dim=1), at - 1)  # (n, k+1, V)
        # accept x_i iff u < p_i(x_i) / q_i(x_i); a = the number accepted before the first rejection
        at_x = x[:, :, None]  # (n, k, 1): gathers from the first k positions of p and q
        ratio = p.gather(2, at_x)[..., 0] / q.gather(2, at_x)[..., 0]  # (n, k)
        a = torch.cumprod(u_test[:, s] < ratio, dim=1).sum(dim=1)  # (n,) int64
        at_a = a.view(n, 1, 1).expand(n, 1, V)
        # y from residual(p_a, q_a) = norm(max(0, p_a - q_a)), which is p_{k+1} itself when a = k (q = 0)
        y = inverse_cdf(residual(p.gather(1, at_a)[:, 0], q.gather(1, at_a)[:, 0]), u_last[:, s])  # (n,)
        block = torch.cat([x, x[:, :1]], dim=1).scatter(1, a[:, None], y[:, None])  # (n, k+1): x_1..x_a, y
        if P is not None:
            out[:, P : P + k + 1] = block
        else:  # each row at its own columns
            out.scatter_(1, idx[:, None] + steps_w, block)
        if eos_ids is None:
            a_host, first = a.tolist(), [k + 1] * n  # the step's one host synchronization
        else:  # the first eos of the block, k + 1 if none
            hit = torch.isin(block, eos_ids)  # (n, k+1)
            first_eos = torch.where(hit.any(dim=1), hit.to(torch.int64).argmax(dim=1), k + 1)
            a_host, first = torch.stack([a, first_eos]).tolist()  # the step's one host synchronization
        width, ended = 1, []
        for i in range(n):
            b = rows[i]
            accepted[b, s] = a_host[i]
            emit = min(a_host[i] + 1, T0 + N - L[i])
            if first[i] < emit:  # an eos ends the row, the tokens after it discarded
                emit = first[i] + 1
                ended.append(i)
            elif L[i] + emit == T0 + N:
                ended.append(i)
            else:
                width = 2 if a_host[i] == k else width
            L[i] += emit
        if ended:  # the ended rows leave the batch: their tokens go to the result
            for i in ended:
                emitted[rows[i]] = L[i] - T0
                result[rows[i], : L[i]] = out[i, : L[i]]
            keep = [i for i in range(n) if i not in ended]
            rows, L = [rows[i] for i in keep], [L[i] for i in keep]
            if rows:
                live = torch.as_tensor(keep, device=device)
                out = out[live]
                u_draft, u_test, u_last = u_draft[live], u_test[live], u_last[live]
                T_.keep(live)
                D_.keep(live)
        s += 1
    T_.check()
    D_.check()
    return result[:, : T0 + max(emitted)], torch.as_tensor(accepted[:, :s], device=device)
