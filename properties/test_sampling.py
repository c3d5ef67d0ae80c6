"""Properties of inverse-CDF sampling and greedy choice, reference and fast.

The rule: token = the smallest i with cdf_i > u, cdf_i = sum_{j<=i} p_j. Hence,
exactly: the token is non-decreasing in u; u = 0 gives the first token of
nonzero probability; u = cdf_{i-1} gives token i when p_i > 0 (the boundary
belongs to the next token); a zero-probability token is never returned, not
even for u within rounding of 1. fast.sampling follows the same rule bit for bit
in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chainrule.fast import sampling as fast
from chainrule.reference import sampling as ref
from chainrule.reference.checks import assert_pure, sampler_goodness_of_fit


@st.composite
def logits_rows(draw, max_rows=4, max_v=9):
    """(B, V) float64 logits with some -inf entries, every row keeping a finite one."""
    B, V = draw(st.integers(1, max_rows)), draw(st.integers(1, max_v))
    x = draw(hnp.arrays(np.float64, (B, V), elements=st.floats(-8, 8)))
    masked = draw(hnp.arrays(bool, (B, V)))
    keep = draw(st.integers(0, V - 1))
    masked[:, keep] = False
    return np.where(masked, -np.inf, x)


uniforms = st.floats(0.0, 1.0, exclude_max=True)


@given(logits_rows(), st.lists(uniforms, min_size=2, max_size=6))
def test_sample_is_monotone_in_u_and_never_picks_zero_probability(x, us):
    p = ref.probs(x)
    previous = None
    for u in sorted(us) + [float(np.nextafter(1.0, 0.0))]:
        tok = ref.sample(x, np.full(x.shape[0], u))
        assert (p[np.arange(x.shape[0]), tok] > 0).all()
        if previous is not None:
            assert (tok >= previous).all()
        previous = tok


@given(logits_rows())
def test_sample_boundaries(x):
    p = ref.probs(x)
    first_nonzero = np.argmax(p > 0, axis=-1)
    assert np.array_equal(ref.sample(x, np.zeros(x.shape[0])), first_nonzero)
    cdf = np.cumsum(p, axis=-1)
    for b in range(x.shape[0]):
        for i in range(1, x.shape[1]):
            if p[b, i] > 0 and cdf[b, i] > cdf[b, i - 1] and cdf[b, i - 1] < 1:
                assert ref.sample(x[b : b + 1], cdf[b : b + 1, i - 1]).tolist() == [i]


@given(logits_rows())
def test_greedy_is_first_argmax(x):
    g = ref.greedy(x)
    for b, row in enumerate(x):
        assert g[b] == min(i for i, v in enumerate(row) if v == row.max())


@given(logits_rows(), st.data())
def test_fast_sampling_equals_reference_in_float64(x, data):
    u = np.array(data.draw(st.lists(uniforms, min_size=x.shape[0], max_size=x.shape[0])))
    xt, ut = torch.from_numpy(x), torch.from_numpy(u)
    assert np.array_equal(fast.greedy(xt).numpy(), ref.greedy(x))
    assert np.array_equal(fast.sample(xt, ut).numpy(), ref.sample(x, u))
    np.testing.assert_allclose(fast.probs(xt).numpy(), ref.probs(x), rtol=1e-12, atol=1e-15)


@given(logits_rows())
def test_samplers_are_pure(x):
    u = np.full(x.shape[0], 0.5)
    for f, args in ((ref.probs, (x,)), (ref.greedy, (x,)), (ref.sample, (x, u))):
        assert_pure(f, *args)
    xt, ut = torch.from_numpy(x), torch.from_numpy(u)
    for f, args in ((fast.probs, (xt,)), (fast.greedy, (xt,)), (fast.sample, (xt, ut))):
        assert_pure(f, *args)


# ----------------------------------------------------------------------------- logits processors

FILTERS = {
    "top_k": ("k", st.integers(1, 10)),
    "top_p": ("p", st.floats(0.01, 1.0)),
    "typical": ("mass", st.floats(0.01, 1.0)),
    "min_p": ("p", st.floats(0.01, 1.0)),
    "epsilon": ("eps", st.floats(0.001, 0.6)),
    "eta": ("eps", st.floats(0.001, 0.6)),
}


def _kept(name, x, **kwargs):
    return getattr(ref, "keep_" + name)(x, **kwargs)


@st.composite
def filter_calls(draw):
    name = draw(st.sampled_from(sorted(FILTERS)))
    arg, values = FILTERS[name]
    kwargs = {arg: draw(values), "min_tokens_to_keep": draw(st.integers(1, 3))}
    return name, kwargs


tie_heavy = st.one_of(
    logits_rows(),
    logits_rows().map(np.round),  # few distinct values: ties
)


@given(tie_heavy, filter_calls())
def test_filters_give_a_distribution_and_leave_kept_logits_alone(x, call):
    name, kwargs = call
    out = getattr(ref, name)(x, **kwargs)
    keep = _kept(name, x, **kwargs)
    assert np.array_equal(out, np.where(keep, x, -np.inf))
    ref.check_logits(out)  # every row keeps a finite entry
    p = ref.probs(out)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
    assert (p >= 0).all()
    # the kept set holds the min_tokens_to_keep largest logits (typical: best-scored) -- at least that many
    n = min(kwargs["min_tokens_to_keep"], x.shape[-1])
    assert (keep.sum(axis=-1) >= n).all()


@given(tie_heavy, filter_calls(), st.randoms(use_true_random=False))
def test_filters_do_not_depend_on_token_order(x, call, random):
    """Permuting the vocabulary permutes the kept set: no dependence on sort stability."""
    name, kwargs = call
    perm = list(range(x.shape[-1]))
    random.shuffle(perm)
    assert np.array_equal(_kept(name, x[:, perm], **kwargs), _kept(name, x, **kwargs)[:, perm])


@given(tie_heavy, filter_calls())
def test_fast_filters_keep_the_reference_sets(x, call):
    name, kwargs = call
    want = _kept(name, x, **kwargs)
    got = getattr(fast, "keep_" + name)(torch.from_numpy(x), **kwargs).numpy()
    assert np.array_equal(got, want)
    assert np.array_equal(getattr(fast, name)(torch.from_numpy(x), **kwargs).numpy(), getattr(ref, name)(x, **kwargs))


@given(tie_heavy, st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.integers(1, 9), st.integers(1, 9))
def test_nesting(x, a, b, k1, k2):
    """Kept sets grow with p (top_p), mass (typical) and k (top_k); shrink with min_p's p
    and epsilon's and eta's eps (eta = min(eps, sqrt(eps) exp(-H)) grows with eps)."""
    lo, hi = min(a, b), max(a, b)
    k1, k2 = min(k1, k2), max(k1, k2)
    assert (ref.keep_top_p(x, lo) <= ref.keep_top_p(x, hi)).all()
    assert (ref.keep_typical(x, lo) <= ref.keep_typical(x, hi)).all()
    assert (ref.keep_top_k(x, k1) <= ref.keep_top_k(x, k2)).all()
    assert (ref.keep_min_p(x, hi) <= ref.keep_min_p(x, lo)).all()
    assert (ref.keep_epsilon(x, min(hi, 0.99)) <= ref.keep_epsilon(x, min(lo, 0.99))).all()
    assert (ref.keep_eta(x, min(hi, 0.99)) <= ref.keep_eta(x, min(lo, 0.99))).all()


@given(tie_heavy)
def test_identities(x):
    """top_p(1), typical(1) (on logits where no finite logit underflows), top_k(V),
    temperature(1) return the logits unchanged."""
    V = x.shape[-1]
    for out in (ref.top_p(x, 1.0), ref.typical(x, 1.0), ref.top_k(x, V), ref.top_k(x, V + 5), ref.temperature(x, 1.0)):
        assert np.array_equal(out, x)


@given(tie_heavy)
def test_top_p_keeps_the_smallest_top_set_reaching_p(x):
    """For every p, top_p's kept set is the set of the most probable tokens, plus whole
    tie groups: if token i is kept so is every more probable token, and removing the
    least probable kept tie group leaves a mass below p."""
    p = ref.probs(x)
    for target in (0.2, 0.5, 0.9):
        keep = ref.keep_top_p(x, target)
        for b in range(x.shape[0]):
            kept_min = p[b][keep[b]].min()
            assert (keep[b] == (p[b] >= kept_min)).all()  # a top set with whole tie groups
            assert p[b][p[b] > kept_min].sum() < target * (1 - ref.MASS_RTOL)


def test_top_p_documented_example():
    """[.3, .1, .1, .5] with p = .8 keeps exactly .5 and .3 (the mass .8 of the two
    reaches p up to rounding), in the reference and in fast."""
    x = np.log(np.array([[0.3, 0.1, 0.1, 0.5]]))
    assert ref.keep_top_p(x, 0.8).tolist() == [[True, False, False, True]]
    assert fast.keep_top_p(torch.from_numpy(x), 0.8).tolist() == [[True, False, False, True]]
    assert ref.keep_top_p(x, 0.81).tolist() == [[True, True, True, True]]  # beyond rounding: the .1 tie group


@given(logits_rows())
def test_temperature_to_zero_converges_to_greedy(x):
    """p(argmax) under temperature t grows as t falls, to >= 1 - V exp(-gap / t) on rows
    with a unique maximum (gap: to the runner-up); t = 0 keeps exactly the first argmax."""
    g = ref.greedy(x)
    zero = ref.temperature(x, 0)
    assert np.array_equal(np.isfinite(zero), np.arange(x.shape[1]) == g[:, None])
    assert np.array_equal(ref.greedy(zero), g)
    for b, row in enumerate(x):
        finite = np.sort(row[np.isfinite(row)])
        if finite.size < 2 or finite[-1] == finite[-2]:
            continue
        gap = finite[-1] - finite[-2]
        previous = 0.0
        for t in sorted({4.0, 1.0, 0.25, gap / 10, gap / 40}, reverse=True):
            p_max = ref.probs(ref.temperature(row, t))[g[b]]
            assert p_max >= previous - 1e-15
            previous = p_max
        assert ref.probs(ref.temperature(row, gap / 40))[g[b]] >= 1 - x.shape[1] * np.exp(-40.0)


@given(logits_rows(), st.integers(0, 5).map(lambda s: np.random.default_rng(s)), st.floats(0.1, 3.0))
def test_repetition_penalty_sign_rule(x, rng, penalty):
    context = rng.integers(0, x.shape[1], size=(x.shape[0], 4))
    out = ref.repetition_penalty(x, context, penalty)
    for b in range(x.shape[0]):
        for v in range(x.shape[1]):
            if v in context[b]:
                want = x[b, v] / penalty if x[b, v] > 0 else x[b, v] * penalty
            else:
                want = x[b, v]
            assert out[b, v] == want or (np.isneginf(want) and np.isneginf(out[b, v]))
    twice = np.concatenate([context, context], axis=1)  # each distinct token penalized once
    assert np.array_equal(ref.repetition_penalty(x, twice, penalty), out)
    assert np.array_equal(fast.repetition_penalty(torch.from_numpy(x), torch.from_numpy(context), penalty).numpy(), out)


def test_apply_order_and_spec_forms():
    """apply uses ORDER whatever the order given; dict, pairs and bare values agree; the
    chain's partials are what generate takes."""
    x = np.random.default_rng(0).normal(0, 2, size=(3, 12))
    by_hand = ref.top_p(ref.top_k(ref.temperature(x, 0.5), 6), 0.8)
    assert np.array_equal(ref.apply(x, {"top_p": 0.8, "top_k": 6, "temperature": 0.5}), by_hand)
    assert np.array_equal(ref.apply(x, [("top_k", {"k": 6}), ("top_p", {"p": 0.8}), ("temperature", 0.5)]), by_hand)
    assert [f.name for f in ref.chain({"eta": 0.1, "temperature": 2.0, "top_k": 3})] == ["temperature", "top_k", "eta"]
    assert np.array_equal(fast.apply(torch.from_numpy(x), {"top_p": 0.8, "top_k": 6, "temperature": 0.5}).numpy(), by_hand)
    for bad in ({"top_q": 0.5}, [("top_k",)], [("top_k", 2), ("top_k", 3)]):
        try:
            ref.apply(x, bad)
        except ValueError as e:
            assert str(e).startswith("processors:")
        else:
            raise AssertionError(f"accepted {bad}")


