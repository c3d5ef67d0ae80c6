"""reference.ngram: bad input, and small cases computed by hand."""

from __future__ import annotations

import math

import numpy
import pytest

from chainrule.reference import ngram as ng

TINY = [["a", "b"], ["a"]]  # padded: <s> a b </s>, <s> a </s>;  P = (</s>, <unk>, a, b)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("order", [0, -1, 1.5, "2", True, None])
def test_bad_order(order):
    with pytest.raises(ValueError, match="order: expected an int >= 1"):
        ng.fit(TINY, order)


@pytest.mark.parametrize("corpus", [[], ()])
def test_empty_corpus(corpus):
    with pytest.raises(ValueError, match="sentences: expected at least one sentence, got an empty corpus"):
        ng.fit(corpus, 2)


@pytest.mark.parametrize("corpus, where, exc", [
    ([["a", 3]], r"sentences\[0\]\[1\]: expected a str token, got int 3", TypeError),
    ([["a"], [b"b"]], r"sentences\[1\]\[0\]: expected a str token, got bytes", TypeError),
    (["a b"], r"sentences\[0\]: expected a sequence of str tokens, got str", TypeError),
    ("a b", r"sentences: expected a sequence of sentences", TypeError),
    ([["a", "<s>"]], r"sentences\[0\]\[1\]: expected a word, got the sentence marker '<s>'", ValueError),
    ([["</s>"]], r"sentences\[0\]\[0\]: expected a word, got the sentence marker '</s>'", ValueError),
    ([["a b"]], r"sentences\[0\]\[0\]: expected a non-empty token without whitespace, got 'a b'", ValueError),
    ([[""]], r"sentences\[0\]\[0\]: expected a non-empty token without whitespace", ValueError),
])  # fmt: skip
def test_bad_tokens(corpus, where, exc):
    with pytest.raises(exc, match=where):
        ng.fit(corpus, 2)


def test_bad_smoothing_and_options():
    with pytest.raises(ValueError, match=r"smoothing: expected one of \('mle'.*got 'kneser-ney'"):
        ng.fit(TINY, 2, "kneser-ney")
    with pytest.raises(ValueError, match="k: not an option of smoothing 'mle'"):
        ng.fit(TINY, 2, "mle", k=1)
    with pytest.raises(ValueError, match="k: expected a finite number > 0, got 0"):
        ng.fit(TINY, 2, "add_k", k=0)
    with pytest.raises(ValueError, match=r"discount: expected a number in \(0, 1\]"):
        ng.fit(TINY, 2, "kneser_ney", discount=1.5)
    with pytest.raises(ValueError, match="katz_k: expected an int >= 1, got 0"):
        ng.fit(TINY, 2, "katz", katz_k=0)
    with pytest.raises(ValueError, match=r"alpha: expected a number in \(0, 1\], got 2"):
        ng.fit(TINY, 2, "stupid_backoff", alpha=2)


def test_bad_queries():
    m = ng.fit(TINY, 3, "witten_bell")
    with pytest.raises(ValueError, match=r"context\[1\]: expected a word \(or <s> at position 0\), got '<s>'"):
        ng.prob(m, ["a", "<s>"], "b")
    with pytest.raises(ValueError, match=r"context\[0\]: expected a word .*got '</s>'"):
        ng.prob(m, ["</s>"], "b")
    with pytest.raises(TypeError, match=r"word: expected a str token, got int"):
        ng.prob(m, ["a"], 1)
    with pytest.raises(TypeError, match="context: expected a sequence of str tokens, got str"):
        ng.prob(m, "a", "b")
    with pytest.raises(TypeError, match="model: expected a reference.ngram.Model"):
        ng.log_prob({"order": 2}, ["a"])
    with pytest.raises(ValueError, match=r"n_sentences: expected a positive int, got 0"):
        ng.sample(m, numpy.random.default_rng(0), 0)
    with pytest.raises(ValueError, match=r"u: expected shape \(1, 3\) in \[0, 1\)"):
        ng.sample(m, None, 1, 2, u=numpy.ones((1, 3)))
    s = ng.fit(TINY, 2, "stupid_backoff")
    with pytest.raises(ValueError, match="stupid_backoff scores are not probabilities"):
        ng.perplexity(s, TINY)
    with pytest.raises(ValueError, match="cannot sample"):
        ng.sample(s, numpy.random.default_rng(0))


GOOD_ARPA = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<unk>
-99\t<s>\t-0.5
-0.5\ta\t-0.3
-0.6\t</s>

\\2-grams:
-0.2\t<s> a
-0.1\ta </s>

