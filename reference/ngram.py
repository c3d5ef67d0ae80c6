"""n-gram language models with real smoothing, and the ARPA format.

    p(w_1..w_m) = prod_{i=1}^{m+1} p(w_i | w_{i-n+1} .. w_{i-1}),   w_0 = <s>, w_{m+1} = </s>

A model of order n conditions each word on at most n-1 previous tokens. The
conventions are KenLM's (lmplz estimates, kenlm.Model queries), checked against
its source (lm/builder/adjust_counts.cc, interpolate.cc) and against kenlm.Model
itself in the peer tests:

- A sentence is padded with ONE <s> and one </s>: "<s> a b </s>". Contexts at the
  start of a sentence are therefore shorter than n-1 (p(a | <s>), p(b | <s> a)).
  lmplz pads with n-1 <s> internally and then collapses "<s> <s> a" to "<s> a",
  which yields exactly the counts counted here.
- <s> is a context only: it is never predicted (p(<s> | h) = 0), it has no
  unigram probability (ARPA: log10 p = -99).
- The predicted vocabulary P is every word type of the training text plus </s>
  and <unk>, sorted by code point (that order is also the sampling order). A query
  word or context word outside P is read as <unk>. The training text may contain
  the literal token "<unk>" (it then counts as <unk>), never "<s>" or "</s>".
- The base of every interpolated recursion is uniform over P:
  p_0(w) = 1 / |P| ("Includes <unk> but excludes <s>", interpolate.cc), so an
  unknown word gets the mass the discounts leave, never zero.
- A context never seen in training (as a context) is shortened to its longest seen
  suffix; for interpolated smoothers this is gamma(h) = 1, alpha = 0. This is what
  an ARPA reader does for a context that has no entry (backoff weight 1), so every
  smoother below keeps this rule, and every one can be written as ARPA.
- Kneser-Ney: the highest order uses raw counts; a lower-order n-gram uses its
  continuation count N1+(. g) = |{x : c(x g) > 0}|, except one that starts with
  <s> (nothing can precede it), which keeps its raw count (lmplz's adjusted counts).
  Discounts are estimated per order from the count-of-counts of those counts.

Deviations from lmplz, all deliberate: lmplz computes the discounts in float32,
here they are float64 (differences ~1e-7 relative); lmplz refuses to estimate when
a count-of-count is zero unless --discount_fallback is given, here the fallback
(lmplz's default fallback discounts 0.5, 1, 1.5) is applied and recorded in
`model.discounts_fallback`; lmplz implements only modified Kneser-Ney (and
unsmoothed "uninterpolated" variants), the other smoothers here follow their papers.

Smoothers (equations in each `_p_*` function; h' is h without its first word):

    mle                  c(h w) / c(h)
    add_k                (c(h w) + k) / (c(h) + k |P|)            Lidstone; Laplace is k = 1
    witten_bell          Witten & Bell 1991, interpolated (Chen & Goodman 1998, eq. 16)
    kneser_ney           Kneser & Ney 1995, interpolated, one discount per order
    modified_kneser_ney  Chen & Goodman 1998, interpolated, discounts D1, D2, D3+ per order
    katz                 Katz 1987: Good-Turing discounts with back-off
    stupid_backoff       Brants et al. 2007: an UNNORMALIZED score, not a probability

Every smoother except stupid_backoff is a distribution over P for every context
(seen or not, of every length); properties/test_ngram.py checks the sums.

The model is a frozen `Model` of plain dicts keyed by n-gram tuples of strings.
API: fit, prob, log_prob (natural log), perplexity, sample, to_arpa, from_arpa.
Natural logs, log10 and 10^x are taken with numpy (numpy.log and math.log differ in
the last bit for about one value in a thousand, 10.0**x and numpy.power(10, x) for
one in twenty; numpy's are what a vectorized implementation gets, so the fast path
can agree bit for bit).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
SMOOTHERS = ("mle", "add_k", "witten_bell", "kneser_ney", "modified_kneser_ney", "katz", "stupid_backoff")
NORMALIZED = tuple(s for s in SMOOTHERS if s != "stupid_backoff")
OPTIONS = {  # smoothing -> {option: default}
    "mle": {},
    "add_k": {"k": 1.0},
    "witten_bell": {},
    "kneser_ney": {"discount": None},
    "modified_kneser_ney": {},
    "katz": {"katz_k": 5},
    "stupid_backoff": {"alpha": 0.4},
}
KN_FALLBACK = (0.5, 1.0, 1.5)  # lmplz's default --discount_fallback: D1, D2, D3+
ARPA_LOG_ZERO = -99.0  # ARPA's log10 of probability zero (and of <s>'s unigram)


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Model:
    """A fitted (or ARPA-loaded) n-gram model. Fields, for order n:

    vocab       tuple of the predicted words P, sorted (</s> and <unk> included, <s> not)
    counts      counts[k-1]: {k-gram tuple: the count the smoother uses} for k = 1..n
                (raw counts; Kneser-Ney lower orders: continuation counts, see module doc)
    contexts    contexts[k-1]: {(k-1)-gram context: per-context statistics} (see `_context_stats`)
    discounts   discounts[k-1]: the order's discount(s) (kneser_ney: D; modified_kneser_ney:
                (D1, D2, D3+); katz: {r: d_r}); () where unused
    discounts_fallback  orders (1-based) whose discounts fell back (see the smoother)
    backoffs    katz: backoffs[k-1]: {context: alpha(h)}, None marking a context left
                undiscounted; ARPA models: {n-gram: log10 backoff weight}
    arpa        ARPA models only: arpa[k-1] = {k-gram: log10 p}; None for fitted models
    """

    order: int
    smoothing: str
    vocab: tuple
    counts: tuple
    contexts: tuple
    discounts: tuple = ()
    discounts_fallback: tuple = ()
    backoffs: tuple = ()
    options: dict = field(default_factory=dict)
    arpa: tuple | None = None
    index: dict = field(init=False, repr=False, compare=False)  # word -> position in vocab

    def __post_init__(self):
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.vocab)})

    @property
    def vocab_size(self) -> int:
        """|P|: the words a model predicts, </s> and <unk> included."""
        return len(self.vocab)


# ----------------------------------------------------------------------------- input checks


def _check_order(order) -> None:
    if not isinstance(order, (int, numpy.integer)) or isinstance(order, bool) or order < 1:
        raise ValueError(f"order: expected an int >= 1, got {order!r}")


def _check_word(word, name: str, allow_special: bool = False) -> None:
    if not isinstance(word, str):
        raise TypeError(f"{name}: expected a str token, got {type(word).__name__} {word!r}")
    if word == "" or any(ch.isspace() for ch in word):
        raise ValueError(f"{name}: expected a non-empty token without whitespace, got {word!r}")
    if not allow_special and word in (BOS, EOS):
        raise ValueError(f"{name}: expected a word, got the sentence marker {word!r} (padding is added by the model)")


def check_sentences(sentences, name: str = "sentences") -> list[tuple]:
    """Validate a corpus: a non-empty sequence of sequences of str tokens -> list of tuples."""
    if isinstance(sentences, (str, bytes)) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of sentences (sequences of str), got {type(sentences).__name__}")
    out = []
    for i, sentence in enumerate(sentences):
        if isinstance(sentence, (str, bytes)) or not hasattr(sentence, "__iter__"):
            got = f"{type(sentence).__name__} {sentence!r}"
            raise TypeError(f"{name}[{i}]: expected a sequence of str tokens, got {got}")
        sentence = tuple(sentence)
        for j, word in enumerate(sentence):
            _check_word(word, f"{name}[{i}][{j}]")
        out.append(sentence)
    if not out:
        raise ValueError(f"{name}: expected at least one sentence, got an empty corpus")
    return out


def _check_options(smoothing, options: dict) -> dict:
    if smoothing not in OPTIONS:
        raise ValueError(f"smoothing: expected one of {SMOOTHERS}, got {smoothing!r}")
    for key in options:
        if key not in OPTIONS[smoothing]:
            raise ValueError(f"{key}: not an option of smoothing {smoothing!r} (options: {sorted(OPTIONS[smoothing])})")
    merged = {**OPTIONS[smoothing], **options}
    if smoothing == "add_k":
        k = merged["k"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (0 < k < math.inf):
            raise ValueError(f"k: expected a finite number > 0, got {k!r}")
        merged["k"] = float(k)
    if smoothing == "kneser_ney" and merged["discount"] is not None:
        d = merged["discount"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0 < d <= 1):
            raise ValueError(f"discount: expected a number in (0, 1] or None (estimated), got {d!r}")
        merged["discount"] = float(d)
    if smoothing == "katz":
        kk = merged["katz_k"]
        if not isinstance(kk, int) or isinstance(kk, bool) or kk < 1:
            raise ValueError(f"katz_k: expected an int >= 1, got {kk!r}")
    if smoothing == "stupid_backoff":
        a = merged["alpha"]
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not (0 < a <= 1):
            raise ValueError(f"alpha: expected a number in (0, 1], got {a!r}")
        merged["alpha"] = float(a)
    return merged


# ----------------------------------------------------------------------------- counting


def pad(sentence) -> tuple:
    """("a", "b") -> ("<s>", "a", "b", "</s>"): KenLM's padding, one marker each side."""
    return (BOS,) + tuple(sentence) + (EOS,)


