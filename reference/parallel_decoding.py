"""Jacobi and lookahead decoding: several tokens per forward pass, the greedy output exactly.

Greedy decoding is the fixed point of a map. Write the m tokens after a prefix as
y = (y_0 .. y_{m-1}) and let

    F(y)_i = argmax_v p(v | prefix, y_0 .. y_{i-1})        i = 0 .. m-1

(one forward pass over the block computes all m coordinates at once). The greedy
continuation g is the unique fixed point of F.

Jacobi decoding (Song et al. 2021, "Accelerating Feedforward Computation via Parallel
Nonlinear Equation Solving"; Santilli et al. 2023, "Accelerating Transformer Inference
for Translation via Parallel Decoding") iterates y^(j+1) = F(y^(j)) from a guess y^(0)
until y^(j+1) = y^(j).

    Claim: y^(j)_i = g_i for every i < j. So y^(m) = g: at most m iterations.
    Proof (induction on j): j = 0 says nothing. If y^(j)_i = g_i for i < j, then for
    i <= j the coordinate F(y^(j))_i depends only on y^(j)_{<i}, which is g_{<i}, so
    y^(j+1)_i = argmax p(. | prefix, g_{<i}) = g_i. Uniqueness of the fixed point: a
    fixed point y has y_0 = F(y)_0 = g_0, and y_i = F(y)_i = g_i given y_{<i} = g_{<i}.
    Hence iteration stops at the first j with y^(j) = y^(j-1) (a fixed point, = g) or
    at j = m (then y^(m) = g without checking): never more than m forward passes.

Lookahead decoding (Fu, Bailis, Stoica, Zhang 2024, "Break the Sequential Dependency
of LLM Inference Using Lookahead Decoding") runs two branches in one forward pass:

  - the lookahead branch: a 2-D Jacobi window of N-1 levels x W columns. Level l,
    column j holds a guess for position t+1+j+l (t: the position of the last accepted
    token x_t) and attends to x_t, to level 0 columns 0..j and to levels 1..l of its own
    column: the diagonal "sequence" x_t, L0[0..j], L1[j], .., Ll[j]. The outputs of the
    newest level are the next level (a Jacobi step on every diagonal). Once N-1 levels
    exist, each column j gives an n-gram (L0[j], L1[j], .., L_{N-2}[j], new[j]), stored
    in an n-gram pool under its first token; the oldest level is dropped.
  - the verification branch: up to G n-grams from the pool whose first token is x_t.
    Candidate g's token i sits at position t+1+i and attends to x_t and to its own
    tokens 0..i, so its output is p(. | prefix, x_t, c_g[0..i]).

Greedy verification accepts, for the candidate with the longest match, tokens
c[0..a-1] that equal the greedy choices y_0..y_{a-1} (y_0 from x_t's output, y_i
from c[i-1]'s), then emits y_a too: 1..N tokens per forward pass, each the argmax
given exactly the accepted prefix -- the greedy output token for token, whatever the
guesses. Only the keys/values of x_t and the accepted tokens enter the cache.

Sampling-mode verification (`verify_point_mass`) treats each candidate as a
deterministic (point-mass) draft q = onehot(d): accept d with probability
min(1, r(d) / q(d)) = r(d); on rejection continue with the residual
norm(max(0, r - onehot(d))) = r without d, renormalized; when every candidate at a
position is rejected, sample the residual; after a fully accepted candidate, sample
the bonus token from p. Proof that each emitted token has the target's conditional:
with residual r and candidates d_1..d_k tried in order, the token is d_1 with
probability r(d_1); otherwise (probability 1 - r(d_1)) it comes, by induction on k,
from r' = r without d_1 normalized, so token x != d_1 has probability
(1 - r(d_1)) r(x) / (1 - r(d_1)) = r(x); with k = 0 the residual is sampled directly.
Starting from r = p(. | prefix, accepted) every position's token is therefore
~ p(. | prefix, accepted). Whether the step goes on to the next position depends only
on the tokens so far and on this step's uniforms, and the drafts were fixed before
them, so the emitted stream has exactly the target's chain-rule distribution
(`exact_output_distribution` checks it by enumeration).

Both decoders work on one sequence (batch 1), on GPT models of reference/gpt.py.

End of sequence (the convention of reference.generation and reference/speculative.py):
with eos_token_id (an id or several), decoding stops at the first eos the sequence emits
(one in the prompt does not count). The eos is kept; the tokens after it in the same
accepted block (a Jacobi block, a lookahead step's accepted candidate tokens and bonus
token) are discarded; the output is the prompt and the new tokens up to the eos (shorter
than T0 + max_new_tokens; one sequence needs no padding, pad_token_id is only checked).
Jacobi stops iterating a block as soon as an eos is *final*: by the claim above,
y^(j)_{<j} = g_{<j}, so when y^(j)_0 .. y^(j)_{j-1} hold an eos, its first one is g's first
eos in the block and the tokens up to it are g's: no further iteration can change them.
Cutting is a deterministic function of the emitted stream, so the greedy decoders still give
greedy decoding (cut after its first eos), and sampling-mode lookahead the target's chain
rule stopped at its first eos (`exact_output_distribution` and `chain_rule_distribution`
with eos_token_id enumerate both).

Choices where the public implementation (hao-ai-lab/LookaheadDecoding) differs or is
silent, none of which affects exactness: every level holds W columns (the public code
makes level 0 longer and staggers the others by one position; the diagonals are the
same); the window's first level is W prompt tokens (`initial_window`) and the next
levels come from the first N-2 steps; the pool keeps at most G distinct tails per first
token, the oldest dropped, and is updated after the step's verification; in sampling
mode the lookahead branch still takes the argmax (its guesses are drafts, fixed before
the step's uniforms); candidates are cut to the tokens still wanted, and the lookahead
branch is skipped in a step whose window would reach past block_size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy

from chainrule.reference import gpt
from chainrule.reference import nn
from chainrule.reference import sampling
from chainrule.reference.speculative import check_eos, cut_at_eos
from chainrule.reference.xp import namespace, to_numpy


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DecodeStats:
    """What a parallel decoder did after the prompt's prefill.

    forwards: model calls of the decoding loop (each consumes the last accepted token);
    tokens_per_step: tokens emitted by each call (lookahead; for Jacobi: per block), the
        last one counting only the tokens up to an eos (those after it are not emitted);
    iterations: Jacobi iterations (forward passes) per block (empty for lookahead).
    Plain greedy decoding has forwards = new tokens; tokens/forward is the gain.
    """

    forwards: int
    tokens_per_step: tuple
    iterations: tuple = ()

    @property
    def tokens_per_forward(self) -> float:
        return sum(self.tokens_per_step) / self.forwards if self.forwards else 0.0


# ----------------------------------------------------------------------------- validation


def _check_int(value, name: str, low: int) -> int:
    if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def check_prompt(prompt, config: gpt.Config, max_new_tokens: int):
    """ValueError unless prompt is (1, T0) int with T0 + max_new_tokens - 1 <= block_size -> (T0,) int64 NumPy."""
    _check_int(max_new_tokens, "max_new_tokens", 0)
    prompt = to_numpy(prompt) if not hasattr(prompt, "detach") else prompt.detach().cpu().numpy()
    gpt.check_tokens(prompt, config, name="prompt", max_len=config.block_size + 1 - max(max_new_tokens, 1))
    if prompt.shape[0] != 1:
        raise ValueError(f"prompt: expected batch 1 (one sequence is decoded at a time), got batch {prompt.shape[0]}")
    return prompt[0].astype(numpy.int64)


# ----------------------------------------------------------------------------- one forward pass, explicit mask


def masked_forward(params: dict, config: gpt.Config, cache: dict, tokens, positions, mask):
    """The network on T new tokens after a cache of P positions, with explicit positions and mask.

    tokens, positions: (T,) int; mask: (T, T) bool, True where new token r may attend to
    new token c (every new token sees the whole cache). -> (logits (T, V), keys, values):
    keys/values per layer of shape (1, nh, P+T, hs) (cache first). Pure.
    """
    xp = namespace(params["wte"])
    P, T = cache["length"], len(tokens)
    full = xp.concatenate([xp.ones((T, P), dtype=bool), xp.asarray(mask)], axis=1)  # (T, P+T)
    x = nn.embedding(xp.asarray(tokens)[None, :], params["wte"])  # (1, T, C)
    x = x + params["wpe"][xp.asarray(positions)][None]  # explicit positions, not P..P+T-1
    keys, values = [], []
    for i in range(config.n_layer):
        x, k, v = gpt.block(params, config, i, x, cache["k"][i], cache["v"][i], mask=full)
        keys.append(k)
        values.append(v)
    x = nn.layer_norm(x, params["ln_f.g"], params["ln_f.b"], config.layer_norm_eps)
    return (x @ gpt.head_weight(params, config).T)[0], keys, values  # (T, V)


def commit(cache: dict, keys, values, keep) -> dict:
    """A new cache: the old P positions plus the new entries at indices `keep` (into the T new ones)."""
    xp = namespace(keys[0])
    P = cache["length"]
    idx = xp.asarray([P + int(r) for r in keep], dtype=xp.int64)
    k = tuple(xp.concatenate([kk[:, :, :P], kk[:, :, idx]], axis=2) for kk in keys)
    v = tuple(xp.concatenate([vv[:, :, :P], vv[:, :, idx]], axis=2) for vv in values)
    return {"k": k, "v": v, "length": P + len(keep)}


def _prefill(params, config, prompt):
    """Cache of prompt[:-1] (empty for a one-token prompt); the last prompt token is fed by the first step."""
    xp = namespace(params["wte"])
    cache = gpt.init_cache(params, config, 1)
    if len(prompt) > 1:
        _, cache = gpt.prefill(params, config, cache, xp.asarray(prompt[None, :-1]))
    return cache


# ----------------------------------------------------------------------------- Jacobi decoding


def initial_guess(last: int, b: int, vocab_size: int, rng=None) -> list:
    """Jacobi's y^(0): the last accepted token repeated b times, or b uniform tokens drawn with rng."""
    if rng is None:
        return [int(last)] * b
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    return [int(v) for v in rng.integers(0, vocab_size, size=b)]


