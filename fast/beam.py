"""Beam search over fast.gpt: the twin of reference/beam.py (read that file for the algorithm).

`gpt_beam_search` takes the arguments of reference.beam.gpt_beam_search and returns
the same hypotheses, in the same order, with the same ties broken the same way.
How it differs:

- All B prompts and their beam_width beams run as one batch of B * W rows
  through fast.gpt's preallocated KV cache. The prompt is prefilled once per
  prompt (B rows), then its keys and values are copied to that prompt's W rows.
- After each step the surviving beams may descend from any beam of their prompt:
  the cache rows are gathered (`index_select` on the batch axis) into a second
  preallocated cache, and the two swap roles -- no prefix is ever recomputed.
- Per-prompt state lives in (B, W) tensors. A beam that does not exist (fewer
  than W candidates, or a prompt that has stopped) has raw score -inf, is fed
  token 0 (its logits are ignored) and is never chosen.
- Ranking is a stable descending sort of the (B, W * V) candidate scores, so ties
  go to the smaller flat index, as in the reference. Scores accumulate in
  float64 whatever the params' dtype (log-softmax in float32 for float32 and
  bfloat16 params).
"""

from __future__ import annotations

import torch

from chainrule.fast import gpt as fast_gpt
from chainrule.fast.gpt import KVCache
from chainrule.reference.beam import BeamSearchResult, check_arguments

__all__ = ["BeamSearchResult", "gpt_beam_search"]


def _gather_cache(src: KVCache, dst: KVCache, rows: torch.Tensor) -> KVCache:
    """dst[:, i] = src[:, rows[i]] on the filled positions; returns dst with src's length."""
    n = src.length
    dst.k[:, :, :, :n].copy_(src.k[:, :, :, :n].index_select(1, rows))
    dst.v[:, :, :, :n].copy_(src.v[:, :, :, :n].index_select(1, rows))
    dst.length = n
    return dst