def count_ngrams(sentences, order: int) -> list[dict]:
    """Raw counts: `counts[k-1][g]` = occurrences of the k-gram g ending at a predicted
    position (every position of the padded sentence but the <s>), k = 1..order."""
    counts = [{} for _ in range(order)]
    for sentence in sentences:
        padded = pad(sentence)
        for i in range(1, len(padded)):  # the predicted token padded[i]
            for k in range(1, order + 1):
                if i - k + 1 < 0:
                    break
                gram = padded[i - k + 1 : i + 1]
                counts[k - 1][gram] = counts[k - 1].get(gram, 0) + 1
    return counts


def continuation_counts(raw: list[dict]) -> list[dict]:
    """Kneser-Ney's counts: the highest order keeps raw counts; a lower-order g gets
    N1+(. g) = number of distinct words x with c(x g) > 0, unless g starts with <s>
    (raw count kept: nothing precedes <s>)."""
    order = len(raw)
    adjusted = [dict() for _ in range(order)]
    adjusted[order - 1] = dict(raw[order - 1])
    for k in range(1, order):  # adjust order k from the (k+1)-grams
        for gram in raw[k - 1]:
            if gram[0] == BOS:
                adjusted[k - 1][gram] = raw[k - 1][gram]
        for longer in raw[k]:
            gram = longer[1:]
            if gram[0] != BOS:
                adjusted[k - 1][gram] = adjusted[k - 1].get(gram, 0) + 1
    return adjusted