SAMPLED = [
    ("plain", {}),
    ("top_p", {"top_p": 0.9}),
    ("typical+temperature", {"temperature": 0.7, "typical": 0.8}),
    ("min_p+top_k", {"top_k": 5, "min_p": 0.05}),
]


@pytest.mark.parametrize("label,spec", SAMPLED, ids=[s[0] for s in SAMPLED])
@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_sampling_after_processors_follows_the_processed_distribution(impl, label, spec):
    """u ~ U[0, 1) through inverse-CDF sampling passes a chi-square goodness-of-fit test
    against probs of the processed logits (and never draws a removed token)."""
    logits = np.array([1.0, -0.5, 2.0, 0.3, -np.inf, 0.9, -2.0, 1.7, 0.0, -1.0])
    processed = ref.apply(logits[None], spec) if spec else logits[None]
    target = ref.probs(processed)[0]
    seed = SAMPLED.index((label, spec))

    def draw(n):
        u = np.random.default_rng(seed).random(n)
        rows = np.broadcast_to(processed, (n, logits.size))
        if impl == "fast":
            return fast.sample(torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(u)).numpy()
        return ref.sample(rows, u)

    result = sampler_goodness_of_fit(draw, target, 3000, alpha=1e-3)
    assert result.passed, str(result)


