"""reference.sampling's logits processors against HF transformers' logits processors.

On tie-free float64 logits, with parameters away from any decision boundary,
chainrule and Hugging Face keep the same tokens and return the same logits, for
Temperature, TopK, TopP, Typical, MinP, Epsilon, Eta and RepetitionPenalty (and
fast.sampling follows the reference, see diff_tests/test_sampling.py).

Where chainrule's definition deliberately differs, the difference is tested:

    temperature 0     chainrule: greedy (the first argmax kept)    HF: ValueError
    top_p ties        chainrule: every token tied with the last kept one is kept;
                      HF: whichever the sort puts first (a tied set can be split)
    top_p rounding    chainrule: masses compared with MASS_RTOL, so [.3, .1, .1, .5]
                      with p = .8 keeps {.5, .3}; HF compares cumsum <= 1 - p
                      exactly and in float64 also keeps a .1 token
    min_tokens_to_keep in top_p / min_p (typical: by score): chainrule keeps
                      ties with the n-th token; HF keeps exactly n (sort order on ties)
    typical(mass=1)   chainrule: every token of nonzero probability; HF: ValueError
    context ids >= V  chainrule: ValueError; HF: ignored silently
    eta               chainrule and HF's code: eta = min(eps, sqrt(eps) exp(-H));
                      HF's docstring: sqrt(eps exp(-H)) -- shown to be a different rule
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from transformers.generation import logits_process as hf  # noqa: E402

from chainrule.reference import sampling as ref  # noqa: E402


def _hf(processor, logits, input_ids=None):
    x = torch.from_numpy(np.array(logits, dtype=np.float64))
    ids = torch.zeros((x.shape[0], 1), dtype=torch.int64) if input_ids is None else torch.as_tensor(input_ids)
    return processor(ids, x.clone()).numpy()


def _tie_free(seed, B=16, V=40):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 2.0, size=(B, V))
    x[:, 5] = -np.inf
    assert all(len(set(row)) == V - 1 for row in x[:, [i for i in range(V) if i != 5]].tolist())
    return x


CASES = [
    ("temperature", {"t": 0.7}, lambda: hf.TemperatureLogitsWarper(0.7)),
    ("temperature", {"t": 1.9}, lambda: hf.TemperatureLogitsWarper(1.9)),
    ("top_k", {"k": 1}, lambda: hf.TopKLogitsWarper(1)),
    ("top_k", {"k": 7}, lambda: hf.TopKLogitsWarper(7)),
    ("top_k", {"k": 100}, lambda: hf.TopKLogitsWarper(100)),
    ("top_k", {"k": 2, "min_tokens_to_keep": 5}, lambda: hf.TopKLogitsWarper(2, min_tokens_to_keep=5)),
    ("top_p", {"p": 0.3}, lambda: hf.TopPLogitsWarper(0.3)),
    ("top_p", {"p": 0.9}, lambda: hf.TopPLogitsWarper(0.9)),
    ("top_p", {"p": 0.2, "min_tokens_to_keep": 4}, lambda: hf.TopPLogitsWarper(0.2, min_tokens_to_keep=4)),
    ("typical", {"mass": 0.4}, lambda: hf.TypicalLogitsWarper(0.4)),
    ("typical", {"mass": 0.95}, lambda: hf.TypicalLogitsWarper(0.95)),
    ("typical", {"mass": 0.1, "min_tokens_to_keep": 3}, lambda: hf.TypicalLogitsWarper(0.1, min_tokens_to_keep=3)),
    ("min_p", {"p": 0.1}, lambda: hf.MinPLogitsWarper(0.1)),
    ("min_p", {"p": 0.6, "min_tokens_to_keep": 3}, lambda: hf.MinPLogitsWarper(0.6, min_tokens_to_keep=3)),
    ("epsilon", {"eps": 0.01}, lambda: hf.EpsilonLogitsWarper(0.01)),
    ("epsilon", {"eps": 0.5, "min_tokens_to_keep": 2}, lambda: hf.EpsilonLogitsWarper(0.5, min_tokens_to_keep=2)),
    ("eta", {"eps": 0.01}, lambda: hf.EtaLogitsWarper(0.01)),
    ("eta", {"eps": 0.2, "min_tokens_to_keep": 2}, lambda: hf.EtaLogitsWarper(0.2, min_tokens_to_keep=2)),
]


@pytest.mark.parametrize("name,kwargs,make", CASES, ids=lambda a: str(a).replace(" ", "") if not callable(a) else "")
def test_same_as_hf_on_tie_free_logits(name, kwargs, make):
    for seed in range(3):
        x = _tie_free(seed)
        want = _hf(make(), x)
        got = getattr(ref, name)(x, **kwargs)
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), (seed, np.argwhere(np.isneginf(got) != np.isneginf(want)))
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
        if name != "temperature":
            assert 0 < np.isfinite(got).sum(axis=-1).min(), "a row was emptied"


def test_filters_are_not_trivial_on_these_logits():
    """The parameters above remove some tokens and keep several (the comparison means something)."""
    x = _tie_free(0)
    for name, kwargs, _ in CASES[2:]:
        kept = np.isfinite(getattr(ref, name)(x, **kwargs)).sum(axis=-1)
        if kwargs.get("k", 0) < 40:
            assert kept.max() < 39, (name, kwargs)


@pytest.mark.parametrize("penalty", [0.6, 1.0, 1.7])
def test_repetition_penalty_same_as_hf(penalty):
    x = _tie_free(4, B=5, V=12)
    x[:, 0] = 0.0  # a zero logit stays zero
    context = np.random.default_rng(0).integers(0, 12, size=(5, 9))  # with repeats
    context[:, 0] = 0
    want = _hf(hf.RepetitionPenaltyLogitsProcessor(penalty), x, context)
    got = ref.repetition_penalty(x, context, penalty)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert (got[:, 0] == 0).all()


def test_apply_matches_hf_list_in_hf_order():
    """apply composes in HF's order; the same chain as an HF LogitsProcessorList."""
    x = _tie_free(5)
    context = np.random.default_rng(1).integers(0, 40, size=(16, 6))
    spec = [("eta", 0.001), ("top_p", 0.9), ("temperature", 0.8), ("top_k", 20), ("epsilon", 0.0005),
            ("typical", 0.97), ("min_p", 0.02), ("static_repetition_penalty", {"context": context, "penalty": 1.3})]  # fmt: skip
    hf_list = hf.LogitsProcessorList([
        hf.RepetitionPenaltyLogitsProcessor(1.3), hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(20),
        hf.TopPLogitsWarper(0.9), hf.MinPLogitsWarper(0.02), hf.TypicalLogitsWarper(0.97),
        hf.EpsilonLogitsWarper(0.0005), hf.EtaLogitsWarper(0.001),
    ])  # fmt: skip
    want = _hf(hf_list, x, context)
    got = ref.apply(x, spec)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- deliberate differences


