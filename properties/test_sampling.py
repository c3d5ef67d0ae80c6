"""Properties of inverse-CDF sampling and greedy choice, reference and fast.

The rule: token = the smallest i with cdf_i > u, cdf_i = sum_{j<=i} p_j. Hence,
exactly: the token is non-decreasing in u; u = 0 gives the first token of
nonzero probability; u = cdf_{i-1} gives token i when p_i > 0 (the boundary
belongs to the next token); a zero-probability token is never returned, not
even for u within rounding of 1. fast.sampling follows the same rule bit for bit
in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fast import sampling as fast
from reference import sampling as ref
from reference.checks import assert_pure


@st.composite
def logits_rows(draw, max_rows=4, max_v=9):
    """(B, V) float64 logits with some -inf entries, every row keeping a finite one."""
    B, V = draw(st.integers(1, max_rows)), draw(st.integers(1, max_v))
    x = draw(hnp.arrays(np.float64, (B, V), elements=st.floats(-8, 8)))
    masked = draw(hnp.arrays(bool, (B, V)))
    keep = draw(st.integers(0, V - 1))
    masked[:, keep] = False
    return np.where(masked, -np.inf, x)


uniforms = st.floats(0.0, 1.0, exclude_max=True)


@given(logits_rows(), st.lists(uniforms, min_size=2, max_size=6))
def test_sample_is_monotone_in_u_and_never_picks_zero_probability(x, us):
    p = ref.probs(x)
    previous = None
    for u in sorted(us) + [float(np.nextafter(1.0, 0.0))]:
        tok = ref.sample(x, np.full(x.shape[0], u))
        assert (p[np.arange(x.shape[0]), tok] > 0).all()
        if previous is not None:
            assert (tok >= previous).all()
        previous = tok


@given(logits_rows())
def test_sample_boundaries(x):
    p = ref.probs(x)
    first_nonzero = np.argmax(p > 0, axis=-1)
    assert np.array_equal(ref.sample(x, np.zeros(x.shape[0])), first_nonzero)
    cdf = np.cumsum(p, axis=-1)
    for b in range(x.shape[0]):
        for i in range(1, x.shape[1]):
            if p[b, i] > 0 and cdf[b, i] > cdf[b, i - 1] and cdf[b, i - 1] < 1:
                assert ref.sample(x[b : b + 1], cdf[b : b + 1, i - 1]).tolist() == [i]


@given(logits_rows())
def test_greedy_is_first_argmax(x):
    g = ref.greedy(x)
    for b, row in enumerate(x):
        assert g[b] == min(i for i, v in enumerate(row) if v == row.max())


@given(logits_rows(), st.data())
def test_fast_sampling_equals_reference_in_float64(x, data):
    u = np.array(data.draw(st.lists(uniforms, min_size=x.shape[0], max_size=x.shape[0])))
    xt, ut = torch.from_numpy(x), torch.from_numpy(u)
    assert np.array_equal(fast.greedy(xt).numpy(), ref.greedy(x))
    assert np.array_equal(fast.sample(xt, ut).numpy(), ref.sample(x, u))
    np.testing.assert_allclose(fast.probs(xt).numpy(), ref.probs(x), rtol=1e-12, atol=1e-15)


@given(logits_rows())
def test_samplers_are_pure(x):
    u = np.full(x.shape[0], 0.5)
    for f, args in ((ref.probs, (x,)), (ref.greedy, (x,)), (ref.sample, (x, u))):
        assert_pure(f, *args)
    xt, ut = torch.from_numpy(x), torch.from_numpy(u)
    for f, args in ((fast.probs, (xt,)), (fast.greedy, (xt,)), (fast.sample, (xt, ut))):
        assert_pure(f, *args)
