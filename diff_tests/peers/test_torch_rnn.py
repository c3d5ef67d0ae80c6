"""reference.rnn against torch.nn.RNN (tanh and relu), torch.nn.LSTM and torch.nn.GRU: peers
nobody here wrote, loaded with the SAME state_dict.

Random modules in float64, batch_first, 1 to 3 layers, odd sizes (input 1, 3, 7; hidden
1, 3, 5), with and without biases, with and without an initial state, weights drawn far
from torch's init: the reference's outputs and final states equal the module's within
the float64 tolerance. The module's state_dict goes into the reference as it is (only
converted to NumPy), the reference's parameters load into a module with strict=True, a
batch_first=False module has the same state_dict, and an Embedding -> RNN -> Linear torch
LM gives the logits and log-likelihoods of reference.rnn's LM. Options the reference
does not implement (bidirectional, LSTM projections) are refused by name.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from chainrule.reference import rnn as ref_rnn  # noqa: E402
from chainrule.reference.checks import assert_close  # noqa: E402

MODULES = {  # mode -> (torch module class, extra constructor arguments, reference function)
    "rnn_tanh": (torch.nn.RNN, {"nonlinearity": "tanh"}, ref_rnn.rnn_tanh),
    "rnn_relu": (torch.nn.RNN, {"nonlinearity": "relu"}, ref_rnn.rnn_relu),
    "lstm": (torch.nn.LSTM, {}, ref_rnn.lstm),
    "gru": (torch.nn.GRU, {}, ref_rnn.gru),
}
SIZES = [(1, 1, 1), (3, 5, 2), (7, 3, 3)]  # (input, hidden, layers)
B, T = 3, 7


def _module(mode, I, H, L, bias, seed, batch_first=True):
    """A float64 torch module with every weight redrawn N(0, 1/fan_in) and biases N(0, 0.3^2)."""
    cls, extra, _ = MODULES[mode]
    torch.manual_seed(seed)
    module = cls(I, H, num_layers=L, bias=bias, batch_first=batch_first, **extra).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = 0.3 if name.startswith("bias") else 1.0 / np.sqrt(p.shape[1])
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * std)
    return module.eval()


def _numpy_state_dict(module) -> dict:
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"I{s[0]}-H{s[1]}-L{s[2]}")
@pytest.mark.parametrize("mode", list(MODULES))
def test_reference_equals_torch_module(mode, size, bias, with_state):
    I, H, L = size
    module = _module(mode, I, H, L, bias, seed=I + 10 * H + 100 * L)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, I, generator=g, dtype=torch.float64)
    h0 = torch.randn(L, B, H, generator=g, dtype=torch.float64) * 0.5
    c0 = torch.randn(L, B, H, generator=g, dtype=torch.float64) * 0.5
    fn = MODULES[mode][2]
    with torch.no_grad():
        if mode == "lstm":
            want, (h_n, c_n) = module(x, (h0, c0)) if with_state else module(x)
            got, (gh, gc) = fn(_numpy_state_dict(module), x.numpy(), (h0.numpy(), c0.numpy()) if with_state else None)
            assert_close("c_n", c_n, gc, "float64")
        else:
            want, h_n = module(x, h0) if with_state else module(x)
            got, gh = fn(_numpy_state_dict(module), x.numpy(), h0.numpy() if with_state else None)
    assert got.shape == (B, T, H) and gh.shape == (L, B, H)
    print(assert_close(f"{mode} outputs vs torch.nn", want, got, "float64"))
    assert_close("h_n", h_n, gh, "float64")


@pytest.mark.parametrize("mode", list(MODULES))
def test_reference_params_load_into_torch_strictly(mode):
    """Names and shapes are torch's: reference-made parameters load with strict=True, and the
    batch_first=False module (same state_dict) computes the same thing on (T, B, I) inputs."""
    I, H, L = 3, 5, 2
    rng = np.random.default_rng(0)
    params = {k: rng.normal(0.0, 0.5, s) for k, s in ref_rnn.layer_shapes(mode, I, H, L).items()}
    cls, extra, fn = MODULES[mode]
    module = cls(I, H, num_layers=L, batch_first=False, **extra).double()
    module.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=True)
    x = rng.normal(0.0, 1.0, (B, T, I))
    with torch.no_grad():
        want = module(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1)  # (B, T, H)
    assert_close(f"{mode} outputs vs torch.nn (batch_first=False)", want, fn(params, x)[0], "float64")


class TorchLM(torch.nn.Module):
    """The recurrent LM written with torch.nn modules: Embedding -> RNN/LSTM/GRU -> Linear."""

    def __init__(self, config):
        super().__init__()
        cls = {"elman": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[config.kind]
        extra = {"nonlinearity": config.nonlinearity} if config.kind == "elman" else {}
        self.wte = torch.nn.Embedding(config.vocab_size, config.n_embd)
        self.rnn = cls(config.n_embd, config.hidden, num_layers=config.n_layer, batch_first=True, **extra)
        self.head = torch.nn.Linear(config.hidden, config.vocab_size)

    def forward(self, tokens):
        return self.head(self.rnn(self.wte(tokens))[0])

    def chainrule_params(self) -> dict:
        """The chainrule names: wte, rnn.<torch name>, head.w = Linear.weight^T (in, out), head.b."""
        params = {"wte": self.wte.weight, "head.w": self.head.weight.T, "head.b": self.head.bias}
        params |= {"rnn." + k: v for k, v in self.rnn.state_dict().items()}
        return {k: v.detach().numpy().copy() for k, v in params.items()}


LM_CONFIGS = [
    ref_rnn.Config(kind="elman", vocab_size=13, n_embd=3, hidden=5, n_layer=2, bos_token=3),
    ref_rnn.Config(kind="elman", vocab_size=7, n_embd=5, hidden=3, nonlinearity="relu"),
    ref_rnn.Config(kind="lstm", vocab_size=13, n_embd=3, hidden=7, n_layer=3),
    ref_rnn.Config(kind="gru", vocab_size=59, n_embd=1, hidden=5, n_layer=2, bos_token=58),
]


@pytest.mark.parametrize("config", LM_CONFIGS, ids=lambda c: f"{c.kind}-{c.nonlinearity}-L{c.n_layer}")
def test_lm_equals_torch_modules(config):
    torch.manual_seed(config.vocab_size + config.n_layer)
    model = TorchLM(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # away from the init's small weights: O(1) logits
    params = model.chainrule_params()
    tokens = np.random.default_rng(config.hidden).integers(0, config.vocab_size, (3, 11))
    t = torch.from_numpy(tokens)
    with torch.no_grad():
        logits = model(t)
        bos = torch.full((3, 1), config.bos_token, dtype=torch.int64)
        logp = torch.log_softmax(model(torch.cat([bos, t[:, :-1]], dim=1)), dim=-1)
        want = logp.gather(-1, t[:, :, None])[:, :, 0].sum(dim=1)
    assert_close(f"{config.kind} LM logits vs torch.nn", logits, ref_rnn.forward(params, config, tokens), "float64")
    assert_close(f"{config.kind} LM log_prob vs torch.nn", want, ref_rnn.log_prob(params, config, tokens), "float64")


@pytest.mark.parametrize("kwargs,match", [
    ({"bidirectional": True}, r"unexpected parameter 'weight_ih_l0_reverse' \(bidirectional modules are not implemented\)"),
    ({"proj_size": 2}, r"unexpected parameter 'weight_hr_l0' \(LSTM projections, proj_size > 0, are not implemented\)"),
], ids=["bidirectional", "proj_size"])  # fmt: skip
def test_unsupported_torch_options_are_refused_by_name(kwargs, match):
    module = torch.nn.LSTM(3, 5, batch_first=True, **kwargs).double()
    with pytest.raises(ValueError, match=match):
        ref_rnn.lstm(_numpy_state_dict(module), np.zeros((1, 2, 3)))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("mode", list(MODULES))
def test_fast_takes_the_state_dict_tensors_as_they_are(mode, bias):
    """fast.rnn on `module.state_dict()` itself (torch tensors, no conversion) gives the module's outputs
    and final state. (Not bit for bit: torch picks its CPU kernel path by whether the weights require
    grad, and the paths round differently.)"""
    from chainrule.fast import rnn as fast_rnn

    module = _module(mode, 3, 5, 2, bias, seed=11)
    fn = {"rnn_tanh": fast_rnn.rnn_tanh, "rnn_relu": fast_rnn.rnn_relu, "lstm": fast_rnn.lstm, "gru": fast_rnn.gru}[mode]
    x = torch.randn(B, T, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        want, want_state = module(x)
        got, got_state = fn(module.state_dict(), x)
    assert_close(f"fast {mode} on the module's state_dict", want, got, "float64")
    for w, g in zip(want_state if mode == "lstm" else (want_state,), got_state if mode == "lstm" else (got_state,)):
        assert_close(f"fast {mode} final state", w, g, "float64")
