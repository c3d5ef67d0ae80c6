"""Properties of Jacobi and lookahead decoding that hold exactly.

- equivalence: Jacobi decoding and lookahead decoding (any W, N, G, window start, pool
  seeded from the prompt or not) output greedy decoding token for token, on random
  tiny GPTs and prompts, reference and fast (float64);
- Jacobi converges in at most m iterations per block (b <= m for a short last block);
- point-mass sampling verification preserves the target distribution: the exact
  distribution of the first `length` emitted tokens, enumerated over every accept /
  reject branch across steps, equals the target's chain rule to 1e-13 for random
  context-dependent tables with zeros and point masses and arbitrary candidates; and
  Monte Carlo draws pass a chi-square test against the chain rule;
- with no candidates, sampling-mode lookahead is inverse-CDF ancestral sampling with
  the same uniforms (reference.gpt.generate);
- purity: no input is mutated;
- end of sequence: Jacobi and lookahead with eos ids (reference and fast, greedy) output greedy
  decoding cut after its first new eos, with the same steps as far as they go; sampling-mode
  lookahead with eos is the same run without eos cut at the eos (the same uniforms); and the
  exact distribution of point-mass verification with eos (blocks cut after their first eos, pad
  after) equals the chain rule stopped at the first eos (V 3..4, lengths 3..4), an oracle that
  keeps the tokens after an eos being caught.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import parallel_decoding as fpd
from properties.conftest import gpt_models, seeds
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import parallel_decoding as pd
from chainrule.reference.checks import assert_pure, sampler_goodness_of_fit

EXACT = 1e-13


@st.composite
def models_and_prompts(draw):
    """(config, params, prompt (1, T0), max_new_tokens filling the context)."""
    config, params = draw(gpt_models(min_block_size=2))
    T0 = draw(st.integers(1, config.block_size))
    prompt = np.random.default_rng(draw(seeds)).integers(0, config.vocab_size, size=(1, T0))
    return config, params, prompt, config.block_size + 1 - T0


def _fast(params):
    return fb.to_torch(params, "cpu", torch.float64)


# ----------------------------------------------------------------------------- equal to greedy


@given(models_and_prompts(), st.integers(1, 7), st.one_of(st.none(), seeds))
def test_jacobi_equals_greedy_within_m_iterations(case, m, seed):
    config, params, prompt, n = case
    greedy = ref_gpt.greedy(params, config, prompt, n)
    for name, decode in (("reference", lambda rng: pd.jacobi_decode(params, config, prompt, n, m, rng=rng)),
                         ("fast", lambda rng: fpd.jacobi_decode(_fast(params), config, prompt, n, m, rng=rng))):  # fmt: skip
        tokens, stats = decode(None if seed is None else np.random.default_rng(seed))
        assert np.array_equal(np.asarray(tokens), greedy), f"{name} Jacobi m={m}: {tokens} != greedy {greedy}"
        assert sum(stats.tokens_per_step) == n
        assert all(1 <= j <= b <= m for j, b in zip(stats.iterations, stats.tokens_per_step)), stats
        assert stats.forwards == sum(stats.iterations)


@given(models_and_prompts(), st.integers(1, 5), st.integers(2, 5), st.integers(0, 4), st.booleans(),
       st.one_of(st.none(), seeds))  # fmt: skip
def test_lookahead_equals_greedy(case, W, N, G, prompt_ngrams, seed):
    config, params, prompt, n = case
    greedy = ref_gpt.greedy(params, config, prompt, n)
    kwargs = dict(window=W, ngram=N, candidates=G, prompt_ngrams=prompt_ngrams)
    results = []
    for name, impl, P in (("reference", pd, params), ("fast", fpd, _fast(params))):
        rng = None if seed is None else np.random.default_rng(seed)
        tokens, stats = impl.lookahead_decode(P, config, prompt, n, rng=rng, **kwargs)
        assert np.array_equal(np.asarray(tokens), greedy), f"{name} lookahead {kwargs}: {tokens} != greedy {greedy}"
        assert sum(stats.tokens_per_step) == n and stats.forwards == len(stats.tokens_per_step)
        assert all(1 <= k <= N for k in stats.tokens_per_step), stats
        results.append(stats)
    assert results[0] == results[1], "reference and fast (float64) took different steps"


def test_lookahead_accepts_candidates_somewhere():
    """The equivalence above must not hold only because no candidate is ever accepted."""
    accepted = 0
    for seed in range(5):
        config = ref_gpt.Config(vocab_size=7, block_size=40, n_layer=2, n_head=2, n_embd=6)
        params = ref_gpt.random_params(config, np.random.default_rng(seed))
        prompt = np.random.default_rng(seed).integers(0, 7, size=(1, 5))
        _, stats = pd.lookahead_decode(params, config, prompt, 36, window=3, ngram=3, candidates=2)
        accepted += sum(stats.tokens_per_step) - stats.forwards
    assert accepted > 20, accepted


# ----------------------------------------------------------------------------- point-mass verification


@st.composite
def tables(draw, min_vocab: int = 2):
    """(V, target, candidates): a context-dependent next-token table over the last two tokens
    and the length, with exact zeros and point masses; candidates(seq) -> tuples of one length.
    V in [min_vocab, 4]."""
    V = draw(st.integers(min_vocab, 4))
    rng = np.random.default_rng(draw(seeds))
    p = rng.dirichlet(np.full(V, 0.7), size=(V + 1, V + 1, 3))  # (last, second last, length mod 3, V)
    p[rng.random(p.shape) < 0.25] = 0.0  # zeros
    mass = rng.random(p.shape[:-1]) < 0.15  # point masses
    p[mass] = np.eye(V)[rng.integers(0, V, size=int(mass.sum()))]
    empty = p.sum(-1) == 0
    p[empty] = np.eye(V)[0]
    p = p / p.sum(-1, keepdims=True)
    n_cand, length = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    draft_rng = np.random.default_rng(draw(seeds))
    drafts = draft_rng.integers(0, V, size=(V + 1, V + 1, 3, max(n_cand, 1), length))

    def target(seq):
        return p[seq[-1] if seq else V, seq[-2] if len(seq) > 1 else V, len(seq) % 3]

    def candidates(seq):  # a deterministic function of the context, as the n-gram pool is
        key = (seq[-1] if seq else V, seq[-2] if len(seq) > 1 else V, len(seq) % 3)
        return [tuple(int(v) for v in c) for c in drafts[key][:n_cand]]

    return V, target, candidates


@given(tables(), st.integers(1, 3), st.lists(st.integers(0, 3), max_size=2))
def test_point_mass_verification_exact_distribution(table, length, prefix):
    V, target, candidates = table
    prefix = tuple(min(v, V - 1) for v in prefix)
    for emitted, prob in pd.point_mass_branches(target, prefix, candidates(prefix)):
        assert prob > 0 and all(0 <= v < V for v in emitted)
    assert abs(sum(p for _, p in pd.point_mass_branches(target, prefix, candidates(prefix))) - 1) < EXACT
    exact = pd.exact_output_distribution(target, candidates, prefix, length, V)
    truth = pd.chain_rule_distribution(target, prefix, length, V)
    err = float(np.abs(exact - truth).max())
    assert err <= EXACT, f"point-mass verification changes the distribution: max error {err:.3e}"


def test_exact_distribution_catches_a_biased_verifier(monkeypatch):
    """The oracle is not vacuous: accepting a draft with probability sqrt(p(d)) instead of p(d) shows."""
    V = 3
    p = np.array([0.5, 0.3, 0.2])

    def target(seq):
        return p

    def candidates(seq):
        return [(1,)]

    truth = pd.chain_rule_distribution(target, (), 2, V)
    assert np.abs(pd.exact_output_distribution(target, candidates, (), 2, V) - truth).max() <= EXACT
    real = pd.point_mass_branches

    def biased(target, prefix, cands):  # keep the residual, but accept too often
        out = real(target, prefix, cands)
        return [(e, q * (1.3 if len(e) > 1 and e[0] == 1 else 1.0)) for e, q in out]

    monkeypatch.setattr(pd, "point_mass_branches", biased)
    assert np.abs(pd.exact_output_distribution(target, candidates, (), 2, V) - truth).max() > 1e-3


def _stream(target, candidates, prefix, length, rng, G):
    """Run verify_point_mass steps from prefix until `length` tokens were emitted."""
    seq = tuple(prefix)
    while len(seq) - len(prefix) < length:
        cands = candidates(seq)
        n = len(cands[0]) if cands else 0
        _, _, emitted = pd.verify_point_mass(lambda g, i: target(seq + tuple(cands[g][:i]) if i else seq), cands,
                                             rng.random((n + 1, G + 1)))  # fmt: skip
        seq = seq + tuple(emitted)
    return seq[len(prefix) : len(prefix) + length]


@given(tables(), seeds)
def test_point_mass_verification_monte_carlo(table, seed):
    V, target, candidates = table
    length, rng = 2, np.random.default_rng(seed)
    truth = pd.chain_rule_distribution(target, (), length, V).ravel()
    G = max(len(candidates(())), 3)

    def draw(n):
        return np.array([int(np.ravel_multi_index(_stream(target, candidates, (), length, rng, G), (V,) * length))
                         for _ in range(n)])  # fmt: skip

    fit = sampler_goodness_of_fit(draw, truth, 400)
    assert fit.passed, str(fit)


def test_monte_carlo_catches_a_biased_verifier():
    """The chi-square test has power: halving the uniforms (accepting d with probability
    min(1, 2 p(d)), drawing the residual from a squeezed CDF) fails it; the real rule passes."""
    p = np.array([0.6, 0.3, 0.1])
    rng = np.random.default_rng(0)

    def draws(scale):
        return lambda n: np.array([pd.verify_point_mass(lambda g, i: p, [(2,)], scale * rng.random((2, 2)))[2][0]
                                   for _ in range(n)])  # fmt: skip

    assert sampler_goodness_of_fit(draws(1.0), p, 2000).passed
    assert not sampler_goodness_of_fit(draws(0.5), p, 2000).passed


# ----------------------------------------------------------------------------- sampling mode on a GPT


@given(models_and_prompts(), st.integers(1, 4), st.integers(2, 4), seeds)
def test_lookahead_sampling_without_candidates_is_ancestral_sampling(case, W, N, seed):
    config, params, prompt, n = case
    u = np.random.default_rng(seed).random((1, n, 1))
    want = ref_gpt.generate(params, config, prompt, n, u=u[:, :, 0])
    got, _ = pd.lookahead_decode(params, config, prompt, n, window=W, ngram=N, candidates=0, u=u)
    assert np.array_equal(got, want)


def test_lookahead_sampling_distribution_on_a_gpt():
    """Sampling-mode lookahead with pooled candidates (from the prompt, accepted often) draws two
    tokens with the GPT's own chain-rule distribution (chi-square)."""
    config = ref_gpt.Config(vocab_size=3, block_size=9, n_layer=1, n_head=1, n_embd=4)
    params = ref_gpt.random_params(config, np.random.default_rng(3))
    prompt = np.array([[0, 1, 2, 0, 2, 1, 0]])
    logits = ref_gpt.forward(params, config, np.concatenate([np.repeat(prompt, 3, 0), np.arange(3)[:, None]], 1))
    from chainrule.reference import nn

    p1 = nn.softmax(logits[0, -2])  # (V,) first new token
    p2 = nn.softmax(logits[:, -1])  # (V, V) second new token given the first
    truth = (p1[:, None] * p2).ravel()
    rng = np.random.default_rng(7)
    accepted = [0]

    def draw(n):
        out = []
        for _ in range(n):
            tokens, stats = pd.lookahead_decode(params, config, prompt, 2, window=2, ngram=3, candidates=3,
                                                 prompt_ngrams=True, u=rng.random((1, 2, 4)))  # fmt: skip
            accepted[0] += stats.forwards == 1
            out.append(int(tokens[0, -2]) * 3 + int(tokens[0, -1]))
        return np.array(out)

    fit = sampler_goodness_of_fit(draw, truth, 1500)
    assert fit.passed, str(fit)
    assert accepted[0] > 100, f"candidates were accepted in only {accepted[0]} of 1500 runs: the test would prove little"