def test_temperature_zero_is_greedy_where_hf_refuses():
    x = np.array([[1.0, 3.0, 3.0, -np.inf, 0.5]])
    assert ref.temperature(x, 0).tolist() == [[-np.inf, 3.0, -np.inf, -np.inf, -np.inf]]
    with pytest.raises(ValueError):
        hf.TemperatureLogitsWarper(0.0)


def test_top_p_keeps_whole_tie_groups_where_hf_splits_them():
    x = np.zeros((1, 4))  # four equally likely tokens, p = .3: the first one crosses p
    assert np.isfinite(ref.top_p(x, 0.3)).sum() == 4  # each has mass 0 strictly in front of it
    assert np.isfinite(_hf(hf.TopPLogitsWarper(0.3), x)).sum() == 2  # HF cuts the tie group
    y = np.log(np.array([[0.4, 0.2, 0.2, 0.2]]))  # .4 alone does not reach .5: keep the .2 tie group
    assert np.isfinite(ref.top_p(y, 0.5)).sum() == 4
    assert np.isfinite(_hf(hf.TopPLogitsWarper(0.5), y)).sum() < 4


def test_top_p_mass_equal_to_p_up_to_rounding_counts_as_reached():
    """HF's own documented example: [.3, .1, .1, .5] with p = .8 keeps .5 and .3."""
    x = np.log(np.array([[0.3, 0.1, 0.1, 0.5]]))
    assert np.isfinite(ref.top_p(x, 0.8)).tolist() == [[True, False, False, True]]
    hf_kept = np.isfinite(_hf(hf.TopPLogitsWarper(0.8), x))
    assert hf_kept.sum() == 3, "HF in float64: cumsum .1 + .1 > 1 - .8 after rounding, one .1 token kept"


