"""The checks of reference.checks must FAIL on broken implementations.

A check that cannot fail is a defect: each one is shown here catching a
realistic bug -- a GPT without its causal mask, with the mask off by one, with
a numerically leaky softmax, with a truncated context; an unnormalized or
peeking likelihood; a function that mutates its input or is not deterministic;
a wrong value in a comparison (with the worst index reported).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.reference import gpt, nn
from chainrule.reference import checks
from chainrule.reference.checks import (
    TOLERANCES,
    assert_causal,
    assert_close,
    assert_normalized,
    assert_pure,
    compare,
    dependency_matrix,
    enumerate_log_probs,
    enumerate_sequences,
    tolerance,
)

CONFIG = gpt.Config(vocab_size=5, block_size=7, n_layer=2, n_head=2, n_embd=6, bos_token=1)


def _params(config=CONFIG, seed=0):
    return gpt.random_params(config, np.random.default_rng(seed))


@pytest.fixture
def model():
    return _params(), np.random.default_rng(1).integers(0, CONFIG.vocab_size, size=(2, CONFIG.block_size))


def forward_fn(params, config=CONFIG):
    return lambda tok: gpt.forward(params, config, tok)


# ----------------------------------------------------------------------------- tolerance table / compare


def test_tolerance_lookup():
    assert tolerance("float64") is TOLERANCES["float64"]
    assert tolerance(np.float32) is tolerance(np.dtype("float32")) is tolerance(torch.float32) is TOLERANCES["float32"]
    assert tolerance(torch.bfloat16) is tolerance("bf16") is TOLERANCES["bfloat16"]
    assert tolerance(torch.zeros(1, dtype=torch.float64)) is TOLERANCES["float64"]
    assert TOLERANCES["float64"].k is None and TOLERANCES["float32"].k is not None
    with pytest.raises(ValueError, match="int8"):
        tolerance("int8")


def test_compare_passes_within_and_flags_a_bad_value_with_its_index():
    truth = np.linspace(-3, 3, 24).reshape(2, 3, 4)
    ok = compare("logits", truth, truth + 1e-13, "float64")
    assert ok.passed and ok.max_err == pytest.approx(1e-13, rel=1e-2)
    bad = truth.copy()
    bad[1, 2, 3] += 1e-6
    bad[0, 1, 1] += 1e-9  # also out of tolerance, but not the worst
    c = compare("logits", truth, bad, "float64")
    assert not c.passed
    assert c.worst_index == (1, 2, 3)
    assert c.truth_value == truth[1, 2, 3] and c.got_value == bad[1, 2, 3]
    assert c.max_err == pytest.approx(1e-6)
    msg = str(c)
    assert "logits" in msg and "(1, 2, 3)" in msg and "MISMATCH" in msg
    with pytest.raises(AssertionError, match=r"\(1, 2, 3\)"):
        assert_close("logits", truth, bad, "float64")


def test_compare_nan_and_infinities():
    truth = np.array([0.0, -np.inf, 1.0])
    assert compare("x", truth, np.array([0.0, -np.inf, 1.0]), "float64").passed
    c = compare("x", truth, np.array([0.0, -np.inf, np.nan]), "float64")
    assert not c.passed and c.worst_index == (2,)
    c = compare("x", truth, np.array([0.0, -1e30, 1.0]), "float64")
    assert not c.passed and c.worst_index == (1,)
    assert not compare("x", truth, np.array([0.0, np.inf, 1.0]), "float64").passed


def test_compare_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"expected shape \(2, 3\).*got \(3, 2\)"):
        compare("logits", np.zeros((2, 3)), np.zeros((3, 2)), "float64")


def test_low_precision_rule_is_relative_to_the_naive_error():
    tol = TOLERANCES["float32"]
    truth = np.zeros(10)
    naive = np.full(10, 1e-3)
    within = np.full(10, tol.k * 1e-3)  # exactly k times the naive error: allowed (+ atol)
    assert compare("y", truth, within, "float32", naive=naive).passed
    beyond = np.full(10, tol.k * 1e-3 + 2 * tol.atol)
    c = compare("y", truth, beyond, "float32", naive=naive)
    assert not c.passed and c.naive_err == pytest.approx(1e-3)
    # without a naive baseline the elementwise table rule applies
    assert not compare("y", truth, within, "float32").passed
    assert compare("y", truth, np.full(10, 0.5 * tol.atol), "float32").passed


def test_compare_accepts_torch_bfloat16_and_float32():
    truth = np.array([1.0, 2.0, 3.0])
    got = torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16)
    assert compare("x", truth, got, torch.bfloat16).passed
    got32 = torch.tensor([1.0, 2.0, 3.1], dtype=torch.float32)
    c = compare("x", truth, got32, torch.float32)
    assert not c.passed and c.worst_index == (2,)


# ----------------------------------------------------------------------------- causality


def test_dependency_matrix_of_simple_functions():
    x = np.random.default_rng(0).integers(0, 4, size=(3, 6))
    ident = dependency_matrix(lambda t: t.astype(float)[:, :, None], x, vocab_size=4)
    assert np.array_equal(ident, np.eye(6, dtype=bool))
    csum = dependency_matrix(lambda t: np.cumsum(t, axis=1), x, vocab_size=4)
    assert np.array_equal(csum, np.tril(np.ones((6, 6), dtype=bool)))
    prev = dependency_matrix(lambda t: np.pad(t, ((0, 0), (1, 0)))[:, :-1], x, vocab_size=4)
    assert np.array_equal(prev, np.eye(6, k=-1, dtype=bool))
    xf = np.random.default_rng(0).normal(size=(2, 5, 3))  # float inputs (B, T, C)
    assert np.array_equal(dependency_matrix(lambda a: np.cumsum(a, axis=1), xf), np.tril(np.ones((5, 5), dtype=bool)))


def test_dependency_matrix_needs_vocab_size_for_tokens():
    with pytest.raises(ValueError, match="vocab_size"):
        dependency_matrix(lambda t: t, np.zeros((1, 3), dtype=np.int64))


def test_assert_causal_accepts_the_reference_gpt_with_its_full_lower_triangle(model):
    params, tokens = model
    D = assert_causal(forward_fn(params), tokens, vocab_size=CONFIG.vocab_size, full=True)
    assert np.array_equal(D, np.tril(np.ones((7, 7), dtype=bool)))


def test_assert_causal_shift_distinguishes_inclusive_and_strict(model):
    params, tokens = model
    past = lambda t: np.cumsum(np.pad(t, ((0, 0), (1, 0)))[:, :-1] * 7.0**np.arange(7), 1)  # noqa: E731  x_<t
    assert_causal(past, tokens, shift=1, vocab_size=5, full=True)
    with pytest.raises(AssertionError, match="ignores part of its context"):
        assert_causal(past, tokens, shift=0, vocab_size=5, full=True)  # the diagonal is allowed but unused
    with pytest.raises(AssertionError, match=r"output position 0 changed when the input at position 0"):
        assert_causal(forward_fn(params), tokens, shift=1, vocab_size=5)  # GPT logits see their own token


def _mask_without_causality(t_query, t_key, xp=None):
    return np.ones((t_query, t_key), dtype=bool)


def _mask_off_by_one(t_query, t_key, xp=None):
    offset = t_key - t_query
    return np.arange(t_key)[None, :] <= np.arange(t_query)[:, None] + offset + 1  # sees one token ahead


def _mask_window_of_two(t_query, t_key, xp=None):
    q = np.arange(t_query)[:, None] + t_key - t_query
    k = np.arange(t_key)[None, :]
    return (k <= q) & (k >= q - 1)  # causal, but forgets everything older than one step


def test_assert_causal_catches_a_gpt_without_its_mask(model, monkeypatch):
    params, tokens = model
    monkeypatch.setattr(nn, "causal_mask", _mask_without_causality)
    with pytest.raises(AssertionError, match=r"not causal.*output position 0 changed when the input at position 1"):
        assert_causal(forward_fn(params), tokens, vocab_size=CONFIG.vocab_size)


def test_assert_causal_catches_a_mask_off_by_one(model, monkeypatch):
    params, tokens = model
    monkeypatch.setattr(nn, "causal_mask", _mask_off_by_one)
    with pytest.raises(AssertionError, match=r"output position 0 changed when the input at position 1") as e:
        assert_causal(forward_fn(params), tokens, vocab_size=CONFIG.vocab_size)
    assert "Dependency matrix" in str(e.value)


def test_assert_causal_full_catches_a_truncated_context(model, monkeypatch):
    params, tokens = model
    monkeypatch.setattr(nn, "causal_mask", _mask_window_of_two)
    cfg1 = gpt.Config(vocab_size=5, block_size=7, n_layer=1, n_head=2, n_embd=6)
    p1 = _params(cfg1)
    assert_causal(forward_fn(p1, cfg1), tokens, vocab_size=5)  # causal, yes
    with pytest.raises(AssertionError, match=r"ignores part of its context: output position 2 does not depend .* 0"):
        assert_causal(forward_fn(p1, cfg1), tokens, vocab_size=5, full=True)


def _leaky_attention(q, k, v, mask, scale=None):
    """Mathematically causal, numerically not: the softmax shift uses the max over *all*
    scores, future ones included, so future tokens move the rounding of the past."""
    d = q.shape[-1]
    scores = (q @ np.swapaxes(k, -1, -2)) * (d**-0.5 if scale is None else scale)
    e = np.where(mask, np.exp(scores - scores.max(axis=-1, keepdims=True)), 0.0)
    return (e / e.sum(-1, keepdims=True)) @ v


def test_assert_causal_is_bit_exact_and_catches_a_numerically_leaky_softmax(model, monkeypatch):
    params, tokens = model
    monkeypatch.setattr(nn, "attention", _leaky_attention)
    leaky = forward_fn(params)(tokens)
    monkeypatch.undo()
    assert np.allclose(leaky, gpt.forward(params, CONFIG, tokens), rtol=1e-12, atol=1e-12)  # "equal" to 1e-12 ...
    monkeypatch.setattr(nn, "attention", _leaky_attention)
    with pytest.raises(AssertionError, match="not causal"):  # ... yet it reads the future
        assert_causal(forward_fn(params), tokens, vocab_size=CONFIG.vocab_size, n_trials=4)


def test_assert_causal_works_on_torch_tensors(model):
    params, tokens = model
    P = {k: torch.from_numpy(v) for k, v in params.items()}

    def torch_forward(tok):  # a tiny "user implementation": the reference through torch tensors
        return torch.from_numpy(gpt.forward({k: v.numpy() for k, v in P.items()}, CONFIG, tok.numpy()))

    assert_causal(torch_forward, torch.from_numpy(tokens), vocab_size=CONFIG.vocab_size, full=True)


# ----------------------------------------------------------------------------- normalization


def test_enumerate_sequences_is_lexicographic():
    s = enumerate_sequences(3, 2)
    assert s.tolist() == [[i, j] for i in range(3) for j in range(3)]
    with pytest.raises(ValueError, match="vocab_size"):
        enumerate_sequences(0, 2)
    with pytest.raises(ValueError, match="at most"):
        enumerate_sequences(100, 4, max_sequences=1000)


def test_enumerate_log_probs_batches_in_order():
    calls = []

    def lp(x):
        calls.append(len(x))
        return -x.sum(1).astype(float)

    out = enumerate_log_probs(lp, 2, 3, batch=3)
    assert calls == [3, 3, 2]
    assert out.tolist() == [-s.sum() for s in enumerate_sequences(2, 3)]


def test_assert_normalized_accepts_the_reference_gpt():
    cfg = gpt.Config(vocab_size=3, block_size=3, n_layer=2, n_head=1, n_embd=3, bos_token=2)
    params = _params(cfg, 3)
    total = assert_normalized(lambda x: gpt.log_prob(params, cfg, x), 3, 3)
    assert abs(total - 1) <= 1e-12


def test_assert_normalized_catches_an_unnormalized_model():
    cfg = gpt.Config(vocab_size=3, block_size=3, n_layer=1, n_head=1, n_embd=3)
    params = _params(cfg, 4)
    with pytest.raises(AssertionError, match="not normalized"):
        assert_normalized(lambda x: gpt.log_prob(params, cfg, x) + 1e-9, 3, 3)
    # unnormalized conditionals: softmax forgotten, raw logits scored
    raw = lambda x: np.take_along_axis(  # noqa: E731
        gpt.forward(params, cfg, np.concatenate([np.zeros((len(x), 1), int), x[:, :-1]], 1)), x[:, :, None], -1
    ).sum((1, 2))
    with pytest.raises(AssertionError, match="not normalized"):
        assert_normalized(raw, 3, 2)


def test_assert_normalized_catches_a_model_that_peeks_at_the_token_it_scores():
    """Without the bos shift, logits[t] sees x_t while scoring x_t: the 'probabilities' sum to > 1."""
    cfg = gpt.Config(vocab_size=3, block_size=3, n_layer=1, n_head=1, n_embd=3)
    params = _params(cfg, 5)

    def peeking_log_prob(x):
        logp = nn.log_softmax(gpt.forward(params, cfg, x))
        return np.take_along_axis(logp, x[:, :, None], -1).sum((1, 2))

    with pytest.raises(AssertionError, match="not normalized"):
        assert_normalized(peeking_log_prob, 3, 3)


# ----------------------------------------------------------------------------- purity


def test_assert_pure_accepts_pure_functions_and_returns_the_output(model):
    params, tokens = model
    out = assert_pure(gpt.forward, params, CONFIG, tokens)
    assert np.array_equal(out, gpt.forward(params, CONFIG, tokens))
    # a numpy Generator may be consumed: the second call replays it from the same state
    assert_pure(gpt.sample, params, CONFIG, np.random.default_rng(0), tokens[:, :2], 3)


def test_assert_pure_catches_mutation_of_an_array_in_a_dict():
    def normalize_in_place(params):
        params["w"] /= params["w"].sum()
        return params["w"]

    with pytest.raises(AssertionError, match=r"mutated its input: args\[0\]\['w'\]: values differ, first at index \(0,"):
        assert_pure(normalize_in_place, {"w": np.array([1.0, 2.0])})


def test_assert_pure_catches_mutation_of_a_torch_tensor_and_of_a_container():
    def scale_(x):
        return x.mul_(2.0)

    with pytest.raises(AssertionError, match="mutated its input"):
        assert_pure(scale_, torch.ones(3))

    def add_key(d):
        d["cache"] = 1
        return 0

    with pytest.raises(AssertionError, match="keys"):
        assert_pure(add_key, {"a": np.zeros(1)})

    def change_one_bf16_bit(x):
        x[1] = torch.nextafter(x[1], torch.tensor(2.0, dtype=x.dtype))
        return x.sum()

    with pytest.raises(AssertionError, match=r"index \(1,\)"):
        assert_pure(change_one_bf16_bit, torch.ones(3, dtype=torch.bfloat16))


def test_assert_pure_catches_nondeterminism():
    hidden = np.random.default_rng(0)

    def noisy(x):
        return x + hidden.normal(size=x.shape)  # hidden state, not an explicit Generator argument

    with pytest.raises(AssertionError, match="not deterministic"):
        assert_pure(noisy, np.zeros(3))

    counter = [0]

    def counting(x):
        counter[0] += 1
        return {"y": x * counter[0]}

    with pytest.raises(AssertionError, match=r"output\['y'\]"):
        assert_pure(counting, np.ones(2))


def test_assert_pure_distinguishes_negative_zero():
    flip = iter([0.0, -0.0])
    with pytest.raises(AssertionError, match="not deterministic"):
        assert_pure(lambda: np.array([next(flip)]))


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(checks, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 10 and result.failed == 0, result


def test_checks_module_imports_only_numpy_at_top_level():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(checks))
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert top <= {"numpy", "copy", "itertools", "math", "dataclasses", "__future__"}, top


# ----------------------------------------------------------------------------- generated tokens


def _tokens_case(seed=0, B=3, T0=2, N=8):
    """A GPT, a prompt and the reference's greedy generation and step logits along it."""
    config = gpt.Config(vocab_size=11, block_size=T0 + N, n_layer=1, n_head=2, n_embd=6)
    params = _params(config, seed)
    prompt = np.random.default_rng(seed).integers(0, config.vocab_size, size=(B, T0))
    return config, params, prompt, N


