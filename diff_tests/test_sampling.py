"""reference.sampling against fast.sampling on every backend.

Probabilities under the tolerance table; greedy and inverse-CDF choices exactly
(first index on ties; the smallest i with cdf_i > u; never a token of
probability 0, even for u within rounding of 1); and the same ValueError for
the same bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

from diff_tests.conftest import check
from chainrule.reference import nn
from chainrule.reference import sampling as ref


def _logits(rng, shape, scale=3.0):
    x = rng.normal(0.0, scale, size=shape)
    x[..., 1] = -np.inf  # a zero-probability token in every row
    x[0, -1] = -np.inf
    return x


def _seen(side, x):
    """The logits as the backend holds them (rounded to its dtype), back in float64: the
    sampler of a backend can only be judged on the logits it was given."""
    return side.numpy(side.array(x))


@pytest.mark.parametrize("V", [1, 3, 59])
def test_probs(side, V):
    rng = np.random.default_rng(V)
    x = rng.normal(0.0, 3.0, size=(4, 2, V))
    if V > 1:
        x[..., 0] = -np.inf
    got = side.numpy(side.sampling.probs(side.array(x)))
    check("probs", ref.probs(_seen(side, x)), got, side)
    if V > 1:
        assert (got[..., 0] == 0).all(), "a -inf logit must get probability exactly 0"


def test_greedy_first_index_on_ties(side):
    x = np.array([[1.0, 3.0, 3.0, -np.inf], [-np.inf, 2.0, 0.0, 2.0], [5.0] * 4, [-np.inf, -np.inf, 0.0, 0.0]])
    got = side.numpy(side.sampling.greedy(side.array(x)))
    assert got.tolist() == ref.greedy(x).tolist() == [1, 1, 0, 2]
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=(200, 7)).astype(np.float64)  # many ties
    assert np.array_equal(side.numpy(side.sampling.greedy(side.array(x))), ref.greedy(x))


def test_sample_matches_reference(side):
    """Exactly the reference's token for the logits the backend holds, except where u lies
    within float64 rounding (1e-12) of a cdf boundary."""
    rng = np.random.default_rng(1)
    x = _logits(rng, (500, 59), scale=2.0)
    u = rng.random(500)
    seen = _seen(side, x)
    want = ref.sample(seen, u)
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    margin = np.min(np.abs(np.cumsum(nn.softmax(seen), axis=-1) - u[:, None]), axis=-1)
    close = margin < 1e-12
    assert np.array_equal(got[~close], want[~close]), np.flatnonzero(got != want)
    assert (~close).sum() >= 490, f"only {(~close).sum()} of 500 draws compared"
    p = ref.probs(x)
    assert (p[np.arange(500), got] > 0).all(), "a zero-probability token was sampled"


def _f64():
    import torch

    return torch.float64


def test_sample_edges_of_u(side):
    """u = 0 gives the first token of nonzero probability; u within rounding of 1 (where
    the computed cdf may end below u) gives the last token of nonzero probability."""
    x = np.array([[-np.inf, 0.0, 1.0, -np.inf, 2.0, -np.inf]] * 4 + [[0.0] * 3 + [-np.inf] * 3] * 2)
    u = np.array([0.0, 0.5, np.nextafter(1.0, 0.0), 1.0 - 1e-12, 0.0, np.nextafter(1.0, 0.0)])
    want = ref.sample(x, u)
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    assert want.tolist() == [1, 4, 4, 4, 0, 2]
    assert got.tolist() == want.tolist()
    # many rows with trailing zero-probability tokens, u right below 1
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, size=(300, 13))
    x[:, 9:] = -np.inf
    u = 1.0 - rng.integers(1, 9, size=300) * 2.0**-53  # the 8 largest doubles below 1
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    assert (got == 8).all(), f"expected the last nonzero-probability token 8, got {sorted(set(got.tolist()))}"


BAD_LOGITS = {
    "nan": [[0.0, np.nan, 1.0]],
    "+inf": [[0.0, np.inf, 1.0]],
    "all -inf row": [[0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]],
}


@pytest.mark.parametrize("bad", BAD_LOGITS, ids=str)
@pytest.mark.parametrize("fn", ["probs", "greedy", "sample"])
def test_same_errors_for_bad_logits(side, bad, fn):
    x = np.array(BAD_LOGITS[bad])
    args = (np.zeros(x.shape[0]) + 0.5,) if fn == "sample" else ()
    with pytest.raises(ValueError) as want:
        getattr(ref, fn)(x, *args)
    with pytest.raises(ValueError) as got:
        getattr(side.sampling, fn)(side.array(x), *(side.array(a, dtype=_f64()) for a in args))
    print(f"[{side.name}] {fn}({bad}): reference {want.value!s} | fast {got.value!s}")


@pytest.mark.parametrize("u", [-0.1, 1.0, 1.5, np.nan])
def test_same_errors_for_u_out_of_range(side, u):
    x = np.zeros((2, 3))
    uu = np.array([0.5, u])
    with pytest.raises(ValueError, match="u"):
        ref.sample(x, uu)
    with pytest.raises(ValueError, match="u"):
        side.sampling.sample(side.array(x), side.array(uu, dtype=_f64()))


def test_same_error_for_u_shape(side):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="u"):
        ref.sample(x, np.array([0.5]))
    with pytest.raises(ValueError, match="u"):
        side.sampling.sample(side.array(x), side.array(np.array([0.5]), dtype=_f64()))


# ----------------------------------------------------------------------------- logits processors

FILTERS = [
    ("top_k", {"k": 1}),
    ("top_k", {"k": 4}),
    ("top_k", {"k": 3, "min_tokens_to_keep": 5}),
    ("top_p", {"p": 0.3}),
    ("top_p", {"p": 0.9}),
    ("top_p", {"p": 1.0}),
    ("top_p", {"p": 0.5, "min_tokens_to_keep": 3}),
    ("typical", {"mass": 0.2}),
    ("typical", {"mass": 0.9}),
    ("typical", {"mass": 0.5, "min_tokens_to_keep": 2}),
    ("min_p", {"p": 0.05}),
    ("min_p", {"p": 1.0}),
    ("epsilon", {"eps": 0.02}),
    ("epsilon", {"eps": 0.5, "min_tokens_to_keep": 2}),
    ("eta", {"eps": 0.02}),
    ("eta", {"eps": 0.3, "min_tokens_to_keep": 2}),
]


def _kinds(rng, B=60, V=23):
    """Logits of four kinds, every row with a finite entry."""
    random = rng.normal(0.0, 2.0, size=(B, V))
    random[:, 3] = -np.inf
    ties = rng.integers(-2, 2, size=(B, V)).astype(np.float64)  # few distinct values
    ties[::3] = 0.0  # all-equal rows
    inf_heavy = np.where(rng.random((B, V)) < 0.8, -np.inf, rng.normal(0.0, 1.0, size=(B, V)))
    inf_heavy[np.arange(B), rng.integers(0, V, size=B)] = 0.5
    huge = rng.normal(0.0, 1e4, size=(B, V))
    huge[:, : V // 2] = np.round(huge[:, : V // 2], -3)  # ties among huge values too
    return {"random": random, "ties": ties, "inf_heavy": inf_heavy, "huge": huge}


KINDS = ["random", "ties", "inf_heavy", "huge"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name,kwargs", FILTERS, ids=lambda a: str(a).replace(" ", ""))
def test_filters_keep_the_same_sets(side, name, kwargs, kind):
    """The same kept mask as the reference on the logits the backend holds, and kept
    entries unchanged (bit for bit, in the backend's dtype), removed ones -inf."""
    x = _kinds(np.random.default_rng(KINDS.index(kind)), B=40, V=17)[kind].reshape(4, 10, 17)
    seen = _seen(side, x)
    want_keep = getattr(ref, "keep_" + name)(seen, **kwargs)
    got_keep = side.numpy(getattr(side.sampling, "keep_" + name)(side.array(x), **kwargs))
    assert got_keep.shape == x.shape and got_keep.dtype == bool
    assert np.array_equal(got_keep, want_keep), np.argwhere(got_keep != want_keep)[:5]
    got = side.numpy(getattr(side.sampling, name)(side.array(x), **kwargs))
    assert np.array_equal(got, np.where(want_keep, seen, -np.inf))
    assert np.array_equal(got, getattr(ref, name)(seen, **kwargs))
    assert want_keep.any(axis=-1).all(), "a row was emptied"


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_and_repetition_penalty(side, kind):
    x = _kinds(np.random.default_rng(10 + KINDS.index(kind)), B=30, V=11)[kind]
    seen = _seen(side, x)
    for t in (0.3, 1.0, 2.5):
        check(f"temperature {t}", ref.temperature(seen, t), side.numpy(side.sampling.temperature(side.array(x), t)), side)
    assert np.array_equal(side.numpy(side.sampling.temperature(side.array(x), 0)), ref.temperature(seen, 0))
    context = np.random.default_rng(1).integers(0, 11, size=(30, 7))  # with repeats
    for penalty in (0.5, 1.3):
        want = ref.repetition_penalty(seen, context, penalty)
        got = side.numpy(side.sampling.repetition_penalty(side.array(x), side.array(context), penalty))
        check(f"repetition_penalty {penalty}", want, got, side)
        assert np.array_equal(np.isneginf(got), np.isneginf(want))
    shared = np.array([0, 4, 4, 10])  # one context for every row
    want = ref.repetition_penalty(seen, shared, 2.0)
    check("repetition_penalty shared", want, side.numpy(side.sampling.repetition_penalty(side.array(x), side.array(shared), 2.0)), side)


SPEC = {"static_repetition_penalty": {"context": [0, 2, 2, 5], "penalty": 1.2}, "temperature": 0.8,
        "top_k": 12, "top_p": 0.95, "min_p": 0.01, "typical": 0.97, "epsilon": 1e-4, "eta": 1e-4}  # fmt: skip


@pytest.mark.parametrize("kind", ["random", "ties", "inf_heavy"])
def test_apply_then_sample_gives_the_same_token(side, kind):
    """The whole chain then inverse-CDF sampling: the same token from the same u, except
    where u lies within 1e-12 of a cdf boundary; in float64 also the same logits."""
    rng = np.random.default_rng(20 + KINDS.index(kind))
    x = _kinds(rng, B=200, V=13)[kind]
    u = rng.random(200)
    spec = dict(SPEC, static_repetition_penalty={"context": np.array([0, 2, 2, 5]), "penalty": 1.2})
    # the chain is not continuous: judge the fast side on the logits it holds after each step
    seen = _seen(side, x)
    want_logits = ref.apply(seen, spec)
    got_logits_t = side.sampling.apply(side.array(x), spec)
    got_logits = side.numpy(got_logits_t)
    if side.dtype == "float64":
        assert np.array_equal(np.isneginf(got_logits), np.isneginf(want_logits))
        check("apply", want_logits, got_logits, side)
    want = ref.sample(got_logits, u)  # the reference's token for the logits the backend produced
    got = side.numpy(side.sampling.sample(got_logits_t, side.array(u, dtype=_f64())))
    margin = np.min(np.abs(np.cumsum(ref.probs(got_logits), axis=-1) - u[:, None]), axis=-1)
    assert np.array_equal(got[margin >= 1e-12], want[margin >= 1e-12])
    assert (margin >= 1e-12).sum() >= 195
    if side.dtype == "float64":
        assert np.array_equal(got[margin >= 1e-12], ref.sample(want_logits, u)[margin >= 1e-12])


def test_chain_drives_generate(side):
    """chain(spec) as generate's processors: the same tokens as the reference (float64)."""
    if side.dtype != "float64":
        pytest.skip("token identity is judged in float64 (low precision: compare_tokens in test_gpt)")
    from chainrule.reference import gpt as ref_gpt

    config = ref_gpt.Config(vocab_size=11, block_size=12, n_layer=1, n_head=2, n_embd=8)
    params = ref_gpt.random_params(config, np.random.default_rng(0))
    prompt = np.array([[1, 2, 3], [4, 4, 4]])
    u = np.random.default_rng(1).random((2, 6))
    spec = {"temperature": 0.7, "top_k": 5, "top_p": 0.9}
    want = ref_gpt.generate(params, config, prompt, 6, processors=ref.chain(spec), u=u)
    got = side.generate(side.params(params), config, prompt, 6, u=side.array(u, dtype=_f64()),
                        processors=side.sampling.chain(spec))  # fmt: skip
    assert np.array_equal(got, want)


BAD_ARGS = [
    ("temperature", {"t": -0.5}, "t"),
    ("temperature", {"t": float("nan")}, "t"),
    ("top_k", {"k": 0}, "k"),
    ("top_k", {"k": 2.5}, "k"),
    ("top_p", {"p": 0.0}, "p"),
    ("top_p", {"p": 1.5}, "p"),
    ("top_p", {"p": 0.5, "min_tokens_to_keep": 0}, "min_tokens_to_keep"),
    ("typical", {"mass": 0.0}, "mass"),
    ("min_p", {"p": -0.1}, "p"),
    ("epsilon", {"eps": 1.0}, "eps"),
    ("eta", {"eps": 0.0}, "eps"),
    ("repetition_penalty", {"context": [0, 1], "penalty": 0.0}, "penalty"),
    ("repetition_penalty", {"context": [0, 3], "penalty": 1.5}, "context"),
    ("repetition_penalty", {"context": [-1], "penalty": 1.5}, "context"),
    ("repetition_penalty", {"context": [0.5], "penalty": 1.5}, "context"),
]


@pytest.mark.parametrize("name,kwargs,arg", BAD_ARGS, ids=lambda a: str(a).replace(" ", ""))
def test_same_errors_for_bad_arguments(side, name, kwargs, arg):
    x = np.zeros((2, 3))
    kw = dict(kwargs)
    with pytest.raises(ValueError, match=f"^{arg}:"):
        getattr(ref, name)(x, **kw)
    if "context" in kw:
        kw["context"] = side.array(np.asarray(kw["context"]))
    with pytest.raises(ValueError, match=f"^{arg}:"):
        getattr(side.sampling, name)(side.array(x), **kw)


@pytest.mark.parametrize("name,kwargs", [(n, k) for n, k in FILTERS[::3]] + [("temperature", {"t": 0.5})])
def test_processors_reject_nan_logits(side, name, kwargs):
    x = np.array([[0.0, np.nan, 1.0]])
    with pytest.raises(ValueError, match="^logits:"):
        getattr(ref, name)(x, **kwargs)
    with pytest.raises(ValueError, match="^logits:"):
        getattr(side.sampling, name)(side.array(x), **kwargs)


@pytest.mark.parametrize("shape", [(9,), (1, 9), (2, 3, 9)], ids=str)
def test_processors_on_any_leading_shape(side, shape):
    x = np.round(np.random.default_rng(3).normal(0.0, 2.0, size=shape))  # with ties
    x[..., 4] = -np.inf
    seen = _seen(side, x)
    for name, kwargs in FILTERS[::2] + [("temperature", {"t": 0})]:
        got = side.numpy(getattr(side.sampling, name)(side.array(x), **kwargs))
        assert got.shape == shape
        assert np.array_equal(got, getattr(ref, name)(seen, **kwargs)), (name, kwargs)
    context = np.array([0, 4, 8, 8])
    got = side.numpy(side.sampling.repetition_penalty(side.array(x), side.array(context), 1.5))
    check("repetition_penalty", ref.repetition_penalty(seen, context, 1.5), got, side)


@pytest.mark.parametrize("first", [1, 2, 7])
def test_mass_filters_searching_few_candidates_keep_the_same_sets(side, monkeypatch, first):
    """fast's top_p / typical look for the crossing among the FIRST_CANDIDATES smallest keys,
    then 4x as many for the rows that did not find it: the kept sets stay the reference's
    whatever that first guess (tie groups split by the candidate boundary included)."""
    if side.is_cupy:
        pytest.skip("the candidate search is fast.sampling's")
    monkeypatch.setattr(side.sampling, "FIRST_CANDIDATES", first)
    for kind in KINDS:
        x = _kinds(np.random.default_rng(30 + KINDS.index(kind)), B=12, V=59)[kind]
        seen = _seen(side, x)
        for name, arg in (("keep_top_p", "p"), ("keep_typical", "mass")):
            for value in (0.05, 0.5, 0.9, 0.999):
                want = getattr(ref, name)(seen, **{arg: value})
                got = side.numpy(getattr(side.sampling, name)(side.array(x), **{arg: value}))
                assert np.array_equal(got, want), (kind, name, value, np.argwhere(got != want)[:5])


# ----------------------------------------------------------------------------- constraints, biases, penalties


def _history_cases(V, rng):
    """(name, kwargs) for every history processor of the constraints, at a step where it acts
    (t = 12, prompt 5), on histories of ids in [0, 4) (many repeats)."""
    encoder = rng.integers(0, 4, size=(30, 7))
    u = rng.normal(0.0, 2.0, size=(30, V))
    u[:, 2] = -np.inf
    return [
        ("no_repeat_ngram", {"n": 1}),
        ("no_repeat_ngram", {"n": 2}),
        ("no_repeat_ngram", {"n": 3}),
        ("encoder_no_repeat_ngram", {"n": 2, "encoder_ids": encoder}),
        ("encoder_no_repeat_ngram", {"n": 1, "encoder_ids": encoder[0]}),
        ("bad_words", {"bad_words_ids": [[1], [2, 3], [3, 3, 0], [0, 1, 2, V - 1], [V - 1]], "eos_token_id": V - 1}),
        ("sequence_bias", {"sequence_bias": {(1,): 0.5, (2, 3): -1.25, (3, 3, 0): 2.0, (3, 0): 0.3}}),
        ("sequence_bias", {"sequence_bias": [[[0, 0], -0.7], [[V - 1], 3.0]]}),
        ("frequency_penalty", {"penalty": 0.7}),
        ("frequency_penalty", {"penalty": -0.4, "prompt_length": 5}),
        ("presence_penalty", {"penalty": 1.1, "prompt_length": 5}),
        ("presence_penalty", {"penalty": -0.3}),
        ("min_length", {"min_length": 13, "eos_token_id": [0, 2]}),
        ("min_new_tokens", {"prompt_length": 5, "min_new_tokens": 8, "eos_token_id": [1]}),
        ("forced_eos", {"max_length": 13, "eos_token_id": [1, 3]}),
        ("exponential_decay_length_penalty",
         {"start_index": 2, "decay_factor": 1.3, "prompt_length": 5, "eos_token_id": [0, 3]}),  # fmt: skip
        ("exponential_decay_length_penalty",
         {"start_index": 0, "decay_factor": 0.7, "prompt_length": 5, "eos_token_id": 1}),  # fmt: skip
        ("begin_suppress_tokens", {"tokens": [0, 2], "begin_index": 12}),
        ("guidance", {"scale": 1.5, "unconditional": lambda ids: u}),
        ("guidance", {"scale": -0.5, "unconditional": lambda ids: u}),
    ]


ADDITIVE = {"sequence_bias", "frequency_penalty", "presence_penalty", "exponential_decay_length_penalty", "guidance"}


def _unconditional_on(side, kwargs):
    """guidance's callable returning the unconditional logits on the side's backend."""
    if "unconditional" not in kwargs:
        return kwargs
    u = kwargs["unconditional"](None)
    return dict(kwargs, unconditional=lambda ids: side.array(u))


@pytest.mark.parametrize("kind", KINDS)
def test_history_processors_match_the_reference(side, kind):
    """Every history processor at a step where it acts: bans and forcings exactly (the same
    -inf entries, the other entries bit for bit); biases, penalties and guidance under the
    tolerance of the side's dtype, with the same -inf entries."""
    rng = np.random.default_rng(40 + KINDS.index(kind))
    V = 11
    x = _kinds(rng, B=30, V=V)[kind]
    ids = rng.integers(0, 4, size=(30, 12))
    seen = _seen(side, x)
    for name, kwargs in _history_cases(V, rng):
        want = getattr(ref, name)(seen, ids, **kwargs)
        got_t = getattr(side.sampling, name)(side.array(x), side.array(ids), **_unconditional_on(side, kwargs))
        got = side.numpy(got_t)
        assert got.shape == want.shape
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), (name, kwargs, np.argwhere(np.isneginf(got) != np.isneginf(want))[:5])
        if name in ADDITIVE:
            check(f"{name} {kwargs}", want, got, side)
        else:
            assert np.array_equal(got, want), (name, kwargs)
        if not side.is_cupy:
            assert got_t.dtype == side.backend.torch_dtype
        if name not in ("guidance",):  # guidance returns log-probabilities: every entry changes
            assert not np.array_equal(want, seen) or name == "no_repeat_ngram", f"{name} {kwargs} did nothing"


