"""Speculative decoding: the step worked by hand, the degenerate cases, the analysis formulas, the
errors, purity, and the user-facing statistical test catching real bugs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from chainrule.fast import speculative as fsp
from chainrule.reference import checks, gpt
from chainrule.reference import speculative as sp

V = 3
P = np.array([0.5, 0.3, 0.2])
Q = np.array([0.2, 0.2, 0.6])


def const(p):
    return lambda seq: np.asarray(p, dtype=np.float64)


# ----------------------------------------------------------------------------- one step by hand


def test_step_by_hand_uniform_layout():
    # k = 2, u = [draft 1, draft 2, test 1, test 2, final]; cdf(q) = [.2, .4, 1]
    # x_1 = inverse_cdf(q, .5) = 2 (.2, .4 <= .5 < 1); p/q at 2 = 1/3: u = .1 accepts
    # x_2 = inverse_cdf(q, .1) = 0; p/q at 0 = 2.5 >= 1: always accepted -> bonus from p, u = .85 -> 2
    out = sp.speculative_step(const(P), const(Q), np.array([1]), 2, u=[0.5, 0.1, 0.1, 0.999, 0.85])
    assert out.tolist() == [2, 0, 2]
    # the same drafts, test 1 fails (u = .4 >= 1/3): residual max(0, p - q) = [.3, .1, 0] / .4,
    # cdf [.75, 1, 1]; final u = .8 -> token 1
    out = sp.speculative_step(const(P), const(Q), np.array([1]), 2, u=[0.5, 0.1, 0.4, 0.0, 0.8])
    assert out.tolist() == [1]
    assert sp.uniforms_per_step(2) == 5


def test_generate_consumes_one_row_per_step_and_truncates():
    u = np.tile([0.5, 0.1, 0.1, 0.999, 0.85], (4, 1))  # every step emits [2, 0, 2]
    tokens, accepted = sp.generate(const(P), const(Q), np.array([1]), 2, 4, u=u)
    assert tokens.tolist() == [1, 2, 0, 2, 2]  # the second block cut after one token
    assert accepted.tolist() == [2, 2]


# ----------------------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("k", [1, 2, 3])
def test_p_equals_q_accepts_everything(k):
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = sp.speculative_step(const(P), const(P), np.array([0]), k, rng)
        assert out.shape == (k + 1,)  # never the residual (0/0): all k accepted plus the bonus
    # even at the largest uniform below 1
    u = np.full(2 * k + 1, np.nextafter(1.0, 0.0))
    assert sp.speculative_step(const(P), const(P), np.array([0]), k, u=u).shape == (k + 1,)


def test_q_zero_never_proposed_and_p_zero_always_rejected():
    p = np.array([0.0, 0.5, 0.5])  # token 0 impossible under the target
    q = np.array([0.7, 0.3, 0.0])  # token 2 never proposed by the draft
    rng = np.random.default_rng(1)
    for _ in range(300):
        out = sp.speculative_step(const(p), const(q), np.array([1]), 1, rng)
        assert 0 not in out.tolist()  # proposed often, always rejected, never emitted
        if out.shape[0] == 2:  # accepted draft token: only token 1 can be accepted
            assert out[0] == 1
    # a point-mass draft on a token of target probability 0: every step is one residual token
    out = sp.speculative_step(const(p), const([1.0, 0, 0]), np.array([1]), 3, u=[0.3] * 7)
    assert out.shape == (1,) and out[0] in (1, 2)


def test_residual_falls_back_to_p_when_it_vanishes():
    p = np.array([0.5, 0.5])
    assert sp.residual(p, p.copy()).tolist() == p.tolist()  # max(0, p - q) = 0 everywhere: p itself
    q = np.array([0.5 + 2**-53, 0.5 - 2**-53])  # one ulp apart: the residual is tiny but not zero
    assert sp.residual(p, q).tolist() == [0.0, 2**-53]
    assert sp.inverse_cdf(sp.residual(p, q), 0.999) == 1 and sp.inverse_cdf(sp.residual(p, q), 0.0) == 1


def test_point_mass_target_and_draft_exact():
    point = np.eye(V)
    target = lambda seq: point[(int(seq[-1]) + 1) % V]  # deterministic next token
    draft = lambda seq: point[(int(seq[-1]) + 1) % V] if len(seq) % 2 else point[int(seq[-1])]
    for k in (1, 2, 3):
        exact = sp.exact_output_distribution(target, draft, np.array([0]), k, 3)
        assert exact[1, 2, 0] == 1.0 and exact.sum() == 1.0


# ----------------------------------------------------------------------------- the analysis


def test_acceptance_rate_is_one_minus_total_variation():
    alpha = sp.acceptance_rate(P, Q)
    assert alpha == pytest.approx(1 - 0.5 * np.abs(P - Q).sum(), abs=1e-15)
    assert alpha == pytest.approx(0.6, abs=1e-15)
    assert sp.acceptance_rate(P, P) == pytest.approx(1.0, abs=1e-15)
    assert sp.acceptance_rate(np.stack([P, Q]), np.stack([Q, Q])).shape == (2,)


def test_expected_tokens_and_speedup():
    assert sp.expected_tokens_per_step(1.0, 4) == 5.0
    assert sp.expected_tokens_per_step(0.0, 4) == 1.0
    assert sp.expected_tokens_per_step(0.5, 1) == pytest.approx(1.5)
    assert sp.expected_tokens_per_step(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    # Leviathan et al. Table/Theorem 3.8: alpha = .8, k = 3, c = .05 -> 2.952 / 1.15
    assert sp.expected_speedup(0.8, 3, 0.05) == pytest.approx(2.952 / 1.15)
    assert sp.expected_speedup(0.8, 3, 0.0) == pytest.approx(2.952)


@pytest.mark.parametrize("call, match", [
    (lambda: sp.expected_tokens_per_step(1.5, 2), "alpha"),
    (lambda: sp.expected_tokens_per_step(0.5, 0), "k"),
    (lambda: sp.expected_speedup(0.5, 2, -1), "c"),
    (lambda: sp.acceptance_rate(P, Q[:2]), "p, q"),
    (lambda: sp.acceptance_rate(P, Q * 2), "q: expected probabilities summing to 1"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([0]), 0, np.random.default_rng(0)), "k"),
    (lambda: sp.speculative_step(const(P), const(Q * 0.9), np.array([0]), 2, np.random.default_rng(0)),
     r"draft\(\[0\]\): expected probabilities summing to 1"),
    (lambda: sp.speculative_step(const(P), const([0.5, 0.5]), np.array([0]), 1, np.random.default_rng(0)),
     r"target\(\[0\]\): expected shape \(2,\)"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([0]), 2, u=[0.5] * 4), r"u: expected shape \(5,\)"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([0]), 1, u=[0.5, 1.0, 0.5]), "u: expected uniforms"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([0]), 1), "rng, u"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([[0]]), 1, np.random.default_rng(0)), "prefix"),
    (lambda: sp.speculative_step(const(P), "draft", np.array([0]), 1, np.random.default_rng(0)), "draft"),
    (lambda: sp.exact_output_distribution(const(P), const(Q), np.array([0]), 1, 0), "length"),
    (lambda: sp.speculative_step(const(P), const(Q), np.array([0.5]), 1, np.random.default_rng(0)), "prefix"),
    (lambda: sp.generate(const(P), const(Q), np.array([0]), 1, 3, u=np.zeros((2, 3))), r"u: expected shape \(3, 3\)"),
])  # fmt: skip
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_empty_prefix():
    out = sp.speculative_step(const(P), const(Q), [], 2, u=[0.5, 0.1, 0.1, 0.999, 0.85])
    assert out.tolist() == [2, 0, 2]
    assert sp.exact_output_distribution(const(P), const(Q), [], 2, 1).tolist() == pytest.approx(P.tolist(), abs=1e-15)


def test_pure_and_deterministic():
    prefix = np.array([0, 2])
    checks.assert_pure(sp.speculative_step, const(P), const(Q), prefix, 2, u=np.full(5, 0.3))
    checks.assert_pure(sp.exact_output_distribution, const(P), const(Q), prefix, 2, 2)
    a = sp.generate(const(P), const(Q), prefix, 2, 7, np.random.default_rng(3))
    b = sp.generate(const(P), const(Q), prefix, 2, 7, np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b))


# ----------------------------------------------------------------------------- the user-facing test


def _buggy(kind):
    """Speculative steps with the classic bugs."""

    def step(target, draft, prefix, k, rng):
        p, q = target(prefix), draft(prefix)
        x = int(rng.choice(len(q), p=q))
        ratio = q[x] / p[x] if kind == "inverted ratio" else p[x] / q[x]
        if rng.random() < ratio:
            return np.array([x])
        w = p if kind == "residual is p" else np.maximum(p - q, 0)
        return np.array([int(rng.choice(len(w), p=w / w.sum()))])

    return step


@pytest.mark.parametrize("kind", ["residual is p", "inverted ratio"])
def test_sampler_test_catches_bugs(kind):
    target = lambda seq: P if len(seq) % 2 else P[::-1].copy()
    draft = lambda seq: Q
    fit = checks.speculative_sampler_test(_buggy(kind), target, draft, np.array([0]), 1, 3000, length=1)
    assert not fit.passed, str(fit)
    good = checks.speculative_sampler_test(_buggy("none"), target, draft, np.array([0]), 1, 3000, length=2)
    assert good.passed, str(good)


def test_sampler_test_rejects_bad_steps():
    with pytest.raises(ValueError, match="step_fn: expected 1 to k"):
        checks.speculative_sampler_test(lambda *a: np.array([0, 1, 2]), const(P), const(Q), np.array([0]), 1, 5)
    with pytest.raises(ValueError, match="step_fn: expected token ids"):
        checks.speculative_sampler_test(lambda *a: np.array([7]), const(P), const(Q), np.array([0]), 1, 5)


# ----------------------------------------------------------------------------- fast: arguments


def _tiny():
    config = gpt.Config(vocab_size=5, block_size=9, n_layer=1, n_head=1, n_embd=3)
    return gpt.random_params(config, np.random.default_rng(0)), config


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "k: expected an int >= 1"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(u=np.zeros((1, 3, 5)), rng=None), r"u: expected shape \(1, 3, 7\)"),
    (dict(rng=None), "rng, u"),
    (dict(max_new_tokens=7), "prompt: expected length"),  # T0 + N + k - 1 > block_size
])  # fmt: skip
def test_fast_bad_input(kwargs, match):
    params, config = _tiny()
    args = dict(k=3, max_new_tokens=3, rng=np.random.default_rng(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fsp.generate((params, config), (params, config), np.array([[1, 2]]), **args)


def test_fast_vocab_mismatch():
    params, config = _tiny()
    other = gpt.Config(vocab_size=4, block_size=9, n_layer=1, n_head=1, n_embd=3)
    with pytest.raises(ValueError, match="draft: expected vocab_size 5"):
        fsp.generate((params, config), (gpt.random_params(other, np.random.default_rng(1)), other),
                     np.array([[1]]), 1, 2, np.random.default_rng(0))  # fmt: skip


def test_fast_rng_is_the_reference_stream():
    """One row: rng.random((1, N, 2k + 1)) and the reference's per-step rng.random(2k + 1) are the same numbers."""
    params, config = _tiny()
    fp = {k: torch.as_tensor(v) for k, v in params.items()}
    tokens, accepted = fsp.generate((fp, config), (fp, config), np.array([[1, 2]]), 2, 4, np.random.default_rng(7))
    model = sp.gpt_model(params, config)
    ref_tokens, ref_accepted = sp.generate(model, model, np.array([1, 2]), 2, 4, np.random.default_rng(7))
    assert tokens[0].tolist() == ref_tokens.tolist()
    # draft = target: every step accepts all k = 2 drafts (and the bonus makes 3 tokens, cut at 4)
    assert accepted[0][accepted[0] >= 0].tolist() == ref_accepted.tolist() == [2, 2]