def test_compare_tokens_float64_every_token_must_equal_the_reference_generation():
    config, params, prompt, N = _tokens_case()
    ref = lambda x: gpt.forward(params, config, x)  # noqa: E731
    tokens = gpt.greedy(params, config, prompt, N)
    ok = checks.compare_tokens("greedy", prompt, tokens, ref, "float64", max_new_tokens=N)
    assert ok.passed and ok.judged == ok.total == prompt.shape[0] * N and ok.mismatches == 0
    # the second-best token at one step (a sampler bug): caught, at that step
    logits = gpt.forward(params, config, tokens[:, :-1])[:, prompt.shape[1] - 1 :]
    bad = tokens.copy()
    bad[1, prompt.shape[1] + 3] = np.argsort(logits[1, 3])[-2]
    c = checks.compare_tokens("greedy", prompt, bad, ref, "float64")
    assert not c.passed and c.mismatches >= 1 and "row 1, step 3" in c.first_mismatch
    with pytest.raises(AssertionError, match="row 1, step 3"):
        checks.assert_tokens("greedy", prompt, bad, ref, "float64")
    # the same array of step logits in place of the function
    assert checks.compare_tokens("greedy", prompt, tokens, logits, "float64").passed


def test_compare_tokens_fails_on_malformed_output():
    config, params, prompt, N = _tokens_case()
    ref = lambda x: gpt.forward(params, config, x)  # noqa: E731
    tokens = gpt.greedy(params, config, prompt, N)
    changed = tokens.copy()
    changed[0, 0] = (changed[0, 0] + 1) % config.vocab_size
    assert "prompt was not returned unchanged" in checks.compare_tokens("g", prompt, changed, ref, "float64").problem
    short = checks.compare_tokens("g", prompt, tokens[:, :-1], ref, "float64", max_new_tokens=N)
    assert not short.passed and f"expected {N} new tokens" in short.note and short.max_err == np.inf
    logits = gpt.forward(params, config, tokens[:, :-1])[:, prompt.shape[1] - 1 :]
    outside = tokens.copy()
    outside[2, -1] = config.vocab_size
    assert "outside [0, 11)" in checks.compare_tokens("g", prompt, outside, logits, "float64").problem
    u = np.full((prompt.shape[0], N + 1), 0.5)
    assert not checks.compare_tokens("s", prompt, tokens, ref, "float64", u=u).passed
    with pytest.raises(ValueError, match="fast"):  # low precision cannot judge without the fast step logits
        checks.compare_tokens("g", prompt, tokens, ref, "float32")