@pytest.mark.parametrize("t", [0, 1, 2, 4, 5, 6])
def test_step_dependent_processors_at_every_step(side, t):
    """The processors that act at one step or until one: before, at and after it."""
    rng = np.random.default_rng(50 + t)
    x = rng.normal(0.0, 2.0, size=(4, 9))
    ids = rng.integers(0, 9, size=(4, t))
    seen = _seen(side, x)
    cases = [
        ("forced_bos", {"bos_token_id": 4}), ("forced_eos", {"max_length": 5, "eos_token_id": [2, 6]}),
        ("min_length", {"min_length": 4, "eos_token_id": 8}),
        ("min_new_tokens", {"prompt_length": 0, "min_new_tokens": 2, "eos_token_id": [8]}),
        ("begin_suppress_tokens", {"tokens": [0, 1], "begin_index": 2}),
        ("exponential_decay_length_penalty",
         {"start_index": 1, "decay_factor": 2.0, "prompt_length": 0, "eos_token_id": 8}),  # fmt: skip
        ("no_repeat_ngram", {"n": 2}), ("encoder_no_repeat_ngram", {"n": 3, "encoder_ids": np.arange(9)}),
    ]  # fmt: skip
    for name, kwargs in cases:
        want = getattr(ref, name)(seen, ids, **kwargs)
        got = side.numpy(getattr(side.sampling, name)(side.array(x), side.array(ids), **kwargs))
        if name in ADDITIVE:  # in low precision: the float64 result rounded once
            assert np.array_equal(np.isneginf(got), np.isneginf(want)) and np.array_equal(got[:, :8], want[:, :8])
            check(f"{name} t={t}", want, got, side)
        else:
            assert np.array_equal(got, want), (name, t)