def jacobi_decode(params: dict, config: gpt.Config, prompt, max_new_tokens: int, m: int, *, rng=None,
                  eos_token_id=None, pad_token_id=None):  # fmt: skip
    """Greedy decoding by Jacobi iteration, block by block (module docstring: the proof).

    prompt: (1, T0) int. Each block of b = min(m, tokens left) tokens starts from the guess
    y^(0) = (x_t, .., x_t) (the last accepted token repeated; with `rng`, a numpy Generator:
    b tokens drawn uniformly, rng.integers(0, V, b)) and iterates
        y^(j+1)_i = argmax softmax(logits(prefix, x_t, y^(j)_0 .. y^(j)_{i-1}))     (one forward)
    until y^(j+1) = y^(j) or j + 1 = b, or (with eos_token_id) y^(j+1)_0 .. y^(j+1)_j, which
    are final, hold an eos. The block is then the greedy continuation (up to that eos); the
    keys/values of its last forward (inputs x_t, y_0..y_{b-2}, all final) enter the cache.
    eos_token_id (an id or a sequence of ids in [0, V)): decoding stops at the first eos, kept,
    the rest of its block discarded; pad_token_id: checked, unused (module docstring).
    -> (tokens (1, T0 + n) int64, n <= max_new_tokens (< with an eos), DecodeStats with
    iterations per block and the tokens each block emitted).
    """
    gpt.check_params(params, config)
    m = _check_int(m, "m", 1)
    prompt = check_prompt(prompt, config, max_new_tokens)
    eos, _ = check_eos(eos_token_id, pad_token_id, config.vocab_size)
    xp = namespace(params["wte"])
    out = [int(t) for t in prompt]
    if max_new_tokens == 0:
        return numpy.asarray([out], dtype=numpy.int64), DecodeStats(0, ())
    cache, iterations, blocks, ended = _prefill(params, config, prompt), [], [], False
    while len(out) < len(prompt) + max_new_tokens and not ended:
        b = min(m, len(prompt) + max_new_tokens - len(out))
        t = len(out) - 1  # position of the last accepted token x_t
        guess = initial_guess(out[-1], b, config.vocab_size, rng)  # y^(0)
        causal = nn.causal_mask(b, b, xp)  # (b, b): the block is an ordinary sequence
        for j in range(1, b + 1):
            tokens = [out[-1]] + guess[:-1]  # x_t, y_0 .. y_{b-2}
            logits, keys, values = masked_forward(params, config, cache, tokens, list(range(t, t + b)), causal)
            new = [int(v) for v in to_numpy(sampling.greedy(logits))]  # y^(j)
            converged = new == guess
            guess = new
            if converged or j == b or cut_at_eos(guess[:j], eos)[1]:  # y^(j)_{<j} is final
                break
        block, ended = cut_at_eos(guess, eos)
        iterations.append(j)
        blocks.append(len(block))
        if not ended:
            cache = commit(cache, keys, values, range(b))
        out += block
    return numpy.asarray([out], dtype=numpy.int64), DecodeStats(sum(iterations), tuple(blocks), tuple(iterations))


