"""reference.gpt (float64 NumPy, the truth) against every backend of fast.gpt.

Random configs with odd sizes -- head_dim 1 and 3, vocabularies 59 and 113,
T = 1, 59, 113 -- and the *same* parameters on every backend, far from the GPT-2
init (`reference.gpt.random_params`) so nothing agrees by accident. Compared: logits,
log_prob, logits through the KV cache (chunked prefill + steps), greedy tokens,
tokens sampled from shared uniforms (`reference.checks.compare_tokens`), and
gradients of the mean NLL (autograd vs finite differences of the reference,
`reference.checks.finite_difference_grad`).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from diff_tests.conftest import check
from chainrule.fast import gpt as fast_gpt
from chainrule.reference import gpt as ref_gpt
from chainrule.reference.checks import FD_ACCURACY, assert_tokens, finite_difference_grad

CONFIGS = {
    # head_dim 1: three one-dimensional heads
    "hd1": ref_gpt.Config(vocab_size=59, block_size=113, n_layer=2, n_head=3, n_embd=3, bos_token=7),
    # head_dim 3, two heads, vocabulary 113
    "hd3": ref_gpt.Config(vocab_size=113, block_size=113, n_layer=2, n_head=2, n_embd=6, bos_token=0),
}
CASES = [(name, T) for name in CONFIGS for T in (1, 59, 113)]
BATCH = 2


@functools.lru_cache(maxsize=None)
def case(name: str, T: int):
    """(config, float64 params, tokens (B, T), reference logits) -- computed once per process."""
    config = CONFIGS[name]
    params = ref_gpt.random_params(config, np.random.default_rng(1000 + T + len(name)))
    tokens = np.random.default_rng(T).integers(0, config.vocab_size, size=(BATCH, T))
    return config, params, tokens, ref_gpt.forward(params, config, tokens)


def _case_id(c):
    return f"{c[0]}-T{c[1]}"


# ----------------------------------------------------------------------------- teacher forcing


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
    got = side.log_prob(P, config, tokens)
    assert got.shape == (BATCH,)
    check("log_prob", truth, got, side, naive=side.naive_log_prob(P, config, tokens))


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_kv_cache_logits(side, case_key):
    """Chunked prefill of a random-sized prefix, then one step per token = forward."""
    config, params, tokens, truth = case(*case_key)
    T = case_key[1]
    rng = np.random.default_rng(T + 5)
    chunks, left = [], T // 2
    while left:
        chunks.append(int(rng.integers(1, left + 1)))
        left -= chunks[-1]
    P = side.params(params)
    got = side.cached_logits(P, config, tokens, chunks)
    check(f"cache logits (prefill {chunks} + {T - T // 2} steps)", truth, got, side,
          naive=side.naive_forward(P, config, tokens))  # fmt: skip


# ----------------------------------------------------------------------------- generation


def _prompt_and_steps(name: str, T: int):
    """A prompt and a number of new tokens whose whole sequence fills length T + 1."""
    config, params, _, _ = case(name, T)
    T0 = min(T, 5)
    N = T - T0 + 1  # the last token is never fed: T0 + N - 1 = T <= block_size
    prompt = np.random.default_rng(T + 11).integers(0, config.vocab_size, size=(BATCH, T0))
    return config, params, prompt, N


def _check_generation(what, side, P, params, config, prompt, got, N, u=None):
    """Every token the fast side generated, judged against the reference's choice given the
    fast side's own prefix (`reference.checks.compare_tokens`): float64 must equal the
    reference generation token for token; low precision is judged wherever the reference
    margin is clear of the fast step logits' error, measured along the fast sequence through
    the cache (prompt prefill, then steps) as generation computes them."""
    T0 = prompt.shape[1]
    fast = (lambda x: side.cached_logits(P, config, x, [T0])) if side.low_precision else None
    result = assert_tokens(f"[{side.name}] {what}", prompt, got, lambda x: ref_gpt.forward(params, config, x),
                           side.dtype, u=u, fast=fast, max_new_tokens=N)  # fmt: skip
    print(result)


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_greedy_tokens(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    P = side.params(params)
    got = side.generate(P, config, prompt, N)
    _check_generation("greedy tokens", side, P, params, config, prompt, got, N)


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_sampled_tokens_shared_uniforms(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    u = np.random.default_rng(case_key[1] + 17).random((BATCH, N))
    P = side.params(params)
    got = side.generate(P, config, prompt, N, u=u)
    _check_generation("sampled tokens", side, P, params, config, prompt, got, N, u=u)


@pytest.mark.parametrize("case_key", CASES[:2], ids=_case_id)
def test_sample_with_same_rng_seed(side, case_key):
    """sample(rng) draws u = rng.random((B, N)) exactly as the reference does."""
    config, params, prompt, N = _prompt_and_steps(*case_key)
    P = side.params(params)
    got = side.sample(P, config, np.random.default_rng(3), prompt, N)
    u = np.random.default_rng(3).random((BATCH, N))
    # the reference's sample(rng) is generate with these uniforms: judging against them judges against it
    assert np.array_equal(ref_gpt.sample(params, config, np.random.default_rng(3), prompt, N),
                          ref_gpt.generate(params, config, prompt, N, u=u))  # fmt: skip
    _check_generation("sample(rng) tokens", side, P, params, config, prompt, got, N, u=u)


# ----------------------------------------------------------------------------- gradients


def _mean_nll(params, config, tokens):
    """Mean NLL per token in nats: -(1 / (B T)) sum_b log p(x_b)."""
    return -float(np.mean(ref_gpt.log_prob(params, config, tokens))) / tokens.shape[1]


@functools.lru_cache(maxsize=None)
def _gradient_truth(name: str, T: int):
    """(coordinates, finite-difference gradient, its worst self-consistency) -- once per case."""
    config, params, tokens, _ = case(name, T)
    rng = np.random.default_rng(99)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref_gpt.param_shapes(config).items()]
    coords += [("wte", (int(tokens[0, 3]), 0)), ("wpe", (0, 1))]  # a used embedding row, position 0
    fd = [finite_difference_grad(lambda p: _mean_nll(p, config, tokens), params, n, i) for n, i in coords]
    return coords, np.array([d.value for d in fd]), max(d.error for d in fd)


@pytest.mark.parametrize("case_key", [("hd1", 59), ("hd3", 59)], ids=_case_id)
def test_gradient_of_mean_nll(side, case_key):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference, which has no autograd: gradients are a torch-backend check")
    import torch

    config, params, tokens, _ = case(*case_key)
    coords, truth, fd_err = _gradient_truth(*case_key)
    print(f"[{side.name}] finite-difference self-consistency {fd_err:.2e}")
    assert fd_err <= FD_ACCURACY, (
        f"the finite-difference truth moves by {fd_err:.2e} when h doubles: not accurate enough to judge "
        f"float64 gradients (needed {FD_ACCURACY:g}); choose other steps"
    )

    def autograd(attn_impl):
        P = {k: v.detach().clone().requires_grad_(True) for k, v in side.params(params).items()}
        tok = side.array(tokens)
        loss = -fast_gpt.log_prob(P, config, tok, attn_impl=attn_impl).mean() / tokens.shape[1]
        loss.backward()
        return np.array([side.numpy(P[n].grad[i]) for n, i in coords], dtype=np.float64)

    got = autograd("sdpa")
    naive = autograd("math") if side.low_precision else None
    assert np.abs(truth).max() > 1e-3, "the sampled gradient entries are all ~0: the test would prove nothing"
    with torch.no_grad():
        check("grad mean NLL", truth, got, side, naive=naive)


# ----------------------------------------------------------------------------- the CPU inference kernels
#
# On the CPU, fast.gpt runs inference through special kernels ("matvec": a matrix-vector
# product split over the threads, for one row; "matmul": oneDNN on transposed weight
# copies, for several rows) -- but only for models large enough to gain from them, which
# the tiny models above are not. Here the size threshold is lowered to 0 so the same
# comparisons run through those kernels too.


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
    config, params, tokens, truth = case(name, 59)
    tokens, truth = tokens[:batch], truth[:batch]
    P = side.params(params)
    mode = fast_gpt.kernel_mode(P, batch, differentiable=False)  # the decoding steps' kernels
    assert mode == ("matvec" if batch == 1 and side.dtype != "bfloat16" else "matmul"), mode
    naive = side.naive_forward(P, config, tokens)
    check(f"logits (CPU kernels, batch {batch})", truth, side.forward(P, config, tokens), side, naive=naive)
    check(f"cache logits (CPU kernels, batch {batch})", truth, side.cached_logits(P, config, tokens, [5]), side, naive=naive)
    prompt, N = tokens[:, :5], 55
    got = side.generate(P, config, prompt, N)
    _check_generation(f"greedy tokens (CPU kernels, batch {batch})", side, P, params, config, prompt, got, N)
    u = np.random.default_rng(batch).random((batch, N))
    got = side.generate(P, config, prompt, N, u=u)
    _check_generation(f"sampled tokens (CPU kernels, batch {batch})", side, P, params, config, prompt, got, N, u=u)
