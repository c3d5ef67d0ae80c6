"""Turning logits into tokens: probabilities, greedy choice and inverse-CDF sampling,
and the logits processors that reshape the distribution before a token is drawn.

All functions act on the last axis of a batch of logits (any leading shape).
Processors return logits of the same shape, removed entries -inf:

- warpers (temperature, top_k, top_p, typical, min_p, epsilon, eta): kept entries
  unchanged (except where the processor rescales); each filter's kept set is a
  `keep_*` function;
- penalties and biases: repetition_penalty (CTRL), frequency_penalty and
  presence_penalty (OpenAI / vLLM), logit_bias (OpenAI), sequence_bias;
- constraints: no_repeat_ngram, encoder_no_repeat_ngram, bad_words, min_length,
  min_new_tokens, forced_bos, forced_eos, exponential_decay_length_penalty,
  suppress_tokens, begin_suppress_tokens (Hugging Face's processors of those names);
- classifier-free guidance: classifier_free_guidance (two logits) and guidance
  (a history processor that calls the unconditional pass).

History processors (HISTORY) also take the tokens so far `ids` (Hugging Face's
input_ids: the prompt as given, pads included, then the generated tokens). `apply`
composes processors in Hugging Face's order (ORDER) and `chain` makes them
callables for `reference.gpt.generate(processors=...)`. Deliberate differences
from Hugging Face: temperature 0 is greedy (HF refuses it); top_p/typical keep
whole tie groups and compare masses with a relative tolerance MASS_RTOL (HF
splits tie groups by sort order and compares exactly); min_tokens_to_keep keeps
ties with the n-th token (HF keeps exactly n in top_p and min_p); p = 1 / mass = 1
are allowed (HF refuses typical(1)); ids, eos ids and biased or banned tokens
outside [0, V) raise (HF ignores ids >= V); sequence biases are added in float64
(HF rounds them to float32); classifier-free guidance gives -inf where either pass
rules a token out (HF: NaN); no processor returns NaN or +inf (a result that
would overflow raises). Each function's docstring says where it differs.
HF's TopHLogitsWarper (top_h) is not implemented.
Randomness enters only as explicit uniforms `u` in [0, 1), so that every
implementation that follows this spec draws the *same* token from the same u.
"""

from __future__ import annotations

import functools
import inspect
import math
import operator

from chainrule.reference import nn
from chainrule.reference.xp import namespace


