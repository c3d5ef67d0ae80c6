"""reference.gpt and fast.gpt against HF transformers' GPT-2, a peer nobody here wrote.

A random tiny GPT2LMHeadModel, built offline from a GPT2Config, in float64 with
its weights (LayerNorms included) perturbed far from the init: loaded with
`from_hf_gpt2` it gives the same logits (<= 1e-9), the same greedy tokens as HF
`generate(do_sample=False)`, and `to_hf_gpt2` round-trips. So does every GPT2Config
option the spec implements (each activation, n_inner, scale_attn_weights=False,
scale_attn_by_inverse_layer_idx, an untied LM head, all of them at once), under HF's
sdpa and eager attention; the options it does not (cross-attention, other
activations) are rejected by name.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="HF transformers is not installed (peers extra)")

from chainrule.fast import gpt as fast_gpt  # noqa: E402
from chainrule.reference import gpt as ref_gpt  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402
from diff_tests.peers.hf_weights import perturb_gpt2  # noqa: E402

LOGIT_ATOL = 1e-9  # HF and chainrule in float64: only the summation order differs


def _hf_config(**overrides):
    kw = dict(
        vocab_size=59, n_positions=23, n_embd=6, n_layer=2, n_head=2, activation_function="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
        pad_token_id=None, tie_word_embeddings=True,
    )  # fmt: skip
    kw.update(overrides)
    return transformers.GPT2Config(**kw)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(_hf_config()).double().eval()
    model = perturb_gpt2(model, 1)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr(), "lm_head must be tied"
    return model


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def loaded(hf_model):
    return ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict())


def _tokens(config, T, seed=0, B=3):
    return np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T))


@pytest.mark.parametrize("T", [1, 7, 23])
def test_reference_logits_match_hf(hf_model, loaded, T):
    params, config = loaded
    tokens = _tokens(config, T)
    want = _hf_logits(hf_model, tokens)
    assert np.abs(want).max() > 1.0, "logits near 0: the comparison would be trivial"
    got = ref_gpt.forward(params, config, tokens)
    c = assert_close("logits vs HF", want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    print(f"[reference vs HF] {c}")


@pytest.mark.parametrize("T", [1, 23])
def test_fast_logits_match_hf(hf_model, loaded, T):
    params, config = loaded
    tokens = _tokens(config, T, seed=1)
    want = _hf_logits(hf_model, tokens)
    got = fast_gpt.forward(params, config, torch.from_numpy(tokens)).detach().numpy()
    c = assert_close("fast logits vs HF", want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    print(f"[fast vs HF] {c}")


def test_log_prob_matches_hf_cross_entropy(hf_model, loaded):
    """-log p(x) = the summed cross-entropy of HF's float64 logits on [bos, x] against x.
    (HF's own `.loss` upcasts to float32, so the cross-entropy is taken here in float64.)"""
    params, config = loaded
    x = _tokens(config, 9, seed=2)
    ids = torch.from_numpy(np.concatenate([np.full((x.shape[0], 1), config.bos_token), x], axis=1))
    with torch.no_grad():
        logits = hf_model(ids[:, :-1]).logits  # (B, T, V) float64
        want = -torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(1)
    assert want.dtype == torch.float64
    c = assert_close("log_prob vs HF", want.numpy(), ref_gpt.log_prob(params, config, x), "float64")
    print(f"[reference vs HF] {c}")


@pytest.mark.parametrize("T0,N", [(1, 22), (4, 12)])
def test_greedy_tokens_match_hf_generate(hf_model, loaded, T0, N):
    params, config = loaded
    prompt = _tokens(config, T0, seed=3)
    with torch.no_grad():
        want = hf_model.generate(
            torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=N, min_new_tokens=0, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None,
        ).numpy()  # fmt: skip
    assert want.shape == (prompt.shape[0], T0 + N)
    assert np.array_equal(ref_gpt.greedy(params, config, prompt, N), want)
    got = fast_gpt.greedy(params, config, torch.from_numpy(prompt), N)
    assert np.array_equal(got.cpu().numpy(), want)
    assert len(np.unique(want[:, T0:])) > 2, "greedy output is nearly constant: the comparison would be weak"


def test_to_hf_gpt2_round_trip(hf_model, loaded):
    params, config = loaded
    state, hf_config = ref_gpt.to_hf_gpt2(params, config)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).double().eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    tokens = _tokens(config, 23, seed=4)
    c = assert_close("round-trip logits", _hf_logits(hf_model, tokens), _hf_logits(model, tokens), "float64")
    assert c.max_err == 0.0, f"the round-tripped HF model computes different logits: {c}"
    back, config2 = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    assert config2 == config
    assert back.keys() == params.keys()
    for k in params:
        assert np.array_equal(back[k], params[k]), k


# ----------------------------------------------------------------------------- GPT2Config's options

ALL_OPTIONS = dict(activation_function="relu", n_inner=37, scale_attn_weights=False,
                   scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False)  # fmt: skip
