"""Validation of reference.rnn / reference.nplm and the same errors from fast.rnn / fast.nplm:
bad input raises ValueError naming the argument (or the parameter key), what was expected
and what was got -- never a silent wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import nplm as fast_nplm
from chainrule.fast import rnn as fast_rnn
from chainrule.reference import nplm, rnn

RNN_CONFIG = rnn.Config(kind="lstm", vocab_size=5, n_embd=3, hidden=4, n_layer=2)
RNN_PARAMS = rnn.init(RNN_CONFIG, np.random.default_rng(0))
NPLM_CONFIG = nplm.Config(vocab_size=5, order=3, n_embd=2, hidden=4)
NPLM_PARAMS = nplm.init(NPLM_CONFIG, np.random.default_rng(0))

MODELS = {  # name -> (reference module, fast module, config, params)
    "rnn": (rnn, fast_rnn, RNN_CONFIG, RNN_PARAMS),
    "nplm": (nplm, fast_nplm, NPLM_CONFIG, NPLM_PARAMS),
}
IMPLS = ("reference", "fast")


def _module(model, impl):
    ref, fast, config, params = MODELS[model]
    return (ref if impl == "reference" else fast), config, params


def _tokens(impl, a):
    return torch.as_tensor(a) if impl == "fast" else np.asarray(a)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs,match", [
    ({"kind": "transformer"}, r"Config\.kind: expected one of \('elman', 'lstm', 'gru'\), got 'transformer'"),
    ({"hidden": 0}, r"Config\.hidden: expected a positive int, got 0"),
    ({"n_layer": 1.0}, r"Config\.n_layer: expected a positive int, got 1\.0"),
    ({"vocab_size": True}, r"Config\.vocab_size: expected a positive int, got True"),
    ({"kind": "lstm", "nonlinearity": "relu"}, r"Config\.nonlinearity: expected one of \('tanh',\) for kind 'lstm'"),
    ({"nonlinearity": "sigmoid"}, r"Config\.nonlinearity: expected one of \('tanh', 'relu'\) for kind 'elman'"),
    ({"bos_token": 5}, r"Config\.bos_token: expected an int in \[0, 5\), got 5"),
], ids=["kind", "hidden", "float-layers", "bool-vocab", "lstm-relu", "sigmoid", "bos"])  # fmt: skip
def test_rnn_config_is_validated(kwargs, match):
    args = dict(kind="elman", vocab_size=5, n_embd=3, hidden=4) | kwargs
    with pytest.raises(ValueError, match=match):
        rnn.Config(**args)


@pytest.mark.parametrize("kwargs,match", [
    ({"order": 0}, r"Config\.order: expected a positive int, got 0"),
    ({"n_embd": -1}, r"Config\.n_embd: expected a positive int, got -1"),
    ({"direct": 1}, r"Config\.direct: expected a bool, got 1"),
    ({"bos_token": -1}, r"Config\.bos_token: expected an int in \[0, 5\), got -1"),
], ids=["order", "n_embd", "direct", "bos"])  # fmt: skip
def test_nplm_config_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nplm.Config(**(dict(vocab_size=5, order=3, n_embd=2, hidden=4) | kwargs))


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("fn", ["forward", "log_prob"])
@pytest.mark.parametrize("tokens,match", [
    ([[0, 5, 1]], r"tokens: token ids must lie in \[0, 5\), got 5"),
    ([[0, -1, 1]], r"tokens: token ids must lie in \[0, 5\), got -1"),
    (np.zeros((2, 0), dtype=np.int64), r"tokens: expected length T >= 1, got T=0"),
    ([0, 1, 2], r"tokens: expected shape \(B, T\), got \(3,\)"),
    ([[[0, 1]]], r"tokens: expected shape \(B, T\), got \(1, 1, 2\)"),
    ([[0.0, 1.0]], r"tokens: expected an integer array, got .*float"),
], ids=["too-large", "negative", "empty", "1-D", "3-D", "float"])  # fmt: skip
def test_bad_tokens(impl, model, fn, tokens, match):
    module, config, params = _module(model, impl)
    with pytest.raises(ValueError, match=match):
        getattr(module, fn)(params, config, _tokens(impl, tokens))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model", list(MODELS))
def test_bad_generation_arguments(impl, model):
    module, config, params = _module(model, impl)
    prompt = _tokens(impl, [[0, 1]])
    with pytest.raises(ValueError, match=r"prompt: token ids must lie in \[0, 5\), got 7"):
        module.generate(params, config, _tokens(impl, [[0, 7]]), 2)
    with pytest.raises(ValueError, match=r"max_new_tokens: expected an int >= 0, got -1"):
        module.generate(params, config, prompt, -1)
    with pytest.raises(ValueError, match=r"u: expected shape \(1, 3\), got \(1, 2\)"):
        module.generate(params, config, prompt, 3, u=np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"u: expected uniforms in \[0, 1\), got 1\.0"):
        module.generate(params, config, prompt, 2, u=np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"tokens_t: expected shape \(B,\)"):
        module.step(params, config, module.init_cache(params, config, 1), prompt)
    with pytest.raises(ValueError, match=r"tokens: expected batch 2 \(the cache's\), got 1"):
        module.prefill(params, config, module.init_cache(params, config, 2), prompt)
    with pytest.raises(ValueError, match=r"batch: expected a positive int, got 0"):
        module.init_cache(params, config, 0)
    with pytest.raises(ValueError, match=r"cache: expected a dict with keys"):
        module.step(params, config, {"length": 0}, prompt[:, 0])


# ----------------------------------------------------------------------------- params


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model,key,shape", [
    ("rnn", "rnn.weight_hh_l1", (16, 4)), ("rnn", "head.w", (4, 5)), ("rnn", "wte", (5, 3)),
    ("nplm", "H", (4, 4)), ("nplm", "W", (4, 5)), ("nplm", "C", (5, 2)),
])  # fmt: skip
def test_missing_param_names_the_key_and_shape(impl, model, key, shape):
    module, config, params = _module(model, impl)
    params = {k: v for k, v in params.items() if k != key}
    match = rf"missing parameter '{key}' \(expected shape \({shape[0]}, {shape[1]}\)\)"
    for fn in (module.forward, module.log_prob, module.greedy):
        with pytest.raises(ValueError, match=match):
            fn(params, config, _tokens(impl, [[0, 1]]), *([2] if fn is module.greedy else []))
    with pytest.raises(ValueError, match=match):
        module.init_cache(params, config, 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model,key", [("rnn", "rnn.bias_ih_l0"), ("rnn", "head.b"), ("nplm", "U"), ("nplm", "d")])
def test_misshaped_param_names_the_key(impl, model, key):
    module, config, params = _module(model, impl)
    params = dict(params)
    want = tuple(params[key].shape)
    params[key] = np.zeros(want[:-1] + (want[-1] + 1,))
    got = want[:-1] + (want[-1] + 1,)
    with pytest.raises(ValueError, match=rf"params\['{key}'\]: expected shape \({want[0]},.*\), got \({got[0]},"):
        module.forward(params, config, _tokens(impl, [[0, 1]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_unexpected_param_is_named(impl):
    module, config, params = _module("nplm", impl)
    no_direct = nplm.Config(vocab_size=5, order=3, n_embd=2, hidden=4, direct=False)
    with pytest.raises(ValueError, match=r"unexpected parameters \['W'\] \(config\.direct is False"):
        module.forward(params, no_direct, _tokens(impl, [[0, 1]]))
    module, config, params = _module("rnn", impl)
    with pytest.raises(ValueError, match=r"unexpected parameters \['rnn\.weight_ih_l2'\]"):
        module.forward(params | {"rnn.weight_ih_l2": np.zeros((16, 4))}, config, _tokens(impl, [[0, 1]]))


def test_fast_params_of_mixed_dtype_are_refused():
    params = fast_rnn.checked_params(RNN_PARAMS, RNN_CONFIG)
    params = params | {"head.b": params["head.b"].float()}
    with pytest.raises(ValueError, match=r"params\['head\.b'\]: expected torch\.float64 on cpu .* got torch\.float32"):
        fast_rnn.forward(params, RNN_CONFIG, torch.tensor([[0, 1]]))


# ----------------------------------------------------------------------------- the recurrent layers

LAYERS = {
    "reference": {"rnn_tanh": rnn.rnn_tanh, "lstm": rnn.lstm, "gru": rnn.gru},
    "fast": {"rnn_tanh": fast_rnn.rnn_tanh, "lstm": fast_rnn.lstm, "gru": fast_rnn.gru},
}


def _layer_params(mode, I=3, H=4, L=2, bias=True):
    rng = np.random.default_rng(1)
    return {k: rng.normal(size=s) for k, s in rnn.layer_shapes(mode, I, H, L, bias).items()}


def _x(impl, a):
    return torch.as_tensor(a) if impl == "fast" else np.asarray(a)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["rnn_tanh", "lstm", "gru"])
def test_layer_inputs_are_validated(impl, mode):
    fn, params = LAYERS[impl][mode], _layer_params(mode)
    with pytest.raises(ValueError, match=r"x: expected shape \(B, T, I\) \(batch first\), got \(2, 3\)"):
        fn(params, _x(impl, np.zeros((2, 3))))
    with pytest.raises(ValueError, match=r"x: expected input size I=3 \(weight_ih_l0 is \(G\*H, I\)\), got 5"):
        fn(params, _x(impl, np.zeros((2, 1, 5))))
    with pytest.raises(ValueError, match=r"x: expected at least one time step, got T=0"):
        fn(params, _x(impl, np.zeros((2, 0, 3))))
    with pytest.raises(ValueError, match=r"x: expected a floating array \(B, T, I\), got .*int"):
        fn(params, _x(impl, np.zeros((2, 1, 3), dtype=np.int64)))
    bad_state = _x(impl, np.zeros((1, 2, 4)))
    state = (bad_state, bad_state) if mode == "lstm" else bad_state
    name = r"state\[0\] \(h0\)" if mode == "lstm" else "h0"
    with pytest.raises(ValueError, match=rf"{name}: expected a floating array of shape \(2, 2, 4\) \(num_layers, B, H\)"):
        fn(params, _x(impl, np.zeros((2, 1, 3))), state)


@pytest.mark.parametrize("impl", IMPLS)
def test_lstm_state_must_be_a_pair(impl):
    params = _layer_params("lstm")
    with pytest.raises(ValueError, match=r"state: expected None or a pair \(h0, c0\)"):
        LAYERS[impl]["lstm"](params, _x(impl, np.zeros((2, 1, 3))), _x(impl, np.zeros((2, 2, 4))))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("change,match", [
    (lambda p: p.pop("weight_hh_l1"), r"params: missing parameter 'weight_hh_l1' \(expected shape \(16, 4\)\)"),
    (lambda p: p.pop("bias_hh_l0"), r"params: missing parameter 'bias_hh_l0' \(expected shape \(16,\)\)"),
    (lambda p: p.update(weight_ih_l1=np.zeros((12, 4))),
     r"params\['weight_ih_l1'\]: expected shape \(16, 4\) \(lstm, 4 gate\(s\) x hidden 4\), got \(12, 4\)"),
    (lambda p: p.update(weight_ih=np.zeros((16, 3))), r"params: unexpected parameter 'weight_ih'"),
    (lambda p: p.pop("weight_ih_l0"), r"params: missing parameter 'weight_ih_l0'"),
    (lambda p: p.update(weight_hh_l0=np.zeros(16)),
     r"params\['weight_hh_l0'\]: expected a 2-D \(G\*H, H\) matrix, got shape \(16,\)"),
], ids=["missing-layer-weight", "one-bias-missing", "gru-shaped", "no-layer-suffix", "no-first-layer", "1-D"])  # fmt: skip
def test_layer_params_name_the_key(impl, change, match):
    params = _layer_params("lstm")
    change(params)
    with pytest.raises(ValueError, match=match):
        LAYERS[impl]["lstm"](params, _x(impl, np.zeros((2, 1, 3))))


def test_bias_free_layers_are_accepted():
    params = _layer_params("gru", bias=False)
    out, h = rnn.gru(params, np.ones((1, 2, 3)))
    assert out.shape == (1, 2, 4) and h.shape == (2, 1, 4)
