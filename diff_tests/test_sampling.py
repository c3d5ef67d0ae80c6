"""reference.sampling against fast.sampling on every backend.

Probabilities under the tolerance table; greedy and inverse-CDF choices exactly
(first index on ties; the smallest i with cdf_i > u; never a token of
probability 0, even for u within rounding of 1); and the same ValueError for
the same bad input.
"""

from __future__ import annotations

import numpy as np
import pytest

from diff_tests.conftest import check
from reference import nn
from reference import sampling as ref


def _logits(rng, shape, scale=3.0):
    x = rng.normal(0.0, scale, size=shape)
    x[..., 1] = -np.inf  # a zero-probability token in every row
    x[0, -1] = -np.inf
    return x


def _seen(side, x):
    """The logits as the backend holds them (rounded to its dtype), back in float64: the
    sampler of a backend can only be judged on the logits it was given."""
    return side.numpy(side.array(x))


@pytest.mark.parametrize("V", [1, 3, 59])
def test_probs(side, V):
    rng = np.random.default_rng(V)
    x = rng.normal(0.0, 3.0, size=(4, 2, V))
    if V > 1:
        x[..., 0] = -np.inf
    got = side.numpy(side.sampling.probs(side.array(x)))
    check("probs", ref.probs(_seen(side, x)), got, side)
    if V > 1:
        assert (got[..., 0] == 0).all(), "a -inf logit must get probability exactly 0"


def test_greedy_first_index_on_ties(side):
    x = np.array([[1.0, 3.0, 3.0, -np.inf], [-np.inf, 2.0, 0.0, 2.0], [5.0] * 4, [-np.inf, -np.inf, 0.0, 0.0]])
    got = side.numpy(side.sampling.greedy(side.array(x)))
    assert got.tolist() == ref.greedy(x).tolist() == [1, 1, 0, 2]
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 3, size=(200, 7)).astype(np.float64)  # many ties
    assert np.array_equal(side.numpy(side.sampling.greedy(side.array(x))), ref.greedy(x))


def test_sample_matches_reference(side):
    """Exactly the reference's token for the logits the backend holds, except where u lies
    within float64 rounding (1e-12) of a cdf boundary."""
    rng = np.random.default_rng(1)
    x = _logits(rng, (500, 59), scale=2.0)
    u = rng.random(500)
    seen = _seen(side, x)
    want = ref.sample(seen, u)
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    margin = np.min(np.abs(np.cumsum(nn.softmax(seen), axis=-1) - u[:, None]), axis=-1)
    close = margin < 1e-12
    assert np.array_equal(got[~close], want[~close]), np.flatnonzero(got != want)
    assert (~close).sum() >= 490, f"only {(~close).sum()} of 500 draws compared"
    p = ref.probs(x)
    assert (p[np.arange(500), got] > 0).all(), "a zero-probability token was sampled"


def _f64():
    import torch

    return torch.float64


def test_sample_edges_of_u(side):
    """u = 0 gives the first token of nonzero probability; u within rounding of 1 (where
    the computed cdf may end below u) gives the last token of nonzero probability."""
    x = np.array([[-np.inf, 0.0, 1.0, -np.inf, 2.0, -np.inf]] * 4 + [[0.0] * 3 + [-np.inf] * 3] * 2)
    u = np.array([0.0, 0.5, np.nextafter(1.0, 0.0), 1.0 - 1e-12, 0.0, np.nextafter(1.0, 0.0)])
    want = ref.sample(x, u)
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    assert want.tolist() == [1, 4, 4, 4, 0, 2]
    assert got.tolist() == want.tolist()
    # many rows with trailing zero-probability tokens, u right below 1
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, size=(300, 13))
    x[:, 9:] = -np.inf
    u = 1.0 - rng.integers(1, 9, size=300) * 2.0**-53  # the 8 largest doubles below 1
    got = side.numpy(side.sampling.sample(side.array(x), side.array(u, dtype=_f64())))
    assert (got == 8).all(), f"expected the last nonzero-probability token 8, got {sorted(set(got.tolist()))}"


BAD_LOGITS = {
    "nan": [[0.0, np.nan, 1.0]],
    "+inf": [[0.0, np.inf, 1.0]],
    "all -inf row": [[0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf]],
}


@pytest.mark.parametrize("bad", BAD_LOGITS, ids=str)
@pytest.mark.parametrize("fn", ["probs", "greedy", "sample"])
def test_same_errors_for_bad_logits(side, bad, fn):
    x = np.array(BAD_LOGITS[bad])
    args = (np.zeros(x.shape[0]) + 0.5,) if fn == "sample" else ()
    with pytest.raises(ValueError) as want:
        getattr(ref, fn)(x, *args)
    with pytest.raises(ValueError) as got:
        getattr(side.sampling, fn)(side.array(x), *(side.array(a, dtype=_f64()) for a in args))
    print(f"[{side.name}] {fn}({bad}): reference {want.value!s} | fast {got.value!s}")


@pytest.mark.parametrize("u", [-0.1, 1.0, 1.5, np.nan])
def test_same_errors_for_u_out_of_range(side, u):
    x = np.zeros((2, 3))
    uu = np.array([0.5, u])
    with pytest.raises(ValueError, match="u"):
        ref.sample(x, uu)
    with pytest.raises(ValueError, match="u"):
        side.sampling.sample(side.array(x), side.array(uu, dtype=_f64()))


def test_same_error_for_u_shape(side):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="u"):
        ref.sample(x, np.array([0.5]))
    with pytest.raises(ValueError, match="u"):
        side.sampling.sample(side.array(x), side.array(np.array([0.5]), dtype=_f64()))
