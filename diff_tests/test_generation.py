"""Padded batches and end of sequence: reference (float64 NumPy, the truth) against every backend.

A batch of rows of different lengths in four layouts -- left padding, right padding, a hole
in the middle of a row, no padding -- through forward, log_prob, prefill + steps through the
KV cache, and generate with eos, pad, stop sequences, min_new_tokens, repetition penalty and
num_return_sequences. float64 must give the reference's numbers and tokens; low precision is
judged by the table's rule (logits against the naive float32 baseline; tokens where the
reference's margin is clear of the implementation's logit error, `assert_tokens`).
"""

from __future__ import annotations

import numpy as np
import pytest

from diff_tests.conftest import check
from chainrule.fast import gpt as fast_gpt
from chainrule.reference import generation
from chainrule.reference import gpt as ref_gpt
from chainrule.reference.checks import assert_tokens, naive_float32

CONFIG = ref_gpt.Config(vocab_size=37, block_size=48, n_layer=2, n_head=2, n_embd=6, bos_token=1)
ROWS = [[5, 9, 2, 30, 17, 3, 8, 20, 11], [11, 31, 7], [4], [22, 4, 4, 21, 6, 0]]
PAD = 0


def params():
    return ref_gpt.random_params(CONFIG, np.random.default_rng(7))


def layout(name: str):
    """ROWS in one (B, T) batch -> (tokens, mask) for name in left / right / hole / none."""
    if name == "none":
        T = min(len(r) for r in ROWS)
        return np.array([r[:T] for r in ROWS]), np.ones((len(ROWS), T), dtype=np.int64)
    T = max(len(r) for r in ROWS) + (2 if name == "hole" else 0)
    tokens = np.full((len(ROWS), T), PAD, dtype=np.int64)
    mask = np.zeros((len(ROWS), T), dtype=np.int64)
    for b, row in enumerate(ROWS):
        if name == "hole":  # the first token, two pads, then the rest; padded on the right
            cols = [0] + list(range(3, 3 + len(row) - 1))
        else:
            start = T - len(row) if name == "left" else 0
            cols = list(range(start, start + len(row)))
        tokens[b, cols] = row
        mask[b, cols] = 1
    return tokens, mask


LAYOUTS = ["left", "right", "hole", "none"]


def _model(side):
    return ref_gpt if side.is_cupy else fast_gpt


@pytest.mark.parametrize("name", LAYOUTS)
def test_padded_logits(side, name):
    tokens, mask = layout(name)
    p = params()
    truth = ref_gpt.forward(p, CONFIG, tokens, mask)
    got = side.numpy(_model(side).forward(side.params(p), CONFIG, side.array(tokens), side.array(mask)))
    naive = naive_float32(ref_gpt.forward, p, CONFIG, tokens, mask) if side.dtype == "float32" else None
    check(f"{name}-padded logits", truth, got, side, naive=naive)
    assert np.all(got[mask == 0] == 0.0), "pads' logits are 0 by definition, exactly"


@pytest.mark.parametrize("name", LAYOUTS)
def test_padded_log_prob(side, name):
    tokens, mask = layout(name)
    p = params()
    truth = ref_gpt.log_prob(p, CONFIG, tokens, mask)
    got = side.numpy(_model(side).log_prob(side.params(p), CONFIG, side.array(tokens), side.array(mask)))
    naive = naive_float32(ref_gpt.log_prob, p, CONFIG, tokens, mask) if side.dtype == "float32" else None
    check(f"{name}-padded log_prob", truth, got, side, naive=naive)


@pytest.mark.parametrize("name", ["left", "right", "hole"])
def test_padded_prefill_then_steps(side, name):
    """Prefill the padded batch, then 3 steps: the logits of forward on the whole, mask extended by ones."""
    tokens, mask = layout(name)
    more = np.random.default_rng(3).integers(0, CONFIG.vocab_size, size=(len(ROWS), 3))
    whole, whole_mask = np.concatenate([tokens, more], 1), np.concatenate([mask, np.ones_like(more)], 1)
    p = params()
    truth = ref_gpt.forward(p, CONFIG, whole, whole_mask)
    m, P = _model(side), side.params(p)
    cache = m.init_cache(P, CONFIG, len(ROWS))
    logits, cache = m.prefill(P, CONFIG, cache, side.array(tokens), side.array(mask))
    got = [side.numpy(logits)]
    for t in range(3):
        logits_t, cache = m.step(P, CONFIG, cache, side.array(more[:, t]))
        got.append(side.numpy(logits_t)[:, None])
    naive = naive_float32(ref_gpt.forward, p, CONFIG, whole, whole_mask) if side.dtype == "float32" else None
    check(f"{name}-padded prefill + steps", truth, np.concatenate(got, 1), side, naive=naive)


SETTINGS = {
    "greedy": dict(max_new_tokens=12),
    "eos": dict(max_new_tokens=12, eos_token_id=[3, 8], pad_token_id=PAD),
    "eos+min_new_tokens": dict(max_new_tokens=12, eos_token_id=3, pad_token_id=PAD, min_new_tokens=5),
    "stop sequence": dict(max_new_tokens=12, stop_sequences=[[4, 4], [9]], pad_token_id=PAD),
    "repetition_penalty": dict(max_new_tokens=12, repetition_penalty=1.6, eos_token_id=3, pad_token_id=PAD),
    "sampling": dict(max_new_tokens=12, do_sample=True, top_k=10, temperature=0.8, eos_token_id=[3, 8],
                     pad_token_id=PAD, num_return_sequences=2),
}


