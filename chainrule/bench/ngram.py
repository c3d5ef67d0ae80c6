"""Bench topic for the n-gram models.

ngram   Fitting modified Kneser-Ney 3-gram and 5-gram models on ~10^6 tokens of the
        standard library's own text (chainrule.data.stdlib_words; --quick: 2 x 10^4),
        fast.ngram vs nltk.lm vs reference.ngram, as time ratios measured in the same
        run; then querying: sentence log-probabilities of held-out text in tokens/s.

What each fit computes, to compare fairly:
  fast.ngram.fit       counts of every order, Kneser-Ney continuation counts, per-context
                       statistics, the count-of-counts and the discounts D1, D2, D3+ per
                       order: everything a query needs (a query is lookups and arithmetic).
  reference.ngram.fit  the same, in dicts of n-gram tuples (readable loops).
  nltk.lm KneserNeyInterpolated.fit  counting only (padded everygrams into nested
                       frequency distributions); NLTK computes continuation counts and
                       discounts lazily, at every score() call, by scanning all n-grams of
                       the next order: its fit does LESS work than the other two, so the
                       ratio understates the difference, and its queries are slow (its
                       query rate is measured on a small sample of tokens).
Target: fast >= 100x nltk for fitting. The slow contenders (nltk, reference) are timed
once each (no warm-up: a fit has no lazy state to warm); fast fits with at least 5
repeats (median), queries with the run's repeats.
"""

from __future__ import annotations

import gc
import math

from chainrule.bench import Run, topic

FULL_TOKENS, QUICK_TOKENS = 1_000_000, 20_000
QUERY_TOKENS, QUICK_QUERY_TOKENS = 200_000, 5_000
NLTK_QUERY_TOKENS = 20
TARGET = 100.0


def _nltk_fit(order: int, sentences):
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    model = KneserNeyInterpolated(order)
    train, vocab = padded_everygram_pipeline(order, sentences)
    model.fit(train, vocab)
    return model


def _tokens(sentences) -> int:
    return sum(len(s) + 1 for s in sentences)  # + </s>: the predicted tokens


def _have_nltk() -> bool:
    try:
        import nltk.lm  # noqa: F401
    except ImportError:
        return False
    return True


@topic("ngram", "modified Kneser-Ney fit (3-, 5-gram) on ~1e6 stdlib tokens: fast vs nltk.lm vs reference; "
       "query tokens/s", repeats=3)  # fmt: skip
def bench_ngram(run: Run) -> None:
    from chainrule.data import stdlib_words
    from chainrule.fast import ngram as fast
    from chainrule.reference import ngram as ref

    have_nltk = _have_nltk()
    train = stdlib_words(QUICK_TOKENS if run.quick else FULL_TOKENS)
    held_out = stdlib_words(QUICK_QUERY_TOKENS if run.quick else QUERY_TOKENS, split="validation")
    words, n_query = sum(len(s) for s in train), _tokens(held_out)
    run.note("train", f"{len(train)} sentences, {words} words, {_tokens(train)} predicted tokens (words + </s>)")
    run.note("held_out", f"{len(held_out)} sentences, {n_query} predicted tokens")
    if not have_nltk:
        run.note("nltk", "nltk is not installed: nltk columns skipped")
    once = {"repeats": 1, "warmup": 0}  # the slow contenders
    rows, results = [], []
    for order in (3, 5):
        out = {}
        gc.collect()  # the previous order's models (NLTK's are millions of objects) are gone before timing

        def keep(name, fn):
            return lambda: out.__setitem__(name, fn())

        case = f"fit {order}-gram"
        t_fast = run.time(case, "fast.ngram.fit", keep("fast", lambda: fast.fit(train, order)), work=words,
                          unit="words", baseline=True, repeats=max(run.repeats, 5))  # fmt: skip
        t_nltk = None
        if have_nltk:
            t_nltk = run.time(case, "nltk KneserNeyInterpolated.fit", keep("nltk", lambda: _nltk_fit(order, train)),
                              work=words, unit="words", **once)  # fmt: skip
        t_ref = run.time(case, "reference.ngram.fit", keep("ref", lambda: ref.fit(train, order)), work=words,
                         unit="words", **once)  # fmt: skip
        f, r = out["fast"], out["ref"]
        case = f"query {order}-gram"
        q_fast = run.time(case, "fast.ngram.log_probs", keep("lp_fast", lambda: fast.log_probs(f, held_out)),
                          work=n_query, unit="tokens", baseline=True)  # fmt: skip
        ref_lp = keep("lp_ref", lambda: [ref.log_prob(r, s) for s in held_out])
        q_ref = run.time(case, "reference.ngram.log_prob", ref_lp, work=n_query, unit="tokens", **once)
        q_nltk = None
        if have_nltk:
            sample = _nltk_sample(held_out, order, NLTK_QUERY_TOKENS)
            scores = lambda: [out["nltk"].score(w, h) for h, w in sample]  # noqa: E731
            q_nltk = run.time(case, f"nltk score ({len(sample)} tokens)", scores, work=len(sample), unit="tokens",
                              **once)  # fmt: skip
        same = (f.discounts == r.discounts and f.discounts_fallback == r.discounts_fallback
                and out["lp_fast"].tolist() == out["lp_ref"])  # fmt: skip
        ppl = math.exp(-sum(out["lp_ref"]) / n_query)
        speedup = None if t_nltk is None else t_nltk.median / t_fast.median
        met = None if speedup is None else speedup >= TARGET
        rows.append([order, t_fast.median, None if t_nltk is None else t_nltk.median, t_ref.median,
                     "" if speedup is None else f"{speedup:.0f}x", {None: "", True: "yes", False: "NO"}[met],
                     f"{t_ref.median / t_fast.median:.0f}x", q_fast.rate, q_ref.rate,
                     None if q_nltk is None else q_nltk.rate, same, ppl])  # fmt: skip
        results.append({"order": order, "fast_fit_s": t_fast.median, "reference_fit_s": t_ref.median,
                        "nltk_fit_s": None if t_nltk is None else t_nltk.median, "nltk_over_fast": speedup,
                        "target": TARGET, "target_met": met, "reference_over_fast": t_ref.median / t_fast.median,
                        "query_tokens_per_s": {"fast": q_fast.rate, "reference": q_ref.rate,
                                               "nltk": None if q_nltk is None else q_nltk.rate},
                        "discounts": [list(d) for d in f.discounts],
                        "discount_fallback_orders": list(f.discounts_fallback),
                        "fast_equals_reference": same, "held_out_perplexity": ppl})  # fmt: skip
    run.summary(
        f"modified Kneser-Ney on {words} training words (fit: seconds; nltk/fast target {TARGET:.0f}x; "
        f"query: held-out sentence log-probabilities, tokens/s)",
        ["order", "fast s", "nltk s", "ref s", "nltk/fast", "target met", "ref/fast", "fast tok/s", "ref tok/s",
         "nltk tok/s", "fast == ref", "held-out ppl"],
        rows,
    )  # fmt: skip
    run.record("results", results)


def _nltk_sample(sentences, order: int, n: int):
    """(context, word) pairs of the first n predicted tokens, NLTK-padded (order-1 <s>)."""
    pairs = []
    for s in sentences:
        padded = ["<s>"] * (order - 1) + list(s) + ["</s>"]
        for i in range(order - 1, len(padded)):
            pairs.append((padded[i - order + 1 : i], padded[i]))
            if len(pairs) == n:
                return pairs
    return pairs
