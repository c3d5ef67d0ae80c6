"""reference.ngram's ARPA output against kenlm.Model: KenLM reads what to_arpa writes
and scores every sentence as chainrule does, to 1e-5 in log10, for orders 2..5 and
every smoother (all of them can be written as ARPA back-off tables), sentences with
unknown words included. KenLM stores log10 values in float32: a sentence of m
conditionals is off by up to ~m/2 float32 ulps of its terms (a few 1e-7 each).

Where chainrule gives a conditional probability 0 (mle and stupid_backoff for unseen
words, katz on an order left undiscounted) the ARPA text holds -99, which KenLM reads
as 10^-99: chainrule's -inf is KenLM's "below -99"; that is tested too.
KenLM needs order >= 2 ("This ngram implementation assumes at least a bigram model").
"""

from __future__ import annotations

import math

import numpy as np
import pytest

kenlm = pytest.importorskip("kenlm", reason="kenlm is not installed (peers extra)")

from chainrule.reference import ngram as ng  # noqa: E402

LOG10_TOL = 1e-5


def zipf_corpus(seed: int, n_sentences: int, vocab: int) -> list[list[str]]:
    """Zipf-distributed words (count-of-counts like real text, so the discounts estimate)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    return [[f"w{j}" for j in rng.choice(vocab, size=rng.integers(1, 9), p=p)] for _ in range(n_sentences)]


def test_sentences(seed: int, vocab: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)  # words beyond the vocabulary are unknown; empty sentences too
    return [[f"w{j}" for j in rng.integers(0, vocab + 7, size=rng.integers(0, 8))] for _ in range(29)]


test_sentences.__test__ = False


def kenlm_model(text: str, tmp_path):
    path = tmp_path / "model.arpa"
    path.write_text(text)
    config = kenlm.Config()
    config.show_progress = False
    return kenlm.Model(str(path), config)


@pytest.mark.parametrize("order", [2, 3, 4, 5])
@pytest.mark.parametrize("smoothing", ng.SMOOTHERS)
def test_kenlm_scores_like_chainrule(smoothing, order, tmp_path):
    vocab = 100
    train = zipf_corpus(order, 250, vocab)
    model = ng.fit(train, order, smoothing)
    k = kenlm_model(ng.to_arpa(model), tmp_path)
    assert k.order == order
    worst, finite, zero = 0.0, 0, 0
    for s in test_sentences(order + 10, vocab) + train[:13]:
        ours = ng.log_prob(model, s) / math.log(10)
        theirs = k.score(" ".join(s), bos=True, eos=True)
        if math.isfinite(ours):
            worst = max(worst, abs(ours - theirs))
            finite += 1
        else:
            assert theirs < -99 + 1, f"{smoothing} {s}: chainrule -inf, kenlm {theirs}"
            zero += 1
    assert finite >= 13, f"only {finite} sentences of finite probability"
    assert worst <= LOG10_TOL, f"{smoothing} order {order}: worst |log10 difference| {worst:.3g}"
    if smoothing in ("witten_bell", "kneser_ney", "modified_kneser_ney", "add_k"):
        assert zero == 0  # unknown words get mass


def test_kenlm_per_word_scores_and_unknowns(tmp_path):
    train = zipf_corpus(0, 250, 100)
    model = ng.fit(train, 3, "modified_kneser_ney")
    assert model.discounts_fallback == ()  # D1, D2, D3+ estimated at every order
    k = kenlm_model(ng.to_arpa(model), tmp_path)
    sentence = ["w0", "qqq", "w1", "w2"]
    full = list(k.full_scores(" ".join(sentence), bos=True, eos=True))
    padded = ["<s>"] + sentence + ["</s>"]
    for i, (log10p, _, oov) in enumerate(full, start=1):
        ours = math.log10(ng.prob(model, padded[:i], padded[i]))
        assert abs(ours - log10p) <= LOG10_TOL
        assert oov == (padded[i] == "qqq")
