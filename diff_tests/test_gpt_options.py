"""reference.gpt against every backend of fast.gpt with GPT2Config's options (reference.gpt.Config):
another activation, an MLP of odd hidden size (n_inner), unscaled attention scores divided by
layer + 1 (scale_attn=False, scale_attn_by_inverse_layer_idx=True) and an untied LM head, all at
once, for each activation GPT-2's default (the fused tanh GELU) is not.

As diff_tests/test_gpt.py: the same float64 parameters far from the init on every backend;
logits and log_prob (low precision judged against the naive same-dtype baseline), logits
through the KV cache, greedy and sampled tokens, gradients (the untied head's included) against
finite differences of the reference; and the CPU inference kernels (matvec: the untied head's
transposed copy; matmul: oneDNN with the activation unfused) with their size threshold lowered.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from chainrule.fast import gpt as fast_gpt
from chainrule.reference import gpt as ref_gpt
from chainrule.reference.checks import FD_ACCURACY, assert_tokens, finite_difference_grad
from diff_tests.conftest import check


def _config(activation: str, n_inner: int):
    return ref_gpt.Config(vocab_size=59, block_size=59, n_layer=3, n_head=2, n_embd=6, bos_token=3,
                          activation=activation, n_inner=n_inner, scale_attn=False,
                          scale_attn_by_inverse_layer_idx=True, tie_word_embeddings=False)  # fmt: skip


CONFIGS = {"relu": _config("relu", 37), "gelu_erf": _config("gelu_erf", 38), "gelu_fast": _config("gelu_fast", 13)}
CASES = [(name, T) for name in CONFIGS for T in (1, 59)]
BATCH = 2


@functools.lru_cache(maxsize=None)
def case(name: str, T: int):
    """(config, float64 params, tokens (B, T), reference logits) -- computed once per process."""
    config = CONFIGS[name]
    params = ref_gpt.random_params(config, np.random.default_rng(2000 + T + len(name)))
    tokens = np.random.default_rng(T + 1).integers(0, config.vocab_size, size=(BATCH, T))
    return config, params, tokens, ref_gpt.forward(params, config, tokens)


def _case_id(c):
    return f"{c[0]}-T{c[1]}"


def test_the_options_matter():
    """Each option changes the reference's logits on these parameters (so the comparisons below could fail)."""
    config, params, tokens, truth = case("relu", 59)
    tied = {k: v for k, v in params.items() if k != "lm_head.w"}
    undo = (("activation", "gelu_tanh", params), ("scale_attn", True, params),
            ("scale_attn_by_inverse_layer_idx", False, params), ("tie_word_embeddings", True, tied))
    for field, value, p in undo:
        other = ref_gpt.forward(p, dataclasses.replace(config, **{field: value}), tokens)
        assert np.abs(other - truth).max() > 1e-2, field
    assert params["blocks.0.mlp.fc.w"].shape == (6, 37) and params["lm_head.w"].shape == (59, 6)


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
    truth = ref_gpt.log_prob(params, config, tokens)
    P = side.params(params)
    check("log_prob", truth, side.log_prob(P, config, tokens), side, naive=side.naive_log_prob(P, config, tokens))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_logits(side, name):
    """Chunked prefill (7, then 13), then one step per token = forward."""
    config, params, tokens, truth = case(name, 59)
    P = side.params(params)
    got = side.cached_logits(P, config, tokens, [7, 13])
    check("cache logits (prefill [7, 13] + 39 steps)", truth, got, side, naive=side.naive_forward(P, config, tokens))


def _check_generation(what, side, P, params, config, prompt, got, N, u=None):
    """Every generated token against the reference's choice given the same prefix (test_gpt.py's rule)."""
    T0 = prompt.shape[1]
    fast = (lambda x: side.cached_logits(P, config, x, [T0])) if side.low_precision else None
    print(assert_tokens(f"[{side.name}] {what}", prompt, got, lambda x: ref_gpt.forward(params, config, x),
                        side.dtype, u=u, fast=fast, max_new_tokens=N))  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_and_sampled_tokens(side, name):
    config, params, _, _ = case(name, 59)
    prompt = np.random.default_rng(11).integers(0, config.vocab_size, size=(BATCH, 5))
    N = config.block_size - 5 + 1
    P = side.params(params)
    _check_generation("greedy tokens", side, P, params, config, prompt, side.generate(P, config, prompt, N), N)
    u = np.random.default_rng(17).random((BATCH, N))
    got = side.generate(P, config, prompt, N, u=u)
    _check_generation("sampled tokens", side, P, params, config, prompt, got, N, u=u)


@functools.lru_cache(maxsize=None)
def _gradient_truth(name: str):
    """(coordinates, finite-difference gradient of the mean NLL, its worst self-consistency)."""
    config, params, tokens, _ = case(name, 59)

    def mean_nll(p):
        return -float(np.mean(ref_gpt.log_prob(p, config, tokens))) / tokens.shape[1]

    rng = np.random.default_rng(98)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref_gpt.param_shapes(config).items()]
    coords += [("lm_head.w", (int(tokens[0, 4]), 1)), ("wte", (int(tokens[0, 3]), 0))]  # used rows
    fd = [finite_difference_grad(mean_nll, params, n, i) for n, i in coords]
    return coords, np.array([d.value for d in fd]), max(d.error for d in fd)


