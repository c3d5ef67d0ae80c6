"""Properties of the LLaMA-family reference (reference.llama) that hold exactly, on tiny models.

- causality as the full dependency structure: without a window the logits at t depend on every
  token at positions <= t and on none after (the full lower triangle, bit for bit); with a
  sliding window W over L layers, on exactly the tokens t - L (W - 1) .. t (the band below);
- RoPE: attention scores depend on positions only through i - j, so shifting every position id
  by a constant leaves the logits unchanged (within the float64 tolerance: the angles are
  rounded differently);
- the two RoPE layouts are the same model after `convert_rope_layout`, and converting there and
  back is the identity, bit for bit;
- grouped-query attention is multi-head attention whose k/v weights repeat each shared head;
- padding invariance (`compare_padding`: left, right, mixed; and holes): a row's logits at its
  real positions are the row's alone, windows included;
- KV cache (chunked prefill of random sizes, then steps) = full recompute;
- normalization by enumeration: sum over all 3^T sequences of p(x) is 1;
- batch invariance: each row's logits in a batch equal the row alone bit for bit
  (`assert_batch_invariant` with 0 ulps).

The receptive field of a sliding window. Query i attends to keys j with 0 <= i - j < W (positions,
no padding), i.e. to i - (W - 1) .. i; everything else in a block is position-wise. One layer
therefore mixes each position with its W - 1 predecessors, and L layers compose L such steps:
the logits at t depend on tokens t - L (W - 1) .. t, a band of width L (W - 1) + 1 (W = 1: the
token itself). Every dependency in the band is present in a generic model (the path t -> t - (W-1)
-> ... through each layer's earliest key), and none outside it (a path needs L hops of at most
W - 1 each).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from chainrule.reference import llama
from chainrule.reference.checks import (assert_batch_invariant, assert_causal, assert_close, assert_normalized,
                                        assert_padding_invariant, dependency_matrix,
                                        format_dependency_matrix)  # fmt: skip
from properties.conftest import seeds

ROPE_SCALINGS = (
    None,
    {"rope_type": "linear", "factor": 2.5},
    {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 16},
)  # fmt: skip


@st.composite
def llama_configs(draw, vocab_size=None, min_max_position=1, max_max_position=9, window=None):
    """A tiny LLaMA-family config: vocab 2..7, 1..2 key/value heads of 1..2 query heads each,
    head_dim 2 or 4 (n_embd n_head * head_dim, 3 or 5), 1..2 layers, context 1..9, any RoPE scaling
    and layout, Qwen2's biases or not, a tied head or not. window: None (drawn: none, or 1..4),
    False (none) or True (1..4)."""
    n_kv = draw(st.integers(1, 2))
    n_head = n_kv * draw(st.integers(1, 2))
    head_dim = draw(st.sampled_from([2, 4]))
    vocab = vocab_size if vocab_size is not None else draw(st.integers(2, 7))
    if window is None:
        window = draw(st.booleans())
    return llama.Config(
        vocab_size=vocab, max_position=draw(st.integers(min_max_position, max_max_position)),
        n_layer=draw(st.integers(1, 2)), n_head=n_head, n_kv_head=n_kv,
        n_embd=draw(st.sampled_from([n_head * head_dim, 3, 5])),
        head_dim=head_dim, intermediate_size=draw(st.integers(1, 5)),
        rope_theta=draw(st.sampled_from([10.0, 100.0, 10000.0])), rope_scaling=draw(st.sampled_from(ROPE_SCALINGS)),
        rope_layout=draw(st.sampled_from(llama.ROPE_LAYOUTS)), rms_norm_eps=1e-6,
        qkv_bias=draw(st.booleans()), sliding_window=draw(st.integers(1, 4)) if window else None,
        tie_word_embeddings=draw(st.booleans()), bos_token=draw(st.integers(0, vocab - 1)),
    )  # fmt: skip


@st.composite
def llama_models(draw, **kwargs):
    """(config, float64 params) of a tiny LLaMA-family model with `random_params` weights."""
    config = draw(llama_configs(**kwargs))
    return config, llama.random_params(config, np.random.default_rng(draw(seeds)))


@st.composite
def tokens_for(draw, config, min_len=1, max_len=None, max_batch=3):
    """A (B, T) int64 token array, 1 <= B <= max_batch, min_len <= T <= max_len (default: the context)."""
    B = draw(st.integers(1, max_batch))
    T = draw(st.integers(min(min_len, config.max_position), max_len or config.max_position))
    return np.random.default_rng(draw(seeds)).integers(0, config.vocab_size, size=(B, T))


def band(T: int, reach: int | None) -> np.ndarray:
    """(T, T) bool: logits at t depend on tokens s with 0 <= t - s <= reach (None: every s <= t)."""
    gap = np.arange(T)[:, None] - np.arange(T)[None, :]
    return (gap >= 0) if reach is None else (gap >= 0) & (gap <= reach)


def receptive_reach(config) -> int | None:
    """How far back the logits at t see: L (W - 1) with a window W over L layers, else everything."""
    w = config.sliding_window
    return None if w is None else config.n_layer * (w - 1)


# ----------------------------------------------------------------------------- causality


@given(llama_models(window=False), st.data())
def test_causal_full_lower_triangle_without_a_window(model, data):
    config, params = model
    x = data.draw(tokens_for(config))
    D = assert_causal(lambda t: llama.forward(params, config, t), x, vocab_size=config.vocab_size, full=True,
                      name="reference.llama.forward")  # fmt: skip
    assert np.array_equal(D, band(x.shape[1], None))


@given(llama_models(window=True, min_max_position=6, max_max_position=12), st.data())
def test_sliding_window_dependencies_are_exactly_the_band(model, data):
    """D[t, s] = 1 iff 0 <= t - s <= L (W - 1), bit for bit (the module docstring derives it)."""
    config, params = model
    x = data.draw(tokens_for(config, min_len=6, max_batch=2))
    D = assert_causal(lambda t: llama.forward(params, config, t), x, vocab_size=config.vocab_size,
                      name="reference.llama.forward")  # fmt: skip
    want = band(x.shape[1], receptive_reach(config))
    assert np.array_equal(D, want), (f"window {config.sliding_window}, {config.n_layer} layers:\n"
                                     f"{format_dependency_matrix(D)}\nexpected\n{format_dependency_matrix(want)}")


def test_one_layer_window_is_the_band_of_width_w():
    """The simplest case, spelled out: one layer, W = 3, 8 tokens."""
    config = llama.Config(vocab_size=5, max_position=8, n_layer=1, n_head=2, n_kv_head=1, n_embd=8,
                          intermediate_size=3, sliding_window=3)  # fmt: skip
    params = llama.random_params(config, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 5, size=(2, 8))
    D = dependency_matrix(lambda t: llama.forward(params, config, t), x, vocab_size=5)
    assert np.array_equal(D, band(8, 2)), format_dependency_matrix(D)
    assert D.sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3, 3, 3]


# ----------------------------------------------------------------------------- RoPE


@given(llama_models(min_max_position=4), st.data())
def test_shifting_every_position_leaves_the_logits_unchanged(model, data):
    """RoPE: q_i . k_j depends on i - j only, so position_ids + s give the same logits."""
    config, params = model
    x = data.draw(tokens_for(config))
    T = x.shape[1]
    shift = data.draw(st.integers(1, 500))
    config = dataclasses.replace(config, max_position=T + shift)
    positions = np.tile(np.arange(T), (x.shape[0], 1))
    base = llama.forward(params, config, x, position_ids=positions)
    shifted = llama.forward(params, config, x, position_ids=positions + shift)
    assert_close(f"logits with positions + {shift}", base, shifted, "float64")
    assert np.array_equal(base, llama.forward(params, config, x))  # positions 0..T-1 are the default


def test_a_non_constant_shift_changes_the_logits():
    """The control: positions are not ignored (moving one token's position changes its logits)."""
    config = llama.Config(vocab_size=7, max_position=12, n_layer=1, n_head=2, n_kv_head=2, n_embd=8,
                          intermediate_size=5, rope_theta=10.0)  # fmt: skip
    params = llama.random_params(config, np.random.default_rng(0))
    x = np.random.default_rng(1).integers(0, 7, size=(1, 6))
    positions = np.arange(6)[None]
    moved = positions.copy()
    moved[0, 3:] += 5  # the first three stay, the last three move 5 further
    diff = np.abs(llama.forward(params, config, x, position_ids=moved) - llama.forward(params, config, x))
    assert diff[0, :3].max() == 0 and diff[0, 3:].max() > 1e-3


@given(llama_models(), st.data())
def test_both_rope_layouts_are_the_same_model(model, data):
    config, params = model
    x = data.draw(tokens_for(config))
    other = "half" if config.rope_layout == "interleaved" else "interleaved"
    params2, config2 = llama.convert_rope_layout(params, config, other)
    assert config2.rope_layout == other
    assert_close(f"logits in the {other} layout", llama.forward(params, config, x), llama.forward(params2, config2, x),
                 "float64")  # fmt: skip
    back, config3 = llama.convert_rope_layout(params2, config2, config.rope_layout)
    assert config3 == config and back.keys() == params.keys()
    assert all(np.array_equal(back[k], params[k]) for k in params)


# ----------------------------------------------------------------------------- GQA


def as_mha(params, config):
    """The MHA model equal to a GQA one: n_kv_head = n_head, query head h's key/value weights (and
    biases) a copy of its shared head h // n_rep's."""
    hd, rep = config.head_dim, config.n_rep
    index = np.concatenate([np.arange(h // rep * hd, (h // rep + 1) * hd) for h in range(config.n_head)])
    out = dict(params)
    for i in range(config.n_layer):
        for name in ("k", "v"):
            out[f"layers.{i}.attn.{name}.w"] = params[f"layers.{i}.attn.{name}.w"][:, index]
            if config.qkv_bias:
                out[f"layers.{i}.attn.{name}.b"] = params[f"layers.{i}.attn.{name}.b"][index]
    return out, dataclasses.replace(config, n_kv_head=config.n_head)


@given(llama_models(), st.data())
def test_gqa_is_mha_with_repeated_kv_heads(model, data):
    config, params = model
    x = data.draw(tokens_for(config))
    mha_params, mha = as_mha(params, config)
    llama.check_params(mha_params, mha)
    assert_close("GQA logits vs MHA with repeated k/v heads", llama.forward(params, config, x),
                 llama.forward(mha_params, mha, x), "float64")  # fmt: skip


def test_gqa_differs_from_mha_with_other_kv_heads():
    """The control: MHA whose extra k/v heads are not copies gives other logits."""
    config = llama.Config(vocab_size=7, max_position=8, n_layer=1, n_head=4, n_kv_head=2, n_embd=8,
                          intermediate_size=5)  # fmt: skip
    params = llama.random_params(config, np.random.default_rng(0))
    mha_params, mha = as_mha(params, config)
    mha_params["layers.0.attn.k.w"] = mha_params["layers.0.attn.k.w"][:, ::-1].copy()
    x = np.random.default_rng(1).integers(0, 7, size=(2, 8))
    assert np.abs(llama.forward(params, config, x) - llama.forward(mha_params, mha, x)).max() > 1e-3


# ----------------------------------------------------------------------------- padding, cache, batch


@given(llama_models(min_max_position=5), st.data())
def test_padding_invariance(model, data):
    config, params = model
    max_pad = data.draw(st.integers(1, 3))
    x = data.draw(tokens_for(config, max_len=config.max_position - max_pad))
    assert_padding_invariant(lambda t, m: llama.forward(params, config, t, m), x, max_pad=max_pad,
                             pad_id=data.draw(st.integers(0, config.vocab_size - 1)))  # fmt: skip


@given(llama_models(), st.data())
def test_padding_with_holes_is_each_row_alone(model, data):
    """Any 0/1 mask (holes between real tokens too): the logits at real positions are those of the
    row's real tokens alone; positions and the window count real tokens only."""
    config, params = model
    rng = np.random.default_rng(data.draw(seeds))
    B, T = data.draw(st.integers(1, 3)), data.draw(st.integers(1, config.max_position))
    x = rng.integers(0, config.vocab_size, size=(B, T))
    mask = rng.random((B, T)) < 0.6
    mask[np.arange(B), rng.integers(0, T, size=B)] = True  # at least one real token per row
    got = llama.forward(params, config, x, mask.astype(np.int64))
    for b in range(B):
        alone = llama.forward(params, config, x[b : b + 1, mask[b]])[0]
        assert_close(f"row {b} with holes vs alone", alone, got[b, mask[b]], "float64")
        assert np.all(got[b, ~mask[b]] == 0.0)


def _random_chunks(rng, n):
    chunks = []
    while n:
        chunks.append(int(rng.integers(1, n + 1)))
        n -= chunks[-1]
    return chunks


@given(llama_models(), st.data())
def test_kv_cache_equals_recompute(model, data):
    config, params = model
    x = data.draw(tokens_for(config))
    rng = np.random.default_rng(data.draw(seeds))
    T = x.shape[1]
    cache, out, pos = llama.init_cache(params, config, x.shape[0]), [], 0
    for c in _random_chunks(rng, int(rng.integers(0, T + 1))):
        logits, cache = llama.prefill(params, config, cache, x[:, pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, T):
        logits_t, cache = llama.step(params, config, cache, x[:, t])
        out.append(logits_t[:, None])
    assert cache["length"] == T
    assert_close("cached logits vs recompute", llama.forward(params, config, x), np.concatenate(out, 1), "float64")


@given(llama_models(min_max_position=2), st.data())
def test_greedy_generation_is_the_argmax_of_recompute(model, data):
    """generate (through the cache) = the naive loop: argmax of forward on the whole prefix."""
    config, params = model
    prompt = data.draw(tokens_for(config, max_len=config.max_position - 1))
    N = data.draw(st.integers(1, config.max_position + 1 - prompt.shape[1]))
    got = llama.generate(params, config, prompt, N)
    seq = prompt
    for _ in range(N):
        seq = np.concatenate([seq, llama.forward(params, config, seq)[:, -1].argmax(-1)[:, None]], axis=1)
    assert np.array_equal(got, seq)


@given(llama_models(vocab_size=3, min_max_position=3))
def test_normalized_by_enumeration(model):
    config, params = model
    for length in (1, 2, 3):
        assert_normalized(lambda x: llama.log_prob(params, config, x), 3, length, atol=1e-12)


@given(llama_models(), st.data())
def test_batch_invariant_bit_for_bit(model, data):
    """Each row's logits inside batches of 2, 5 and 9 (first, last, anywhere) = the row alone, to the bit."""
    config, params = model
    x = data.draw(tokens_for(config, max_batch=2))
    assert_batch_invariant(lambda t: llama.forward(params, config, t), x, 0, batch_sizes=(1, 2, 5, 9))