def gpt_beam_search(params: dict, config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                    length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1,
                    pad=None) -> BeamSearchResult:  # fmt: skip
    """reference.beam.gpt_beam_search through the KV cache. Returns a BeamSearchResult of
    torch tensors on the params' device: sequences (B, R, T0 + L) int64, scores and
    log_probs (B, R) float64, lengths (B, R) int64."""
    check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                    num_return_sequences, pad, vocab_size=config.vocab_size)  # fmt: skip
    params = fast_gpt.checked_params(params, config)
    wte = params["wte"]
    device = wte.device
    N, W, R, V = int(max_new_tokens), int(beam_width), int(num_return_sequences), config.vocab_size
    lp = float(length_penalty)
    max_len = config.block_size + 1 - max(N, 1)
    prompt = fast_gpt.check_tokens(prompt, config, name="prompt", max_len=max_len, device=device)
    B, T0 = prompt.shape
    pad = pad if pad is not None else (eos if eos is not None else 0)
    f64 = dict(dtype=torch.float64, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    neg_inf = float("-inf")

    if N == 0:
        sequences = torch.full((B, R, T0), pad, **i64)
        sequences[:] = prompt[:, None, :]
        scores = torch.full((B, R), neg_inf, **f64)
        scores[:, 0] = 0.0
        return BeamSearchResult(sequences, scores, scores.clone(), torch.zeros((B, R), **i64))

    logp_dtype = torch.float64 if wte.dtype == torch.float64 else torch.float32
    K = min(2 * W, W * V)  # the candidates that can matter (reference docstring, step 4)
    batch_offset = torch.arange(B, **i64)[:, None] * W  # (B, 1): row b's beams are rows b*W .. b*W+W-1
    with torch.inference_mode():
        # running beams: generated tokens, raw scores (-inf: no such beam)
        run_tokens = torch.zeros((B, W, N), **i64)
        run_lp = torch.full((B, W), neg_inf, **f64)
        run_lp[:, 0] = 0.0
        # finished hypotheses, best first
        fin_tokens = torch.zeros((B, W, N), **i64)
        fin_lp = torch.full((B, W), neg_inf, **f64)
        fin_score = torch.full((B, W), neg_inf, **f64)
        fin_len = torch.zeros((B, W), **i64)
        active = torch.ones(B, dtype=torch.bool, device=device)

        max_len = T0 + N - 1
        first = fast_gpt.init_cache(params, config, B, max_len)
        logits, first = fast_gpt.prefill(params, config, first, prompt)
        logits = logits[:, -1].repeat_interleave(W, dim=0)  # (B*W, V)
        if N > 1:  # two caches of B*W rows that swap roles at each reorder; the prompt's copied W times
            caches = [fast_gpt.init_cache(params, config, B * W, max_len) for _ in range(2)]
            cache = _gather_cache(first, caches[0], torch.arange(B, **i64).repeat_interleave(W))
        del first
        ranks = torch.arange(K, device=device)

        for n in range(N):
            length = n + 1
            last = length == N
            logp = torch.log_softmax(logits.to(logp_dtype), dim=-1).to(torch.float64).view(B, W, V)
            totals = (run_lp[:, :, None] + logp).view(B, W * V)  # (B, W*V), index h*V + v
            top, flat = torch.sort(totals, dim=1, descending=True, stable=True)
            top, flat = top[:, :K], flat[:, :K]  # (B, K)
            beam, token = flat // V, flat % V
            exists = top > neg_inf
            if last:
                done = torch.ones_like(exists)
            else:
                done = token == eos if eos is not None else torch.zeros_like(exists)
            # the candidates' token rows: their beam's tokens, then the new token
            cand_tokens = torch.gather(run_tokens, 1, beam[:, :, None].expand(B, K, N)).clone()  # (B, K, N)
            cand_tokens[:, :, n] = token

            # finished: done candidates ranked among the first W, merged with the old (old first on ties)
            finishing = exists & done & (ranks < W)[None, :]
            new_score = torch.where(finishing, top / float(length) ** lp, neg_inf)
            merged_score = torch.cat([fin_score, new_score], dim=1)  # (B, W+K)
            merged_score, pick = torch.sort(merged_score, dim=1, descending=True, stable=True)
            pick = pick[:, :W]
            fin_score = merged_score[:, :W]
            fin_lp = torch.gather(torch.cat([fin_lp, torch.where(finishing, top, neg_inf)], 1), 1, pick)
            new_len = torch.full((B, K), length, **i64)
            fin_len = torch.gather(torch.cat([fin_len, new_len], 1), 1, pick)
            fin_tokens = torch.gather(torch.cat([fin_tokens, cand_tokens], 1), 1, pick[:, :, None].expand(B, W, N))

            # running: the first W candidates that do not finish
            keep = exists & ~done
            order = torch.sort((~keep).to(torch.int8), dim=1, stable=True)[1][:, :W]  # (B, W) kept ones first
            kept = torch.gather(keep, 1, order)
            run_lp = torch.where(kept, torch.gather(top, 1, order), neg_inf)
            run_tokens = torch.gather(cand_tokens, 1, order[:, :, None].expand(B, W, N))
            parent = torch.gather(beam, 1, order)  # (B, W)

            # stopping, per prompt
            full = fin_score[:, -1] > neg_inf
            best_length = N if (early_stopping == "never" and lp > 0) else length
            beaten = run_lp[:, 0] / float(best_length) ** lp <= fin_score[:, -1]
            stop = ~kept[:, 0] | (full & (early_stopping is True)) | (full & beaten)
            active = active & ~stop
            run_lp = torch.where(active[:, None], run_lp, neg_inf)
            if last or not bool(active.any()):
                break

            # the next step: reorder the cache to the new beams' parents, feed their tokens
            rows = torch.where(kept, parent, 0) + batch_offset  # (B, W) source rows
            cache = _gather_cache(cache, caches[1] if cache is caches[0] else caches[0], rows.view(-1))
            feed = torch.where(kept, token.gather(1, order), 0).view(-1)  # (B*W,)
            logits, cache = fast_gpt.step(params, config, cache, feed)

        L = int(fin_len[:, :R].max())
        sequences = torch.full((B, R, T0 + L), pad, **i64)
        sequences[:, :, :T0] = prompt[:, None, :]
        gen = fin_tokens[:, :R, :L]
        positions = torch.arange(L, device=device)
        sequences[:, :, T0:] = torch.where(positions < fin_len[:, :R, None], gen, pad)
    return BeamSearchResult(sequences=sequences, scores=fin_score[:, :R].clone(), log_probs=fin_lp[:, :R].clone(),
                            lengths=fin_len[:, :R].clone())  # fmt: skip
