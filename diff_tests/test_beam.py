"""fast.beam (beam search through a reordered KV cache) against reference.beam.

float64 (torch-cpu-f64; cupy-f64 runs the reference itself on CuPy arrays): the
same hypotheses in the same order -- sequences and lengths identical, scores and
log_probs within the float64 tolerance -- for every early_stopping mode, with and
without eos, for length penalties of both signs, on a model whose beams change
parents from step to step (so a cache row left in the wrong place changes the
result: `test_a_cache_left_unordered_is_caught` shows this test would see it).

float32 / bfloat16: a flip between near-tied candidates is a legitimate rounding
outcome and changes the rest of the search, so hypotheses are not compared token
for token; instead each hypothesis fast returns is well formed and rescored: its
log_prob against the float64 reference's sum for the same tokens, under the
low-precision rule (the naive same-dtype baseline: the spec in float32, or the
unfused "math" attention in bfloat16), with its scores consistent and sorted.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from diff_tests.conftest import check
from chainrule.fast import beam as fast_beam
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import sampling as fast_sampling
from chainrule.reference import beam as ref_beam
from chainrule.reference import generation
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import nn
from chainrule.reference.generation import GenerationConfig

CONFIG = ref_gpt.Config(vocab_size=9, block_size=12, n_layer=2, n_head=2, n_embd=8)
PROMPT = np.array([[1, 4, 2], [0, 0, 7]])
N, W, R = 7, 3, 2
CASES = list(itertools.product((True, False, "never"), (None, 1), (1.0, -0.5, 2.0)))


@pytest.fixture(scope="module")
def params():
    return ref_gpt.random_params(CONFIG, np.random.default_rng(11))


def _search(side, P, prompt=PROMPT, **kw):
    if side.is_cupy:
        r = ref_gpt.beam_search(P, CONFIG, side.array(prompt), W, N, num_return_sequences=R, **kw)
    else:
        r = fast_beam.gpt_beam_search(P, CONFIG, side.array(prompt), W, N, num_return_sequences=R, **kw)
    return ref_beam.BeamSearchResult(*(side.numpy(a) for a in (r.sequences, r.scores, r.log_probs, r.lengths)))


@pytest.mark.parametrize("early, eos, lp", CASES, ids=[f"{e}-eos{o}-lp{p}" for e, o, p in CASES])
def test_same_hypotheses(side, params, early, eos, lp):
    kw = dict(eos=eos, length_penalty=lp, early_stopping=early)
    got = _search(side, side.params(params), **kw)
    if side.low_precision:
        return _check_rescored(side, params, side.params(params), got, eos, lp)
    truth = ref_gpt.beam_search(params, CONFIG, PROMPT, W, N, num_return_sequences=R, **kw)
    assert got.sequences.shape == truth.sequences.shape
    assert np.array_equal(got.sequences, truth.sequences), (got.sequences, truth.sequences)
    assert np.array_equal(got.lengths, truth.lengths)
    check("beam log_probs", truth.log_probs, got.log_probs, side)
    check("beam scores", truth.scores, got.scores, side)


def _rescore(forward, sequences, lengths, T0):
    """sum of log softmax(forward(prefix))[next token] over each hypothesis' generated tokens."""
    out = np.empty(lengths.shape)
    for b, r in np.ndindex(lengths.shape):
        seq = sequences[b, r, : T0 + int(lengths[b, r])]
        logp = nn.log_softmax(np.asarray(forward(seq[None, :-1]), dtype=np.float64), axis=-1)[0]  # (T-1, V)
        out[b, r] = sum(logp[t - 1, seq[t]] for t in range(T0, seq.shape[0]))
    return out


