"""Turning logits into tokens, in torch: the twin of reference/sampling.py.

Same functions, same rules, same errors, on torch tensors (CPU or CUDA), batched
over any leading shape:

    probs(logits)      p = softmax(logits)                          float64
    greedy(logits)     argmax, the first index on ties              int64
    sample(logits, u)  the smallest i with c_i > u, c = cumsum(p)   int64 (inverse CDF)
    temperature, top_k, top_p, typical, min_p, epsilon, eta, repetition_penalty,
    keep_* (kept sets), apply, chain: the logits processors, batched without
    per-row loops, with exactly the reference's kept sets (decided in float64)
    frequency_penalty, presence_penalty, logit_bias, sequence_bias, no_repeat_ngram,
    encoder_no_repeat_ngram, bad_words, min_length, min_new_tokens, forced_bos,
    forced_eos, exponential_decay_length_penalty, suppress_tokens,
    begin_suppress_tokens, classifier_free_guidance, guidance: the reference's
    constraints, biases and penalties, batched (n-grams and bad words matched with
    one comparison per length), the same bans exactly, additions in float64

Precision. Whatever the dtype of the logits (bfloat16, float32, float64), the
probabilities and their cumulative sum are computed in float64, with the
reference's formula p = exp(x - max x) / sum exp(x - max x). In float64 the
cumulative sums therefore agree with the reference's to a few ulps, and the
sampled token differs only when u falls within those few ulps of a boundary
c_i; in low precision the token is the one the *given* logits define exactly,
not one distorted by a low-precision softmax.
"""

from __future__ import annotations

import math

import torch

from chainrule.reference import sampling as _ref


def _as_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except Exception as e:  # not array-like
        raise ValueError(f"{name}: expected a tensor, got {type(x).__name__}") from e


def check_logits(logits, name: str = "logits") -> None:
    """Raise ValueError unless `logits` is a float tensor of shape (..., V), V >= 1,
    with no NaN, no +inf, and at least one finite entry per row (as reference.sampling)."""
    logits = _as_tensor(logits, name)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name}: expected shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {logits.dtype}")
    if logits.numel() == 0:
        return
    problem = row_problem(logits.amax(dim=-1))
    if problem:
        raise ValueError(f"{name}: {problem}")


def row_problem(row_max: torch.Tensor) -> str:
    """The first problem among rows whose maxima are `row_max`, or "" (one host sync).

    A row's maximum tells all three problems apart: torch's max propagates NaN, so
    it is NaN iff the row holds a NaN; otherwise it is +inf iff the row holds +inf,
    and -inf iff every entry is -inf.
    """
    if bool(torch.isfinite(row_max).all()):
        return ""
    if bool(torch.isnan(row_max).any()):
        return "contains NaN"
    if bool((row_max == torch.inf).any()):
        return "contains +inf"
    return "a row is entirely -inf (no token can be chosen)"


def probs(logits: torch.Tensor) -> torch.Tensor:
    """p = softmax(logits) over the last axis, in float64; -inf logits get probability exactly 0."""
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    return _probs(logits)[0]


def _probs(logits: torch.Tensor):
    """(p, row max) in float64, unchecked: p = exp(x - m) / sum exp(x - m), m = max x."""
    x = logits.to(torch.float64, copy=True)  # (..., V) ours to overwrite: the same values, fewer buffers
    m = x.amax(dim=-1, keepdim=True)  # (..., 1)
    e = x.sub_(m).exp_()  # (..., V) exp(x - m)
    return e.div_(e.sum(dim=-1, keepdim=True)), m[..., 0]


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """argmax over the last axis, the *first* index on ties.  (..., V) -> (...) int64."""
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    return torch.argmax(logits, dim=-1)


def check_uniforms(u, shape: tuple, device, name: str = "u") -> torch.Tensor:
    """u as a float64 tensor on `device`; ValueError unless its shape is `shape` and 0 <= u < 1.

    NaN is rejected too (it is not in [0, 1)).
    """
    try:
        u = torch.as_tensor(u, dtype=torch.float64, device=device)
    except Exception as e:
        raise ValueError(f"{name}: expected an array of uniforms, got {type(u).__name__}") from e
    if tuple(u.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(u.shape)}")
    outside = ~((u >= 0) & (u < 1))  # NaN is outside too
    if bool(outside.any()):
        raise ValueError(f"{name}: expected uniforms in [0, 1), got {float(u[outside][0])!r}")
    return u


