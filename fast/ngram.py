"""n-gram language models, vectorized: the same models, API and numbers as
reference/ngram.py (read that module for the conventions and the equations), with
counting, estimation and querying done on integer-encoded n-grams in NumPy.

Encoding. Words are ids 0..|P|-1 in the sorted vocabulary order of the reference,
<s> is |P|, and B = |P| + 1. A unigram is its id; a k-gram (k >= 2) is the int64 key

    key = rank(its first k-1 words, as a (k-1)-gram) * B + id(its last word)

where rank is the index of that (k-1)-gram in the sorted unique (k-1)-grams (for
k-1 = 1, the id itself). Keys of one order sorted ascending are the n-grams in
lexicographic id order, grouped by context; they stay far below 2^63 for any order
(rank < number of distinct n-grams). Counting an order is one LSD radix sort of
(prefix rank, last id) on 16-bit digits (O(n) per digit) and a run-length pass.

Every floating-point formula is the reference's, with the same operations in the same
order (elementwise IEEE operations, sequential sums in vocabulary order, numpy's log,
log10 and power),
so counts AND probabilities are bit-identical to the reference's
(diff_tests/test_ngram.py checks equality, not closeness).

    fit(sentences, order, smoothing, **options) -> Model
    probs(model, contexts, words) -> (M,) float64         batched p(w | h)
    prob, distribution, log_prob, log_probs (batched over sentences), perplexity
    sample(model, rng, n_sentences, max_len, u=None)        batched over sentences
    to_arpa(model) -> str (identical text to the reference's), from_arpa(text) -> Model
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from chainrule.reference import ngram as ref

BOS, EOS, UNK = ref.BOS, ref.EOS, ref.UNK
SMOOTHERS, NORMALIZED, KN_FALLBACK, ARPA_LOG_ZERO = ref.SMOOTHERS, ref.NORMALIZED, ref.KN_FALLBACK, ref.ARPA_LOG_ZERO


# ----------------------------------------------------------------------------- the model


@dataclass
class Order:
    """The n-grams of one order k and the statistics of their contexts.

    keys      (M,) int64 sorted unique keys of the k-grams seen in training
    tokens    (M, k) int64 the ids of each k-gram
    counts    (M,) int64 the counts the smoother uses (raw; Kneser-Ney lower orders: continuation)
    raw       (M,) int64 raw counts
    total, n1, n2, n3   (C,) int64 per context (k-1)-gram rank: sum_w c(h w), N1, N2, N3+ (C = 1 at k = 1)
    katz_alpha (C,) float64 Katz's alpha(h) (nan: context left undiscounted); None otherwise
    """

    keys: np.ndarray
    tokens: np.ndarray
    counts: np.ndarray
    raw: np.ndarray
    total: np.ndarray
    n1: np.ndarray
    n2: np.ndarray
    n3: np.ndarray
    katz_alpha: np.ndarray | None = None


@dataclass
class Model:
    """A fitted (or ARPA-loaded) vectorized n-gram model (see the module doc).

    ARPA models ("arpa" smoothing) keep per order the log10 probabilities `arpa_logp[k-1]`
    (aligned with orders[k-1].keys) and the log10 back-off weights `arpa_bow[k-1]`
    (aligned with the same keys; 0 where none)."""

    order: int
    smoothing: str
    vocab: tuple
    orders: list
    discounts: tuple = ()
    discounts_fallback: tuple = ()
    options: dict = field(default_factory=dict)
    arpa_logp: list | None = None
    arpa_bow: list | None = None
    source: object = None  # ARPA models: the reference model parsed from the text
    index: dict = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def bos(self) -> int:
        return len(self.vocab)

    @property
    def base(self) -> int:
        return len(self.vocab) + 1


# ----------------------------------------------------------------------------- input


def _check_sentences(sentences, name: str = "sentences") -> tuple[list, list, set]:
    """The reference's checks with its messages, done per word type rather than per token
    (the reference's own loop runs only to name the offending token) ->
    (sentences, the flat token list, the set of word types)."""
    if isinstance(sentences, (str, bytes)) or not isinstance(sentences, (list, tuple)):
        sentences = ref.check_sentences(sentences, name)  # raises, or gives a list of tuples
    if not sentences or not set(map(type, sentences)) <= {list, tuple}:
        ref.check_sentences(sentences, name)
        sentences = [tuple(x) for x in sentences]
    flat = list(itertools.chain.from_iterable(sentences))
    types = set(flat)
    if not set(map(type, types)) <= {str} or BOS in types or EOS in types or "" in types or \
            _WHITESPACE.search("".join(types)):  # fmt: skip
        ref.check_sentences(sentences, name)  # raises, naming the first bad token
    return sentences, flat, types


_WHITESPACE = re.compile(r"\s")  # what str.split() splits on


def _encode_corpus(sentences, flat: list, index: dict, bos: int):
    """Padded ids of the whole corpus, and each position's index within its sentence:
    (T,) ids, (T,) pos, with pos 0 at each <s>."""
    lengths = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences)) + 2
    ids = np.empty(int(lengths.sum()), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    unk = index[UNK]
    words = np.fromiter(map(index.get, flat, itertools.repeat(unk)), dtype=np.int64, count=len(flat))  # noqa
    word_mask = np.ones(ids.size, dtype=bool)
    word_mask[starts] = False
    word_mask[starts + lengths - 1] = False
    ids[word_mask] = words
    ids[starts] = bos
    ids[starts + lengths - 1] = index[EOS]
    pos = np.arange(ids.size, dtype=np.int64) - np.repeat(starts, lengths)
    return ids, pos


def _radix_argsort(columns: list) -> np.ndarray:
    """A stable argsort of the rows (c_0, c_1, ...) by c_{-1}, then c_{-2}, ..., then c_0:
    `columns` are non-negative int64 arrays, least significant first. LSD radix sort on
    16-bit digits (numpy's stable sort of uint16 is a counting sort): O(n) per digit,
    where a comparison sort of packed keys costs O(n log n)."""
    order = None
    for col in columns:
        top = int(col.max()) if col.size else 0
        shift = 0
        while True:
            digit = ((col >> shift) & 0xFFFF).astype(np.uint16)
            if order is None:
                order = np.argsort(digit, kind="stable")
            else:
                order = order[np.argsort(digit[order], kind="stable")]
            shift += 16
            if top >> shift == 0:
                break
    return order


def _unique_rows(prefix: np.ndarray, last: np.ndarray, B: int):
    """The sorted unique keys prefix * B + last, with np.unique's inverse and counts, and
    the first occurrence of each key."""
    keys = prefix * B + last
    order = _radix_argsort([last, prefix])
    sorted_keys = keys[order]
    new = np.empty(keys.size, dtype=bool)
    new[:1] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    starts = np.nonzero(new)[0]
    inverse = np.empty(keys.size, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    counts = np.diff(np.append(starts, keys.size))
    return sorted_keys[starts], order[starts], inverse, counts


# ----------------------------------------------------------------------------- counting


def _count(ids: np.ndarray, pos: np.ndarray, order: int, B: int):
    """Per order k: the sorted unique keys, token matrix, raw counts, and for every corpus
    position the rank of the k-gram ending there (-1 where none) and its first occurrence."""
    levels = []
    rank_prev = ids.copy()  # rank of the unigram ending at each position: its id
    valid1 = pos >= 1
    counts1 = np.bincount(ids[valid1], minlength=B).astype(np.int64)
    keys1 = np.nonzero(counts1)[0].astype(np.int64)
    levels.append({"keys": keys1, "tokens": keys1[:, None], "raw": counts1[keys1], "rank_at": rank_prev,
                   "first": None})  # fmt: skip
    for k in range(2, order + 1):
        valid = np.nonzero(pos >= k - 1)[0]
        keys, first, inverse, raw = _unique_rows(rank_prev[valid - 1], ids[valid], B)
        rank_at = np.full(ids.size, -1, dtype=np.int64)
        rank_at[valid] = inverse
        end = valid[first]  # a position where each k-gram ends
        tokens = np.stack([ids[end - (k - 1 - j)] for j in range(k)], axis=1)
        levels.append({"keys": keys.astype(np.int64), "tokens": tokens, "raw": raw.astype(np.int64),
                       "rank_at": rank_at, "first": end})  # fmt: skip
        rank_prev = rank_at
    return levels


def _continuation(levels: list, order: int, bos: int) -> list:
    """Kneser-Ney's counts per order (see reference.ngram.continuation_counts)."""
    out = []
    for k in range(1, order + 1):
        lv = levels[k - 1]
        if k == order:
            out.append(lv["raw"].copy())
            continue
        longer = levels[k]  # the (k+1)-grams: their suffix k-gram ends where they end
        suffix_rank = levels[k - 1]["rank_at"][longer["first"]]
        if k == 1:
            per_rank = np.bincount(suffix_rank, minlength=int(lv["keys"].max()) + 1 if lv["keys"].size else 1)
            cont = per_rank[lv["keys"]]
        else:
            cont = np.bincount(suffix_rank, minlength=lv["keys"].size)
        starts_bos = lv["tokens"][:, 0] == bos
        cont = np.where(starts_bos, lv["raw"], cont).astype(np.int64)
        out.append(cont)
    return out


def _context_arrays(keys: np.ndarray, counts: np.ndarray, k: int, n_contexts: int, B: int):
    """total, n1, n2, n3plus per context rank (C = n_contexts) over one order's n-grams."""
    ctx = keys // B if k > 1 else np.zeros(keys.size, dtype=np.int64)

    def count(mask=None, weights=None):
        c = ctx if mask is None else ctx[mask]
        return np.bincount(c, weights=weights, minlength=n_contexts)

    total = count(weights=counts.astype(np.float64)).astype(np.int64)  # exact: integers < 2^53
    return total, count(counts == 1).astype(np.int64), count(counts == 2).astype(np.int64), \
        count(counts >= 3).astype(np.int64)  # fmt: skip


def _count_of_counts(counts: np.ndarray, up_to: int) -> list[int]:
    c = counts[(counts >= 1) & (counts <= up_to)]
    n = np.bincount(c, minlength=up_to + 1)
    n[0] = 0
    return [int(x) for x in n]


# ----------------------------------------------------------------------------- fit


def fit(sentences, order: int, smoothing: str = "modified_kneser_ney", **options) -> Model:
    """As reference.ngram.fit (same arguments, options, errors and numbers)."""
    ref._check_order(order)
    options = ref._check_options(smoothing, options)
    sentences, flat, words = _check_sentences(sentences)
    order = int(order)
    vocab = tuple(sorted(words | {EOS, UNK}))
    index = {w: i for i, w in enumerate(vocab)}
    B = len(vocab) + 1
    ids, pos = _encode_corpus(sentences, flat, index, len(vocab))
    levels = _count(ids, pos, order, B)
    kn = smoothing in ("kneser_ney", "modified_kneser_ney")
    counts = _continuation(levels, order, len(vocab)) if kn else [lv["raw"] for lv in levels]
    orders, discounts, fell_back = [], [], []
    for k in range(1, order + 1):
        lv = levels[k - 1]
        n_contexts = 1 if k == 1 else (B if k == 2 else levels[k - 2]["keys"].size)
        total, n1, n2, n3 = _context_arrays(lv["keys"], counts[k - 1], k, n_contexts, B)
        orders.append(Order(lv["keys"], lv["tokens"], counts[k - 1], lv["raw"], total, n1, n2, n3))
        if smoothing == "kneser_ney":
            d, fb = (options["discount"], False) if options["discount"] is not None else ref.kn_discount(
                _count_of_counts(counts[k - 1], 2))
        elif smoothing == "modified_kneser_ney":
            d, fb = ref.mkn_discounts(_count_of_counts(counts[k - 1], 4))
        elif smoothing == "katz":
            katz_k = options["katz_k"]
            d, fb = ref.good_turing_discounts(_count_of_counts(counts[k - 1], katz_k + 1), katz_k)
        else:
            d, fb = (), False
        discounts.append(d)
        if fb:
            fell_back.append(k)
    model = Model(order, smoothing, vocab, orders, tuple(discounts), tuple(fell_back), options)
    if smoothing == "katz":
        for k in range(1, order + 1):
            model.orders[k - 1].katz_alpha = _katz_alphas(model, k)
    return model


# ----------------------------------------------------------------------------- lookups


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query key in the sorted `keys`, -1 where absent (or query < 0)."""
    if keys.size == 0:
        return np.full(query.shape, -1, dtype=np.int64)
    at = np.searchsorted(keys, query)
    at_c = np.minimum(at, keys.size - 1)
    found = (keys[at_c] == query) & (query >= 0)
    return np.where(found, at_c, -1)


def _gram_ranks(model: Model, ctx: np.ndarray, words: np.ndarray):
    """For contexts ctx (M, L) (ids, right-aligned, -1 = no token) and words (M,):
    ctx_rank[j] (M,) = rank of the last j context tokens as a j-gram (-1: unseen or absent),
    j = 1..L (j = 0: the empty context, rank 0), and gram_rank[j] = rank of (those j tokens, word)
    as a (j+1)-gram (-1: unseen)."""
    M, L = ctx.shape
    B = model.base
    rank = {}  # after step b: rank[a] = rank of ctx[:, a:b+1] as a (b-a+1)-gram (-1: unseen or absent)
    for b in range(L):
        new = {b: ctx[:, b]}  # a unigram's rank is its id
        for a in range(b - 1, max(b - model.order, -1), -1):
            q = np.where((rank[a] >= 0) & (ctx[:, b] >= 0), rank[a] * B + ctx[:, b], -1)
            new[a] = _lookup(model.orders[b - a].keys, q)
        rank = new
    ctx_rank = {0: np.zeros(M, dtype=np.int64)}
    for j in range(1, min(L, model.order - 1) + 1):
        ctx_rank[j] = rank[L - j]
    gram_rank = {0: _lookup(model.orders[0].keys, words)}
    for j in range(1, min(L, model.order - 1) + 1):
        h = ctx_rank[j]
        q = np.where(h >= 0, h * B + words, -1)
        gram_rank[j] = _lookup(model.orders[j].keys, q)
    return ctx_rank, gram_rank


def _context_seen(model: Model, k: int, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seen mask, clipped rank) of contexts h (ranks, -1 = unseen) at order k."""
    od = model.orders[k - 1]
    hc = np.maximum(h, 0)
    if od.total.size == 0:  # no context of this length occurs in training
        return np.zeros(h.shape, dtype=bool), hc
    seen = (h >= 0) & (od.total[hc] > 0)
    return seen, hc


def _probs_core(model: Model, ctx: np.ndarray, words: np.ndarray) -> np.ndarray:
    """p(w | h) for id contexts (M, L) (right-aligned, -1 = no token) and word ids (M,)."""
    ctx_rank, gram_rank = _gram_ranks(model, ctx, words)
    return _probs_from_ranks(model, ctx_rank, gram_rank, (ctx >= 0).sum(axis=1), ctx.shape[1])


def _probs_from_ranks(model: Model, ctx_rank: dict, gram_rank: dict, avail: np.ndarray, L: int) -> np.ndarray:
    """The reference's recursion, order by order, for M queries given ctx_rank[j] (the rank of
    the last j context tokens, -1 unseen), gram_rank[j] (the rank of those j tokens + the
    word, -1 unseen) and avail (M,) (the number of context tokens a query has)."""
    if model.smoothing == "arpa":
        return _probs_arpa(model, ctx_rank, gram_rank, avail, L)
    M = avail.size
    V = model.vocab_size
    s = model.smoothing
    if s in ("witten_bell", "kneser_ney", "modified_kneser_ney", "katz"):
        p = np.full(M, 1.0 / V)
    else:
        p = np.zeros(M)
    for k in range(1, min(L + 1, model.order) + 1):
        active = avail >= k - 1
        seen, hc = _context_seen(model, k, ctx_rank[k - 1])
        upd = active & seen
        if not upd.any():
            continue
        od = model.orders[k - 1]
        g = gram_rank[k - 1]
        c = np.where(g >= 0, od.counts[np.maximum(g, 0)], 0)
        total, n1, n2, n3 = od.total[hc], od.n1[hc], od.n2[hc], od.n3[hc]
        p = np.where(upd, _level(model, k, p, c, total, n1, n2, n3, hc), p)
    return p


def _level(model, k, lower, c, total, n1, n2, n3, hc):
    """One order of the recursion: p_k(w | h) from p_{k-1}(w | h') (= `lower`) where h is seen."""
    s = model.smoothing
    with np.errstate(divide="ignore", invalid="ignore"):
        if s == "mle":
            return c / total
        if s == "add_k":
            add = model.options["k"]
            return (c + add) / (total + add * model.vocab_size)
        if s == "witten_bell":
            types = n1 + n2 + n3
            return c / (total + types) + types / (total + types) * lower
        if s == "kneser_ney":
            d = model.discounts[k - 1]
            return np.maximum(c - d, 0.0) / total + d * (n1 + n2 + n3) / total * lower
        if s == "modified_kneser_ney":
            d1, d2, d3 = model.discounts[k - 1]
            discount = np.where(c == 0, 0.0, np.where(c == 1, d1, np.where(c == 2, d2, d3)))
            return (c - discount) / total + (d1 * n1 + d2 * n2 + d3 * n3) / total * lower
        if s == "stupid_backoff":
            backed = model.options["alpha"] * lower if k > 1 else np.zeros_like(lower)
            return np.where(c > 0, c / total, backed)
        if s == "katz":
            alpha = model.orders[k - 1].katz_alpha[hc]
            undiscounted = np.isnan(alpha)
            d = _katz_d(model, k, c)
            seen_p = np.where(undiscounted, c / total, d * c / total)
            unseen_p = np.where(undiscounted, 0.0, alpha * lower)
            return np.where(c > 0, seen_p, unseen_p)
    raise ValueError(f"smoothing: expected one of {SMOOTHERS}, got {s!r}")


def _katz_d(model, k, c):
    d_table = model.discounts[k - 1]
    kk = model.options["katz_k"]
    table = np.ones(kk + 1)
    for r, v in d_table.items():
        table[r] = v
    return np.where(c <= kk, table[np.minimum(c, kk)], 1.0)


def _katz_alphas(model: Model, k: int) -> np.ndarray:
    """alpha(h) per context rank at order k (nan: left undiscounted), with the reference's
    sums: sequential over each context's seen words in vocabulary order."""
    od = model.orders[k - 1]
    M = od.keys.size
    n_contexts = od.total.size
    ctx = od.keys // model.base if k > 1 else np.zeros(M, dtype=np.int64)
    c = od.counts
    total = od.total[ctx]
    seen_p = _katz_d(model, k, c) * c / total
    if k == 1:
        lower_p = np.full(M, 1.0 / model.vocab_size)
    else:
        lower_ctx = od.tokens[:, 1:-1]
        lower_p = _probs_core_upto(model, lower_ctx, od.tokens[:, -1], k - 1)
    left = _segment_sums(ctx, c / total - seen_p, n_contexts)  # the mass the discounts took
    lower_left = 1.0 - _segment_sums(ctx, lower_p, n_contexts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(lower_left > 0.0, left / lower_left, np.nan)


def _probs_core_upto(model: Model, ctx, words, order):
    """p under the model truncated to `order` (the lower-order distribution)."""
    sub = Model(order, model.smoothing, model.vocab, model.orders[:order], model.discounts[:order],
                model.discounts_fallback, model.options)  # fmt: skip
    return _probs_core(sub, ctx, words)


def _segment_sums(segment: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per segment id (sorted, contiguous), 0.0 + v_1 + v_2 + ... added in order (as a loop does)."""
    out = np.zeros(n)
    if values.size == 0:
        return out
    starts = np.concatenate([[0], np.nonzero(np.diff(segment))[0] + 1])
    lengths = np.diff(np.concatenate([starts, [values.size]]))
    seg_ids = segment[starts]
    order = np.argsort(-lengths, kind="stable")  # longest first: the active set shrinks as a prefix
    starts, lengths, seg_ids = starts[order], lengths[order], seg_ids[order]
    acc = np.zeros(starts.size)
    for j in range(int(lengths.max())):
        m = int(np.searchsorted(-lengths, -j, side="left"))  # the segments longer than j
        acc[:m] += values[starts[:m] + j]
    out[seg_ids] = acc
    return out


def _probs_arpa(model: Model, ctx_rank: dict, gram_rank: dict, avail: np.ndarray, L: int) -> np.ndarray:
    """The ARPA back-off rule, vectorized (reference.ngram._p_arpa)."""
    top = np.minimum(avail, model.order - 1)
    g0 = gram_rank[0]
    lp0 = np.where(g0 >= 0, model.arpa_logp[0][np.maximum(g0, 0)], ARPA_LOG_ZERO)
    p = np.where(lp0 <= ARPA_LOG_ZERO, 0.0, np.power(10.0, lp0))
    for k in range(2, min(L + 1, model.order) + 1):
        active = top >= k - 1
        g, h = gram_rank[k - 1], ctx_rank[k - 1]
        lp = np.where(g >= 0, model.arpa_logp[k - 1][np.maximum(g, 0)], np.nan)
        bow = np.where(h >= 0, model.arpa_bow[k - 2][np.maximum(h, 0)], 0.0)
        weight = np.where(bow <= ARPA_LOG_ZERO, 0.0, np.power(10.0, bow))
        listed = np.where(lp <= ARPA_LOG_ZERO, 0.0, np.power(10.0, lp))
        p = np.where(active, np.where(g >= 0, listed, weight * p), p)
    return p


# ----------------------------------------------------------------------------- queries


def _word_ids(model: Model, words, name: str) -> np.ndarray:
    unk = model.index[UNK]
    out = np.empty(len(words), dtype=np.int64)
    for i, w in enumerate(words):
        ref._check_word(w, f"{name}[{i}]", allow_special=True)
        out[i] = model.bos if w == BOS else model.index.get(w, unk)
    return out


def _context_ids(model: Model, context) -> list[int]:
    h = ref.model_context(model, context)  # validation and truncation as the reference
    return [model.bos if w == BOS else model.index[w] for w in h]


def probs(model: Model, contexts, words) -> np.ndarray:
    """[p(words[i] | contexts[i])] as a (M,) float64 array (batched `prob`)."""
    if len(contexts) != len(words):
        raise ValueError(f"words: expected {len(contexts)} words (one per context), got {len(words)}")
    L = max(model.order - 1, 0)
    ctx = np.full((len(contexts), L), -1, dtype=np.int64)
    for i, c in enumerate(contexts):
        h = _context_ids(model, c)
        if h:
            ctx[i, L - len(h):] = h
    w = _word_ids(model, words, "words")
    p = _probs_core(model, ctx, np.where(w == model.bos, 0, w))
    return np.where(w == model.bos, 0.0, p)


def prob(model: Model, context, word: str) -> float:
    """As reference.ngram.prob."""
    _check_model(model)
    ref._check_word(word, "word", allow_special=True)
    return float(probs(model, [context], [word])[0])


def distribution(model: Model, context) -> np.ndarray:
    """(|P|,) p(w | context) for w in model.vocab."""
    _check_model(model)
    return probs(model, [context] * model.vocab_size, list(model.vocab))


def _check_model(model) -> None:
    if not isinstance(model, Model):
        raise TypeError(f"model: expected a fast.ngram.Model, got {type(model).__name__}")


def _sentence_probs(model: Model, sentences):
    """The conditionals of every predicted token of the padded sentences -> ((T,) p, (T,)
    sentence index, number of sentences). The rank of the j-gram ending at each position
    comes from the (j-1)-gram ending one before (one lookup per order, as in counting)."""
    sentences, flat, _ = _check_sentences(sentences)
    ids, pos = _encode_corpus(sentences, flat, model.index, model.bos)
    B, L = model.base, max(model.order - 1, 0)
    predicted = np.nonzero(pos >= 1)[0]
    ranks = {1: ids}  # ranks[j][t]: rank of the j-gram ending at t (-1: unseen or crossing <s>)
    for j in range(2, model.order + 1):
        r = np.full(ids.size, -1, dtype=np.int64)
        t = np.nonzero(pos >= j - 1)[0]
        prev = ranks[j - 1][t - 1]
        r[t] = _lookup(model.orders[j - 1].keys, np.where(prev >= 0, prev * B + ids[t], -1))
        ranks[j] = r
    ctx_rank = {0: np.zeros(predicted.size, dtype=np.int64)}
    gram_rank = {0: _lookup(model.orders[0].keys, ids[predicted])}
    for j in range(1, L + 1):
        ctx_rank[j] = np.where(pos[predicted] >= j, ranks[j][predicted - 1], -1)
        gram_rank[j] = ranks[j + 1][predicted]
    avail = np.minimum(pos[predicted], L)
    p = _probs_from_ranks(model, ctx_rank, gram_rank, avail, L)
    sentence_of = np.cumsum(pos == 0)[predicted] - 1
    return p, sentence_of, len(sentences)


def conditionals(model: Model, sentence) -> np.ndarray:
    """As reference.ngram.conditionals, as an array."""
    _check_model(model)
    ref.check_sentences([sentence], "sentence")
    return _sentence_probs(model, [list(sentence)])[0]


def log_probs(model: Model, sentences) -> np.ndarray:
    """(S,) ln p(sentence + </s> | <s>) of every sentence, each summed in order as the reference does."""
    _check_model(model)
    p, sentence_of, S = _sentence_probs(model, sentences)
    with np.errstate(divide="ignore"):
        lp = np.log(p)
    return _segment_sums(sentence_of, lp, S)


def log_prob(model: Model, sentence) -> float:
    """As reference.ngram.log_prob."""
    if isinstance(sentence, (str, bytes)) or not hasattr(sentence, "__iter__"):
        ref.check_sentences([sentence], "sentence")
    return float(log_probs(model, [list(sentence)])[0])


def perplexity(model: Model, sentences) -> float:
    """As reference.ngram.perplexity (the total summed over sentences in order)."""
    _check_model(model)
    if model.smoothing == "stupid_backoff":
        raise ValueError("model: stupid_backoff scores are not probabilities; perplexity is undefined")
    sentences, _, _ = _check_sentences(sentences)
    lps = log_probs(model, sentences)
    total = 0
    for v in lps.tolist():
        total += v
    n_tokens = sum(len(s) + 1 for s in sentences)
    return math.exp(-total / n_tokens)


def sample(model: Model, rng, n_sentences: int = 1, max_len: int = 100, *, u=None) -> list[list[str]]:
    """As reference.ngram.sample (same draws from the same rng or u), all sentences at once."""
    _check_model(model)
    if model.smoothing == "stupid_backoff":
        raise ValueError("model: stupid_backoff scores are not a distribution; cannot sample")
    for name, value in (("n_sentences", n_sentences), ("max_len", max_len)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if u is None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
        u = rng.random((n_sentences, max_len + 1))
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (n_sentences, max_len + 1) or not np.all((u >= 0) & (u < 1)):
        raise ValueError(f"u: expected shape {(n_sentences, max_len + 1)} in [0, 1), got shape {u.shape}")
    V, L = model.vocab_size, max(model.order - 1, 0)
    eos = model.index[EOS]
    hist = np.full((n_sentences, L), -1, dtype=np.int64)
    if L:
        hist[:, -1] = model.bos
    out = [[] for _ in range(n_sentences)]
    alive = np.arange(n_sentences)
    vocab_ids = np.arange(V, dtype=np.int64)
    for t in range(max_len + 1):
        if alive.size == 0:
            break
        ctx = np.repeat(hist[alive], V, axis=0)
        p = _probs_core(model, ctx, np.tile(vocab_ids, alive.size)).reshape(alive.size, V)
        cdf = np.cumsum(p, axis=1)
        target = u[alive, t] * cdf[:, -1]
        j = np.argmax(cdf > target[:, None], axis=1)
        keep = (j != eos) & (t < max_len)
        for i, w in zip(alive[keep].tolist(), j[keep].tolist()):
            out[i].append(model.vocab[w])
        if L:
            hist[alive[keep]] = np.concatenate([hist[alive[keep], 1:], j[keep][:, None]], axis=1)
        alive = alive[keep]
    return out


# ----------------------------------------------------------------------------- ARPA


def _backoff_weights(model: Model, k: int) -> np.ndarray:
    """Per context rank at order k >= 2 (seen contexts): the reference's `_backoff_weight`."""
    od = model.orders[k - 1]
    total, n1, n2, n3 = od.total, od.n1, od.n2, od.n3
    s = model.smoothing
    with np.errstate(divide="ignore", invalid="ignore"):
        if s == "mle":
            return np.zeros(total.size)
        if s == "add_k":
            return np.ones(total.size)
        if s == "stupid_backoff":
            return np.full(total.size, model.options["alpha"])
        if s == "katz":
            return np.where(np.isnan(od.katz_alpha), 0.0, od.katz_alpha)
        if s == "witten_bell":
            types = n1 + n2 + n3
            return types / (total + types)
        if s == "kneser_ney":
            return model.discounts[k - 1] * (n1 + n2 + n3) / total
        d1, d2, d3 = model.discounts[k - 1]
        return (d1 * n1 + d2 * n2 + d3 * n3) / total


def _log10(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(p <= 0.0, ARPA_LOG_ZERO, np.log10(np.where(p <= 0.0, 1.0, p)))


def _context_tokens(model: Model, k: int) -> np.ndarray:
    """(C, k-1) ids of each context rank at order k >= 2."""
    if k == 2:
        return np.arange(model.base, dtype=np.int64)[:, None]
    return model.orders[k - 2].tokens


def _listed(model: Model, k: int) -> np.ndarray:
    """(M, k) ids of the k-grams an ARPA file lists (reference.ngram.arpa_tables): the seen
    k-grams, every word of P at k = 1, and for add_k every (h, w) of a seen context h."""
    V = model.vocab_size
    grams = model.orders[k - 1].tokens if k > 1 else np.arange(V, dtype=np.int64)[:, None]
    if model.smoothing == "add_k" and k > 1:
        seen_ctx = np.nonzero(model.orders[k - 1].total > 0)[0]
        ctx_tok = _context_tokens(model, k)[seen_ctx]
        every = np.concatenate([np.repeat(ctx_tok, V, axis=0), np.tile(np.arange(V), seen_ctx.size)[:, None]], axis=1)
        grams = np.unique(np.concatenate([grams, every]), axis=0)
    return grams


def to_arpa(model: Model) -> str:
    """As reference.ngram.to_arpa: the same text, byte for byte."""
    _check_model(model)
    if model.smoothing == "arpa":  # the tables as read
        return ref.to_arpa(model.source)
    names = list(model.vocab) + [BOS]
    lines, entries = ["\\data\\"], []
    for k in range(1, model.order + 1):
        grams = _listed(model, k)  # (M, k) ids
        logp = _log10(_probs_core(model, grams[:, :-1], grams[:, -1]))
        rows = {tuple(names[i] for i in g): lp for g, lp in zip(grams.tolist(), logp.tolist())}
        if k == 1:
            rows[(BOS,)] = ARPA_LOG_ZERO
        bows = {}
        if k < model.order:  # the contexts of order k + 1 and their weights
            seen = np.nonzero(model.orders[k].total > 0)[0]
            weights = _log10(_backoff_weights(model, k + 1)[seen])
            for g, b in zip(_context_tokens(model, k + 1)[seen].tolist(), weights.tolist()):
                bows[tuple(names[i] for i in g)] = b
        entries.append((rows, bows))
        lines.append(f"ngram {k}={len(rows)}")
    for k, (rows, bows) in enumerate(entries, start=1):
        lines += ["", f"\\{k}-grams:"]
        for gram in sorted(rows):
            line = f"{rows[gram]!r}\t{' '.join(gram)}"
            if gram in bows:
                line += f"\t{bows[gram]!r}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)


def from_arpa(text: str) -> Model:
    """As reference.ngram.from_arpa: the text is parsed line by line by the reference's
    parser (its checks, its messages), then encoded for batched querying. Every n-gram's
    first n-1 words must be a listed (n-1)-gram, as the ARPA format requires (kenlm
    requires it too); ValueError otherwise."""
    parsed = ref.from_arpa(text)
    vocab = parsed.vocab
    index = {w: i for i, w in enumerate(vocab)}
    bos, B = len(vocab), len(vocab) + 1
    zeros_b = np.zeros(B, dtype=np.int64)
    logp1, bow1 = np.full(B, ARPA_LOG_ZERO), np.zeros(B)
    for (w,), v in parsed.arpa[0].items():
        logp1[bos if w == BOS else index[w]] = v
    if parsed.order >= 2:
        for (w,), v in parsed.backoffs[0].items():
            bow1[bos if w == BOS else index[w]] = v
    orders = [Order(np.arange(B, dtype=np.int64), np.arange(B, dtype=np.int64)[:, None], *([zeros_b] * 6))]
    logps, bows = [logp1], [bow1]
    for k in range(2, parsed.order + 1):
        grams = list(parsed.arpa[k - 1])
        try:
            tokens = np.array([[bos if w == BOS else index[w] for w in g] for g in grams], dtype=np.int64)
        except KeyError as e:
            raise ValueError(f"text: the {k}-grams use {e.args[0]!r}, which is not a listed unigram") from None
        tokens = tokens.reshape(len(grams), k)
        rank = tokens[:, 0]
        for j in range(1, k - 1):  # rank of the first j+1 words, as a (j+1)-gram
            rank = _lookup(orders[j].keys, np.where(rank >= 0, rank * B + tokens[:, j], -1))
        if (rank < 0).any():
            bad = grams[int(np.nonzero(rank < 0)[0][0])]
            raise ValueError(f"text: the {k}-gram {' '.join(bad)!r} has no listed {k - 1}-gram {' '.join(bad[:-1])!r}")
        keys = rank * B + tokens[:, -1]
        sort = np.argsort(keys, kind="stable")
        bow_table = parsed.backoffs[k - 1] if k < parsed.order else {}
        z = np.zeros(len(grams), dtype=np.int64)
        orders.append(Order(keys[sort], tokens[sort], z, z, z, z, z, z))
        logps.append(np.array([parsed.arpa[k - 1][grams[i]] for i in sort.tolist()], dtype=np.float64))
        bows.append(np.array([bow_table.get(grams[i], 0.0) for i in sort.tolist()], dtype=np.float64))
    return Model(parsed.order, "arpa", vocab, orders, (), (), {}, logps, bows, source=parsed)