def test_fast_nan_logits_raise():
    params, config = _tiny()
    bad = dict(params)
    bad["ln_f.g"] = params["ln_f.g"] * np.nan
    with pytest.raises(ValueError, match="draft logits: contains NaN"):
        fsp.generate((params, config), (bad, config), np.array([[1]]), 1, 2, np.random.default_rng(0))


# ----------------------------------------------------------------------------- end of sequence


def test_generate_stops_at_the_first_eos_by_hand():
    u = np.tile([0.5, 0.1, 0.1, 0.999, 0.85], (6, 1))  # every step emits [2, 0, 2] (see above)
    tokens, accepted = sp.generate(const(P), const(Q), np.array([1]), 2, 6, u=u, eos_token_id=0)
    assert tokens.tolist() == [1, 2, 0]  # the eos kept, the bonus token 2 after it discarded
    assert accepted.tolist() == [2]  # one step ran; it accepted both drafts
    tokens, _ = sp.generate(const(P), const(Q), np.array([1]), 2, 6, u=u, eos_token_id=[1, 2])
    assert tokens.tolist() == [1, 2]  # several eos ids: the first one emitted ends it
    tokens, accepted = sp.generate(const(P), const(Q), np.array([0]), 2, 6, u=u, eos_token_id=1)
    assert tokens.tolist() == [0, 2, 0, 2, 2, 0, 2] and accepted.tolist() == [2, 2]  # 1 never emitted
    tokens, _ = sp.generate(const(P), const(Q), np.array([0]), 2, 6, u=u, eos_token_id=0)
    assert tokens.tolist() == [0, 2, 0]  # an eos in the prefix does not end the sequence
    tokens, accepted = sp.generate(const(P), const(Q), np.array([1]), 2, 4, u=u[:4], eos_token_id=2, pad_token_id=1)
    assert tokens.tolist() == [1, 2] and accepted.tolist() == [2]


