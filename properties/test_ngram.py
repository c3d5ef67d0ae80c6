"""Properties of reference.ngram: every normalized smoother is a distribution over
P = vocabulary + </s> + <unk> for seen and unseen contexts of every length; the ARPA
round trip preserves every probability (and ARPA text exactly); stupid_backoff, the one
unnormalized score, is excluded from normalization."""

from __future__ import annotations

import itertools

import numpy
from hypothesis import given
from hypothesis import strategies as st

from chainrule.reference import ngram as ng
from chainrule.reference.checks import assert_close

WORDS = ("a", "b", "c", "d", "e")

sentences = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6)
corpora = st.lists(sentences, min_size=1, max_size=7)
orders = st.integers(1, 4)
normalized = st.sampled_from(ng.NORMALIZED)


def contexts_of(model, draw_unseen):
    """Seen contexts (every context of the training n-grams, every length) and unseen
    ones (unknown words, never-seen word pairs), of every length up to order (one longer
    than the model uses, which truncates)."""
    seen = {g[:-1] for counts in model.counts for g in counts}
    unseen = set()
    for length in range(0, model.order + 1):
        for ctx in itertools.product(("<s>", "zz") + WORDS[:2], repeat=length):
            if "<s>" not in ctx[1:]:
                unseen.add(ctx)
    return sorted(seen) + sorted(unseen - seen)[:draw_unseen]


@given(corpus=corpora, order=orders, smoothing=normalized, unseen=st.integers(5, 40))
def test_normalized_over_every_context(corpus, order, smoothing, unseen):
    model = ng.fit(corpus, order, smoothing)
    contexts = contexts_of(model, unseen)
    dists = [ng.distribution(model, h) for h in contexts]
    assert all(0.0 <= p <= 1.0 for d in dists for p in d)
    sums = numpy.array([sum(d) for d in dists])
    assert_close(f"sum_w p(w | h), {smoothing}", numpy.ones_like(sums), sums, "float64")
    assert ng.prob(model, contexts[0], "<s>") == 0.0


def zipf_corpus(seed: int, n_sentences: int, vocab: int) -> list[list[str]]:
    rng = numpy.random.default_rng(seed)
    p = 1.0 / numpy.arange(1, vocab + 1)
    p /= p.sum()
    return [[f"w{j}" for j in rng.choice(vocab, size=rng.integers(0, 9), p=p)] for _ in range(n_sentences)]


@given(seed=st.integers(0, 2**32 - 1), order=st.integers(2, 4), smoothing=normalized)
def test_normalized_on_text_like_counts(seed, order, smoothing):
    """Zipf counts, where the discounts are estimated (not the fallbacks of tiny corpora)."""
    model = ng.fit(zipf_corpus(seed, 97, 31), order, smoothing)
    rng = numpy.random.default_rng(seed)
    seen = sorted({g[:-1] for counts in model.counts for g in counts})
    contexts = [seen[i] for i in rng.choice(len(seen), size=min(len(seen), 13), replace=False)]
    contexts += [("<s>", "w1", "qq"), ("qq",), ("w2", "w0", "w1")]
    dists = [ng.distribution(model, h) for h in contexts]
    assert all(0.0 <= p <= 1.0 for d in dists for p in d)
    sums = numpy.array([sum(d) for d in dists])
    assert_close(f"sum_w p(w | h), {smoothing}", numpy.ones_like(sums), sums, "float64")


@given(corpus=corpora, order=orders)
def test_stupid_backoff_is_a_score(corpus, order):
    model = ng.fit(corpus, order, "stupid_backoff")
    for h in contexts_of(model, 10):
        assert all(0.0 <= p <= 1.0 for p in ng.distribution(model, h))
        assert sum(ng.distribution(model, h)) <= order  # at most one "1" per level on the way down


@given(corpus=corpora, order=orders, smoothing=st.sampled_from(ng.SMOOTHERS))
def test_arpa_round_trip(corpus, order, smoothing):
    model = ng.fit(corpus, order, smoothing)
    text = ng.to_arpa(model)
    loaded = ng.from_arpa(text)
    assert ng.to_arpa(loaded) == text  # exact text round trip
    assert loaded.vocab == model.vocab and loaded.order == model.order
    contexts = contexts_of(model, 20)
    truth = numpy.array([ng.distribution(model, h) for h in contexts])
    got = numpy.array([ng.distribution(loaded, h) for h in contexts])
    assert_close(f"p(w | h) after ARPA, {smoothing}", truth, got, "float64")
    assert numpy.array_equal(truth == 0, got == 0)  # zeros stay exact zeros (-99)
    listed, _ = ng.arpa_tables(model)
    for k, table in enumerate(listed):  # every listed probability, one by one
        keys = [g for g in table if g != ("<s>",)]
        truth = numpy.array([ng.prob(model, g[:-1], g[-1]) for g in keys])
        got = numpy.array([ng.prob(loaded, g[:-1], g[-1]) for g in keys])
        assert_close(f"{k + 1}-gram probabilities after ARPA", truth, got, "float64")


@given(corpus=corpora, order=orders, smoothing=normalized, seed=st.integers(0, 2**32 - 1))
def test_log_prob_is_the_chain_rule(corpus, order, smoothing, seed):
    model = ng.fit(corpus, order, smoothing)
    rng = numpy.random.default_rng(seed)
    sentence = [str(w) for w in rng.choice(WORDS + ("zz",), size=rng.integers(0, 5))]
    history, total = ("<s>",), 0.0
    for w in sentence + ["</s>"]:
        with numpy.errstate(divide="ignore"):
            total += float(numpy.log(ng.prob(model, history, w)))
        history = history + ((w if w in model.vocab else "<unk>"),)
    assert ng.log_prob(model, sentence) == total


@given(corpus=corpora, order=orders, seed=st.integers(0, 2**32 - 1))
def test_sample_is_pure_and_reproducible(corpus, order, seed):
    model = ng.fit(corpus, order, "modified_kneser_ney")
    a = ng.sample(model, numpy.random.default_rng(seed), 3, 7)
    b = ng.sample(model, numpy.random.default_rng(seed), 3, 7)
    assert a == b and all(len(s) <= 7 and all(w in model.vocab and w != "</s>" for w in s) for s in a)