# ----------------------------------------------------------------------------- the n-gram pool


def add_ngrams(pool: dict, ngrams, capacity: int) -> dict:
    """A new pool: each n-gram's tail (n-gram[1:]) appended under its first token unless already
    there; a key holding more than `capacity` tails drops its oldest. Pool: int -> tuple of tuples."""
    new = dict(pool)
    for gram in ngrams:
        key, tail = int(gram[0]), tuple(int(v) for v in gram[1:])
        tails = new.get(key, ())
        if tail not in tails:
            new[key] = (tails + (tail,))[-capacity:]
    return new


def prompt_pool(prompt, n: int, capacity: int) -> dict:
    """The pool of every n-gram of the prompt, in order."""
    grams = [tuple(prompt[i : i + n]) for i in range(len(prompt) - n + 1)]
    return add_ngrams({}, grams, capacity)


def initial_window(prompt, window: int, rng=None) -> tuple:
    """Level 0 of the lookahead window: W prompt tokens, prompt[j mod T0] (rng None), or
    drawn uniformly from the prompt's tokens with `rng` (a numpy Generator)."""
    prompt = numpy.asarray(prompt)
    if rng is None:
        return tuple(int(prompt[j % len(prompt)]) for j in range(window))
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
    return tuple(int(v) for v in rng.choice(prompt, size=window))


