"""Speculative decoding (speculative sampling): a cheap draft model proposes k tokens, the target
model checks them all in one pass, and the output is distributed *exactly* as the target's.

Leviathan, Kalman & Matias 2023, "Fast Inference from Transformers via Speculative Decoding"
(ICML); Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative Sampling".

Models are callables on a 1-D int sequence:  target(seq) -> p,  draft(seq) -> q, the next-token
probability vectors (V,) after seq, *already processed* (temperature, top-k, ...: the same
processors for both). Any model fits: `gpt_model` wraps a reference GPT, a dict of tables does,
so does a user's model.

One speculative step from a sequence s (Leviathan et al., Algorithm 1):

    for i = 1..k:   q_i = draft(s + x_1..x_{i-1}),   x_i ~ q_i                    (draft k tokens)
    for i = 1..k+1: p_i = target(s + x_1..x_{i-1})                (one target pass, k+1 positions)
    for i = 1..k:   accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
                    at the first rejection emit  y ~ norm(max(0, p_i - q_i))  and stop
    all k accepted: emit the bonus token  y ~ p_{k+1}

It emits 1..k+1 tokens, and every emitted token is distributed as the target's next token given
the tokens before it: P(emit x) = q(x) min(1, p/q) + (sum_z max(0, q(z) - p(z))) * max(0, p(x) - q(x)) / Z
= min(p, q)(x) + max(0, p(x) - q(x)) = p(x), since Z = sum max(0, p - q) = sum max(0, q - p).

The degenerate cases, defined:
- p == q (at a position): p(x)/q(x) = 1 > r for every uniform r in [0, 1), so the token is always
  accepted; the residual max(0, p - q) = 0 (whose normalization would be 0/0) is never reached.
- q(x) = 0: x is never proposed (inverse-CDF sampling never returns a token of probability 0),
  so the ratio p(x)/0 is never formed.
- p(x) = 0 < q(x): the ratio is 0, never above r: x is always rejected; the residual has
  max(0, 0 - q(x)) = 0 at x, so x is never emitted.
- a residual that vanishes in floating point (p and q equal up to rounding, yet p(x) < q(x) by an
  ulp): the token is then drawn from p itself. In exact arithmetic this branch has probability
  sum max(0, q - p) = 0; in floating point it is an event of probability ~1e-16 whose target is p.

Randomness: explicit uniforms, so that every implementation of this spec emits the same tokens
from the same numbers. One step consumes one row u of UNIFORMS_PER_STEP(k) = 2k + 1 uniforms in
[0, 1) (the *uniform layout*):

    u[0 : k]     the draft's k proposals:      x_i = inverse_cdf(q_i, u[i-1])
    u[k : 2k]    the k acceptance tests:       accept x_i  iff  u[k+i-1] < p_i(x_i) / q_i(x_i)
    u[2k]        the emitted last token:       y = inverse_cdf(residual or p_{k+1}, u[2k])

(uniforms after a rejection go unused). `inverse_cdf(w, u)` is the smallest i with
cumsum(w)_i > u * sum(w), on nonnegative weights w (so the residual needs no normalization);
when rounding leaves no such i, the last i with w_i > 0.

End of sequence (the convention of every decoder here, HF's): `eos_token_id` is None, a token
id, or a sequence of ids (several ends); `pad_token_id` (default: the first eos id) fills what
follows an end. `generate` stops at the first eos it *emits* (one in the prefix does not
count): that eos is kept, the tokens after it in the same step's block (accepted drafts, the
residual/bonus token) are discarded, and nothing more is emitted. Cutting is a deterministic
function of the emitted stream, so the output stays exact: with y the stream without eos,

    P(output = y_1..y_e, pad..pad) = prod_{t <= e} p(y_t | prefix, y_<t)     (y_e the first eos)

the target's chain rule stopped at its first eos (`target_distribution` and
`exact_output_distribution` with eos_token_id enumerate both sides). `check_eos` (the checks of
reference.generation, which plain generation uses) and `cut_at_eos` are the rules every decoder
here shares (reference/medusa.py, reference/parallel_decoding.py, and the fast twins).

Also: `exact_output_distribution` (the oracle: the probability of every sequence of the first
`length` emitted tokens by enumerating every proposal and accept/reject branch),
`acceptance_rate`, `expected_tokens_per_step`, `expected_speedup` (the paper's analysis).
"""

