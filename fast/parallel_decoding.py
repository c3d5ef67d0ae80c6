"""Jacobi and lookahead decoding, fast: the twin of reference/parallel_decoding.py in torch.

The algorithms, their exactness proofs and the step layout (which token sits at which
position and attends to which) are documented in reference/parallel_decoding.py
(Santilli et al. 2023; Fu et al. 2024). Read that file first; this one only says how
the same tokens are computed fast:

- The model is fast.gpt's network (its linear kernels, fused SDPA attention), run here
  on a multi-token step with explicit position ids and an explicit attention mask
  (`masked_run`): fast.gpt's own functions only know the causal mask.
- One preallocated KV cache (fast.gpt.KVCache) with room for the prompt, the output and
  one step: a step writes its T tokens' keys/values in place at slots [P, P+T); the
  accepted ones are then moved to [P, P+a) and the length advanced by a -- no copy of
  the cache, no rollback. Slots are not positions: positions enter through wpe.
- The step's attention mask is built vectorized from each token's (level, column) or
  (candidate, index) coordinates, not entry by entry as the reference does: the diff
  tests compare the two constructions through the tokens they produce.
- One host sync per step: the argmax of every row (greedy), or the float64
  probabilities of the rows verification reads (sampling); the n-gram pool and the
  verification rules are the reference's own (`add_ngrams`, `verify_greedy`,
  `verify_point_mass`), plain Python on a few integers.
- End of sequence (eos_token_id, pad_token_id): the reference's rule and the reference's
  `cut_at_eos` on the host copy of the step's tokens; the loop stops at the first eos
  (nothing more is computed), and a Jacobi block stops iterating once an eos is final.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chainrule.fast import gpt as fgpt
from chainrule.reference import parallel_decoding as _ref
from chainrule.reference.speculative import check_eos, cut_at_eos
from chainrule.reference.parallel_decoding import (DecodeStats, add_ngrams, initial_guess, initial_window, prompt_pool,
                                         verify_greedy, verify_point_mass)  # fmt: skip

__all__ = ["DecodeStats", "jacobi_decode", "lookahead_decode", "lookahead_mask", "masked_run", "verify_greedy",
           "verify_point_mass", "add_ngrams"]  # fmt: skip


# ----------------------------------------------------------------------------- one forward pass, explicit mask


def masked_run(net, cache, tokens, positions, mask):
    """The network on T new tokens after cache.length slots -> logits (T, V) in the params' dtype.

    tokens, positions: (T,) int64 tensors; mask: (T, T) bool tensor (True: may attend), the
    cache always visible. Keys/values land in slots [P, P+T); cache.length is unchanged
    (`commit` keeps the accepted ones).
    """
    P, T = cache.length, tokens.shape[0]
    full = torch.cat([torch.ones((T, P), dtype=torch.bool, device=mask.device), mask], dim=1)  # (T, P+T)
    x = (F.embedding(tokens, net.wte) + net.wpe[positions])[None]  # (1, T, C)
    for layer, (k_cache, v_cache) in zip(net.layers, cache.layers):
        x = fgpt.network_block(net.config, layer, x, k_cache, v_cache, P, "sdpa", full)
    C = x.shape[-1]
    x = F.layer_norm(x, (C,), *net.ln_f, net.config.layer_norm_eps)
    return net.head(x.reshape(T, C))  # (T, V)


def commit(cache, keep: list) -> None:
    """Move the step's slots P + keep to [P, P + len(keep)) and advance the length (in place)."""
    P = cache.length
    idx = torch.as_tensor([P + r for r in keep], dtype=torch.long, device=cache.k.device)
    for store in (cache.k, cache.v):  # (L, 1, nh, max_len, hs)
        store[:, :, :, P : P + len(keep)] = store.index_select(3, idx)
    cache.length = P + len(keep)


# ----------------------------------------------------------------------------- the step layout, vectorized


def lookahead_mask(L: int, W: int, n_cand: int, n: int, device) -> torch.Tensor:
    """The (T, T) mask of `reference.parallel_decoding.lookahead_layout`, from coordinates:
    token r has a kind (x_t, lookahead, candidate), a level or candidate number, and a column."""
    kind = torch.tensor([0] + [1] * (L * W) + [2] * (n_cand * n), device=device)  # (T,)
    group = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(L).repeat_interleave(W),
                       torch.arange(n_cand).repeat_interleave(n)]).to(device)  # level or candidate; (T,)
    col = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(W).repeat(L),
                     torch.arange(n).repeat(n_cand)]).to(device)  # column or token index; (T,)
    rk, ck = kind[:, None], kind[None, :]
    rg, cg = group[:, None], group[None, :]
    rc, cc = col[:, None], col[None, :]
    lookahead = (rk == 1) & (ck == 1) & (((cg == 0) & (cc <= rc)) | ((cg >= 1) & (cg <= rg) & (cc == rc)))
    verification = (rk == 2) & (ck == 2) & (cg == rg) & (cc <= rc)
    return (ck == 0) | lookahead | verification  # every token sees x_t


# ----------------------------------------------------------------------------- decoders


def _setup(params, config, prompt, max_new_tokens, width):
    """Checked params, the prompt as a list, the networks (one-row and multi-row kernels) and a
    cache holding prompt[:-1] with room for the output and a step of `width` tokens."""
    params = fgpt.checked_params(params, config)
    prompt = _ref.check_prompt(prompt, config, max_new_tokens)
    wte = params["wte"]
    nets = {rows: fgpt.network(params, config, fgpt.kernel_mode(params, rows, False)) for rows in (1, 2)}
    cache = fgpt.empty_cache(config, 1, len(prompt) + max_new_tokens + width, wte.dtype, wte.device, zeros=True)
    if len(prompt) > 1:
        head = torch.as_tensor(prompt[None, :-1], device=wte.device)
        fgpt.run_network(nets[2 if len(prompt) > 2 else 1], head, cache, "sdpa", last_only=True)
    return params, [int(t) for t in prompt], nets, cache