def sample(logits: torch.Tensor, u) -> torch.Tensor:
    """Inverse-CDF sampling: the smallest index i with  c_i > u,  where c_i = sum_{j<=i} p_j.

    logits: (..., V); u: (...) uniforms in [0, 1) (tensor or array) -> (...) int64.

    As in the reference: when rounding leaves c_{V-1} <= u, the answer is the
    last token of nonzero probability; a token of probability 0 is never
    returned. p and c are float64 whatever the dtype of the logits.
    """
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    u = check_uniforms(u, logits.shape[:-1], logits.device)
    return inverse_cdf(logits, u)[0]


def inverse_cdf(logits: torch.Tensor, u: torch.Tensor):
    """`sample` without validation or host sync, for generation loops that check once at the end:
    -> (tokens (...) int64, row max (...) float64).

    The caller has checked `u` (a tensor on the logits' device); the row max lets it check
    the logits later (see `row_problem`).
    """
    p, m = _probs(logits)  # (..., V), (...)
    cdf = torch.cumsum(p, dim=-1)  # (..., V) nondecreasing: p >= 0
    above = cdf > u[..., None]  # (..., V) bool
    first_above = torch.argmax(above.to(torch.uint8), dim=-1)  # (...) the first True; 0 if none
    none_above = ~above.gather(-1, first_above[..., None])[..., 0]  # (...)
    V = p.shape[-1]
    positions = torch.arange(V, device=p.device)  # (V,)
    last_nonzero = torch.where(p > 0, positions, 0).amax(dim=-1)  # (...)
    return torch.where(none_above, last_nonzero, first_above), m



# ----------------------------------------------------------------------------- logits processors
#
# Twins of reference.sampling's processors, batched over any leading shape with
# no per-row loop. The kept sets are decided with the reference's arithmetic:
# probabilities, masses and entropies in float64 whatever the logits' dtype, the
# same tolerance MASS_RTOL, the same tie rules. Kept entries are returned
# unchanged, in the logits' own dtype; removed ones are -inf.

MASS_RTOL = _ref.MASS_RTOL
ORDER = _ref.ORDER
_check_unit = _ref._check_unit
_check_count = _ref._check_count


