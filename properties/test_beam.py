"""Properties of beam search (reference.beam), on tiny models.

- beam_width 1 is greedy decoding (up to the first eos when eos is set and the
  search may stop early: early_stopping True or False);
- with beam_width at least the number of all hypotheses (V ** T suffices) the
  search is exhaustive: the returned hypotheses are *all* hypotheses, best first,
  with the scores of an explicit enumeration -- for every early_stopping mode;
- every returned hypothesis is well formed: eos only at its end, a length
  below max_new_tokens only when it ends with eos, `pad` after it, its log_prob
  the sum the model gives its tokens, its score log_prob / length ** length_penalty,
  scores descending;
- the callable interface works with any model (here a random trigram table), and
  the search is pure;
- fast.beam (KV cache reordered between steps) returns the reference's hypotheses
  on random tiny GPTs, prompts and settings (float64), padded batches, several eos
  ids, stop sequences and HF's processors included;
- several eos ids, stop sequences and processors: with exhaustive width the hypotheses
  are exactly those the finishing rule allows, scored by the processed log-probs;
- a row of a padded batch (any 0/1 attention_mask) gets the beams of the row alone;
- one beam under constraints that only remove tokens is greedy generate; generate with
  num_beams > 1 is beam search's hypotheses in HF's (B * R, T0 + L) layout.
Bad arguments raise ValueError naming the argument.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from properties.conftest import gpt_models, seeds
from chainrule.fast import beam as fast_beam
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import sampling as fast_sampling
from chainrule.reference import beam, generation
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import nn
from chainrule.reference.checks import assert_close, assert_pure
from chainrule.reference.generation import GenerationConfig

EARLY = st.sampled_from([True, False, "never"])


@st.composite
def generic_gpts(draw, min_vocab=2, min_block_size=2):
    """(config, params): a tiny GPT with n_embd >= 4, vocabulary min_vocab..7, block min_block_size..9. (With n_embd 1 or 2
    LayerNorm leaves at most two directions, the logits hardly depend on the input, and hypotheses
    that are permutations of one another tie up to rounding -- where two float64 implementations
    may legitimately order them differently.)"""
    n_head, head_dim = draw(st.integers(1, 2)), draw(st.integers(2, 3))
    vocab = draw(st.integers(min_vocab, 7))
    config = ref_gpt.Config(vocab_size=vocab, block_size=draw(st.integers(min_block_size, 9)),
                            n_layer=draw(st.integers(1, 2)),
                            n_head=n_head, n_embd=max(4, n_head * head_dim))  # fmt: skip
    return config, ref_gpt.random_params(config, np.random.default_rng(draw(seeds)))
PENALTIES = st.sampled_from([1.0, 0.0, -0.5, 0.5, 2.0])


def gpt_step_log_probs(params, config):
    """A GPT as a `step_log_probs` callable: log softmax of the last position's logits, from scratch."""
    return lambda prefixes: nn.log_softmax(ref_gpt.forward(params, config, prefixes)[:, -1], axis=-1)


def trigram_model(V: int, seed: int):
    """step_log_probs of a random trigram table: log p(. | last two tokens), O(1) logits."""
    table = nn.log_softmax(np.random.default_rng(seed).normal(0.0, 2.0, (V, V, V)), axis=-1)

    def step_log_probs(prefixes):
        return table[prefixes[:, -2] if prefixes.shape[1] > 1 else 0, prefixes[:, -1]]

    return step_log_probs


def all_hypotheses(step_log_probs, prompt_row, V, N, eos):
    """Every hypothesis (tokens, log_prob): length N without eos, or ending at its first eos."""
    out = []
    for length in range(1, N + 1):
        for y in itertools.product(range(V), repeat=length):
            ends = eos is not None and y[-1] == eos
            if (eos is not None and eos in y[:-1]) or (length < N and not ends):
                continue
            out.append((y, _log_prob(step_log_probs, prompt_row, y)))
    return out


def _log_prob(step_log_probs, prompt_row, y):
    total = 0.0
    for t, token in enumerate(y):
        prefix = np.concatenate([prompt_row, np.asarray(y[:t], dtype=np.int64)])[None, :]
        total += float(step_log_probs(prefix)[0, token])
    return total