# ----------------------------------------------------------------------------- purity


@given(models_and_prompts())
def test_purity(case):
    config, params, prompt, n = case
    n = min(n, 5)
    assert_pure(pd.lookahead_decode, params, config, prompt, n, window=2, ngram=3, candidates=2, prompt_ngrams=True)
    assert_pure(pd.jacobi_decode, params, config, prompt, n, 3)
    u = np.random.default_rng(0).random((1, n, 3))
    assert_pure(fpd.lookahead_decode, _fast(params), config, prompt, n, window=2, ngram=3, candidates=2, u=u)


# ----------------------------------------------------------------------------- one step = recompute


@given(gpt_models(min_block_size=3), st.data())
def test_step_rows_equal_recomputing_the_sequence_each_row_sees(model, data):
    """Every row of one lookahead step (explicit mask, positions, cache) gives the logits of
    reference.gpt.forward on the very sequence that row represents: the cached prefix, x_t,
    then the tokens it attends to in position order. Reference and fast (float64)."""
    config, params = model
    V, block = config.vocab_size, config.block_size
    rng = np.random.default_rng(data.draw(seeds))
    t = data.draw(st.integers(0, block - 2))  # x_t's position; the cache holds t tokens
    room = block - 1 - t  # positions t+1 .. block-1 are free
    W = data.draw(st.integers(1, room))
    L = data.draw(st.integers(0, room - W + 1))
    n = data.draw(st.integers(0, room))
    G = data.draw(st.integers(0, 3)) if n else 0
    prefix = rng.integers(0, V, size=t + 1)  # cache tokens, then x_t
    levels = [tuple(int(v) for v in rng.integers(0, V, W)) for _ in range(L)]
    cands = [tuple(int(v) for v in rng.integers(0, V, n)) for _ in range(G)]
    tokens, positions, mask = pd.lookahead_layout(int(prefix[-1]), t, levels, cands)
    cache = ref_gpt.init_cache(params, config, 1)
    if t:
        _, cache = ref_gpt.prefill(params, config, cache, prefix[None, :-1])
    logits, _, _ = pd.masked_forward(params, config, cache, tokens, positions, mask)
    P = _fast(params)
    fcache = fpd.fgpt.empty_cache(config, 1, t + len(tokens), torch.float64, "cpu")  # slots for the step too
    with torch.inference_mode():
        if t:
            fpd.fgpt.run_network(fpd.fgpt.network(P, config, "plain"), torch.as_tensor(prefix[None, :-1]), fcache, "sdpa")
        fast = fpd.masked_run(fpd.fgpt.network(P, config, "plain"), fcache, torch.as_tensor(tokens),
                              torch.as_tensor(positions), fpd.lookahead_mask(L, W, G, n, "cpu")).numpy()  # fmt: skip
    for r in range(len(tokens)):
        seen = np.flatnonzero(mask[r])
        seen = seen[np.argsort(positions[seen])]
        seq = np.concatenate([prefix[:-1], tokens[seen]])[None]  # (1, t + |seen|)
        want = ref_gpt.forward(params, config, seq)[0, -1]
        assert np.abs(logits[r] - want).max() < 1e-10, f"reference row {r}"
        assert np.abs(fast[r] - want).max() < 1e-10, f"fast row {r}"