def test_exact_distribution_with_eos_by_hand():
    """V = 3, eos = 2, length 2: P[2, pad] = p(2); P[x, y] = p(x) p(y) for x != 2; P[2, y != pad] = 0."""
    for pad in (None, 0):
        exact = sp.exact_output_distribution(const(P), const(Q), [0], 2, 2, eos_token_id=2, pad_token_id=pad)
        truth = sp.target_distribution(const(P), [0], 2, eos_token_id=2, pad_token_id=pad)
        want = np.outer(P, P)
        want[2] = 0.0
        want[2, 2 if pad is None else pad] = P[2]
        np.testing.assert_allclose(truth, want, rtol=0, atol=1e-15)
        np.testing.assert_allclose(exact, want, rtol=0, atol=1e-15)


def _bad_eos_cases():
    return [(dict(eos_token_id=V), "eos_token_id:"), (dict(eos_token_id=-1), "eos_token_id:"),
            (dict(eos_token_id=1.0), "eos_token_id:"), (dict(eos_token_id=True), "eos_token_id:"),
            (dict(eos_token_id=[]), "eos_token_id:"), (dict(eos_token_id=[0, V]), "eos_token_id:"),
            (dict(eos_token_id="0"), "eos_token_id:"), (dict(eos_token_id=0, pad_token_id=V), "pad_token_id:"),
            (dict(pad_token_id=-1), "pad_token_id:"), (dict(eos_token_id=1, pad_token_id=0.5), "pad_token_id:")]  # fmt: skip


