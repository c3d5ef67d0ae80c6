"""reference.parallel_decoding (float64 NumPy, the truth) against every backend of fast.parallel_decoding.

Random GPTs with odd sizes (head_dim 1 and 3, vocabularies 59 and 113, block 59),
far from the GPT-2 init, and the same parameters on every backend. Compared:

  step logits  every row of one full lookahead step (explicit mask, positions, cache),
            elementwise under the tolerance table (float32 against the naive float32 spec);
  float64   the tokens and the decoding steps (model calls, tokens per step, Jacobi
            iterations) of Jacobi and lookahead decoding, greedy and sampling mode:
            identical, token for token and step for step;
  low precision  the greedy tokens, judged with `reference.checks.compare_tokens` against
            the reference's choice given the backend's own prefix (the greedy output is
            the target of both decoders), and sampling mode without candidates (then
            inverse-CDF sampling with the uniforms u[:, :, 0]), judged the same way.
            Step counts are not compared: a near-tie in the lookahead branch legitimately
            changes which n-grams the pool holds.

cupy-f64 runs the reference itself on CuPy arrays.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from chainrule.fast import parallel_decoding as fpd
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import parallel_decoding as pd
from diff_tests.conftest import check
from chainrule.reference.checks import assert_tokens

CONFIGS = {
    "hd1": ref_gpt.Config(vocab_size=59, block_size=59, n_layer=2, n_head=3, n_embd=3, bos_token=7),
    "hd3": ref_gpt.Config(vocab_size=113, block_size=59, n_layer=2, n_head=2, n_embd=6, bos_token=0),
}
LOOKAHEAD = [dict(window=1, ngram=2, candidates=1), dict(window=3, ngram=3, candidates=2),
             dict(window=5, ngram=4, candidates=3, prompt_ngrams=True)]  # fmt: skip
JACOBI = [1, 3, 7]
T0 = 13


@functools.lru_cache(maxsize=None)
def case(name: str, scale: float = 0.5):
    """(config, float64 params, prompt (1, T0) with repeats, new tokens filling the context).
    scale multiplies wte: 0.5 gives varied greedy streams; 2 peaked distributions, whose
    samples follow the pooled n-grams often enough for sampling-mode candidates to be accepted."""
    config = CONFIGS[name]
    rng = np.random.default_rng(40 + len(name) + config.vocab_size)
    params = ref_gpt.random_params(config, rng)
    params["wte"] = params["wte"] * scale
    base = rng.integers(0, config.vocab_size, size=5)
    prompt = np.concatenate([base, base, base[:3]])[None]  # (1, 13): n-grams repeat
    return config, params, prompt, config.block_size + 1 - T0


@functools.lru_cache(maxsize=None)
def _reference_lookahead(name: str, scale: float, kw_items: tuple, sampling: bool):
    """The reference's (tokens, stats), once per case (shared by every backend)."""
    config, params, prompt, n = case(name, scale)
    kw = dict(kw_items)
    u = np.random.default_rng(5).random((1, n, kw["candidates"] + 1)) if sampling else None
    return pd.lookahead_decode(params, config, prompt, n, u=u, **kw)


@functools.lru_cache(maxsize=None)
def _reference_jacobi(name: str, m: int):
    config, params, prompt, n = case(name)
    tokens, stats = pd.jacobi_decode(params, config, prompt, n, m, rng=np.random.default_rng(m))
    assert np.array_equal(tokens, _greedy(name))
    return tokens, stats


@functools.lru_cache(maxsize=None)
def _greedy(name: str):
    config, params, prompt, n = case(name)
    return ref_gpt.greedy(params, config, prompt, n)


def _impl(side):
    return pd if side.is_cupy else fpd


def _ids(kw):
    return "-".join(f"{k[0]}{int(v)}" for k, v in kw.items())