from __future__ import annotations

import math

import numpy

from chainrule.reference import generation, gpt, sampling
from chainrule.reference.xp import namespace

# Input probability vectors must sum to 1 within this (they are probabilities, not weights).
NORMALIZATION_ATOL = 1e-9


def uniforms_per_step(k: int) -> int:
    """The number of uniforms one speculative step consumes: k proposals, k tests, 1 final token."""
    return 2 * _check_k(k) + 1


# ----------------------------------------------------------------------------- validation


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, numpy.integer)) or k < 1:
        raise ValueError(f"k: expected an int >= 1 (draft tokens per step), got {k!r}")
    return int(k)


def check_probs(p, name: str, V: int | None = None):
    """p as a float64 (V,) vector; ValueError unless it is finite, >= 0, sums to 1 (NORMALIZATION_ATOL)
    and (when V is given) has V entries."""
    xp = namespace(p)
    p = xp.asarray(p)
    if p.ndim != 1 or p.shape[0] < 1:
        raise ValueError(f"{name}: expected a probability vector of shape (V,), got shape {tuple(p.shape)}")
    if V is not None and p.shape[0] != V:
        raise ValueError(f"{name}: expected shape ({V},) (the vocabulary of the other model), got {tuple(p.shape)}")
    if p.dtype.kind != "f":
        raise ValueError(f"{name}: expected floating probabilities, got dtype {p.dtype}")
    p = p.astype(xp.float64, copy=False)
    if not bool((xp.isfinite(p) & (p >= 0)).all()):
        raise ValueError(f"{name}: expected finite probabilities >= 0, got {p.tolist()}")
    total = float(p.sum())
    if abs(total - 1) > NORMALIZATION_ATOL:
        raise ValueError(f"{name}: expected probabilities summing to 1, got a sum of {total!r}")
    return p


def _check_prefix(prefix):
    """prefix as a 1-D int64 array (an empty list is the empty prefix)."""
    prefix = numpy.asarray(prefix) if not hasattr(prefix, "ndim") else prefix
    if prefix.ndim == 1 and prefix.shape[0] == 0:
        return prefix.astype(namespace(prefix).int64)
    if getattr(prefix.dtype, "kind", None) not in ("i", "u") or prefix.ndim != 1:
        raise ValueError(f"prefix: expected a 1-D integer array, got dtype {prefix.dtype}, shape {tuple(prefix.shape)}")
    return prefix.astype(namespace(prefix).int64)


def _models(target, draft):
    for name, fn in (("target", target), ("draft", draft)):
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable seq -> probabilities (V,), got {type(fn).__name__}")


def _probs_of(model, name: str, seq, V: int | None):
    try:
        return check_probs(model(seq), name, V)
    except ValueError as error:  # name the context too
        raise ValueError(f"{name}({list(map(int, seq))}){str(error)[len(name):]}") from None


def check_eos(eos_token_id, pad_token_id, vocab_size: int):
    """The end-of-sequence arguments of every decoder here (speculative, Medusa, Jacobi, lookahead),
    checked as reference.generation checks them for plain generation
    -> (eos ids: a tuple, empty for None; pad id: pad_token_id, else the first eos id, else None).

    eos_token_id: None, a token id, or a non-empty sequence of token ids; pad_token_id: None or a
    token id; token ids are ints in [0, vocab_size). Else ValueError whose message starts with
    the argument's name ("eos_token_id: ...", "pad_token_id: ...")."""
    eos = generation.check_token_ids(eos_token_id, vocab_size, "eos_token_id")
    return eos, generation.check_pad(pad_token_id, eos, vocab_size)