# ----------------------------------------------------------------------------- one lookahead step: the layout


def lookahead_layout(last: int, t: int, levels, candidates):
    """Tokens, positions and the (T, T) attention mask of one lookahead step, built entry by entry.

    Index 0: x_t at position t. Then level l (0..L-1), column j (0..W-1) at index 1 + l W + j,
    position t+1+j+l; then candidate g (0..G'-1), token i (0..n-1) at index 1 + L W + g n + i,
    position t+1+i. Allowed attention (besides the cache, always visible):
        x_t          -> x_t
        (l, j)       -> x_t, (0, k) for k <= j, (r, j) for 1 <= r <= l
        (g, i)       -> x_t, (g, k) for k <= i
    -> (tokens (T,), positions (T,), mask (T, T) bool) as NumPy arrays.
    """
    L = len(levels)
    W = len(levels[0]) if L else 0
    n = len(candidates[0]) if candidates else 0
    T = 1 + L * W + len(candidates) * n
    tokens, positions = [last], [t]
    mask = numpy.zeros((T, T), dtype=bool)
    mask[0, 0] = True
    for l in range(L):
        for j in range(W):
            r = 1 + l * W + j
            tokens.append(levels[l][j])
            positions.append(t + 1 + j + l)
            mask[r, 0] = True
            for k in range(j + 1):
                mask[r, 1 + k] = True  # level 0, columns 0..j
            for q in range(1, l + 1):
                mask[r, 1 + q * W + j] = True  # levels 1..l, column j (itself included)
    for g, cand in enumerate(candidates):
        for i in range(n):
            r = 1 + L * W + g * n + i
            tokens.append(cand[i])
            positions.append(t + 1 + i)
            mask[r, 0] = True
            for k in range(i + 1):
                mask[r, 1 + L * W + g * n + k] = True
    return numpy.asarray(tokens, dtype=numpy.int64), numpy.asarray(positions, dtype=numpy.int64), mask