def _filter(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Kept entries unchanged, the others -inf (one pass: no inverted mask)."""
    return torch.where(keep, logits, -torch.inf)


def _checked(logits) -> torch.Tensor:
    logits = _as_tensor(logits, "logits")
    check_logits(logits)
    return logits


def keep_top_k(logits, k, min_tokens_to_keep=1) -> torch.Tensor:
    """logit_i >= the k'-th largest logit of its row, k' = max(k, min_tokens_to_keep)
    (ties kept); k' >= V keeps all."""
    logits = _checked(logits)
    k = max(_check_count(k, "k"), _check_count(min_tokens_to_keep, "min_tokens_to_keep"))
    return _keep_top_k(logits, k)


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """keep_top_k on logits already checked."""
    V = logits.shape[-1]
    if k >= V:
        return torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    if k == 1:  # the largest: a max, no selection
        return logits >= logits.amax(dim=-1, keepdim=True)
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits >= kth_largest


def _at_least(logits, keep, min_tokens_to_keep):
    """keep | the min_tokens_to_keep largest logits (ties kept); `logits` already checked."""
    n = _check_count(min_tokens_to_keep, "min_tokens_to_keep")
    return keep | _keep_top_k(logits, n)


FIRST_CANDIDATES = 1024  # _kept_by_mass looks at this many smallest keys first, then 4x as many, ...


def _kept_by_mass(key: torch.Tensor, p: torch.Tensor, target: float) -> torch.Tensor:
    """Kept iff the total p of the tokens whose key is strictly smaller has not reached
    `target`: the reference's ~_reaches(_mass_before(key, p), target), the same mask,
    without sorting whole rows.

    The kept tokens are those in front of G, the first tie-group start (in stable key
    order) whose mass in front has reached `target`; i.e. key <= the key just before G.
    G is searched among the k smallest keys only (k = FIRST_CANDIDATES; the rows that
    do not find it are searched again with 4x as many, up to V). The candidates are
    put in the reference's order -- by key, ties by index -- so the masses in front of
    every group start among them are the reference's sums, term for term: all tokens
    with a key below the k-th smallest are candidates, and only group starts are read.
    """
    V = key.shape[-1]
    flat_key, flat_p = key.reshape(-1, V), p.reshape(-1, V)  # (N, V)
    threshold = torch.empty_like(flat_key[:, :1])  # (N, 1) the key of the last kept token
    rows = torch.arange(flat_key.shape[0], device=key.device)  # the rows still searching
    k = min(V, FIRST_CANDIDATES)
    while rows.numel():
        every = rows.numel() == flat_key.shape[0]
        row_key, row_p = (flat_key, flat_p) if every else (flat_key[rows], flat_p[rows])  # (n, V)
        cand = torch.topk(row_key, k, dim=-1, largest=False, sorted=False).indices  # (n, k)
        cand = torch.sort(cand, dim=-1).values  # index order: the stable sort below breaks ties by index
        sorted_key, order = torch.sort(row_key.gather(-1, cand), dim=-1, stable=True)  # (n, k)
        cum = torch.cumsum(row_p.gather(-1, cand.gather(-1, order)), dim=-1)  # (n, k)
        in_front = torch.cat([torch.zeros_like(cum[:, :1]), cum[:, :-1]], dim=-1)  # (n, k) mass in front of j
        group_start = torch.ones_like(sorted_key, dtype=torch.bool)
        group_start[:, 1:] = sorted_key[:, 1:] != sorted_key[:, :-1]
        reached = group_start & _reaches(in_front, target)  # (n, k)
        found = reached.any(dim=-1)  # (n,)
        if k == V:  # every group start seen: rows where none reached keep everything
            found = torch.ones_like(found)
        first = torch.argmax(reached.to(torch.uint8), dim=-1)  # G (>= 1: nothing is in front of position 0)
        last_kept = torch.where(reached.any(dim=-1), first - 1, k - 1)  # (n,)
        threshold[rows[found]] = sorted_key.gather(-1, last_kept[:, None])[found]
        rows = rows[~found]
        k = min(V, 4 * k)
    return (flat_key <= threshold).reshape(key.shape)


def _reaches(mass, target):
    return mass >= target * (1 - MASS_RTOL)


def keep_top_p(logits, p, min_tokens_to_keep=1) -> torch.Tensor:
    """Kept iff the mass of the strictly more probable tokens has not reached p (reference.sampling.keep_top_p)."""
    logits = _checked(logits)
    p = _check_unit(p, "p")
    prob = _probs(logits)[0]  # (..., V) float64
    keep = prob > 0 if p == 1 else _kept_by_mass(-prob, prob, p)
    return _at_least(logits, keep, min_tokens_to_keep)


def _entropy_and_log_probs(logits: torch.Tensor):
    """(H (..., 1), log p (..., V)) in float64, by the reference's formulas."""
    return _entropy_log_probs_probs(logits)[:2]


def _entropy_log_probs_probs(logits: torch.Tensor):
    """(H, log p, p) in float64; p bit for bit as `_probs` computes it.

    In place on fresh buffers (three (..., V) float64 tensors in all): the same
    operations on the same values as the reference's formulas, with fewer passes."""
    x = logits.to(torch.float64, copy=True)  # (..., V) ours to overwrite
    m = x.amax(dim=-1, keepdim=True)
    x_m = x.sub_(m)  # x - m
    e = torch.exp(x_m)
    total = e.sum(dim=-1, keepdim=True)
    log_p = x_m.sub_(torch.log(total))  # (x - m) - log sum exp(x - m)
    p = e.div_(total)  # exp(x - m) / sum exp(x - m)
    terms = torch.mul(p, log_p).masked_fill_(p <= 0, 0.0)  # p log p, tokens of probability 0 contributing 0
    return -terms.sum(dim=-1, keepdim=True), log_p, p


def keep_typical(logits, mass, min_tokens_to_keep=1) -> torch.Tensor:
    """Kept iff the mass of the tokens with a strictly smaller |H + log p| has not reached
    mass; then the min_tokens_to_keep best-scored tokens (ties kept)."""
    logits = _checked(logits)
    mass = _check_unit(mass, "mass")
    n = _check_count(min_tokens_to_keep, "min_tokens_to_keep")
    H, log_p, prob = _entropy_log_probs_probs(logits)
    score = torch.abs(H + log_p)  # (..., V), +inf where p = 0
    keep = prob > 0 if mass == 1 else _kept_by_mass(score, prob, mass)
    k = min(n, score.shape[-1])
    nth_best = torch.topk(score, k, dim=-1, largest=False).values[..., k - 1 : k]  # (..., 1) the k-th smallest
    return keep | (score <= nth_best)


def keep_min_p(logits, p, min_tokens_to_keep=1) -> torch.Tensor:
    """x_i - max_j x_j >= log p, i.e. p_i >= p * max_j p_j (decided in float64)."""
    logits = _checked(logits)
    p = _check_unit(p, "p")
    x = logits.to(torch.float64, copy=True)  # ours to overwrite
    keep = x.sub_(x.amax(dim=-1, keepdim=True)) >= math.log(p)  # x - max x >= log p
    return _at_least(logits, keep, min_tokens_to_keep)


def keep_epsilon(logits, eps, min_tokens_to_keep=1) -> torch.Tensor:
    """p_i >= eps, eps in (0, 1)."""
    logits = _checked(logits)
    eps = _check_unit(eps, "eps", closed_high=False)
    return _at_least(logits, _probs(logits)[0] >= eps, min_tokens_to_keep)


def keep_eta(logits, eps, min_tokens_to_keep=1) -> torch.Tensor:
    """p_i >= min(eps, sqrt(eps) * exp(-H)), eps in (0, 1)."""
    logits = _checked(logits)
    eps = _check_unit(eps, "eps", closed_high=False)
    H, _ = _entropy_and_log_probs(logits)
    eta_ = torch.clamp(math.sqrt(eps) * torch.exp(-H), max=eps)  # (..., 1)
    return _at_least(logits, _probs(logits)[0] >= eta_, min_tokens_to_keep)


def temperature(logits, t) -> torch.Tensor:
    """logits / t for t > 0; t = 0 keeps only the first argmax; t < 0 raises."""
    logits = _checked(logits)
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t: expected a number >= 0, got {t!r}") from None
    if not t >= 0 or t == math.inf:
        raise ValueError(f"t: expected a finite number >= 0, got {t!r}")
    if t == 0:
        positions = torch.arange(logits.shape[-1], device=logits.device)
        return _filter(logits, positions == torch.argmax(logits, dim=-1, keepdim=True))
    return logits / t


def top_k(logits, k, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_top_k(logits, k, min_tokens_to_keep))


def top_p(logits, p, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_top_p(logits, p, min_tokens_to_keep))


def typical(logits, mass, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_typical(logits, mass, min_tokens_to_keep))


def min_p(logits, p, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_min_p(logits, p, min_tokens_to_keep))


def epsilon(logits, eps, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_epsilon(logits, eps, min_tokens_to_keep))


def eta(logits, eps, min_tokens_to_keep=1) -> torch.Tensor:
    return _filter(_as_tensor(logits, "logits"), keep_eta(logits, eps, min_tokens_to_keep))


def repetition_penalty(logits, context, penalty) -> torch.Tensor:
    """x/penalty where x > 0, x*penalty where x < 0, for each distinct context token (once)."""
    logits = _checked(logits)
    try:
        penalty = float(penalty)
    except (TypeError, ValueError):
        raise ValueError(f"penalty: expected a number > 0, got {penalty!r}") from None
    if not (penalty > 0 and penalty < math.inf):
        raise ValueError(f"penalty: expected a finite number > 0, got {penalty!r}")
    context = torch.as_tensor(context, device=logits.device)
    if context.is_floating_point() or context.is_complex() or context.dtype == torch.bool:
        raise ValueError(f"context: expected integer token ids, got dtype {context.dtype}")
    lead = tuple(logits.shape[:-1])
    if context.ndim == 1:
        context = context.expand(lead + tuple(context.shape))
    if tuple(context.shape[:-1]) != lead:
        raise ValueError(f"context: expected shape {lead + ('T',)} or (T,), got {tuple(context.shape)}")
    V = logits.shape[-1]
    outside = (context < 0) | (context >= V)
    if context.numel() and bool(outside.any()):
        raise ValueError(f"context: expected token ids in [0, {V}), got {int(context[outside][0])}")
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    seen.scatter_(-1, context.to(torch.int64), True)  # distinct tokens: each penalized once
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


# ----------------------------------------------------------------------------- constraints, biases, penalties
#
# Twins of reference.sampling's constraints, biases and penalties: the same checks (the
# reference's own helpers, so the same messages), batched without per-row loops. Bans are
# masks; n-grams and bad words are matched with one comparison per n-gram / prefix length;
# additive changes (biases, penalties, the eos decay) are computed in float64 and rounded
# once to the logits' dtype, so unchanged entries stay bit for bit and a float64 result is
# the reference's. In a low-precision dtype a result that overflows it to +inf raises too.

_check_int = _ref._check_int
_check_real = _ref._check_real
_check_token = _ref._check_token
_token_ids = _ref._token_ids
_token_set = _ref._token_set
_word_list = _ref._word_list
_sequence_biases = _ref._sequence_biases


def _history(logits, ids, name: str = "ids"):
    """(logits checked, ids as rows (N, t) int64 on the logits' device), as reference.sampling._history:
    ids (..., t) integer token ids in [0, V) with the logits' leading shape, or (t,) for every row."""
    logits = _checked(logits)
    ids = _as_tensor(ids, name)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer token ids, got dtype {ids.dtype}")
    ids = ids.to(logits.device)
    lead = tuple(logits.shape[:-1])
    if ids.ndim == 1:
        ids = ids.expand(lead + tuple(ids.shape))
    if ids.ndim == 0 or tuple(ids.shape[:-1]) != lead:
        raise ValueError(f"{name}: expected shape {lead + ('t',)} or (t,), got {tuple(ids.shape)}")
    V = logits.shape[-1]
    outside = (ids < 0) | (ids >= V)
    if ids.numel() and bool(outside.any()):
        raise ValueError(f"{name}: expected token ids in [0, {V}), got {int(ids[outside][0])}")
    N = math.prod(lead)
    return logits, ids.reshape(N, ids.shape[-1]).to(torch.int64)  # (N, t)


def _check_prompt_length(value, t: int) -> int:
    return _ref._check_prompt_length(value, t)


def _token_mask(tokens, V: int, device) -> torch.Tensor:
    """(V,) bool: True at `tokens`."""
    mask = torch.zeros(V, dtype=torch.bool, device=device)
    mask[list(tokens)] = True
    return mask


def _ban(logits: torch.Tensor, banned: torch.Tensor) -> torch.Tensor:
    """-inf where banned ((N, V) or (V,) bool), the logits elsewhere."""
    if banned.ndim == 2:
        banned = banned.reshape(logits.shape)
    return torch.where(banned, -torch.inf, logits)


def _scatter_ban(logits: torch.Tensor, match: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-inf at tokens[r, j] (tokens (N, m) or (m,)) wherever match[r, j] ((N, m) bool)."""
    N, V = match.shape[0], logits.shape[-1]
    banned = torch.zeros((N, V + 1), dtype=torch.bool, device=logits.device)  # column V: the unmatched
    banned.scatter_(1, torch.where(match, tokens, V), True)
    return _ban(logits, banned[:, :V])


def _shifted(logits: torch.Tensor, shift: torch.Tensor, name: str) -> torch.Tensor:
    """logits + shift ((N, V) or (V,) float64) in float64, rounded once to the logits' dtype;
    ValueError naming `name` for a non-finite shift or a result of +inf (one host sync)."""
    out = (logits.reshape(-1, logits.shape[-1]).to(torch.float64) + shift).to(logits.dtype)
    bad_shift, overflow = torch.stack([~torch.isfinite(shift).all(), (out == torch.inf).any()]).tolist()
    if bad_shift:
        raise ValueError(f"{name}: the change to the logits overflows float64")
    if overflow:
        raise ValueError(f"{name}: a changed logit overflows to +inf")
    return out.reshape(logits.shape)


def _force(logits: torch.Tensor, tokens) -> torch.Tensor:
    """Every logit -inf except those of `tokens`, which become 0."""
    out = torch.full_like(logits, -torch.inf)
    out[..., list(tokens)] = 0.0
    return out


def _completed(rows: torch.Tensor, sequences: list) -> tuple:
    """Which sequences each row's ids are about to complete: (match (N, K) bool, last (K,) int64),
    match[r, j] iff rows[r] ends with sequences[j][:-1]; one comparison per prefix length."""
    N, t = rows.shape
    match = torch.zeros((N, len(sequences)), dtype=torch.bool, device=rows.device)
    by_length: dict = {}
    for j, s in enumerate(sequences):
        by_length.setdefault(len(s) - 1, []).append(j)
    for L, js in by_length.items():
        if L > t:
            continue  # the ids are shorter than the prefix
        prefixes = torch.tensor([sequences[j][:-1] for j in js], dtype=torch.int64, device=rows.device)
        match[:, js] = (rows[:, None, t - L :] == prefixes.reshape(len(js), L)[None]).all(dim=-1)  # (N, |js|)
    last = torch.tensor([s[-1] for s in sequences], dtype=torch.int64, device=rows.device)  # (K,)
    return match, last


def no_repeat_ngram(logits, ids, n) -> torch.Tensor:
    """Ban each token that would complete an n-gram already in the row's ids (reference.sampling.no_repeat_ngram)."""
    logits, rows = _history(logits, ids)
    n = _check_count(n, "n")
    t = rows.shape[1]
    if t < n:
        return logits.clone()
    windows = rows.unfold(1, n, 1)  # (N, t-n+1, n) every n-gram of ids
    prefix = rows[:, t - n + 1 :]  # (N, n-1) the last n-1 ids
    match = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)  # (N, t-n+1)
    return _scatter_ban(logits, match, windows[..., -1])


def encoder_no_repeat_ngram(logits, ids, n, encoder_ids) -> torch.Tensor:
    """Ban each token that would complete an n-gram of the row's encoder_ids (reference.sampling.encoder_no_repeat_ngram)."""
    logits, rows = _history(logits, ids)
    _, source = _history(logits, encoder_ids, "encoder_ids")
    n = _check_count(n, "n")
    t, S = rows.shape[1], source.shape[1]
    if t < n - 1 or S < n:
        return logits.clone()
    windows = source.unfold(1, n, 1)  # (N, S-n+1, n) every n-gram of the encoder ids
    prefix = rows[:, t - n + 1 :]  # (N, n-1)
    match = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)  # (N, S-n+1)
    return _scatter_ban(logits, match, windows[..., -1])


