"""Beam search: the highest-scoring continuations kept `beam_width` at a time.

Scoring is that of HF transformers' beam search (`_beam_search`, v5): a finished
hypothesis y = (y_1..y_L) continuing the prompt x scores

    score(y) = sum_{t=1}^{L} s(y_t | x, y_<t)  /  L ** length_penalty

    s(v | x, h) = process( log softmax(logits(x, h)), (x, h) )[v]

where L counts the *generated* tokens only (the eos that ends y included, the
prompt excluded), and `process` is the chain of logits processors (none: s is
the log-probability). As in HF the processors act on the log-softmax'd scores of
each beam, with the beam's tokens so far (x, h) as their ids, *before* the beam's
running score is added; the sums are of processed scores (HF's `sequences_scores`
too). A hypothesis is finished when it ends with one of the `eos` ids (or with one
of `stop_sequences`) or reaches L = max_new_tokens. length_penalty > 0 favours
longer hypotheses, < 0 shorter; 0 ranks by the plain sum. (Beam search: Lowerre
1976; for neural sequence models Graves 2012, Sutskever et al. 2014. The division
by L ** alpha is HF's simplification of Wu et al. 2016's ((5 + L) / 6) ** alpha.)

One step, for each prompt:

  1. every running beam h (raw score S_h = its sum so far) is extended by every
     token v: candidate score S_h + s(v | x, h). Candidates of score -inf
     (probability 0, or removed by a processor) do not exist.
  2. the candidates are ranked by score, best first; ties go to the smaller
     flat index  h * V + v  (the better-ranked beam, then the smaller token id).
  3. a candidate that finishes (its token is an eos, it completes a stop
     sequence, or this is the last step) and ranks among the first `beam_width`
     becomes a finished hypothesis, scored S / L ** length_penalty; the finished
     list keeps the best `beam_width` (ties: the one finished earlier first). A
     finishing candidate ranked lower is dropped, as in HF (it stands behind
     beam_width better candidates).
  4. the next running beams are the first `beam_width` candidates that do not
     finish. (HF keeps the top max(2, 1 + number of eos ids) * beam_width
     candidates to be sure to find beam_width that do not end in eos; taking them
     from all candidates is the same: at most one candidate per beam and eos id
     ends in that id.)
  5. stopping, per prompt, once the finished list is full (beam_width hypotheses):
       early_stopping=True     stop at once;
       early_stopping=False    stop when the best running beam, scored at its
                               current length, cannot beat the worst finished
                               one: S_best / n ** lp <= worst (HF's heuristic:
                               with length_penalty > 0 this may stop too early);
       early_stopping="never"  stop only when no running beam can beat the worst
                               finished one whatever it generates: the bound
                               uses L = max_new_tokens when length_penalty > 0,
                               the current length n otherwise. With normalized
                               log-probs (every s <= 0) the bound is exact,
                               so this variant returns what a search that never
                               stops early would.
     A prompt also stops when no running beam is left; at the latest after
     max_new_tokens steps.

Padded batches (HF's attention_mask): the prompts are given left-padded (or with
any 0/1 mask, as reference.gpt.forward accepts) with attention_mask (B, T0); the
model then sees each prefix with its mask, the prompt's followed by ones (the
generated tokens are real), and the processors see the padded ids, as HF's
input_ids. L still counts the generated tokens only.

Deliberate differences from HF (all only where HF returns filler):
  - HF starts with beam_width copies of the prompt, all but one at score -1e9,
    and keeps such filler beams whenever fewer than beam_width real ones exist
    (a tiny vocabulary, few steps, processors that remove most tokens); its
    scores live in float32. Here a beam or a candidate of score -inf simply does
    not exist, scores are float64, and when fewer than num_return_sequences
    hypotheses exist the missing ones come back with score -inf, log_prob -inf,
    length 0 (the prompt then `pad`).
  - HF's `topk` breaks ties in no documented order; here they are broken as in 2.
  - HF writes `pad_token_id or eos_token_id[0]` after a finished hypothesis
    (Python's `or`: a pad id of 0 becomes the first eos); here always `pad`.
With at least beam_width real candidates at every step (vocab_size > 2 * beam_width
plus the tokens processors remove suffices) and no ties, the hypotheses are HF's.

The spec needs only a callable: `step_log_probs(prefixes)` with prefixes (N, t)
int64, every row the prompt followed by a beam's tokens, returning log-probs
(N, V) -- or, when `attention_mask` is given, `step_log_probs(prefixes, mask)`
with mask (N, t) bool the prefixes' real tokens. On a GPT it is
`reference.gpt.beam_search` (every prefix recomputed: the spec), which
`reference.gpt.generate(generation_config=GenerationConfig(num_beams=W, ...))`
runs; `fast.beam.gpt_beam_search` (= fast.gpt.beam_search) is the same search
with a reordered KV cache. (The GPT adapter lives in reference/gpt.py so that gpt
can run this search without an import cycle: this module knows no model.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from chainrule.reference import sampling
from chainrule.reference.xp import namespace

EARLY_STOPPING = (True, False, "never")


@dataclass(frozen=True)
class BeamSearchResult:
    """The best hypotheses of each prompt, best first.

    sequences  (B, R, T0 + L) int64   the prompt then the generated tokens, `pad` after a
                                      hypothesis' end; L = the longest length returned
    scores     (B, R) float64         log_probs / lengths ** length_penalty, descending per row
    log_probs  (B, R) float64         sum of the (processed) log-probs of the generated tokens
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
    log_prob: float  # their summed (processed) log-probs
    score: float = 0.0  # log_prob / len(tokens) ** length_penalty (finished hypotheses)


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def _token_ids(value, name: str, vocab_size, what: str) -> tuple:
    """An int or a non-empty sequence of ints in [0, vocab_size) -> tuple; ValueError naming `name`."""
    ids = (value,) if _is_int(value) else value
    try:
        ids = tuple(ids)
    except TypeError:
        ids = None
    if not ids or not all(_is_int(i) and i >= 0 and (vocab_size is None or i < vocab_size) for i in ids):
        want = "ids >= 0" if vocab_size is None else f"ids in [0, {vocab_size})"
        raise ValueError(f"{name}: expected {what} ({want}), got {value!r}")
    return tuple(int(i) for i in ids)


