"""reference.nplm (float64 NumPy, the truth) against every backend of fast.nplm.

Bengio et al. 2003's model with orders 1 (no context: a unigram softmax), 2, 3 and 5,
with and without direct connections, odd sizes (m = 1, 3; h = 5, 7; vocabularies 13
and 59; T = 1 and 13), parameters far from the training init
(`reference.nplm.random_params`). Compared: logits, log_prob, logits through the window
cache (chunked prefill + steps), greedy and sampled tokens from shared uniforms, and
gradients of the mean NLL (autograd vs finite differences of the reference). Low
precision is judged relative to the naive same-dtype run: the reference in float32
NumPy, or fast.nplm's term-by-term impl="plain" in bfloat16.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from diff_tests.conftest import check
from diff_tests.test_rnn import ModelSide, check_generation, check_gradient, gradient_truth
from chainrule.fast import nplm as fast_nplm
from chainrule.reference import nplm as ref_nplm

BATCH = 2

CONFIGS = {
    "unigram": ref_nplm.Config(vocab_size=13, order=1, n_embd=3, hidden=5, bos_token=4),
    "bigram-direct": ref_nplm.Config(vocab_size=59, order=2, n_embd=1, hidden=7, direct=True, bos_token=58),
    "trigram": ref_nplm.Config(vocab_size=13, order=3, n_embd=3, hidden=7, direct=False),
    "5gram-direct": ref_nplm.Config(vocab_size=59, order=5, n_embd=3, hidden=5, direct=True, bos_token=1),
}
CASES = [(name, T) for name in CONFIGS for T in (1, 13)]


@pytest.fixture
def side(backend):
    return ModelSide(backend, ref_nplm, fast_nplm, "plain")


@functools.lru_cache(maxsize=None)
def case(name: str, T: int):
    """(config, float64 params, tokens (B, T), reference logits) -- once per process."""
    config = CONFIGS[name]
    params = ref_nplm.random_params(config, np.random.default_rng(200 + T + len(name)))
    tokens = np.random.default_rng(T + 2 * len(name)).integers(0, config.vocab_size, size=(BATCH, T))
    return config, params, tokens, ref_nplm.forward(params, config, tokens)


def _case_id(c):
    return f"{c[0]}-T{c[1]}"


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_logits(side, case_key):
    config, params, tokens, truth = case(*case_key)
    P = side.params(params)
    got = side.forward(P, config, tokens)
    assert got.shape == (BATCH, case_key[1], config.vocab_size)
    check("logits", truth, got, side, naive=side.naive_forward(P, config, tokens))


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_log_prob(side, case_key):
    config, params, tokens, _ = case(*case_key)
    truth = ref_nplm.log_prob(params, config, tokens)
    P = side.params(params)
    got = side.log_prob(P, config, tokens)
    assert got.shape == (BATCH,)
    check("log_prob", truth, got, side, naive=side.naive_log_prob(P, config, tokens))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_window_cache_logits(side, name):
    """Chunked prefill (2 then 3 tokens) through the window, then one step per token = forward."""
    config, params, tokens, truth = case(name, 13)
    P = side.params(params)
    got = side.cached_logits(P, config, tokens, [2, 3])
    check("logits through the window (prefill 2 + 3, then steps)", truth, got, side,
          naive=side.naive_forward(P, config, tokens))  # fmt: skip


PROMPT, NEW = 3, 21


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens(side, name):
    config, params, tokens, _ = case(name, 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    got = side.generate(P, config, prompt, NEW)
    check_generation("greedy tokens", side, P, params, config, prompt, got, NEW, ref_nplm.forward)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampled_tokens_shared_uniforms(side, name):
    config, params, tokens, _ = case(name, 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    u = np.random.default_rng(len(name) + 1).random((BATCH, NEW))
    got = side.generate(P, config, prompt, NEW, u=u)
    check_generation("sampled tokens", side, P, params, config, prompt, got, NEW, ref_nplm.forward, u=u)


def test_sample_with_same_rng_seed(side):
    config, params, tokens, _ = case("5gram-direct", 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    got = side.sample(P, config, np.random.default_rng(5), prompt, NEW)
    u = np.random.default_rng(5).random((BATCH, NEW))
    assert np.array_equal(ref_nplm.sample(params, config, np.random.default_rng(5), prompt, NEW),
                          ref_nplm.generate(params, config, prompt, NEW, u=u))  # fmt: skip
    check_generation("sample(rng) tokens", side, P, params, config, prompt, got, NEW, ref_nplm.forward, u=u)


@functools.lru_cache(maxsize=None)
def _gradient_truth(name):
    config, params, tokens, _ = case(name, 13)
    return gradient_truth(ref_nplm, config, params, tokens, [("C", (int(tokens[0, 2]), 0))])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_of_mean_nll(side, name):
    config, params, tokens, _ = case(name, 13)
    coords, truth, fd_err = _gradient_truth(name)
    check_gradient(side, fast_nplm, config, params, tokens, coords, truth, fd_err, "plain")
