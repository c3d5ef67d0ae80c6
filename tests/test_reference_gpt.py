"""Validation of reference.gpt (and the same errors from fast.gpt): bad input raises
ValueError naming the argument, what was expected and what was got -- never a
silent wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import gpt as fast_gpt
from chainrule.reference import gpt

CONFIG = gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4)
PARAMS = gpt.init(CONFIG, np.random.default_rng(0))

IMPLS = {"reference": gpt, "fast": fast_gpt}


def _tokens(impl, a):
    return torch.as_tensor(a) if impl == "fast" else np.asarray(a)


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fn", ["forward", "log_prob"])
@pytest.mark.parametrize(
    "tokens,match",
    [
        ([[0, 5, 1]], r"tokens: token ids must lie in \[0, 5\), got 5"),
        ([[0, -1, 1]], r"tokens: token ids must lie in \[0, 5\), got -1"),
        ([[0, 1, 2, 3, 4]], r"tokens: expected length T in \[1, 4\], got T=5"),
        (np.zeros((2, 0), dtype=np.int64), r"tokens: expected length T in \[1, 4\], got T=0"),
        ([0, 1, 2], r"tokens: expected shape \(B, T\), got \(3,\)"),
        ([[0.0, 1.0]], r"tokens: expected an integer array, got .*float"),
    ],
    ids=["too-large", "negative", "too-long", "empty", "1-D", "float"],
)
def test_bad_tokens(impl, fn, tokens, match):
    with pytest.raises(ValueError, match=match):
        getattr(IMPLS[impl], fn)(PARAMS, CONFIG, _tokens(impl, tokens))


def test_tokens_must_be_an_array():
    with pytest.raises(ValueError, match="tokens: expected an integer array"):
        gpt.forward(PARAMS, CONFIG, [[0, 1]])


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_param_names_the_key_and_shape(impl):
    params = dict(PARAMS)
    del params["blocks.0.attn.qkv.b"]
    with pytest.raises(ValueError, match=r"missing parameter 'blocks\.0\.attn\.qkv\.b' \(expected shape \(12,\)\)"):
        IMPLS[impl].forward(params, CONFIG, _tokens(impl, [[0, 1]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_misshaped_param_names_the_key_and_both_shapes(impl):
    params = dict(PARAMS)
    params["blocks.0.mlp.fc.w"] = np.zeros((16, 4))  # transposed: (out, in) instead of (in, out)
    with pytest.raises(ValueError, match=r"params\['blocks\.0\.mlp\.fc\.w'\]: expected shape \(4, 16\), got \(16, 4\)"):
        IMPLS[impl].forward(params, CONFIG, _tokens(impl, [[0, 1]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_extra_param_is_named(impl):
    params = dict(PARAMS)
    params["blocks.1.ln_1.g"] = np.ones(4)  # a layer the config does not have
    with pytest.raises(ValueError, match=r"unexpected parameters \['blocks\.1\.ln_1\.g'\]"):
        IMPLS[impl].forward(params, CONFIG, _tokens(impl, [[0, 1]]))


def test_check_params_accepts_init():
    gpt.check_params(PARAMS, CONFIG)
    assert set(PARAMS) == set(gpt.param_shapes(CONFIG))


# ----------------------------------------------------------------------------- Config


@pytest.mark.parametrize(
    "field,value",
    [
        ("vocab_size", 0), ("vocab_size", 2.0), ("block_size", -1), ("n_layer", 0),
        ("n_head", True), ("n_embd", 0), ("n_embd", "4"),
    ],
)  # fmt: skip
def test_config_rejects_bad_field_and_names_it(field, value):
    kw = dict(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4) | {field: value}
    with pytest.raises(ValueError, match=rf"Config\.{field}: expected a positive int, got {value!r}"):
        gpt.Config(**kw)


def test_config_cross_field_errors():
    with pytest.raises(ValueError, match=r"Config\.n_embd: expected a multiple of n_head=3, got 4"):
        gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=3, n_embd=4)
    with pytest.raises(ValueError, match=r"Config\.layer_norm_eps: expected a positive float, got 0"):
        gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, layer_norm_eps=0)
    with pytest.raises(ValueError, match=r"Config\.bos_token: expected an int in \[0, 5\), got 5"):
        gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, bos_token=5)
    with pytest.raises(TypeError, match="n_heads"):
        gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, n_heads=2)  # a misspelled field


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("activation", "gelu_new", r"Config\.activation: expected one of \('gelu_tanh', 'gelu_erf', 'gelu_fast', "
                                   r"'relu'\), got 'gelu_new'"),
        ("activation", None, r"Config\.activation: expected one of .*, got None"),
        ("n_inner", 0, r"Config\.n_inner: expected None \(4 n_embd\) or a positive int, got 0"),
        ("n_inner", 8.0, r"Config\.n_inner: expected None \(4 n_embd\) or a positive int, got 8\.0"),
        ("n_inner", True, r"Config\.n_inner: expected None \(4 n_embd\) or a positive int, got True"),
        ("scale_attn", 1, r"Config\.scale_attn: expected a bool, got 1"),
        ("scale_attn_by_inverse_layer_idx", "yes",
         r"Config\.scale_attn_by_inverse_layer_idx: expected a bool, got 'yes'"),
        ("tie_word_embeddings", None, r"Config\.tie_word_embeddings: expected a bool, got None"),
    ],
)  # fmt: skip
def test_config_rejects_bad_option_and_names_it(field, value, match):
    with pytest.raises(ValueError, match=match):
        gpt.Config(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4, **{field: value})


def test_config_defaults_are_gpt2():
    """The options default to GPT-2: tanh GELU, F = 4C, scores / sqrt(hs), the head tied to wte."""
    assert (CONFIG.activation, CONFIG.n_inner, CONFIG.inner_dim) == ("gelu_tanh", None, 16)
    assert [CONFIG.attn_scale(i) for i in range(3)] == [2**-0.5] * 3
    assert "lm_head.w" not in gpt.param_shapes(CONFIG) and gpt.head_weight(PARAMS, CONFIG) is PARAMS["wte"]


OPTIONS = gpt.Config(vocab_size=5, block_size=4, n_layer=3, n_head=2, n_embd=4, activation="relu", n_inner=7,
                     scale_attn=False, scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False)  # fmt: skip


def test_options_shapes_and_scales():
    shapes = gpt.param_shapes(OPTIONS)
    assert shapes["lm_head.w"] == (5, 4) and list(shapes)[-1] == "lm_head.w"  # drawn last: other params unchanged
    assert shapes["blocks.2.mlp.fc.w"] == (4, 7) and shapes["blocks.2.mlp.proj.w"] == (7, 4)
    assert [OPTIONS.attn_scale(i) for i in range(3)] == [1.0, 0.5, 1 / 3]
    scaled = gpt.Config(vocab_size=5, block_size=4, n_layer=2, n_head=2, n_embd=8, scale_attn_by_inverse_layer_idx=True)
    assert [scaled.attn_scale(i) for i in range(2)] == [0.5, 0.25]
    params = gpt.init(OPTIONS, np.random.default_rng(0))
    assert gpt.head_weight(params, OPTIONS) is params["lm_head.w"] and params["lm_head.w"].std() < 0.05
    drawn = gpt.random_params(OPTIONS, np.random.default_rng(0))
    assert 0.5 < drawn["lm_head.w"].std() < 2.0  # N(0, 1), as wte


@pytest.mark.parametrize("impl", IMPLS)
def test_untied_head_is_required_and_tied_head_is_refused(impl):
    params = gpt.init(OPTIONS, np.random.default_rng(0))
    missing = {k: v for k, v in params.items() if k != "lm_head.w"}
    with pytest.raises(ValueError, match=r"missing parameter 'lm_head\.w' \(expected shape \(5, 4\)\)"):
        IMPLS[impl].forward(missing, OPTIONS, _tokens(impl, [[0, 1]]))
    with pytest.raises(ValueError, match=r"unexpected parameters \['lm_head\.w'\]"):
        IMPLS[impl].forward(dict(PARAMS, **{"lm_head.w": params["lm_head.w"]}), CONFIG, _tokens(impl, [[0, 1]]))


# ----------------------------------------------------------------------------- generation and cache


@pytest.mark.parametrize("impl", IMPLS)
def test_generate_validation(impl):
    m, tok = IMPLS[impl], (lambda a: _tokens(impl, a))
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 0, got -1"):
        m.generate(PARAMS, CONFIG, tok([[0]]), -1)
    with pytest.raises(ValueError, match=r"prompt: expected length T in \[1, 2\], got T=3"):
        m.generate(PARAMS, CONFIG, tok([[0, 1, 2]]), 3)  # 3 + 3 - 1 > block_size 4
    with pytest.raises(ValueError, match=r"u: expected shape \(1, 2\), got \(1, 3\)"):
        m.generate(PARAMS, CONFIG, tok([[0]]), 2, u=np.full((1, 3), 0.5))
    with pytest.raises(ValueError, match=r"u: expected uniforms in \[0, 1\)"):
        m.generate(PARAMS, CONFIG, tok([[0]]), 2, u=np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"prompt: token ids must lie in \[0, 5\), got 7"):
        m.generate(PARAMS, CONFIG, tok([[7]]), 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_generate_lengths_at_the_limit(impl):
    m, tok = IMPLS[impl], (lambda a: _tokens(impl, a))
    out = m.generate(PARAMS, CONFIG, tok([[0, 1]]), 3)  # 2 + 3 - 1 = block_size: allowed
    assert tuple(out.shape) == (1, 5)
    assert tuple(m.generate(PARAMS, CONFIG, tok([[0, 1, 2, 3]]), 0).shape) == (1, 4)


@pytest.mark.parametrize("impl", IMPLS)
def test_cache_validation(impl):
    m, tok = IMPLS[impl], (lambda a: _tokens(impl, a))
    cache = m.init_cache(PARAMS, CONFIG, 2)
    _, cache = m.prefill(PARAMS, CONFIG, cache, tok([[0, 1, 2], [1, 2, 3]]))
    with pytest.raises(ValueError, match=r"tokens: expected length T in \[1, 1\], got T=2"):
        m.prefill(PARAMS, CONFIG, cache, tok([[0, 1], [1, 2]]))  # past block_size
    with pytest.raises(ValueError, match="tokens: expected batch 2"):
        m.prefill(PARAMS, CONFIG, cache, tok([[0]]))
    with pytest.raises(ValueError, match=r"tokens_t: expected shape \(B,\)"):
        m.step(PARAMS, CONFIG, cache, tok([[0], [1]]))
