"""reference.ngram vs fast.ngram: counts, discounts and probabilities EXACTLY equal.

The fast path evaluates the reference's formulas with the same floating-point operations
in the same order (elementwise IEEE arithmetic, sums in vocabulary order, numpy's log and
power), so there is no tolerance here: every count, discount, conditional probability,
sentence log-probability, perplexity, sampled sentence and ARPA text is compared for
equality, for every smoother and orders 1, 2, 3, 5. (The fast n-gram path is integer
counting in NumPy on the CPU; it has no torch or GPU backend, so the `backend`
fixture does not apply.)
"""

from __future__ import annotations

import numpy as np
import pytest

from chainrule.fast import ngram as fast
from chainrule.reference import ngram as ref

ORDERS = (1, 2, 3, 5)


def zipf_corpus(seed: int, n_sentences: int, vocab: int, unk: bool = False) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    names = [f"w{j}" for j in range(vocab)]
    if unk:
        names[3] = "<unk>"  # the literal token counts as <unk>
    return [[names[j] for j in rng.choice(vocab, size=rng.integers(0, 9), p=p)] for _ in range(n_sentences)]


def queries(seed: int, vocab: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)  # unknown words (w{vocab}..) and empty sentences included
    return [[f"w{j}" for j in rng.integers(0, vocab + 5, size=rng.integers(0, 9))] for _ in range(37)]


CORPORA = {
    "zipf-97": lambda: zipf_corpus(1, 97, 29),
    "zipf-301": lambda: zipf_corpus(2, 301, 113),
    "literal-unk": lambda: zipf_corpus(3, 59, 13, unk=True),
    "one-word": lambda: [["a"]],
    "empty-sentences": lambda: [[], ["a", "b"], []],
}


def fast_counts(model: fast.Model) -> list[dict]:
    names = list(model.vocab) + [ref.BOS]
    return [{tuple(names[i] for i in t): c for t, c in zip(od.tokens.tolist(), od.counts.tolist()) if c > 0}
            for od in model.orders]  # fmt: skip


def contexts_for(model: ref.Model) -> list[tuple]:
    seen = sorted({g[:-1] for counts in model.counts for g in counts})
    rng = np.random.default_rng(0)
    words = [w for w in model.vocab if w != ref.EOS][:5] + ["zz"]
    unseen = [tuple(str(words[j]) for j in rng.integers(0, len(words), size=n)) for n in range(model.order + 1)]
    return seen[:40] + [("<s>",) + h for h in unseen] + unseen


@pytest.mark.parametrize("corpus", list(CORPORA))
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("smoothing", ref.SMOOTHERS)
def test_fast_equals_reference(smoothing, order, corpus):
    sentences = CORPORA[corpus]()
    r = ref.fit(sentences, order, smoothing)
    f = fast.fit(sentences, order, smoothing)
    assert f.vocab == r.vocab
    assert fast_counts(f) == list(r.counts)
    assert f.discounts == r.discounts and f.discounts_fallback == r.discounts_fallback
    if smoothing == "katz":
        for k in range(1, order + 1):
            od = f.orders[k - 1]
            names = list(f.vocab) + [ref.BOS]
            ctx = fast._context_tokens(f, k) if k > 1 else np.zeros((1, 0), dtype=np.int64)
            rows = zip(ctx.tolist(), od.katz_alpha.tolist(), od.total.tolist())
            got = {tuple(names[i] for i in t): (None if np.isnan(a) else a) for t, a, tot in rows if tot > 0}
            assert got == r.backoffs[k - 1]
    for h in contexts_for(r):
        truth = np.array(ref.distribution(r, h))
        got = fast.distribution(f, h)
        assert np.array_equal(truth, got), f"p(. | {h}): worst {np.abs(truth - got).max()}"
    test = queries(order, 29) + sentences[:11]
    truth = np.array([ref.log_prob(r, s) for s in test])
    got = fast.log_probs(f, test)
    assert np.array_equal(truth, got), f"log_prob: worst {np.nanmax(np.abs(truth - got))}"
    assert [ref.log_prob(r, s) for s in test[:3]] == [fast.log_prob(f, s) for s in test[:3]]
    assert ref.conditionals(r, test[0]) == fast.conditionals(f, test[0]).tolist()
    if not (smoothing == "add_k" and corpus == "zipf-301"):  # add_k lists |contexts| x |P| n-grams: slow
        assert ref.to_arpa(r) == fast.to_arpa(f)
    if smoothing != "stupid_backoff":
        assert ref.perplexity(r, sentences) == fast.perplexity(f, sentences)
        assert ref.sample(r, np.random.default_rng(order), 5, 7) == fast.sample(f, np.random.default_rng(order), 5, 7)


@pytest.mark.parametrize("smoothing", ref.SMOOTHERS)
@pytest.mark.parametrize("order", (2, 3))
def test_fast_from_arpa_equals_reference(smoothing, order):
    text = ref.to_arpa(ref.fit(CORPORA["zipf-97"](), order, smoothing))
    r, f = ref.from_arpa(text), fast.from_arpa(text)
    assert f.vocab == r.vocab and fast.to_arpa(f) == text
    test = queries(7, 29)
    assert np.array_equal(np.array([ref.log_prob(r, s) for s in test]), fast.log_probs(f, test))
    for h in [(), ("<s>",), ("w0",), ("w1", "w0"), ("zz", "w2"), ("<s>", "w0")]:
        assert np.array_equal(np.array(ref.distribution(r, h)), fast.distribution(f, h))


def test_probs_batched_equals_prob():
    sentences = CORPORA["zipf-301"]()
    r, f = ref.fit(sentences, 3, "modified_kneser_ney"), fast.fit(sentences, 3, "modified_kneser_ney")
    contexts = [("<s>",), ("w0", "w1"), ("zz",), (), ("<s>", "w2", "w3", "w1")]
    words = ["w1", "</s>", "qq", "<s>", "w0"]
    got = fast.probs(f, contexts, words)
    assert got.tolist() == [ref.prob(r, h, w) for h, w in zip(contexts, words)]
    assert got[3] == 0.0  # <s> is never predicted


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: m.fit([], 2), ValueError, "sentences: expected at least one sentence"),
    (lambda m: m.fit([["a", 1]], 2), TypeError, r"sentences\[0\]\[1\]: expected a str token, got int"),
    (lambda m: m.fit([["a"], ["b c"]], 2), ValueError, r"sentences\[1\]\[0\]: expected a non-empty token"),
    (lambda m: m.fit([["a", "</s>"]], 2), ValueError, r"sentences\[0\]\[1\]: expected a word, got the sentence marker"),
    (lambda m: m.fit("a b", 2), TypeError, "sentences: expected a sequence of sentences"),
    (lambda m: m.fit([["a"]], 0), ValueError, "order: expected an int >= 1"),
    (lambda m: m.fit([["a"]], 2, "good_turing"), ValueError, "smoothing: expected one of"),
    (lambda m: m.from_arpa("\\data\\\nngram 1=1\n\n\\1-grams:\n-1 a b\n\n\\end\\\n"), ValueError,
     r"text: line 5: expected 2 fields"),
])  # fmt: skip
def test_same_errors(call, exc, match):
    for module in (ref, fast):
        with pytest.raises(exc, match=match):
            call(module)


def test_fast_fit_is_pure():
    sentences = [["a", "b"], ("b",)]
    fast.fit(sentences, 3, "katz")
    assert sentences == [["a", "b"], ("b",)]