def test_history_free_additions_match_the_reference(side):
    rng = np.random.default_rng(60)
    x = _kinds(rng, B=30, V=11)["random"]
    seen = _seen(side, x)
    for name, kwargs in [("suppress_tokens", {"tokens": [0, 3, 10]}), ("suppress_tokens", {"tokens": []}),
                         ("suppress_tokens", {"tokens": 4})]:  # fmt: skip
        assert np.array_equal(side.numpy(getattr(side.sampling, name)(side.array(x), **kwargs)), getattr(ref, name)(seen, **kwargs))
    for bias in ({0: 2.5, 3: -100.0, 10: 0.1}, {}):
        check("logit_bias", ref.logit_bias(seen, bias), side.numpy(side.sampling.logit_bias(side.array(x), bias)), side)
    u = rng.normal(0.0, 2.0, size=x.shape)
    u[:, 4] = -np.inf
    for scale in (0.0, 1.0, 1.5, 3.0):
        want = ref.classifier_free_guidance(seen, _seen(side, u), scale)
        got = side.numpy(side.sampling.classifier_free_guidance(side.array(x), side.array(u), scale))
        assert np.array_equal(np.isneginf(got), np.isneginf(want))
        check(f"classifier_free_guidance {scale}", want, got, side)


@pytest.mark.parametrize("shape", [(9,), (2, 3, 9)], ids=str)
def test_history_processors_on_any_leading_shape(side, shape):
    """ids (..., t) with the logits' leading shape, or (t,) shared by every row."""
    rng = np.random.default_rng(70)
    x = rng.normal(0.0, 2.0, size=shape)
    seen = _seen(side, x)
    lead = shape[:-1]
    for ids in (rng.integers(0, 3, size=lead + (8,)), rng.integers(0, 3, size=(8,))):
        for name, kwargs in [("no_repeat_ngram", {"n": 2}), ("bad_words", {"bad_words_ids": [[0, 1], [2]]}),
                             ("frequency_penalty", {"penalty": 0.5})]:  # fmt: skip
            want = getattr(ref, name)(seen, ids, **kwargs)
            got = side.numpy(getattr(side.sampling, name)(side.array(x), side.array(ids), **kwargs))
            assert got.shape == shape
            check(name, want, got, side)
            assert np.array_equal(np.isneginf(got), np.isneginf(want))