# ----------------------------------------------------------------------------- constraints, biases, penalties


@st.composite
def histories(draw, max_rows=3, max_v=7, max_t=10):
    """(logits (B, V) float64 with some -inf entries, ids (B, t) int64 in [0, V), small V: repeats)."""
    x = draw(logits_rows(max_rows=max_rows, max_v=max_v))
    B, V = x.shape
    t = draw(st.integers(0, max_t))
    ids = draw(hnp.arrays(np.int64, (B, t), elements=st.integers(0, V - 1)))
    return x, ids


def _greedy_loop(processor, prompt, steps, seed, V):
    """A tiny greedy generation: random logits each step, processor(logits, ids), argmax.
    Stops early when the processor bans every token. -> the final ids (B, T0 + n)."""
    rng = np.random.default_rng(seed)
    ids = prompt
    for _ in range(steps):
        x = processor(rng.normal(0.0, 1.0, size=(ids.shape[0], V)), ids)
        if np.isneginf(x).all(axis=-1).any():
            break
        ids = np.concatenate([ids, ref.greedy(x)[:, None]], axis=1)
    return ids


@given(st.integers(1, 4), st.integers(2, 5), st.integers(0, 2**32 - 1), st.integers(0, 4))
def test_no_repeat_ngram_never_repeats_a_generated_ngram(n, V, seed, T0):
    """Greedy decoding through no_repeat_ngram: no n-gram ending at a generated token occurs
    earlier in the row (prompt included); fast decodes the same tokens."""
    prompt = np.random.default_rng(seed).integers(0, V, size=(3, T0))
    ids = _greedy_loop(lambda x, ids: ref.no_repeat_ngram(x, ids, n), prompt, 12, seed, V)
    for row in ids.tolist():
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        for end in range(max(T0, n - 1), len(row)):
            g = tuple(row[end - n + 1 : end + 1])
            assert g not in grams[: end - n + 1], (row, end, g)
    fast_ids = _greedy_loop(lambda x, ids: fast.no_repeat_ngram(torch.from_numpy(x), torch.from_numpy(ids), n).numpy(),
                            prompt, 12, seed, V)  # fmt: skip
    assert np.array_equal(fast_ids, ids)