def cut_at_eos(tokens, eos) -> tuple[tuple[int, ...], bool]:
    """A block of emitted tokens cut after its first eos -> (tokens up to and including it, True),
    or (all the tokens, False) when it holds none.  eos: a tuple of ids (empty: never ends)."""
    tokens = tuple(int(t) for t in tokens)
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens, False


# ----------------------------------------------------------------------------- one step


def inverse_cdf(w, u: float) -> int:
    """The smallest i with cumsum(w)_i > u * sum(w), for weights w (V,) >= 0 with a positive sum
    and u in [0, 1); the last i with w_i > 0 when rounding leaves none. Never an i with w_i = 0."""
    xp = namespace(w)
    c = xp.cumsum(w)  # (V,)
    above = c > u * c[-1]
    if bool(above.any()):
        return int(xp.argmax(above))
    return int(xp.nonzero(w > 0)[0][-1])


def residual(p, q):
    """The distribution of the token emitted after a rejection, as weights (V,):
    max(0, p - q) (normalized by inverse_cdf), or p itself when that vanishes (see the module)."""
    xp = namespace(p)
    r = xp.maximum(p - q, 0.0)
    return r if float(xp.sum(r)) > 0 else p


def _uniforms(k: int, rng, u):
    n = 2 * k + 1
    if (rng is None) == (u is None):
        raise ValueError("rng, u: expected exactly one of a numpy Generator and explicit uniforms")
    if u is None:
        if not isinstance(rng, numpy.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        return rng.random(n)
    u = numpy.asarray(u, dtype=numpy.float64) if not hasattr(u, "ndim") else u
    if tuple(u.shape) != (n,):
        raise ValueError(f"u: expected shape ({n},) = (2k + 1,), got {tuple(u.shape)}")
    if not bool(namespace(u).all((u >= 0) & (u < 1))):
        raise ValueError(f"u: expected uniforms in [0, 1), got {u.tolist()}")
    return u


def speculative_step(target, draft, prefix, k: int, rng=None, *, u=None):
    """One speculative step (Leviathan et al. 2023, Algorithm 1; module docstring) -> emitted tokens
    (n,) int64, 1 <= n <= k + 1; the first n - 1 are accepted draft tokens.

    target, draft: callables seq (T,) int -> probabilities (V,); prefix: (T,) int, T >= 0.
    Randomness: rng (a numpy Generator; draws u = rng.random(2k + 1)) or explicit u (2k + 1,)
    in the module's uniform layout.
    """
    _models(target, draft)
    k = _check_k(k)
    u = _uniforms(k, rng, u)
    return _step(target, draft, _check_prefix(prefix), k, u)[0]


def _step(target, draft, seq, k: int, u):
    """speculative_step on checked arguments -> (emitted tokens (n,) int64, V)."""
    xp = namespace(seq)
    drafted, qs = [], []
    for i in range(k):  # draft k tokens, each from the q it was drawn from
        q = _probs_of(draft, "draft", seq, qs[0].shape[0] if qs else None)
        x = inverse_cdf(q, float(u[i]))
        drafted.append(x)
        qs.append(q)
        seq = xp.concatenate([seq, xp.asarray([x], dtype=xp.int64)])
    V = qs[0].shape[0]
    base = seq.shape[0] - k
    for i in range(k):  # the target's p_i at the same prefixes (one pass in a batched implementation)
        p = _probs_of(target, "target", seq[: base + i], V)
        x, q = drafted[i], qs[i]
        if not float(u[k + i]) < float(p[x]) / float(q[x]):  # rejected: emit from the residual
            y = inverse_cdf(residual(p, q), float(u[2 * k]))
            return xp.asarray(drafted[:i] + [y], dtype=xp.int64), V
    p = _probs_of(target, "target", seq, V)  # all k accepted: the bonus token from p_{k+1}
    return xp.asarray(drafted + [inverse_cdf(p, float(u[2 * k]))], dtype=xp.int64), V


def generate(target, draft, prefix, k: int, max_new_tokens: int, rng=None, *, u=None, eos_token_id=None,
             pad_token_id=None):  # fmt: skip
    """Speculative generation of one sequence: steps until max_new_tokens are emitted (the last
    block cut to them) or an eos is emitted
    -> (tokens (T + n,) int64: the prefix then the n <= max_new_tokens new tokens,
        accepted (steps,) int64: draft tokens accepted at each step run, in 0..k).

    Randomness: rng, or u (max_new_tokens, 2k + 1): step s consumes row u[s] (each step emits at
    least one token, so there are at most max_new_tokens steps; unused rows are ignored).
    End of sequence (module docstring): eos_token_id (an id or a sequence of ids in [0, V)) ends
    the sequence at the first eos emitted, kept as the last token (n < max_new_tokens then); the
    tokens after it in that step's block are discarded. accepted[s] is what step s's
    verification accepted, counting accepted drafts that a cut (at eos or at max_new_tokens)
    discarded. pad_token_id (default the first eos id) is checked but unused: one sequence
    needs no padding (fast.speculative pads a batch with it). The range [0, V) is checked once
    the models have given V (with max_new_tokens = 0 and an eos or pad id: one target call).
    """
    k = _check_k(k)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, numpy.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    seq = _check_prefix(prefix)
    _models(target, draft)
    if (rng is None) == (u is None):
        raise ValueError("rng, u: expected exactly one of a numpy Generator and explicit uniforms")
    if u is None and not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if u is not None:
        u = numpy.asarray(u, dtype=numpy.float64) if not hasattr(u, "ndim") else u
        if tuple(u.shape) != (max_new_tokens, 2 * k + 1):
            raise ValueError(f"u: expected shape {(max_new_tokens, 2 * k + 1)} = (max_new_tokens, 2k + 1), "
                             f"got {tuple(u.shape)}")  # fmt: skip
        if not bool(namespace(u).all((u >= 0) & (u < 1))):  # every row, used or not (as fast.speculative)
            raise ValueError(f"u: expected uniforms in [0, 1), got {u.tolist()}")
    xp = namespace(seq)
    T0, accepted, s, ended = seq.shape[0], [], 0, False
    eos = ()
    if max_new_tokens == 0 and (eos_token_id is not None or pad_token_id is not None):  # V from one target call
        check_eos(eos_token_id, pad_token_id, _probs_of(target, "target", seq, None).shape[0])
    while seq.shape[0] - T0 < max_new_tokens and not ended:
        row = _uniforms(k, rng, None) if u is None else _uniforms(k, None, u[s])
        emitted, V = _step(target, draft, seq, k, row)
        if s == 0:  # the models have given V
            eos, _ = check_eos(eos_token_id, pad_token_id, V)
        accepted.append(emitted.shape[0] - 1)
        block, ended = cut_at_eos(emitted[: max_new_tokens - (seq.shape[0] - T0)].tolist(), eos)
        seq = xp.concatenate([seq, xp.asarray(block, dtype=xp.int64)])
        s += 1
    return seq, xp.asarray(accepted, dtype=xp.int64)


# ----------------------------------------------------------------------------- the exact distribution


class _Memo:
    """A model's probabilities per sequence, each computed (and checked) once."""

    def __init__(self, model, name: str):
        self.model, self.name, self.V, self.cache = model, name, None, {}

    def __call__(self, seq: tuple):
        if seq not in self.cache:
            self.cache[seq] = _probs_of(self.model, self.name, numpy.asarray(seq, dtype=numpy.int64), self.V)
            self.V = self.cache[seq].shape[0]
        return self.cache[seq]


def _step_branches(target, draft, seq: tuple, k: int, need: int):
    """Every way one speculative step from seq decides its first `need` emitted tokens ->
    list of (tokens tuple, probability), tokens of length <= need (< need only when the step
    emitted fewer). Branches are cut once `need` tokens are decided: whatever the step does
    afterwards has total probability 1 and does not change them."""
    out = []

    def walk(i: int, s: tuple, prob: float, emitted: tuple):
        if len(emitted) == need:
            out.append((emitted, prob))
            return
        p = target(s)
        if i == k:  # all k accepted: the bonus token from p_{k+1}
            out.extend((emitted + (y,), prob * p[y]) for y in range(p.shape[0]) if p[y] > 0)
            return
        q = draft(s)
        res = residual(p, q)
        res = res / math.fsum(res)
        for x in range(q.shape[0]):
            if q[x] == 0:  # never proposed
                continue
            a = min(1.0, p[x] / q[x])  # P(u < p/q) for u ~ U[0, 1)
            if a > 0:  # accepted: on to the next draft position
                walk(i + 1, s + (x,), prob * q[x] * a, emitted + (x,))
            if a < 1:  # rejected: the step ends with a token from the residual
                reject = prob * q[x] * (1 - a)
                out.extend((emitted + (y,), reject * res[y]) for y in range(res.shape[0]) if res[y] > 0)

    walk(0, seq, 1.0, ())
    return out


def _check_length(length) -> int:
    if isinstance(length, bool) or not isinstance(length, (int, numpy.integer)) or length < 1:
        raise ValueError(f"length: expected an int >= 1, got {length!r}")
    return int(length)


def exact_output_distribution(target, draft, prefix, k: int, length: int, *, eos_token_id=None,
                              pad_token_id=None):  # fmt: skip
    """The exact probability of every sequence of the first `length` tokens speculative decoding
    emits after prefix -> (V,) * length float64 array, P[y_1, ..., y_length].

    Enumerates every draft proposal and every accept/reject branch of as many speculative steps
    as it takes to emit `length` tokens (module docstring: the step; the probability of a
    proposal x is q(x), of its acceptance min(1, p(x)/q(x))). This is the oracle of the method:
    it equals the target's chain rule `target_distribution(target, prefix, length)`, to rounding.
    With eos_token_id, each step's block is cut after its first eos as `generate` cuts it
    (`cut_at_eos`) and the positions after the eos hold pad_token_id (default: the first eos id):
    then it equals `target_distribution(..., eos_token_id=..., pad_token_id=...)`.
    Cost: O((V * 2)^length) model calls at most (memoized), for tiny V and length.
    """
    _models(target, draft)
    k = _check_k(k)
    length = _check_length(length)
    seq = tuple(int(t) for t in _check_prefix(prefix))
    t_memo, d_memo = _Memo(target, "target"), _Memo(draft, "draft")
    V = t_memo(seq).shape[0]
    eos, pad = check_eos(eos_token_id, pad_token_id, V)
    d_memo.V = V
    out = numpy.zeros((V,) * length)

    def emit(s: tuple, emitted: tuple, prob: float):
        for block, pb in _step_branches(t_memo, d_memo, s, k, length - len(emitted)):
            block, ended = cut_at_eos(block, eos)
            if ended:  # the sequence stops: pad after its eos
                out[emitted + block + (pad,) * (length - len(emitted) - len(block))] += prob * pb
            elif len(emitted) + len(block) == length:
                out[emitted + block] += prob * pb
            else:
                emit(s + block, emitted + block, prob * pb)

    emit(seq, (), 1.0)
    return out


def target_distribution(target, prefix, length: int, *, eos_token_id=None, pad_token_id=None):
    """The target's own distribution of the next `length` tokens by the chain rule ->
    (V,) * length float64: P[y_1..y_n] = prod_t target(prefix + y_<t)[y_t].

    With eos_token_id (an id or several), the sequence stops at its first eos y_e:
    P[y_1..y_e, pad, .., pad] = prod_{t <= e} target(prefix + y_<t)[y_t], and every sequence
    with a non-pad token after its first eos has probability 0 (pad_token_id: default the
    first eos id)."""
    if not callable(target):
        raise TypeError(f"target: expected a callable seq -> probabilities (V,), got {type(target).__name__}")
    length = _check_length(length)
    memo = _Memo(target, "target")
    seq = tuple(int(t) for t in _check_prefix(prefix))
    V = memo(seq).shape[0]
    eos, pad = check_eos(eos_token_id, pad_token_id, V)
    out = numpy.zeros((V,) * length)
    for ys in numpy.ndindex(*out.shape):
        prob = 1.0
        for t in range(length):
            prob *= memo(seq + ys[:t])[ys[t]]
            if prob == 0:
                break
            if ys[t] in eos:  # the end: what follows must be padding
                prob = prob if all(y == pad for y in ys[t + 1 :]) else 0.0
                break
        out[ys] = prob
    return out


# ----------------------------------------------------------------------------- the analysis


def acceptance_rate(p, q):
    """alpha = E_{x~q} min(1, p(x)/q(x)) = sum_x min(p(x), q(x)) = 1 - TV(p, q)
    (Leviathan et al. 2023, Definition 3.1 and Corollary 3.6).  p, q: (..., V) -> (...)."""
    xp = namespace(p)
    p, q = xp.asarray(p, dtype=xp.float64), xp.asarray(q, dtype=xp.float64)
    if p.shape != q.shape or p.ndim < 1:
        raise ValueError(f"p, q: expected the same shape (..., V), got {tuple(p.shape)} and {tuple(q.shape)}")
    for name, a in (("p", p), ("q", q)):
        if not bool(xp.all(xp.isfinite(a))) or bool(xp.any(a < 0)):
            raise ValueError(f"{name}: expected finite probabilities >= 0")
        sums = xp.sum(a, axis=-1)
        if bool(xp.any(xp.abs(sums - 1) > NORMALIZATION_ATOL)):
            raise ValueError(f"{name}: expected probabilities summing to 1, got a sum of {float(sums.ravel()[0])!r}")
    return xp.sum(xp.minimum(p, q), axis=-1)


def _check_alpha(alpha) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}") from None
    if not 0 <= a <= 1:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    return a


