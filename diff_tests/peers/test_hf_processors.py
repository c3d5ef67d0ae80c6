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