def check_eos(eos, vocab_size=None) -> tuple:
    """eos: None, one id, or a sequence of ids (HF's eos_token_id list) -> tuple of ids (() for None)."""
    if eos is None:
        return ()
    return _token_ids(eos, "eos", vocab_size, "None, an int or a non-empty sequence of ints")


def check_stop_sequences(stop_sequences, vocab_size=None) -> tuple:
    """A sequence of non-empty token-id sequences -> tuple of tuples; ValueError naming stop_sequences."""
    try:
        items = tuple(stop_sequences)
    except TypeError:
        raise ValueError(f"stop_sequences: expected sequences of token ids, got {stop_sequences!r}") from None
    want = "non-empty sequences of token ids"
    if any(_is_int(s) for s in items):  # a bare id is not a sequence
        raise ValueError(f"stop_sequences: expected {want}, got {stop_sequences!r}")
    return tuple(_token_ids(s, "stop_sequences", vocab_size, want) for s in items)


def check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                    num_return_sequences, pad, vocab_size=None, stop_sequences=()):  # fmt: skip
    """ValueError naming the first bad argument (shared by reference and fast).
    Returns (eos ids tuple, stop sequences tuple)."""
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
    eos = check_eos(eos, vocab_size)
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
    return eos, check_stop_sequences(stop_sequences, vocab_size)


def check_mask(attention_mask, shape: tuple):
    """attention_mask (B, T0) of 0 and 1 (ints or bools), at least one 1 per row -> bool array."""
    xp = namespace(attention_mask)
    kind = getattr(getattr(attention_mask, "dtype", None), "kind", None)
    if kind not in ("i", "u", "b") or tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask: expected an integer or bool array of 0 and 1 of shape {tuple(shape)}, "
                         f"got {getattr(attention_mask, 'dtype', type(attention_mask).__name__)} "
                         f"{tuple(getattr(attention_mask, 'shape', ()))}")  # fmt: skip
    if bool(xp.any((attention_mask != 0) & (attention_mask != 1))):
        raise ValueError("attention_mask: expected only 0 and 1")
    mask = attention_mask.astype(bool)
    if not bool(xp.all(xp.any(mask, axis=1))):
        raise ValueError(f"attention_mask: row {int(xp.argmin(xp.any(mask, axis=1)))} has no real token (all 0)")
    return mask


def _check_log_probs(logp, rows: int, vocab_size, name: str = "step_log_probs"):
    """ValueError unless the callable (or a processor) gave float (rows, V) scores without NaN or +inf."""
    shape = tuple(getattr(logp, "shape", ()))
    if getattr(getattr(logp, "dtype", None), "kind", None) != "f" or len(shape) != 2 or shape[0] != rows:
        raise ValueError(f"{name}: expected float log-probs of shape ({rows}, V), got "
                         f"{getattr(logp, 'dtype', type(logp))} {shape}")  # fmt: skip
    if vocab_size is not None and shape[1] != vocab_size:
        raise ValueError(f"{name}: expected V={vocab_size} (as before), got {shape[1]}")
    xp = namespace(logp)
    if bool(xp.any(xp.isnan(logp))) or bool(xp.any(logp == xp.inf)):
        raise ValueError(f"{name}: log-probs contain NaN or +inf")