# ----------------------------------------------------------------------------- verification


def verify_greedy(choice, candidates):
    """Greedy verification. choice(g, i): the argmax after x_t and candidate g's tokens 0..i-1
    (i = 0: after x_t alone). -> (g, a, emitted): the first candidate with the longest run of
    tokens equal to the greedy choices, the run length a, and the a + 1 emitted tokens."""
    best_g, best = None, [choice(None, 0)]
    for g, cand in enumerate(candidates):
        emitted = [choice(None, 0)]
        for i, tok in enumerate(cand):
            if tok != emitted[-1]:
                break
            emitted.append(choice(g, i + 1))
        if len(emitted) > len(best):
            best_g, best = g, emitted
    return best_g, len(best) - 1, best


def _draw(r, u: float) -> int:
    """Inverse-CDF draw from probabilities r (float64 (V,)): reference.sampling.sample on log r."""
    with numpy.errstate(divide="ignore"):
        return int(sampling.sample(numpy.log(r), numpy.float64(u)))


def verify_point_mass(probs, candidates, u):
    """Sampling-mode verification with point-mass drafts (module docstring: the proof).

    probs(g, i): the target's next-token probabilities (V,) after x_t and candidate g's
    tokens 0..i-1 (g None, i = 0: after x_t alone). candidates: up to G token tuples of one
    length n. u: (n + 1, G + 1) uniforms in [0, 1): row i serves emitted token i; u[i, q] tests
    the q-th surviving candidate (accept its token d iff u < r(d), r the current residual),
    u[i, G] draws the residual (or the bonus token after a fully accepted candidate).
    -> (g, a, emitted): the candidate whose tokens were accepted (None if a = 0), the number a
    of accepted candidate tokens, and the a + 1 emitted tokens.
    """
    u = numpy.asarray(u, dtype=numpy.float64)
    n = len(candidates[0]) if candidates else 0
    if u.ndim != 2 or u.shape[0] < n + 1 or u.shape[1] < len(candidates) + 1:
        raise ValueError(f"u: expected shape ({n + 1}, G + 1) with G >= {len(candidates)} (the candidates), "
                         f"got {u.shape}")  # fmt: skip
    G = u.shape[1] - 1
    alive, emitted = list(range(len(candidates))), []  # alive: candidates matching the emitted tokens
    for i in range(n + 1):
        r = numpy.array(probs(alive[0] if i else None, i), dtype=numpy.float64)  # (V,)
        accepted = None
        for q, g in enumerate(alive if i < n else []):
            d = candidates[g][i]
            if u[i, q] < r[d]:  # accept d with probability r(d)
                accepted = d
                break
            r[d] = 0.0  # the residual norm(max(0, r - onehot(d))) = r without d
            r = r / r.sum()
        if accepted is None:  # every candidate rejected, or none left: the residual / bonus token
            emitted.append(_draw(r, u[i, G]))
            return (alive[0] if i else None), i, emitted
        emitted.append(accepted)
        alive = [g for g in alive if candidates[g][i] == accepted]
    raise AssertionError("unreachable: position n always draws")


def point_mass_branches(target, prefix, candidates):
    """Every outcome of one `verify_point_mass` step with its exact probability (float64).

    target(seq) -> (V,) next-token probabilities for a tuple of tokens; candidates: token
    tuples of one length. -> list of (emitted tuple, probability); the probabilities sum to 1.
    """
    prefix = tuple(prefix)
    out = []

    def walk(accepted, alive, r, prob):  # r: the current residual at position len(accepted)
        i = len(accepted)
        n = len(candidates[0]) if candidates else 0
        if i == n or not alive:
            out.extend(((*accepted, x), prob * r[x]) for x in range(len(r)) if r[x] > 0)
            return
        r = numpy.array(r, dtype=numpy.float64)
        for g in alive:
            d = candidates[g][i]
            if r[d] > 0:
                nxt = accepted + (d,)
                survivors = [h for h in alive if candidates[h][i] == d]
                walk(nxt, survivors, numpy.asarray(target(prefix + nxt), dtype=numpy.float64), prob * r[d])
            if r[d] >= 1:
                return
            prob *= 1 - r[d]
            r[d] = 0.0
            r = r / r.sum()
        out.extend(((*accepted, x), prob * r[x]) for x in range(len(r)) if r[x] > 0)

    walk((), list(range(len(candidates))), numpy.asarray(target(prefix), dtype=numpy.float64), 1.0)
    return out


