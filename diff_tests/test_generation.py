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


def _processed_steps(forward, processors, seq, mask, T0, n):
    """The step logits a generation of seq (1, T0 + n) chose from, after `processors`: row k is
    processors(forward(seq[:, :-1], mask)[:, T0 - 1 + k], ids = seq[:, :T0 + k]) -> (1, n, V) float64,
    the first step's logits taken at the prompt's last real position (right padding)."""
    logits = forward(seq[:, :-1], mask[:, :-1])  # (1, T0 + n - 1, V), raw, in the implementation's dtype
    last_real = int(np.flatnonzero(mask[0, :T0])[-1])
    steps = []
    for k in range(n):
        x = logits[:, T0 - 1 + k if k else last_real]
        for process in processors:
            x = process(x, seq[:, : T0 + k])
        steps.append(np.asarray(x.detach().double().numpy() if hasattr(x, "detach") else x, dtype=np.float64))
    return np.stack(steps, axis=1)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("name", ["left", "right"])
def test_generate_padded_with_eos(side, name, setting):
    """float64: the reference's tokens exactly. Low precision: each row's tokens, up to its end, judged
    against the reference's choice given the same prefix (`assert_tokens` on the processed step
    logits of both: the reference's, and the backend's own as a measure of its error)."""
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
    import torch

    T0, P = tokens.shape[1], side.params(p)
    ref_processors = generation.plan(gen, T0, CONFIG.vocab_size, u=u).processors
    fast_processors = generation.plan(gen, T0, CONFIG.vocab_size, u=u, table=side.sampling.PROCESSORS).processors
    for b in range(got.shape[0]):
        new = got[b, T0:]
        finished = np.isin(new, gen.eos_token_id or ()) | [
            generation.ends_with(got[b : b + 1, : T0 + k + 1], gen.stop_sequences)[0] for k in range(len(new))]
        end = int(np.argmax(finished)) + 1 if finished.any() else len(new)
        assert np.all(new[end:] == PAD), "a finished row holds pad"
        seq = got[b : b + 1, : T0 + end]
        seq_mask = np.concatenate([mask[b // R : b // R + 1], np.ones((1, end), dtype=np.int64)], axis=1)
        reference = _processed_steps(lambda x, m: ref_gpt.forward(p, CONFIG, x, m), ref_processors, seq, seq_mask,
                                     T0, end)  # fmt: skip
        fast = _processed_steps(lambda x, m: fast_gpt.forward(P, CONFIG, torch.as_tensor(x), torch.as_tensor(m)).float(),
                                fast_processors, torch.as_tensor(seq), seq_mask, T0, end)  # fmt: skip
        assert_tokens(f"[{side.name}] {setting} row {b}", seq[:, :T0], seq, reference, side.dtype, fast=fast,
                      u=None if u is None else u[b : b + 1, :end])  # fmt: skip


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