def test_compare_tokens_low_precision_judges_only_margins_clear_of_the_logit_error():
    B, N, V = 2, 10, 5
    rng = np.random.default_rng(0)
    ref = rng.normal(0.0, 2.0, size=(B, N, V))
    ref[0, 4, :2] = [3.0, 3.0 - 1e-4]  # a near tie at row 0, step 4
    ref[0, 4, 2:] = -5.0
    fast = ref + rng.uniform(-1e-3, 1e-3, size=ref.shape)  # a float32-like kernel
    prompt = np.zeros((B, 1), dtype=np.int64)
    want = ref.argmax(-1)
    tokens = np.concatenate([prompt, want], axis=1)
    ok = checks.compare_tokens("greedy", prompt, tokens, ref, "float32", fast=fast)
    assert ok.passed and ok.judged == B * N - 1  # the tie is not judged ...
    tokens[0, 1 + 4] = 1  # ... so the flip there is legitimate
    assert checks.compare_tokens("greedy", prompt, tokens, ref, "float32", fast=fast).passed
    tokens[1, 1 + 7] = np.argsort(ref[1, 7])[-2]  # a flip at a clear margin is a bug
    c = checks.compare_tokens("greedy", prompt, tokens, ref, "float32", fast=fast)
    assert not c.passed and "row 1, step 7" in c.first_mismatch and "flip bound" in c.first_mismatch
    # a common shift of the logits (log-probabilities in place of logits) moves no choice: judged as before
    log_probs = fast - np.log(np.exp(fast).sum(-1, keepdims=True))
    shifted = checks.compare_tokens("greedy", prompt, np.concatenate([prompt, want], 1), ref, "float32", fast=log_probs)
    assert shifted.passed and shifted.judged == B * N - 1