def check_well_formed(result, step_log_probs, prompt, N, eos, lp, pad):
    B, T0 = prompt.shape
    assert np.all(result.sequences[:, :, :T0] == prompt[:, None, :])
    for b in range(B):
        scores = result.scores[b]
        assert np.all(scores[:-1] >= scores[1:]), scores
        for r in range(scores.shape[0]):
            L = int(result.lengths[b, r])
            y = tuple(int(t) for t in result.sequences[b, r, T0 : T0 + L])
            assert np.all(result.sequences[b, r, T0 + L :] == pad)
            if L == 0:
                assert scores[r] == -np.inf and result.log_probs[b, r] == -np.inf
                continue
            if eos is not None:
                assert eos not in y[:-1]
            assert L == N or y[-1] == eos
            truth = _log_prob(step_log_probs, prompt[b], y)
            assert math.isclose(result.log_probs[b, r], truth, rel_tol=1e-12, abs_tol=1e-12)
            assert scores[r] == result.log_probs[b, r] / float(L) ** lp


def _truncate_at_eos(tokens, T0, eos, pad):
    out = tokens.copy()
    for row in out:
        hits = np.flatnonzero(row[T0:] == eos)
        if hits.size:
            row[T0 + hits[0] + 1 :] = pad
    return out


@given(generic_gpts(), seeds, st.integers(1, 4), PENALTIES, st.sampled_from([True, False]), st.booleans())
def test_width_one_is_greedy(model, seed, N, lp, early, with_eos):
    config, params = model
    rng = np.random.default_rng(seed)
    N = min(N, config.block_size - 1)
    T0 = int(rng.integers(1, config.block_size - N + 2))
    prompt = rng.integers(0, config.vocab_size, size=(2, T0))
    eos = int(rng.integers(0, config.vocab_size)) if with_eos else None
    result = ref_gpt.beam_search(params, config, prompt, 1, N, eos=eos, length_penalty=lp, early_stopping=early)
    greedy = ref_gpt.greedy(params, config, prompt, N)
    if eos is not None:
        greedy = _truncate_at_eos(greedy, T0, eos, pad=eos)
    L = int(result.lengths.max())
    assert np.array_equal(result.sequences[:, 0], greedy[:, : T0 + L])
    assert np.all(greedy[:, T0 + L :] == (eos if eos is not None else -1))
    pad = eos if eos is not None else 0
    check_well_formed(result, gpt_step_log_probs(params, config), prompt, N, eos, lp, pad)


@given(seeds, st.integers(2, 3), st.integers(1, 3), PENALTIES, EARLY, st.booleans(), st.integers(0, 2))
def test_exhaustive_width_finds_every_hypothesis(seed, V, N, lp, early, with_eos, extra_width):
    rng = np.random.default_rng(seed)
    step_log_probs = trigram_model(V, seed)
    eos = int(rng.integers(0, V)) if with_eos else None
    prompt = rng.integers(0, V, size=(2, int(rng.integers(1, 3))))
    W = V**N + extra_width
    result = beam.beam_search(step_log_probs, prompt, W, N, eos=eos, length_penalty=lp, early_stopping=early,
                              num_return_sequences=W)  # fmt: skip
    for b in range(2):
        hyps = all_hypotheses(step_log_probs, prompt[b], V, N, eos)
        truth = sorted((lp_ / float(len(y)) ** lp for y, lp_ in hyps), reverse=True)
        got = result.scores[b]
        assert np.allclose(got[: len(truth)], truth, rtol=1e-12, atol=1e-12), (got, truth)
        assert np.all(got[len(truth) :] == -np.inf)
        best_y, best_lp = max(hyps, key=lambda h: h[1] / float(len(h[0])) ** lp)
        L = len(best_y)
        if len(truth) == 1 or truth[0] - truth[1] > 1e-9:  # a unique best: the same tokens
            assert tuple(result.sequences[b, 0, prompt.shape[1] : prompt.shape[1] + L]) == best_y
            assert result.lengths[b, 0] == L
    check_well_formed(result, step_log_probs, prompt, N, eos, lp, pad=eos if eos is not None else 0)