OPTIONS = {  # name -> (GPT2Config overrides, the Config fields they give)
    "gelu": ({"activation_function": "gelu"}, {"activation": "gelu_erf"}),
    "gelu_python": ({"activation_function": "gelu_python"}, {"activation": "gelu_erf"}),
    "gelu_fast": ({"activation_function": "gelu_fast"}, {"activation": "gelu_fast"}),
    "gelu_pytorch_tanh": ({"activation_function": "gelu_pytorch_tanh"}, {"activation": "gelu_tanh"}),
    "gelu_python_tanh": ({"activation_function": "gelu_python_tanh"}, {"activation": "gelu_tanh"}),
    "relu": ({"activation_function": "relu"}, {"activation": "relu"}),
    "n_inner": ({"n_inner": 37}, {"n_inner": 37}),
    "no_scale_attn_weights": ({"scale_attn_weights": False}, {"scale_attn": False}),
    "scale_attn_by_inverse_layer_idx": ({"scale_attn_by_inverse_layer_idx": True},
                                        {"scale_attn_by_inverse_layer_idx": True}),
    "untied_head": ({"tie_word_embeddings": False}, {"tie_word_embeddings": False}),
    "all": (ALL_OPTIONS, dict(activation="relu", n_inner=37, scale_attn=False, scale_attn_by_inverse_layer_idx=True,
                              tie_word_embeddings=False)),
}  # fmt: skip
# Options whose equation equals GPT-2's default to ~1e-12 (gelu_fast rounds sqrt(2/pi) to 10 digits) or
# exactly (the other tanh GELUs): the comparison cannot tell them from the default, so no check that it could.
# (n_inner cannot be undone on the same weights: test_n_inner_changes_the_shapes shows it matters.)
INDISTINGUISHABLE = ("gelu_fast", "gelu_pytorch_tanh", "gelu_python_tanh", "n_inner")
# HF names that to_hf_gpt2 writes back as the canonical name of the same equation ("gelu_new", "gelu"),
# which transformers computes with another kernel: equal to rounding, not bit for bit.
ALIASES = ("gelu_pytorch_tanh", "gelu_python_tanh", "gelu_python")


@functools.lru_cache(maxsize=None)
def option_model(name: str, attn: str = "sdpa"):
    """A perturbed float64 HF GPT2LMHeadModel with option `name`, three layers (layer scales 1, 1/2, 1/3)."""
    torch.manual_seed(0)
    config = _hf_config(n_layer=3, **OPTIONS[name][0])
    config._attn_implementation = attn
    model = perturb_gpt2(transformers.GPT2LMHeadModel(config).double().eval(), 5)
    tied = model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert tied == config.tie_word_embeddings
    return model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_logits_match_hf(name, attn):
    """Reference and fast float64 logits = HF's, with the option (and HF's attention kernel) named."""
    model = option_model(name, attn)
    params, config = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    for field, value in OPTIONS[name][1].items():
        assert getattr(config, field) == value, (field, getattr(config, field))
    assert ("lm_head.w" in params) == (not config.tie_word_embeddings)
    tokens = _tokens(config, 23, seed=6)
    want = _hf_logits(model, tokens)
    assert np.abs(want).max() > 1.0, "logits near 0: the comparison would be trivial"
    c = assert_close(f"{name} logits vs HF ({attn})", want, ref_gpt.forward(params, config, tokens), "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    got = fast_gpt.forward(params, config, torch.from_numpy(tokens)).numpy()
    c = assert_close(f"{name} fast logits vs HF ({attn})", want, got, "float64")
    assert c.max_err <= LOGIT_ATOL, str(c)
    if name not in INDISTINGUISHABLE:  # the test can fail: GPT-2's defaults on the same weights are far off
        default = dataclasses.replace(config, activation="gelu_tanh", scale_attn=True,
                                      scale_attn_by_inverse_layer_idx=False, tie_word_embeddings=True)  # fmt: skip
        default_params = {k: v for k, v in params.items() if k != "lm_head.w"}
        assert np.abs(ref_gpt.forward(default_params, default, tokens) - want).max() > 1e-3


def test_n_inner_changes_the_shapes():
    """n_inner (and nothing else) is the MLP's hidden size: without it the weights would not fit."""
    model = option_model("n_inner")
    params, config = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    assert config.inner_dim == 37 and params["blocks.2.mlp.fc.w"].shape == (6, 37)
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc\.w"):
        ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict() | {"n_inner": None})


@pytest.mark.parametrize("name", list(OPTIONS))
def test_option_round_trip(name):
    """to_hf_gpt2 writes the option: GPT2LMHeadModel loads the state strictly and computes the same
    logits, and from_hf_gpt2 reads back the same Config and params."""
    model = option_model(name)
    params, config = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    state, hf_config = ref_gpt.to_hf_gpt2(params, config)
    assert hf_config["tie_word_embeddings"] == config.tie_word_embeddings
    again = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).double().eval()
    again.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    tied = again.lm_head.weight.data_ptr() == again.transformer.wte.weight.data_ptr()
    assert tied == config.tie_word_embeddings
    tokens = _tokens(config, 23, seed=7)
    c = assert_close(f"{name} round-trip logits", _hf_logits(model, tokens), _hf_logits(again, tokens), "float64")
    if name in ALIASES:
        assert hf_config["activation_function"] in ("gelu_new", "gelu") and c.max_err <= LOGIT_ATOL, str(c)
    else:
        assert c.max_err == 0.0, f"the round-tripped HF model computes different logits: {c}"
    back, config2 = ref_gpt.from_hf_gpt2(_state(again), again.config.to_dict())
    assert config2 == config
    assert back.keys() == params.keys()
    for k in params:
        assert np.array_equal(back[k], params[k]), k


