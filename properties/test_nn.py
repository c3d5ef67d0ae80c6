"""Properties of the reference primitives (reference.nn).

Exact where the math is exact (mask structure, causality of attention bit for
bit, -inf entries giving exactly 0), and within a few ulps where it is an
identity of real numbers (softmax sums to 1, gelu(x) - gelu(-x) = x).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chainrule.reference import nn
from chainrule.reference.checks import assert_causal

finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)


def rows(min_v=1, max_v=9):
    return hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(min_v, max_v)), elements=finite)


@given(rows(), st.data())
def test_softmax_is_a_distribution_and_neg_inf_gets_zero(x, data):
    masked = data.draw(hnp.arrays(bool, x.shape))
    masked[:, 0] = False  # every row keeps a finite entry
    x = np.where(masked, -np.inf, x)
    p = nn.softmax(x)
    assert (p >= 0).all() and (p[masked] == 0).all()
    assert np.abs(p.sum(-1) - 1).max() <= 4 * x.shape[-1] * np.finfo(float).eps
    lp = nn.log_softmax(x)
    assert (lp[masked] == -np.inf).all() and (lp[~masked] <= 1e-15).all()
    assert np.abs(nn.logsumexp(lp)).max() <= 4 * x.shape[-1] * np.finfo(float).eps


@given(rows(), finite)
def test_logsumexp_bounds_and_shift(x, c):
    lse = nn.logsumexp(x)
    m = x.max(-1)
    assert (lse >= m).all() and (lse <= m + np.log(x.shape[-1]) + 1e-12).all()
    assert np.allclose(nn.logsumexp(x + c), lse + c, rtol=0, atol=1e-12 * (1 + np.abs(lse + c).max()))
    assert np.allclose(nn.softmax(x + c), nn.softmax(x), rtol=0, atol=1e-12)


@given(hnp.arrays(np.float64, st.integers(1, 50), elements=finite))
def test_gelu_odd_part_is_identity(x):
    """gelu(x) - gelu(-x) = x (Phi(x) + Phi(-x)) = x for every GELU, and relu(x) - relu(-x) = x exactly."""
    for f in (nn.gelu_tanh, nn.gelu_erf, nn.gelu_fast):
        assert np.allclose(f(x) - f(-x), x, rtol=1e-14, atol=1e-14)
    assert np.array_equal(nn.relu(x) - nn.relu(-x), x)
    assert np.abs(nn.gelu_tanh(x) - nn.gelu_erf(x)).max() < 1e-3  # the tanh form approximates erf


@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 9)), elements=finite))
def test_layer_norm_standardizes(x):
    C = x.shape[-1]
    y = nn.layer_norm(x, np.ones(C), np.zeros(C), eps=1e-5)
    var = x.var(-1)
    assert np.abs(y.mean(-1)).max() <= 1e-12
    assert np.allclose(y.var(-1), var / (var + 1e-5), rtol=1e-12, atol=1e-12)


@given(st.integers(1, 12), st.integers(0, 12))
def test_causal_mask_structure(t_query, extra):
    t_key = t_query + extra
    m = nn.causal_mask(t_query, t_key)
    for i in range(t_query):
        assert m[i].tolist() == [j <= extra + i for j in range(t_key)]
    assert m[-1].all()  # the newest query sees every key


@given(st.integers(1, 9), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_causal_self_attention_is_causal_bit_exact(T, head_dim, seed):
    """Perturb the input vector at one position: outputs before it are bit-for-bit unchanged,
    and (generic weights) every output depends on every earlier input."""
    rng = np.random.default_rng(seed)
    nh, C = 2, 2 * head_dim
    w_qkv, b_qkv = rng.normal(0, 1, (C, 3 * C)), rng.normal(0, 0.2, 3 * C)
    w_proj, b_proj = rng.normal(0, 1, (C, C)), rng.normal(0, 0.2, C)
    x = rng.normal(size=(2, T, C))
    fn = lambda x: nn.causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, nh)  # noqa: E731
    assert_causal(fn, x, full=True, name="nn.causal_self_attention")