def bad_words(logits, ids, bad_words_ids, eos_token_id=None) -> torch.Tensor:
    """Ban the last token of each bad word whose other tokens end the row's ids (reference.sampling.bad_words)."""
    logits, rows = _history(logits, ids)
    V = logits.shape[-1]
    words = _word_list(bad_words_ids, V, "bad_words_ids")
    eos = () if eos_token_id is None else _token_set(eos_token_id, V, "eos_token_id")
    words = [w for w in words if not (len(w) == 1 and w[0] in eos)]
    if not words:
        return logits.clone()
    match, last = _completed(rows, words)
    return _scatter_ban(logits, match, last.expand(match.shape))


def sequence_bias(logits, ids, sequence_bias) -> torch.Tensor:
    """Add each sequence's bias to its last token when the row's ids end with its other tokens
    (reference.sampling.sequence_bias); in float64, rounded once to the logits' dtype."""
    logits, rows = _history(logits, ids)
    biases = _sequence_biases(sequence_bias, logits.shape[-1])
    match, last = _completed(rows, [s for s, _ in biases])
    b = torch.tensor([b for _, b in biases], dtype=torch.float64, device=logits.device)  # (K,)
    shift = torch.zeros((rows.shape[0], logits.shape[-1]), dtype=torch.float64, device=logits.device)  # (N, V)
    shift.index_add_(1, last, torch.where(match, b, 0.0))
    return _shifted(logits, shift, "sequence_bias")