def _context_stats(counts_k: dict) -> dict:
    """{h: (total, n1, n2, n3plus)} over the k-grams h w of one order: total = sum_w c(h w),
    n_r = |{w : c(h w) = r}| for r = 1, 2, and n3plus = |{w : c(h w) >= 3}|."""
    stats = {}
    for gram, c in counts_k.items():
        h = gram[:-1]
        total, n1, n2, n3 = stats.get(h, (0, 0, 0, 0))
        stats[h] = (total + c, n1 + (c == 1), n2 + (c == 2), n3 + (c >= 3))
    return stats


def count_of_counts(counts_k: dict, up_to: int) -> list[int]:
    """[n_0, n_1, ..., n_up_to]: n_r = number of k-grams with count r (n_0 = 0)."""
    n = [0] * (up_to + 1)
    for c in counts_k.values():
        if c <= up_to:
            n[c] += 1
    return n


# ----------------------------------------------------------------------------- discounts


def kn_discount(n: list[int]) -> tuple[float, bool]:
    """One Kneser-Ney discount D = n1 / (n1 + 2 n2) (Ney, Essen & Kneser 1994;
    Chen & Goodman 1998, eq. 19) -> (D, fell_back). Fallback 0.5 when n1 = 0."""
    if n[1] == 0:
        return KN_FALLBACK[0], True
    return n[1] / (n[1] + 2 * n[2]), False


def mkn_discounts(n: list[int]) -> tuple[tuple[float, float, float], bool]:
    """Modified Kneser-Ney discounts (Chen & Goodman 1998, eq. 26):

        Y = n1 / (n1 + 2 n2),   D_r = r - (r + 1) Y n_{r+1} / n_r   for r = 1, 2, 3 (D3 is D3+)

    -> ((D1, D2, D3+), fell_back). As in lmplz, the estimate is refused when n1, n2 or
    n3 is zero or some D_r falls outside [0, r]; the fallback is lmplz's default
    --discount_fallback (0.5, 1, 1.5) for the whole order."""
    if n[1] == 0 or n[2] == 0 or n[3] == 0:
        return KN_FALLBACK, True
    y = n[1] / (n[1] + 2 * n[2])
    d = tuple(r - (r + 1) * y * n[r + 1] / n[r] for r in (1, 2, 3))
    if any(not (0.0 <= d[r - 1] <= r) for r in (1, 2, 3)):
        return KN_FALLBACK, True
    return d, False


def good_turing_discounts(n: list[int], katz_k: int) -> tuple[dict, bool]:
    """Katz's discount ratios d_r for 1 <= r <= k (Katz 1987; Chen & Goodman 1998, eq. 8):

        r* = (r + 1) n_{r+1} / n_r,   d_r = (r*/r - (k+1) n_{k+1} / n_1) / (1 - (k+1) n_{k+1} / n_1)

    counts above k are not discounted (d_r = 1). -> ({r: d_r}, fell_back). When the
    Good-Turing estimate misbehaves the count is left undiscounted, as SRILM does:
    d_r = 1 where n_r = 0 or d_r is outside (0, 1]; every d_r = 1 when n_1 = 0 or
    (k+1) n_{k+1} / n_1 >= 1. An order without discounting gives no mass to unseen words."""
    if n[1] == 0:
        return {r: 1.0 for r in range(1, katz_k + 1)}, True
    common = (katz_k + 1) * n[katz_k + 1] / n[1]
    if common >= 1.0:
        return {r: 1.0 for r in range(1, katz_k + 1)}, True
    d, fell_back = {}, False
    for r in range(1, katz_k + 1):
        if n[r] == 0:
            d[r], fell_back = 1.0, True
            continue
        ratio = (r + 1) * n[r + 1] / (r * n[r])
        d[r] = (ratio - common) / (1.0 - common)
        if not (0.0 < d[r] <= 1.0):
            d[r], fell_back = 1.0, True
    return d, fell_back


