"""Properties of padded batches and of generation with end of sequence, on the reference and
on the fast path (float64).

- padding invariance: a row's logits at its real positions do not depend on how much padding
  it carries, on which side, or on holes; nor on the pad id (`compare_padding`, and
  direct draws of random layouts);
- generation of a padded batch = each row generated alone (left or right padding);
- eos ends rows independently: a row's tokens in a batch equal its tokens alone (with the
  same uniforms), up to and including its eos; after it, only pad; the loop stops when
  every row has ended;
- the history-aware repetition penalty during generation equals a hand-written loop that
  penalizes the prompt and every generated token.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from chainrule.reference import generation
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import sampling as ref_sampling
from chainrule.reference.checks import assert_close, compare_padding
from properties.conftest import gpt_models, seeds


@st.composite
def padded_layouts(draw, config, max_rows=3):
    """(rows: list of 1-D token arrays, tokens (B, T), mask (B, T)): rows of random lengths with random
    left padding, right padding and holes, T <= block_size."""
    B = draw(st.integers(1, max_rows))
    rng = np.random.default_rng(draw(seeds))
    T = draw(st.integers(1, config.block_size))
    rows, tokens, mask = [], np.zeros((B, T), dtype=np.int64), np.zeros((B, T), dtype=np.int64)
    for b in range(B):
        real = np.zeros(T, dtype=bool)
        n = int(rng.integers(1, T + 1))
        real[np.sort(rng.choice(T, size=n, replace=False))] = True  # any pattern: pads and holes anywhere
        row = rng.integers(0, config.vocab_size, size=n)
        tokens[b, real] = row
        tokens[b, ~real] = rng.integers(0, config.vocab_size, size=T - n)  # pads carry any id
        mask[b] = real
        rows.append(row)
    return rows, tokens, mask


@given(gpt_models(), st.data())
def test_padded_logits_are_the_rows_alone(model, data):
    config, params = model
    rows, tokens, mask = data.draw(padded_layouts(config))
    got = ref_gpt.forward(params, config, tokens, mask)
    fast = fast_gpt.forward(fb.to_torch(params, "cpu", torch.float64), config, torch.from_numpy(tokens),
                            torch.from_numpy(mask)).numpy()  # fmt: skip
    for b, row in enumerate(rows):
        alone = ref_gpt.forward(params, config, row[None])[0]
        assert_close("reference padded vs alone", alone, got[b][mask[b] == 1], "float64")
        assert_close("fast padded vs alone", alone, fast[b][mask[b] == 1], "float64")
    assert np.all(got[mask == 0] == 0.0) and np.all(fast[mask == 0] == 0.0)


@given(gpt_models(min_block_size=2), st.data())
def test_compare_padding_passes_for_both(model, data):
    config, params = model
    T = data.draw(st.integers(1, config.block_size - 1))
    tokens = np.random.default_rng(data.draw(seeds)).integers(0, config.vocab_size, size=(2, T))
    pad = config.block_size - T
    P = fb.to_torch(params, "cpu", torch.float64)
    for fn in (lambda x, m: ref_gpt.forward(params, config, x, m),
               lambda x, m: fast_gpt.forward(P, config, torch.as_tensor(x), torch.as_tensor(m))):  # fmt: skip
        result = compare_padding(fn, tokens, max_pad=pad, pad_id=data.draw(st.integers(0, config.vocab_size - 1)))
        assert result.passed, str(result)


@given(gpt_models(min_block_size=6), st.data())
def test_padded_generation_is_each_row_alone(model, data):
    config, params = model
    B = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(seeds))
    lengths = rng.integers(1, 4, size=B)
    N = config.block_size - int(lengths.max())
    side = data.draw(st.sampled_from(["left", "right"]))
    tokens = np.zeros((B, int(lengths.max())), dtype=np.int64)
    mask = np.zeros_like(tokens)
    rows = [rng.integers(0, config.vocab_size, size=n) for n in lengths]
    for b, row in enumerate(rows):
        start = tokens.shape[1] - len(row) if side == "left" else 0
        tokens[b, start : start + len(row)], mask[b, start : start + len(row)] = row, 1
    u = rng.random((B, N)) if data.draw(st.booleans()) else None
    out = ref_gpt.generate(params, config, tokens, N, attention_mask=mask, u=u)
    P = fb.to_torch(params, "cpu", torch.float64)
    fast = fast_gpt.generate(P, config, torch.from_numpy(tokens), N, attention_mask=torch.from_numpy(mask),
                             u=u).numpy()  # fmt: skip
    assert np.array_equal(out, fast)
    for b, row in enumerate(rows):
        alone = ref_gpt.generate(params, config, row[None], N, u=None if u is None else u[b : b + 1])
        assert np.array_equal(out[b, tokens.shape[1] :], alone[0, len(row) :])


@given(gpt_models(vocab_size=4, min_block_size=7), st.data())
def test_eos_ends_rows_independently(model, data):
    config, params = model
    B = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(seeds))
    prompt = rng.integers(0, config.vocab_size, size=(B, 2))
    N = config.block_size - 1
    eos, pad = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    u = rng.random((B, N))
    gen = generation.GenerationConfig(max_new_tokens=N, do_sample=True, top_k=None, eos_token_id=eos, pad_token_id=pad)
    out = ref_gpt.generate(params, config, prompt, generation_config=gen, u=u)
    fast = fast_gpt.generate(fb.to_torch(params, "cpu", torch.float64), config, torch.from_numpy(prompt),
                             generation_config=gen, u=u).numpy()  # fmt: skip
    assert np.array_equal(out, fast)
    free = ref_gpt.generate(params, config, prompt, N, u=u)  # the same draws without eos
    ends = []
    for b in range(B):
        new, unstopped = out[b, 2:], free[b, 2 : 2 + out.shape[1] - 2]
        hits = np.flatnonzero(unstopped == eos)
        end = int(hits[0]) + 1 if hits.size else len(new)
        ends.append(end)
        assert np.array_equal(new[:end], unstopped[:end]), "before its eos a row is what it is without eos"
        assert np.all(new[end:] == pad), "after its eos a row holds only pad"
        alone = ref_gpt.generate(params, config, prompt[b : b + 1], generation_config=gen, u=u[b : b + 1])
        assert np.array_equal(alone[0, 2:], new[: alone.shape[1] - 2]) and np.all(new[alone.shape[1] - 2 :] == pad)
    assert out.shape[1] - 2 == max(ends), "the loop stops when every row has ended, not later"


@given(gpt_models(min_block_size=6), st.data())
def test_history_repetition_penalty_is_the_hand_written_loop(model, data):
    config, params = model
    rng = np.random.default_rng(data.draw(seeds))
    prompt = rng.integers(0, config.vocab_size, size=(2, 2))
    penalty = data.draw(st.sampled_from([0.3, 3.0, 5.0]))
    N = config.block_size - 2
    gen = generation.GenerationConfig(max_new_tokens=N, repetition_penalty=penalty)
    got = ref_gpt.generate(params, config, prompt, generation_config=gen)
    fast = fast_gpt.generate(fb.to_torch(params, "cpu", torch.float64), config, torch.from_numpy(prompt),
                             generation_config=gen).numpy()  # fmt: skip
    seq = prompt.copy()
    for _ in range(N):  # by hand: recompute, penalize every distinct token so far, argmax
        logits = ref_gpt.forward(params, config, seq)[:, -1].copy()
        for b in range(seq.shape[0]):
            for v in set(seq[b].tolist()):
                logits[b, v] = logits[b, v] / penalty if logits[b, v] > 0 else logits[b, v] * penalty
        seq = np.concatenate([seq, ref_sampling.greedy(logits)[:, None]], axis=1)
    assert np.array_equal(got, seq) and np.array_equal(fast, seq)
