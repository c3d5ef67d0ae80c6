"""reference.rnn (float64 NumPy, the truth) against every backend of fast.rnn.

The recurrent layers (rnn_tanh, rnn_relu, lstm, gru; 1 to 3 layers, with and without an
initial state, with and without biases; hidden 1, 3, 5, 7, and 64 for the CPU's oneDNN
LSTM kernel) and the recurrent LM of every kind, on odd sizes (hidden 3, 5, 7;
vocabularies 13 and 59; T = 1 and 13), with parameters far from
torch's init (`reference.rnn.random_params`). Compared: layer outputs and final states,
logits, log_prob, logits through the recurrent state (chunked prefill + steps), greedy
tokens, tokens sampled from shared uniforms, and gradients of the mean NLL (autograd vs
finite differences of the reference). Low precision is judged relative to the naive
same-dtype run: the reference itself in float32 NumPy, or fast.rnn's explicit cells
(impl="loop") in bfloat16.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from diff_tests.conftest import check
from chainrule.fast import backend as fb
from chainrule.fast import rnn as fast_rnn
from chainrule.reference import rnn as ref_rnn
from chainrule.reference.checks import (
    FD_ACCURACY, as_float64, assert_tokens, finite_difference_grad, logits_through_cache, naive_float32,
)  # fmt: skip

BATCH = 2


class ModelSide:
    """The fast side of one backend for a model module pair (reference, fast): fed float64
    NumPy parameters and NumPy tokens, returning NumPy arrays. On cupy-f64 it runs the
    reference itself on CuPy arrays."""

    def __init__(self, backend, reference, fast, naive_impl: str):
        self.backend, self.reference, self.fast, self.naive_impl = backend, reference, fast, naive_impl
        self.name, self.dtype = backend.name, backend.dtype
        self.is_cupy = backend.kind == "cupy"
        self.low_precision = self.dtype != "float64"
        self.module = reference if self.is_cupy else fast
        if self.is_cupy:
            import cupy

            self.cp = cupy

    def params(self, params: dict) -> dict:
        if self.is_cupy:
            return {k: self.cp.asarray(v) for k, v in params.items()}
        return fb.to_torch(params, self.backend.device, self.backend.torch_dtype)

    def array(self, a, floating=False):
        a = np.asarray(a)
        if self.is_cupy:
            return self.cp.asarray(a)
        if floating:
            return torch.as_tensor(a, device=self.backend.device).to(self.backend.torch_dtype)
        return torch.as_tensor(a, dtype=torch.int64, device=self.backend.device)

    @staticmethod
    def numpy(a) -> np.ndarray:
        kind = type(a).__module__.split(".")[0]
        if kind == "torch":
            return as_float64(a) if a.is_floating_point() else a.detach().cpu().numpy()
        if kind == "cupy":
            return a.get()
        return np.asarray(a)

    def forward(self, P, config, tokens, naive=False):
        if self.is_cupy:
            return self.numpy(self.reference.forward(P, config, self.array(tokens)))
        impl = self.naive_impl if naive else "fused"
        return self.numpy(self.fast.forward(P, config, self.array(tokens), impl=impl))

    def log_prob(self, P, config, tokens, naive=False):
        if self.is_cupy:
            return self.numpy(self.reference.log_prob(P, config, self.array(tokens)))
        impl = self.naive_impl if naive else "fused"
        return self.numpy(self.fast.log_prob(P, config, self.array(tokens), impl=impl))

    def _naive(self, reference_fn, fast_fn, P, config, tokens):
        """float32: the spec in float32 NumPy; bfloat16: the fast path's unfused impl; else None."""
        if not self.low_precision or self.is_cupy:
            return None
        if self.dtype == "float32":
            return naive_float32(reference_fn, P, config, np.asarray(tokens))
        return fast_fn(P, config, tokens, naive=True)

    def naive_forward(self, P, config, tokens):
        return self._naive(self.reference.forward, self.forward, P, config, tokens)

    def naive_log_prob(self, P, config, tokens):
        return self._naive(self.reference.log_prob, self.log_prob, P, config, tokens)

    def cached_logits(self, P, config, tokens, chunks):
        return logits_through_cache(self.module, P, config, self.array(tokens), chunks)

    def generate(self, P, config, prompt, n, u=None):
        return self.numpy(self.module.generate(P, config, self.array(prompt), n, u=u))

    def sample(self, P, config, rng, prompt, n):
        return self.numpy(self.module.sample(P, config, rng, self.array(prompt), n))


@pytest.fixture
def side(backend):
    return ModelSide(backend, ref_rnn, fast_rnn, "loop")


# ============================================================================= the layers