# ----------------------------------------------------------------------------- fit


def fit(sentences, order: int, smoothing: str = "modified_kneser_ney", **options) -> Model:
    """Count the n-grams of `sentences` (a sequence of sentences, each a sequence of str
    words) and estimate a model of `order` with `smoothing` (one of SMOOTHERS).

    Options: add_k: k (default 1: Laplace); kneser_ney: discount (None: estimated per
    order; a number in (0, 1]: the same for every order); katz: katz_k (5: counts above
    it are trusted); stupid_backoff: alpha (0.4, Brants et al.'s value).
    ValueError / TypeError on bad input, naming the argument.
    """
    _check_order(order)
    options = _check_options(smoothing, options)
    sentences = check_sentences(sentences)
    order = int(order)
    raw = count_ngrams(sentences, order)
    vocab = tuple(sorted({g[0] for g in raw[0]} | {EOS, UNK}))
    counts = continuation_counts(raw) if smoothing in ("kneser_ney", "modified_kneser_ney") else raw
    contexts = tuple(_context_stats(c) for c in counts)
    discounts, fell_back = [], []
    for k in range(1, order + 1):
        if smoothing == "kneser_ney":
            if options["discount"] is not None:
                d, fb = options["discount"], False
            else:
                d, fb = kn_discount(count_of_counts(counts[k - 1], 2))
        elif smoothing == "modified_kneser_ney":
            d, fb = mkn_discounts(count_of_counts(counts[k - 1], 4))
        elif smoothing == "katz":
            d, fb = good_turing_discounts(count_of_counts(counts[k - 1], options["katz_k"] + 1), options["katz_k"])
        else:
            d, fb = (), False
        discounts.append(d)
        if fb:
            fell_back.append(k)
    model = Model(order, smoothing, vocab, tuple(counts), contexts, tuple(discounts), tuple(fell_back), (), options)
    if smoothing == "katz":
        model = _with_katz_backoffs(model)
    return model


# ----------------------------------------------------------------------------- the smoothers