def _judge(what, side, P, params, config, prompt, got, n, u=None):
    """Each generated token against the reference's choice given the backend's prefix (float64: all equal)."""
    fast = (lambda x: side.cached_logits(P, config, x, [T0])) if side.low_precision else None
    result = assert_tokens(f"[{side.name}] {what}", prompt, got, lambda x: ref_gpt.forward(params, config, x),
                           side.dtype, u=u, fast=fast, max_new_tokens=n)  # fmt: skip
    print(result)


@pytest.mark.parametrize("kw", LOOKAHEAD, ids=_ids)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lookahead_greedy(side, name, kw):
    config, params, prompt, n = case(name)
    want, want_stats = _reference_lookahead(name, 0.5, tuple(kw.items()), False)
    assert np.array_equal(want, _greedy(name))
    P = side.params(params)
    got, stats = _impl(side).lookahead_decode(P, config, side.array(prompt), n, **kw)
    got = side.numpy(got)
    _judge(f"lookahead {kw} greedy tokens", side, P, params, config, prompt, got, n)
    print(f"[{side.name}] reference {want_stats.forwards} steps, backend {stats.forwards}")
    if not side.low_precision:
        assert np.array_equal(got, want)
        assert stats == want_stats, f"steps differ: reference {want_stats}, {side.name} {stats}"


@pytest.mark.parametrize("kw", LOOKAHEAD[1:], ids=_ids)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_lookahead_sampling(side, name, kw):
    config, params, prompt, n = case(name, 2.0)
    u = np.random.default_rng(5).random((1, n, kw["candidates"] + 1))
    P = side.params(params)
    if side.low_precision:  # without candidates: inverse-CDF sampling with u[:, :, 0]
        kw = dict(kw, candidates=0)
        u = u[:, :, :1]
        got, _ = _impl(side).lookahead_decode(P, config, side.array(prompt), n, u=u, **kw)
        _judge("lookahead sampling, no candidates", side, P, params, config, prompt, side.numpy(got), n, u=u[:, :, 0])
        return
    want, want_stats = _reference_lookahead(name, 2.0, tuple(kw.items()), True)
    got, stats = _impl(side).lookahead_decode(P, config, side.array(prompt), n, u=u, **kw)
    assert np.array_equal(side.numpy(got), want)
    assert stats == want_stats, f"steps differ: reference {want_stats}, {side.name} {stats}"
    assert sum(want_stats.tokens_per_step) > want_stats.forwards, "no candidate accepted: the case proves little"


@pytest.mark.parametrize("m", JACOBI)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_jacobi(side, name, m):
    config, params, prompt, n = case(name)
    want, want_stats = _reference_jacobi(name, m)
    P = side.params(params)
    got, stats = _impl(side).jacobi_decode(P, config, side.array(prompt), n, m, rng=np.random.default_rng(m))
    got = side.numpy(got)
    _judge(f"jacobi m={m} greedy tokens", side, P, params, config, prompt, got, n)
    if not side.low_precision:
        assert np.array_equal(got, want)
        assert stats == want_stats, f"iterations differ: reference {want_stats}, {side.name} {stats}"


# ----------------------------------------------------------------------------- one step's logits