LAYER_CASES = [  # (mode, input size, hidden, layers, bias)
    ("rnn_tanh", 3, 5, 2, True),
    ("rnn_relu", 5, 7, 3, True),
    ("lstm", 3, 5, 2, True),
    ("lstm", 1, 1, 1, False),
    ("lstm", 5, 64, 1, True),  # large enough for the CPU's oneDNN kernel (fast.rnn._fused)
    ("gru", 5, 3, 3, True),
    ("gru", 7, 1, 1, False),
]
REF_LAYERS = {"rnn_tanh": ref_rnn.rnn_tanh, "rnn_relu": ref_rnn.rnn_relu, "lstm": ref_rnn.lstm, "gru": ref_rnn.gru}
FAST_LAYERS = {"rnn_tanh": fast_rnn.rnn_tanh, "rnn_relu": fast_rnn.rnn_relu, "lstm": fast_rnn.lstm,
               "gru": fast_rnn.gru}  # fmt: skip


@functools.lru_cache(maxsize=None)
def layer_case(mode, I, H, L, bias, with_state):
    """(params, x, state or None, reference (outputs, h_n[, c_n])) -- once per process."""
    rng = np.random.default_rng([len(mode), I, H, L, int(bias)])
    params = {k: rng.normal(0.0, 1.0 / np.sqrt(s[-1]), s) for k, s in ref_rnn.layer_shapes(mode, I, H, L, bias).items()}
    x = rng.normal(0.0, 1.0, (BATCH + 1, 13, I))
    state = None
    if with_state:
        state = (rng.normal(0.0, 0.5, (L, BATCH + 1, H)), rng.normal(0.0, 0.5, (L, BATCH + 1, H)))
        state = state if mode == "lstm" else state[0]
    out, final = REF_LAYERS[mode](params, x, state)
    return params, x, state, (out,) + (final if mode == "lstm" else (final,))


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("case_key", LAYER_CASES, ids=lambda c: f"{c[0]}-I{c[1]}-H{c[2]}-L{c[3]}{'' if c[4] else '-nobias'}")
def test_layers(side, case_key, with_state):
    params, x, state, truth = layer_case(*case_key, with_state)
    mode = case_key[0]
    P = side.params(params)
    X = side.array(x, floating=True)
    S = None
    if state is not None:
        S = tuple(side.array(s, floating=True) for s in state) if mode == "lstm" else side.array(state, floating=True)

    def run(impl):
        if side.is_cupy:
            out, final = REF_LAYERS[mode](P, X, S)
        else:
            out, final = FAST_LAYERS[mode](P, X, S, impl=impl)
        return [side.numpy(a) for a in (out,) + (final if mode == "lstm" else (final,))]

    got = run("fused")
    naive = run("loop") if side.low_precision and not side.is_cupy else [None] * len(got)
    if side.dtype == "float32":  # the spec itself in float32 NumPy
        p32 = {k: v.astype(np.float32) for k, v in params.items()}
        s32 = None if state is None else (tuple(s.astype(np.float32) for s in state) if mode == "lstm"
                                          else state.astype(np.float32))  # fmt: skip
        out, final = REF_LAYERS[mode](p32, x.astype(np.float32), s32)
        naive = [a.astype(np.float64) for a in (out,) + (final if mode == "lstm" else (final,))]
    for name, t, g, n in zip(("outputs", "h_n", "c_n"), truth, got, naive):
        assert g.shape == t.shape
        check(f"{mode} {name}", t, g, side, naive=n)


# ============================================================================= the language model

CONFIGS = {
    "elman": ref_rnn.Config(kind="elman", vocab_size=13, n_embd=3, hidden=7, n_layer=2, bos_token=5),
    "elman-relu": ref_rnn.Config(kind="elman", vocab_size=59, n_embd=5, hidden=5, nonlinearity="relu"),
    "lstm": ref_rnn.Config(kind="lstm", vocab_size=59, n_embd=5, hidden=3, n_layer=2, bos_token=58),
    "gru": ref_rnn.Config(kind="gru", vocab_size=13, n_embd=1, hidden=7, n_layer=3),
}
CASES = [(name, T) for name in CONFIGS for T in (1, 13)]


@functools.lru_cache(maxsize=None)
def case(name: str, T: int):
    """(config, float64 params, tokens (B, T), reference logits) -- once per process."""
    config = CONFIGS[name]
    params = ref_rnn.random_params(config, np.random.default_rng(100 + T + len(name)))
    tokens = np.random.default_rng(T + len(name)).integers(0, config.vocab_size, size=(BATCH, T))
    return config, params, tokens, ref_rnn.forward(params, config, tokens)


def _case_id(c):
    return f"{c[0]}-T{c[1]}"


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_logits(side, case_key):
    config, params, tokens, truth = case(*case_key)
    P = side.params(params)
    got = side.forward(P, config, tokens)
    assert got.shape == (BATCH, case_key[1], config.vocab_size)
    check("logits", truth, got, side, naive=side.naive_forward(P, config, tokens))


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_log_prob(side, case_key):
    config, params, tokens, _ = case(*case_key)
    truth = ref_rnn.log_prob(params, config, tokens)
    P = side.params(params)
    got = side.log_prob(P, config, tokens)
    assert got.shape == (BATCH,)
    check("log_prob", truth, got, side, naive=side.naive_log_prob(P, config, tokens))