def test_min_tokens_to_keep_keeps_ties_where_hf_takes_exactly_n():
    x = np.array([[2.0, 1.0, 1.0, 1.0, -3.0]])
    assert np.isfinite(ref.top_p(x, 0.01, min_tokens_to_keep=2)).sum() == 4
    assert np.isfinite(_hf(hf.TopPLogitsWarper(0.01, min_tokens_to_keep=2), x)).sum() == 2
    assert np.isfinite(ref.min_p(x, 0.9, min_tokens_to_keep=2)).sum() == 4
    assert np.isfinite(_hf(hf.MinPLogitsWarper(0.9, min_tokens_to_keep=2), x)).sum() == 2


def test_typical_mass_one_keeps_nonzero_probability_where_hf_refuses():
    x = np.array([[0.0, -np.inf, 2.0, -1.0]])
    assert np.array_equal(ref.typical(x, 1.0), x)
    with pytest.raises(ValueError):
        hf.TypicalLogitsWarper(1.0)


def test_context_ids_outside_the_vocabulary_raise_where_hf_ignores_them():
    x = np.array([[1.0, -1.0, 2.0]])
    with pytest.raises(ValueError, match="context"):
        ref.repetition_penalty(x, np.array([[0, 3]]), 2.0)
    got = _hf(hf.RepetitionPenaltyLogitsProcessor(2.0), x, np.array([[0, 3]]))
    assert got.tolist() == [[0.5, -1.0, 2.0]]


def test_eta_threshold_is_the_papers_not_hfs_docstring():
    """eta = min(eps, sqrt(eps) exp(-H)): a row where sqrt(eps exp(-H)) would keep fewer tokens
    (here 35 against 25)."""
    x = np.random.default_rng(0).normal(0.0, 1.5, size=(1, 40))
    eps = 0.01
    p = ref.probs(x)[0]
    H = -(p * np.log(p)).sum()
    implemented, docstring = min(eps, math.sqrt(eps) * math.exp(-H)), min(eps, math.sqrt(eps * math.exp(-H)))
    assert (p >= implemented).sum() == 35 and (p >= docstring).sum() == 25
    assert np.isfinite(ref.eta(x, eps)).tolist() == (p >= implemented).reshape(1, -1).tolist()
    assert np.array_equal(ref.eta(x, eps), _hf(hf.EtaLogitsWarper(eps), x))


# ----------------------------------------------------------------------------- constraints, biases, penalties
#
# The processors that read the token history: HF's called with input_ids = ids. Exact
# equality (the same -inf entries, the same values) on tie-free logits, at every step t
# around each processor's threshold. Deliberate differences, tested below:
#
#     ids / eos / tokens outside [0, V)   chainrule: ValueError; HF: ignored (or IndexError)
#     sequence_bias values                chainrule: added in float64; HF: rounded to float32 first
#     encoder_no_repeat_ngram and beams   chainrule: one encoder row per logits row; HF: shared by k beams
#     classifier-free guidance            chainrule: -inf where either pass is -inf; HF: NaN there

from chainrule.reference.checks import TOLERANCES  # noqa: E402

F64 = TOLERANCES["float64"]


def _steps(seed, B=6, T=14, vocab=5):
    """Token histories with many repeats (ids in [0, vocab)): row prefixes of every length."""
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T))


def _same(got, want):
    assert np.array_equal(np.isneginf(got), np.isneginf(want)), np.argwhere(np.isneginf(got) != np.isneginf(want))[:5]
    assert np.array_equal(got, want), np.abs(np.where(np.isfinite(want), got - want, 0)).max()


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_same_as_hf_at_every_step(n):
    x, history = _tie_free(10 + n, B=6, V=40), _steps(n, vocab=3)
    banned = 0
    for t in range(0, history.shape[1] + 1):  # t < n (nothing banned), t = n - 1, n, n + 1, ...
        ids = history[:, :t]
        want = _hf(hf.NoRepeatNGramLogitsProcessor(n), x, ids)
        got = ref.no_repeat_ngram(x, ids, n)
        _same(got, want)
        banned += int(np.isneginf(got).sum() - np.isneginf(x).sum())
        if t < n:
            assert np.array_equal(got, x)
    assert banned > 10, "the histories should complete n-grams"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_encoder_no_repeat_ngram_same_as_hf(n):
    x, history = _tie_free(20 + n, B=6, V=40), _steps(30 + n)
    encoder = np.random.default_rng(n).integers(0, 5, size=(6, 9))
    banned = 0
    for t in range(0, 9):  # nothing banned while t < n - 1
        ids = history[:, :t]
        want = _hf(hf.EncoderNoRepeatNGramLogitsProcessor(n, torch.from_numpy(encoder)), x, ids)
        got = ref.encoder_no_repeat_ngram(x, ids, n, encoder)
        _same(got, want)
        banned += int(np.isneginf(got).sum() - np.isneginf(x).sum())
    assert banned > 10


