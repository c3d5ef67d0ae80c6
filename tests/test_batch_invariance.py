"""reference.checks.batch: batch invariance, the check and the measurements.

- the check catches batch-dependent functions (a batch statistic, a rounding that depends on
  the batch size, a matmul over the flattened batch) and names the worst row and position;
- the reference GPT is exactly (bit for bit) batch invariant: forward, log_prob, the KV cache,
  padded batches, greedy generation;
- the fast GPT's batch invariance is measured and printed (float64 and float32 on the CPU): it
  is not required to be exact, only within what its precision already allows;
- bad input raises ValueError naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import backend
from chainrule.fast import gpt as fast_gpt
from chainrule.reference import gpt, nn
from chainrule.reference.checks import (
    TOLERANCES,
    BatchInvariance,
    assert_batch_invariant,
    batch_invariance,
    naive_float32,
)
from chainrule.reference.checks.batch import ulp, ulp_diff
from chainrule.reference.checks.tolerances import _EPS

CONFIG = gpt.Config(vocab_size=50, block_size=16, n_layer=2, n_head=4, n_embd=64)
PARAMS = gpt.random_params(CONFIG, np.random.default_rng(0))
TOKENS = np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(3, 7))


def forward(x):
    return gpt.forward(PARAMS, CONFIG, x)


# ----------------------------------------------------------------------------- the check can fail


def test_a_batch_statistic_is_caught_and_located():
    def batch_norm_leak(x):  # normalizes with the statistics of the whole batch
        out = forward(x)
        return out - out.mean(axis=0, keepdims=True)

    result = batch_invariance(batch_norm_leak, TOKENS)
    assert not result.exact and result.max_abs > 0.1 and result.by_batch_size[33][2] == 0.0
    n, index, row, position = result.worst
    assert n in (2, 8, 33) and 0 <= index < n and 0 <= row < 3 and len(position) == 2
    with pytest.raises(AssertionError, match=rf"worst: row {row} at index {index} of a batch of {n}, position"):
        assert_batch_invariant(batch_norm_leak, TOKENS)


def test_one_ulp_that_depends_on_the_batch_size_is_caught():
    def rounding(x):  # the last row of a batch of 33 gets a different rounding, by one ulp
        out = forward(x)
        if len(x) == 33:
            out[-1] = np.nextafter(out[-1], np.inf)
        return out

    result = batch_invariance(rounding, TOKENS)
    assert result.max_ulps == 1.0 and result.max_abs < 1e-14
    assert [result.by_batch_size[n][1] for n in (1, 2, 8, 33)] == [0.0, 0.0, 0.0, 1.0]
    assert result.worst[:2] == (33, 32)  # the row placed last of the 33
    assert 0 < result.identical < 1
    with pytest.raises(AssertionError, match=r"index 32 of a batch of 33"):
        assert_batch_invariant(rounding, TOKENS)
    assert assert_batch_invariant(rounding, TOKENS, ulps=1).max_ulps == 1.0  # within 1 ulp


def test_run_to_run_nondeterminism_is_caught_at_batch_size_1():
    calls = []

    def noisy(x):  # the second call of a row alone differs
        calls.append(1)
        return forward(x) * (1.0 + (len(calls) > 3) * 2.0**-50)

    result = batch_invariance(noisy, TOKENS, batch_sizes=(1,))
    assert result.by_batch_size[1][1] > 0 and not result.exact


def test_a_flattened_matmul_is_caught(monkeypatch):
    """The classic source: one (B*T, C) @ (C, D) product, whose BLAS blocking follows B, instead of
    NumPy's one product per row. Checked where this machine's BLAS rounds the two differently."""
    x = np.random.default_rng(2).normal(size=(33, 1, 64))
    w = np.random.default_rng(3).normal(size=(64, 3 * 64))
    flat = (x.reshape(33, 64) @ w).reshape(33, 1, -1)
    if np.array_equal(flat, x @ w):
        pytest.skip("this BLAS rounds a flattened and a per-row product the same: nothing to catch")

    def flattened_linear(h, w, b=None):
        y = (h.reshape(-1, h.shape[-1]) @ w).reshape(*h.shape[:-1], w.shape[1])
        return y if b is None else y + b

    monkeypatch.setattr(nn, "linear", flattened_linear)
    tokens = TOKENS[:, :1]
    result = batch_invariance(forward, tokens)
    assert not result.exact and result.max_abs < 1e-10  # tiny, and real
    with pytest.raises(AssertionError, match="NOT bit-exact"):
        assert_batch_invariant(forward, tokens)


# ----------------------------------------------------------------------------- the reference is exact


@pytest.mark.parametrize("T", [1, 7, 16])
def test_reference_forward_is_exactly_batch_invariant(T):
    tokens = np.random.default_rng(T).integers(0, CONFIG.vocab_size, size=(3, T))
    result = assert_batch_invariant(forward, tokens)
    assert result.exact and result.max_ulps == 0 and result.worst is None and result.dtype == "float64"
    assert result.calls == 3 + 3 * (1 + 3 * 3)  # alone, then 1 + 3 placements x 3 sizes per row


def test_reference_log_prob_cache_padding_and_generation_are_exactly_batch_invariant():
    assert_batch_invariant(lambda x: gpt.log_prob(PARAMS, CONFIG, x), TOKENS)

    def through_cache(x):  # a prefill chunk of 3, then steps
        return np.concatenate([gpt.prefill(PARAMS, CONFIG, gpt.init_cache(PARAMS, CONFIG, len(x)), x[:, :3])[0]]
                              + [_steps(x)], axis=1)  # fmt: skip

    def _steps(x):
        logits, cache = gpt.prefill(PARAMS, CONFIG, gpt.init_cache(PARAMS, CONFIG, len(x)), x[:, :3])
        out = []
        for t in range(3, x.shape[1]):
            step, cache = gpt.step(PARAMS, CONFIG, cache, x[:, t])
            out.append(step[:, None])
        return np.concatenate(out, axis=1)

    assert_batch_invariant(through_cache, TOKENS)
    mask = (np.arange(7) >= 2).astype(np.int64)  # two left pads in every row
    assert_batch_invariant(lambda x: gpt.forward(PARAMS, CONFIG, x, np.tile(mask, (len(x), 1))), TOKENS)
    result = assert_batch_invariant(lambda x: gpt.generate(PARAMS, CONFIG, x, 5), TOKENS, batch_sizes=(1, 2, 8))
    assert result.dtype == "int64"  # generated tokens: an ulp of an integer is 1


def test_torch_inputs_and_outputs():
    tokens = torch.as_tensor(TOKENS)
    seen = []

    def fn(x):
        seen.append(type(x).__module__.split(".")[0])
        return torch.as_tensor(forward(x.numpy()))

    assert assert_batch_invariant(fn, tokens).exact and set(seen) == {"torch"}


# ----------------------------------------------------------------------------- the fast path, measured


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_gpt_batch_invariance_is_measured(dtype):
    """Reported, not required exact: torch's CPU kernels pick their blocking by shape. A row's
    variation across batches is bounded by what its precision already allows: both the row alone
    and in a batch lie within the tolerance rule of the float64 truth, so they differ by at most
    twice that bound."""
    P = backend.to_torch(PARAMS, "cpu", getattr(torch, dtype))
    lines = []
    for T in (1, 7):
        tokens = TOKENS[:, :T]
        with torch.no_grad():
            result = batch_invariance(lambda x: fast_gpt.forward(P, CONFIG, x), torch.as_tensor(tokens))
        assert isinstance(result, BatchInvariance) and result.dtype == dtype
        truth = gpt.forward(PARAMS, CONFIG, tokens)
        tol = TOLERANCES[dtype]
        if tol.k is None:
            bound = 2 * (tol.atol + tol.rtol * np.abs(truth).max())
        else:
            naive_err = np.abs(naive_float32(gpt.forward, PARAMS, CONFIG, tokens) - truth).max()
            bound = 2 * (tol.k * naive_err + tol.atol + _EPS[dtype] * np.abs(truth).max())
        assert result.max_abs <= bound, f"{result}; allowed {bound:.3e}"
        lines.append(f"fast.gpt.forward [{dtype}, cpu, T={T}]: {result}; allowed |diff| {bound:.3e}")
    print("\n".join(lines))


# ----------------------------------------------------------------------------- ulps and errors


def test_ulp():
    assert ulp(np.array([1.0, 1.5, -2.0]), "float64").tolist() == [2.0**-52, 2.0**-52, 2.0**-51]
    assert ulp(np.array([1.0]), "float32")[0] == 2.0**-23 and ulp(np.array([1.0]), "bfloat16")[0] == 2.0**-7
    assert ulp(np.array([0.0]), "float64")[0] == 2.0**-1074 and ulp(np.array([0.0]), "float32")[0] == 2.0**-149
    assert ulp(np.array([3.0]), "int64")[0] == 1.0
    got = ulp_diff(np.array([1.0, np.nan, np.inf, 1.0, 0.0]), np.array([1.0 + 2**-51, np.nan, np.inf, np.nan, -0.0]),
                   "float64")  # fmt: skip
    assert got.tolist() == [2.0, 0.0, 0.0, np.inf, 0.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"tokens: expected an integer array of shape \(B, T\)"):
        batch_invariance(forward, TOKENS[0])
    with pytest.raises(ValueError, match=r"tokens: expected an integer array"):
        batch_invariance(forward, TOKENS.astype(float))
    with pytest.raises(ValueError, match=r"fn: expected a callable"):
        batch_invariance(None, TOKENS)
    with pytest.raises(ValueError, match=r"others: expected an integer array \(N, T=7\)"):
        batch_invariance(forward, TOKENS, others=TOKENS[:, :3])
    with pytest.raises(ValueError, match=r"batch_sizes: expected positive ints, got \(1, 0\)"):
        batch_invariance(forward, TOKENS, batch_sizes=(1, 0))
    with pytest.raises(ValueError, match=r"fn: expected outputs of shape \(B=1, \.\.\.\)"):
        batch_invariance(lambda x: forward(x)[0], TOKENS)
    with pytest.raises(ValueError, match=r"ulps: expected a number >= 0, got -1"):
        assert_batch_invariant(forward, TOKENS, ulps=-1)


def test_vocab_size_gives_companions_that_differ_from_a_constant_row():
    def leak(x):
        return forward(x) - forward(x).mean(axis=0, keepdims=True)

    constant = np.full((1, 7), 3)
    assert batch_invariance(leak, constant).max_abs < 1e-12  # every shuffle of [3, 3, ...] is the row itself
    assert batch_invariance(leak, constant, vocab_size=CONFIG.vocab_size).max_abs > 0.1
    with pytest.raises(ValueError, match=r"vocab_size: expected an int >= 1, got 0"):
        batch_invariance(forward, constant, vocab_size=0)


def test_others_are_the_companions():
    others = np.zeros((4, 7), dtype=np.int64)
    seen = []

    def fn(x):
        seen.append(x.copy())
        return forward(x)

    batch_invariance(fn, TOKENS[:1], others=others, batch_sizes=(8,), seed=3)
    for batch in seen[1:]:  # each batch: the row once, zeros around it
        assert (batch == TOKENS[0]).all(axis=1).sum() == 1 and (batch == 0).all(axis=1).sum() == 7