@given(st.integers(2, 6), st.integers(0, 2**32 - 1), st.data())
def test_bad_words_are_never_completed_by_generated_tokens(V, seed, data):
    words = data.draw(st.lists(st.lists(st.integers(0, V - 1), min_size=1, max_size=3), min_size=1, max_size=4))
    prompt = np.random.default_rng(seed).integers(0, V, size=(3, 2))
    ids = _greedy_loop(lambda x, ids: ref.bad_words(x, ids, words), prompt, 10, seed, V)
    for row in ids.tolist():
        for end in range(2, len(row)):  # each generated token
            for w in words:
                assert len(w) > end + 1 or tuple(row[end - len(w) + 1 : end + 1]) != tuple(w), (row, end, w)


@given(histories(), st.floats(-3.0, 3.0), st.integers(0, 10))
def test_frequency_and_presence_penalties_are_the_counting_loop(xi, penalty, prompt_length):
    x, ids = xi
    prompt_length = min(prompt_length, ids.shape[1])
    want_f, want_p = x.copy(), x.copy()
    for b in range(x.shape[0]):
        for v in range(x.shape[1]):
            count = sum(1 for s in range(prompt_length, ids.shape[1]) if ids[b, s] == v)
            want_f[b, v] = x[b, v] - penalty * count
            want_p[b, v] = x[b, v] - penalty * (1 if count else 0)
    assert np.array_equal(ref.frequency_penalty(x, ids, penalty, prompt_length), want_f)
    assert np.array_equal(ref.presence_penalty(x, ids, penalty, prompt_length), want_p)
    xt, it = torch.from_numpy(x), torch.from_numpy(ids)
    assert np.array_equal(fast.frequency_penalty(xt, it, penalty, prompt_length).numpy(), want_f)
    assert np.array_equal(fast.presence_penalty(xt, it, penalty, prompt_length).numpy(), want_p)