@given(seeds, st.integers(2, 6), st.integers(1, 5), st.integers(1, 4), PENALTIES, EARLY, st.booleans())
def test_hypotheses_are_well_formed(seed, V, N, W, lp, early, with_eos):
    rng = np.random.default_rng(seed)
    step_log_probs = trigram_model(V, seed)
    eos = int(rng.integers(0, V)) if with_eos else None
    pad = int(rng.integers(0, V))
    prompt = rng.integers(0, V, size=(3, 2))
    R = int(rng.integers(1, W + 1))
    result = beam.beam_search(step_log_probs, prompt, W, N, eos=eos, length_penalty=lp, early_stopping=early,
                              num_return_sequences=R, pad=pad)  # fmt: skip
    assert result.sequences.shape[:2] == (3, R) and result.scores.shape == (3, R)
    assert result.sequences.dtype == np.int64 and result.lengths.dtype == np.int64
    check_well_formed(result, step_log_probs, prompt, N, eos, lp, pad)


def test_early_stopping_modes_differ():
    """The three modes are three algorithms: on this model and these settings each stops
    at a different point (True: as soon as W hypotheses are finished; False: HF's
    current-length bound; "never": the exact bound), and "never" finds a better best."""
    step_log_probs = trigram_model(4, 9)
    prompt = np.array([[0, 1]])
    found = {}
    for early in (True, False, "never"):
        r = beam.beam_search(step_log_probs, prompt, 2, 8, eos=0, length_penalty=2.0, early_stopping=early,
                             num_return_sequences=2)  # fmt: skip
        found[early] = (tuple(r.scores[0]), tuple(r.lengths[0]))
    assert len(set(found.values())) == 3, found
    assert found["never"][0][0] > found[False][0][0] > found[True][0][0]


def test_zero_new_tokens_and_missing_hypotheses():
    step_log_probs = trigram_model(2, 0)
    prompt = np.array([[1], [0]])
    r = beam.beam_search(step_log_probs, prompt, 3, 0, num_return_sequences=2)
    assert np.array_equal(r.sequences, np.repeat(prompt[:, None], 2, axis=1))
    assert r.scores.tolist() == [[0.0, -np.inf]] * 2 and r.lengths.tolist() == [[0, 0]] * 2
    r = beam.beam_search(step_log_probs, prompt, 3, 1, num_return_sequences=3, pad=1)  # only V=2 hypotheses
    assert r.lengths.tolist() == [[1, 1, 0]] * 2 and np.all(r.scores[:, 2] == -np.inf)
    assert np.all(r.sequences[:, 2, 1] == 1)


def test_zero_probability_tokens_are_never_chosen():
    V = 4

    def step_log_probs(prefixes):  # token 2 impossible; token 3 impossible after a 1
        logp = np.log(np.full((prefixes.shape[0], V), 1.0 / 3))
        logp[:, 2] = -np.inf
        logp[prefixes[:, -1] == 1, 3] = -np.inf
        logp[prefixes[:, -1] == 1, 0] = np.log(2.0 / 3)
        return logp

    r = beam.beam_search(step_log_probs, np.array([[0]]), 16, 2, num_return_sequences=16)
    n = int(np.sum(r.lengths > 0))
    assert n == 3 * 3 - 1  # 3 first tokens, 3 second tokens each, minus 1 -> 3
    assert not np.any(r.sequences[0, :n, 1:] == 2)
    assert np.all(np.isfinite(r.scores[0, :n]))


def test_ties_go_to_the_smaller_index():
    """Uniform log-probs: every candidate ties; the ranking is by flat index (beam, then token)."""
    V = 3
    uniform = lambda prefixes: np.full((prefixes.shape[0], V), -math.log(V))  # noqa: E731
    r = beam.beam_search(uniform, np.array([[0]]), 4, 2, num_return_sequences=4)
    assert r.sequences[0, :, 1:].tolist() == [[0, 0], [0, 1], [0, 2], [1, 0]]


