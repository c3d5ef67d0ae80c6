"""reference.nn against torch.nn.functional, both in float64 (a peer nobody here wrote).

Odd shapes (1, 3, 59), inputs with -inf entries and all -inf rows where the
function defines them, attention with a causal mask (with and without cached
keys) against F.scaled_dot_product_attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chainrule.reference import nn
from diff_tests.conftest import check
from chainrule.reference.checks import assert_close


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (3, 59)])
def test_layer_norm(rng, shape):
    x = rng.normal(0.5, 2.0, size=shape)
    C = shape[-1]
    g, b = rng.normal(1.0, 0.5, C), rng.normal(0.0, 0.5, C)
    for eps in (1e-5, 1e-3):
        want = F.layer_norm(t(x), (C,), t(g), t(b), eps=eps).numpy()
        assert_close("layer_norm", want, nn.layer_norm(x, g, b, eps), "float64")


def test_gelu(rng):
    x = np.concatenate([rng.normal(0, 3, 200), [-30.0, -5.0, 0.0, 5.0, 30.0]])
    assert_close("gelu_tanh", F.gelu(t(x), approximate="tanh").numpy(), nn.gelu_tanh(x), "float64")
    assert_close("gelu_erf", F.gelu(t(x), approximate="none").numpy(), nn.gelu_erf(x), "float64")
    assert_close("gelu_fast", F.gelu(t(x), approximate="tanh").numpy(), nn.gelu_fast(x), "float64")  # ~1e-12 apart
    assert_close("relu", F.relu(t(x)).numpy(), nn.relu(x), "float64")


def _with_neg_inf(rng, shape):
    """Normal entries with -inf sprinkled in; every row keeps at least one finite entry."""
    x = rng.normal(0, 3, size=shape)
    if shape[1] > 1:
        x[0, 0] = -np.inf  # one masked entry
        x[-1, 1::2] = -np.inf  # a row with several
    return x


@pytest.mark.parametrize("shape", [(2, 1), (3, 3), (4, 59)])
def test_softmax_log_softmax_logsumexp(rng, shape):
    x = _with_neg_inf(rng, shape)
    assert_close("softmax", F.softmax(t(x), dim=-1).numpy(), nn.softmax(x), "float64")
    assert_close("log_softmax", F.log_softmax(t(x), dim=-1).numpy(), nn.log_softmax(x), "float64")
    assert_close("logsumexp", torch.logsumexp(t(x), dim=-1).numpy(), nn.logsumexp(x), "float64")
    assert_close("logsumexp axis 0", torch.logsumexp(t(x), dim=0).numpy(), nn.logsumexp(x, axis=0), "float64")
    assert_close("logsumexp keepdims", torch.logsumexp(t(x), dim=-1, keepdim=True).numpy(),
                 nn.logsumexp(x, keepdims=True), "float64")  # fmt: skip


def test_all_neg_inf_row_and_large_values():
    """An all -inf row: logsumexp is -inf (no NaN); softmax / log_softmax are undefined
    (0/0) and both libraries say so with NaN -- the samplers reject such rows instead."""
    x = np.array([[-np.inf, -np.inf, -np.inf], [1000.0, 1000.0, -np.inf], [-1000.0, -1001.0, -1002.0]])
    want = torch.logsumexp(t(x), dim=-1).numpy()
    assert want[0] == -np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        assert_close("logsumexp", want, nn.logsumexp(x), "float64")
        soft, log_soft = nn.softmax(x), nn.log_softmax(x)
    assert np.isnan(soft[0]).all() and np.isnan(F.softmax(t(x), dim=-1).numpy()[0]).all()
    assert np.isnan(log_soft[0]).all() and np.isnan(F.log_softmax(t(x), dim=-1).numpy()[0]).all()
    assert_close("softmax rows 1-2", F.softmax(t(x), dim=-1).numpy()[1:], soft[1:], "float64")
    assert_close("log_softmax rows 1-2", F.log_softmax(t(x), dim=-1).numpy()[1:], log_soft[1:], "float64")
    assert nn.logsumexp(np.array([1.0, np.inf])) == np.inf


def test_softmax_extreme_values():
    x = np.array([[1000.0, 0.0, -1000.0], [-745.0, -745.0, 0.0]])
    assert_close("softmax", F.softmax(t(x), dim=-1).numpy(), nn.softmax(x), "float64")


@pytest.mark.parametrize("t_query,t_key", [(1, 1), (3, 3), (1, 7), (3, 7), (59, 59)])
def test_causal_mask(t_query, t_key):
    """Query i sits at absolute position t_key - t_query + i and sees keys j <= that position:
    the bottom-right-aligned causal mask (torch's tril with diagonal = t_key - t_query)."""
    want = torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query).numpy()
    got = nn.causal_mask(t_query, t_key)
    assert got.dtype == bool and got.shape == (t_query, t_key)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("head_dim", [1, 3, 8])
@pytest.mark.parametrize("t_query,t_key", [(1, 1), (5, 5), (1, 6), (4, 9)])
def test_attention_vs_sdpa(rng, head_dim, t_query, t_key):
    q = rng.normal(0, 1.5, size=(2, 3, t_query, head_dim))
    k = rng.normal(0, 1.5, size=(2, 3, t_key, head_dim))
    v = rng.normal(0, 1.0, size=(2, 3, t_key, head_dim))
    mask = nn.causal_mask(t_query, t_key)
    want = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=torch.from_numpy(mask)).numpy()
    assert_close("attention (causal mask)", want, nn.attention(q, k, v, mask), "float64")
    # an arbitrary mask with at least one allowed key per query
    mask = rng.random((t_query, t_key)) < 0.5
    mask[:, 0] = True
    want = F.scaled_dot_product_attention(t(q), t(k), t(v), attn_mask=torch.from_numpy(mask)).numpy()
    assert_close("attention (random mask)", want, nn.attention(q, k, v, mask), "float64")