def _generate(module, P, tokens, mask, gen, u=None, array=np.asarray):
    return module.generate(P, CONFIG, array(tokens), generation_config=gen, attention_mask=array(mask),
                           u=None if u is None else array(u))  # fmt: skip


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["left", "right"])
def test_generate_padded_with_eos(side, name, setting):
    """float64: the reference's tokens exactly. Low precision: each row's tokens judged against the
    reference's choice given the same prefix (the row alone, its pads dropped), up to its end."""
    tokens, mask = layout(name)
    gen = generation.GenerationConfig(**SETTINGS[setting])
    p = params()
    R = gen.num_return_sequences
    u = np.random.default_rng(5).random((len(ROWS) * R, 12)) if gen.do_sample else None
    want = _generate(ref_gpt, p, tokens, mask, gen, u)
    got = side.numpy(_generate(_model(side), side.params(p), tokens, mask, gen, u, side.array))
    if side.dtype == "float64":
        assert got.shape == want.shape and np.array_equal(got, want), f"{setting}: {got} != {want}"
        return
    if gen.repetition_penalty != 1.0 or gen.min_new_tokens or gen.stop_sequences:
        pytest.skip("low precision is judged on raw logits (assert_tokens takes no processors)")
    T0 = tokens.shape[1]
    for b in range(got.shape[0]):
        row = np.array(ROWS[b // R])
        new = got[b, T0:]
        eos = np.isin(new, gen.eos_token_id or ())
        end = int(np.argmax(eos)) + 1 if eos.any() else len(new)
        assert np.all(new[end:] == PAD), "a finished row holds pad"
        if gen.top_k or gen.temperature != 1.0:
            continue  # the warpers are judged in test_sampling; the eos and pad rule is checked above
        seq = np.concatenate([row, new[:end]])[None]
        assert_tokens(f"[{side.name}] {setting} row {b}", row[None], seq,
                      lambda x: ref_gpt.forward(p, CONFIG, x), side.dtype,
                      fast=lambda x: side.numpy(fast_gpt.forward(side.params(p), CONFIG, side.array(x))))  # fmt: skip


def test_generate_refuses_bad_input(side):
    tokens, mask = layout("left")
    m, P = _model(side), side.params(params())
    cases = [
        (dict(attention_mask=np.ones((4, 3), dtype=np.int64)), "attention_mask"),
        (dict(attention_mask=np.where(mask == 1, 2, 0)), "attention_mask"),
        (dict(attention_mask=mask.astype(np.float64)), "attention_mask"),
        (dict(attention_mask=np.zeros_like(mask)), "attention_mask"),
        (dict(generation_config=generation.GenerationConfig(max_new_tokens=3, eos_token_id=37)), "eos_token_id"),
        (dict(generation_config=generation.GenerationConfig(max_new_tokens=3, eos_token_id=3, pad_token_id=37)),
         "pad_token_id"),
        (dict(generation_config=generation.GenerationConfig(max_new_tokens=3, do_sample=True)), "u"),
    ]
    for kwargs, name in cases:
        if "attention_mask" in kwargs and kwargs["attention_mask"].dtype != np.float64:
            kwargs["attention_mask"] = side.array(kwargs["attention_mask"])  # floats stay NumPy: refused as such
        kwargs.setdefault("generation_config", generation.GenerationConfig(max_new_tokens=3))
        with pytest.raises(ValueError, match=f"^(generation_config.)?{name}"):
            m.generate(P, CONFIG, side.array(tokens), **kwargs)
    for field, value in (("repetition_penalty", 0.0), ("pad_token_id", -1), ("top_p", 0.0), ("max_length", 0)):
        with pytest.raises(ValueError, match=f"^generation_config.{field}"):
            generation.GenerationConfig(**{field: value})


@pytest.mark.parametrize("model", ["rnn", "nplm"])
def test_recurrent_and_window_models_with_eos(side, model):
    """The same loop drives the RNN LM and the NPLM: eos, pad, repetition penalty, sampling."""
    if side.is_cupy:
        pytest.skip("fast.rnn / fast.nplm are torch models")
    from chainrule.fast import nplm as fast_nplm, rnn as fast_rnn
    from chainrule.reference import nplm as ref_nplm, rnn as ref_rnn

    ref, fast = (ref_rnn, fast_rnn) if model == "rnn" else (ref_nplm, fast_nplm)
    config = (ref_rnn.Config(kind="lstm", vocab_size=9, n_embd=4, hidden=6) if model == "rnn"
              else ref_nplm.Config(vocab_size=9, order=3, n_embd=4, hidden=6))  # fmt: skip
    p = ref.random_params(config, np.random.default_rng(2))
    prompt = np.array([[1, 2], [3, 4], [5, 6]])
    u = np.random.default_rng(3).random((3, 10))
    gen = generation.GenerationConfig(max_new_tokens=10, do_sample=True, top_k=None, eos_token_id=2, pad_token_id=0,
                                      repetition_penalty=1.4)  # fmt: skip
    want = ref.generate(p, config, prompt, generation_config=gen, u=u)
    got = side.numpy(fast.generate(side.params(p), config, side.array(prompt), generation_config=gen,
                                   u=side.array(u, dtype=None)))  # fmt: skip
    assert (want[:, 2:] == 2).any(), "the case must exercise eos"
    if side.dtype == "float64":
        assert np.array_equal(got, want)
    for row in got[:, 2:]:
        ends = np.flatnonzero(row == 2)
        if ends.size:
            assert np.all(row[ends[0] + 1 :] == 0)
