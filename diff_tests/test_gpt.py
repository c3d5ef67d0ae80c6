"""reference.gpt (float64 NumPy, the truth) against every backend of fast.gpt.

Random configs with odd sizes -- head_dim 1 and 3, vocabularies 59 and 113,
T = 1, 59, 113 -- and the *same* parameters on every backend, far from the GPT-2
init (see `random_gpt_params`) so nothing agrees by accident. Compared: logits,
log_prob, logits through the KV cache (chunked prefill + steps), greedy tokens,
tokens sampled from shared uniforms, and gradients of the mean NLL (autograd vs
central finite differences of the reference).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from diff_tests.conftest import check, random_gpt_params
from fast import gpt as fast_gpt
from reference import gpt as ref_gpt
from reference import nn
from reference import sampling as ref_sampling
from reference.checks import TOLERANCES

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
    params = random_gpt_params(config, seed=1000 + T + len(name))
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


def _step_logits(params, config, sequence, T0):
    """Reference logits of every generation step: row n is the distribution of token T0 + n
    given sequence[:, :T0 + n]."""
    return ref_gpt.forward(params, config, sequence[:, :-1])[:, T0 - 1 :]  # (B, N, V)


def _step_errors(side, P, params, config, sequence, T0):
    """(B, N): max_v |fast - reference| of each step's logits along `sequence`, the fast side
    teacher-forced through its cache (prompt prefill, then steps) as generation computes them."""
    truth = _step_logits(params, config, sequence, T0)
    got = side.cached_logits(P, config, sequence[:, :-1], [T0])[:, T0 - 1 :]
    return np.abs(got - truth).max(axis=-1)


# Fraction of the generated tokens a low-precision run must be able to judge (those whose
# reference margin is clear of rounding); float64 judges every token.
MIN_JUDGED = {"greedy": {"float32": 0.5, "bfloat16": 0.25}, "sample": {"float32": 0.5, "bfloat16": 0.1}}


def _check_generation(what, side, P, params, config, truth, got, T0, u=None):
    """Judge every token the fast side generated against the reference's choice *given the
    fast side's own prefix*, so a legitimate rounding tie does not end the comparison.

    float64: the fast tokens must equal the reference generation exactly. Low precision:
    a choice may flip only where the reference margin is within the fast logits' error
    e (per step, measured along the fast sequence): greedy flips need top1 - top2 < 2e;
    inverse-CDF flips need |u - cdf_i| < exp(2e) - 1 (each log p moves by <= 2e) plus the
    cumulative sum's rounding (float32 accumulation or better). Tokens with a margin
    under 4x that bound are not judged; all others must match, and at least MIN_JUDGED of
    them must be judged for the test to mean anything.
    """
    assert got.shape == truth.shape, f"{what}: shape {got.shape}, expected {truth.shape}"
    assert np.array_equal(got[:, :T0], truth[:, :T0]), f"{what}: the prompt was not returned unchanged"
    if not side.low_precision:
        bad = np.argwhere(got != truth)
        assert not bad.size, (
            f"[{side.name}] {what}: first difference at (row, position) {tuple(bad[0])}: "
            f"fast {got[tuple(bad[0])]}, reference {truth[tuple(bad[0])]}"
        )
        print(f"[{side.name}] {what}: {truth[:, T0:].size}/{truth[:, T0:].size} tokens equal")
        return
    logits = _step_logits(params, config, got, T0)  # (B, N, V) the reference, on the fast prefixes
    err = _step_errors(side, P, params, config, got, T0)  # (B, N)
    if u is None:
        want = ref_sampling.greedy(logits)
        top2 = np.sort(logits, axis=-1)[..., -2:]
        margin, bound = top2[..., 1] - top2[..., 0], 2 * err
    else:
        want = ref_sampling.sample(logits, u)
        cdf = np.cumsum(nn.softmax(logits, axis=-1), axis=-1)
        margin = np.min(np.abs(cdf - u[..., None]), axis=-1)
        bound = np.expm1(2 * err) + config.vocab_size * 2.0**-23
    judged = margin >= 4 * bound
    bad = np.argwhere(judged & (got[:, T0:] != want))
    if bad.size:
        b, n = (int(i) for i in bad[0])
        raise AssertionError(
            f"[{side.name}] {what}: row {b}, step {n}: fast token {got[b, T0 + n]}, reference {want[b, n]} "
            f"(reference margin {margin[b, n]:.3e}, 4x the flip bound {4 * bound[b, n]:.3e}, "
            f"logit error {err[b, n]:.3e})"
        )
    total = judged.size
    needed = int(np.ceil(MIN_JUDGED["greedy" if u is None else "sample"][side.dtype] * total)) if total >= 20 else 0
    print(f"[{side.name}] {what}: {int(judged.sum())}/{total} tokens judged, all equal; "
          f"max step logit error {err.max():.3e}")  # fmt: skip
    assert judged.sum() >= needed, (
        f"[{side.name}] {what}: only {int(judged.sum())} of {total} tokens had a margin clear of rounding "
        f"(needed {needed}): the test would prove nothing"
    )


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_greedy_tokens(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    truth = ref_gpt.greedy(params, config, prompt, N)
    P = side.params(params)
    got = side.generate(P, config, prompt, N)
    _check_generation("greedy tokens", side, P, params, config, truth, got, prompt.shape[1])


@pytest.mark.parametrize("case_key", CASES, ids=_case_id)
def test_sampled_tokens_shared_uniforms(side, case_key):
    config, params, prompt, N = _prompt_and_steps(*case_key)
    u = np.random.default_rng(case_key[1] + 17).random((BATCH, N))
    truth = ref_gpt.generate(params, config, prompt, N, u=u)
    P = side.params(params)
    got = side.generate(P, config, prompt, N, u=u)
    _check_generation("sampled tokens", side, P, params, config, truth, got, prompt.shape[1], u=u)


@pytest.mark.parametrize("case_key", CASES[:2], ids=_case_id)
def test_sample_with_same_rng_seed(side, case_key):
    """sample(rng) draws u = rng.random((B, N)) exactly as the reference does."""
    config, params, prompt, N = _prompt_and_steps(*case_key)
    truth = ref_gpt.sample(params, config, np.random.default_rng(3), prompt, N)
    P = side.params(params)
    got = side.sample(P, config, np.random.default_rng(3), prompt, N)
    u = np.random.default_rng(3).random((BATCH, N))
    _check_generation("sample(rng) tokens", side, P, params, config, truth, got, prompt.shape[1], u=u)


# ----------------------------------------------------------------------------- gradients


def _mean_nll(params, config, tokens):
    """Mean NLL per token in nats: -(1 / (B T)) sum_b log p(x_b)."""
    return -float(np.mean(ref_gpt.log_prob(params, config, tokens))) / tokens.shape[1]


FD_STEPS = (1e-3, 3e-4, 1e-4)
# The finite-difference truth must be accurate to half the float64 atol, so that a
# failure is the implementation's error, not the truth's.
FD_ACCURACY = TOLERANCES["float64"].atol / 2


def _finite_difference(params, config, tokens, name, index):
    """d mean_nll / d params[name][index] by central differences with one Richardson step:
    D(h) = (f(x + h) - f(x - h)) / 2h has error O(h^2); R(h) = (4 D(h/2) - D(h)) / 3 has O(h^4).

    Truncation error falls with h, rounding error (~ 1e-16 |f| / h) grows: of the steps
    FD_STEPS, the one where R moves least when h doubles is kept. Returns (R(h), |R(h) - R(2h)|),
    the second an (over)estimate of the first's error."""

    def f(delta):
        shifted = dict(params)
        shifted[name] = params[name].copy()
        shifted[name][index] += delta
        return _mean_nll(shifted, config, tokens)

    best = None
    for h in FD_STEPS:
        D = {step: (f(step) - f(-step)) / (2 * step) for step in (h / 2, h, 2 * h)}
        R, R2 = (4 * D[h / 2] - D[h]) / 3, (4 * D[h] - D[2 * h]) / 3
        if best is None or abs(R - R2) < best[1]:
            best = (R, abs(R - R2))
    return best


@functools.lru_cache(maxsize=None)
def _gradient_truth(name: str, T: int):
    """(coordinates, finite-difference gradient, its worst self-consistency) -- once per case."""
    config, params, tokens, _ = case(name, T)
    rng = np.random.default_rng(99)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref_gpt.param_shapes(config).items()]
    coords += [("wte", (int(tokens[0, 3]), 0)), ("wpe", (0, 1))]  # a used embedding row, position 0
    fd = [_finite_difference(params, config, tokens, n, i) for n, i in coords]
    return coords, np.array([r for r, _ in fd]), max(e for _, e in fd)


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
        f"float64 gradients (needed {FD_ACCURACY:g}); choose other FD_STEPS"
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