\\end\\
"""


@pytest.mark.parametrize("old, new, line, expected", [
    ("\\data\\", "data", 1, r"expected \\data\\"),
    ("ngram 2=2", "ngram 2:2", 3, "expected 'ngram K=COUNT'"),
    ("ngram 2=2", "ngram 3=2", 3, "expected 'ngram 2=COUNT'"),
    ("-0.5\ta\t-0.3", "-0.5\ta\tb\t-0.3\t1", 8, "expected 2 or 3 fields"),
    ("-0.5\ta\t-0.3", "x\ta\t-0.3", 8, "expected a number"),
    ("-0.5\ta\t-0.3", "0.5\ta\t-0.3", 8, "expected log10 p <= 0"),
    ("-0.1\ta </s>", "-0.1\ta </s>\t-0.2", 13, "expected 3 fields"),
    ("-0.1\ta </s>", "-0.1\t<s> a", 13, "expected a new 2-gram"),
    ("ngram 1=4", "ngram 1=5", 10, r"expected 5 1-grams \(the \\data\\ header\), got '4 entries'"),
    ("\\2-grams:", "\\3-grams:", 11, r"expected \\2-grams:"),
    ("\\end\\", "", 17, r"expected \\end\\, got 'end of text'"),
])  # fmt: skip
def test_malformed_arpa_names_the_line(old, new, line, expected):
    assert ng.from_arpa(GOOD_ARPA).order == 2
    with pytest.raises(ValueError, match=f"text: line {line}: {expected}"):
        ng.from_arpa(GOOD_ARPA.replace(old, new, 1))


def test_from_arpa_back_off_rule_by_hand():
    m = ng.from_arpa(GOOD_ARPA)
    assert m.vocab == ("</s>", "<unk>", "a")
    assert ng.prob(m, ["<s>"], "a") == 10**-0.2  # listed bigram
    assert ng.prob(m, ["<s>"], "</s>") == 10**-0.5 * 10**-0.6  # bow(<s>) p(</s>)
    assert ng.prob(m, ["a"], "a") == 10**-0.3 * 10**-0.5
    assert ng.prob(m, ["a"], "</s>") == 10**-0.1
    assert ng.prob(m, ["zz"], "qq") == 10**-1.0  # <unk> context: not listed, weight 1; unknown word
    assert ng.prob(m, [], "<s>") == 0.0
    want = numpy.log(10**-0.2) + numpy.log(10**-0.1)
    assert ng.log_prob(m, ["a"]) == want
    assert ng.to_arpa(ng.from_arpa(ng.to_arpa(m))) == ng.to_arpa(m)


# ----------------------------------------------------------------------------- small cases by hand


def test_counts_with_one_bos():
    m = ng.fit(TINY, 3, "mle")
    assert m.vocab == ("</s>", "<unk>", "a", "b")
    assert m.counts[0] == {("a",): 2, ("b",): 1, ("</s>",): 2}
    assert m.counts[1] == {("<s>", "a"): 2, ("a", "b"): 1, ("b", "</s>"): 1, ("a", "</s>"): 1}
    assert m.counts[2] == {("<s>", "a", "b"): 1, ("a", "b", "</s>"): 1, ("<s>", "a", "</s>"): 1}


def test_kneser_ney_counts_are_continuation_counts_except_after_bos():
    m = ng.fit([["a", "b"], ["b", "b"], ["a"]], 3, "kneser_ney")
    # bigrams (<s> a), (<s> b) keep raw counts; (a b) is preceded by <s> only; (b b) by <s> only
    assert m.counts[1][("<s>", "a")] == 2 and m.counts[1][("<s>", "b")] == 1
    assert m.counts[1][("a", "b")] == 1 and m.counts[1][("b", "</s>")] == 2  # . b </s>: a b </s>, b b </s>
    assert m.counts[0] == {("a",): 1, ("b",): 3, ("</s>",): 2}  # left neighbours: a {<s>}, b {<s>, a, b}, </s> {a, b}


def test_mle_by_hand():
    m = ng.fit(TINY, 2, "mle")
    assert ng.prob(m, ["<s>"], "a") == 1.0
    assert ng.prob(m, ["a"], "b") == 0.5 and ng.prob(m, ["<s>", "a"], "</s>") == 0.5
    assert ng.log_prob(m, ["a", "b"]) == numpy.log(0.5)
    assert ng.prob(m, ["zz"], "a") == 2 / 5  # unseen context -> unigram: a 2, b 1, </s> 2
    assert ng.log_prob(m, ["zz"]) == -math.inf
    assert ng.perplexity(m, [["a", "b"], ["a"]]) == pytest.approx(math.exp(-2 * math.log(0.5) / 5))


def test_add_k_by_hand():
    m = ng.fit(TINY, 1, "add_k")
    assert ng.prob(m, [], "a") == 3 / 9 and ng.prob(m, [], "qq") == 1 / 9
    m = ng.fit(TINY, 2, "add_k", k=0.5)
    assert ng.prob(m, ["a"], "b") == (1 + 0.5) / (2 + 0.5 * 4)
    assert ng.prob(m, ["a"], "a") == 0.5 / 4


def test_witten_bell_by_hand():
    m = ng.fit(TINY, 2, "witten_bell")
    p_a = 2 / 8 + 3 / 8 * (1 / 4)  # 3 types, 5 tokens, uniform over 4
    assert ng.prob(m, [], "a") == p_a and ng.prob(m, [], "<unk>") == 3 / 8 / 4
    p_b = 1 / 8 + 3 / 8 * (1 / 4)
    assert ng.prob(m, ["a"], "b") == pytest.approx(1 / 4 + 2 / 4 * p_b, abs=1e-16)  # c(a)=2, N1+(a .)=2


def test_kneser_ney_by_hand():
    m = ng.fit(TINY, 2, "kneser_ney", discount=0.5)
    # continuation counts: a 1 (<s>), b 1 (a), </s> 2 (a, b): total 4, 3 types
    p_b = (1 - 0.5) / 4 + 0.5 * 3 / 4 * (1 / 4)
    assert ng.prob(m, [], "b") == p_b == 0.21875
    assert ng.prob(m, ["a"], "b") == (1 - 0.5) / 2 + 0.5 * 2 / 2 * p_b == 0.359375
    assert ng.prob(m, [], "zz") == 0.5 * 3 / 4 * (1 / 4)


def test_discount_estimates_by_hand():
    d, fell_back = ng.mkn_discounts([0, 10, 4, 2, 1])
    assert not fell_back and d == pytest.approx((5 / 9, 7 / 6, 17 / 9), rel=1e-15)
    assert ng.mkn_discounts([0, 10, 4, 0, 1]) == ((0.5, 1.0, 1.5), True)  # n3 = 0
    assert ng.mkn_discounts([0, 10, 1, 100, 1]) == ((0.5, 1.0, 1.5), True)  # D2 < 0
    assert ng.kn_discount([0, 10, 4]) == (10 / 18, False) and ng.kn_discount([0, 0, 4]) == (0.5, True)
    d, fell_back = ng.good_turing_discounts([0, 10, 4, 2, 1, 1, 1], 5)  # common = 6 n6 / n1 = 0.6
    assert d[1] == pytest.approx((0.8 - 0.6) / 0.4, rel=1e-15) and fell_back
    assert d[2] == pytest.approx((3 * 2 / (2 * 4) - 0.6) / 0.4, rel=1e-15)
    assert d[4] == 1.0  # (5 n5 / (4 n4) - 0.6) / 0.4 > 1: left undiscounted
    assert ng.good_turing_discounts([0, 2, 1, 0, 0, 0, 1], 5) == ({r: 1.0 for r in range(1, 6)}, True)  # common 3


def test_stupid_backoff_by_hand():
    m = ng.fit(TINY, 2, "stupid_backoff")
    assert ng.prob(m, ["a"], "b") == 0.5
    assert ng.prob(m, ["b"], "a") == 0.4 * (2 / 5)  # (b a) unseen: alpha S(a)
    assert ng.prob(m, ["zz"], "a") == 2 / 5  # unseen context: shortened without alpha
    assert ng.prob(m, ["a"], "zz") == 0.0


def test_katz_by_hand():
    # order 1: counts a 2, b 1, </s> 2; n1 = 1, n2 = 2, n3 = 0 with katz_k = 1: d1 = (2 n2/n1 - 2 n2/n1) / ... = 0
    # -> out of (0, 1]: undiscounted, so no mass is left for <unk>
    m = ng.fit(TINY, 1, "katz", katz_k=1)
    assert m.discounts == ({1: 1.0},) and m.discounts_fallback == (1,)
    assert ng.prob(m, [], "a") == 2 / 5 and ng.prob(m, [], "zz") == 0.0


def test_context_truncated_to_order():
    m = ng.fit(TINY, 2, "witten_bell")
    assert ng.prob(m, ["<s>", "b", "zz", "a"], "b") == ng.prob(m, ["a"], "b")
    assert ng.prob(m, ["qq"], "b") == ng.prob(m, ["<unk>"], "b")  # unknown context word -> <unk>


def test_fit_is_pure():
    corpus = [["a", "b"], ["a"]]
    ng.fit(corpus, 3, "modified_kneser_ney")
    assert corpus == [["a", "b"], ["a"]]


def test_sample_from_explicit_uniforms():
    m = ng.fit(TINY, 2, "mle")  # after <s>: a surely; after a: </s> (first in vocab order) for u < 1/2
    u = numpy.array([[0.3, 0.2, 0.0], [0.3, 0.7, 0.9]])
    assert ng.sample(m, None, 2, 2, u=u) == [["a"], ["a", "b"]]
    rng = numpy.random.default_rng(3)
    assert ng.sample(m, rng, 4, 5) == ng.sample(m, numpy.random.default_rng(3), 4, 5)


def test_prob_with_a_context_shorter_than_the_order():
    m = ng.fit([["a", "b", "c"], ["b", "b"]], 4, "witten_bell")
    # the conditionals of "a b c": contexts (<s>), (<s> a), (<s> a b), (a b c)
    cond = ng.conditionals(m, ["a", "b", "c"])
    assert cond == [ng.prob(m, ["<s>"], "a"), ng.prob(m, ["<s>", "a"], "b"), ng.prob(m, ["<s>", "a", "b"], "c"),
                    ng.prob(m, ["<s>", "a", "b", "c"], "</s>")]  # fmt: skip
    assert ng.prob(m, ["<s>", "a"], "b") != ng.prob(m, ["a"], "b")  # the <s> is part of the context
