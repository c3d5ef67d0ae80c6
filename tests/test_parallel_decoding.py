"""Unit tests of reference/fast parallel_decoding: the step layout, the pool, the verification
rules on hand-made cases, the explicit-mask forward, and the errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import parallel_decoding as fpd
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import nn
from chainrule.reference import parallel_decoding as pd

CONFIG = ref_gpt.Config(vocab_size=11, block_size=23, n_layer=2, n_head=2, n_embd=6)
PARAMS = ref_gpt.random_params(CONFIG, np.random.default_rng(0))


# ----------------------------------------------------------------------------- the layout


def test_layout_by_hand():
    """Two levels of two columns and one candidate of two tokens, after x_t at position 10."""
    tokens, positions, mask = pd.lookahead_layout(9, 10, [(1, 2), (3, 4)], [(5, 6)])
    assert tokens.tolist() == [9, 1, 2, 3, 4, 5, 6]
    assert positions.tolist() == [10, 11, 12, 12, 13, 11, 12]
    allowed = {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 3], 4: [0, 1, 2, 4], 5: [0, 5], 6: [0, 5, 6]}
    for r, cols in allowed.items():
        assert np.flatnonzero(mask[r]).tolist() == cols, (r, np.flatnonzero(mask[r]))


@pytest.mark.parametrize("L, W, G, n", [(0, 3, 2, 2), (1, 1, 0, 0), (2, 3, 1, 2), (4, 5, 3, 4), (3, 2, 4, 1)])
def test_every_step_token_sees_a_sequence(L, W, G, n):
    """Each token attends to exactly one token at every position from t to its own: the context
    it sees is an ordinary left-to-right sequence ending in itself (what a causal LM expects)."""
    rng = np.random.default_rng(L + W)
    levels = [tuple(rng.integers(0, 11, W)) for _ in range(L)] if L else []
    cands = [tuple(rng.integers(0, 11, n)) for _ in range(G)] if n else []
    tokens, positions, mask = pd.lookahead_layout(3, 7, levels, cands)
    assert len(tokens) == 1 + L * W + len(cands) * n
    for r in range(len(tokens)):
        seen = sorted(positions[mask[r]].tolist())
        assert seen == list(range(7, positions[r] + 1)), (r, seen)
        assert mask[r, r]


@pytest.mark.parametrize("L, W, G, n", [(0, 3, 2, 2), (1, 1, 0, 0), (2, 3, 1, 2), (4, 5, 3, 4), (3, 2, 4, 1)])
def test_fast_mask_equals_reference_layout(L, W, G, n):
    levels = [tuple(range(W))] * L
    cands = [tuple(range(n))] * G if n else []
    _, _, mask = pd.lookahead_layout(0, 0, levels, cands)
    got = fpd.lookahead_mask(L, W, len(cands), n, "cpu").numpy()
    assert np.array_equal(got, mask)


def test_masked_forward_with_causal_mask_is_the_model():
    """With the causal mask and consecutive positions, the explicit-mask forward (after a cached
    prefix) gives the logits of reference.gpt.forward, and fast.masked_run those of fast.gpt."""
    tokens = np.random.default_rng(1).integers(0, 11, size=(1, 9))
    truth = ref_gpt.forward(PARAMS, CONFIG, tokens)[0]
    _, cache = ref_gpt.prefill(PARAMS, CONFIG, ref_gpt.init_cache(PARAMS, CONFIG, 1), tokens[:, :4])
    logits, keys, _ = pd.masked_forward(PARAMS, CONFIG, cache, tokens[0, 4:], np.arange(4, 9), nn.causal_mask(5, 5))
    assert np.abs(logits - truth[4:]).max() < 1e-12
    assert keys[0].shape == (1, 2, 9, 3)
    P = fb.to_torch(PARAMS, "cpu", torch.float64)
    cache = fast_gpt.init_cache(P, CONFIG, 1)
    fast_gpt.prefill(P, CONFIG, cache, torch.as_tensor(tokens[:, :4]))
    net = fast_gpt.network(P, CONFIG, "plain")
    with torch.inference_mode():  # the cache is an inference tensor, written in place
        got = fpd.masked_run(net, cache, torch.as_tensor(tokens[0, 4:]), torch.arange(4, 9),
                             torch.ones((5, 5), dtype=torch.bool).tril())  # fmt: skip
    assert np.abs(got.numpy() - truth[4:]).max() < 1e-12
    assert cache.length == 4  # the step's keys sit in scratch slots until commit
    with torch.inference_mode():
        fpd.commit(cache, [0, 1])
    assert cache.length == 6


# ----------------------------------------------------------------------------- pool and verification


def test_add_ngrams_dedupes_keeps_order_and_capacity():
    pool = pd.add_ngrams({}, [(1, 2, 3), (1, 2, 3), (1, 4, 5), (2, 0, 0)], capacity=2)
    assert pool == {1: ((2, 3), (4, 5)), 2: ((0, 0),)}
    newer = pd.add_ngrams(pool, [(1, 6, 7)], capacity=2)
    assert newer[1] == ((4, 5), (6, 7))  # the oldest tail dropped
    assert pool[1] == ((2, 3), (4, 5))  # pure
    assert pd.prompt_pool([1, 2, 1, 2, 1], 3, 4) == {1: ((2, 1),), 2: ((1, 2),)}


def test_verify_greedy_takes_the_longest_match_first_on_ties():
    # greedy continuation after x_t is 4, 5, 6, ... whatever the candidate (a table model)
    def choice(g, i):
        return 4 + i

    g, a, emitted = pd.verify_greedy(choice, [(4, 9), (4, 5), (4, 5)])
    assert (g, a, emitted) == (1, 2, [4, 5, 6])
    assert pd.verify_greedy(choice, [(7, 5)]) == (None, 0, [4])
    assert pd.verify_greedy(choice, []) == (None, 0, [4])


def test_verify_point_mass_rules():
    p = np.array([0.1, 0.6, 0.3])

    def probs(g, i):
        return p

    # u below p(d): accepted; then the bonus token from p with u[1, G]
    assert pd.verify_point_mass(probs, [(1,)], [[0.59, 0.0], [0.0, 0.05]]) == (0, 1, [1, 0])
    # u at p(d): rejected; residual p without 1 = (0.25, 0, 0.75); u = 0.3 -> token 2
    assert pd.verify_point_mass(probs, [(1,)], [[0.6, 0.3], [0.0, 0.0]]) == (None, 0, [2])
    # two candidates: the second is tried against the residual (0.25, 0, 0.75): accept 2 iff u < 0.75
    assert pd.verify_point_mass(probs, [(1,), (2,)], [[0.9, 0.7, 0.0], [0.0, 0.0, 0.99]]) == (1, 1, [2, 2])
    # a repeated token has residual probability 0: never accepted twice
    assert pd.verify_point_mass(probs, [(1,), (1,)], [[0.9, 0.0, 0.99], [0.0, 0.0, 0.0]]) == (None, 0, [2])


def test_jacobi_random_start_needs_several_iterations():
    """The m-iteration bound is not vacuous: from random guesses, blocks take more than one pass."""
    prompt = np.array([[1, 2, 3]])
    _, stats = pd.jacobi_decode(PARAMS, CONFIG, prompt, 21, 7, rng=np.random.default_rng(0))
    assert max(stats.iterations) > 1 and all(j <= 7 for j in stats.iterations)
    assert stats.tokens_per_step == (7, 7, 7) and stats.tokens_per_forward == 21 / sum(stats.iterations)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("impl", [pd, fpd], ids=["reference", "fast"])
def test_bad_arguments_name_themselves(impl):
    prompt = np.array([[1, 2]])
    P = PARAMS if impl is pd else fb.to_torch(PARAMS, "cpu", torch.float64)
    with pytest.raises(ValueError, match="window"):
        impl.lookahead_decode(P, CONFIG, prompt, 3, window=0)
    with pytest.raises(ValueError, match="ngram"):
        impl.lookahead_decode(P, CONFIG, prompt, 3, ngram=1)
    with pytest.raises(ValueError, match="candidates"):
        impl.lookahead_decode(P, CONFIG, prompt, 3, candidates=-1)
    with pytest.raises(ValueError, match="batch 1"):
        impl.lookahead_decode(P, CONFIG, np.array([[1, 2], [3, 4]]), 3)
    with pytest.raises(ValueError, match=r"u: expected shape \(1, 3, 5\)"):
        impl.lookahead_decode(P, CONFIG, prompt, 3, candidates=4, u=np.zeros((1, 3, 4)))
    with pytest.raises(ValueError, match="u: expected uniforms"):
        impl.lookahead_decode(P, CONFIG, prompt, 3, candidates=1, u=np.ones((1, 3, 2)))
    with pytest.raises(ValueError, match="prompt: expected length"):
        impl.jacobi_decode(P, CONFIG, np.zeros((1, 20), dtype=np.int64), 5, 2)
    with pytest.raises(ValueError, match="m: expected an int >= 1"):
        impl.jacobi_decode(P, CONFIG, prompt, 3, 0)
    with pytest.raises(TypeError, match="rng"):
        impl.jacobi_decode(P, CONFIG, prompt, 3, 2, rng=0)


@pytest.mark.parametrize("impl", [pd, fpd], ids=["reference", "fast"])
def test_zero_new_tokens_returns_the_prompt(impl):
    P = PARAMS if impl is pd else fb.to_torch(PARAMS, "cpu", torch.float64)
    for tokens, stats in (impl.lookahead_decode(P, CONFIG, np.array([[1, 2]]), 0),
                          impl.jacobi_decode(P, CONFIG, np.array([[1, 2]]), 0, 3)):  # fmt: skip
        assert np.asarray(tokens).tolist() == [[1, 2]] and stats.forwards == 0


# ----------------------------------------------------------------------------- end of sequence


@pytest.mark.parametrize("impl", [pd, fpd], ids=["reference", "fast"])
@pytest.mark.parametrize("kwargs, match", [
    (dict(eos_token_id=11), "eos_token_id:"), (dict(eos_token_id=-1), "eos_token_id:"),
    (dict(eos_token_id=3.0), "eos_token_id:"), (dict(eos_token_id=False), "eos_token_id:"),
    (dict(eos_token_id=()), "eos_token_id:"), (dict(eos_token_id=[2, 11]), "eos_token_id:"),
    (dict(eos_token_id=2, pad_token_id=11), "pad_token_id:"), (dict(pad_token_id=-1), "pad_token_id:"),
])  # fmt: skip
@pytest.mark.parametrize("max_new_tokens", [0, 3])
def test_bad_eos_refused(impl, kwargs, match, max_new_tokens):
    P = PARAMS if impl is pd else fb.to_torch(PARAMS, "cpu", torch.float64)
    prompt = np.array([[1, 2]])
    with pytest.raises(ValueError, match=f"^{match}"):
        impl.jacobi_decode(P, CONFIG, prompt, max_new_tokens, 2, **kwargs)
    with pytest.raises(ValueError, match=f"^{match}"):
        impl.lookahead_decode(P, CONFIG, prompt, max_new_tokens, **kwargs)
    with pytest.raises(ValueError, match=f"^{match}"):
        impl.lookahead_decode(P, CONFIG, prompt, max_new_tokens, candidates=1, u=np.zeros((1, max_new_tokens, 2)),
                              **kwargs)  # fmt: skip
    if impl is pd:
        with pytest.raises(ValueError, match=f"^{match}"):
            pd.exact_output_distribution(lambda s: np.ones(11) / 11, lambda s: [], (), 1, 11, **kwargs)
        with pytest.raises(ValueError, match=f"^{match}"):
            pd.chain_rule_distribution(lambda s: np.ones(11) / 11, (), 1, 11, **kwargs)


@pytest.mark.parametrize("impl", [pd, fpd], ids=["reference", "fast"])
def test_jacobi_stops_iterating_once_an_eos_is_final(impl):
    """From random guesses a block of 7 takes several iterations (see above); with eos = the greedy
    token at new position e, the first block stops after at most e + 1 iterations (y^(j)_{<j} is
    final), emits e + 1 tokens, and decoding ends there."""
    P = PARAMS if impl is pd else fb.to_torch(PARAMS, "cpu", torch.float64)
    prompt = np.array([[1, 2, 3]])
    greedy = ref_gpt.greedy(PARAMS, CONFIG, prompt, 21)[0, 3:].tolist()
    _, full = pd.jacobi_decode(PARAMS, CONFIG, prompt, 21, 7, rng=np.random.default_rng(0))
    for e in range(3):
        if greedy[e] in greedy[:e]:
            continue
        tokens, stats = impl.jacobi_decode(P, CONFIG, prompt, 21, 7, rng=np.random.default_rng(0),
                                           eos_token_id=greedy[e])  # fmt: skip
        assert np.asarray(tokens)[0].tolist() == [1, 2, 3] + greedy[: e + 1]
        assert stats.tokens_per_step == (e + 1,) and stats.iterations[0] <= e + 1 < full.iterations[0]
    tokens, stats = impl.lookahead_decode(P, CONFIG, prompt, 21, eos_token_id=greedy[0])
    assert np.asarray(tokens)[0].tolist() == [1, 2, 3, greedy[0]] and stats.forwards == 1