def test_compare_tokens_sampling_catches_a_shifted_uniform_and_refuses_to_prove_nothing():
    config, params, prompt, N = _tokens_case(seed=3, B=4, N=8)
    ref = lambda x: gpt.forward(params, config, x)  # noqa: E731
    fast32 = {k: v.astype(np.float32) for k, v in params.items()}
    fast = lambda x: gpt.forward(fast32, config, x)  # noqa: E731  the model in float32
    u = np.random.default_rng(7).random((prompt.shape[0], N))
    good = gpt.generate(fast32, config, prompt, N, u=u)
    ok = checks.compare_tokens("sample", prompt, good, ref, "float32", u=u, fast=fast)
    assert ok.passed and ok.total == 32 and ok.judged >= ok.needed == 16
    shifted = gpt.generate(fast32, config, prompt, N, u=np.roll(u, 1, axis=1))  # u[:, n - 1] at step n
    bad = checks.compare_tokens("sample", prompt, shifted, ref, "float32", u=u, fast=fast)
    assert not bad.passed and bad.mismatches >= 1
    # step logits off by far more than their spread: no margin is clear of that, and the comparison says
    # it proves nothing (an error of O(1) would not do: these O(1)-logit models are confident)
    noisy = lambda x: ref(x) + np.random.default_rng(0).normal(0.0, 30.0, size=x.shape + (config.vocab_size,))  # noqa: E731
    useless = checks.compare_tokens("sample", prompt, good, ref, "bfloat16", u=u, fast=noisy)
    assert not useless.passed and useless.mismatches == 0 and useless.judged < useless.needed
    assert "prove nothing" in str(useless)