def _check_rescored(side, params, P, got, eos, lp):
    T0 = PROMPT.shape[1]
    for b, r in np.ndindex(got.lengths.shape):
        L = int(got.lengths[b, r])
        assert L >= 1 and (L == N or got.sequences[b, r, T0 + L - 1] == eos)
    truth = _rescore(lambda x: ref_gpt.forward(params, CONFIG, x), got.sequences, got.lengths, T0)
    naive = _rescore(lambda x: side.naive_forward(P, CONFIG, x), got.sequences, got.lengths, T0)
    check("beam log_probs (fast's hypotheses rescored)", truth, got.log_probs, side, naive=naive)
    assert np.allclose(got.scores, got.log_probs / got.lengths.astype(float) ** lp, rtol=1e-12, atol=0)
    assert np.all(got.scores[:, :-1] >= got.scores[:, 1:])


def test_cases_exercise_the_algorithm(params):
    """The fixed cases are not degenerate: hypotheses end early on eos, the modes disagree,
    and the beams' parents change between steps (the cache must really be reordered)."""
    results = {}
    for early, eos, lp in CASES:
        r = ref_gpt.beam_search(params, CONFIG, PROMPT, W, N, eos=eos, length_penalty=lp, early_stopping=early,
                                     num_return_sequences=R)  # fmt: skip
        results[early, eos, lp] = r
    assert any(np.any(r.lengths < N) for (_, eos, _), r in results.items() if eos is not None)
    disagree = [(eos, lp) for _, eos, lp in CASES
                if len({results[e, eos, lp].scores.tobytes() for e in (True, False, "never")}) == 3]  # fmt: skip
    assert disagree, "no case where the three early_stopping modes give three results"
    assert not np.array_equal(_search_without_reorder(params), _reference_sequences(params))


def _reference_sequences(params):
    return ref_gpt.beam_search(params, CONFIG, PROMPT, W, N, num_return_sequences=R).sequences


def _search_without_reorder(params):
    original = fast_beam._gather_cache

    def unordered(src, dst, rows):  # after the prompt's spread: rows stay put, whatever beam now sits there
        if src.batch == dst.batch:
            rows = torch.arange(rows.numel(), device=rows.device)
        return original(src, dst, rows)

    fast_beam._gather_cache = unordered
    try:
        return fast_beam.gpt_beam_search(params, CONFIG, PROMPT, W, N, num_return_sequences=R).sequences.numpy()
    finally:
        fast_beam._gather_cache = original


def test_a_cache_left_unordered_is_caught(params):
    """The negative control: skipping the reorder (each cache row stays where it was, whatever
    beam now sits there) after the prompt has been spread over the beams gives other
    hypotheses, so `test_same_hypotheses` would fail on that bug."""
    assert not np.array_equal(_search_without_reorder(params), _reference_sequences(params))