HISTORY_SPEC = {
    "sequence_bias": {(2, 3): 1.5, (0,): -0.5}, "logit_bias": {5: 1.0}, "repetition_penalty": 1.2,
    "frequency_penalty": {"penalty": 0.3, "prompt_length": 4}, "presence_penalty": {"penalty": 0.2, "prompt_length": 4},
    "no_repeat_ngram": 3, "bad_words": [[1, 2], [7]], "min_length": {"min_length": 11, "eos_token_id": 0},
    "exponential_decay_length_penalty": {"start_index": 3, "decay_factor": 1.2, "prompt_length": 4, "eos_token_id": 0},
    "suppress_tokens": [9], "temperature": 0.8, "top_k": 8, "top_p": 0.95, "min_p": 0.01,
}  # fmt: skip


def test_apply_with_history_matches_the_reference(side):
    """The constraints with the warpers in one `apply`, through steps t = 8 .. 12 of a history."""
    rng = np.random.default_rng(80)
    x = _kinds(rng, B=40, V=13)["random"]
    history = rng.integers(0, 4, size=(40, 12))
    seen = _seen(side, x)
    for t in range(8, 13):
        ids = history[:, :t]
        want = ref.apply(seen, HISTORY_SPEC, ids)
        got = side.numpy(side.sampling.apply(side.array(x), HISTORY_SPEC, side.array(ids)))
        if side.dtype == "float64":
            assert np.array_equal(np.isneginf(got), np.isneginf(want)), t
            check(f"apply t={t}", want, got, side)
        else:  # the chain is not continuous: judge the bans, which do not depend on rounding
            banned = np.isneginf(ref.apply(seen, {k: HISTORY_SPEC[k] for k in ("no_repeat_ngram", "bad_words", "suppress_tokens")}, ids))
            assert np.isneginf(got)[banned].all()