# ----------------------------------------------------------------------------- cache, baseline, finite differences


def test_logits_through_cache_equals_forward_and_catches_a_cache_that_forgets(model):
    params, tokens = model
    truth = gpt.forward(params, CONFIG, tokens)
    got = checks.logits_through_cache(gpt, params, CONFIG, tokens, [2, 1])
    assert_close("cache logits", truth, got, "float64")
    assert checks.logits_through_cache(gpt, params, CONFIG, tokens).shape == truth.shape  # all steps

    class Forgetful:  # prefill/step that drop the cache: every chunk starts from scratch
        init_cache = staticmethod(gpt.init_cache)

        @staticmethod
        def prefill(p, config, cache, tok):
            return gpt.prefill(p, config, gpt.init_cache(p, config, tok.shape[0]), tok)

        @staticmethod
        def step(p, config, cache, tok_t):
            return gpt.step(p, config, gpt.init_cache(p, config, tok_t.shape[0]), tok_t)

    assert not compare("cache logits", truth, checks.logits_through_cache(Forgetful, params, CONFIG, tokens, [3]), "float64").passed
    with pytest.raises(ValueError, match="chunks"):
        checks.logits_through_cache(gpt, params, CONFIG, tokens, [5, 5])


def test_naive_float32_runs_the_reference_in_float32(model):
    params, tokens = model
    truth = gpt.forward(params, CONFIG, tokens)
    naive = checks.naive_float32(gpt.forward, params, CONFIG, tokens)
    assert naive.dtype == np.float64 and 0 < np.abs(naive - truth).max() < 1e-4
    torch_params = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in params.items()}
    assert np.array_equal(checks.naive_float32(gpt.forward, torch_params, CONFIG, tokens), naive)
    with pytest.raises(AssertionError, match="float64"):
        checks.naive_float32(lambda p, c, x: gpt.forward(p, c, x).astype(np.float64), params, CONFIG, tokens)