def test_encoder_no_repeat_ngram_beams_take_repeated_encoder_rows():
    """HF shares encoder row b among the k beams of item b; chainrule wants the rows repeated."""
    x, ids = _tie_free(25, B=6, V=40), _steps(26)[:, :7]
    encoder = np.random.default_rng(27).integers(0, 5, size=(2, 9))  # 2 items x 3 beams
    want = _hf(hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.from_numpy(encoder)), x, ids)
    _same(ref.encoder_no_repeat_ngram(x, ids, 2, np.repeat(encoder, 3, axis=0)), want)
    with pytest.raises(ValueError, match="^encoder_ids:"):
        ref.encoder_no_repeat_ngram(x, ids, 2, encoder)


BAD_WORDS = [[7], [1, 2], [2, 2, 3], [0, 4, 1, 9], [4, 4], [11, 12, 13, 14, 15, 16], [6], [1, 6]]


@pytest.mark.parametrize("eos", [None, 6, [6, 7]], ids=str)
def test_bad_words_same_as_hf_at_every_step(eos):
    """Single-token and multi-token bad words, prefixes longer than the history, and the
    bad words [eos] that HF drops ([1, 6] ending in eos is kept)."""
    x, history = _tie_free(40, B=6, V=40), _steps(41)
    banned = 0
    for t in range(0, history.shape[1] + 1):
        ids = history[:, :t]
        want = _hf(hf.NoBadWordsLogitsProcessor(BAD_WORDS, eos_token_id=eos), x, ids)
        got = ref.bad_words(x, ids, BAD_WORDS, eos_token_id=eos)
        _same(got, want)
        banned += int(np.isneginf(got[:, [2, 3, 1, 4, 9]]).sum())
        assert np.isneginf(got[:, 7]).all() == (eos is None or eos == 6)
    assert banned > 20, "multi-token bad words should be completed"


def test_bad_words_all_eos_is_the_identity_as_in_hf():
    x, ids = _tie_free(42, B=2, V=40), _steps(43)[:2]
    assert np.array_equal(ref.bad_words(x, ids, [[6], [7]], eos_token_id=[6, 7]), x)
    _same(ref.bad_words(x, ids, [[6], [7]], eos_token_id=[6, 7]),
          _hf(hf.NoBadWordsLogitsProcessor([[6], [7]], eos_token_id=[6, 7]), x, ids))  # fmt: skip
    assert np.isneginf(ref.bad_words(x, ids, [[6], [7]], eos_token_id=6)[:, 7]).all()


SEQUENCE_BIAS = {(3,): 1.5, (1, 2): -2.25, (2, 2, 3): 0.75, (0, 3): 4.0, (4, 4, 4): -0.5, (8, 9, 10, 11): 3.0}


@pytest.mark.parametrize("form", ["dict", "list"])
def test_sequence_bias_same_as_hf_at_every_step(form):
    """Biases exact in float32 (HF rounds them to float32): the same values exactly, several
    sequences completed by the same token adding up ((3,), (2, 2, 3), (0, 3))."""
    spec = SEQUENCE_BIAS if form == "dict" else [[list(k), v] for k, v in SEQUENCE_BIAS.items()]
    x, history = _tie_free(50, B=6, V=40), _steps(51)
    changed = 0
    for t in range(0, history.shape[1] + 1):
        ids = history[:, :t]
        want = _hf(hf.SequenceBiasLogitsProcessor(spec), x, ids)
        got = ref.sequence_bias(x, ids, spec)
        _same(got, want)
        changed += int((got[:, [2, 4, 11]] != x[:, [2, 4, 11]]).sum())
    assert changed > 20