@pytest.mark.parametrize("name", ["gelu_erf", "gelu_fast"])  # ReLU's kink defeats finite differences
def test_gradient_of_mean_nll(side, name):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    import torch

    config, params, tokens, _ = case(name, 59)
    coords, truth, fd_err = _gradient_truth(name)
    assert fd_err <= FD_ACCURACY, f"finite-difference truth not accurate enough ({fd_err:.2e})"

    def autograd(attn_impl):
        P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
        loss = -fast_gpt.log_prob(P, config, side.array(tokens), attn_impl=attn_impl).mean() / tokens.shape[1]
        loss.backward()
        return np.array([side.numpy(P[n].grad[i]) for n, i in coords], dtype=np.float64)

    assert np.abs(truth).max() > 1e-3, "the sampled gradient entries are all ~0: the test would prove nothing"
    got = autograd("sdpa")
    naive = autograd("math") if side.low_precision else None
    with torch.no_grad():
        check("grad mean NLL", truth, got, side, naive=naive)


@pytest.fixture
def cpu_kernels(side, monkeypatch):
    import torch

    if side.is_cupy or side.backend.device != "cpu":
        pytest.skip("the special inference kernels are CPU-only")
    monkeypatch.setattr(fast_gpt, "_CPU_KERNELS_MIN_WEIGHTS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the matvec split needs more than one thread
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_inference_kernels(side, cpu_kernels, name, batch):
    """matvec (batch 1: the untied head through its (C, V) copy; fc split over the threads, and
    mlp.proj too where n_inner is even) and matmul (oneDNN, the activation after it)."""
    config, params, tokens, truth = case(name, 59)
    tokens, truth = tokens[:batch], truth[:batch]
    P = side.params(params)
    mode = fast_gpt.kernel_mode(P, batch, differentiable=False)
    assert mode == ("matvec" if batch == 1 and side.dtype != "bfloat16" else "matmul"), mode
    naive = side.naive_forward(P, config, tokens)
    check(f"logits (CPU kernels, batch {batch})", truth, side.forward(P, config, tokens), side, naive=naive)
    check(f"cache logits (CPU kernels, batch {batch})", truth, side.cached_logits(P, config, tokens, [5]), side,
          naive=naive)  # fmt: skip
    prompt, N = tokens[:, :5], 55
    got = side.generate(P, config, prompt, N)
    _check_generation(f"greedy tokens (CPU kernels, batch {batch})", side, P, params, config, prompt, got, N)


# ----------------------------------------------------------------------------- decoders built on this GPT


def test_decoders_on_a_gpt_with_options():
    """The decoders that run this GPT's blocks and head themselves (parallel decoding, Medusa,
    batched speculative decoding) honour the options: Jacobi, lookahead and Medusa greedy decoding
    equal reference.gpt.greedy, reference and fast; fast speculative decoding equals the reference's
    tokens from the same uniforms (rows of different lengths: fast.speculative's per-row attention)."""
    import torch

    from chainrule.fast import medusa as fast_medusa
    from chainrule.fast import parallel_decoding as fast_pd
    from chainrule.fast import speculative as fast_spec
    from chainrule.reference import medusa as ref_medusa
    from chainrule.reference import parallel_decoding as ref_pd
    from chainrule.reference import sampling as ref_sampling
    from chainrule.reference import speculative as ref_spec

    config = dataclasses.replace(CONFIGS["relu"], vocab_size=13, block_size=29)
    rng = np.random.default_rng(5)
    params = ref_gpt.random_params(config, rng)
    prompt = rng.integers(0, config.vocab_size, (1, 5))
    want = ref_gpt.greedy(params, config, prompt, 15)
    assert len(np.unique(want[0, 5:])) > 2, "greedy output is nearly constant: the comparison would be weak"
    t = torch.as_tensor(prompt)
    assert np.array_equal(ref_pd.jacobi_decode(params, config, prompt, 15, 4)[0], want)
    assert np.array_equal(np.asarray(fast_pd.jacobi_decode(params, config, t, 15, 4)[0]), want)
    assert np.array_equal(ref_pd.lookahead_decode(params, config, prompt, 15)[0], want)
    assert np.array_equal(np.asarray(fast_pd.lookahead_decode(params, config, t, 15)[0]), want)

    medusa = ref_medusa.Config.for_base(config, n_heads=2, n_layers=1)
    fresh = ref_medusa.init(medusa, rng, params)
    assert np.array_equal(fresh["heads.0.out.w"], params["lm_head.w"].T)  # a fresh head is the base's (untied) head
    heads, choices = ref_medusa.random_params(medusa, rng), [(0,), (1,), (0, 0)]
    assert np.array_equal(ref_medusa.generate(params, config, heads, medusa, prompt, 15, choices)[0], want)
    assert np.array_equal(np.asarray(fast_medusa.generate(params, config, heads, medusa, t, 15, choices)[0]), want)

    draft_config = dataclasses.replace(config, n_layer=1, activation="gelu_erf", scale_attn=True)
    draft = ref_gpt.random_params(draft_config, rng)
    prompts, k, N = rng.integers(0, config.vocab_size, (3, 5)), 2, 8
    u = rng.random((3, N, 2 * k + 1))
    chain = ref_sampling.chain([])
    target_model, draft_model = ref_spec.gpt_model(params, config, chain), ref_spec.gpt_model(draft, draft_config, chain)
    rows = [ref_spec.generate(target_model, draft_model, prompts[b], k, N, u=u[b])[0] for b in range(3)]
    got, accepted = fast_spec.generate((params, config), (draft, draft_config), torch.as_tensor(prompts), k, N, u=u)
    assert np.array_equal(got.numpy(), np.stack(rows))
    assert len({tuple(a) for a in accepted.tolist()}) > 1, "every row accepted alike: the per-row path was not run"