def test_finite_difference_grad_is_accurate_and_leaves_params_alone():
    params = {"w": np.array([[0.3, -1.2], [2.0, 0.7]]), "b": np.array([0.5])}
    before = {k: v.copy() for k, v in params.items()}

    def f(p):
        return float(np.sum(np.sin(p["w"]) * np.exp(p["b"][0])))

    fd = checks.finite_difference_grad(f, params, "w", (1, 0))
    assert abs(fd.value - np.cos(2.0) * np.exp(0.5)) <= checks.FD_ACCURACY and fd.error <= checks.FD_ACCURACY
    assert fd.step in checks.FD_STEPS
    assert abs(checks.finite_difference_grad(f, params, "b", 0).value - f(params)) <= checks.FD_ACCURACY
    assert all(np.array_equal(params[k], before[k]) for k in params)
    with pytest.raises(ValueError, match="name"):
        checks.finite_difference_grad(f, params, "v", (0, 0))
    with pytest.raises(ValueError, match="index"):
        checks.finite_difference_grad(f, params, "w", (0,))


# ----------------------------------------------------------------------------- sampler_goodness_of_fit


def _sampler(logits, seed, bias=None):
    """The reference inverse-CDF sampler on n copies of one row of logits; `bias`, if
    given, distorts the uniforms (a realistic bug: u**bias instead of u)."""
    from chainrule.reference import sampling

    def draw(n):
        u = np.random.default_rng(seed).random(n)
        if bias is not None:
            u = u**bias
        return sampling.sample(np.broadcast_to(logits, (n, logits.size)), u)

    return draw