def test_sequence_bias_in_float64_where_hf_rounds_to_float32():
    x, ids = _tie_free(52, B=2, V=40), _steps(53)[:2]
    got = ref.sequence_bias(x, ids, {(3,): 0.1})
    want = _hf(hf.SequenceBiasLogitsProcessor({(3,): 0.1}), x, ids)
    assert np.array_equal(got[:, 3], x[:, 3] + 0.1)
    assert np.array_equal(want[:, 3], x[:, 3] + float(np.float32(0.1)))


def test_logit_bias_is_hfs_single_token_sequence_bias():
    x = _tie_free(54, B=4, V=40)
    bias = {0: 2.5, 3: -100.0, 39: 0.125}
    want = _hf(hf.SequenceBiasLogitsProcessor({(k,): v for k, v in bias.items()}), x)
    _same(ref.logit_bias(x, bias), want)


@pytest.mark.parametrize("eos", [3, [3, 17]], ids=str)
def test_min_length_and_min_new_tokens_same_as_hf_at_the_boundary(eos):
    x, history = _tie_free(60, B=4, V=40), _steps(61, B=4, T=12)
    for t in (6, 7, 8, 9):  # min_length 8: banned at 6, 7; free at 8, 9
        ids = history[:, :t]
        _same(ref.min_length(x, ids, 8, eos), _hf(hf.MinLengthLogitsProcessor(8, eos), x, ids))
        assert np.isneginf(ref.min_length(x, ids, 8, eos)[:, 3]).all() == (t < 8)
    for t in (5, 6, 7, 8, 9):  # prompt 5, at least 3 new tokens: banned while t < 8
        ids = history[:, :t]
        want = _hf(hf.MinNewTokensLengthLogitsProcessor(5, 3, eos), x, ids)
        got = ref.min_new_tokens(x, ids, 5, 3, eos)
        _same(got, want)
        assert np.isneginf(got[:, 3]).all() == (t < 8)


def test_forced_bos_and_eos_same_as_hf_at_the_boundary():
    x, history = _tie_free(62, B=4, V=40), _steps(63, B=4, T=12)
    for t in (0, 1, 2):
        ids = history[:, :t]
        _same(ref.forced_bos(x, ids, 9), _hf(hf.ForcedBOSTokenLogitsProcessor(9), x, ids))
    assert np.isfinite(ref.forced_bos(x, history[:, :1], 9)).sum(axis=-1).tolist() == [1] * 4
    for eos in (4, [4, 12]):
        for t in (8, 9, 10):  # max_length 10: forced at t = 9
            ids = history[:, :t]
            want = _hf(hf.ForcedEOSTokenLogitsProcessor(10, eos), x, ids)
            got = ref.forced_eos(x, ids, 10, eos)
            _same(got, want)
            assert (np.isfinite(got).sum(axis=-1) == (len(np.atleast_1d(eos)) if t == 9 else 39)).all()


@pytest.mark.parametrize("decay", [1.25, 0.8])
def test_exponential_decay_length_penalty_same_as_hf_at_the_boundary(decay):
    """Positive, negative and -inf eos logits; k = t - (prompt + start) from -1 to 4."""
    x, history = _tie_free(64, B=4, V=40), _steps(65, B=4, T=14)
    x[:, 2] = [3.0, -2.0, -np.inf, 0.0]  # eos 2: each sign, -inf and 0
    for t in range(6, 12):  # prompt 4 + start 3 = 7: nothing while t <= 7
        ids = history[:, :t]
        want = _hf(hf.ExponentialDecayLengthPenalty((3, decay), [2, 5], 4), x, ids)
        got = ref.exponential_decay_length_penalty(x, ids, 3, decay, 4, [2, 5])
        _same(got, want)
        assert np.array_equal(got, x) == (t <= 7)


def test_suppress_tokens_same_as_hf():
    x, history = _tie_free(66, B=4, V=40), _steps(67, B=4, T=8)
    _same(ref.suppress_tokens(x, [0, 5, 39]), _hf(hf.SuppressTokensLogitsProcessor([0, 5, 39]), x))
    for t in (4, 5, 6):  # begin_index 5
        ids = history[:, :t]
        want = _hf(hf.SuppressTokensAtBeginLogitsProcessor([1, 2], 5), x, ids)
        got = ref.begin_suppress_tokens(x, ids, [1, 2], 5)
        _same(got, want)
        assert np.isneginf(got[:, 1]).all() == (t == 5)


