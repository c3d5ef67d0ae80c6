"""Batch invariance (reference.checks.batch), as properties.

- the reference GPT is exactly batch invariant: a row's logits (and log-likelihood) are the
  same bits alone, in batches of 2, 8 and 33, first, last or anywhere among any companions;
- the check measures what it claims: a function that computes row by row is exact; one whose
  rows see a statistic of the batch, or a rounding that depends on the batch size, is not, and
  its worst difference is reported where it is.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from chainrule.reference import gpt
from chainrule.reference.checks import assert_batch_invariant, batch_invariance
from properties.conftest import gpt_models, seeds, tokens_for


@given(gpt_models(), st.data())
def test_reference_gpt_is_exactly_batch_invariant(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config, max_batch=2))
    seed = data.draw(seeds)
    result = assert_batch_invariant(lambda x: gpt.forward(params, config, x), tokens, vocab_size=config.vocab_size,
                                    seed=seed)
    assert result.exact and result.max_abs == 0.0 and result.worst is None


@given(gpt_models(), st.data())
def test_reference_log_prob_is_exactly_batch_invariant(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config, max_batch=2))
    assert_batch_invariant(lambda x: gpt.log_prob(params, config, x), tokens, batch_sizes=(1, 3, 8),
                           seed=data.draw(seeds))  # fmt: skip (companions: shuffles of the tokens)


@given(st.integers(1, 3), st.integers(1, 6), seeds)
def test_row_by_row_functions_are_exact(B, T, seed):
    tokens = np.random.default_rng(seed).integers(0, 50, size=(B, T))
    result = batch_invariance(lambda x: np.cumsum(np.sin(x), axis=1) / (1.0 + x), tokens, seed=seed)
    assert result.exact and result.max_ulps == 0.0


@given(st.integers(1, 3), st.integers(2, 6), seeds, st.sampled_from([2, 8, 33]))
def test_batch_dependent_functions_are_caught(B, T, seed, n):
    tokens = np.random.default_rng(seed).integers(1, 50, size=(B, T))

    def leaky(x):  # every row sees the batch's mean: batch normalization left in training mode
        h = np.sin(x.astype(float))
        return h - h.mean(axis=0, keepdims=True)

    result = batch_invariance(leaky, tokens, vocab_size=50, batch_sizes=(1, n), seed=seed)
    assert not result.exact and result.worst[0] == n and result.max_abs > 0
    assert batch_invariance(leaky, tokens, batch_sizes=(1,), seed=seed).exact  # alone, twice: the same

    def rounds_by_batch_size(x):  # one ulp more in batches of 8 or more, only on the last row
        out = np.sin(x.astype(float)) + 2.0
        if len(x) >= 8:
            out[-1] = np.nextafter(out[-1], np.inf)
        return out

    result = batch_invariance(rounds_by_batch_size, tokens, batch_sizes=(1, 2, 8, 33), seed=seed)
    assert result.max_ulps == 1.0 and result.by_batch_size[2][1] == 0.0
    size, index, _, _ = result.worst
    assert size == 8 and index == 7  # the row placed last of a batch of 8