@pytest.mark.parametrize("early, expected", [(True, [0]), (False, [0]), ("never", [1, 1, 0])])
def test_stopping_rules_on_ties(early, expected):
    """Uniform log-probs, eos 0, width 1, length_penalty 2. Step 1 finishes (0) at -log 3 and keeps
    (1) at the same raw score. True stops (full); False stops too, since a running beam that only
    *ties* the worst finished one cannot beat it (HF: best > worst, strictly); "never" bounds
    (1) by -log 3 / 3 ** 2 > -log 3 and goes on, finding (1, 0) at -2 log 3 / 4, then (1, 1, 0)
    at -3 log 3 / 9, each better than the last."""
    V = 3
    uniform = lambda prefixes: np.full((prefixes.shape[0], V), -math.log(V))  # noqa: E731
    r = beam.beam_search(uniform, np.array([[2]]), 1, 3, eos=0, length_penalty=2.0, early_stopping=early)
    L = len(expected)
    assert r.lengths.tolist() == [[L]] and r.sequences[0, 0, 1:].tolist() == expected
    assert math.isclose(r.scores[0, 0], -L * math.log(V) / L**2, rel_tol=1e-15)


@given(generic_gpts(), seeds, st.integers(1, 5), PENALTIES, EARLY, st.booleans())
def test_fast_equals_reference(model, seed, W, lp, early, with_eos):
    config, params = model
    rng = np.random.default_rng(seed)
    N = int(rng.integers(1, config.block_size))
    T0 = int(rng.integers(1, config.block_size - N + 2))
    prompt = rng.integers(0, config.vocab_size, size=(int(rng.integers(1, 4)), T0))
    kw = dict(eos=int(rng.integers(0, config.vocab_size)) if with_eos else None, length_penalty=lp,
              early_stopping=early, num_return_sequences=int(rng.integers(1, W + 1)))  # fmt: skip
    truth = ref_gpt.beam_search(params, config, prompt, W, N, **kw)
    got = fast_beam.gpt_beam_search(params, config, prompt, W, N, **kw)
    assert np.array_equal(got.sequences.numpy(), truth.sequences)
    assert np.array_equal(got.lengths.numpy(), truth.lengths)
    assert np.allclose(got.scores.numpy(), truth.scores, rtol=1e-10, atol=1e-10)
    assert np.allclose(got.log_probs.numpy(), truth.log_probs, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- several eos ids, stop sequences, processors


def _processed_log_prob(step_log_probs, processors, prompt_row, y):
    """sum_t process(step_log_probs(prefix_t), prefix_t)[y_t]: the score beam search sums."""
    total = 0.0
    for t, token in enumerate(y):
        prefix = np.concatenate([prompt_row, np.asarray(y[:t], dtype=np.int64)])[None, :]
        logp = step_log_probs(prefix)
        for process in processors:
            logp = process(logp, prefix)
        total += float(logp[0, token])
    return total


def _ends(ids, eos, stops):
    return ids[-1] in eos or any(len(s) <= len(ids) and tuple(ids[len(ids) - len(s) :]) == s for s in stops)


@given(seeds, st.integers(2, 3), st.integers(1, 3), PENALTIES, EARLY, st.booleans())
def test_exhaustive_search_with_several_eos_stop_sequences_and_processors(seed, V, N, lp, early, with_processors):
    """Exhaustive width: the hypotheses are exactly those the finishing rule allows (ending at the
    first eos id or completed stop sequence, else of length N; a stop sequence may start in the
    prompt), scored by the sum of the *processed* log-probs, those of score -inf absent."""
    rng = np.random.default_rng(seed)
    step_log_probs = trigram_model(V, seed)
    prompt = rng.integers(0, V, size=(2, 2))
    eos = (0, 1) if V == 3 else (1,)
    stops = ((int(rng.integers(0, V)), int(rng.integers(0, V))),)
    processors = []
    if with_processors:  # a penalty (changes scores) and a constraint (removes candidates)
        config = GenerationConfig(repetition_penalty=1.7, no_repeat_ngram_size=2, eos_token_id=eos)
        processors = generation.plan(config, 2, V, N).processors
    W = V**N
    result = beam.beam_search(step_log_probs, prompt, W, N, eos=eos, length_penalty=lp, early_stopping=early,
                              num_return_sequences=W, processors=processors, stop_sequences=stops)  # fmt: skip
    for b in range(2):
        row = tuple(int(t) for t in prompt[b])
        hyps = []
        for length in range(1, N + 1):
            for y in itertools.product(range(V), repeat=length):
                if any(_ends(row + y[: t + 1], eos, stops) for t in range(length - 1)):
                    continue
                if length < N and not _ends(row + y, eos, stops):
                    continue
                total = _processed_log_prob(step_log_probs, processors, prompt[b], y)
                if total > -np.inf:
                    hyps.append((y, total))
        truth = sorted((s / float(len(y)) ** lp for y, s in hyps), reverse=True)
        got = result.scores[b]
        assert np.allclose(got[: len(truth)], truth, rtol=1e-12, atol=1e-12), (got, truth)
        assert np.all(got[len(truth) :] == -np.inf)
        for r in range(len(truth)):
            y = tuple(int(t) for t in result.sequences[b, r, 2 : 2 + int(result.lengths[b, r])])
            assert math.isclose(result.log_probs[b, r], _processed_log_prob(step_log_probs, processors, prompt[b], y),
                                rel_tol=1e-12, abs_tol=1e-12)  # fmt: skip


def _padded_sizes(rng, config, B_max=3):
    """(N, T0, B) for a padded-batch search: N >= 2 new tokens (so the cache is reordered at least
    once), T0 >= 2 prompt positions (so there is room for pads), T0 + N - 1 <= block_size."""
    N = int(rng.integers(2, config.block_size - 1))
    T0 = int(rng.integers(2, config.block_size - N + 2))
    return N, T0, int(rng.integers(1, B_max + 1))


def _random_mask(rng, B, T0):
    """(B, T0) 0/1 with at least one 1 per row: left padding, right padding and holes alike."""
    mask = rng.integers(0, 2, size=(B, T0))
    mask[np.arange(B), rng.integers(0, T0, size=B)] = 1
    return mask


def _alone_processors(T0, V, N, eos):
    """Processors that read the ids only through their length relative to the prompt (so a row
    scores the same with or without its pads): suppress_tokens and min_new_tokens."""
    config = GenerationConfig(suppress_tokens=[V - 1], min_new_tokens=1, eos_token_id=eos)
    return generation.plan(config, T0, V, N).processors, generation.plan(config, T0, V, N,
                                                                           table=fast_sampling.PROCESSORS).processors


@given(generic_gpts(min_block_size=4), seeds, st.integers(1, 4), PENALTIES, EARLY, st.booleans())
def test_a_padded_row_has_the_beams_of_the_row_alone(model, seed, W, lp, early, with_eos):
    """A row of a padded batch (any 0/1 attention_mask: left, right, holes) gets exactly the
    hypotheses and scores of its real tokens searched alone -- reference and fast (its KV
    cache carrying the mask through every reorder)."""
    config, params = model
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    N, T0, B = _padded_sizes(rng, config)
    prompt = rng.integers(0, V, size=(B, T0))
    mask = _random_mask(rng, B, T0)
    eos = int(rng.integers(0, V)) if with_eos else None
    R = int(rng.integers(1, W + 1))
    kw = dict(eos=eos, length_penalty=lp, early_stopping=early, num_return_sequences=R, pad=0)
    padded = {"reference": ref_gpt.beam_search(params, config, prompt, W, N, attention_mask=mask,
                                               processors=_alone_processors(T0, V, N, eos)[0], **kw),
              "fast": fast_beam.gpt_beam_search(params, config, prompt, W, N, attention_mask=mask,
                                                processors=_alone_processors(T0, V, N, eos)[1], **kw)}  # fmt: skip
    for b in range(B):
        row = prompt[b][mask[b] == 1][None, :]
        alone = ref_gpt.beam_search(params, config, row, W, N, processors=_alone_processors(row.shape[1], V, N, eos)[0],
                                    **kw)  # fmt: skip
        L = alone.sequences.shape[2] - row.shape[1]
        for name, result in padded.items():
            seqs = np.asarray(result.sequences)[b]
            assert np.array_equal(seqs[:, :T0], np.repeat(prompt[b][None], R, axis=0))
            assert np.array_equal(seqs[:, T0 : T0 + L], alone.sequences[0, :, row.shape[1] :]), (name, seqs, alone)
            assert np.all(seqs[:, T0 + L :] == 0)
            assert np.array_equal(np.asarray(result.lengths)[b], alone.lengths[0])
            assert_close(f"{name}: padded row's beam scores vs the row alone", alone.scores[0],
                         np.asarray(result.scores)[b], "float64")  # fmt: skip


@given(generic_gpts(min_vocab=3, min_block_size=4), seeds, st.integers(1, 4), PENALTIES, EARLY)
def test_fast_equals_reference_padded_with_processors(model, seed, W, lp, early):
    """fast.beam = reference.gpt.beam_search on padded batches with several eos ids, a stop
    sequence and HF's penalties and constraints (float64)."""
    config, params = model
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    N, T0, B = _padded_sizes(rng, config)
    prompt = rng.integers(0, V, size=(B, T0))
    mask = _random_mask(rng, B, T0)
    eos = tuple(int(e) for e in rng.choice(V, size=min(2, V - 1), replace=False))
    settings = dict(repetition_penalty=1.3, no_repeat_ngram_size=2, bad_words_ids=[[int(rng.integers(0, V))] * 2],
                    min_new_tokens=1, eos_token_id=eos)  # fmt: skip
    processors = {table_name: generation.plan(GenerationConfig(**settings), T0, V, N, table=table).processors
                  for table_name, table in (("reference", None), ("fast", fast_sampling.PROCESSORS))}  # fmt: skip
    kw = dict(eos=eos, length_penalty=lp, early_stopping=early, num_return_sequences=int(rng.integers(1, W + 1)),
              attention_mask=mask, stop_sequences=[[int(rng.integers(0, V)), int(rng.integers(0, V))]])  # fmt: skip
    try:
        truth = ref_gpt.beam_search(params, config, prompt, W, N, processors=processors["reference"], **kw)
    except ValueError as error:  # the processors removed every token of a beam: they refuse the next row
        assert "entirely -inf" in str(error)
        event("no token left: both refuse")
        with pytest.raises(ValueError, match="entirely -inf"):
            fast_beam.gpt_beam_search(params, config, prompt, W, N, processors=processors["fast"], **kw)
        return
    got = fast_beam.gpt_beam_search(params, config, prompt, W, N, processors=processors["fast"], **kw)
    assert np.array_equal(got.sequences.numpy(), truth.sequences), (got.sequences, truth.sequences)
    assert np.array_equal(got.lengths.numpy(), truth.lengths)
    assert_close("beam scores (fast vs reference)", truth.scores, got.scores.numpy(), "float64")
    assert_close("beam log_probs (fast vs reference)", truth.log_probs, got.log_probs.numpy(), "float64")


@given(generic_gpts(min_vocab=4, min_block_size=4), seeds, st.sampled_from([True, False]))
def test_width_one_with_constraints_is_greedy_generate(model, seed, early):
    """One beam under constraints that only remove tokens (no_repeat_ngram, bad words, min_new_tokens,
    suppress, forced eos) picks the argmax of what is left at each step: generate with num_beams=1
    (greedy, processors on the logits) and with the beam path (processors on the log-probs) agree,
    padded batches included."""
    config, params = model
    rng = np.random.default_rng(seed)
    V = config.vocab_size
    N, T0, _ = _padded_sizes(rng, config)
    prompt = rng.integers(0, V, size=(2, T0))
    mask = _random_mask(rng, 2, T0)
    settings = dict(max_new_tokens=N, no_repeat_ngram_size=2, bad_words_ids=[[0, 1]], min_new_tokens=min(N - 1, 1),
                    suppress_tokens=[V - 1], forced_eos_token_id=1, eos_token_id=[1], pad_token_id=0,
                    early_stopping=early)  # fmt: skip
    processors = generation.plan(GenerationConfig(**settings), T0, V).processors

    def beam_output():
        return beam.as_generate_output(ref_gpt.beam_search(params, config, prompt, 1, N, eos=1, pad=0,
                                                           early_stopping=early, attention_mask=mask,
                                                           processors=processors))  # fmt: skip

    try:
        greedy = ref_gpt.generate(params, config, prompt, generation_config=GenerationConfig(**settings),
                                  attention_mask=mask)  # fmt: skip
    except ValueError as error:  # the constraints left no token (greedy refuses; a beam just ends): rare
        assert "entirely -inf" in str(error)
        event("no token left")
        assume(False)
    one_beam = beam_output()
    assert np.array_equal(one_beam, greedy), (one_beam, greedy)


@given(generic_gpts(min_block_size=4), seeds, st.integers(2, 4), st.integers(1, 3))
def test_generate_is_beam_search_flattened(model, seed, W, R):
    """generate(generation_config=GenerationConfig(num_beams=W, num_return_sequences=R, ...)) returns
    HF's layout, (B * R, T0 + L): row b * R + r is prompt b's r-th best hypothesis."""
    config, params = model
    rng = np.random.default_rng(seed)
    R = min(R, W)
    N, T0, _ = _padded_sizes(rng, config)
    prompt = rng.integers(0, config.vocab_size, size=(2, T0))
    mask = _random_mask(rng, 2, T0)
    gc = GenerationConfig(max_new_tokens=N, num_beams=W, num_return_sequences=R, eos_token_id=0, pad_token_id=0,
                          length_penalty=0.7)  # fmt: skip
    result = ref_gpt.beam_search(params, config, prompt, W, N, eos=0, pad=0, num_return_sequences=R,
                                 length_penalty=0.7, attention_mask=mask)  # fmt: skip
    want = result.sequences.reshape(2 * R, -1)
    assert np.array_equal(ref_gpt.generate(params, config, prompt, generation_config=gc, attention_mask=mask), want)
    assert np.array_equal(fast_gpt.generate(params, config, prompt, generation_config=gc,
                                            attention_mask=mask).numpy(), want)  # fmt: skip


@given(gpt_models(min_block_size=3), seeds, EARLY)
def test_pure(model, seed, early):
    config, params = model
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, size=(2, 1))
    assert_pure(ref_gpt.beam_search, params, config, prompt, 2, 2, eos=0, early_stopping=early, num_return_sequences=2)