BAD_HISTORY_ARGS = [
    ("no_repeat_ngram", None, {"n": 0}, "n"),
    ("no_repeat_ngram", None, {"n": 2.0}, "n"),
    ("no_repeat_ngram", None, {"n": True}, "n"),
    ("no_repeat_ngram", [[0, 5, 1], [0, 0, 0]], {"n": 2}, "ids"),
    ("no_repeat_ngram", [[0, -1, 1], [0, 0, 0]], {"n": 2}, "ids"),
    ("no_repeat_ngram", [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]], {"n": 2}, "ids"),
    ("no_repeat_ngram", [[0, 1, 1]] * 3, {"n": 2}, "ids"),
    ("encoder_no_repeat_ngram", None, {"n": 2, "encoder_ids": np.array([[0, 5]] * 2)}, "encoder_ids"),
    ("encoder_no_repeat_ngram", None, {"n": 2, "encoder_ids": np.zeros((3, 4), dtype=np.int64)}, "encoder_ids"),
    ("bad_words", None, {"bad_words_ids": []}, "bad_words_ids"),
    ("bad_words", None, {"bad_words_ids": [[]]}, "bad_words_ids"),
    ("bad_words", None, {"bad_words_ids": [[1, 5]]}, "bad_words_ids"),
    ("bad_words", None, {"bad_words_ids": [1, 2]}, "bad_words_ids"),
    ("bad_words", None, {"bad_words_ids": [[1.0]]}, "bad_words_ids"),
    ("bad_words", None, {"bad_words_ids": [[1]], "eos_token_id": 7}, "eos_token_id"),
    ("bad_words", None, {"bad_words_ids": [[1]], "eos_token_id": []}, "eos_token_id"),
    ("sequence_bias", None, {"sequence_bias": {}}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": {(1,): float("inf")}}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": {(1,): float("nan")}}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": {(): 1.0}}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": {(6,): 1.0}}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": [[[1], 1.0], [[1], 2.0]]}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": [[[1], 1.0, 2.0]]}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": "abc"}, "sequence_bias"),
    ("sequence_bias", None, {"sequence_bias": {(0,): 1e308, (1, 0): 1e308}}, "sequence_bias"),
    ("min_length", None, {"min_length": -1, "eos_token_id": 0}, "min_length"),
    ("min_length", None, {"min_length": 2, "eos_token_id": 5}, "eos_token_id"),
    ("min_length", None, {"min_length": 2, "eos_token_id": [0, -1]}, "eos_token_id"),
    ("min_new_tokens", None, {"prompt_length": 4, "min_new_tokens": 1, "eos_token_id": 0}, "prompt_length"),
    ("min_new_tokens", None, {"prompt_length": 1, "min_new_tokens": -1, "eos_token_id": 0}, "min_new_tokens"),
    ("forced_bos", None, {"bos_token_id": 5}, "bos_token_id"),
    ("forced_bos", None, {"bos_token_id": 1.0}, "bos_token_id"),
    ("forced_eos", None, {"max_length": 0, "eos_token_id": 0}, "max_length"),
    ("exponential_decay_length_penalty", None,
     {"start_index": 0, "decay_factor": 0.0, "prompt_length": 1, "eos_token_id": 0}, "decay_factor"),
    ("exponential_decay_length_penalty", None,
     {"start_index": 0, "decay_factor": float("nan"), "prompt_length": 1, "eos_token_id": 0}, "decay_factor"),
    ("exponential_decay_length_penalty", None,
     {"start_index": 0, "decay_factor": 1e200, "prompt_length": 1, "eos_token_id": 0}, "decay_factor"),
    ("exponential_decay_length_penalty", None,
     {"start_index": -1, "decay_factor": 1.5, "prompt_length": 1, "eos_token_id": 0}, "start_index"),
    ("exponential_decay_length_penalty", None,
     {"start_index": 0, "decay_factor": 1.5, "prompt_length": -1, "eos_token_id": 0}, "prompt_length"),
    ("begin_suppress_tokens", None, {"tokens": [5], "begin_index": 1}, "tokens"),
    ("begin_suppress_tokens", None, {"tokens": [1], "begin_index": -1}, "begin_index"),
    ("frequency_penalty", None, {"penalty": float("nan")}, "penalty"),
    ("frequency_penalty", None, {"penalty": float("inf")}, "penalty"),
    ("frequency_penalty", None, {"penalty": 0.5, "prompt_length": 9}, "prompt_length"),
    ("frequency_penalty", None, {"penalty": -1e308}, "penalty"),
    ("presence_penalty", None, {"penalty": "a"}, "penalty"),
    ("guidance", None, {"scale": float("nan"), "unconditional": lambda ids: np.zeros((2, 5))}, "scale"),
    ("guidance", None, {"scale": 2.0, "unconditional": np.zeros((2, 5))}, "unconditional"),
    ("guidance", None, {"scale": 2.0, "unconditional": lambda ids: np.zeros((2, 4))}, "unconditional_logits"),
    ("suppress_tokens", False, {"tokens": [5]}, "tokens"),
    ("suppress_tokens", False, {"tokens": [0.5]}, "tokens"),
    ("logit_bias", False, {"bias": {5: 1.0}}, "bias"),
    ("logit_bias", False, {"bias": {0: float("nan")}}, "bias"),
    ("logit_bias", False, {"bias": [1.0]}, "bias"),
    ("classifier_free_guidance", False, {"unconditional_logits": np.zeros((2, 4)), "scale": 2.0}, "unconditional_logits"),
    ("classifier_free_guidance", False, {"unconditional_logits": np.full((2, 5), np.nan), "scale": 2.0}, "unconditional_logits"),
    ("classifier_free_guidance", False, {"unconditional_logits": np.zeros((2, 5)), "scale": float("inf")}, "scale"),
]