def _padded(tokens: tuple, length: int, pad) -> tuple:
    """The first `length` tokens, pad after an ended sequence's last token."""
    return tuple(tokens[:length]) + (pad,) * (length - len(tokens))


def exact_output_distribution(target, candidates, prefix, length: int, vocab_size: int, *, eos_token_id=None,
                              pad_token_id=None):  # fmt: skip
    """The exact probability of every sequence of the first `length` emitted tokens when
    point-mass verification steps are repeated from `prefix`, each step's drafts given by
    candidates(seq) -> list of token tuples of one length (the n-gram pool's role).
    -> (V,)*length float64; equal to the target's chain rule (module docstring: the proof).
    With eos_token_id, each step's emitted tokens are cut after the first eos as
    `lookahead_decode` cuts them (`cut_at_eos`), the sequence stops there and the positions
    after it hold pad_token_id (default: the first eos id); then it equals
    `chain_rule_distribution(..., eos_token_id=..., pad_token_id=...)`.
    """
    eos, pad = check_eos(eos_token_id, pad_token_id, vocab_size)
    table = numpy.zeros((vocab_size,) * length)

    def walk(seq, prob):
        if len(seq) - len(prefix) >= length:
            table[tuple(seq[len(prefix) : len(prefix) + length])] += prob
            return
        for emitted, p in point_mass_branches(target, seq, list(candidates(tuple(seq)))):
            block, ended = cut_at_eos(emitted, eos)
            if ended:  # the sequence stops at its eos
                table[_padded(tuple(seq[len(prefix) :]) + block, length, pad)] += prob * p
            else:
                walk(tuple(seq) + block, prob * p)

    walk(tuple(prefix), 1.0)
    return table


def chain_rule_distribution(target, prefix, length: int, vocab_size: int, *, eos_token_id=None, pad_token_id=None):
    """p(x_1..x_length | prefix) = prod_i target(prefix, x_<i)[x_i] for every sequence -> (V,)*length.
    With eos_token_id, a sequence stops at its first eos x_e: p(x_1..x_e, pad, .., pad) =
    prod_{i <= e} target(prefix, x_<i)[x_i]; a sequence with a non-pad token after its first
    eos has probability 0 (pad_token_id: default the first eos id)."""
    eos, pad = check_eos(eos_token_id, pad_token_id, vocab_size)
    table = numpy.zeros((vocab_size,) * length)
    for seq in itertools.product(range(vocab_size), repeat=length):
        head, _ = cut_at_eos(seq, eos)
        if _padded(head, length, pad) != seq:  # something other than pad after the eos
            continue
        prob = 1.0
        for i in range(len(head)):
            prob *= float(target(tuple(prefix) + seq[:i])[seq[i]])
        table[seq] = prob
    return table


# ----------------------------------------------------------------------------- lookahead decoding


def check_lookahead_args(window, ngram, candidates, u, max_new_tokens):
    """ValueError for bad W, N, G or uniforms -> (W, N, G, u as (max_new_tokens, G+1) float64 NumPy or None)."""
    W, N, G = _check_int(window, "window", 1), _check_int(ngram, "ngram", 2), _check_int(candidates, "candidates", 0)
    if u is not None:
        u = numpy.asarray(u.detach().cpu().numpy() if hasattr(u, "detach") else to_numpy(u), dtype=numpy.float64)
        if u.shape != (1, max_new_tokens, G + 1):
            raise ValueError(f"u: expected shape {(1, max_new_tokens, G + 1)}, got {tuple(u.shape)}")
        if not bool(numpy.all((u >= 0) & (u < 1))):
            raise ValueError(f"u: expected uniforms in [0, 1), got {float(u[~((u >= 0) & (u < 1))][0])!r}")
        u = u[0]
    return W, N, G, u