def _p_mle(model: Model, h: tuple, w: str) -> float:
    """p(w | h) = c(h w) / c(h);  for a context never seen, p(w | h')."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    if stats is None:
        return _p(model, h[1:], w)
    return model.counts[k - 1].get(h + (w,), 0) / stats[0]


def _p_add_k(model: Model, h: tuple, w: str) -> float:
    """Lidstone (Laplace for k = 1): p(w | h) = (c(h w) + k) / (c(h) + k |P|);
    for a context never seen, p(w | h')."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    if stats is None:
        return _p(model, h[1:], w)
    add = model.options["k"]
    return (model.counts[k - 1].get(h + (w,), 0) + add) / (stats[0] + add * model.vocab_size)


def _p_witten_bell(model: Model, h: tuple, w: str) -> float:
    """Interpolated Witten-Bell (Witten & Bell 1991; Chen & Goodman 1998, eq. 16):

        p(w | h) = c(h w) / (c(h) + N1+(h .)) + N1+(h .) / (c(h) + N1+(h .)) p(w | h')

    with p(w | ()) interpolating the unigram counts with the uniform p_0 = 1/|P|."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    lower = _p(model, h[1:], w) if h else 1.0 / model.vocab_size
    if stats is None:
        return lower
    total, types = stats[0], stats[1] + stats[2] + stats[3]
    alpha = model.counts[k - 1].get(h + (w,), 0) / (total + types)
    gamma = types / (total + types)
    return alpha + gamma * lower


def _p_kneser_ney(model: Model, h: tuple, w: str) -> float:
    """Interpolated Kneser-Ney with one discount D per order (Kneser & Ney 1995;
    Chen & Goodman 1998, eq. 17-18):

        p(w | h) = max(c'(h w) - D, 0) / c'(h) + D N1+(h .) / c'(h) p(w | h')

    c' the raw count at the highest order and the continuation count below (module doc),
    c'(h) = sum_w c'(h w); the recursion ends in the uniform p_0 = 1/|P|."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    lower = _p(model, h[1:], w) if h else 1.0 / model.vocab_size
    if stats is None:
        return lower
    d = model.discounts[k - 1]
    total, types = stats[0], stats[1] + stats[2] + stats[3]
    alpha = max(model.counts[k - 1].get(h + (w,), 0) - d, 0.0) / total
    gamma = d * types / total
    return alpha + gamma * lower


def _p_modified_kneser_ney(model: Model, h: tuple, w: str) -> float:
    """Interpolated modified Kneser-Ney (Chen & Goodman 1998, eq. 25-26):

        p(w | h) = (c'(h w) - D(c'(h w))) / c'(h) + gamma(h) p(w | h')
        D(0) = 0, D(1) = D1, D(2) = D2, D(c >= 3) = D3+
        gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3+ N3+(h .)) / c'(h)

    counts c' and the uniform base as in kneser_ney; discounts per order from the
    count-of-counts (`mkn_discounts`)."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    lower = _p(model, h[1:], w) if h else 1.0 / model.vocab_size
    if stats is None:
        return lower
    d1, d2, d3 = model.discounts[k - 1]
    total, n1, n2, n3 = stats
    c = model.counts[k - 1].get(h + (w,), 0)
    discount = 0.0 if c == 0 else d1 if c == 1 else d2 if c == 2 else d3
    alpha = (c - discount) / total
    gamma = (d1 * n1 + d2 * n2 + d3 * n3) / total
    return alpha + gamma * lower


def _katz_seen(model: Model, h: tuple, w: str, c: int) -> float:
    """Katz's discounted estimate of a seen n-gram: d_c c / c(h) (d_c = 1 above katz_k,
    and in a context left undiscounted)."""
    k = len(h) + 1
    total = model.contexts[k - 1][h][0]
    if model.backoffs and model.backoffs[k - 1].get(h, 0.0) is None:
        return c / total
    return model.discounts[k - 1].get(c, 1.0) * c / total


def _p_katz(model: Model, h: tuple, w: str) -> float:
    """Katz back-off with Good-Turing discounts (Katz 1987; Chen & Goodman 1998, eq. 7-9):

        p(w | h) = d_c c(h w) / c(h)            if c = c(h w) > 0
                 = alpha(h) p(w | h')            otherwise
        alpha(h) = (1 - sum_{w: c(h w) > 0} p(w | h)) / (1 - sum_{w: c(h w) > 0} p(w | h'))

    the numerator summed as sum_w (c(h w) / c(h) - p(w | h)), the mass the discounts took,
    which is exactly 0 (not a rounding residue of either sign) when nothing is discounted;
    the recursion ends in the uniform p_0 = 1/|P| (so <unk> gets the unigram's
    leftover mass). If the lower order leaves no mass for the words unseen after h
    (denominator <= 0), the context is left undiscounted (d = 1, alpha = 0)."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    lower_h = h[1:]
    if stats is None:
        return _p(model, lower_h, w)
    c = model.counts[k - 1].get(h + (w,), 0)
    if c > 0:
        return _katz_seen(model, h, w, c)
    alpha = model.backoffs[k - 1][h]
    if alpha is None:
        return 0.0
    lower = _p(model, lower_h, w) if h else 1.0 / model.vocab_size
    return alpha * lower


def _with_katz_backoffs(model: Model) -> Model:
    """Katz's alpha(h) for every seen context, orders 1..n (lower orders first: alpha at
    order k needs p at order k-1). Sums run over the seen words in vocabulary order."""
    backoffs = []
    for k in range(1, model.order + 1):
        seen = {}
        for gram in model.counts[k - 1]:
            seen.setdefault(gram[:-1], []).append(gram[-1])
        alphas = {}
        partial = replace(model, backoffs=tuple(backoffs) + ({},))
        for h, words in seen.items():
            total = model.contexts[k - 1][h][0]
            left, lower_mass = 0.0, 0.0
            for w in sorted(words):
                c = model.counts[k - 1][h + (w,)]
                left += c / total - _katz_seen(partial, h, w, c)  # the mass the discount took from w
                lower_mass += _p(partial, h[1:], w) if h else 1.0 / model.vocab_size
            lower_left = 1.0 - lower_mass
            alphas[h] = left / lower_left if lower_left > 0.0 else None
        backoffs.append(alphas)
    return replace(model, backoffs=tuple(backoffs))


def _p_stupid_backoff(model: Model, h: tuple, w: str) -> float:
    """Stupid backoff (Brants et al. 2007), a SCORE, not a probability (it does not sum to 1):

        S(w | h) = c(h w) / c(h)       if c(h w) > 0
                 = alpha S(w | h')      otherwise,        S(w) = c(w) / N

    A context never seen is shortened without the factor alpha (module doc), as an ARPA
    reader does. <unk> scores 0 unless the training text contains it."""
    k = len(h) + 1
    stats = model.contexts[k - 1].get(h)
    if stats is None:
        return _p(model, h[1:], w)
    c = model.counts[k - 1].get(h + (w,), 0)
    if c > 0:
        return c / stats[0]
    if not h:
        return 0.0
    return model.options["alpha"] * _p(model, h[1:], w)


def _p_arpa(model: Model, h: tuple, w: str) -> float:
    """The ARPA back-off rule (Katz 1987's form, which interpolated models also take):

        p(w | h) = 10^logp(h w)                          if h w is listed
                 = 10^bow(h) p(w | h')                    otherwise (bow = 0 when h is not listed)

    a word not listed as a unigram has probability 0."""
    k = len(h) + 1
    logp = model.arpa[k - 1].get(h + (w,))
    if logp is not None:
        return 0.0 if logp <= ARPA_LOG_ZERO else float(numpy.power(10.0, logp))
    if not h:
        return 0.0
    bow = model.backoffs[k - 2].get(h, 0.0)
    weight = 0.0 if bow <= ARPA_LOG_ZERO else float(numpy.power(10.0, bow))
    return weight * _p(model, h[1:], w)


_SMOOTH = {"mle": _p_mle, "add_k": _p_add_k, "witten_bell": _p_witten_bell, "kneser_ney": _p_kneser_ney,
           "modified_kneser_ney": _p_modified_kneser_ney, "katz": _p_katz, "stupid_backoff": _p_stupid_backoff,
           "arpa": _p_arpa}  # fmt: skip


def _p(model: Model, h: tuple, w: str) -> float:
    return _SMOOTH[model.smoothing](model, h, w)


# ----------------------------------------------------------------------------- queries


def _check_model(model) -> None:
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a reference.ngram.Model, got {type(model).__name__}")


def _known(model: Model, word: str) -> str:
    return word if word in model.index else UNK


def model_context(model: Model, context) -> tuple:
    """The context a model conditions on: unknown words -> <unk>, then the last n-1 tokens.
    `context` may start with <s> (a sentence start); <s> elsewhere and </s> are refused."""
    if isinstance(context, (str, bytes)) or not hasattr(context, "__iter__"):
        raise TypeError(f"context: expected a sequence of str tokens, got {type(context).__name__} {context!r}")
    context = tuple(context)
    for j, word in enumerate(context):
        _check_word(word, f"context[{j}]", allow_special=True)
        if word == EOS or (word == BOS and j > 0):
            raise ValueError(f"context[{j}]: expected a word (or <s> at position 0), got {word!r}")
    mapped = tuple(w if w == BOS else _known(model, w) for w in context)
    return mapped[max(0, len(mapped) - (model.order - 1)) :] if model.order > 1 else ()


def prob(model: Model, context, word: str) -> float:
    """p(word | context) under the model (stupid_backoff: its score). `context` is a
    sequence of words, optionally starting with <s>; only its last n-1 tokens matter;
    unknown words (in both) are <unk>. p(<s> | .) = 0: <s> is never predicted."""
    _check_model(model)
    h = model_context(model, context)
    _check_word(word, "word", allow_special=True)
    if word == BOS:
        return 0.0
    return _p(model, h, word if word == EOS else _known(model, word))


def conditionals(model: Model, sentence) -> list[float]:
    """[p(w_i | <s> w_1 .. w_{i-1}) for i = 1..m+1] with w_{m+1} = </s>."""
    _check_model(model)
    (sentence,) = check_sentences([sentence], "sentence")
    padded = (BOS,) + tuple(_known(model, w) for w in sentence) + (EOS,)
    n = model.order
    return [_p(model, padded[max(0, i - n + 1) : i], padded[i]) for i in range(1, len(padded))]


def log_prob(model: Model, sentence) -> float:
    """ln p(sentence + </s> | <s>) = sum_i ln p(w_i | history), natural log, summed in
    order; -inf when a factor is 0 (stupid_backoff: the log score)."""
    total = 0.0
    with numpy.errstate(divide="ignore"):
        for p in conditionals(model, sentence):
            total += float(numpy.log(p))
    return total


def perplexity(model: Model, sentences) -> float:
    """exp(-sum ln p / N), N = words + one </s> per sentence (KenLM's count).
    ValueError for stupid_backoff (a score has no perplexity)."""
    _check_model(model)
    if model.smoothing == "stupid_backoff":
        raise ValueError("model: stupid_backoff scores are not probabilities; perplexity is undefined")
    sentences = check_sentences(sentences)
    total = sum(log_prob(model, s) for s in sentences)
    n_tokens = sum(len(s) + 1 for s in sentences)
    return math.exp(-total / n_tokens)


def distribution(model: Model, context) -> list[float]:
    """[p(w | context) for w in model.vocab], in vocabulary order."""
    _check_model(model)
    h = model_context(model, context)
    return [_p(model, h, w) for w in model.vocab]


def sample(model: Model, rng: numpy.random.Generator, n_sentences: int = 1, max_len: int = 100, *,
           u=None) -> list[list[str]]:  # fmt: skip
    """Ancestral sampling: each word by inverse CDF over model.vocab (in its order),
    w = the first word whose running sum exceeds u * (sum of all), u ~ U[0, 1) from
    `rng` (or the explicit uniforms u, shape (n_sentences, max_len + 1), row i for
    sentence i). A sentence ends at </s> (not returned) or after max_len words."""
    _check_model(model)
    if model.smoothing == "stupid_backoff":
        raise ValueError("model: stupid_backoff scores are not a distribution; cannot sample")
    for name, value in (("n_sentences", n_sentences), ("max_len", max_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if u is None:
        if not isinstance(rng, numpy.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        u = rng.random((n_sentences, max_len + 1))
    u = numpy.asarray(u, dtype=numpy.float64)
    if u.shape != (n_sentences, max_len + 1) or not numpy.all((u >= 0) & (u < 1)):
        raise ValueError(f"u: expected shape {(n_sentences, max_len + 1)} in [0, 1), got shape {u.shape}")
    out = []
    for i in range(n_sentences):
        history, words = (BOS,), []
        for t in range(max_len + 1):
            probs = distribution(model, history)
            running, cdf = 0.0, []
            for p in probs:
                running += p
                cdf.append(running)
            target = float(u[i, t]) * running
            j = next(j for j, c in enumerate(cdf) if c > target)
            word = model.vocab[j]
            if word == EOS or t == max_len:
                break
            words.append(word)
            history = history + (word,)
        out.append(words)
    return out


# ----------------------------------------------------------------------------- ARPA


def _log10(p: float) -> float:
    return ARPA_LOG_ZERO if p <= 0.0 else float(numpy.log10(p))


def arpa_tables(model: Model) -> tuple[list[dict], list[dict]]:
    """The ARPA tables of a model: (logp, bow) with logp[k-1] = {k-gram: log10 p(w | h)}
    for every listed k-gram and bow[k-1] = {k-gram: log10 backoff weight} for every
    listed k-gram that is a context (k < n). Listed: every n-gram seen in training
    (add_k: every h w with h a seen context, since its unseen words do not follow the
    lower order), every word of P and <s> (-99) as unigrams. The backoff weight of a
    context is the factor its unseen words take from the lower order: gamma(h) for the
    interpolated smoothers, alpha(h) for katz and stupid_backoff, 0 for mle (and
    1 for add_k, where nothing is unlisted)."""
    if model.smoothing == "arpa":
        return [dict(t) for t in model.arpa], [dict(t) for t in model.backoffs]
    n = model.order
    listed = [dict() for _ in range(n)]
    for k in range(1, n + 1):
        grams = set(model.counts[k - 1])
        if model.smoothing == "add_k":
            grams |= {h + (w,) for h in model.contexts[k - 1] for w in model.vocab}
        for gram in sorted(grams):
            listed[k - 1][gram] = _log10(_p(model, gram[:-1], gram[-1]))
    for w in model.vocab:
        listed[0].setdefault((w,), _log10(_p(model, (), w)))
    listed[0][(BOS,)] = ARPA_LOG_ZERO
    bows = [dict() for _ in range(n - 1)]
    for k in range(2, n + 1):
        for h in model.contexts[k - 1]:
            bows[k - 2][h] = _log10(_backoff_weight(model, h))
    return listed, bows


def _backoff_weight(model: Model, h: tuple) -> float:
    """The factor p(w | h) / p(w | h') shared by the words never seen after the seen context h."""
    k = len(h) + 1
    s = model.smoothing
    stats = model.contexts[k - 1][h]
    if s == "mle":
        return 0.0
    if s == "add_k":
        return 1.0
    if s == "stupid_backoff":
        return model.options["alpha"]
    if s == "katz":
        alpha = model.backoffs[k - 1][h]
        return 0.0 if alpha is None else alpha
    total, n1, n2, n3 = stats
    if s == "witten_bell":
        types = n1 + n2 + n3
        return types / (total + types)
    if s == "kneser_ney":
        return model.discounts[k - 1] * (n1 + n2 + n3) / total
    d1, d2, d3 = model.discounts[k - 1]
    return (d1 * n1 + d2 * n2 + d3 * n3) / total


def _format_float(x: float) -> str:
    return repr(float(x))


def to_arpa(model: Model) -> str:
    """The model as ARPA text (log10 probabilities of the listed n-grams, interpolated,
    and log10 back-off weights; see `arpa_tables`): an ARPA reader (kenlm.Model, SRILM)
    scores every sentence as `log_prob` does (log10 = ln / ln 10). Probability 0 is
    written as -99. The values are written with 17 significant digits, so
    from_arpa(to_arpa(m)) preserves every probability to float64 rounding and
    to_arpa(from_arpa(text)) == text for text written here. stupid_backoff is written
    faithfully too, but its numbers are scores, not probabilities."""
    _check_model(model)
    listed, bows = arpa_tables(model)
    lines = ["\\data\\"]
    lines += [f"ngram {k}={len(listed[k - 1])}" for k in range(1, model.order + 1)]
    for k in range(1, model.order + 1):
        lines += ["", f"\\{k}-grams:"]
        bow_k = bows[k - 1] if k < model.order else {}
        for gram in sorted(listed[k - 1]):
            line = f"{_format_float(listed[k - 1][gram])}\t{' '.join(gram)}"
            if gram in bow_k:
                line += f"\t{_format_float(bow_k[gram])}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


_NGRAM_LINE = re.compile(r"ngram\s+(\d+)\s*=\s*(\d+)$")


def _arpa_error(lineno: int, expected: str, got: str) -> ValueError:
    return ValueError(f"text: line {lineno}: expected {expected}, got {got!r}")


def from_arpa(text: str) -> Model:
    """Read ARPA text into a model whose `prob` follows the ARPA back-off rule
    (`_p_arpa`). Words not listed as unigrams are <unk>; an ARPA file without <unk>
    gives it probability 0 (as kenlm does). ValueError naming the line for malformed text."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected ARPA text (str), got {type(text).__name__}")
    lines = text.split("\n")
    i, n_lines = 0, len(lines)

    def skip_blank(i):
        while i < n_lines and lines[i].strip() == "":
            i += 1
        return i

    i = skip_blank(i)
    if i == n_lines or lines[i].strip() != "\\data\\":
        raise _arpa_error(i + 1, "\\data\\", lines[i] if i < n_lines else "end of text")
    i += 1
    sizes = {}
    while i < n_lines and lines[i].strip().startswith("ngram"):
        m = _NGRAM_LINE.match(lines[i].strip())
        if not m:
            raise _arpa_error(i + 1, "'ngram K=COUNT'", lines[i])
        k = int(m.group(1))
        if k != len(sizes) + 1:
            raise _arpa_error(i + 1, f"'ngram {len(sizes) + 1}=COUNT'", lines[i])
        sizes[k] = int(m.group(2))
        i += 1
    if not sizes:
        raise _arpa_error(i + 1, "'ngram 1=COUNT'", lines[i] if i < n_lines else "end of text")
    order = len(sizes)
    logp = [dict() for _ in range(order)]
    bows = [dict() for _ in range(order - 1)]
    for k in range(1, order + 1):
        i = skip_blank(i)
        if i == n_lines or lines[i].strip() != f"\\{k}-grams:":
            raise _arpa_error(i + 1, f"\\{k}-grams:", lines[i] if i < n_lines else "end of text")
        i += 1
        while i < n_lines and lines[i].strip() != "" and not lines[i].strip().startswith("\\"):
            fields = lines[i].split()
            if len(fields) not in (k + 1, k + 2) or (k == order and len(fields) == k + 2):
                want = f"{k + 1}" if k == order else f"{k + 1} or {k + 2}"
                raise _arpa_error(i + 1, f"{want} fields (log10 p, {k} words[, log10 backoff])", lines[i])
            try:
                values = [float(fields[0])] + ([float(fields[-1])] if len(fields) == k + 2 else [])
            except ValueError:
                raise _arpa_error(i + 1, "a number (log10 p or log10 backoff)", lines[i]) from None
            if any(math.isnan(v) or v > 0 for v in values[:1]):
                raise _arpa_error(i + 1, "log10 p <= 0", lines[i])
            gram = tuple(fields[1 : k + 1])
            if gram in logp[k - 1]:
                raise _arpa_error(i + 1, f"a new {k}-gram", lines[i])
            logp[k - 1][gram] = values[0]
            if len(values) == 2:
                bows[k - 1][gram] = values[1]
            i += 1
        if len(logp[k - 1]) != sizes[k]:
            raise _arpa_error(i + 1, f"{sizes[k]} {k}-grams (the \\data\\ header)", f"{len(logp[k - 1])} entries")
    i = skip_blank(i)
    if i == n_lines or lines[i].strip() != "\\end\\":
        raise _arpa_error(i + 1, "\\end\\", lines[i] if i < n_lines else "end of text")
    vocab = tuple(sorted({g[0] for g in logp[0] if g[0] != BOS} | {UNK}))
    for gram in logp[0]:
        _check_word(gram[0], "text: unigram", allow_special=True)
    return Model(order, "arpa", vocab, (), (), (), (), tuple(bows), {}, tuple(logp))