def min_length(logits, ids, min_length, eos_token_id) -> torch.Tensor:
    """eos -> -inf while t < min_length (reference.sampling.min_length)."""
    logits, rows = _history(logits, ids)
    min_length = _check_int(min_length, "min_length", 0)
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    if rows.shape[1] >= min_length:
        return logits.clone()
    return _ban(logits, _token_mask(eos, logits.shape[-1], logits.device))


def min_new_tokens(logits, ids, prompt_length, min_new_tokens, eos_token_id) -> torch.Tensor:
    """eos -> -inf while t - prompt_length < min_new_tokens (reference.sampling.min_new_tokens)."""
    logits, rows = _history(logits, ids)
    t = rows.shape[1]
    prompt_length = _check_prompt_length(prompt_length, t)
    min_new_tokens = _check_int(min_new_tokens, "min_new_tokens", 0)
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    if t - prompt_length >= min_new_tokens:
        return logits.clone()
    return _ban(logits, _token_mask(eos, logits.shape[-1], logits.device))


def forced_bos(logits, ids, bos_token_id) -> torch.Tensor:
    """At t = 1: 0 for bos_token_id, -inf elsewhere (reference.sampling.forced_bos)."""
    logits, rows = _history(logits, ids)
    bos = _check_token(bos_token_id, logits.shape[-1], "bos_token_id")
    return _force(logits, (bos,)) if rows.shape[1] == 1 else logits.clone()


