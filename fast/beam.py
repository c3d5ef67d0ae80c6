"""Beam search over fast.gpt: the twin of reference/beam.py (read that file for the algorithm).

`gpt_beam_search` (also reachable as fast.gpt.beam_search) takes the arguments of
reference.gpt.beam_search and returns the same hypotheses, in the same order, with the
same ties broken the same way. How it differs:

- All B prompts and their beam_width beams run as one batch of B * W rows
  through fast.gpt's preallocated KV cache. The prompt is prefilled once per
  prompt (B rows), then its keys and values are copied to that prompt's W rows.
- After each step the surviving beams may descend from any beam of their prompt:
  the cache rows are gathered (`index_select` on the batch axis) into a second
  preallocated cache, and the two swap roles -- no prefix is ever recomputed.
  In a padded batch the cache's key mask (`KVCache.mask`, the prompt's real tokens
  then ones) is gathered with the keys and values; positions follow from it.
- Per-prompt state lives in (B, W) tensors. A beam that does not exist (fewer
  than W candidates, or a prompt that has stopped) has raw score -inf, is fed
  token 0 (its logits are ignored) and is never chosen.
- The processors run once per step on the rows of the beams that exist, all prompts
  at once (a processor acts row by row), on the log-probs, with the beams' ids
  (T0 + n each): the padded prompt, then the beam's tokens.
- Ranking is a stable descending sort of the (B, W * V) candidate scores, so ties
  go to the smaller flat index, as in the reference. Scores accumulate in
  float64 whatever the params' dtype (log-softmax and processors in float32 for
  float32 and bfloat16 params).
"""

from __future__ import annotations

import torch

from chainrule.fast import gpt as fast_gpt
from chainrule.fast.generation import ends_with
from chainrule.fast.gpt import KVCache
from chainrule.reference.beam import BeamSearchResult, as_generate_output, check_arguments
from chainrule.reference.sampling import as_processor

__all__ = ["BeamSearchResult", "gpt_beam_search", "as_generate_output"]


def _gather_cache(src: KVCache, dst: KVCache, rows: torch.Tensor) -> KVCache:
    """dst[:, i] = src[:, rows[i]] on the filled positions (keys, values and the key mask of a
    padded batch); returns dst with src's length."""
    n = src.length
    dst.k[:, :, :, :n].copy_(src.k[:, :, :, :n].index_select(1, rows))
    dst.v[:, :, :, :n].copy_(src.v[:, :, :, :n].index_select(1, rows))
    if src.mask is not None:
        if dst.mask is None:
            dst.mask = torch.empty((dst.batch, dst.max_len), dtype=torch.bool, device=dst.k.device)
        dst.mask[:, :n].copy_(src.mask[:, :n].index_select(0, rows))
    dst.length = n
    return dst


def _processed(logp: torch.Tensor, process_list, ids: torch.Tensor) -> torch.Tensor:
    """The processors in order on the log-probs (rows, V), with ids (rows, t); ValueError naming them
    unless they return floating scores of the same shape without NaN or +inf."""
    shape = tuple(logp.shape)
    for process in process_list:
        logp = process(logp, ids)
        if not (isinstance(logp, torch.Tensor) and logp.is_floating_point() and tuple(logp.shape) == shape):
            got = f"{logp.dtype} {tuple(logp.shape)}" if isinstance(logp, torch.Tensor) else type(logp)
            raise ValueError(f"processors: expected float log-probs of shape {shape}, got {got}")
        if bool(torch.isnan(logp).any()) or bool((logp == float("inf")).any()):
            raise ValueError("processors: log-probs contain NaN or +inf")
    return logp


def gpt_beam_search(params: dict, config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                    length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1, pad=None,
                    attention_mask=None, processors=(), stop_sequences=()) -> BeamSearchResult:  # fmt: skip
    """reference.gpt.beam_search through the KV cache. Returns a BeamSearchResult of
    torch tensors on the params' device: sequences (B, R, T0 + L) int64, scores and
    log_probs (B, R) float64, lengths (B, R) int64."""
    eos, stops = check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                                 num_return_sequences, pad, config.vocab_size, stop_sequences)  # fmt: skip
    params = fast_gpt.checked_params(params, config)
    wte = params["wte"]
    device = wte.device
    N, W, R, V = int(max_new_tokens), int(beam_width), int(num_return_sequences), config.vocab_size
    lp = float(length_penalty)
    max_len = config.block_size + 1 - max(N, 1)
    prompt = fast_gpt.check_tokens(prompt, config, name="prompt", max_len=max_len, device=device)
    B, T0 = prompt.shape
    mask = None if attention_mask is None else fast_gpt.check_attention_mask(attention_mask, prompt.shape, device)
    process_list = [as_processor(p) for p in processors]
    pad = pad if pad is not None else (eos[0] if eos else 0)
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
    # the candidates that can matter: per beam at most one per eos id and stop sequence finishes
    # (reference docstring, step 4), so the first K hold the W best that do not
    K = min(max(2, 1 + len(eos) + len(stops)) * W, W * V)
    eos_ids = torch.tensor(eos, **i64)
    batch_offset = torch.arange(B, **i64)[:, None] * W  # (B, 1): row b's beams are rows b*W .. b*W+W-1
    beam_prompts = prompt.repeat_interleave(W, dim=0)  # (B*W, T0): the processors' ids start with it
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
        logits, first = fast_gpt.prefill(params, config, first, prompt, mask)  # (B, T0, V)
        logits = logits[:, -1] if mask is None else logits[torch.arange(B, device=device), fast_gpt.last_real(mask)]
        logits = logits.repeat_interleave(W, dim=0)  # (B*W, V)
        if N > 1:  # two caches of B*W rows that swap roles at each reorder; the prompt's copied W times
            caches = [fast_gpt.init_cache(params, config, B * W, max_len) for _ in range(2)]
            cache = _gather_cache(first, caches[0], torch.arange(B, **i64).repeat_interleave(W))
        del first
        ranks = torch.arange(K, device=device)

        for n in range(N):
            length = n + 1
            last = length == N
            logp = torch.log_softmax(logits.to(logp_dtype), dim=-1)  # (B*W, V)
            if process_list:  # on the beams that exist (another row's fake ids might make a processor refuse it)
                ids = torch.cat([beam_prompts, run_tokens.view(B * W, N)[:, :n]], dim=1)  # (B*W, T0+n)
                live = (run_lp.view(-1) > neg_inf).nonzero()[:, 0]  # (B',)
                if live.numel() == B * W:
                    logp = _processed(logp, process_list, ids)
                else:
                    logp = logp.clone()
                    logp[live] = _processed(logp[live], process_list, ids[live])
            logp = logp.to(torch.float64).view(B, W, V)
            totals = (run_lp[:, :, None] + logp).view(B, W * V)  # (B, W*V), index h*V + v
            top, flat = torch.sort(totals, dim=1, descending=True, stable=True)
            top, flat = top[:, :K], flat[:, :K]  # (B, K)
            beam, token = flat // V, flat % V
            exists = top > neg_inf
            # the candidates' token rows: their beam's tokens, then the new token
            cand_tokens = torch.gather(run_tokens, 1, beam[:, :, None].expand(B, K, N)).clone()  # (B, K, N)
            cand_tokens[:, :, n] = token
            if last:
                done = torch.ones_like(exists)
            else:
                done = torch.isin(token, eos_ids)
                if stops:
                    cand_ids = torch.cat([prompt[:, None, :].expand(B, K, T0), cand_tokens[:, :, :length]], dim=2)
                    done |= ends_with(cand_ids.reshape(B * K, T0 + length), stops).view(B, K)

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