@pytest.mark.parametrize("kwargs, match", _bad_eos_cases())
@pytest.mark.parametrize("max_new_tokens", [0, 3])
def test_bad_eos_refused_by_reference_and_fast(kwargs, match, max_new_tokens):
    config = gpt.Config(vocab_size=V, block_size=9, n_layer=1, n_head=1, n_embd=3)
    params = gpt.random_params(config, np.random.default_rng(0))
    model = sp.gpt_model(params, config)
    with pytest.raises(ValueError, match=f"^{match}"):
        sp.generate(model, model, np.array([1, 2]), 2, max_new_tokens, np.random.default_rng(0), **kwargs)
    with pytest.raises(ValueError, match=f"^{match}"):
        fsp.generate((params, config), (params, config), np.array([[1, 2]]), 2, max_new_tokens,
                     np.random.default_rng(0), **kwargs)  # fmt: skip
    with pytest.raises(ValueError, match=f"^{match}"):
        sp.exact_output_distribution(const(P), const(Q), [0], 1, 1, **kwargs)
    with pytest.raises(ValueError, match=f"^{match}"):
        sp.target_distribution(const(P), [0], 1, **kwargs)


class _RowCounter:
    """A processor (identity) recording how many rows of logits each call sees."""

    def __init__(self):
        self.rows = []

    def __call__(self, logits):
        self.rows.append(logits.shape[0])
        return logits