def forced_eos(logits, ids, max_length, eos_token_id) -> torch.Tensor:
    """At t = max_length - 1: 0 for the eos ids, -inf elsewhere (reference.sampling.forced_eos)."""
    logits, rows = _history(logits, ids)
    max_length = _check_count(max_length, "max_length")
    eos = _token_set(eos_token_id, logits.shape[-1], "eos_token_id")
    return _force(logits, eos) if rows.shape[1] == max_length - 1 else logits.clone()


def exponential_decay_length_penalty(logits, ids, start_index, decay_factor, prompt_length, eos_token_id) -> torch.Tensor:
    """x_e + |x_e| (decay_factor^k - 1) for the eos ids, k = t - (prompt_length + start_index) > 0
    (reference.sampling.exponential_decay_length_penalty)."""
    logits, rows = _history(logits, ids)
    t = rows.shape[1]
    start_index = _check_int(start_index, "start_index", 0)
    decay_factor = _check_real(decay_factor, "decay_factor", positive=True)
    prompt_length = _check_prompt_length(prompt_length, t)
    eos = list(_token_set(eos_token_id, logits.shape[-1], "eos_token_id"))
    k = t - (prompt_length + start_index)
    if k <= 0:
        return logits.clone()
    try:
        growth = decay_factor**k - 1.0
    except OverflowError:
        raise ValueError(f"decay_factor: decay_factor ** {k} overflows float64") from None
    x_e = logits.reshape(-1, logits.shape[-1])[:, eos].to(torch.float64)  # (N, E)
    finite = torch.isfinite(x_e)
    shift = torch.zeros((rows.shape[0], logits.shape[-1]), dtype=torch.float64, device=logits.device)  # (N, V)
    shift[:, eos] = torch.where(finite, torch.where(finite, x_e, 0.0).abs() * growth, 0.0)
    return _shifted(logits, shift, "decay_factor")


