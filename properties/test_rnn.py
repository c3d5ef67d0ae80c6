"""Properties of the recurrent LM (reference.rnn, fast.rnn) that hold exactly.

- causality as the full dependency structure: perturbing the tokens at positions >= t
  leaves the logits at positions < t bit-for-bit unchanged (reference, fast float64 and
  float32); and a generic tanh/LSTM/GRU model's logits at t depend on EVERY token <= t
  (the recurrent state carries the whole prefix; relu units can die, so relu is
  checked for causality only);
- normalization by enumeration: sum over all V**T sequences of p(x) = 1 (1e-12);
- equivalence: the logits through the recurrent state (prefill chunks of random sizes,
  then steps) equal teacher-forced `forward`; fast generation equals the reference's,
  token for token, from the same uniforms and greedily;
- purity and determinism: no input mutated, equal inputs give equal outputs; the
  reference's `step` returns a new cache and leaves the old one usable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import rnn as fast_rnn
from properties.conftest import seeds
from chainrule.reference import rnn as ref_rnn
from chainrule.reference.checks import assert_causal, assert_close, assert_normalized, assert_pure

FAST_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@st.composite
def rnn_models(draw, vocab_size=None):
    """(config, float64 params) of a tiny recurrent LM: every kind, vocab 2..6, E 1..3, H 1..4, L 1..2."""
    kind = draw(st.sampled_from(ref_rnn.KINDS))
    vocab = vocab_size if vocab_size is not None else draw(st.integers(2, 6))
    config = ref_rnn.Config(
        kind=kind, vocab_size=vocab, n_embd=draw(st.integers(1, 3)), hidden=draw(st.integers(1, 4)),
        n_layer=draw(st.integers(1, 2)),
        nonlinearity=draw(st.sampled_from(("tanh", "relu"))) if kind == "elman" else "tanh",
        bos_token=draw(st.integers(0, vocab - 1)),
    )  # fmt: skip
    return config, ref_rnn.random_params(config, np.random.default_rng(draw(seeds)))


@st.composite
def tokens_for(draw, config, max_len=6, max_batch=3):
    B, T = draw(st.integers(1, max_batch)), draw(st.integers(1, max_len))
    return np.random.default_rng(draw(seeds)).integers(0, config.vocab_size, size=(B, T))


def _generic(config) -> bool:
    return config.nonlinearity == "tanh"


@given(rnn_models(), st.data())
def test_reference_is_causal_full_lower_triangle(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    D = assert_causal(lambda tok: ref_rnn.forward(params, config, tok), tokens, vocab_size=config.vocab_size,
                      full=_generic(config), name="reference.rnn.forward")  # fmt: skip
    assert D.shape == (tokens.shape[1],) * 2


@pytest.mark.parametrize("dtype", list(FAST_DTYPES))
@given(model=rnn_models(), data=st.data())
def test_fast_is_causal_bit_exact(dtype, model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    P = fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    # every dependency must be present in float64; in float32 a gate can round to exactly 0 or 1
    # (tanh(x) = 1.0f from |x| ~ 9), which legitimately cuts a dependency: causality only
    assert_causal(lambda tok: fast_rnn.forward(P, config, tok), torch.as_tensor(tokens), vocab_size=config.vocab_size,
                  full=_generic(config) and dtype == "float64", name=f"fast.rnn.forward ({dtype})")  # fmt: skip


def _log_prob_fn(params, config, impl):
    if impl == "reference":
        return lambda x: ref_rnn.log_prob(params, config, x)
    P = fb.to_torch(params, "cpu", torch.float64)
    return lambda x: fast_rnn.log_prob(P, config, torch.as_tensor(x))


@pytest.mark.parametrize("impl", ["reference", "fast-float64"])
@given(model=rnn_models(vocab_size=3))
def test_normalized_by_enumeration(impl, model):
    """V = 3: sum over all 3, 9 and 27 sequences of length 1, 2, 3 of p(x) is 1 within 1e-12."""
    config, params = model
    for length in (1, 2, 3):
        assert_normalized(_log_prob_fn(params, config, impl), 3, length, atol=1e-12)


def _random_chunks(rng, n):
    chunks = []
    while n:
        chunks.append(int(rng.integers(1, n + 1)))
        n -= chunks[-1]
    return chunks


@pytest.mark.parametrize("impl", ["reference", "fast-float64", "fast-float32"])
@given(model=rnn_models(), data=st.data())
def test_state_equals_forward(impl, model, data):
    """Logits through the recurrent state (random prefill chunks, then steps) = teacher forcing."""
    config, params = model
    tokens = data.draw(tokens_for(config))
    rng = np.random.default_rng(data.draw(seeds))
    module, dtype = (ref_rnn, "float64") if impl == "reference" else (fast_rnn, impl.split("-")[1])
    P = params if impl == "reference" else fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    x = tokens if impl == "reference" else torch.as_tensor(tokens)
    T = tokens.shape[1]
    cache, out, pos = module.init_cache(P, config, tokens.shape[0]), [], 0
    for c in _random_chunks(rng, int(rng.integers(0, T + 1))):
        logits, cache = module.prefill(P, config, cache, x[:, pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, T):
        logits_t, cache = module.step(P, config, cache, x[:, t])
        out.append(logits_t[:, None])
    assert cache["length"] == T
    cached = np.concatenate(out, 1) if impl == "reference" else torch.cat(out, 1)
    assert_close(f"{impl} logits through the state", module.forward(P, config, x), cached, dtype)


@given(rnn_models(), st.data())
def test_fast_generation_equals_reference_generation(model, data):
    config, params = model
    rng = np.random.default_rng(data.draw(seeds))
    T0, N = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 6))
    prompt = rng.integers(0, config.vocab_size, size=(data.draw(st.integers(1, 3)), T0))
    u = rng.random((prompt.shape[0], N))
    P = fb.to_torch(params, "cpu", torch.float64)
    for kw in ({}, {"u": u}, {"u": u, "processors": (lambda logits: logits / 0.7,)}):
        want = ref_rnn.generate(params, config, prompt, N, **kw)
        got = fast_rnn.generate(P, config, torch.as_tensor(prompt), N, **kw)
        assert np.array_equal(got.numpy(), want), f"generate({sorted(kw)}): {got.tolist()} != {want.tolist()}"
    seed = data.draw(seeds)
    want = ref_rnn.sample(params, config, np.random.default_rng(seed), prompt, N)
    assert np.array_equal(fast_rnn.sample(P, config, np.random.default_rng(seed), torch.as_tensor(prompt), N).numpy(), want)


@given(rnn_models(), st.data())
def test_reference_is_pure_and_deterministic(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config, max_batch=2))
    assert_pure(ref_rnn.forward, params, config, tokens)
    assert_pure(ref_rnn.log_prob, params, config, tokens)
    cache = ref_rnn.init_cache(params, config, tokens.shape[0])
    _, new = assert_pure(ref_rnn.step, params, config, cache, tokens[:, 0])
    assert new is not cache and new["length"] == 1 and cache["length"] == 0
    assert not np.any(cache["h"]), "step wrote into the cache it was given"
    assert_pure(ref_rnn.prefill, params, config, new, tokens)
    assert_pure(ref_rnn.sample, params, config, np.random.default_rng(data.draw(seeds)), tokens[:, :1], 4)
    state = (cache["h"], cache["c"]) if config.kind == "lstm" else cache["h"]
    layer = {"rnn_tanh": ref_rnn.rnn_tanh, "rnn_relu": ref_rnn.rnn_relu, "lstm": ref_rnn.lstm, "gru": ref_rnn.gru}
    x = np.random.default_rng(0).normal(size=tokens.shape + (config.n_embd,))
    assert_pure(layer[config.mode], ref_rnn.recurrent_params(params), x, state)


@given(rnn_models(), st.data())
def test_fast_is_pure_and_deterministic(model, data):
    config, params = model
    tokens = torch.as_tensor(data.draw(tokens_for(config, max_batch=2)))
    for dtype in FAST_DTYPES.values():
        P = fb.to_torch(params, "cpu", dtype)
        assert_pure(fast_rnn.forward, P, config, tokens)
        assert_pure(fast_rnn.log_prob, P, config, tokens)
        cache = fast_rnn.init_cache(P, config, tokens.shape[0])
        # a fresh tensor: assert_pure's bitwise comparison fails on a size-1 int view of stride 2
        _, new = assert_pure(fast_rnn.step, P, config, cache, torch.tensor(tokens[:, 0].tolist()))
        assert cache["length"] == 0 and not bool(cache["h"].any())
        assert_pure(fast_rnn.prefill, P, config, new, tokens)
        assert_pure(fast_rnn.sample, P, config, np.random.default_rng(data.draw(seeds)), tokens[:, :1], 4)
    assert_pure(fast_rnn.forward, params, config, tokens.numpy())  # NumPy params are converted, not mutated