_BAD = [
    (dict(beam_width=0), "beam_width"),
    (dict(beam_width=2.0), "beam_width"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(eos=5), "eos"),
    (dict(eos=-1), "eos"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(length_penalty=float("inf")), "length_penalty"),
    (dict(length_penalty="1"), "length_penalty"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(early_stopping=1), "early_stopping"),
    (dict(num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=0), "num_return_sequences"),
    (dict(pad=5), "pad"),
    (dict(prompt=np.zeros((2, 2))), "prompt"),
    (dict(prompt=np.zeros(2, dtype=np.int64)), "prompt"),
    (dict(prompt=np.full((1, 2), 5)), "prompt"),
    (dict(prompt=np.zeros((1, 6), dtype=np.int64)), "prompt"),  # T0 + max_new_tokens - 1 > block_size
]


def bad_call_arguments(config, **overrides):
    kw = dict(prompt=np.zeros((1, 2), dtype=np.int64), beam_width=2, max_new_tokens=3, eos=None)
    kw.update(overrides)
    prompt, W, N = kw.pop("prompt"), kw.pop("beam_width"), kw.pop("max_new_tokens")
    return (prompt, W, N), kw


@pytest.mark.parametrize("overrides, arg", _BAD, ids=[a + str(i) for i, (_, a) in enumerate(_BAD)])
def test_bad_arguments_are_named(overrides, arg):
    config = ref_gpt.Config(vocab_size=5, block_size=6, n_layer=1, n_head=1, n_embd=2)
    params = ref_gpt.random_params(config, np.random.default_rng(0))
    args, kw = bad_call_arguments(config, **overrides)
    with pytest.raises(ValueError, match=arg):
        ref_gpt.beam_search(params, config, *args, **kw)


def test_bad_log_probs_are_named():
    prompt = np.zeros((1, 1), dtype=np.int64)
    with pytest.raises(ValueError, match="step_log_probs"):
        beam.beam_search(lambda p: np.full((p.shape[0], 3), np.nan), prompt, 2, 2)
    with pytest.raises(ValueError, match="step_log_probs"):
        beam.beam_search(lambda p: np.zeros((p.shape[0] + 1, 3)), prompt, 2, 2)
    with pytest.raises(ValueError, match="eos"):
        beam.beam_search(lambda p: np.zeros((p.shape[0], 3)), prompt, 2, 2, eos=3)