def suppress_tokens(logits, tokens) -> torch.Tensor:
    """-inf for every token of `tokens` (reference.sampling.suppress_tokens)."""
    logits = _checked(logits)
    banned = _token_set(tokens, logits.shape[-1], "tokens", allow_empty=True)
    return _ban(logits, _token_mask(banned, logits.shape[-1], logits.device))


def begin_suppress_tokens(logits, ids, tokens, begin_index) -> torch.Tensor:
    """-inf for every token of `tokens` when t = begin_index (reference.sampling.begin_suppress_tokens)."""
    logits, rows = _history(logits, ids)
    banned = _token_set(tokens, logits.shape[-1], "tokens", allow_empty=True)
    begin_index = _check_int(begin_index, "begin_index", 0)
    if rows.shape[1] != begin_index:
        return logits.clone()
    return _ban(logits, _token_mask(banned, logits.shape[-1], logits.device))


def _generated_counts(logits, ids, prompt_length):
    """(logits checked, counts (N, V) float64 of each token in ids[..., prompt_length:])."""
    logits, rows = _history(logits, ids)
    prompt_length = _check_prompt_length(prompt_length, rows.shape[1])
    generated = rows[:, prompt_length:]  # (N, t - prompt_length)
    counts = torch.zeros((rows.shape[0], logits.shape[-1]), dtype=torch.float64, device=logits.device)
    counts.scatter_add_(1, generated, torch.ones(generated.shape, dtype=torch.float64, device=logits.device))
    return logits, counts