@pytest.mark.parametrize("name,ids,kwargs,arg", BAD_HISTORY_ARGS, ids=[f"{i}-{c[0]}-{c[3]}" for i, c in enumerate(BAD_HISTORY_ARGS)])
def test_same_errors_for_bad_history_arguments(side, name, ids, kwargs, arg):
    """The same ValueError, naming the argument, with the same message (but for dtype names)."""
    x = np.array([[0.0, 1.0, -1.0, 2.0, 0.5], [0.3, 0.0, 0.0, -2.0, 1.0]])
    args = () if ids is False else (np.array([[0, 1, 1], [2, 2, 4]]) if ids is None else np.array(ids),)
    with pytest.raises(ValueError, match=f"^{arg}:") as want:
        getattr(ref, name)(x, *args, **kwargs)
    side_kwargs = dict(kwargs)
    for key in ("encoder_ids", "unconditional_logits"):
        if key in side_kwargs:
            side_kwargs[key] = side.array(side_kwargs[key])
    with pytest.raises(ValueError, match=f"^{arg}:") as got:
        getattr(side.sampling, name)(side.array(x), *(side.array(a) for a in args), **side_kwargs)
    if "dtype" not in str(want.value):
        assert str(got.value) == str(want.value)
    print(f"[{side.name}] {name}: {got.value}")


def test_history_processors_need_ids(side):
    for spec in ({"no_repeat_ngram": 2}, {"min_length": {"min_length": 3, "eos_token_id": 0}}):
        with pytest.raises(ValueError, match="^ids:"):
            side.sampling.apply(side.array(np.zeros((2, 5))), spec)