def _reference_step(params, config, prefix, levels, cands):
    """The reference's logits of one lookahead step after `prefix` (cache: prefix[:-1]; x_t: prefix[-1])."""
    cache = ref_gpt.init_cache(params, config, 1)
    _, cache = ref_gpt.prefill(params, config, cache, prefix[None, :-1])
    tokens, positions, mask = pd.lookahead_layout(int(prefix[-1]), len(prefix) - 1, levels, cands)
    return pd.masked_forward(params, config, cache, tokens, positions, mask)[0]  # (T, V)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_logits(side, name):
    """The logits of every row of a full lookahead step (3 levels x 5 columns, 3 candidates of
    3 tokens after 13 cached tokens) -- explicit mask, explicit positions, cache -- elementwise."""
    import torch

    config, params, prompt, _ = case(name)
    rng = np.random.default_rng(3)
    V = config.vocab_size
    levels = [tuple(int(v) for v in rng.integers(0, V, 5)) for _ in range(3)]
    cands = [tuple(int(v) for v in rng.integers(0, V, 3)) for _ in range(3)]
    prefix = np.concatenate([prompt[0], rng.integers(0, V, 1)])  # (14,)
    truth = _reference_step(params, config, prefix, levels, cands)
    P = side.params(params)
    if side.is_cupy:
        got = side.numpy(_reference_step(P, config, side.array(prefix), levels, cands))
    else:
        if side.dtype == "bfloat16":
            pytest.skip("bfloat16 has no naive NumPy baseline for this step: its tokens are judged above")
        fcache = fpd.fgpt.empty_cache(config, 1, 64, P["wte"].dtype, P["wte"].device)
        tokens, positions, _ = pd.lookahead_layout(int(prefix[-1]), len(prefix) - 1, levels, cands)
        with torch.inference_mode():
            net = fpd.fgpt.network(P, config, "plain")
            fpd.fgpt.run_network(net, side.array(prefix[None, :-1]), fcache, "sdpa")
            got = side.numpy(fpd.masked_run(net, fcache, side.array(tokens), side.array(positions),
                                            fpd.lookahead_mask(3, 5, 3, 3, P["wte"].device)))  # fmt: skip
    naive = None
    if side.dtype == "float32":
        from chainrule.reference.checks import naive_float32

        naive = naive_float32(lambda p: _reference_step(p, config, prefix, levels, cands), params)
    check("lookahead step logits (3 levels x 5 columns, 3 candidates)", truth, got, side, naive=naive)


# ----------------------------------------------------------------------------- end of sequence


def _cut(tokens, eos):
    row = np.asarray(tokens)[0]
    ends = [t for t in range(T0, row.shape[0]) if int(row[t]) in eos]
    return row[None, : ends[0] + 1] if ends else row[None]


@pytest.mark.parametrize("method", ["jacobi m=3", "lookahead greedy", "lookahead sampling"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_eos(side, name, method):
    """eos = two tokens of the reference's output past its start: every backend's output is its own
    output without eos cut at the first new eos, with the same steps as far as they go; float64:
    the reference's tokens and steps."""
    scale = 2.0 if method == "lookahead sampling" else 0.5
    config, params, prompt, n = case(name, scale)
    kw = {"jacobi m=3": dict(m=3, rng=np.random.default_rng(3)), "lookahead greedy": dict(LOOKAHEAD[1]),
          "lookahead sampling": dict(LOOKAHEAD[1], u=np.random.default_rng(5).random((1, n, 3)))}[method]  # fmt: skip
    if method == "lookahead sampling" and side.low_precision:
        kw = dict(kw, candidates=0, u=kw["u"][:, :, :1])  # as test_lookahead_sampling

    def run(module, P, p, **extra):
        fresh = dict(kw, **extra)
        if "rng" in fresh:
            fresh["rng"] = np.random.default_rng(3)
        if method.startswith("jacobi"):
            m = fresh.pop("m")
            return module.jacobi_decode(P, config, p, n, m, **fresh)
        return module.lookahead_decode(P, config, p, n, **fresh)

    full, _ = run(pd, params, prompt)
    eos = [int(full[0, T0 + 9]), int(full[0, T0 + 17])]
    want, want_stats = run(pd, params, prompt, eos_token_id=eos)
    np.testing.assert_array_equal(want, _cut(full, eos))
    assert want.shape[1] < T0 + n, "the case must end early"
    P = side.params(params)
    got_full, got_full_stats = run(_impl(side), P, side.array(prompt))
    got, stats = run(_impl(side), P, side.array(prompt), eos_token_id=eos)
    got, got_full = side.numpy(got), side.numpy(got_full)
    np.testing.assert_array_equal(got, _cut(got_full, eos))
    steps = len(stats.tokens_per_step)
    assert stats.tokens_per_step[:-1] == got_full_stats.tokens_per_step[: steps - 1]
    if not side.low_precision:
        np.testing.assert_array_equal(got, want)
        assert stats == want_stats
