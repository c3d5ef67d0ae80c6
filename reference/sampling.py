"""Turning logits into tokens: probabilities, greedy choice and inverse-CDF sampling,
and the logits processors that reshape the distribution before a token is drawn.

All functions act on the last axis of a batch of logits (any leading shape).
Processors (temperature, top_k, top_p, typical, min_p, epsilon, eta,
repetition_penalty) return logits of the same shape, removed entries -inf and
kept entries unchanged (except where the processor rescales); `apply` composes
them in Hugging Face's order (ORDER) and `chain` makes them callables for
`reference.gpt.generate(processors=...)`. Each filter's kept set is a `keep_*`
function. Deliberate differences from Hugging Face: temperature 0 is greedy
(HF refuses it); top_p/typical keep whole tie groups and compare masses with a
relative tolerance MASS_RTOL (HF splits tie groups by sort order and compares
exactly); min_tokens_to_keep keeps ties with the n-th token (HF keeps exactly n
in top_p and min_p); p = 1 / mass = 1 are allowed (HF refuses typical(1));
context ids outside [0, V) raise (HF ignores ids >= V).
Randomness enters only as explicit uniforms `u` in [0, 1), so that every
implementation that follows this spec draws the *same* token from the same u.
"""

from __future__ import annotations

import functools
import inspect
import math

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



# ----------------------------------------------------------------------------- the decoding loop


def check_uniforms(u, shape: tuple, xp):
    """u as a float64 array of `shape` (None stays None); ValueError naming `u` otherwise."""
    if u is None:
        return None
    u = xp.asarray(u, dtype=xp.float64)
    if u.shape != tuple(shape):
        raise ValueError(f"u: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    return u


def decode(logits, cache, step, max_new_tokens: int, *, processors=(), u=None):
    """The autoregressive loop that every model's `generate` runs:

        for n = 0 .. N-1:   logits <- processors(logits)
                            x_n    <- argmax(logits)            (u is None: greedy, first index on ties)
                                      or sample(logits, u[:, n])  (inverse CDF)
                            logits, cache <- step(cache, x_n)    (not after the last token)

    logits: (B, V) the next-token logits after the prompt; cache: the model's state after the
    prompt; step(cache, tokens (B,)) -> (logits (B, V), new cache), pure; processors: callables
    (B, V) -> (B, V) applied in order; u: None or (B, N) uniforms in [0, 1) (check_uniforms).
    Returns the N new tokens, (B, N) int64.
    """
    xp = namespace(logits)
    u = check_uniforms(u, (logits.shape[0], max_new_tokens), xp)
    new = []
    for n in range(max_new_tokens):
        for process in processors:
            logits = process(logits)
        token = greedy(logits) if u is None else sample(logits, u[:, n])  # (B,)
        new.append(token[:, None])
        if n + 1 < max_new_tokens:
            logits, cache = step(cache, token)
    if not new:
        return xp.zeros((logits.shape[0], 0), dtype=xp.int64)
    return xp.concatenate(new, axis=1)  # (B, N)

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

# The order in which `apply` composes processors (Hugging Face's order).
ORDER = ("repetition_penalty", "static_repetition_penalty", "temperature", "top_k", "top_p", "min_p", "typical", "epsilon", "eta")


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


PROCESSORS = {
    "repetition_penalty": repetition_penalty,
    "static_repetition_penalty": repetition_penalty,
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
HISTORY = frozenset({"repetition_penalty"})


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
        if not isinstance(kwargs, dict):
            main = inspect.signature(PROCESSORS[name]).parameters
            first = [p for p in main if p not in ("logits", "context", "ids")][0]
            kwargs = {first: kwargs}
        if name == "repetition_penalty" and "context" in kwargs:
            raise ValueError("processors: repetition_penalty penalizes the tokens so far (prompt and generated) "
                             "and takes no context; for a fixed context use static_repetition_penalty="
                             "{'context': ..., 'penalty': ...}")
        if name == "static_repetition_penalty" and "context" not in kwargs:
            raise ValueError("processors: static_repetition_penalty needs {'context': ..., 'penalty': ...}")
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