@pytest.mark.parametrize("B, W_, T0, N_", [(1, 1, 1, 1), (3, 4, 2, 1), (2, 5, 1, 4), (1, 2, 11, 2)])
def test_shapes_and_edges(params, B, W_, T0, N_):
    """Batch 1 and several, width 1 and more than V/2, one new token, the block filled."""
    prompt = np.random.default_rng(B * 100 + T0).integers(0, CONFIG.vocab_size, size=(B, T0))
    for eos in (None, 0):
        kw = dict(eos=eos, num_return_sequences=W_)
        truth = ref_gpt.beam_search(params, CONFIG, prompt, W_, N_, **kw)
        got = fast_beam.gpt_beam_search(params, CONFIG, prompt, W_, N_, **kw)
        assert np.array_equal(got.sequences.numpy(), truth.sequences)
        assert np.array_equal(got.lengths.numpy(), truth.lengths)
        assert np.allclose(got.scores.numpy(), truth.scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("early", [True, False, "never"])
def test_ties_broken_alike(params, early):
    """wte = 0 makes every logit 0: all candidates tie at every step, so the hypotheses are
    decided by the tie rule alone (smaller flat index first; the earlier-finished first)."""
    flat = dict(params, wte=np.zeros_like(params["wte"]))
    for W_, lp in ((1, 2.0), (3, 1.0), (4, -1.0)):
        kw = dict(eos=0, length_penalty=lp, early_stopping=early, num_return_sequences=W_)
        truth = ref_gpt.beam_search(flat, CONFIG, PROMPT, W_, 4, **kw)
        got = fast_beam.gpt_beam_search(flat, CONFIG, PROMPT, W_, 4, **kw)
        assert np.array_equal(got.sequences.numpy(), truth.sequences), (got.sequences, truth.sequences)
        assert np.allclose(got.scores.numpy(), truth.scores, rtol=1e-12, atol=0)


def test_zero_new_tokens_and_missing_hypotheses():
    config = ref_gpt.Config(vocab_size=2, block_size=4, n_layer=1, n_head=1, n_embd=2)
    params = ref_gpt.random_params(config, np.random.default_rng(0))
    prompt = np.array([[1], [0]])
    for N_, W_ in ((0, 3), (1, 3), (2, 4), (3, 4)):
        for eos in (None, 1):
            truth = ref_gpt.beam_search(params, config, prompt, W_, N_, eos=eos, num_return_sequences=W_)
            got = fast_beam.gpt_beam_search(params, config, prompt, W_, N_, eos=eos, num_return_sequences=W_)
            assert np.array_equal(got.sequences.numpy(), truth.sequences)
            assert np.array_equal(got.lengths.numpy(), truth.lengths)
            assert np.allclose(got.scores.numpy(), truth.scores, rtol=1e-12, atol=1e-12)


_BAD = [
    (dict(beam_width=0), "beam_width"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(eos=9), "eos"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(num_return_sequences=3), "num_return_sequences"),
    (dict(pad=9), "pad"),
    (dict(prompt=np.zeros((2, 2))), "prompt"),
    (dict(prompt=np.full((1, 2), 9)), "prompt"),
    (dict(prompt=np.zeros((1, 11), dtype=np.int64)), "prompt"),  # T0 + max_new_tokens - 1 > block_size
]


@pytest.mark.parametrize("overrides, arg", _BAD, ids=[a + str(i) for i, (_, a) in enumerate(_BAD)])
def test_same_errors(params, overrides, arg):
    kw = dict(prompt=np.zeros((1, 2), dtype=np.int64), beam_width=2, max_new_tokens=3)
    kw.update(overrides)
    args = (kw.pop("prompt"), kw.pop("beam_width"), kw.pop("max_new_tokens"))
    messages = []
    for search in (ref_gpt.beam_search, fast_beam.gpt_beam_search):
        with pytest.raises(ValueError, match=arg) as info:
            search(params, CONFIG, *args, **kw)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# ----------------------------------------------------------------------------- padded batches and processors

PADDED = np.array([[1, 4, 2, 6], [0, 0, 3, 7], [0, 5, 8, 1]])  # left-padded prompts of lengths 4, 2 and 3
PADDED_MASK = np.array([[1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
EOS_IDS = (1, 5)
BANNED = (8,)  # suppress_tokens
BAD_WORDS = ((4, 4), (6,))
SETTINGS = dict(repetition_penalty=1.4, no_repeat_ngram_size=2, bad_words_ids=BAD_WORDS, min_new_tokens=2,
                suppress_tokens=BANNED, eos_token_id=EOS_IDS, pad_token_id=0)  # fmt: skip
PADDED_CASES = list(itertools.product((True, False, "never"), (1.0, -0.5, 2.0)))


def _processors(table, N):
    """The processors SETTINGS imply (HF's order), built with `table` (the reference's or fast's)."""
    config = GenerationConfig(max_new_tokens=N, **SETTINGS)
    T0 = PADDED.shape[1]
    return generation.plan(config, T0, CONFIG.vocab_size, table=table).processors


def _padded_search(side, P, **kw):
    args = (side.array(PADDED), W, N)
    common = dict(eos=EOS_IDS, pad=0, attention_mask=side.array(PADDED_MASK), num_return_sequences=R, **kw)
    if side.is_cupy:
        r = ref_gpt.beam_search(P, CONFIG, *args, processors=_processors(None, N), **common)
    else:
        r = fast_beam.gpt_beam_search(P, CONFIG, *args, processors=_processors(fast_sampling.PROCESSORS, N), **common)
    return ref_beam.BeamSearchResult(*(side.numpy(a) for a in (r.sequences, r.scores, r.log_probs, r.lengths)))


def _padded_truth(params, **kw):
    return ref_gpt.beam_search(params, CONFIG, PADDED, W, N, eos=EOS_IDS, pad=0, attention_mask=PADDED_MASK,
                               num_return_sequences=R, processors=_processors(None, N), **kw)  # fmt: skip


def _check_constraints(result):
    """What the processors and eos promise whatever the precision: no suppressed token, no bad
    word completed, no repeated bigram, no eos among the first min_new_tokens, eos only at the end,
    a short hypothesis ends with an eos, pad after it."""
    T0 = PADDED.shape[1]
    for b, r in np.ndindex(result.lengths.shape):
        L = int(result.lengths[b, r])
        assert L >= 1
        row = result.sequences[b, r]
        y = [int(t) for t in row[T0 : T0 + L]]
        assert np.all(row[T0 + L :] == 0)
        assert not set(y) & set(BANNED), y
        assert not set(y[:-1]) & set(EOS_IDS) and (L == N or y[-1] in EOS_IDS)
        assert not (y[-1] in EOS_IDS and L <= SETTINGS["min_new_tokens"]), y
        ids = [int(t) for t in PADDED[b]] + y  # HF's ids: the pads included
        for word in BAD_WORDS:
            ends = [T0 + t for t in range(L)]
            assert not any(tuple(ids[e - len(word) + 1 : e + 1]) == word for e in ends), (y, word)
        bigrams = [tuple(ids[i : i + 2]) for i in range(len(ids) - 1)]
        new = bigrams[T0 - 1 :]
        assert all(bigrams.index(g) >= i + T0 - 1 for i, g in enumerate(new)), ids  # a new bigram is never a repeat


@pytest.mark.parametrize("early, lp", PADDED_CASES, ids=[f"{e}-lp{p}" for e, p in PADDED_CASES])
def test_padded_batch_with_processors(side, params, early, lp):
    """Left-padded prompts of different lengths, two eos ids, and HF's penalties and constraints:
    fast (its KV cache carrying the mask, reordered with the beams) returns the reference's
    hypotheses; in low precision each hypothesis keeps every constraint."""
    kw = dict(length_penalty=lp, early_stopping=early)
    got = _padded_search(side, side.params(params), **kw)
    if side.low_precision:
        return _check_constraints(got)
    truth = _padded_truth(params, **kw)
    _check_constraints(truth)
    assert np.array_equal(got.sequences, truth.sequences), (got.sequences, truth.sequences)
    assert np.array_equal(got.lengths, truth.lengths)
    check("beam log_probs (padded, processed)", truth.log_probs, got.log_probs, side)
    check("beam scores (padded, processed)", truth.scores, got.scores, side)


def test_padded_cases_exercise_mask_and_processors(params):
    """The negative controls: without the mask, or without the processors, or with fast's key
    mask left behind in the beams' reorder, the hypotheses change -- so the test above sees each."""
    truth = _padded_truth(params).sequences
    unmasked = ref_gpt.beam_search(params, CONFIG, PADDED, W, N, eos=EOS_IDS, pad=0, num_return_sequences=R,
                                   processors=_processors(None, N)).sequences  # fmt: skip
    plain = ref_gpt.beam_search(params, CONFIG, PADDED, W, N, eos=EOS_IDS, pad=0, attention_mask=PADDED_MASK,
                                num_return_sequences=R).sequences  # fmt: skip
    assert not np.array_equal(unmasked, truth) and not np.array_equal(plain, truth)
    assert np.any(truth[:, :, PADDED.shape[1] : -1] == 1) or np.any(truth[:, :, PADDED.shape[1] : -1] == 5)

    original = fast_beam._gather_cache

    def mask_left_behind(src, dst, rows):  # keys and values follow the beams, the key mask does not
        saved, src.mask = src.mask, None
        try:
            out = original(src, dst, rows)
        finally:
            src.mask = saved
        if dst.mask is None:
            dst.mask = torch.ones((dst.batch, dst.max_len), dtype=torch.bool)
        return out

    fast_beam._gather_cache = mask_left_behind
    try:
        broken = fast_beam.gpt_beam_search(params, CONFIG, PADDED, W, N, eos=EOS_IDS, pad=0, attention_mask=PADDED_MASK,
                                           num_return_sequences=R,
                                           processors=_processors(fast_sampling.PROCESSORS, N)).sequences.numpy()
    finally:
        fast_beam._gather_cache = original
    assert not np.array_equal(broken, truth)


def test_generate_runs_beam_search(params):
    """generate(generation_config=GenerationConfig(num_beams=W, ...)) is HF's beam output,
    (B * R, T0 + L): beam_search's hypotheses, flattened -- in reference and fast alike."""
    config = GenerationConfig(max_new_tokens=N, num_beams=W, num_return_sequences=R, length_penalty=0.5,
                              early_stopping="never", **SETTINGS)  # fmt: skip
    want = ref_gpt.beam_search(params, CONFIG, PADDED, W, N, eos=EOS_IDS, pad=0, attention_mask=PADDED_MASK,
                               num_return_sequences=R, length_penalty=0.5, early_stopping="never",
                               processors=_processors(None, N)).sequences  # fmt: skip
    want = want.reshape(PADDED.shape[0] * R, -1)
    got_ref = ref_gpt.generate(params, CONFIG, PADDED, generation_config=config, attention_mask=PADDED_MASK)
    got_fast = fast_gpt.generate(params, CONFIG, torch.from_numpy(PADDED), generation_config=config,
                                 attention_mask=torch.from_numpy(PADDED_MASK)).numpy()  # fmt: skip
    assert np.array_equal(got_ref, want) and np.array_equal(got_fast, want), (got_ref, got_fast, want)


@pytest.mark.parametrize("generate", [ref_gpt.generate, fast_gpt.generate], ids=["reference", "fast"])
def test_generate_refuses_beam_sampling(params, generate):
    config = GenerationConfig(max_new_tokens=2, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match=r"generation_config\.do_sample"):
        generate(params, CONFIG, PADDED, generation_config=config, u=np.zeros((3, 2)))


_BAD_NEW = [
    (dict(eos=()), "eos"),
    (dict(eos=(1, 9)), "eos"),
    (dict(stop_sequences=[[]]), "stop_sequences"),
    (dict(stop_sequences=[3]), "stop_sequences"),
    (dict(attention_mask=np.ones((1, 3), dtype=np.int64)), "attention_mask"),
    (dict(attention_mask=np.array([[0, 0]])), "attention_mask"),
    (dict(attention_mask=np.array([[2, 1]])), "attention_mask"),
]


@pytest.mark.parametrize("overrides, arg", _BAD_NEW, ids=[a + str(i) for i, (_, a) in enumerate(_BAD_NEW)])
def test_same_errors_for_the_new_arguments(params, overrides, arg):
    messages = []
    for search in (ref_gpt.beam_search, fast_beam.gpt_beam_search):
        with pytest.raises(ValueError, match=arg) as info:
            search(params, CONFIG, np.zeros((1, 2), dtype=np.int64), 2, 3, **overrides)
        messages.append(str(info.value))
    assert messages[0] == messages[1]