def expected_tokens_per_step(alpha, k: int) -> float:
    """E[tokens emitted per step] = (1 - alpha^(k+1)) / (1 - alpha), k + 1 at alpha = 1
    (Leviathan et al. 2023, Eq. 1), when every position's acceptance rate is alpha: the number of
    accepted draft tokens is a geometric count capped at k, plus the one residual/bonus token."""
    a, k = _check_alpha(alpha), _check_k(k)
    if a == 1:
        return float(k + 1)
    return (1 - a ** (k + 1)) / (1 - a)


def expected_speedup(alpha, k: int, c) -> float:
    """The expected walltime improvement factor (Leviathan et al. 2023, Theorem 3.8):

        (1 - alpha^(k+1)) / ((1 - alpha) (k c + 1))

    c = (time of one draft step) / (time of one target step): a step costs k draft steps and one
    target pass (assumed to cost one target step) and emits expected_tokens_per_step tokens."""
    try:
        c = float(c)
    except (TypeError, ValueError):
        raise ValueError(f"c: expected a number >= 0, got {c!r}") from None
    if not (c >= 0 and math.isfinite(c)):
        raise ValueError(f"c: expected a finite number >= 0 (draft cost / target cost), got {c!r}")
    return expected_tokens_per_step(alpha, k) / (k * c + 1)


# ----------------------------------------------------------------------------- models


def gpt_model(params: dict, config: gpt.Config, processors=()):
    """A reference GPT as a model callable seq (T,) -> p (V,): softmax of its last logits after
    `processors` (callables (1, V) logits -> logits, in order; reference.sampling.chain).
    seq must be non-empty (the GPT is fed it as it is; prepend bos yourself)."""

    def model(seq):
        logits = gpt.forward(params, config, namespace(seq).asarray(seq)[None, :])[:, -1]  # (1, V)
        for process in processors:
            logits = process(logits)
        return sampling.probs(logits)[0]

    return model


def table_model(table: dict, V: int, default=None):
    """A model from a table: seq -> table[tuple(seq)] (or `default` (V,), when given, for contexts
    not in the table). For tests and hand-built examples."""

    def model(seq):
        key = tuple(int(t) for t in seq)
        if key in table:
            return numpy.asarray(table[key], dtype=numpy.float64)
        if default is None:
            raise ValueError(f"seq: context {list(key)} is not in the table")
        return numpy.asarray(default, dtype=numpy.float64)

    return model
