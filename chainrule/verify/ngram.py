"""`chainrule verify` rows for the n-gram models (module "ngram").

fast.ngram is integer counting and float64 estimation in NumPy on the CPU; it has no
torch, CUDA or CuPy variant, so its rows appear once, under the torch-cpu-f64 backend
(the CPU float64 one), and the other backends have no ngram rows. On a fixed seeded
Zipf corpus (313 sentences, 61 word types), for every smoother at orders 3 and 5:

    counts and probabilities, fast vs reference   exact: max error 0, bound 0
    normalization of the reference (sum over P of p(w | h), seen and unseen contexts)
    ARPA round trip (every probability, float64 table)
    kenlm agreement (sentence log10 scores, 1e-5), if kenlm imports
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tempfile

import numpy

from chainrule.verify import Result, register

SEED, SENTENCES, VOCAB = 1234, 313, 61
KENLM_LOG10 = 1e-5


def _corpus(seed: int, n: int) -> list[list[str]]:
    rng = numpy.random.default_rng(seed)
    p = 1.0 / numpy.arange(1, VOCAB + 1)
    p /= p.sum()
    return [[f"w{j}" for j in rng.choice(VOCAB, size=rng.integers(0, 11), p=p)] for _ in range(n)]


def _queries(seed: int) -> list[list[str]]:
    rng = numpy.random.default_rng(seed)  # unknown words w61.. included
    return [[f"w{j}" for j in rng.integers(0, VOCAB + 6, size=rng.integers(0, 9))] for _ in range(23)]


def _exact(quantity: str, truth, got) -> Result:
    """Bit-identical or fail; max_err is the largest difference (inf where shapes or
    non-finite entries differ)."""
    truth, got = numpy.asarray(truth, dtype=numpy.float64), numpy.asarray(got, dtype=numpy.float64)
    if truth.shape == got.shape and numpy.array_equal(truth, got):
        return Result(quantity, 0.0, 0.0, True)
    with numpy.errstate(invalid="ignore"):
        diff = numpy.abs(truth - got) if truth.shape == got.shape else numpy.array([math.inf])
    err = float(numpy.nanmax(diff)) if diff.size and not numpy.isnan(diff).all() else math.inf
    return Result(quantity, err if err > 0 else math.inf, 0.0, False, "not bit-identical")


@register("ngram")
def ngram_checks(backend, quick=False):
    """n-gram models: reference.ngram vs fast.ngram (exact), normalization, ARPA, kenlm;
    one row per quantity, over every smoother at orders 3 and 5 (quick: order 3)."""
    if backend.name != "torch-cpu-f64":
        return
    from chainrule.fast import ngram as fast
    from chainrule.reference import checks
    from chainrule.reference import ngram as ref

    train, test = _corpus(SEED, SENTENCES), _queries(SEED + 1)
    try:
        import kenlm
    except ImportError:
        kenlm = None
    contexts = [(), ("<s>",), ("w0",), ("<s>", "w1", "w0"), ("w3", "w2", "w1", "w0"), ("zz", "w0")]
    same_counts, lp_ref, lp_fast, sums, arpa_ref, arpa_back, kenlm_rows = True, [], [], [], [], [], []
    orders = (3,) if quick else (3, 5)
    for order in orders:
        for smoothing in ref.SMOOTHERS:
            r, f = ref.fit(train, order, smoothing), fast.fit(train, order, smoothing)
            names = list(f.vocab) + [ref.BOS]
            counts = [{tuple(names[i] for i in t): c for t, c in zip(od.tokens.tolist(), od.counts.tolist()) if c > 0}
                      for od in f.orders]  # fmt: skip
            same_counts &= counts == list(r.counts) and f.discounts == r.discounts
            truth = [ref.log_prob(r, s) for s in test]
            lp_ref += truth
            lp_fast += fast.log_probs(f, test).tolist()
            if smoothing == "stupid_backoff":
                continue  # a score: neither normalized nor a probability
            sums += [math.fsum(ref.distribution(r, h)) for h in contexts]
            if smoothing == "add_k" and order == 5:
                continue  # add_k's ARPA lists |contexts| x |P| lines: order 3 suffices here
            text = ref.to_arpa(r)
            loaded = ref.from_arpa(text)
            arpa_ref += truth
            arpa_back += [ref.log_prob(loaded, s) for s in test]
            if kenlm is not None:
                kenlm_rows.append(_kenlm_error(kenlm, text, numpy.array(truth), test))
    cases = f"{len(ref.SMOOTHERS)} smoothers x order{'s' * (len(orders) > 1)} {', '.join(map(str, orders))}, {len(test)} sentences"
    yield Result(f"counts and discounts: fast == reference ({cases})", 0.0 if same_counts else math.inf, 0.0,
                 same_counts)  # fmt: skip
    yield _exact(f"sentence log p: fast == reference ({cases})", lp_ref, lp_fast)
    yield checks.compare(f"sum over P of p(w | h) (6 normalized smoothers, {len(contexts)} contexts)",
                         numpy.ones(len(sums)), numpy.array(sums), "float64")  # fmt: skip
    yield checks.compare("ARPA round trip: sentence log p", numpy.array(arpa_ref), numpy.array(arpa_back), "float64")
    if kenlm is not None:
        err = max(e for e, _ in kenlm_rows)
        zeros_ok = all(z for _, z in kenlm_rows)
        note = "" if zeros_ok else "a zero-probability sentence scored above -98"
        yield Result(f"kenlm.Model on to_arpa: sentence log10 score ({len(kenlm_rows)} models)", err, KENLM_LOG10,
                     err <= KENLM_LOG10 and zeros_ok, note)  # fmt: skip


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C-level writes included) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _kenlm_error(kenlm, text: str, truth, test) -> tuple[float, bool]:
    """(max |chainrule log10 - kenlm| over sentences of nonzero probability, whether kenlm
    puts every zero-probability sentence below -98)."""
    fd, path = tempfile.mkstemp(suffix=".arpa")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        config = kenlm.Config()
        config.show_progress = False  # no progress bar in the table
        with _quiet_stderr():  # kenlm also writes a note on binary files to the C stderr
            model = kenlm.Model(path, config)
    finally:
        os.unlink(path)
    got = numpy.array([model.score(" ".join(s), bos=True, eos=True) for s in test])
    finite = numpy.isfinite(truth)
    err = float(numpy.abs(truth[finite] / math.log(10) - got[finite]).max()) if finite.any() else 0.0
    return err, bool(numpy.all(got[~finite] < -98))