def lookahead_decode(params: dict, config: gpt.Config, prompt, max_new_tokens: int, *, window: int = 4,
                     ngram: int = 3, candidates: int = 4, u=None, prompt_ngrams: bool = False, rng=None,
                     eos_token_id=None, pad_token_id=None):  # fmt: skip
    """Lookahead decoding (Fu et al. 2024): one forward pass per step over the lookahead
    window and up to `candidates` pooled n-grams (module docstring; `lookahead_layout`).

    prompt: (1, T0) int. window W >= 1, ngram N >= 2, candidates G >= 0 (the pool keeps
    at most G tails per first token). u None: greedy verification, the output is greedy
    decoding token for token. u (1, max_new_tokens, G + 1) uniforms: point-mass sampling
    verification (`verify_point_mass`; row n serves emitted token n), the output has the
    distribution of ancestral sampling. prompt_ngrams: start the pool with the prompt's
    n-grams. rng: draws the window's first level from the prompt (`initial_window`).
    Candidates are cut to the tokens still wanted; the lookahead branch is skipped in a
    step whose window would reach past block_size. eos_token_id (an id or a sequence of ids
    in [0, V)): decoding stops at the first eos emitted, kept, the rest of that step's emitted
    tokens discarded; pad_token_id: checked, unused (module docstring).
    -> (tokens (1, T0 + n) int64, n <= max_new_tokens (< with an eos), DecodeStats).
    """
    gpt.check_params(params, config)
    W, N, G, u = check_lookahead_args(window, ngram, candidates, u, max_new_tokens)
    prompt = check_prompt(prompt, config, max_new_tokens)
    eos, _ = check_eos(eos_token_id, pad_token_id, config.vocab_size)
    T0 = len(prompt)
    out = [int(t) for t in prompt]
    if max_new_tokens == 0:
        return numpy.asarray([out], dtype=numpy.int64), DecodeStats(0, ())
    pool = prompt_pool(prompt, N, G) if prompt_ngrams and G else {}
    levels = [initial_window(prompt, W, rng)]
    cache, per_step = _prefill(params, config, prompt), []
    while len(out) < T0 + max_new_tokens:
        left = T0 + max_new_tokens - len(out)
        t, last = len(out) - 1, out[-1]
        run_window = t + W + N - 2 <= config.block_size - 1
        cands = [c[: min(N - 1, left - 1)] for c in pool.get(last, ())][:G] if left > 1 else []
        cands = [c for c in cands if c]
        tokens, positions, mask = lookahead_layout(last, t, levels if run_window else [], cands)
        logits, keys, values = masked_forward(params, config, cache, tokens, positions, mask)
        L = len(levels) if run_window else 0
        n = len(cands[0]) if cands else 0

        def row(g, i):  # the output row after x_t and candidate g's tokens 0..i-1
            return 0 if i == 0 else 1 + L * W + g * n + i - 1

        if u is None:
            g, a, emitted = verify_greedy(lambda g, i: int(sampling.greedy(logits[row(g, i)])), cands)
        else:
            g, a, emitted = verify_point_mass(lambda g, i: to_numpy(sampling.probs(logits[row(g, i)])), cands,
                                              u[len(out) - T0 : len(out) - T0 + n + 1])  # fmt: skip
        emitted, ended = cut_at_eos(emitted, eos)
        if ended:  # the sequence ends: no cache, window or pool to update
            out += emitted
            per_step.append(len(emitted))
            break
        keep = [0] + [row(g, i + 1) for i in range(a)]
        cache = commit(cache, keys, values, keep)
        if run_window:
            new = tuple(int(v) for v in to_numpy(sampling.greedy(logits[1 + (L - 1) * W : 1 + L * W])))
            if L == N - 1:
                grams = [tuple(levels[l][j] for l in range(L)) + (new[j],) for j in range(W)]
                pool = add_ngrams(pool, grams, G) if G else pool
                levels = levels[1:] + [new]
            else:
                levels = levels + [new]
        out += emitted
        per_step.append(len(emitted))
    return numpy.asarray([out], dtype=numpy.int64), DecodeStats(len(per_step), tuple(per_step))