@pytest.mark.parametrize("T0,N", [(1, 22), (4, 12)])
def test_all_options_greedy_tokens_match_hf_generate(T0, N):
    model = option_model("all")
    params, config = ref_gpt.from_hf_gpt2(_state(model), model.config.to_dict())
    prompt = _tokens(config, T0, seed=8)
    with torch.no_grad():
        want = model.generate(
            torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
            max_new_tokens=N, min_new_tokens=0, do_sample=False, num_beams=1, pad_token_id=0, eos_token_id=None,
        ).numpy()  # fmt: skip
    assert want.shape == (prompt.shape[0], T0 + N)
    assert np.array_equal(ref_gpt.greedy(params, config, prompt, N), want)
    assert np.array_equal(fast_gpt.greedy(params, config, torch.from_numpy(prompt), N).cpu().numpy(), want)
    assert len(np.unique(want[:, T0:])) > 2, "greedy output is nearly constant: the comparison would be weak"


def test_a_different_lm_head_is_an_untied_head(hf_model):
    """A tied GPT2Config whose state holds a lm_head.weight other than wte: transformers then loads
    the head untied (and says so), and so does from_hf_gpt2."""
    untied = option_model("untied_head")
    state = _state(untied)
    params, config = ref_gpt.from_hf_gpt2(state, untied.config.to_dict() | {"tie_word_embeddings": True})
    assert config.tie_word_embeddings is False
    assert np.array_equal(params["lm_head.w"], state["lm_head.weight"].numpy())
    tokens = _tokens(config, 9, seed=9)
    c = assert_close("untied logits vs HF", _hf_logits(untied, tokens), ref_gpt.forward(params, config, tokens),
                     "float64")  # fmt: skip
    assert c.max_err <= LOGIT_ATOL, str(c)
    # a tied model's state (lm_head.weight = wte) stays tied
    assert ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict())[1].tie_word_embeddings is True


def test_untied_config_needs_the_lm_head(hf_model):
    state = {k: v for k, v in _state(hf_model).items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match=r"missing 'lm_head.weight' \(hf_config\['tie_word_embeddings'\] is False"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict() | {"tie_word_embeddings": False})


@pytest.mark.parametrize("activation", ["silu", "quick_gelu", "gelu_accurate", "gelu_10", "tanh", "swiglu"])
def test_rejects_unsupported_activation(hf_model, activation):
    with pytest.raises(ValueError, match=rf"hf_config\['activation_function'\]: expected one of .*'relu'.*, "
                                         rf"got '{activation}'"):  # fmt: skip
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"activation_function": activation})


def test_rejects_cross_attention_and_non_bool_options(hf_model):
    with pytest.raises(ValueError, match=r"hf_config\['add_cross_attention'\]: expected False"):
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"add_cross_attention": True})
    with pytest.raises(ValueError, match=r"hf_config\['scale_attn_weights'\]: expected a bool, got 'no'"):
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"scale_attn_weights": "no"})
    with pytest.raises(ValueError, match=r"Config\.n_inner: expected None \(4 n_embd\) or a positive int, got 0"):
        ref_gpt.from_hf_gpt2(_state(hf_model), hf_model.config.to_dict() | {"n_inner": 0})


@pytest.mark.parametrize("hf_name", ["gelu_new", "gelu_pytorch_tanh", "gelu_python_tanh", "gelu", "gelu_python",
                                     "gelu_fast", "relu"])  # fmt: skip
def test_activations_are_hf_act2fn(hf_name):
    """Each HF activation name maps to the reference function computing HF's ACT2FN[name]
    (float64, to a few ulps), and fast.nn's twin computes the same."""
    from transformers.activations import ACT2FN

    from chainrule.fast import gpt as fgpt

    name = ref_gpt._HF_ACTIVATIONS[hf_name]
    x = np.linspace(-6.0, 6.0, 1001)
    want = ACT2FN[hf_name](torch.from_numpy(x)).numpy()
    assert np.abs(ref_gpt.ACTIVATIONS[name](x) - want).max() <= 1e-15
    assert np.abs(fgpt.ACTIVATIONS[name](torch.from_numpy(x)).numpy() - want).max() <= 1e-15


def test_rejects_unexpected_and_missing_keys(hf_model):
    state = _state(hf_model)
    state["transformer.h.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict())
    state = _state(hf_model)
    del state["transformer.h.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"blocks\.1\.ln_2\.b"):
        ref_gpt.from_hf_gpt2(state, hf_model.config.to_dict())
