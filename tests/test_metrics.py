"""reference.metrics: nats, perplexity and bits/dim, and their errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chainrule.reference import gpt, metrics


def test_nll_is_the_negative_mean():
    assert metrics.nll(np.array([-1.0, -3.0])) == 2.0
    assert isinstance(metrics.nll(np.array([-1.0])), float)


@pytest.mark.parametrize("V,T", [(2, 1), (59, 7), (113, 3)])
def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(V, T):
    log_probs = np.full(4, -T * math.log(V))
    assert metrics.perplexity(log_probs, 4 * T) == pytest.approx(V, rel=1e-12)
    assert metrics.perplexity(log_probs, np.full(4, T)) == pytest.approx(V, rel=1e-12)


def test_perplexity_weights_by_tokens_not_sequences():
    # sequences of 1 and 3 tokens, each token with p = 1/2 and 1/8
    log_probs = np.array([math.log(1 / 2), 3 * math.log(1 / 8)])
    want = math.exp((math.log(2) + 3 * math.log(8)) / 4)
    assert metrics.perplexity(log_probs, np.array([1, 3])) == pytest.approx(want)


@pytest.mark.parametrize("n", [0, -3, np.array([0, 0])])
def test_perplexity_rejects_no_tokens(n):
    with pytest.raises(ValueError, match="n_tokens"):
        metrics.perplexity(np.array([-1.0]), n)


def test_bits_per_dim():
    assert metrics.bits_per_dim(8 * math.log(2.0), 8) == pytest.approx(1.0)
    # 8-bit images under a uniform model: 8 bits per dimension
    C, H, W = 3, 4, 5
    assert metrics.bits_per_dim(C * H * W * math.log(256), C * H * W) == pytest.approx(8.0)
    out = metrics.bits_per_dim(np.array([math.log(2.0), 2 * math.log(2.0)]), 1)
    assert np.allclose(out, [1.0, 2.0])
    with pytest.raises(ValueError, match="n_dims"):
        metrics.bits_per_dim(1.0, 0)


def test_metrics_of_a_gpt_agree_with_each_other():
    config = gpt.Config(vocab_size=7, block_size=5, n_layer=1, n_head=1, n_embd=3)
    params = gpt.init(config, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 7, size=(3, 5))
    lp = gpt.log_prob(params, config, x)
    ppl = metrics.perplexity(lp, x.size)
    assert ppl == pytest.approx(math.exp(metrics.nll(lp) / 5), rel=1e-12)
    assert metrics.bits_per_dim(metrics.nll(lp), 5) == pytest.approx(math.log2(ppl), rel=1e-12)
    assert 6.0 < ppl < 8.0  # a GPT-2 init is close to uniform over 7 tokens
