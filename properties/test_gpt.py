"""Properties of GPT that hold exactly, on the reference and on the fast path.

- causality as the full dependency structure: perturbing the tokens at positions
  >= t leaves the logits at positions < t bit-for-bit unchanged, in every dtype;
  and a generic model's logits at t depend on *every* token at positions <= t;
- normalization by enumeration: sum over all V**T sequences of p(x) = 1 (1e-12);
- equivalence: KV cache (chunked prefill of random sizes, then steps) = full
  recompute; fast generation = reference generation from the same uniforms;
- purity and determinism: no input mutated, equal inputs give equal outputs.

The models are drawn with GPT2Config's options too (`gpt_models(options=True)`: each
activation, n_inner, the attention scale flags, a tied or untied head).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from properties.conftest import gpt_models, seeds, tokens_for
from chainrule.reference import gpt as ref_gpt
from chainrule.reference.checks import assert_causal, assert_close, assert_normalized, assert_pure

FAST_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _fast_forward(params, config, dtype):
    P = fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    return lambda tok: fast_gpt.forward(P, config, torch.as_tensor(tok))


# ----------------------------------------------------------------------------- causality


def _generic(config) -> bool:
    """Whether the logits can depend on the tokens at all. With n_embd = 1 every LayerNorm
    sees one feature, x - mean(x) = 0 exactly, and outputs its bias: a one-dimensional
    GPT is a constant function (causal, trivially, but not dependent on its context)."""
    return config.n_embd >= 2


@given(gpt_models(options=True), st.data())
def test_reference_is_causal_full_lower_triangle(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    D = assert_causal(lambda tok: ref_gpt.forward(params, config, tok), tokens, vocab_size=config.vocab_size,
                      full=_generic(config), name="reference.gpt.forward")  # fmt: skip
    assert D.shape == (tokens.shape[1],) * 2
    if not _generic(config):
        assert not D.any()


@pytest.mark.parametrize("dtype", list(FAST_DTYPES))
@given(model=gpt_models(options=True), data=st.data())
def test_fast_is_causal_bit_exact(dtype, model, data):
    """Bit-exact in float32 too: masked positions must contribute exact zeros."""
    config, params = model
    tokens = data.draw(tokens_for(config))
    assert_causal(_fast_forward(params, config, dtype), torch.as_tensor(tokens), vocab_size=config.vocab_size,
                  full=_generic(config), name=f"fast.gpt.forward ({dtype})")  # fmt: skip


@given(gpt_models(options=True), st.data())
def test_log_prob_of_every_prefix_is_a_partial_sum(model, data):
    """log p(x_1..x_t) scored on the prefix alone = the first t chain-rule terms of the
    whole sequence: the terms up to t do not depend on the tokens after t."""
    from chainrule.reference import nn

    config, params = model
    x = data.draw(tokens_for(config))
    B, T = x.shape
    inputs = np.concatenate([np.full((B, 1), config.bos_token), x[:, :-1]], axis=1)
    logp = nn.log_softmax(ref_gpt.forward(params, config, inputs))  # (B, T, V)
    terms = np.take_along_axis(logp, x[:, :, None], axis=-1)[:, :, 0]  # (B, T)
    for t in range(1, T + 1):
        partial = np.cumsum(terms, axis=1)[:, t - 1]  # (B,)
        assert_close(f"log p(x_1..x_{t})", partial, ref_gpt.log_prob(params, config, x[:, :t]), "float64")


# ----------------------------------------------------------------------------- normalization


def _log_prob_fn(params, config, impl):
    if impl == "reference":
        return lambda x: ref_gpt.log_prob(params, config, x)
    P = fb.to_torch(params, "cpu", torch.float64)
    return lambda x: fast_gpt.log_prob(P, config, torch.as_tensor(x))


@pytest.mark.parametrize("impl", ["reference", "fast-float64"])
@given(model=gpt_models(vocab_size=3, min_block_size=3, options=True))
def test_normalized_by_enumeration(impl, model):
    """V = 3: sum over all 3, 9 and 27 sequences of length 1, 2, 3 of p(x) is 1 within 1e-12."""
    config, params = model
    for length in (1, 2, 3):
        assert_normalized(_log_prob_fn(params, config, impl), 3, length, atol=1e-12)


# ----------------------------------------------------------------------------- equivalence


def _random_chunks(rng, n):
    chunks = []
    while n:
        chunks.append(int(rng.integers(1, n + 1)))
        n -= chunks[-1]
    return chunks


@given(gpt_models(options=True), st.data())
def test_reference_kv_cache_equals_recompute(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    rng = np.random.default_rng(data.draw(seeds))
    T = tokens.shape[1]
    n_prefill = int(rng.integers(0, T + 1))
    cache, out = ref_gpt.init_cache(params, config, tokens.shape[0]), []
    pos = 0
    for c in _random_chunks(rng, n_prefill):
        logits, cache = ref_gpt.prefill(params, config, cache, tokens[:, pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, T):
        logits_t, cache = ref_gpt.step(params, config, cache, tokens[:, t])
        out.append(logits_t[:, None])
    assert cache["length"] == T
    assert_close("reference cached logits", ref_gpt.forward(params, config, tokens), np.concatenate(out, 1), "float64")


@pytest.mark.parametrize("dtype", list(FAST_DTYPES))
@given(model=gpt_models(options=True), data=st.data())
def test_fast_kv_cache_equals_recompute(dtype, model, data):
    """The fast cache (preallocated, updated in place) against fast full recompute in the
    same dtype, and against the float64 reference."""
    config, params = model
    tokens = data.draw(tokens_for(config))
    rng = np.random.default_rng(data.draw(seeds))
    T = tokens.shape[1]
    P = fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    tok = torch.as_tensor(tokens)
    cache, out, pos = fast_gpt.init_cache(P, config, tokens.shape[0]), [], 0
    for c in _random_chunks(rng, int(rng.integers(0, T + 1))):
        logits, cache = fast_gpt.prefill(P, config, cache, tok[:, pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, T):
        logits_t, cache = fast_gpt.step(P, config, cache, tok[:, t])
        out.append(logits_t[:, None])
    assert cache.length == T
    cached = torch.cat(out, dim=1)
    assert_close(f"fast cached logits vs fast recompute ({dtype})", fast_gpt.forward(P, config, tok), cached, dtype)
    assert_close(f"fast cached logits vs reference ({dtype})", ref_gpt.forward(params, config, tokens), cached, dtype)


def _temperature(logits):
    return logits / 0.7  # works on NumPy and torch alike


@given(gpt_models(min_block_size=2, options=True), st.data())
def test_fast_generation_equals_reference_generation(model, data):
    """float64: the same tokens from the same uniforms (and greedy), processors included."""
    config, params = model
    rng = np.random.default_rng(data.draw(seeds))
    T0 = data.draw(st.integers(1, config.block_size))
    N = data.draw(st.integers(0, config.block_size + 1 - T0))
    prompt = rng.integers(0, config.vocab_size, size=(data.draw(st.integers(1, 3)), T0))
    u = rng.random((prompt.shape[0], N))
    P = fb.to_torch(params, "cpu", torch.float64)
    for kw in ({}, {"u": u}, {"u": u, "processors": (_temperature,)}):
        want = ref_gpt.generate(params, config, prompt, N, **kw)
        got = fast_gpt.generate(P, config, torch.as_tensor(prompt), N, **kw)
        assert np.array_equal(got.cpu().numpy(), want), f"generate({sorted(kw)}): {got.tolist()} != {want.tolist()}"
    seed = data.draw(seeds)
    want = ref_gpt.sample(params, config, np.random.default_rng(seed), prompt, N)
    got = fast_gpt.sample(P, config, np.random.default_rng(seed), torch.as_tensor(prompt), N)
    assert np.array_equal(got.cpu().numpy(), want)


# ----------------------------------------------------------------------------- purity


@given(gpt_models(min_block_size=2, options=True), st.data())
def test_reference_is_pure_and_deterministic(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config, max_batch=2))
    assert_pure(ref_gpt.forward, params, config, tokens)
    assert_pure(ref_gpt.log_prob, params, config, tokens)
    cache = ref_gpt.init_cache(params, config, tokens.shape[0])
    _, cache = assert_pure(ref_gpt.prefill, params, config, cache, tokens[:, :1])
    assert_pure(ref_gpt.step, params, config, cache, tokens[:, 1] if tokens.shape[1] > 1 else tokens[:, 0])
    prompt, N = tokens[:, :1], config.block_size
    assert_pure(ref_gpt.generate, params, config, prompt, N, u=np.random.default_rng(0).random((prompt.shape[0], N)))
    assert_pure(ref_gpt.sample, params, config, np.random.default_rng(data.draw(seeds)), prompt, N)


@given(gpt_models(min_block_size=2, options=True), st.data())
def test_fast_is_pure_and_deterministic(model, data):
    config, params = model
    tokens = torch.as_tensor(data.draw(tokens_for(config, max_batch=2)))
    for dtype in FAST_DTYPES.values():
        P = fb.to_torch(params, "cpu", dtype)
        assert_pure(fast_gpt.forward, P, config, tokens)
        assert_pure(fast_gpt.log_prob, P, config, tokens)
        prompt, N = tokens[:, :1], config.block_size
        assert_pure(fast_gpt.generate, P, config, prompt, N, u=np.random.default_rng(0).random((prompt.shape[0], N)))
        assert_pure(fast_gpt.sample, P, config, np.random.default_rng(data.draw(seeds)), prompt, N)
    assert_pure(fast_gpt.forward, params, config, tokens.numpy())  # NumPy params are converted, not mutated
