"""Turning logits into tokens, in torch: the twin of reference/sampling.py.

Same functions, same rules, same errors, on torch tensors (CPU or CUDA), batched
over any leading shape:

    probs(logits)      p = softmax(logits)                          float64
    greedy(logits)     argmax, the first index on ties              int64
    sample(logits, u)  the smallest i with c_i > u, c = cumsum(p)   int64 (inverse CDF)
    temperature, top_k, top_p, typical, min_p, epsilon, eta, repetition_penalty,
    keep_* (kept sets), apply, chain: the logits processors, batched without
    per-row loops, with exactly the reference's kept sets (decided in float64)

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



# ----------------------------------------------------------------------------- the decoding loop


def decode(logits: torch.Tensor, step, prompt: torch.Tensor, max_new_tokens: int, *, processors=(), u=None):
    """reference.sampling.decode for the fast models' `generate`, without a host sync per token.

    logits: (B, V) after the prompt (float64 for float64 models; anything else is processed in
    float32); step(tokens (B,)) -> the next logits (B, V), advancing the model's cache in place;
    prompt: (B, T0) checked int64 tokens; u: None or (B, N) uniforms already checked
    (check_uniforms) on the logits' device. The logits are validated once, after the loop (the
    loop's one host sync): a NaN or all -inf row raises ValueError naming the step.
    Returns (B, T0 + N) int64: the prompt followed by the new tokens. Call under inference_mode.
    """
    B, T0 = prompt.shape
    V, N = logits.shape[-1], int(max_new_tokens)
    logits_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    out = torch.empty((B, T0 + N), dtype=torch.int64, device=logits.device)  # (B, T0+N)
    out[:, :T0] = prompt
    row_max = torch.empty((N, B), dtype=torch.float64, device=logits.device)  # to validate the logits
    for n in range(N):
        logits = logits.to(logits_dtype)
        for process in processors:
            logits = process(logits)
        if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and logits.shape == (B, V)):
            got = f"{logits.dtype} {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits)
            raise ValueError(f"processors: expected floating logits of shape {(B, V)}, got {got}")
        if u is None:
            m, token = torch.max(logits, dim=-1)  # (B,), (B,): the first index on ties
        else:
            token, m = inverse_cdf(logits, u[:, n])
        row_max[n].copy_(m)
        out.select(1, T0 + n).copy_(token)
        if n + 1 < N:
            logits = step(token)  # (B, V)
    bad = ~torch.isfinite(row_max).all(dim=1)  # (N,)
    if bool(bad.any()):  # the one host sync of the loop
        n = int(bad.nonzero()[0, 0])
        raise ValueError(f"logits: {row_problem(row_max[n])} (generation step {n}, after processors)")
    return out

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


def chain(processors):
    """As reference.sampling.chain, with these torch functions: callables for fast.gpt.generate."""
    return _ref.chain(processors, table=PROCESSORS)


def apply(logits, processors, ids=None) -> torch.Tensor:
    """Compose `processors` in the order ORDER (as reference.sampling.apply)."""
    logits = _checked(logits)
    for process in chain(processors):
        logits = process(logits, ids)
    return logits
