"""Beam search: the highest-scoring continuations kept `beam_width` at a time.

Scoring is that of HF transformers' beam search (`_beam_search`, v5): a finished
hypothesis y = (y_1..y_L) continuing the prompt x scores

    score(y) = sum_{t=1}^{L} log p(y_t | x, y_<t)  /  L ** length_penalty

where L counts the *generated* tokens only (the eos that ends y included, the
prompt excluded). A hypothesis is finished when it ends with `eos` or reaches
L = max_new_tokens. length_penalty > 0 favours longer hypotheses, < 0 shorter;
0 ranks by the plain sum of log-probabilities. (Beam search: Lowerre 1976; for
neural sequence models Graves 2012, Sutskever et al. 2014. The division by
L ** alpha is HF's simplification of Wu et al. 2016's ((5 + L) / 6) ** alpha.)

One step, for each prompt:

  1. every running beam h (raw score s_h = sum of its log-probs) is extended by
     every token v: candidate score s_h + log p(v | x, h). Candidates of score
     -inf (probability 0) do not exist.
  2. the candidates are ranked by score, best first; ties go to the smaller
     flat index  h * V + v  (the better-ranked beam, then the smaller token id).
  3. a candidate that finishes (its token is eos, or this is the last step) and
     ranks among the first `beam_width` becomes a finished hypothesis, scored
     s / L ** length_penalty; the finished list keeps the best `beam_width`
     (ties: the one finished earlier first). A finishing candidate ranked lower
     is dropped, as in HF (it stands behind beam_width better candidates).
  4. the next running beams are the first `beam_width` candidates that do not
     finish. (HF keeps the top 2 * beam_width candidates to be sure to find
     beam_width that do not end in eos; taking them from all candidates is the
     same: at most one candidate per beam is an eos.)
  5. stopping, per prompt, once the finished list is full (beam_width hypotheses):
       early_stopping=True     stop at once;
       early_stopping=False    stop when the best running beam, scored at its
                               current length, cannot beat the worst finished
                               one: s_best / n ** lp <= worst (HF's heuristic:
                               with length_penalty > 0 this may stop too early);
       early_stopping="never"  stop only when no running beam can beat the worst
                               finished one whatever it generates: the bound
                               uses L = max_new_tokens when length_penalty > 0,
                               the current length n otherwise. With normalized
                               log-probs (every log p <= 0) the bound is exact,
                               so this variant returns what a search that never
                               stops early would.
     A prompt also stops when no running beam is left; at the latest after
     max_new_tokens steps.

Deliberate differences from HF (both only where HF returns filler):
  - HF starts with beam_width copies of the prompt, all but one at score -1e9,
    and keeps such filler beams whenever fewer than beam_width real ones exist
    (a tiny vocabulary, few steps); its scores live in float32. Here a beam or a
    candidate of probability 0 simply does not exist, scores are float64, and
    when fewer than num_return_sequences hypotheses exist the missing ones come
    back with score -inf, log_prob -inf, length 0 (the prompt then `pad`).
  - HF's `topk` breaks ties in no documented order; here they are broken as in 2.
With at least beam_width real candidates at every step (vocab_size >
2 * beam_width suffices) and no ties, the hypotheses are HF's.

The spec needs only a callable: `step_log_probs(prefixes)` with prefixes (N, t)
int64, every row the prompt followed by a beam's tokens, returning log-probs
(N, V). `gpt_step_log_probs` adapts reference.gpt; `gpt_beam_search` is the
search on a GPT (fast.beam has the same function with a reordered KV cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from chainrule.reference import gpt
from chainrule.reference import nn
from chainrule.reference.xp import namespace

EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class BeamSearchResult:
    """The best hypotheses of each prompt, best first.

    sequences  (B, R, T0 + L) int64   the prompt then the generated tokens, `pad` after a
                                      hypothesis' end; L = the longest length returned
    scores     (B, R) float64         log_probs / lengths ** length_penalty, descending per row
    log_probs  (B, R) float64         sum of the log-probs of the generated tokens
    lengths    (B, R) int64           number of generated tokens (an ending eos included)

    R = num_return_sequences. A slot no hypothesis fills has score and log_prob -inf, length 0.
    (HF's `sequences` / `sequences_scores` are sequences.reshape(B * R, -1) / scores.reshape(-1).)
    """

    sequences: object
    scores: object
    log_probs: object
    lengths: object


@dataclass(frozen=True)
class _Hypothesis:
    tokens: tuple  # generated tokens only
    log_prob: float  # their summed log-probs
    score: float = 0.0  # log_prob / len(tokens) ** length_penalty (finished hypotheses)


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                    num_return_sequences, pad, vocab_size=None):  # fmt: skip
    """ValueError naming the first bad argument (shared by reference and fast)."""
    ndim, kind = getattr(prompt, "ndim", None), getattr(getattr(prompt, "dtype", None), "kind", None)
    if type(prompt).__module__.split(".")[0] == "torch":  # fast's prompts: torch has no dtype.kind
        dtype = prompt.dtype
        kind = "f" if (dtype.is_floating_point or dtype.is_complex or str(dtype) == "torch.bool") else "i"
    if kind not in ("i", "u"):
        raise ValueError(f"prompt: expected an integer array, got {getattr(prompt, 'dtype', type(prompt))}")
    if ndim != 2 or prompt.shape[1] < 1 or prompt.shape[0] < 1:
        raise ValueError(f"prompt: expected shape (B, T0) with B, T0 >= 1, got {tuple(getattr(prompt, 'shape', ()))}")
    if not _is_int(beam_width) or beam_width < 1:
        raise ValueError(f"beam_width: expected an int >= 1, got {beam_width!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if eos is not None and (not _is_int(eos) or eos < 0 or (vocab_size is not None and eos >= vocab_size)):
        want = "a non-negative int" if vocab_size is None else f"an int in [0, {vocab_size})"
        raise ValueError(f"eos: expected None or {want}, got {eos!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float, numpy.floating, numpy.integer)) \
            or not math.isfinite(length_penalty):  # fmt: skip
        raise ValueError(f"length_penalty: expected a finite float, got {length_penalty!r}")
    if not any(early_stopping is e or (isinstance(e, str) and early_stopping == e) for e in EARLY_STOPPING):
        raise ValueError(f"early_stopping: expected True, False or 'never', got {early_stopping!r}")
    if not _is_int(num_return_sequences) or not 1 <= num_return_sequences <= beam_width:
        raise ValueError(
            f"num_return_sequences: expected an int in [1, beam_width={beam_width}], got {num_return_sequences!r}"
        )
    if pad is not None and (not _is_int(pad) or pad < 0 or (vocab_size is not None and pad >= vocab_size)):
        want = "a non-negative int" if vocab_size is None else f"an int in [0, {vocab_size})"
        raise ValueError(f"pad: expected None or {want}, got {pad!r}")


def _check_log_probs(logp, rows: int, vocab_size):
    """ValueError unless the callable returned float (rows, V) log-probs without NaN or +inf."""
    shape = tuple(getattr(logp, "shape", ()))
    if getattr(getattr(logp, "dtype", None), "kind", None) != "f" or len(shape) != 2 or shape[0] != rows:
        raise ValueError(f"step_log_probs: expected float log-probs of shape ({rows}, V), got "
                         f"{getattr(logp, 'dtype', type(logp))} {shape}")  # fmt: skip
    if vocab_size is not None and shape[1] != vocab_size:
        raise ValueError(f"step_log_probs: expected V={vocab_size} (as before), got {shape[1]}")
    xp = namespace(logp)
    if bool(xp.any(xp.isnan(logp))) or bool(xp.any(logp == xp.inf)):
        raise ValueError("step_log_probs: log-probs contain NaN or +inf")


def _search_one(step_log_probs, prompt_row, W, N, eos, lp, early_stopping, state):
    """Beam search for one prompt (T0,) -> finished hypotheses, best first (at most W)."""
    xp = namespace(prompt_row)
    running = [_Hypothesis(tokens=(), log_prob=0.0)]
    finished: list[_Hypothesis] = []
    for n in range(N):  # n tokens generated so far
        prefixes = xp.stack([xp.concatenate([prompt_row, xp.asarray(h.tokens, dtype=xp.int64)]) for h in running])
        logp = step_log_probs(prefixes)  # (R, V)
        _check_log_probs(logp, len(running), state.get("V"))
        V = state["V"] = logp.shape[1]
        if eos is not None and eos >= V:
            raise ValueError(f"eos: expected an int in [0, {V}), got {eos!r}")
        totals = xp.asarray([h.log_prob for h in running], dtype=xp.float64)[:, None] + logp  # (R, V)
        flat = totals.reshape(-1)  # (R * V,) candidate h * V + v
        # rank: descending score, ties to the smaller flat index (lexsort: the last key is the primary one)
        order = xp.lexsort(xp.stack([xp.arange(flat.shape[0]), -flat]))
        ranked = order[xp.isfinite(flat[order])].tolist()  # candidates of score -inf do not exist
        score_of = flat.tolist()
        length = n + 1
        divisor = float(length) ** lp
        new_running = []
        for rank, i in enumerate(ranked):
            beam, token = divmod(i, V)
            hyp = _Hypothesis(tokens=running[beam].tokens + (token,), log_prob=score_of[i])
            if token == eos or length == N:  # finishes
                if rank < W:
                    finished.append(_Hypothesis(hyp.tokens, hyp.log_prob, hyp.log_prob / divisor))
            elif len(new_running) < W:
                new_running.append(hyp)
            if rank + 1 >= W and len(new_running) == W:
                break
        finished = sorted(finished, key=lambda h: -h.score)[:W]  # stable: earlier-finished first on ties
        running = new_running
        if not running:
            break
        if len(finished) == W:  # full: may we stop?
            if early_stopping is True:
                break
            best_length = N if (early_stopping == "never" and lp > 0) else length
            if running[0].log_prob / float(best_length) ** lp <= finished[-1].score:
                break
    return finished


def beam_search(step_log_probs, prompt, beam_width: int, max_new_tokens: int, *, eos=None, length_penalty=1.0,
                early_stopping=False, num_return_sequences: int = 1, pad=None) -> BeamSearchResult:  # fmt: skip
    """Beam search continuing each row of prompt (B, T0) (module docstring: the algorithm).

    step_log_probs: callable prefixes (N, t) int64 -> log-probs (N, V) float, row i the
    next-token log-probs after prefixes[i] (the prompt row followed by a beam's tokens).
    beam_width >= 1; max_new_tokens >= 0; eos: the ending token id or None (hypotheses
    then all have max_new_tokens tokens); length_penalty finite; early_stopping True,
    False or "never" (HF's meanings); 1 <= num_return_sequences <= beam_width;
    pad: the id written after a hypothesis' end (default eos, or 0 without eos).
    Returns a BeamSearchResult. max_new_tokens == 0 gives each prompt one empty
    hypothesis of score 0.
    """
    check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                    num_return_sequences, pad)  # fmt: skip
    xp = namespace(prompt)
    prompt = xp.asarray(prompt).astype(xp.int64)
    B, T0 = prompt.shape
    R = num_return_sequences
    pad = pad if pad is not None else (eos if eos is not None else 0)
    state = {}  # V, once the callable has told it
    rows = []
    for b in range(B):
        if max_new_tokens == 0:
            rows.append([_Hypothesis(tokens=(), log_prob=0.0, score=0.0)])
        else:
            rows.append(_search_one(step_log_probs, prompt[b], beam_width, max_new_tokens, eos,
                                    float(length_penalty), early_stopping, state))  # fmt: skip
    if pad is not None and "V" in state and pad >= state["V"]:
        raise ValueError(f"pad: expected an int in [0, {state['V']}), got {pad!r}")
    L = max(len(h.tokens) for hyps in rows for h in hyps[:R])
    sequences = xp.full((B, R, T0 + L), pad, dtype=xp.int64)
    sequences[:, :, :T0] = prompt[:, None, :]
    scores = xp.full((B, R), -xp.inf, dtype=xp.float64)
    log_probs = xp.full((B, R), -xp.inf, dtype=xp.float64)
    lengths = xp.zeros((B, R), dtype=xp.int64)
    for b, hyps in enumerate(rows):
        for r, h in enumerate(hyps[:R]):
            sequences[b, r, T0 : T0 + len(h.tokens)] = xp.asarray(h.tokens, dtype=xp.int64)
            scores[b, r], log_probs[b, r], lengths[b, r] = h.score, h.log_prob, len(h.tokens)
    return BeamSearchResult(sequences=sequences, scores=scores, log_probs=log_probs, lengths=lengths)


def gpt_step_log_probs(params: dict, config: gpt.Config):
    """reference.gpt as a `step_log_probs` callable: prefixes (N, t) -> log softmax of the
    last position's logits (N, V), recomputed from scratch (no cache: the spec)."""

    def step_log_probs(prefixes):
        return nn.log_softmax(gpt.forward(params, config, prefixes)[:, -1], axis=-1)

    return step_log_probs


def gpt_beam_search(params: dict, config: gpt.Config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                    length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1,
                    pad=None) -> BeamSearchResult:  # fmt: skip
    """`beam_search` on a GPT: prompt (B, T0) fed as it is (as reference.gpt.generate);
    T0 + max_new_tokens - 1 must not exceed block_size (the last token is never fed)."""
    check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                    num_return_sequences, pad, vocab_size=config.vocab_size)  # fmt: skip
    gpt.check_params(params, config)
    gpt.check_tokens(prompt, config, name="prompt", max_len=config.block_size + 1 - max(max_new_tokens, 1))
    return beam_search(gpt_step_log_probs(params, config), prompt, beam_width, max_new_tokens, eos=eos,
                       length_penalty=length_penalty, early_stopping=early_stopping,
                       num_return_sequences=num_return_sequences, pad=pad)  # fmt: skip