class _Unconditional:
    """HF's UnbatchedClassifierFreeGuidanceLogitsProcessor runs `model(...)`: a stand-in that
    returns fixed unconditional logits (B, 1, V), and counts its calls."""

    class Out(dict):
        pass

    def __init__(self, logits):
        self.logits, self.calls = torch.from_numpy(logits), 0

    def __call__(self, input_ids, attention_mask=None, use_cache=True, cache=None):
        self.calls += 1
        out = self.Out()
        out.logits = self.logits[:, None, :]
        return out


@pytest.mark.parametrize("scale", [1.0, 1.5, 3.0, 0.5, -0.7])
def test_guidance_same_as_hf(scale):
    x = _tie_free(70, B=4, V=40)
    u = np.random.default_rng(71).normal(0.0, 2.0, size=(4, 40))
    u[:, 5] = -np.inf  # HF: -inf - (-inf) = NaN here unless scale = 1
    ids = _steps(72, B=4, T=6)
    model = _Unconditional(u)
    want = _hf(hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(scale, model), x, ids)
    calls = []
    got = ref.guidance(x, ids, scale, lambda i: calls.append(i) or u)
    assert len(calls) == model.calls == (0 if scale == 1 else 1)
    finite = np.isfinite(want)
    assert np.isneginf(got[~finite]).all() and np.isfinite(got[finite]).all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=F64.rtol, atol=F64.atol)
    if scale != 1:
        assert np.isnan(want[:, 5]).all(), "HF's NaN where both passes rule a token out"
    np.testing.assert_allclose(ref.classifier_free_guidance(x, u, scale)[finite], want[finite], rtol=F64.rtol, atol=F64.atol)


def test_long_chain_matches_hf_list_in_hf_order():
    """Every history processor and the warpers, given in a scrambled order, against HF's
    LogitsProcessorList in the order of GenerationMixin._get_logits_processor, at every step."""
    x = _tie_free(80, B=6, V=40)
    u = np.random.default_rng(81).normal(0.0, 2.0, size=(6, 40))
    history = _steps(82, B=6, T=12)
    encoder = np.random.default_rng(83).integers(0, 5, size=(6, 7))
    prompt = 4
    spec = [
        ("eta", 0.001), ("top_p", 0.95), ("temperature", 0.9), ("top_k", 30), ("typical", 0.99), ("min_p", 0.01),
        ("epsilon", 0.0005), ("begin_suppress_tokens", {"tokens": [7, 8], "begin_index": prompt}),
        ("suppress_tokens", [9]), ("exponential_decay_length_penalty",
                                   {"start_index": 2, "decay_factor": 1.5, "prompt_length": prompt, "eos_token_id": 3}),
        ("forced_eos", {"max_length": 12, "eos_token_id": 3}), ("forced_bos", 0),
        ("min_new_tokens", {"prompt_length": prompt, "min_new_tokens": 3, "eos_token_id": 3}),
        ("min_length", {"min_length": 5, "eos_token_id": [3, 4]}), ("bad_words", [[1, 2], [6], [3, 0, 1]]),
        ("encoder_no_repeat_ngram", {"n": 2, "encoder_ids": encoder}), ("no_repeat_ngram", 3),
        ("repetition_penalty", 1.2), ("sequence_bias", {(2, 4): 1.5, (0,): -0.5}),
        ("guidance", {"scale": 1.5, "unconditional": lambda ids: u}),
    ]  # fmt: skip
    for t in range(prompt, history.shape[1] + 1):
        ids = history[:, :t]
        hf_list = hf.LogitsProcessorList([
            hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(1.5, _Unconditional(u)),
            hf.SequenceBiasLogitsProcessor({(2, 4): 1.5, (0,): -0.5}),
            hf.RepetitionPenaltyLogitsProcessor(1.2),
            hf.NoRepeatNGramLogitsProcessor(3),
            hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.from_numpy(encoder)),
            hf.NoBadWordsLogitsProcessor([[1, 2], [6], [3, 0, 1]]),
            hf.MinLengthLogitsProcessor(5, [3, 4]),
            hf.MinNewTokensLengthLogitsProcessor(prompt, 3, 3),
            hf.ForcedBOSTokenLogitsProcessor(0),
            hf.ForcedEOSTokenLogitsProcessor(12, 3),
            hf.ExponentialDecayLengthPenalty((2, 1.5), 3, prompt),
            hf.SuppressTokensLogitsProcessor([9]),
            hf.SuppressTokensAtBeginLogitsProcessor([7, 8], prompt),
            hf.TemperatureLogitsWarper(0.9), hf.TopKLogitsWarper(30), hf.TopPLogitsWarper(0.95),
            hf.MinPLogitsWarper(0.01), hf.TypicalLogitsWarper(0.99), hf.EpsilonLogitsWarper(0.0005),
            hf.EtaLogitsWarper(0.001),
        ])  # fmt: skip
        want = _hf(hf_list, x, ids)
        got = ref.apply(x, spec, ids)
        assert np.array_equal(np.isneginf(got), np.isneginf(want)), (t, np.argwhere(np.isneginf(got) != np.isneginf(want))[:5])
        np.testing.assert_allclose(got, want, rtol=F64.rtol, atol=F64.atol)
        kept = np.isfinite(got).sum(axis=-1)
        assert kept.min() >= 1 and kept.max() < 39, (t, kept)
        assert (kept == 1).all() == (t == 11), "forced_eos at t = max_length - 1 only"
    assert [p.name for p in ref.chain(spec)] == [n for n in ref.ORDER if n in dict(spec)]