def test_causal_self_attention_vs_sdpa_is_causal(rng):
    B, T, C, nh = 2, 7, 6, 2
    x = rng.normal(size=(B, T, C))
    w_qkv, b_qkv = rng.normal(0, 0.5, (C, 3 * C)), rng.normal(0, 0.1, 3 * C)
    w_proj, b_proj = rng.normal(0, 0.5, (C, C)), rng.normal(0, 0.1, C)
    qkv = t(x) @ t(w_qkv) + t(b_qkv)
    q, k, v = (a.view(B, T, nh, C // nh).transpose(1, 2) for a in qkv.split(C, dim=-1))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
    want = (y @ t(w_proj) + t(b_proj)).numpy()
    got = nn.causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, nh)
    assert_close("causal_self_attention", want, got, "float64")


def test_linear_embedding(rng):
    x, w, b = rng.normal(size=(2, 3, 5)), rng.normal(size=(5, 7)), rng.normal(size=7)
    assert_close("linear", F.linear(t(x), t(w).T, t(b)).numpy(), nn.linear(x, w, b), "float64")
    ids = rng.integers(0, 11, size=(2, 3))
    table = rng.normal(size=(11, 4))
    want = F.embedding(torch.from_numpy(ids), t(table)).numpy()
    assert np.array_equal(nn.embedding(ids, table), want)


# ----------------------------------------------------------------------------- reference.nn vs fast.nn, every backend


def _side_nn(side):
    """fast.nn on torch backends; reference.nn itself on CuPy."""
    if side.is_cupy:
        return nn
    from chainrule.fast import nn as fast_nn

    return fast_nn


@pytest.mark.parametrize("shape", [(1, 1), (3, 59)])
def test_fast_nn_pointwise_and_normalizers(side, rng, shape):
    x = _with_neg_inf(rng, shape)
    finite = rng.normal(0.5, 2.0, size=shape)
    C = shape[-1]
    g, b = rng.normal(1.0, 0.5, C), rng.normal(0.0, 0.5, C)
    f = _side_nn(side)
    X, Xf, G, Bb = (side.array(a) for a in (x, finite, g, b))
    cases = {
        "layer_norm": (nn.layer_norm(finite, g, b), f.layer_norm(Xf, G, Bb)),
        "gelu_tanh": (nn.gelu_tanh(finite), f.gelu_tanh(Xf)),
        "gelu_erf": (nn.gelu_erf(finite), f.gelu_erf(Xf)),
        "gelu_fast": (nn.gelu_fast(finite), f.gelu_fast(Xf)),
        "relu": (nn.relu(finite), f.relu(Xf)),
        "softmax": (nn.softmax(x), f.softmax(X)),
        "log_softmax": (nn.log_softmax(x), f.log_softmax(X)),
        "logsumexp": (nn.logsumexp(x), f.logsumexp(X)),
        "logsumexp axis 0 keepdims": (nn.logsumexp(x, axis=0, keepdims=True), f.logsumexp(X, axis=0, keepdims=True)),
    }
    for name, (truth, got) in cases.items():
        check(name, truth, side.numpy(got), side)


@pytest.mark.parametrize("t_query, t_key", [(1, 1), (1, 7), (5, 5), (3, 8)])
def test_fast_nn_attention(side, rng, t_query, t_key):
    q, k, v = (rng.normal(0, 1, (2, 3, T, 3)) for T in (t_query, t_key, t_key))
    f = _side_nn(side)
    xp_mask = nn.causal_mask(t_query, t_key)
    if side.is_cupy:
        got_mask = side.numpy(nn.causal_mask(t_query, t_key, side.cp))
    else:
        got_mask = side.numpy(f.causal_mask(t_query, t_key, device=side.backend.device))
    np.testing.assert_array_equal(got_mask, xp_mask)
    mask = side.cp.asarray(xp_mask) if side.is_cupy else torch.as_tensor(xp_mask, device=side.backend.device)
    got = f.attention(side.array(q), side.array(k), side.array(v), mask)
    check("attention", nn.attention(q, k, v, xp_mask), side.numpy(got), side)


def test_fast_nn_self_attention_linear_embedding(side, rng):
    B, T, C, nh = 2, 7, 6, 3
    x = rng.normal(0, 1, (B, T, C))
    w_qkv, b_qkv = rng.normal(0, C**-0.5, (C, 3 * C)), rng.normal(0, 0.2, 3 * C)
    w_proj, b_proj = rng.normal(0, C**-0.5, (C, C)), rng.normal(0, 0.2, C)
    f = _side_nn(side)
    A = side.array
    got = f.causal_self_attention(A(x), A(w_qkv), A(b_qkv), A(w_proj), A(b_proj), nh)
    check("causal_self_attention", nn.causal_self_attention(x, w_qkv, b_qkv, w_proj, b_proj, nh), side.numpy(got), side)
    check("linear", nn.linear(x, w_proj, b_proj), side.numpy(f.linear(A(x), A(w_proj), A(b_proj))), side)
    table, ids = rng.normal(0, 1, (11, C)), rng.integers(0, 11, (B, T))
    check("embedding", nn.embedding(ids, table), side.numpy(f.embedding(A(ids), A(table))), side)