@pytest.mark.parametrize("case_key", [c for c in CASES if c[1] > 1], ids=_case_id)
def test_state_logits(side, case_key):
    """Chunked prefill (2 then 3 tokens) through the recurrent state, then one step per token = forward."""
    config, params, tokens, truth = case(*case_key)
    P = side.params(params)
    got = side.cached_logits(P, config, tokens, [2, 3])
    check("logits through the state (prefill 2 + 3, then steps)", truth, got, side,
          naive=side.naive_forward(P, config, tokens))  # fmt: skip


def check_generation(what, side, P, params, config, prompt, got, n, reference_forward, u=None):
    """Every generated token against the reference's choice given the backend's own prefix
    (`reference.checks.compare_tokens`); low precision judged where the reference's margin
    is clear of the backend's step-logit error (measured through its prefill + steps)."""
    T0 = prompt.shape[1]
    fast = (lambda x: side.cached_logits(P, config, x, [T0])) if side.low_precision else None
    result = assert_tokens(f"[{side.name}] {what}", prompt, got, lambda x: reference_forward(params, config, x),
                           side.dtype, u=u, fast=fast, max_new_tokens=n)  # fmt: skip
    print(result)


PROMPT, NEW = 3, 21


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_tokens(side, name):
    config, params, tokens, _ = case(name, 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    got = side.generate(P, config, prompt, NEW)
    check_generation("greedy tokens", side, P, params, config, prompt, got, NEW, ref_rnn.forward)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampled_tokens_shared_uniforms(side, name):
    config, params, tokens, _ = case(name, 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    u = np.random.default_rng(len(name)).random((BATCH, NEW))
    got = side.generate(P, config, prompt, NEW, u=u)
    check_generation("sampled tokens", side, P, params, config, prompt, got, NEW, ref_rnn.forward, u=u)


def test_sample_with_same_rng_seed(side):
    config, params, tokens, _ = case("lstm", 13)
    P = side.params(params)
    prompt = tokens[:, :PROMPT]
    got = side.sample(P, config, np.random.default_rng(3), prompt, NEW)
    u = np.random.default_rng(3).random((BATCH, NEW))
    assert np.array_equal(ref_rnn.sample(params, config, np.random.default_rng(3), prompt, NEW),
                          ref_rnn.generate(params, config, prompt, NEW, u=u))  # fmt: skip
    check_generation("sample(rng) tokens", side, P, params, config, prompt, got, NEW, ref_rnn.forward, u=u)


# ============================================================================= gradients


def mean_nll(module, params, config, tokens):
    """Mean NLL per token in nats: -(1 / (B T)) sum_b log p(x_b)."""
    return -float(np.mean(module.log_prob(params, config, tokens))) / tokens.shape[1]


def gradient_truth(module, config, params, tokens, extra=()):
    """(coordinates, finite-difference gradient, worst self-consistency): one random entry of every
    (non-empty) parameter, plus `extra` coordinates."""
    rng = np.random.default_rng(99)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape))
              for n, shape in module.param_shapes(config).items() if 0 not in shape]  # (0, h): no context
    coords += list(extra)
    fd = [finite_difference_grad(lambda p: mean_nll(module, p, config, tokens), params, n, i) for n, i in coords]
    return coords, np.array([d.value for d in fd]), max(d.error for d in fd)


def check_gradient(side, fast_module, config, params, tokens, coords, truth, fd_err, naive_impl):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    print(f"[{side.name}] finite-difference self-consistency {fd_err:.2e}")
    assert fd_err <= FD_ACCURACY, f"the finite-difference truth moves by {fd_err:.2e} when h doubles (needed {FD_ACCURACY:g})"

    def autograd(impl):
        P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
        loss = -fast_module.log_prob(P, config, side.array(tokens), impl=impl).mean() / tokens.shape[1]
        loss.backward()
        return np.array([side.numpy(P[n].grad[i]) for n, i in coords], dtype=np.float64)

    got = autograd("fused")
    naive = autograd(naive_impl) if side.low_precision else None
    assert np.abs(truth).max() > 1e-3, "the sampled gradient entries are all ~0: the test would prove nothing"
    check("grad mean NLL", truth, got, side, naive=naive)


@functools.lru_cache(maxsize=None)
def _rnn_gradient_truth(name):
    config, params, tokens, _ = case(name, 13)
    return gradient_truth(ref_rnn, config, params, tokens, [("wte", (int(tokens[0, 2]), 0))])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradient_of_mean_nll(side, name):
    config, params, tokens, _ = case(name, 13)
    coords, truth, fd_err = _rnn_gradient_truth(name)
    check_gradient(side, fast_rnn, config, params, tokens, coords, truth, fd_err, "loop")