def jacobi_decode(params: dict, config, prompt, max_new_tokens: int, m: int, *, rng=None, eos_token_id=None,
                  pad_token_id=None):  # fmt: skip
    """Jacobi decoding (reference.parallel_decoding.jacobi_decode, same arguments and rules)
    -> (tokens (1, T0+n) int64 tensor, DecodeStats)."""
    m = _ref._check_int(m, "m", 1)
    with torch.inference_mode():
        params, out, nets, cache = _setup(params, config, prompt, max_new_tokens, m)
        eos, _ = check_eos(eos_token_id, pad_token_id, config.vocab_size)
        device = params["wte"].device
        T0, iterations, blocks, ended = len(out), [], [], False
        while len(out) < T0 + max_new_tokens and not ended:
            b = min(m, T0 + max_new_tokens - len(out))
            t = len(out) - 1
            guess = initial_guess(out[-1], b, config.vocab_size, rng)
            positions = torch.arange(t, t + b, device=device)
            causal = torch.ones((b, b), dtype=torch.bool, device=device).tril()
            net = nets[1 if b == 1 else 2]
            for j in range(1, b + 1):
                tokens = torch.as_tensor([out[-1]] + guess[:-1], device=device)
                new = masked_run(net, cache, tokens, positions, causal).argmax(dim=-1).tolist()
                converged = new == guess
                guess = new
                if converged or j == b or cut_at_eos(guess[:j], eos)[1]:  # y^(j)_{<j} is final
                    break
            block, ended = cut_at_eos(guess, eos)
            iterations.append(j)
            blocks.append(len(block))
            if not ended:
                commit(cache, list(range(b)))
            out += block
    tokens = torch.as_tensor([out], dtype=torch.int64, device=params["wte"].device)
    return tokens, DecodeStats(sum(iterations), tuple(blocks), tuple(iterations))


def lookahead_decode(params: dict, config, prompt, max_new_tokens: int, *, window: int = 4, ngram: int = 3,
                     candidates: int = 4, u=None, prompt_ngrams: bool = False, rng=None, eos_token_id=None,
                     pad_token_id=None):  # fmt: skip
    """Lookahead decoding (reference.parallel_decoding.lookahead_decode, same arguments and rules)
    -> (tokens (1, T0+n) int64 tensor on the params' device, DecodeStats)."""
    W, N, G, u = _ref.check_lookahead_args(window, ngram, candidates, u, max_new_tokens)
    with torch.inference_mode():
        params, out, nets, cache = _setup(params, config, prompt, max_new_tokens, 1 + (N - 1) * (W + G))
        eos, _ = check_eos(eos_token_id, pad_token_id, config.vocab_size)
        device = params["wte"].device
        T0 = len(out)
        pool = prompt_pool(out, N, G) if prompt_ngrams and G else {}
        levels = [initial_window(out, W, rng)]
        per_step, masks = [], {}
        while len(out) < T0 + max_new_tokens:
            left = T0 + max_new_tokens - len(out)
            t, last = len(out) - 1, out[-1]
            run_window = t + W + N - 2 <= config.block_size - 1
            cands = [c[: min(N - 1, left - 1)] for c in pool.get(last, ())][:G] if left > 1 else []
            cands = [c for c in cands if c]
            L, n = (len(levels) if run_window else 0), (len(cands[0]) if cands else 0)
            key = (L, len(cands), n)
            if key not in masks:
                masks[key] = lookahead_mask(L, W, len(cands), n, device)
            window_tokens = [v for level in levels[:L] for v in level]
            tokens = torch.as_tensor([last] + window_tokens + [v for c in cands for v in c], device=device)
            window_positions = [t + 1 + j + l for l in range(L) for j in range(W)]
            positions = torch.as_tensor([t] + window_positions + [t + 1 + i for _ in cands for i in range(n)],
                                        device=device)  # fmt: skip
            logits = masked_run(nets[2 if len(tokens) > 1 else 1], cache, tokens, positions, masks[key])  # (T, V)

            def row(g, i):
                return 0 if i == 0 else 1 + L * W + g * n + i - 1

            choice = logits.argmax(dim=-1).tolist()  # the one host sync of a greedy step
            if u is None:
                g, a, emitted = verify_greedy(lambda g, i: choice[row(g, i)], cands)
            else:
                probs = torch.softmax(logits.double(), dim=-1).cpu().numpy()  # (T, V) float64
                n_out = len(out) - T0
                g, a, emitted = verify_point_mass(lambda g, i: probs[row(g, i)], cands, u[n_out : n_out + n + 1])
            emitted, ended = cut_at_eos(emitted, eos)
            if ended:  # the sequence ends: no cache, window or pool to update
                out += emitted
                per_step.append(len(emitted))
                break
            commit(cache, [0] + [row(g, i + 1) for i in range(a)])
            if run_window:
                new = tuple(choice[1 + (L - 1) * W : 1 + L * W])
                if L == N - 1:
                    grams = [tuple(levels[l][j] for l in range(L)) + (new[j],) for j in range(W)]
                    pool = add_ngrams(pool, grams, G) if G else pool
                    levels = levels[1:] + [new]
                else:
                    levels = levels + [new]
            out += emitted
            per_step.append(len(emitted))
    tokens = torch.as_tensor([out], dtype=torch.int64, device=device)
    return tokens, DecodeStats(len(per_step), tuple(per_step))