def test_order_is_hfs():
    """ORDER lists the processors in the order GenerationMixin._get_logits_processor appends
    them (HF 5.24), with logit_bias after sequence_bias and the OpenAI penalties after the
    repetition penalty (HF has neither)."""
    import inspect as _inspect

    from transformers.generation import utils as hf_utils

    source = _inspect.getsource(hf_utils.GenerationMixin._get_logits_processor)
    hf_names = {
        "UnbatchedClassifierFreeGuidanceLogitsProcessor": "guidance", "SequenceBiasLogitsProcessor": "sequence_bias",
        "RepetitionPenaltyLogitsProcessor": "repetition_penalty", "NoRepeatNGramLogitsProcessor": "no_repeat_ngram",
        "EncoderNoRepeatNGramLogitsProcessor": "encoder_no_repeat_ngram", "NoBadWordsLogitsProcessor": "bad_words",
        "MinLengthLogitsProcessor": "min_length", "MinNewTokensLengthLogitsProcessor": "min_new_tokens",
        "ForcedBOSTokenLogitsProcessor": "forced_bos", "ForcedEOSTokenLogitsProcessor": "forced_eos",
        "ExponentialDecayLengthPenalty": "exponential_decay_length_penalty",
        "SuppressTokensLogitsProcessor": "suppress_tokens", "SuppressTokensAtBeginLogitsProcessor": "begin_suppress_tokens",
        "TemperatureLogitsWarper": "temperature", "TopKLogitsWarper": "top_k", "TopPLogitsWarper": "top_p",
        "MinPLogitsWarper": "min_p", "TypicalLogitsWarper": "typical", "EpsilonLogitsWarper": "epsilon",
        "EtaLogitsWarper": "eta",
    }  # fmt: skip
    hf_order = sorted(hf_names, key=lambda cls: source.index(cls + "("))
    ours = [n for n in ref.ORDER if n in hf_names.values()]
    assert ours == [hf_names[cls] for cls in hf_order]
    assert ref.ORDER.index("logit_bias") == ref.ORDER.index("sequence_bias") + 1
    assert ref.ORDER.index("repetition_penalty") < ref.ORDER.index("frequency_penalty") < ref.ORDER.index("no_repeat_ngram")


def test_ids_outside_the_vocabulary_raise_where_hf_ignores_them():
    x, ids = _tie_free(90, B=1, V=40), np.array([[3, 40, 3, 40]])
    assert np.isneginf(_hf(hf.NoRepeatNGramLogitsProcessor(2), x, ids)[0, 40 - 1]) == False  # noqa: E712
    with pytest.raises(ValueError, match="^ids:"):
        ref.no_repeat_ngram(x, ids, 2)
    with pytest.raises(ValueError, match="^tokens:"):
        ref.suppress_tokens(x, [40])
    _hf(hf.SuppressTokensLogitsProcessor([40]), x)  # HF: no error