def test_sampler_goodness_of_fit_passes_a_correct_sampler_and_fails_biased_ones():
    from chainrule.reference import sampling

    logits = np.array([0.0, 1.0, -np.inf, 2.0, -3.0, 0.5, -6.0, -7.0])  # rare tokens get pooled
    p = sampling.probs(logits)
    good = checks.sampler_goodness_of_fit(_sampler(logits, 0), p, 4000, alpha=1e-3)
    assert good.passed, str(good)
    assert good.impossible == 0 and good.counts.sum() == 4000
    # u**1.2: a total-variation error of about 4%
    biased = checks.sampler_goodness_of_fit(_sampler(logits, 0, bias=1.2), p, 4000, alpha=1e-3)
    assert not biased.passed and biased.p_value < 1e-3, str(biased)
    assert "FAILED" in str(biased)
    # off by one: the token after the right one (also draws the zero-probability token 2)
    shifted = checks.sampler_goodness_of_fit(lambda n: (_sampler(logits, 1)(n) + 1) % 8, p, 4000)
    assert not shifted.passed and shifted.impossible > 0
    # argmax instead of sampling
    greedy = checks.sampler_goodness_of_fit(lambda n: np.full(n, 3), p, 4000)
    assert not greedy.passed


def test_sampler_goodness_of_fit_catches_a_sampler_that_draws_a_zero_probability_token():
    p = np.array([0.5, 0.5, 0.0])
    # a sampler right on the two tokens but for one draw of the impossible token
    result = checks.sampler_goodness_of_fit(lambda n: np.r_[np.arange(n - 1) % 2, 2], p, 1000)
    assert result.impossible == 1 and not result.passed


def test_sampler_goodness_of_fit_validates_its_arguments():
    p = np.array([0.25, 0.75])
    with pytest.raises(ValueError, match="probs"):
        checks.sampler_goodness_of_fit(lambda n: np.zeros(n, int), np.array([0.5, 0.6]), 10)
    with pytest.raises(ValueError, match="n"):
        checks.sampler_goodness_of_fit(lambda n: np.zeros(n, int), p, 0)
    with pytest.raises(ValueError, match="sample_fn"):
        checks.sampler_goodness_of_fit(lambda n: np.full(n, 5), p, 10)
    with pytest.raises(ValueError, match="sample_fn"):
        checks.sampler_goodness_of_fit(lambda n: np.zeros(n - 1, int), p, 10)


def test_assert_pure_accepts_a_strided_one_element_tensor():
    tokens = torch.arange(4).reshape(1, 4)
    column = tokens[:, 0]  # shape (1,), stride (4,): a dense copy is needed to compare bytes
    assert_pure(lambda t: t + 1, column)
