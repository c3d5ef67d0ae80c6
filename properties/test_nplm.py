"""Properties of Bengio et al.'s NPLM (reference.nplm, fast.nplm) that hold exactly.

- the dependency structure is exactly the n-gram band: the logits at position t change
  (bit for bit) when a token in tokens[t-n+2 .. t] changes, and NEVER for any other
  token -- neither the future (causality) nor beyond the window (the Markov order);
  checked on the reference and on the fast path in float64 and float32;
- normalization by enumeration: sum over all V**T sequences of p(x) = 1 (1e-12);
- equivalence: logits through the window cache (random prefill chunks, then steps)
  = teacher-forced `forward`; fast generation = reference generation from the same
  uniforms; the direct connections W set to zero = the model without them, exactly;
- purity and determinism.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import nplm as fast_nplm
from properties.conftest import seeds
from chainrule.reference import nplm as ref_nplm
from chainrule.reference.checks import assert_close, assert_normalized, assert_pure, dependency_matrix, format_dependency_matrix

FAST_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@st.composite
def nplm_models(draw, vocab_size=None):
    """(config, float64 params): vocab 2..6, order 1..4, m 1..3, h 1..4, with or without W."""
    vocab = vocab_size if vocab_size is not None else draw(st.integers(2, 6))
    config = ref_nplm.Config(
        vocab_size=vocab, order=draw(st.integers(1, 4)), n_embd=draw(st.integers(1, 3)),
        hidden=draw(st.integers(1, 4)), direct=draw(st.booleans()), bos_token=draw(st.integers(0, vocab - 1)),
    )  # fmt: skip
    return config, ref_nplm.random_params(config, np.random.default_rng(draw(seeds)))


@st.composite
def tokens_for(draw, config, max_len=7, max_batch=3):
    B, T = draw(st.integers(1, max_batch)), draw(st.integers(1, max_len))
    return np.random.default_rng(draw(seeds)).integers(0, config.vocab_size, size=(B, T))


def band(T: int, order: int) -> np.ndarray:
    """(T, T) bool: logits at t may depend on tokens t - order + 2 .. t."""
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    return (s <= t) & (s >= t - order + 2)


def _assert_band(fn, tokens, config, name):
    D = dependency_matrix(fn, tokens, vocab_size=config.vocab_size)
    want = band(tokens.shape[1], config.order)
    assert np.array_equal(D, want), (
        f"{name}: the dependency structure is not the {config.order}-gram band.\n"
        f"measured:\n{format_dependency_matrix(D)}\nexpected:\n{format_dependency_matrix(want)}"
    )


@given(nplm_models(), st.data())
def test_reference_depends_exactly_on_the_window(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    _assert_band(lambda tok: ref_nplm.forward(params, config, tok), tokens, config, "reference.nplm.forward")


@pytest.mark.parametrize("dtype", list(FAST_DTYPES))
@given(model=nplm_models(), data=st.data())
def test_fast_depends_exactly_on_the_window(dtype, model, data):
    config, params = model
    tokens = torch.as_tensor(data.draw(tokens_for(config)))
    P = fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    _assert_band(lambda tok: fast_nplm.forward(P, config, tok), tokens, config, f"fast.nplm.forward ({dtype})")


@pytest.mark.parametrize("impl", ["reference", "fast-float64"])
@given(model=nplm_models(vocab_size=3))
def test_normalized_by_enumeration(impl, model):
    config, params = model
    if impl == "reference":
        fn = lambda x: ref_nplm.log_prob(params, config, x)  # noqa: E731
    else:
        P = fb.to_torch(params, "cpu", torch.float64)
        fn = lambda x: fast_nplm.log_prob(P, config, torch.as_tensor(x))  # noqa: E731
    for length in (1, 2, 3, 4):
        assert_normalized(fn, 3, length, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "fast-float64", "fast-float32"])
@given(model=nplm_models(), data=st.data())
def test_window_cache_equals_forward(impl, model, data):
    config, params = model
    tokens = data.draw(tokens_for(config))
    rng = np.random.default_rng(data.draw(seeds))
    module, dtype = (ref_nplm, "float64") if impl == "reference" else (fast_nplm, impl.split("-")[1])
    P = params if impl == "reference" else fb.to_torch(params, "cpu", FAST_DTYPES[dtype])
    x = tokens if impl == "reference" else torch.as_tensor(tokens)
    T = tokens.shape[1]
    cache, out, pos = module.init_cache(P, config, tokens.shape[0]), [], 0
    n_prefill = int(rng.integers(0, T + 1))
    while pos < n_prefill:
        c = int(rng.integers(1, n_prefill - pos + 1))
        logits, cache = module.prefill(P, config, cache, x[:, pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, T):
        logits_t, cache = module.step(P, config, cache, x[:, t])
        out.append(logits_t[:, None])
    assert cache["length"] == T
    cached = np.concatenate(out, 1) if impl == "reference" else torch.cat(out, 1)
    assert_close(f"{impl} logits through the window", module.forward(P, config, x), cached, dtype)


@given(nplm_models(), st.data())
def test_zero_direct_connections_equal_no_direct_connections(model, data):
    """y = b + W x + U tanh(d + H x) with W = 0 is the model without W, bit for bit (x 0 = +0 exactly)."""
    config, params = model
    tokens = data.draw(tokens_for(config))
    without = dataclasses.replace(config, direct=False)
    p_without = {k: v for k, v in params.items() if k != "W"}
    p_zero = p_without | {"W": np.zeros((config.context * config.n_embd, config.vocab_size))}
    with_zero = dataclasses.replace(config, direct=True)
    assert np.array_equal(ref_nplm.forward(p_zero, with_zero, tokens), ref_nplm.forward(p_without, without, tokens))


@given(nplm_models(), st.data())
def test_fast_generation_equals_reference_generation(model, data):
    config, params = model
    rng = np.random.default_rng(data.draw(seeds))
    T0, N = data.draw(st.integers(1, 4)), data.draw(st.integers(0, 6))
    prompt = rng.integers(0, config.vocab_size, size=(data.draw(st.integers(1, 3)), T0))
    u = rng.random((prompt.shape[0], N))
    P = fb.to_torch(params, "cpu", torch.float64)
    for kw in ({}, {"u": u}, {"u": u, "processors": (lambda logits: logits / 0.7,)}):
        want = ref_nplm.generate(params, config, prompt, N, **kw)
        got = fast_nplm.generate(P, config, torch.as_tensor(prompt), N, **kw)
        assert np.array_equal(got.numpy(), want), f"generate({sorted(kw)}): {got.tolist()} != {want.tolist()}"
    seed = data.draw(seeds)
    want = ref_nplm.sample(params, config, np.random.default_rng(seed), prompt, N)
    assert np.array_equal(fast_nplm.sample(P, config, np.random.default_rng(seed), torch.as_tensor(prompt), N).numpy(),
                          want)  # fmt: skip


@given(nplm_models(), st.data())
def test_reference_is_pure_and_deterministic(model, data):
    config, params = model
    tokens = data.draw(tokens_for(config, max_batch=2))
    assert_pure(ref_nplm.forward, params, config, tokens)
    assert_pure(ref_nplm.log_prob, params, config, tokens)
    cache = ref_nplm.init_cache(params, config, tokens.shape[0])
    _, new = assert_pure(ref_nplm.step, params, config, cache, tokens[:, 0].copy())
    assert new["length"] == 1 and cache["length"] == 0 and np.all(cache["window"] == config.bos_token)
    assert_pure(ref_nplm.prefill, params, config, new, tokens)
    assert_pure(ref_nplm.sample, params, config, np.random.default_rng(data.draw(seeds)), tokens[:, :1], 4)


@given(nplm_models(), st.data())
def test_fast_is_pure_and_deterministic(model, data):
    config, params = model
    tokens_np = data.draw(tokens_for(config, max_batch=2))
    tokens = torch.as_tensor(tokens_np)
    for dtype in FAST_DTYPES.values():
        P = fb.to_torch(params, "cpu", dtype)
        assert_pure(fast_nplm.forward, P, config, tokens)
        assert_pure(fast_nplm.log_prob, P, config, tokens)
        cache = fast_nplm.init_cache(P, config, tokens.shape[0])
        _, new = assert_pure(fast_nplm.step, P, config, cache, torch.tensor(tokens_np[:, 0].tolist()))
        assert cache["length"] == 0 and bool((cache["window"] == config.bos_token).all())
        assert_pure(fast_nplm.prefill, P, config, new, tokens)
        assert_pure(fast_nplm.sample, P, config, np.random.default_rng(data.draw(seeds)), tokens[:, :1], 4)
    assert_pure(fast_nplm.forward, params, config, tokens_np)  # NumPy params are converted, not mutated