# ----------------------------------------------------------------------------- end of sequence


def cut_at_eos(tokens, T0: int, eos):
    """(1, T0 + N) -> (1, T0 + n): cut after the first new token in eos."""
    row = np.asarray(tokens)[0]
    ends = [t for t in range(T0, row.shape[0]) if int(row[t]) in eos]
    return row[None, : ends[0] + 1] if ends else row[None]


@st.composite
def eos_ids(draw, V):
    return draw(st.one_of(st.integers(0, V - 1), st.lists(st.integers(0, V - 1), min_size=1, max_size=2, unique=True)))


def _ids(eos):
    return (eos,) if isinstance(eos, int) else tuple(eos)


@given(models_and_prompts(), st.integers(1, 5), st.integers(1, 4), st.integers(2, 4), st.integers(0, 3), st.data())
def test_jacobi_and_lookahead_with_eos_are_greedy_cut_at_eos(case, m, W, N, G, data):
    config, params, prompt, n = case
    eos = data.draw(eos_ids(config.vocab_size))
    seed = data.draw(st.one_of(st.none(), seeds))
    T0 = prompt.shape[1]
    want = cut_at_eos(ref_gpt.greedy(params, config, prompt, n), T0, _ids(eos))
    runs = {}
    for name, impl, P in (("reference", pd, params), ("fast", fpd, _fast(params))):
        rng = None if seed is None else np.random.default_rng(seed)
        tokens, stats = impl.jacobi_decode(P, config, prompt, n, m, rng=rng, eos_token_id=eos)
        assert np.array_equal(np.asarray(tokens), want), f"{name} Jacobi m={m} eos={eos}: {tokens} != {want}"
        assert sum(stats.tokens_per_step) == want.shape[1] - T0 and all(1 <= j <= m for j in stats.iterations)
        runs[name, "jacobi"] = stats
        rng = None if seed is None else np.random.default_rng(seed)
        tokens, stats = impl.lookahead_decode(P, config, prompt, n, window=W, ngram=N, candidates=G, rng=rng,
                                              eos_token_id=eos, prompt_ngrams=True)  # fmt: skip
        assert np.array_equal(np.asarray(tokens), want), f"{name} lookahead eos={eos}: {tokens} != {want}"
        assert sum(stats.tokens_per_step) == want.shape[1] - T0 and stats.forwards == len(stats.tokens_per_step)
        runs[name, "lookahead"] = stats
    for method in ("jacobi", "lookahead"):
        assert runs["reference", method] == runs["fast", method], f"{method}: reference and fast took different steps"
    full = pd.lookahead_decode(params, config, prompt, n, window=W, ngram=N, candidates=G, prompt_ngrams=True,
                               rng=None if seed is None else np.random.default_rng(seed))[1]  # fmt: skip
    got = runs["reference", "lookahead"].tokens_per_step
    assert got[:-1] == full.tokens_per_step[: len(got) - 1], "the same steps, as far as they go"