def check_logits(logits, name="logits"):
    """Raise ValueError unless `logits` is a float array of shape (..., V), V >= 1,
    with no NaN, no +inf, and at least one finite entry per row."""
    xp = namespace(logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if logits.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
    if bool(xp.any(xp.isnan(logits))):
        raise ValueError(f"{name}: contains NaN")
    if bool(xp.any(logits == xp.inf)):
        raise ValueError(f"{name}: contains +inf")
    if bool(xp.any(xp.all(logits == -xp.inf, axis=-1))):
        raise ValueError(f"{name}: a row is entirely -inf (no token can be chosen)")


def probs(logits):
    """p = softmax(logits) over the last axis; -inf logits get probability exactly 0."""
    check_logits(logits)
    return nn.softmax(logits, axis=-1)


def greedy(logits):
    """argmax over the last axis, the *first* index on ties.  (..., V) -> (...) int64."""
    check_logits(logits)
    xp = namespace(logits)
    return xp.argmax(logits, axis=-1).astype(xp.int64)


def sample(logits, u):
    """Inverse-CDF sampling: the smallest index i with  c_i > u,  where c_i = sum_{j<=i} p_j.

    logits: (..., V); u: (...) uniforms in [0, 1) -> (...) int64.

    Because c is computed in floating point, its last value may fall short of
    1 and u may exceed it; the answer is then the last token of nonzero
    probability. A token of probability 0 is never returned: its cumulative
    value equals its predecessor's, so it can never be the *first* to exceed u.
    """
    xp = namespace(logits)
    p = probs(logits)  # (..., V)
    u = xp.asarray(u, dtype=xp.float64)
    if u.shape != p.shape[:-1]:
        raise ValueError(f"u: expected shape {tuple(p.shape[:-1])}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))  # NaN is outside too
    if bool(xp.any(outside)):
        raise ValueError(f"u: expected uniforms in [0, 1), got {float(u[outside].ravel()[0])!r}")
    cdf = xp.cumsum(p, axis=-1)  # (..., V)
    V = p.shape[-1]
    last_nonzero = V - 1 - xp.argmax(xp.flip(p > 0, axis=-1), axis=-1)  # (...)
    first_above = xp.argmax(cdf > u[..., None], axis=-1)  # (...) 0 if none exceeds u
    none_above = ~xp.any(cdf > u[..., None], axis=-1)
    return xp.where(none_above, last_nonzero, first_above).astype(xp.int64)



# ----------------------------------------------------------------------------- uniforms


def check_uniforms(u, shape: tuple, xp):
    """u as a float64 array of `shape` (None stays None); ValueError naming `u` otherwise."""
    if u is None:
        return None
    u = xp.asarray(u, dtype=xp.float64)
    if u.shape != tuple(shape):
        raise ValueError(f"u: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    return u


# ----------------------------------------------------------------------------- logits processors
#
# A processor maps logits (..., V) to logits of the same shape. A *filter* keeps
# a set of tokens and sets the others to -inf; kept entries are returned
# unchanged. Every filter below is defined by its kept set, a boolean mask
# computed by the matching `keep_*` function, so that implementations can be
# compared on what they keep.
#
# Masses. top_p and typical keep a token iff the probability mass of the tokens
# ranked strictly before it has not yet reached the target mass m. Masses are
# sums of rounded probabilities, so "reached" is decided with a relative
# tolerance:   mass reaches m  <=>  mass >= m * (1 - MASS_RTOL).
# A set whose mass equals m up to rounding therefore counts as reaching it:
# probabilities [.3, .1, .1, .5] with p = .8 keep exactly .5 and .3.

MASS_RTOL = 1e-12

# The order in which `apply` composes processors: Hugging Face's (GenerationMixin._get_logits_processor,
# transformers 5.24), with the OpenAI/vLLM ones HF lacks placed beside their kin (logit_bias after
# sequence_bias, frequency and presence penalties after the repetition penalty): guidance and
# constraints first, then temperature, then the filters.
ORDER = (
    "guidance", "sequence_bias", "logit_bias", "repetition_penalty", "static_repetition_penalty",
    "frequency_penalty", "presence_penalty", "no_repeat_ngram", "encoder_no_repeat_ngram", "bad_words",
    "min_length", "min_new_tokens", "forced_bos", "forced_eos", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens",
    "temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta",
)  # fmt: skip


def _check_unit(value, name, *, closed_high=True):
    """ValueError unless value is a real number in (0, 1] (or (0, 1) with closed_high=False)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    high_ok = v <= 1 if closed_high else v < 1
    if not (v > 0 and high_ok):
        interval = "(0, 1]" if closed_high else "(0, 1)"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return v


def _check_count(value, name):
    """ValueError unless value is an int >= 1 (bools are not counts)."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


def _filter(logits, keep):
    """Kept entries unchanged, the others -inf."""
    xp = namespace(logits)
    return xp.where(keep, logits, -xp.inf)


def _rows(a):
    """a (..., V) as (N, V), N = product of the leading shape."""
    return a.reshape(-1, a.shape[-1])


def keep_top_k(logits, k, min_tokens_to_keep=1):
    """The kept set of top_k: logit_i >= the k'-th largest logit of its row, ties kept,
    k' = max(k, min_tokens_to_keep) (as Hugging Face). k' >= V keeps every token.
    (..., V) -> (..., V) bool."""
    check_logits(logits)
    k = max(_check_count(k, "k"), _check_count(min_tokens_to_keep, "min_tokens_to_keep"))
    xp = namespace(logits)
    V = logits.shape[-1]
    if k >= V:
        return xp.ones(logits.shape, dtype=bool)
    kth_largest = xp.sort(logits, axis=-1)[..., V - k]  # (...)
    return logits >= kth_largest[..., None]


def _at_least(logits, keep, min_tokens_to_keep):
    """keep, widened to include the min_tokens_to_keep largest logits (ties at the last kept)."""
    n = _check_count(min_tokens_to_keep, "min_tokens_to_keep")
    return keep | keep_top_k(logits, n)


def _mass_before(key, p):
    """For each token, the total probability of the tokens whose key is strictly smaller.

    key, p: (N, V). Per row: sort the keys (stable), accumulate p in that order
    (smallest key first), and read the cumulative mass in front of the first
    token of each token's tie group. Equal keys get exactly the same mass, so the
    result does not depend on how a sort orders ties.
    """
    xp = namespace(p)
    N, V = p.shape
    before = xp.zeros((N, V), dtype=xp.float64)
    for r in range(N):
        order = xp.argsort(key[r], kind="stable")  # (V,)
        sorted_key = key[r][order]
        in_front = xp.concatenate([xp.zeros(1), xp.cumsum(p[r][order])])  # (V+1,) mass of the first j
        first_of_tie = xp.searchsorted(sorted_key, key[r], side="left")  # (V,)
        before[r] = in_front[first_of_tie]
    return before


def _reaches(mass, target):
    """mass >= target up to the relative tolerance MASS_RTOL."""
    return mass >= target * (1 - MASS_RTOL)


def keep_top_p(logits, p, min_tokens_to_keep=1):
    """The kept set of top_p (nucleus sampling, Holtzman et al. 2020, "The Curious Case
    of Neural Text Degeneration").

    Token i is kept iff  sum_{j : p_j > p_i} p_j  has not reached p  (see MASS_RTOL).
    So the token whose mass crosses p is kept, and so is every token tied with the
    last kept one. p = 1 keeps exactly the tokens of nonzero probability. Then the
    min_tokens_to_keep largest logits are added (ties at the last one kept).
    """
    check_logits(logits)
    p = _check_unit(p, "p")
    prob = probs(logits)
    if p == 1:
        keep = prob > 0
    else:
        rows = _rows(prob)
        keep = ~_reaches(_mass_before(-rows, rows), p).reshape(prob.shape)
    return _at_least(logits, keep, min_tokens_to_keep)


def _entropy_and_log_probs(logits):
    """(H (..., 1), log p (..., V)): log p = x - m - log sum exp(x - m), and
    H = -sum_i p_i log p_i where tokens of probability 0 contribute 0."""
    xp = namespace(logits)
    m = xp.max(logits, axis=-1, keepdims=True)
    e = xp.exp(logits - m)
    log_p = (logits - m) - xp.log(xp.sum(e, axis=-1, keepdims=True))
    p = probs(logits)
    terms = xp.where(p > 0, p * xp.where(p > 0, log_p, 0.0), 0.0)
    return -xp.sum(terms, axis=-1, keepdims=True), log_p


def keep_typical(logits, mass, min_tokens_to_keep=1):
    """The kept set of locally typical sampling (Meister et al. 2023, "Locally Typical
    Sampling", TACL).

    Score each token by its distance to the entropy, s_i = |H + log p_i|
    (H = -sum p log p, tokens of probability 0 contributing 0; their own score is +inf).
    Token i is kept iff the mass of the tokens with a strictly smaller score has not
    reached `mass` (see MASS_RTOL): the smallest prefix in score order whose mass
    reaches `mass`, ties in the score kept. mass = 1 keeps exactly the tokens of
    nonzero probability. Then the min_tokens_to_keep *best-scored* tokens are added
    (ties with the last one kept), as Hugging Face keeps the first ones in score order.
    """
    check_logits(logits)
    mass = _check_unit(mass, "mass")
    n = _check_count(min_tokens_to_keep, "min_tokens_to_keep")
    xp = namespace(logits)
    prob = probs(logits)
    H, log_p = _entropy_and_log_probs(logits)
    score = xp.abs(H + log_p)  # (..., V), +inf where p = 0
    if mass == 1:
        keep = prob > 0
    else:
        keep = ~_reaches(_mass_before(_rows(score), _rows(prob)), mass).reshape(prob.shape)
    nth_best = xp.sort(score, axis=-1)[..., min(n, score.shape[-1]) - 1]  # (...)
    return keep | (score <= nth_best[..., None])


def keep_min_p(logits, p, min_tokens_to_keep=1):
    """The kept set of min-p sampling (Nguyen et al. 2024, "Turning Up the Heat: Min-p
    Sampling for Creative and Coherent LLM Outputs"): p_i >= p * max_j p_j.

    Decided in log space, x_i - max_j x_j >= log p, which is the same inequality
    (the softmax normalizer cancels) and involves no sum, so every implementation
    makes the same decision. p = 1 keeps the tokens tied with the maximum.
    """
    check_logits(logits)
    p = _check_unit(p, "p")
    xp = namespace(logits)
    m = xp.max(logits, axis=-1, keepdims=True)
    keep = (logits - m) >= math.log(p)
    return _at_least(logits, keep, min_tokens_to_keep)


def keep_epsilon(logits, eps, min_tokens_to_keep=1):
    """The kept set of epsilon sampling (Hewitt et al. 2022, "Truncation Sampling as
    Language Model Desmoothing"): p_i >= eps, eps in (0, 1); then the
    min_tokens_to_keep largest logits are added, so no row is ever emptied."""
    check_logits(logits)
    eps = _check_unit(eps, "eps", closed_high=False)
    keep = probs(logits) >= eps
    return _at_least(logits, keep, min_tokens_to_keep)


def keep_eta(logits, eps, min_tokens_to_keep=1):
    """The kept set of eta sampling (Hewitt et al. 2022, same paper as epsilon):

        eta = min(eps, sqrt(eps) * exp(-H)),   keep  p_i >= eta,

    H the entropy of p in nats. This is the paper's formula (Sec. 5) and what
    Hugging Face's EtaLogitsWarper computes; its docstring writes
    sqrt(eps * exp(-H)), which is a different threshold and is *not* implemented.
    The paper keeps p_i > eta; we keep p_i >= eta, as Hugging Face does (they
    differ only when some p_i equals eta exactly). eps in (0, 1); then the
    min_tokens_to_keep largest logits are added.
    """
    check_logits(logits)
    eps = _check_unit(eps, "eps", closed_high=False)
    xp = namespace(logits)
    H, _ = _entropy_and_log_probs(logits)
    eta = xp.minimum(eps, math.sqrt(eps) * xp.exp(-H))  # (..., 1)
    keep = probs(logits) >= eta
    return _at_least(logits, keep, min_tokens_to_keep)


def temperature(logits, t):
    """Temperature scaling: logits / t for t > 0 (t < 1 sharpens, t > 1 flattens).

    t = 0 is defined as its limit's *choice*, greedy: only the argmax is kept
    (the first index on ties, as `greedy`), with its logit unchanged; all other
    entries become -inf. (The limit of softmax(x / t) as t -> 0 spreads the mass
    evenly over tied maxima; t = 0 picks the first.) t < 0 raises.
    """
    check_logits(logits)
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t: expected a number >= 0, got {t!r}") from None
    if not t >= 0 or t == math.inf:
        raise ValueError(f"t: expected a finite number >= 0, got {t!r}")
    xp = namespace(logits)
    if t == 0:
        first_max = greedy(logits)  # (...)
        keep = xp.arange(logits.shape[-1]) == first_max[..., None]
        return _filter(logits, keep)
    return logits / t


def top_k(logits, k, min_tokens_to_keep=1):
    """Top-k filtering (Fan et al. 2018, "Hierarchical Neural Story Generation"): keep
    the tokens whose logit is >= the k-th largest logit -- ties at the k-th value are
    all kept, as Hugging Face does; k >= V keeps all; k < 1 raises. As in Hugging
    Face, the effective k is max(k, min_tokens_to_keep)."""
    return _filter(logits, keep_top_k(logits, k, min_tokens_to_keep))


def top_p(logits, p, min_tokens_to_keep=1):
    """Nucleus filtering; the kept set is `keep_top_p` (see there). p in (0, 1]."""
    return _filter(logits, keep_top_p(logits, p, min_tokens_to_keep))


def typical(logits, mass, min_tokens_to_keep=1):
    """Locally typical filtering; the kept set is `keep_typical` (see there). mass in (0, 1]."""
    return _filter(logits, keep_typical(logits, mass, min_tokens_to_keep))


def min_p(logits, p, min_tokens_to_keep=1):
    """Min-p filtering; the kept set is `keep_min_p` (see there). p in (0, 1]."""
    return _filter(logits, keep_min_p(logits, p, min_tokens_to_keep))


def epsilon(logits, eps, min_tokens_to_keep=1):
    """Epsilon filtering; the kept set is `keep_epsilon` (see there). eps in (0, 1)."""
    return _filter(logits, keep_epsilon(logits, eps, min_tokens_to_keep))


def eta(logits, eps, min_tokens_to_keep=1):
    """Eta filtering; the kept set is `keep_eta` (see there). eps in (0, 1)."""
    return _filter(logits, keep_eta(logits, eps, min_tokens_to_keep))


def repetition_penalty(logits, context, penalty):
    """The CTRL repetition penalty (Keskar et al. 2019, "CTRL"), sign-aware as in
    Hugging Face: for every *distinct* token v of the context,

        x_v -> x_v / penalty  if x_v > 0,    x_v * penalty  if x_v < 0,    0 stays 0

    (each token penalized once, however often it occurs). penalty > 1 discourages
    repetition, penalty in (0, 1) encourages it, penalty = 1 is the identity.
    logits (..., V); context (..., T) int token ids in [0, V) with the same leading
    shape, or (T,) shared by every row. Ids outside [0, V) raise (Hugging Face
    silently ignores ids >= V).
    """
    check_logits(logits)
    xp = namespace(logits)
    try:
        penalty = float(penalty)
    except (TypeError, ValueError):
        raise ValueError(f"penalty: expected a number > 0, got {penalty!r}") from None
    if not (penalty > 0 and penalty < math.inf):
        raise ValueError(f"penalty: expected a finite number > 0, got {penalty!r}")
    context = xp.asarray(context)
    if context.dtype.kind not in "iu":
        raise ValueError(f"context: expected integer token ids, got dtype {context.dtype}")
    lead = logits.shape[:-1]
    if context.ndim == 1:
        context = xp.broadcast_to(context, lead + context.shape)
    if context.shape[:-1] != lead:
        raise ValueError(f"context: expected shape {lead + ('T',)} or (T,), got {tuple(context.shape)}")
    V = logits.shape[-1]
    if context.size and bool(xp.any((context < 0) | (context >= V))):
        bad = context[(context < 0) | (context >= V)].ravel()[0]
        raise ValueError(f"context: expected token ids in [0, {V}), got {int(bad)}")
    x = _rows(logits)  # (N, V)
    ids = context.reshape(x.shape[0], -1)  # (N, T)
    out = x.copy()
    for r in range(x.shape[0]):
        seen = xp.zeros(V, dtype=bool)
        seen[ids[r]] = True  # distinct tokens: each penalized once
        penalized = xp.where(x[r] > 0, x[r] / penalty, x[r] * penalty)
        out[r] = xp.where(seen, penalized, x[r])
    return out.reshape(logits.shape)


# ----------------------------------------------------------------------------- constraints, biases, penalties
#
# Hugging Face's other logits processors (transformers 5.24, generation/logits_process.py)
# and the serving APIs' penalties and biases (OpenAI, vLLM). A history processor takes the
# tokens so far `ids` (..., t) -- Hugging Face's input_ids: the prompt as given, pads
# included, then the generated tokens -- with the logits' leading shape, or (t,) shared by
# every row; the step is t = ids.shape[-1]. Banned tokens get -inf, and a processor may ban
# every token of a row (the sampler then refuses the row, naming it). Additive processors
# compute in float64 and refuse a result of +inf, so nothing returns NaN or +inf.
# Ids, eos ids and biased tokens outside [0, V) raise (Hugging Face ignores or crashes).


def _index(value):
    """value as a Python int; TypeError for anything that is not an integer (bools included)."""
    if isinstance(value, bool):
        raise TypeError("a bool is not a token id or a count")
    return operator.index(value)


def _check_int(value, name, low):
    """value as an int >= low (bools and floats are not ints); ValueError naming `name` otherwise."""
    try:
        v = _index(value)
    except TypeError:
        v = None
    if v is None or v < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return v


def _check_real(value, name, *, positive=False):
    """value as a finite float (> 0 with positive=True); ValueError naming `name` otherwise."""
    what = "a finite number > 0" if positive else "a finite number"
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected {what}, got {value!r}") from None
    if not math.isfinite(v) or (positive and not v > 0):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return v


def _check_token(value, V, name):
    """value as one token id, an int in [0, V)."""
    try:
        v = _index(value)
    except TypeError:
        v = None
    if v is None or not 0 <= v < V:
        raise ValueError(f"{name}: expected a token id in [0, {V}), got {value!r}")
    return v


def _token_ids(value, V, name, *, allow_empty=False):
    """value -- a token id or a sequence of token ids -- as a tuple of ints in [0, V), in its
    order, repeats kept. ValueError naming `name` otherwise."""
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError
        try:
            items = (_index(value),)  # one id
        except TypeError:
            items = tuple(_index(v) for v in value)
    except TypeError:
        raise ValueError(f"{name}: expected a token id or a sequence of token ids, got {value!r}") from None
    if not items and not allow_empty:
        raise ValueError(f"{name}: expected at least one token id, got {value!r}")
    for v in items:
        if not 0 <= v < V:
            raise ValueError(f"{name}: expected token ids in [0, {V}), got {v}")
    return items


def _token_set(value, V, name, *, allow_empty=False):
    """_token_ids without repeats (first occurrences, in order)."""
    return tuple(dict.fromkeys(_token_ids(value, V, name, allow_empty=allow_empty)))


def _history(logits, ids, name="ids"):
    """(logits as rows (N, V), ids as rows (N, t) int64) after checking both: ids (..., t)
    integer token ids in [0, V) with the logits' leading shape (..., V), or (t,) shared by
    every row. N is the product of the leading shape."""
    check_logits(logits)
    xp = namespace(logits)
    ids = xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    lead = tuple(logits.shape[:-1])
    if ids.ndim == 1:
        ids = xp.broadcast_to(ids, lead + ids.shape)
    if ids.ndim == 0 or tuple(ids.shape[:-1]) != lead:
        raise ValueError(f"{name}: expected shape {lead + ('t',)} or (t,), got {tuple(ids.shape)}")
    V = logits.shape[-1]
    outside = (ids < 0) | (ids >= V)
    if ids.size and bool(xp.any(outside)):
        raise ValueError(f"{name}: expected token ids in [0, {V}), got {int(ids[outside].ravel()[0])}")
    x = _rows(logits)  # (N, V)
    return x, ids.reshape(x.shape[0], ids.shape[-1]).astype(xp.int64)  # (N, t)


def _check_prompt_length(value, t):
    """prompt_length as an int in [0, t]: the history ids always hold the prompt."""
    v = _check_int(value, "prompt_length", 0)
    if v > t:
        raise ValueError(f"prompt_length: expected at most t = {t} (the length of ids), got {value!r}")
    return v


def _ban(logits, banned):
    """The logits with the tokens banned[r] of row r (rows of the flattened leading shape) set to -inf."""
    xp = namespace(logits)
    out = _rows(logits).copy()  # (N, V)
    for r, tokens in enumerate(banned):
        out[r, sorted(tokens)] = -xp.inf
    return out.reshape(logits.shape)


def _force(logits, tokens):
    """Every logit -inf except those of `tokens`, which become 0 (Hugging Face's forcing)."""
    xp = namespace(logits)
    out = xp.full(logits.shape, -xp.inf, dtype=logits.dtype)
    out[..., list(tokens)] = 0.0
    return out


def _shifted(logits, shift, name):
    """logits + shift (float64), refusing a non-finite shift and a result of +inf; -inf logits stay -inf."""
    xp = namespace(logits)
    if not bool(xp.all(xp.isfinite(shift))):
        raise ValueError(f"{name}: the change to the logits overflows float64")
    out = logits + shift
    if bool(xp.any(out == xp.inf)):
        raise ValueError(f"{name}: a changed logit overflows to +inf")
    return out


def _ends_with(seq, suffix):
    """seq (a list) ends with `suffix` (a tuple); the empty suffix always."""
    return len(suffix) <= len(seq) and tuple(seq[len(seq) - len(suffix) :]) == tuple(suffix)


def _completions(source, prefix, n):
    """The tokens v such that prefix + (v,) is an n-gram of source (len(prefix) = n - 1)."""
    return {source[i + n - 1] for i in range(len(source) - n + 1) if tuple(source[i : i + n - 1]) == tuple(prefix)}


def no_repeat_ngram(logits, ids, n):
    """No repeated n-grams (Paulus et al. 2018, "A Deep Reinforced Model for Abstractive
    Summarization"; fairseq's and Hugging Face's NoRepeatNGramLogitsProcessor). Token v is
    banned (-inf) iff the n-gram it would complete already occurs in the row's ids:

        banned(v)  <=>  (ids[t-n+1], ..., ids[t-1], v) = (ids[i], ..., ids[i+n-1]) for some i.

    logits (..., V); ids (..., t) the tokens so far (prompt included). Nothing is banned while
    t < n (no n-gram yet); n = 1 bans every token that occurs in ids. n an int >= 1.
    Differs from HF: ids outside [0, V) raise (HF ignores ids >= V).
    """
    x, rows = _history(logits, ids)
    n = _check_count(n, "n")
    banned = []
    for seq in rows.tolist():
        t = len(seq)
        banned.append(_completions(seq, seq[t - n + 1 :] if n > 1 else [], n) if t >= n else set())
    return _ban(logits, banned)


def encoder_no_repeat_ngram(logits, ids, n, encoder_ids):
    """No n-gram of the encoder input repeated (Hugging Face's EncoderNoRepeatNGramLogitsProcessor,
    made to keep a chat model from echoing its prompt). Token v is banned (-inf) iff

        (ids[t-n+1], ..., ids[t-1], v)  is an n-gram of the row's encoder_ids.

    logits (..., V); ids (..., t); encoder_ids (..., S) with the logits' leading shape, or (S,)
    for every row, token ids in [0, V). Nothing is banned while t < n - 1; n = 1 bans every
    token of encoder_ids. n an int >= 1. Differs from HF: HF takes one encoder row per batch
    item and shares it among that item's beams (logits rows b*k ... b*k + k - 1); here each
    logits row has its own encoder row (repeat them: numpy.repeat(encoder_ids, k, axis=0)).
    """
    x, rows = _history(logits, ids)
    _, source = _history(logits, encoder_ids, "encoder_ids")
    n = _check_count(n, "n")
    banned = []
    for seq, enc in zip(rows.tolist(), source.tolist()):
        t = len(seq)
        banned.append(_completions(enc, seq[t - n + 1 :] if n > 1 else [], n) if t >= n - 1 else set())
    return _ban(logits, banned)


def _word_list(value, V, name):
    """A non-empty list of non-empty token-id sequences, as tuples."""
    words = None if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    if not words:
        raise ValueError(f"{name}: expected a non-empty list of non-empty token-id lists, got {value!r}")
    for word in words:
        if hasattr(word, "__index__") and not hasattr(word, "__len__"):
            raise ValueError(f"{name}: expected a list of token-id lists, got the id {word!r} (write [{word!r}])")
    return [_token_ids(word, V, name) for word in words]


def bad_words(logits, ids, bad_words_ids, eos_token_id=None):
    """Banned token sequences (Hugging Face's NoBadWordsLogitsProcessor). For every bad word
    w = (w_1, ..., w_m) of bad_words_ids, its last token is banned (-inf) when the row's ids
    end with its first m - 1 tokens, so that w is never completed:

        banned(w_m)  <=>  (ids[t-m+1], ..., ids[t-1]) = (w_1, ..., w_{m-1})   (always when m = 1).

    logits (..., V); ids (..., t); bad_words_ids a non-empty list of non-empty token-id lists,
    ids in [0, V). As in HF, a one-token bad word [e] with e among eos_token_id (an id or a
    sequence of ids, optional) is dropped, so that the end of text stays reachable; longer bad
    words ending in e are kept (if every bad word is dropped, the logits are unchanged).
    Differs from HF: ids and bad-word ids outside [0, V) raise (HF ignores ids >= V in the
    history and raises for bad words >= V).
    """
    x, rows = _history(logits, ids)
    V = logits.shape[-1]
    words = _word_list(bad_words_ids, V, "bad_words_ids")
    eos = () if eos_token_id is None else _token_set(eos_token_id, V, "eos_token_id")
    words = [w for w in words if not (len(w) == 1 and w[0] in eos)]
    banned = [{w[-1] for w in words if _ends_with(seq, w[:-1])} for seq in rows.tolist()]
    return _ban(logits, banned)


def _sequence_biases(value, V):
    """sequence_bias as a list of (token-id tuple, float): from {(ids): bias} or [[ids, bias], ...]."""
    what = "sequence_bias: expected {(token ids): finite number} or [[token ids, finite number], ...]"
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = []
        for pair in value:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{what}, got the element {pair!r}")
            pairs.append(tuple(pair))
    else:
        raise ValueError(f"{what}, got {type(value).__name__}")
    if not pairs:
        raise ValueError(f"{what}, got an empty {type(value).__name__}")
    out = {}
    for sequence, bias in pairs:
        sequence = _token_ids(sequence, V, "sequence_bias")
        if sequence in out:
            raise ValueError(f"sequence_bias: the sequence {list(sequence)} is given twice")
        out[sequence] = _check_real(bias, "sequence_bias")
    return list(out.items())


def sequence_bias(logits, ids, sequence_bias):
    """Additive biases on token sequences (Hugging Face's SequenceBiasLogitsProcessor). For every
    biased sequence s = (s_1, ..., s_m) with bias b, the bias goes to the token that would
    complete s:

        x_{s_m}  ->  x_{s_m} + b   when the row's ids end with (s_1, ..., s_{m-1})   (always when m = 1),

    the biases of several sequences completed by the same token adding up; -inf stays -inf.
    logits (..., V); ids (..., t); sequence_bias {(s_1, ..., s_m): b} or HF's list form
    [[[s_1, ..., s_m], b], ...]: non-empty, sequences non-empty with ids in [0, V), each given
    once, b finite. Differs from HF: HF rounds the biases to float32 before adding them
    (chainrule adds them in float64); a sequence listed twice raises (HF keeps the last);
    b may be an int (HF wants floats); a non-finite b raises (ban with bad_words).
    """
    x, rows = _history(logits, ids)
    xp = namespace(logits)
    biases = _sequence_biases(sequence_bias, logits.shape[-1])
    shift = xp.zeros(x.shape, dtype=xp.float64)  # (N, V)
    for r, seq in enumerate(rows.tolist()):
        total = {}  # token -> the sum of the biases it receives (Python floats: an overflow is inf, no warning)
        for s, b in biases:
            if _ends_with(seq, s[:-1]):
                total[s[-1]] = total.get(s[-1], 0.0) + b
        for v, b in total.items():
            shift[r, v] = b
    return _shifted(x, shift, "sequence_bias").reshape(logits.shape)


def min_length(logits, ids, min_length, eos_token_id):
    """A minimum length (Hugging Face's MinLengthLogitsProcessor): while the row is shorter than
    min_length, no end of sequence,

        x_e -> -inf  for every eos id e,   while t < min_length   (t = ids.shape[-1], prompt included).

    min_length an int >= 0; eos_token_id an id or a non-empty sequence of ids in [0, V)
    (HF ignores eos ids >= V, here they raise).
    """
    x, rows = _history(logits, ids)
    min_length = _check_int(min_length, "min_length", 0)
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    too_short = rows.shape[1] < min_length
    return _ban(logits, [eos if too_short else ()] * x.shape[0])


def min_new_tokens(logits, ids, prompt_length, min_new_tokens, eos_token_id):
    """A minimum number of new tokens (Hugging Face's MinNewTokensLengthLogitsProcessor):

        x_e -> -inf  for every eos id e,   while t - prompt_length < min_new_tokens,

    t = ids.shape[-1], prompt_length the length of the prompt as given (pads included), an int
    in [0, t] (HF does not check it); min_new_tokens an int >= 0; eos_token_id an id or a
    non-empty sequence of ids in [0, V) (HF ignores eos ids >= V, here they raise).
    """
    x, rows = _history(logits, ids)
    t = rows.shape[1]
    prompt_length = _check_prompt_length(prompt_length, t)
    min_new_tokens = _check_int(min_new_tokens, "min_new_tokens", 0)
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    too_short = t - prompt_length < min_new_tokens
    return _ban(logits, [eos if too_short else ()] * x.shape[0])


def forced_bos(logits, ids, bos_token_id):
    """The first generated token forced (Hugging Face's ForcedBOSTokenLogitsProcessor, for
    encoder-decoders whose decoder starts from one start token): when t = ids.shape[-1] = 1,

        x_v -> 0  for v = bos_token_id,   -inf for every other v;

    the logits unchanged at any other t. bos_token_id a token id in [0, V).
    """
    x, rows = _history(logits, ids)
    bos = _check_token(bos_token_id, logits.shape[-1], "bos_token_id")
    return _force(logits, (bos,)) if rows.shape[1] == 1 else logits.copy()


def forced_eos(logits, ids, max_length, eos_token_id):
    """The last token forced to be an end of sequence (Hugging Face's ForcedEOSTokenLogitsProcessor):
    when t = ids.shape[-1] = max_length - 1 (the token about to be chosen is the max_length-th),

        x_v -> 0  for every eos id v,   -inf for every other v;

    the logits unchanged at any other t. max_length an int >= 1; eos_token_id an id or a
    non-empty sequence of ids in [0, V) (several eos ids: all of them 0, the choice among them
    left to the logits' order, as HF).
    """
    x, rows = _history(logits, ids)
    max_length = _check_count(max_length, "max_length")
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    return _force(logits, eos) if rows.shape[1] == max_length - 1 else logits.copy()


def exponential_decay_length_penalty(logits, ids, start_index, decay_factor, prompt_length, eos_token_id):
    """Hugging Face's ExponentialDecayLengthPenalty: past start_index new tokens, the eos
    logits grow exponentially with the number k of tokens beyond it,

        x_e -> x_e + |x_e| (decay_factor^k - 1)   for every eos id e,   k = t - (prompt_length + start_index) > 0,

    i.e. x_e decay_factor^k for x_e > 0 and x_e (2 - decay_factor^k) for x_e < 0 (HF's abs(),
    "to support negative logits"); -inf stays -inf; nothing changes while k <= 0.
    t = ids.shape[-1]; start_index an int >= 0; decay_factor a finite number > 0 (> 1 favours
    ending); prompt_length an int in [0, t]; eos_token_id an id or a non-empty sequence of ids.
    Differs from HF: decay_factor^k or a logit that overflows float64 raises (HF: inf or NaN).
    """
    x, rows = _history(logits, ids)
    xp = namespace(logits)
    t = rows.shape[1]
    start_index = _check_int(start_index, "start_index", 0)
    decay_factor = _check_real(decay_factor, "decay_factor", positive=True)
    prompt_length = _check_prompt_length(prompt_length, t)
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    k = t - (prompt_length + start_index)
    if k <= 0:
        return logits.copy()
    try:
        growth = decay_factor**k - 1.0
    except OverflowError:
        raise ValueError(f"decay_factor: decay_factor ** {k} overflows float64") from None
    shift = xp.zeros(x.shape, dtype=xp.float64)  # (N, V)
    for e in eos:
        x_e = x[:, e]
        shift[:, e] = xp.where(xp.isfinite(x_e), xp.abs(xp.where(xp.isfinite(x_e), x_e, 0.0)) * growth, 0.0)
    return _shifted(x, shift, "decay_factor").reshape(logits.shape)


def suppress_tokens(logits, tokens):
    """Tokens never generated (Hugging Face's SuppressTokensLogitsProcessor, from Whisper):
    x_v -> -inf for every v in tokens. tokens: an id or a sequence of ids in [0, V), possibly
    empty (the identity). Differs from HF: ids outside [0, V) raise (HF ignores them).
    """
    check_logits(logits)
    banned = _token_set(tokens, logits.shape[-1], "tokens", allow_empty=True)
    return _ban(logits, [banned] * _rows(logits).shape[0])


def begin_suppress_tokens(logits, ids, tokens, begin_index):
    """Tokens not generated first (Hugging Face's SuppressTokensAtBeginLogitsProcessor, from
    Whisper): x_v -> -inf for every v in tokens when t = ids.shape[-1] = begin_index, the
    logits unchanged at any other t. begin_index an int >= 0 (generate's is the prompt length,
    plus 1 when a forced bos token comes first); tokens an id or a sequence of ids in [0, V).
    """
    x, rows = _history(logits, ids)
    banned = _token_set(tokens, logits.shape[-1], "tokens", allow_empty=True)
    begin_index = _check_int(begin_index, "begin_index", 0)
    return _ban(logits, [banned if rows.shape[1] == begin_index else ()] * x.shape[0])


def _penalized(logits, ids, prompt_length, penalty, per_count):
    """logits - penalty * per_count(c_v), c_v the number of occurrences of v in ids[..., prompt_length:]."""
    x, rows = _history(logits, ids)
    xp = namespace(logits)
    prompt_length = _check_prompt_length(prompt_length, rows.shape[1])
    penalty = _check_real(penalty, "penalty")
    shift = xp.zeros(x.shape, dtype=xp.float64)  # (N, V)
    for r, seq in enumerate(rows.tolist()):
        counts = {}
        for v in seq[prompt_length:]:
            counts[v] = counts.get(v, 0) + 1
        for v, c in counts.items():
            shift[r, v] = -penalty * per_count(c)  # a Python float: an overflow is inf, no warning
    return _shifted(x, shift, "penalty").reshape(logits.shape)


def frequency_penalty(logits, ids, penalty, prompt_length=0):
    """The frequency penalty of the OpenAI API and vLLM: every occurrence of a token among the
    generated tokens lowers its logit by `penalty`,

        x_v -> x_v - penalty * c_v,   c_v = #{ s >= prompt_length : ids[s] = v }.

    vLLM counts the output tokens only: pass the prompt length (pads included); prompt_length
    = 0 counts every token of ids. penalty a finite number (OpenAI allows [-2, 2]; negative
    encourages repetition, 0 is the identity); -inf stays -inf; a result of +inf raises.
    Not in HF (whose repetition_penalty is CTRL's multiplicative one).
    """
    return _penalized(logits, ids, prompt_length, penalty, lambda c: c)


def presence_penalty(logits, ids, penalty, prompt_length=0):
    """The presence penalty of the OpenAI API and vLLM: a token that occurs among the generated
    tokens at all has its logit lowered by `penalty`, once,

        x_v -> x_v - penalty * [c_v > 0],   c_v = #{ s >= prompt_length : ids[s] = v }.

    prompt_length, penalty and the edge cases as in frequency_penalty. Not in HF.
    """
    return _penalized(logits, ids, prompt_length, penalty, lambda c: 1)


def logit_bias(logits, bias):
    """The logit_bias of the OpenAI API: x_v -> x_v + bias[v] for every token v of the dict
    `bias` {token id in [0, V): finite number} (OpenAI allows [-100, 100]; -100 in effect bans,
    +100 in effect forces). An empty dict is the identity; -inf stays -inf; +inf raises.
    OpenAI's JSON keys are strings: convert them to ints.
    """
    check_logits(logits)
    xp = namespace(logits)
    if not isinstance(bias, dict):
        raise ValueError(f"bias: expected a dict {{token id: finite number}}, got {type(bias).__name__}")
    V = logits.shape[-1]
    shift = xp.zeros(V, dtype=xp.float64)  # (V,)
    for token, b in bias.items():
        shift[_check_token(token, V, "bias")] += _check_real(b, "bias")
    return _shifted(logits, shift, "bias")


def classifier_free_guidance(logits, unconditional_logits, scale):
    """Classifier-free guidance for language models (Sanchez et al. 2023, "Stay on topic with
    Classifier-Free Guidance"; Ho & Salimans 2022 for diffusion), combined as Hugging Face's
    UnbatchedClassifierFreeGuidanceLogitsProcessor does:

        c = log_softmax(logits),  u = log_softmax(unconditional_logits),
        out = u + scale * (c - u)      (= log of p_c^scale p_u^(1 - scale), unnormalized).

    logits, unconditional_logits (..., V) of the same shape; scale a finite number (1: the
    conditional alone; > 1 follows the prompt more closely; < 1 toward the unconditional or
    negative prompt). scale = 1 returns c exactly (HF's shortcut). For scale != 1 a token
    impossible under either distribution (c or u = -inf) gets -inf: the result's support is the
    intersection of the two. Differs from HF, which there returns NaN (u = -inf with scale > 0,
    or c = u = -inf) or +inf (c = -inf with scale < 0). A result of +inf (overflow) raises.
    """
    check_logits(logits)
    check_logits(unconditional_logits, "unconditional_logits")
    if tuple(unconditional_logits.shape) != tuple(logits.shape):
        raise ValueError(f"unconditional_logits: expected shape {tuple(logits.shape)}, "
                         f"got {tuple(unconditional_logits.shape)}")  # fmt: skip
    scale = _check_real(scale, "scale")
    xp = namespace(logits)
    c = nn.log_softmax(logits)
    if scale == 1:
        return c
    u = nn.log_softmax(unconditional_logits)
    both = xp.isfinite(c) & xp.isfinite(u)
    c0, u0 = xp.where(both, c, 0.0), xp.where(both, u, 0.0)  # no -inf - (-inf)
    out = xp.where(both, u0 + scale * (c0 - u0), -xp.inf)
    if bool(xp.any(out == xp.inf)) or bool(xp.any(xp.isnan(out))):
        raise ValueError(f"scale: u + scale * (c - u) overflows for scale = {scale!r}")
    return out


def guidance(logits, ids, scale, unconditional):
    """Classifier-free guidance as a history processor: `unconditional` is the caller's second
    forward pass, a callable ids (..., t) -> unconditional logits (..., V) (HF runs the model on
    the negative prompt, or the last prompt token, followed by the generated tokens), and

        out = classifier_free_guidance(logits, unconditional(ids), scale).

    scale = 1 returns log_softmax(logits) without calling `unconditional` (as HF, which then
    skips the second pass). `unconditional` must be a pure function of ids.
    """
    _history(logits, ids)
    scale = _check_real(scale, "scale")
    if not callable(unconditional):
        raise ValueError(f"unconditional: expected a callable ids -> unconditional logits, "
                         f"got {type(unconditional).__name__}")  # fmt: skip
    if scale == 1:
        return nn.log_softmax(logits)
    return classifier_free_guidance(logits, namespace(logits).asarray(unconditional(ids)), scale)


PROCESSORS = {
    "guidance": guidance,
    "sequence_bias": sequence_bias,
    "logit_bias": logit_bias,
    "repetition_penalty": repetition_penalty,
    "static_repetition_penalty": repetition_penalty,
    "frequency_penalty": frequency_penalty,
    "presence_penalty": presence_penalty,
    "no_repeat_ngram": no_repeat_ngram,
    "encoder_no_repeat_ngram": encoder_no_repeat_ngram,
    "bad_words": bad_words,
    "min_length": min_length,
    "min_new_tokens": min_new_tokens,
    "forced_bos": forced_bos,
    "forced_eos": forced_eos,
    "exponential_decay_length_penalty": exponential_decay_length_penalty,
    "suppress_tokens": suppress_tokens,
    "begin_suppress_tokens": begin_suppress_tokens,
    "temperature": temperature,
    "top_k": top_k,
    "top_p": top_p,
    "min_p": min_p,
    "typical": typical,
    "epsilon": epsilon,
    "eta": eta,
}

# ----------------------------------------------------------------------------- the processor protocol
#
# During generation a processor is called as
#
#     process(logits (B, V), ids (B, t)) -> logits (B, V)
#
# where ids are every token of each row so far: the prompt as given (its pads included,
# as Hugging Face's processors see input_ids) followed by the tokens generated. A
# processor that needs the step derives it from t and the prompt length it was built
# with. History-free processors (temperature, the filters) ignore ids.

# The processors of PROCESSORS whose function takes the history `ids` as its second
# positional argument.
HISTORY = frozenset({
    "guidance", "sequence_bias", "repetition_penalty", "frequency_penalty", "presence_penalty",
    "no_repeat_ngram", "encoder_no_repeat_ngram", "bad_words", "min_length", "min_new_tokens",
    "forced_bos", "forced_eos", "exponential_decay_length_penalty", "begin_suppress_tokens",
})  # fmt: skip


class Processor:
    """One processor of `chain`: a function of PROCESSORS (or of a twin table) with its settings.

    process(logits, ids=None) -> logits. A history processor (name in HISTORY) is
    function(logits, ids, **kwargs) and refuses ids=None; the others are
    function(logits, **kwargs) and ignore ids.
    """

    __slots__ = ("name", "function", "kwargs", "uses_history")

    def __init__(self, name: str, function, kwargs: dict, uses_history: bool):
        self.name, self.function, self.kwargs, self.uses_history = name, function, dict(kwargs), uses_history

    def __call__(self, logits, ids=None):
        if not self.uses_history:
            return self.function(logits, **self.kwargs)
        if ids is None:
            raise ValueError(f"ids: the {self.name} processor needs the tokens so far, (B, t) int: "
                             f"call it as process(logits, ids) (generate does)")
        return self.function(logits, ids, **self.kwargs)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items() if k != "context")
        return f"Processor({self.name}: {settings})"


def as_processor(process):
    """A processor of the protocol above, (logits, ids) -> logits, from what a user passes
    as `processors=`: a `Processor` stays itself; another callable that accepts two
    positional arguments receives (logits, ids); a callable of one argument gets logits alone.
    ValueError naming `processors` for anything that is not callable."""
    if isinstance(process, Processor):
        return process
    if not callable(process):
        raise ValueError(f"processors: expected callables (logits, ids) -> logits, got {type(process).__name__}")
    try:
        inspect.signature(process).bind(None, None)
    except TypeError:  # takes one positional argument: history-free
        return lambda logits, ids: process(logits)
    except ValueError:  # no signature to inspect (some builtins): call with logits alone
        return lambda logits, ids: process(logits)
    return process


def _settings(name):
    """The parameters of processor `name` that a spec sets: all but the logits and, for a
    history processor, the ids (its second positional parameter)."""
    params = list(inspect.signature(PROCESSORS[name]).parameters.values())[1:]
    return params[1:] if name in HISTORY else params


def _spec_kwargs(name, value):
    """The kwargs of processor `name` from a spec's value: a non-empty dict whose keys are all
    strings is the kwargs; anything else (a number, a list, a dict keyed by token ids) is the
    value of its main setting, the first one other than a static context."""
    settings = _settings(name)
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return dict(value)
    main = [p for p in settings if p.name != "context"][0]
    others = [p.name for p in settings if p is not main and p.default is inspect.Parameter.empty and p.name != "context"]
    if others:
        wanted = ", ".join(f"{p!r}: ..." for p in [main.name, *others])
        raise ValueError(f"processors: {name} takes several settings, not one bare value: give {{{wanted}}}")
    return {main.name: value}


def _spec_items(spec):
    """(name, kwargs) pairs from a dict {name: kwargs-dict or main value} or an iterable of
    (name, kwargs-dict or main value) pairs."""
    items = spec.items() if isinstance(spec, dict) else spec
    out = []
    for item in items:
        try:
            name, kwargs = item
        except (TypeError, ValueError):
            raise ValueError(f"processors: expected (name, kwargs) pairs, got {item!r}") from None
        if name not in PROCESSORS:
            raise ValueError(f"processors: expected names from {ORDER}, got {name!r}")
        kwargs = _spec_kwargs(name, kwargs)
        if name == "repetition_penalty" and "context" in kwargs:
            raise ValueError("processors: repetition_penalty penalizes the tokens so far (prompt and generated) "
                             "and takes no context; for a fixed context use static_repetition_penalty="
                             "{'context': ..., 'penalty': ...}")
        if name == "static_repetition_penalty" and "context" not in kwargs:
            raise ValueError("processors: static_repetition_penalty needs {'context': ..., 'penalty': ...}")
        settings = _settings(name)
        unknown = [k for k in kwargs if k not in [p.name for p in settings]]
        if unknown:
            raise ValueError(f"processors: {name} has no setting {unknown[0]!r} (its settings: "
                             f"{', '.join(p.name for p in settings)})")
        missing = [p.name for p in settings if p.default is inspect.Parameter.empty and p.name not in kwargs]
        if missing:
            raise ValueError(f"processors: {name} needs {', '.join(map(repr, missing))}")
        out.append((name, kwargs))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"processors: each processor at most once, got {names}")
    return out


def chain(processors, *, table=None):
    """The processors named in `processors` as a list of `Processor` callables
    (logits, ids=None) -> logits, in the documented order ORDER (whatever order they
    are listed in): ready for `reference.gpt.generate(processors=...)`.

    processors: {"top_k": {"k": 50}, "temperature": 0.7} or [("top_p", {"p": 0.9}), ...];
    a bare value is the processor's first parameter. Each Processor calls the function
    of that name in PROCESSORS (or in `table`, a dict with the same names, e.g. the fast
    twins'). History processors (HISTORY: repetition_penalty ...) need the ids; the
    others can be called on logits alone.
    """
    table = PROCESSORS if table is None else table
    items = sorted(_spec_items(processors), key=lambda item: ORDER.index(item[0]))
    return [Processor(name, table[name], kwargs, name in HISTORY) for name, kwargs in items]


def apply(logits, processors, ids=None):
    """Compose `processors` (as in `chain`) on logits, in the order ORDER (Hugging Face's
    order: penalties and constraints, then temperature, then the filters). ids (B, t):
    the tokens so far, needed by history processors."""
    check_logits(logits)
    for process in chain(processors):
        logits = process(logits, ids)
    return logits