def _history_specs(V, ids):
    t = ids.shape[1]
    unconditional = np.linspace(-1.0, 1.0, V)
    return {
        "no_repeat_ngram": {"n": 2},
        "encoder_no_repeat_ngram": {"n": 2, "encoder_ids": np.arange(V)[::-1].copy()},
        "bad_words": {"bad_words_ids": [[0], [1, 2], [2, 2, 0]]},
        "sequence_bias": {"sequence_bias": {(1,): 0.5, (0, 1): -1.5, (2, 2, 2): 2.0}},
        "repetition_penalty": {"penalty": 1.3},
        "frequency_penalty": {"penalty": 0.4, "prompt_length": t // 2},
        "presence_penalty": {"penalty": -0.6},
        "min_length": {"min_length": 4, "eos_token_id": 0},
        "min_new_tokens": {"prompt_length": t // 2, "min_new_tokens": 3, "eos_token_id": [0, 1]},
        "forced_bos": {"bos_token_id": V - 1},
        "forced_eos": {"max_length": 5, "eos_token_id": 0},
        "exponential_decay_length_penalty": {"start_index": 1, "decay_factor": 1.5, "prompt_length": t // 2, "eos_token_id": 0},
        "begin_suppress_tokens": {"tokens": [0, 1], "begin_index": 3},
        "guidance": {"scale": 1.7, "unconditional": lambda ids: np.broadcast_to(unconditional, ids.shape[:1] + (V,)).copy()},
    }  # fmt: skip


@given(histories(max_v=6))
def test_history_processors_are_functions_of_the_logits_and_ids(xi):
    """For every history processor: pure (inputs untouched, equal inputs give equal outputs),
    no state kept between calls (a call on other ids changes nothing after), and row by row
    (row b of the output depends on row b of the logits and of ids only); fast agrees."""
    x, ids = xi
    V = x.shape[1]
    if V < 3:
        return
    other = (ids + 1) % V
    specs = _history_specs(V, ids)
    assert set(specs) == set(ref.HISTORY)
    for name, kwargs in specs.items():
        (process,) = ref.chain({name: kwargs})
        first = assert_pure(process, x, ids)
        process(x, other)
        assert np.array_equal(process(x.copy(), ids.copy()), first), name
        for b in range(x.shape[0]):
            assert np.array_equal(getattr(ref, name)(x[b : b + 1], ids[b : b + 1], **kwargs), first[b : b + 1]), (name, b)
        (fast_process,) = fast.chain({name: kwargs})
        got = fast_process(torch.from_numpy(x), torch.from_numpy(ids))
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        assert np.array_equal(np.isneginf(got), np.isneginf(first)), name
        np.testing.assert_allclose(np.where(np.isfinite(first), got, 0), np.where(np.isfinite(first), first, 0),
                                   rtol=1e-12, atol=1e-12)  # fmt: skip


@given(logits_rows(), st.integers(0, 4), st.data())
def test_forced_bos_and_eos_leave_exactly_one_finite_entry_at_their_step(x, before, data):
    B, V = x.shape
    bos = data.draw(st.integers(0, V - 1))
    for t in range(0, 4):
        ids = np.zeros((B, t), dtype=np.int64)
        out = ref.forced_bos(x, ids, bos)
        assert np.array_equal(fast.forced_bos(torch.from_numpy(x), torch.from_numpy(ids), bos).numpy(), out)
        if t == 1:
            assert (np.isfinite(out).sum(axis=-1) == 1).all() and (out[:, bos] == 0).all()
            assert np.array_equal(ref.greedy(out), np.full(B, bos))
        else:
            assert np.array_equal(out, x)
        max_length = before + 1
        out = ref.forced_eos(x, ids, max_length, bos)
        if t == max_length - 1:
            assert (np.isfinite(out).sum(axis=-1) == 1).all() and (out[:, bos] == 0).all()
        else:
            assert np.array_equal(out, x)
        assert np.array_equal(fast.forced_eos(torch.from_numpy(x), torch.from_numpy(ids), max_length, bos).numpy(), out)


@given(logits_rows(), logits_rows(), st.floats(-2.0, 4.0))
def test_classifier_free_guidance_is_the_weighted_geometric_mean(a, b, scale):
    """exp(out) is proportional to p_c^scale p_u^(1 - scale) on the tokens both passes allow
    (0 elsewhere); scale = 1 gives log p_c."""
    B, V = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    c, u = a[:B, :V], b[:B, :V]
    if not (np.isfinite(c) & np.isfinite(u)).any(axis=-1).all():
        return  # some row shares no token: covered by the -inf rule alone
    out = ref.classifier_free_guidance(c, u, scale)
    assert not np.isnan(out).any() and not (out == np.inf).any()
    if scale == 1:
        assert np.array_equal(out, ref.nn.log_softmax(c))
        return
    both = np.isfinite(c) & np.isfinite(u)
    assert np.array_equal(np.isfinite(out), both)
    pc, pu = ref.probs(c), ref.probs(u)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = scale * np.log(pc) + (1 - scale) * np.log(pu)  # log(p_c^scale p_u^(1 - scale))
    np.testing.assert_allclose(out[both], want[both], rtol=1e-9, atol=1e-9 * (1 + np.abs(want[both]).max()))


@given(histories(), st.dictionaries(st.integers(0, 6), st.floats(-5, 5), max_size=4))
def test_logit_bias_is_single_token_sequence_bias(xi, bias):
    x, ids = xi
    bias = {k: v for k, v in bias.items() if k < x.shape[1]}
    out = ref.logit_bias(x, bias)
    assert np.array_equal(out, x + np.array([bias.get(v, 0.0) for v in range(x.shape[1])]))
    if bias:
        assert np.array_equal(ref.sequence_bias(x, ids, {(k,): v for k, v in bias.items()}), out)
    assert np.array_equal(fast.logit_bias(torch.from_numpy(x), bias).numpy(), out)


def test_spec_bare_values_and_settings():
    """A bare value is the processor's one main setting; processors with several required
    settings, unknown settings and missing ones are refused, naming `processors`."""
    x = np.zeros((1, 6))
    ids = np.array([[1, 2, 1]])
    assert [(p.name, p.kwargs) for p in ref.chain({"no_repeat_ngram": 2, "logit_bias": {3: 1.0},
                                                   "sequence_bias": {(1, 2): -1.0}, "bad_words": [[4]]})] == [
        ("sequence_bias", {"sequence_bias": {(1, 2): -1.0}}), ("logit_bias", {"bias": {3: 1.0}}),
        ("no_repeat_ngram", {"n": 2}), ("bad_words", {"bad_words_ids": [[4]]})]  # fmt: skip
    assert np.isneginf(ref.apply(x, {"no_repeat_ngram": 2}, ids)).tolist() == [[False, False, True, False, False, False]]
    for bad in ({"min_length": 3}, {"guidance": 2.0}, {"top_k": {"kk": 3}},
                {"min_new_tokens": {"min_new_tokens": 2, "eos_token_id": 0}}):  # fmt: skip
        try:
            ref.chain(bad)
        except ValueError as e:
            assert str(e).startswith("processors:"), e
        else:
            raise AssertionError(f"accepted {bad}")