def test_fast_eos_pads_stops_and_drops_finished_rows():
    """Rows ending at different steps: each row is the reference's row then pad; generation stops
    when the last row ends; a row that ended is no longer computed (the processors see fewer rows)."""
    config = gpt.Config(vocab_size=V, block_size=40, n_layer=1, n_head=1, n_embd=3)
    rng = np.random.default_rng(12)
    target = gpt.random_params(config, rng)
    draft = {n: w + 0.3 * rng.normal(size=w.shape) for n, w in target.items()}
    B, T0, N, k, eos, pad = 4, 2, 30, 2, 2, 1  # the rows end after 2, 6, 7 and 11 steps
    prompt = rng.integers(0, V, (B, T0))
    u = rng.random((B, N, 2 * k + 1))
    counter = _RowCounter()
    tokens, accepted = fsp.generate((target, config), (draft, config), prompt, k, N, u=u, eos_token_id=eos,
                                    pad_token_id=pad, processors=[counter])  # fmt: skip
    t_model, d_model = sp.gpt_model(target, config), sp.gpt_model(draft, config)
    rows = [sp.generate(t_model, d_model, prompt[b], k, N, u=u[b], eos_token_id=eos) for b in range(B)]
    lengths = [r[0].shape[0] for r in rows]
    assert len(set(lengths)) > 1 and max(lengths) < T0 + N, f"the case must end rows early, at different steps: {lengths}"
    assert tokens.shape == (B, max(lengths))
    for b, (want, want_accepted) in enumerate(rows):
        assert tokens[b, : len(want)].tolist() == want.tolist()
        assert int(want[-1]) == eos and eos not in want[T0:-1].tolist()
        assert (tokens[b, len(want) :] == pad).all()
        got = accepted[b].numpy()
        assert got[: len(want_accepted)].tolist() == want_accepted.tolist() and (got[len(want_accepted) :] == -1).all()
    assert accepted.shape[1] == max(len(r[1]) for r in rows)  # the steps run: until the last row ended
    # k draft calls and 1 target call per step: after the first row ends, the calls see fewer rows
    per_step = [counter.rows[i : i + k + 1] for i in range(0, len(counter.rows), k + 1)]
    live = [sum(len(r[1]) > s for r in rows) for s in range(accepted.shape[1])]
    assert [step[0] for step in per_step] == live, (per_step, live)  # the draft's first call: one row per live row
    assert [step[-1] for step in per_step] == [n * (k + 1) for n in live]  # the target pass: k + 1 rows per live row