def frequency_penalty(logits, ids, penalty, prompt_length=0) -> torch.Tensor:
    """x_v - penalty * count_v over the generated tokens (reference.sampling.frequency_penalty)."""
    logits, counts = _generated_counts(logits, ids, prompt_length)
    penalty = _check_real(penalty, "penalty")
    return _shifted(logits, counts.mul_(-penalty), "penalty")


def presence_penalty(logits, ids, penalty, prompt_length=0) -> torch.Tensor:
    """x_v - penalty * [count_v > 0] over the generated tokens (reference.sampling.presence_penalty)."""
    logits, counts = _generated_counts(logits, ids, prompt_length)
    penalty = _check_real(penalty, "penalty")
    return _shifted(logits, -penalty * (counts > 0).to(torch.float64), "penalty")


def logit_bias(logits, bias) -> torch.Tensor:
    """x_v + bias[v] for the tokens of the dict `bias` (reference.sampling.logit_bias)."""
    logits = _checked(logits)
    if not isinstance(bias, dict):
        raise ValueError(f"bias: expected a dict {{token id: finite number}}, got {type(bias).__name__}")
    V = logits.shape[-1]
    pairs = [(_check_token(token, V, "bias"), _check_real(b, "bias")) for token, b in bias.items()]
    shift = torch.zeros(V, dtype=torch.float64, device=logits.device)  # (V,)
    if pairs:
        index = torch.tensor([v for v, _ in pairs], dtype=torch.int64, device=logits.device)
        shift.index_put_((index,), torch.tensor([b for _, b in pairs], dtype=torch.float64, device=logits.device),
                         accumulate=True)  # fmt: skip
    return _shifted(logits, shift, "bias")


def _log_softmax64(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.to(torch.float64), dim=-1)


def classifier_free_guidance(logits, unconditional_logits, scale) -> torch.Tensor:
    """u + scale (c - u) with c, u the log_softmax of the two passes, in float64; -inf where
    either is -inf (reference.sampling.classifier_free_guidance). Returned in the logits' dtype."""
    logits = _checked(logits)
    unconditional_logits = _as_tensor(unconditional_logits, "unconditional_logits")
    check_logits(unconditional_logits, "unconditional_logits")
    if tuple(unconditional_logits.shape) != tuple(logits.shape):
        raise ValueError(f"unconditional_logits: expected shape {tuple(logits.shape)}, "
                         f"got {tuple(unconditional_logits.shape)}")  # fmt: skip
    scale = _check_real(scale, "scale")
    c = _log_softmax64(logits)
    if scale == 1:
        return c.to(logits.dtype)
    u = _log_softmax64(unconditional_logits.to(logits.device))
    both = torch.isfinite(c) & torch.isfinite(u)
    c0, u0 = torch.where(both, c, 0.0), torch.where(both, u, 0.0)  # no -inf - (-inf)
    out = torch.where(both, u0 + scale * (c0 - u0), -torch.inf).to(logits.dtype)
    if bool(((out == torch.inf) | torch.isnan(out)).any()):
        raise ValueError(f"scale: u + scale * (c - u) overflows for scale = {scale!r}")
    return out


def guidance(logits, ids, scale, unconditional) -> torch.Tensor:
    """classifier_free_guidance(logits, unconditional(ids), scale); scale = 1 gives log_softmax(logits)
    without calling `unconditional` (reference.sampling.guidance)."""
    logits, _ = _history(logits, ids)
    scale = _check_real(scale, "scale")
    if not callable(unconditional):
        raise ValueError(f"unconditional: expected a callable ids -> unconditional logits, "
                         f"got {type(unconditional).__name__}")  # fmt: skip
    if scale == 1:
        return _log_softmax64(logits).to(logits.dtype)
    return classifier_free_guidance(logits, unconditional(ids), scale)


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
HISTORY = _ref.HISTORY  # the history processors: function(logits, ids, ...)
assert PROCESSORS.keys() == _ref.PROCESSORS.keys()


def chain(processors):
    """As reference.sampling.chain, with these torch functions: callables for fast.gpt.generate."""
    return _ref.chain(processors, table=PROCESSORS)


def apply(logits, processors, ids=None) -> torch.Tensor:
    """Compose `processors` in the order ORDER (as reference.sampling.apply)."""
    logits = _checked(logits)
    for process in chain(processors):
        logits = process(logits, ids)
    return logits
