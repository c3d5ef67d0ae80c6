"""Unit tests of reference.medusa / fast.medusa: argument errors, and Medusa-1 training of the
heads on a frozen base (the loop's loss is the reference's Medusa-1 loss; it goes down; the
base is untouched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import backend as fb
from chainrule.fast import medusa as fast_medusa
from chainrule.fast import train as fast_train
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import medusa

BASE = ref_gpt.Config(vocab_size=7, block_size=13, n_layer=1, n_head=1, n_embd=5)


def _model(n_heads=2, n_layers=1, seed=0):
    rng = np.random.default_rng(seed)
    params = ref_gpt.random_params(BASE, rng)
    config = medusa.Config.for_base(BASE, n_heads=n_heads, n_layers=n_layers)
    return params, config, medusa.random_params(config, rng)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("field,value", [("n_embd", 0), ("vocab_size", 1.5), ("n_heads", 0), ("n_layers", -1),
                                         ("n_heads", True)])  # fmt: skip
def test_config_errors(field, value):
    args = dict(n_embd=5, vocab_size=7, n_heads=2, n_layers=1) | {field: value}
    with pytest.raises(ValueError, match=f"Config.{field}"):
        medusa.Config(**args)


def test_head_param_errors():
    params, config, heads = _model()
    prompt = np.zeros((1, 2), dtype=np.int64)
    missing = {k: v for k, v in heads.items() if k != "heads.1.out.w"}
    with pytest.raises(ValueError, match="missing parameter 'heads.1.out.w'"):
        medusa.forward(params, BASE, missing, config, prompt)
    bad = heads | {"heads.0.blocks.0.w": np.zeros((5, 4))}
    with pytest.raises(ValueError, match=r"heads\['heads.0.blocks.0.w'\]: expected shape \(5, 5\), got \(5, 4\)"):
        fast_medusa.forward(params, BASE, bad, config, prompt)
    with pytest.raises(ValueError, match="unexpected parameters"):
        medusa.forward(params, BASE, heads | {"extra": np.zeros(1)}, config, prompt)
    with pytest.raises(ValueError, match=r"config.n_embd: expected 5 \(the base's\), got 6"):
        medusa.forward(params, BASE, heads, medusa.Config(n_embd=6, vocab_size=7, n_heads=2), prompt)
    P = fb.to_torch(params, "cpu", torch.float32)
    with pytest.raises(ValueError, match="expected torch.float32 on cpu"):
        fast_medusa.forward(P, BASE, fb.to_torch(heads, "cpu", torch.float64), config, prompt)


def test_generate_errors():
    params, config, heads = _model()
    prompt = np.zeros((1, 3), dtype=np.int64)
    for m in (medusa, fast_medusa):
        with pytest.raises(ValueError, match="mode: expected one of"):
            m.generate(params, BASE, heads, config, prompt, 3, [(0,)], mode="sample")
        with pytest.raises(ValueError, match="epsilon: expected a number in"):
            m.generate(params, BASE, heads, config, prompt, 3, [(0,)], mode="typical", epsilon=1.5)
        with pytest.raises(ValueError, match="temperature"):
            m.generate(params, BASE, heads, config, prompt, 3, [(0,)], mode="typical", temperature=0.0)
        with pytest.raises(ValueError, match="depth <= n_heads=2"):
            m.generate(params, BASE, heads, config, prompt, 3, [(0,), (0, 0), (0, 0, 0)])
        with pytest.raises(ValueError, match="max_new_tokens"):
            m.generate(params, BASE, heads, config, prompt, -1, [(0,)])
        with pytest.raises(ValueError, match="prompt: expected length"):
            m.generate(params, BASE, heads, config, prompt, 12, [(0,)])  # 3 + 12 - 1 > block_size 13


def test_generate_fills_the_block_exactly():
    """T0 + N - 1 = block_size: the trees are cut near the end (the last tree to the root alone)."""
    params, config, heads = _model(n_heads=3)
    prompt = np.array([[1, 2, 3]])
    choices = [(0,), (1,), (0, 0), (0, 0, 0)]
    out, (a,) = medusa.generate(params, BASE, heads, config, prompt, 11, choices)
    np.testing.assert_array_equal(out, ref_gpt.greedy(params, BASE, prompt, 11))
    fast_out, (fa,) = fast_medusa.generate(params, BASE, heads, config, prompt, 11, choices)
    np.testing.assert_array_equal(fast_out.numpy(), out)
    np.testing.assert_array_equal(fa, a)


def test_zero_new_tokens():
    params, config, heads = _model()
    prompt = np.array([[1, 2]])
    out, (a,) = medusa.generate(params, BASE, heads, config, prompt, 0, [(0,)])
    np.testing.assert_array_equal(out, prompt)
    assert a.size == 0
    fast_out, _ = fast_medusa.generate(params, BASE, heads, config, prompt, 0, [(0,)])
    np.testing.assert_array_equal(fast_out.numpy(), prompt)


# ----------------------------------------------------------------------------- end of sequence


@pytest.mark.parametrize("kwargs, match", [
    (dict(eos_token_id=7), "eos_token_id:"), (dict(eos_token_id=-1), "eos_token_id:"),
    (dict(eos_token_id=2.0), "eos_token_id:"), (dict(eos_token_id=True), "eos_token_id:"),
    (dict(eos_token_id=[]), "eos_token_id:"), (dict(eos_token_id=(1, 7)), "eos_token_id:"),
    (dict(eos_token_id=1, pad_token_id=7), "pad_token_id:"), (dict(pad_token_id=-2), "pad_token_id:"),
    (dict(eos_token_id=1, pad_token_id="0"), "pad_token_id:"),
])  # fmt: skip
@pytest.mark.parametrize("max_new_tokens", [0, 3])
def test_bad_eos_refused_by_reference_and_fast(kwargs, match, max_new_tokens):
    params, config, heads = _model()
    prompt = np.zeros((2, 3), dtype=np.int64)
    for m in (medusa, fast_medusa):
        with pytest.raises(ValueError, match=f"^{match}"):
            m.generate(params, BASE, heads, config, prompt, max_new_tokens, [(0,), (0, 0)], **kwargs)


def test_eos_ends_rows_pads_and_stops_forwards():
    """Greedy Medusa with eos = a token greedy decoding emits: each row is greedy decoding up to
    its first new eos, then pad; an eos in the prompt does not count; a row that ended runs no
    more tree forwards (its accept lengths are the first ones of the run without eos)."""
    params, config, heads = _model(n_heads=2, seed=2)
    prompt = np.array([[1, 2, 3], [4, 5, 6], [0, 1, 2]])
    choices = [(0,), (1,), (0, 0), (1, 0)]
    N = 10
    greedy = ref_gpt.greedy(params, BASE, prompt, N)
    eos = int(greedy[0, 3 + 2])  # row 0 ends at its third new token (or earlier)
    full, full_a = medusa.generate(params, BASE, heads, config, prompt, N, choices)
    for m in (medusa, fast_medusa):
        out, a = m.generate(params, BASE, heads, config, prompt, N, choices, eos_token_id=[eos], pad_token_id=6)
        out = np.asarray(out)
        ends = []
        for b in range(3):
            hits = [t for t in range(3, 3 + N) if greedy[b, t] == eos]
            end = hits[0] + 1 if hits else 3 + N
            ends.append(end)
            np.testing.assert_array_equal(out[b, :end], greedy[b, :end])
            assert (out[b, end:] == 6).all()
            np.testing.assert_array_equal(a[b], full_a[b][: len(a[b])])
        assert out.shape == (3, max(ends)) and ends[0] <= 6
        assert len(a[0]) < len(full_a[0]), "row 0 ended early: it must run fewer tree forwards"
    assert 1 in prompt[0] and 1 not in greedy[0, 3:].tolist()  # an eos in the prompt only: no end
    for m in (medusa, fast_medusa):
        out, _ = m.generate(params, BASE, heads, config, prompt[:1], N, choices, eos_token_id=1)
        np.testing.assert_array_equal(np.asarray(out), greedy[:1])


# ----------------------------------------------------------------------------- training


def _base_text(params, n, seed):
    """Sequences sampled from the base itself: what its heads can learn to predict."""
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, BASE.vocab_size, (n, 1))
    return ref_gpt.sample(params, BASE, rng, prompt, BASE.block_size - 1)


def test_training_loss_is_the_medusa1_loss_and_goes_down():
    params, config, _ = _model(n_heads=2, n_layers=1, seed=3)
    heads = medusa.init(config, np.random.default_rng(0), params)  # Medusa-1: the base's LM head
    data = _base_text(params, 48, seed=4)
    cfg = fast_train.TrainConfig(steps=40, batch_size=8, lr=2e-2, weight_decay=0.0, dtype="float64", log_every=40)
    before = {k: v.copy() for k, v in params.items()}
    result = fast_medusa.train_heads(params, BASE, heads, config, data, cfg=cfg)
    first = data[fast_train.batch_indices(len(data), cfg.batch_size, 0, cfg.seed)]
    want = medusa.loss(params, BASE, heads, config, first)
    assert abs(result.history.loss[0] - want) <= 1e-10 * (1 + abs(want)), (result.history.loss[0], want)
    trained = {k: v.numpy() for k, v in result.params.items()}
    full_before, full_after = (medusa.loss(params, BASE, h, config, data) for h in (heads, trained))
    assert full_after < 0.9 * full_before, (full_before, full_after)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])  # the base is frozen and untouched
    with pytest.raises(ValueError, match="T >= n_heads \\+ 2"):
        fast_medusa.train_heads(params, BASE, heads, config, data[:, :3], cfg=cfg)