def _finishes(prompt_ids: tuple, tokens: tuple, eos: tuple, stops: tuple) -> bool:
    """Does a hypothesis end here: its last token an eos id, or prompt + tokens ending with a stop sequence?"""
    if tokens[-1] in eos:
        return True
    ids = prompt_ids + tokens
    return any(len(s) <= len(ids) and ids[len(ids) - len(s) :] == s for s in stops)


def _search_one(step_log_probs, prompt_row, mask_row, W, N, eos, stops, lp, early_stopping, processors, state):
    """Beam search for one prompt (T0,) -> finished hypotheses, best first (at most W)."""
    xp = namespace(prompt_row)
    prompt_ids = tuple(prompt_row.tolist())
    running = [_Hypothesis(tokens=(), log_prob=0.0)]
    finished: list[_Hypothesis] = []
    for n in range(N):  # n tokens generated so far
        prefixes = xp.stack([xp.concatenate([prompt_row, xp.asarray(h.tokens, dtype=xp.int64)]) for h in running])
        if mask_row is None:
            logp = step_log_probs(prefixes)  # (R, V)
        else:  # the prompt's mask, then the generated tokens: real
            mask = xp.concatenate([mask_row, xp.ones(n, dtype=bool)])
            logp = step_log_probs(prefixes, xp.broadcast_to(mask, prefixes.shape))
        _check_log_probs(logp, len(running), state.get("V"))
        V = state["V"] = logp.shape[1]
        if eos and max(eos) >= V:
            raise ValueError(f"eos: expected ids in [0, {V}), got {eos!r}")
        for process in processors:  # on the log-probs, with each beam's ids (HF's _beam_search)
            logp = process(logp, prefixes)
            _check_log_probs(logp, len(running), V, name="processors")
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
            if length == N or _finishes(prompt_ids, hyp.tokens, eos, stops):
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
                early_stopping=False, num_return_sequences: int = 1, pad=None, attention_mask=None,
                processors=(), stop_sequences=()) -> BeamSearchResult:  # fmt: skip
    """Beam search continuing each row of prompt (B, T0) (module docstring: the algorithm).

    step_log_probs: callable prefixes (N, t) int64 -> log-probs (N, V) float, row i the
    next-token log-probs after prefixes[i] (the prompt row followed by a beam's tokens);
    called as step_log_probs(prefixes, mask) with mask (N, t) bool when attention_mask is given.
    beam_width >= 1; max_new_tokens >= 0; eos: None, the ending token id, or several ids
    (without eos hypotheses all have max_new_tokens tokens, unless a stop sequence ends them);
    length_penalty finite; early_stopping True, False or "never" (HF's meanings);
    1 <= num_return_sequences <= beam_width; pad: the id written after a hypothesis' end
    (default the first eos, or 0 without eos); attention_mask: None or (B, T0) 0/1, the
    prompts' real tokens (padded batches); processors: callables of the processor protocol
    (reference.sampling: process(scores (N, V), ids (N, t)) -> scores), applied in order to
    the log-probs; stop_sequences: token-id sequences that end a hypothesis (kept in it).
    Returns a BeamSearchResult. max_new_tokens == 0 gives each prompt one empty
    hypothesis of score 0.
    """
    eos, stops = check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                                 num_return_sequences, pad, stop_sequences=stop_sequences)  # fmt: skip
    xp = namespace(prompt)
    prompt = xp.asarray(prompt).astype(xp.int64)
    B, T0 = prompt.shape
    mask = None if attention_mask is None else check_mask(attention_mask, prompt.shape)
    processors = [sampling.as_processor(p) for p in processors]
    R = num_return_sequences
    pad = pad if pad is not None else (eos[0] if eos else 0)
    state = {}  # V, once the callable has told it
    rows = []
    for b in range(B):
        if max_new_tokens == 0:
            rows.append([_Hypothesis(tokens=(), log_prob=0.0, score=0.0)])
        else:
            rows.append(_search_one(step_log_probs, prompt[b], None if mask is None else mask[b], beam_width,
                                    max_new_tokens, eos, stops, float(length_penalty), early_stopping, processors,
                                    state))  # fmt: skip
    if pad is not None and "V" in state and pad >= state["V"]:
        raise ValueError(f"pad: expected an int in [0, {state['V']}), got {pad!r}")
    L = max((len(h.tokens) for hyps in rows for h in hyps[:R]), default=0)  # 0: processors removed every token
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


def as_generate_output(result: BeamSearchResult):
    """HF `generate`'s output of a beam search: sequences (B * R, T0 + L), row b * R + r the
    r-th best hypothesis of prompt b."""
    sequences = result.sequences
    return sequences.reshape(sequences.shape[0] * sequences.shape[1], sequences.shape[2])