@given(models_and_prompts(), st.integers(1, 4), st.integers(2, 4), st.integers(0, 3), seeds, st.data())
def test_lookahead_sampling_with_eos_is_the_run_cut_at_eos(case, W, N, G, seed, data):
    config, params, prompt, n = case
    eos = data.draw(eos_ids(config.vocab_size))
    u = np.random.default_rng(seed).random((1, n, G + 1))
    kw = dict(window=W, ngram=N, candidates=G, prompt_ngrams=True, u=u)
    full, _ = pd.lookahead_decode(params, config, prompt, n, **kw)
    want = cut_at_eos(full, prompt.shape[1], _ids(eos))
    got, stats = pd.lookahead_decode(params, config, prompt, n, eos_token_id=eos, **kw)
    assert np.array_equal(got, want)
    fast, fast_stats = fpd.lookahead_decode(_fast(params), config, prompt, n, eos_token_id=eos, **kw)
    assert np.array_equal(fast.numpy(), want) and fast_stats == stats


@given(tables(min_vocab=3), st.integers(3, 4), st.data())
def test_point_mass_verification_exact_distribution_with_eos(table, length, data):
    V, target, candidates = table
    eos = data.draw(eos_ids(V))
    pad = data.draw(st.one_of(st.none(), st.integers(0, V - 1)))
    prefix = tuple(data.draw(st.lists(st.integers(0, V - 1), max_size=2)))
    exact = pd.exact_output_distribution(target, candidates, prefix, length, V, eos_token_id=eos, pad_token_id=pad)
    truth = pd.chain_rule_distribution(target, prefix, length, V, eos_token_id=eos, pad_token_id=pad)
    err = float(np.abs(exact - truth).max())
    assert err <= EXACT, f"point-mass verification with eos changes the distribution: max error {err:.3e}"
    assert abs(exact.sum() - 1) <= EXACT
    pad = _ids(eos)[0] if pad is None else pad
    for ys in zip(*np.nonzero(exact)):  # pad after the first eos
        ends = [t for t, y in enumerate(ys) if y in _ids(eos)]
        assert not ends or all(y == pad for y in ys[ends[0] + 1 :]), ys


def test_exact_distribution_with_eos_catches_tokens_kept_after_eos(monkeypatch):
    """The eos oracle is not vacuous: keeping the tokens after an eos in the same step (the
    accepted candidate tokens, the bonus token) puts mass on sequences the chain rule forbids."""
    V = 3
    p = np.array([0.5, 0.3, 0.2])

    def target(seq):
        return p

    def candidates(seq):
        return [(1, 1), (2, 0)]

    truth = pd.chain_rule_distribution(target, (), 3, V, eos_token_id=1)
    assert np.abs(pd.exact_output_distribution(target, candidates, (), 3, V, eos_token_id=1) - truth).max() <= EXACT
    monkeypatch.setattr(pd, "cut_at_eos", lambda block, eos: (tuple(block), any(t in eos for t in block)))
    assert np.abs(pd.exact_output_distribution(target, candidates, (), 3, V, eos_token_id=1) - truth).max() > 1e-2
