"""reference.ngram against nltk.lm (MLE, Lidstone, Laplace, WittenBellInterpolated,
KneserNeyInterpolated), on small corpora, where the definitions agree.

NLTK pads every sentence with order-1 <s> and order-1 </s> (padded_everygram_pipeline);
chainrule, like KenLM, pads with one of each. At order 2 the padding is the same.

Agreement (tested):
    MLE             order 2 and 3: every p(w | h) of a seen context h, and whole
                    sentence scores at order 3 (the extra padding does not change
                    c(h w) / c(h) for any conditional a sentence uses)
    Lidstone/Laplace order 2: chainrule's p(w | h) = NLTK's p(w | h) / (1 - NLTK's p(<s> | h))
                    (NLTK's vocabulary holds <s>, so it gets k / (c(h) + k |V|); see below)
    WittenBell, KneserNey (discount fixed at NLTK's 0.1), order 2: the same top-level
                    interpolation, alpha(h w) + gamma(h) p(w); the two differ only
                    through the unigram level: NLTK(w|h) - chainrule(w|h) = gamma(h) (NLTK(w) - chainrule(w))

Where NLTK deviates (each one tested below):
    1. KneserNeyInterpolated and WittenBellInterpolated give an unknown word probability 0:
       their unigram level is the continuation (resp. raw) frequency with no uniform base;
       chainrule (and KenLM) interpolate it with 1/|P|, so <unk> gets the leftover mass.
    2. NLTK's unigram counts include the <s> padding: its MLE unigram is c(w) / (N + #<s>);
       chainrule never predicts <s>, so its unigram is c(w) / N.
    3. Lidstone/Laplace give <s> nonzero probability (it is in NLTK's vocabulary);
       chainrule gives it 0.
    4. At order >= 3 NLTK's extra padding adds n-grams such as "<s> <s>" (counted as
       an ordinary bigram, so a continuation of "<s>" in Kneser-Ney), which lmplz
       collapses away; NLTK's discount is one fixed number (0.1) for every order,
       chainrule's kneser_ney estimates it per order unless given.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

lm = pytest.importorskip("nltk.lm", reason="nltk is not installed (peers extra)")
from nltk.lm.preprocessing import padded_everygram_pipeline  # noqa: E402

from chainrule.reference import ngram as ng  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402


def corpus(seed: int, n: int = 13, words: int = 7) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    vocab = [chr(ord("a") + i) for i in range(words)]
    return [[vocab[j] for j in rng.integers(0, words, size=rng.integers(1, 7))] for _ in range(n)]


def nltk_model(cls, order, sentences, **kwargs):
    model = cls(order=order, **kwargs) if kwargs else cls(order)
    train, vocab = padded_everygram_pipeline(order, sentences)
    model.fit(train, vocab)
    return model


def seen_contexts(model, length):
    return sorted({g[:-1] for g in model.counts[length] if len(g) == length + 1})


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("order", [2, 3])
def test_mle_agrees(seed, order):
    sentences = corpus(seed)
    ours, theirs = ng.fit(sentences, order, "mle"), nltk_model(lm.MLE, order, sentences)
    contexts = [h for h in seen_contexts(ours, order - 1) if order == 2 or "<s>" not in h]
    truth = np.array([[theirs.score(w, list(h)) for w in ours.vocab if w != "<unk>"] for h in contexts])
    got = np.array([[ng.prob(ours, list(h), w) for w in ours.vocab if w != "<unk>"] for h in contexts])
    assert_close(f"MLE order {order} p(w | h)", truth, got, "float64")
    if order == 3:  # whole sentences: NLTK scores with its own padding
        for s in sentences:
            padded = ["<s>", "<s>"] + s + ["</s>"]
            nltk_lp = sum(math.log(theirs.score(padded[i], padded[i - 2 : i])) for i in range(2, len(padded)))
            assert_close("MLE order 3 sentence log-prob", np.array(nltk_lp), np.array(ng.log_prob(ours, s)), "float64")


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("k", [1.0, 0.5])
def test_lidstone_laplace_agree_up_to_the_bos_mass(seed, k):
    sentences = corpus(seed)
    ours = ng.fit(sentences, 2, "add_k", k=k)
    theirs = nltk_model(lm.Laplace, 2, sentences) if k == 1 else nltk_model(lm.Lidstone, 2, sentences, gamma=k)
    assert len(theirs.vocab) == ours.vocab_size + 1  # NLTK's holds <s> as well
    for h in seen_contexts(ours, 1):
        bos = theirs.score("<s>", list(h))
        assert bos > 0 and ng.prob(ours, list(h), "<s>") == 0.0  # deviation 3
        truth = np.array([theirs.score(w, list(h)) / (1 - bos) for w in ours.vocab])
        got = np.array(ng.distribution(ours, h))
        assert_close(f"Lidstone k={k} p(w | {h})", truth, got, "float64")


@pytest.mark.parametrize("seed", [0, 4])
@pytest.mark.parametrize("smoothing, cls, kwargs", [
    ("witten_bell", lm.WittenBellInterpolated, {}),
    ("kneser_ney", lm.KneserNeyInterpolated, {"discount": 0.1}),
])  # fmt: skip
def test_interpolated_agree_at_the_top_level(seed, smoothing, cls, kwargs):
    sentences = corpus(seed)
    ours = ng.fit(sentences, 2, smoothing, **kwargs)
    theirs = nltk_model(cls, 2, sentences, **kwargs)
    words = [w for w in ours.vocab if w != "<unk>"]
    uni_gap = np.array([theirs.score(w) - ng.prob(ours, [], w) for w in words])
    for h in seen_contexts(ours, 1):
        gamma = ng.prob(ours, list(h), "<unk>") / ng.prob(ours, [], "<unk>")  # <unk> never follows h
        truth = np.array([theirs.score(w, list(h)) - ng.prob(ours, list(h), w) for w in words])
        assert_close(f"{smoothing}: NLTK - chainrule at {h}", truth, gamma * uni_gap, "float64")
    assert np.abs(uni_gap).max() > 1e-4  # the unigram levels do differ (deviations 1, 2)


@pytest.mark.parametrize("smoothing, cls, kwargs", [
    ("witten_bell", lm.WittenBellInterpolated, {}),
    ("kneser_ney", lm.KneserNeyInterpolated, {"discount": 0.1}),
    ("modified_kneser_ney", lm.KneserNeyInterpolated, {}),
])  # fmt: skip
def test_deviation_unknown_words_get_zero_in_nltk(smoothing, cls, kwargs):
    sentences = corpus(5)
    theirs = nltk_model(cls, 3, sentences, **kwargs)
    ours = ng.fit(sentences, 3, smoothing, **({} if smoothing != "kneser_ney" else kwargs))
    assert theirs.score("zzz", ["a", "b"]) == 0.0 and theirs.score("<UNK>", ["a"]) == 0.0
    assert ng.prob(ours, ["a", "b"], "zzz") > 0.0
    assert math.isfinite(ng.log_prob(ours, ["a", "zzz", "b"]))


def test_deviation_unigrams_count_the_padding():
    sentences = corpus(6)
    ours, theirs = ng.fit(sentences, 2, "mle"), nltk_model(lm.MLE, 2, sentences)
    n_tokens = sum(len(s) + 1 for s in sentences)
    for w in ours.vocab:
        if w == "<unk>":
            continue
        ours_count = ng.prob(ours, [], w) * n_tokens
        assert theirs.score(w) * (n_tokens + len(sentences)) == pytest.approx(ours_count, rel=1e-12)
    assert theirs.score("<s>") > 0 and ng.prob(ours, [], "<s>") == 0.0


def test_deviation_order_minus_one_bos_padding():
    sentences = corpus(7)
    theirs = nltk_model(lm.KneserNeyInterpolated, 3, sentences)
    ours = ng.fit(sentences, 3, "kneser_ney", discount=0.1)
    assert theirs.counts[["<s>"]]["<s>"] == len(sentences)  # the bigram "<s> <s>", once per sentence
    assert ("<s>", "<s>") not in ours.counts[1]
    first = sentences[0][0]
    assert theirs.score(first, ["<s>", "<s>"]) != pytest.approx(ng.prob(ours, ["<s>"], first), rel=1e-6)
