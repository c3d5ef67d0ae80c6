"""reference.medusa (float64 NumPy, the truth) against every backend of fast.medusa.

Two fixed cases with odd sizes -- a vocabulary of 59 with head_dim 3 under the public
63-node tree cut to depth 3, and a vocabulary of 5 under the full 5 + 25 node tree (where
heads with random weights still get tokens accepted) -- and the same parameters on every
backend. Compared: teacher-forced base and head logits, the Medusa-1 loss, tree buffers and
candidates, the tree forward (logits of every node, head logits), the KV cache after
acceptance, verification (greedy and typical) and generated tokens (greedy: judged by
`reference.checks.compare_tokens` against greedy decoding of the reference; typical: float64).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from diff_tests.conftest import check
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import medusa as fast_medusa
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import medusa
from chainrule.reference.checks import as_float64, assert_tokens

CASES = {
    "v59": dict(base=ref_gpt.Config(vocab_size=59, block_size=64, n_layer=2, n_head=3, n_embd=9, bos_token=3),
                n_heads=3, n_layers=2, choices=medusa.prune(medusa.MC_SIM_7B_63, 3)),
    "v5": dict(base=ref_gpt.Config(vocab_size=5, block_size=64, n_layer=2, n_head=1, n_embd=3, bos_token=0),
               n_heads=2, n_layers=1, choices=[(i,) for i in range(5)] + [(i, j) for i in range(5) for j in range(5)]),
}  # fmt: skip
T0, NEW = 5, 23


@functools.lru_cache(maxsize=None)
def case(name: str):
    spec = CASES[name]
    base = spec["base"]
    config = medusa.Config.for_base(base, n_heads=spec["n_heads"], n_layers=spec["n_layers"])
    rng = np.random.default_rng(len(name) + 2024)
    params = ref_gpt.random_params(base, rng)
    heads = medusa.random_params(config, rng)
    prompt = rng.integers(0, base.vocab_size, (2, T0))
    tokens = rng.integers(0, base.vocab_size, (2, 13))
    return base, config, params, heads, spec["choices"], prompt, tokens


def _float32(tree):
    return {k: as_float64(v).astype(np.float32) for k, v in tree.items()}


class Impl:
    """The side's Medusa: fast.medusa on torch, the reference itself on CuPy arrays."""

    def __init__(self, side, params, heads):
        self.side = side
        self.m = medusa if side.is_cupy else fast_medusa
        self.P, self.H = side.params(params), side.params(heads)

    def kw(self, naive):
        return {} if self.side.is_cupy else {"attn_impl": "math" if naive else "sdpa"}

    def forward(self, base, config, tokens, naive=False):
        out = self.m.forward(self.P, base, self.H, config, self.side.array(tokens), **self.kw(naive))
        return tuple(self.side.numpy(o) for o in out)

    def empty_cache(self, base, length):
        return self.m.init_cache(self.P, base, length)

    def tree(self, base, config, prompt, tree_tokens, buffers, nodes, naive=False):
        """Prefill the prompt (1, T0), one tree forward, keep `nodes` -> (logits, head logits, k, v)."""
        N = len(buffers["depth"])
        _, cache = self.m.hidden(self.P, base, self.side.array(prompt), self.empty_cache(base, T0 + N))
        extra = {} if self.side.is_cupy else {"attn_impl": "math" if naive else "sdpa"}
        logits, heads, cache = self.m.tree_forward(self.P, base, self.H, config, cache, self.side.array(tree_tokens),
                                                   buffers, **extra)  # fmt: skip
        cache = self.m.keep_path(cache, T0, nodes)
        n = T0 + len(nodes)
        if self.side.is_cupy:
            k, v = np.stack([as_float64(a) for a in cache["k"]]), np.stack([as_float64(a) for a in cache["v"]])
        else:
            k, v = as_float64(cache.k[:, :, :, :n]), as_float64(cache.v[:, :, :, :n])
        return self.side.numpy(logits), self.side.numpy(heads), k, v


def _naive(side, impl, fn_reference, fn_fast_math, *args):
    """float32: the spec in float32 NumPy; bfloat16: the fast path's explicit attention; float64: None."""
    if not side.low_precision or side.is_cupy:
        return None
    if side.dtype == "float32":
        out = fn_reference(*args)
        assert all(o.dtype == np.float32 for o in out), "naive float32 baseline computed in another dtype"
        return tuple(as_float64(o) for o in out)
    return fn_fast_math(*args)


# ----------------------------------------------------------------------------- teacher forcing


@pytest.mark.parametrize("name", CASES)
def test_forward_and_head_logits(side, name):
    base, config, params, heads, _, _, tokens = case(name)
    truth = medusa.forward(params, base, heads, config, tokens)
    impl = Impl(side, params, heads)
    got = impl.forward(base, config, tokens)
    naive = _naive(side, impl, lambda t: medusa.forward(_float32(params), base, _float32(heads), config, t),
                   lambda t: impl.forward(base, config, t, naive=True), tokens)  # fmt: skip
    check("base logits", truth[0], got[0], side, naive=None if naive is None else naive[0])
    check("head logits", truth[1], got[1], side, naive=None if naive is None else naive[1])


@pytest.mark.parametrize("name", CASES)
def test_loss(side, name):
    if side.is_cupy:
        pytest.skip("cupy-f64 runs the reference: the loss is compared through the torch backends")
    base, config, params, heads, _, _, tokens = case(name)
    truth = medusa.loss(params, base, heads, config, tokens)
    impl = Impl(side, params, heads)
    got = fast_medusa.loss(impl.P, base, impl.H, config, side.array(tokens))
    naive = medusa.loss(_float32(params), base, _float32(heads), config, tokens) if side.dtype == "float32" else None
    if side.dtype == "bfloat16":  # the loss accumulates in float32: judged against the math-attention run
        naive = None
    check("Medusa-1 loss", np.array([truth]), np.array([float(got)]), side,
          naive=None if naive is None else np.array([float(naive)]))  # fmt: skip


# ----------------------------------------------------------------------------- the tree


def _tree_case(name):
    base, config, params, heads, choices, prompt, _ = case(name)
    buffers = medusa.tree_buffers(choices)
    h, cache = medusa.hidden(params, base, prompt[:1], ref_gpt.init_cache(params, base, 1))
    last_logits, last_heads = medusa.base_logits(params, h[0, -1]), medusa.head_logits(heads, config, h[0, -1])
    tree_tokens = medusa.candidates(last_logits, last_heads, buffers)
    row = int(np.argmax(buffers["path_length"]))  # a deepest path
    nodes = buffers["paths"][row, : buffers["path_length"][row]]
    return base, config, params, heads, buffers, prompt[:1], cache, last_logits, last_heads, tree_tokens, nodes


@pytest.mark.parametrize("name", CASES)
def test_buffers_and_candidates(side, name):
    base, config, params, heads, buffers, _, _, last_logits, last_heads, want, _ = _tree_case(name)
    if side.is_cupy:
        got = medusa.candidates(side.cp.asarray(last_logits), side.cp.asarray(last_heads), buffers)
    else:
        dev = side.backend.device
        got = fast_medusa.candidates(torch.as_tensor(last_logits, device=dev), torch.as_tensor(last_heads, device=dev),
                                     buffers)  # fmt: skip
        mask = fast_medusa.tree_attention_mask(T0, buffers, dev)
        np.testing.assert_array_equal(side.numpy(mask), medusa.tree_attention_mask(T0, buffers))
    np.testing.assert_array_equal(side.numpy(got), want)


@pytest.mark.parametrize("name", CASES)
def test_tree_forward_and_cache_after_acceptance(side, name):
    base, config, params, heads, buffers, prompt, cache, _, _, tree_tokens, nodes = _tree_case(name)
    logits, head_logits, tree_cache = medusa.tree_forward(params, base, heads, config, cache, tree_tokens, buffers)
    kept = medusa.keep_path(tree_cache, T0, nodes)
    truth_k, truth_v = np.stack(kept["k"]), np.stack(kept["v"])  # (L, 1, nh, T0 + n, hs)
    impl = Impl(side, params, heads)
    got = impl.tree(base, config, prompt, tree_tokens, buffers, nodes)

    def reference32(*_):
        P32, H32 = _float32(params), _float32(heads)
        _, c = medusa.hidden(P32, base, prompt, ref_gpt.init_cache(P32, base, 1))
        lg, hd, c = medusa.tree_forward(P32, base, H32, config, c, tree_tokens, buffers)
        c = medusa.keep_path(c, T0, nodes)
        return lg, hd, np.stack(c["k"]), np.stack(c["v"])

    naive = _naive(side, impl, reference32,
                   lambda *_: impl.tree(base, config, prompt, tree_tokens, buffers, nodes, naive=True))  # fmt: skip
    for i, what in enumerate(("tree logits", "tree head logits", "cached keys after acceptance",
                              "cached values after acceptance")):  # fmt: skip
        truth = (logits, head_logits, truth_k, truth_v)[i]
        check(what, truth, got[i], side, naive=None if naive is None else naive[i])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode,epsilon", [("greedy", 0.09), ("typical", 0.09), ("typical", 0.3)])
def test_verify(side, name, mode, epsilon):
    """The same tree logits (the reference's, float64, on the side's device) -> the same path
    and accept length; half the nodes are set to their parent's argmax so paths get accepted."""
    base, config, params, heads, buffers, _, cache, _, _, tree_tokens, _ = _tree_case(name)
    logits, _, _ = medusa.tree_forward(params, base, heads, config, cache, tree_tokens, buffers)
    rng = np.random.default_rng(7)
    tokens = tree_tokens.copy()
    pick = rng.random(len(tokens)) < 0.6
    pick[0] = False
    tokens[pick] = np.argmax(logits, -1)[buffers["parent"][pick]]
    want = medusa.verify(logits, tokens, buffers, mode, epsilon)
    assert want[1] >= 1, "nothing accepted: the comparison would prove little"
    if side.is_cupy:
        got = medusa.verify(side.cp.asarray(logits), side.cp.asarray(tokens), buffers, mode, epsilon)
    else:
        got = fast_medusa.verify(torch.as_tensor(logits, device=side.backend.device), tokens, buffers, mode, epsilon)
    assert tuple(int(g) for g in got) == want


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", CASES)
def test_greedy_tokens(side, name):
    """float64: Medusa's tokens and accept lengths equal the reference's, and both equal greedy
    decoding; low precision: every token judged against the reference's greedy choice given the
    side's own prefix, wherever the reference is clear of a tie."""
    base, config, params, heads, choices, prompt, _ = case(name)
    want, want_a = medusa.generate(params, base, heads, config, prompt, NEW, choices)
    np.testing.assert_array_equal(want, ref_gpt.greedy(params, base, prompt, NEW))
    impl = Impl(side, params, heads)
    got, got_a = impl.m.generate(impl.P, base, impl.H, config, side.array(prompt), NEW, choices)
    got = side.numpy(got)
    if not side.low_precision:
        np.testing.assert_array_equal(got, want)
        for a, b in zip(want_a, got_a):
            np.testing.assert_array_equal(a, b)
    fast = (lambda x: side.cached_logits(impl.P, base, x, [T0])) if side.low_precision else None
    result = assert_tokens(f"[{side.name}] Medusa greedy tokens", prompt, got,
                           lambda x: ref_gpt.forward(params, base, x), side.dtype, fast=fast,
                           max_new_tokens=NEW)  # fmt: skip
    print(result, "accept lengths", [a.tolist() for a in got_a])


@pytest.mark.parametrize("name", CASES)
def test_typical_tokens(side, name):
    if side.low_precision:
        pytest.skip("typical acceptance compares a probability with a threshold: agreement token for token "
                    "is a float64 property (low precision is covered by the greedy tokens)")
    base, config, params, heads, choices, prompt, _ = case(name)
    want, want_a = medusa.generate(params, base, heads, config, prompt, NEW, choices, mode="typical",
                                   epsilon=0.2, temperature=0.8)  # fmt: skip
    impl = Impl(side, params, heads)
    got, got_a = impl.m.generate(impl.P, base, impl.H, config, side.array(prompt), NEW, choices, mode="typical",
                                 epsilon=0.2, temperature=0.8)  # fmt: skip
    np.testing.assert_array_equal(side.numpy(got), want)
    for a, b in zip(want_a, got_a):
        np.testing.assert_array_equal(a, b)
    assert sum(int(a.sum()) for a in want_a) > 0, "no node accepted: the typical path was not exercised"


# ----------------------------------------------------------------------------- the CPU inference kernels


@pytest.fixture
def cpu_kernels(side, monkeypatch):
    """fast.gpt's special CPU kernels (matvec for one row, oneDNN matmul for several) switched on
    for these tiny models, as test_gpt.py does."""
    if side.is_cupy or side.backend.device != "cpu":
        pytest.skip("the special inference kernels are CPU-only")
    monkeypatch.setattr(fast_gpt, "_CPU_KERNELS_MIN_WEIGHTS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the matvec split needs more than one thread
    yield
    torch.set_num_threads(threads)


def test_cpu_inference_kernels(side, cpu_kernels):
    """Tree forward, cache after acceptance and greedy tokens through the kernels of every mode
    (n_embd 6: the matvec split over 2 threads applies to one-row steps)."""
    base = ref_gpt.Config(vocab_size=59, block_size=64, n_layer=2, n_head=3, n_embd=6, bos_token=1)
    config = medusa.Config.for_base(base, n_heads=3, n_layers=1)
    rng = np.random.default_rng(11)
    params, heads = ref_gpt.random_params(base, rng), medusa.random_params(config, rng)
    prompt = rng.integers(0, 59, (1, T0))
    choices = medusa.prune(medusa.MC_SIM_7B_63, 3)
    impl = Impl(side, params, heads)
    assert fast_gpt.kernel_mode(impl.P, 1, False) == ("matvec" if side.dtype != "bfloat16" else "matmul")
    buffers = medusa.tree_buffers(choices)
    h, cache = medusa.hidden(params, base, prompt, medusa.init_cache(params, base))
    tree_tokens = medusa.candidates(medusa.base_logits(params, h[0, -1]), medusa.head_logits(heads, config, h[0, -1]),
                                    buffers)  # fmt: skip
    logits, head_logits, tree_cache = medusa.tree_forward(params, base, heads, config, cache, tree_tokens, buffers)
    nodes = buffers["paths"][0, : buffers["path_length"][0]]
    kept = medusa.keep_path(tree_cache, T0, nodes)
    got = impl.tree(base, config, prompt, tree_tokens, buffers, nodes)
    naive = impl.tree(base, config, prompt, tree_tokens, buffers, nodes, naive=True) if side.low_precision else None
    truth = (logits, head_logits, np.stack(kept["k"]), np.stack(kept["v"]))
    for i, what in enumerate(("tree logits", "tree head logits", "cached keys", "cached values")):
        check(f"{what} (CPU kernels)", truth[i], got[i], side, naive=None if naive is None else naive[i])
    out, _ = fast_medusa.generate(impl.P, base, impl.H, config, side.array(prompt), NEW, choices)
    fast = (lambda x: side.cached_logits(impl.P, base, x, [T0])) if side.low_precision else None
    print(assert_tokens(f"[{side.name}] Medusa greedy tokens (CPU kernels)", prompt, side.numpy(out),
                        lambda x: ref_gpt.forward(params, base, x), side.dtype, fast=fast,
                        max_new_tokens=NEW))  # fmt: skip


# ----------------------------------------------------------------------------- end of sequence


def _cut(tokens, eos, pad):
    """Rows cut after their first new eos, padded to the longest (the end-of-sequence rule)."""
    rows = []
    for row in tokens:
        ends = [t for t in range(T0, row.shape[0]) if int(row[t]) in eos]
        rows.append(row[: ends[0] + 1] if ends else row)
    out = np.full((len(rows), max(len(r) for r in rows)), pad, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mode", ["greedy", "typical"])
def test_eos_tokens(side, name, mode):
    """eos = a token of each row's reference output (rows end early, at different steps). float64:
    the reference's tokens and accept lengths; every backend: its own output without eos cut at
    the first eos and padded (the same tree forwards, fewer of them), accept lengths a prefix."""
    if mode == "typical" and side.low_precision:
        pytest.skip("typical acceptance is compared token for token in float64 only (see test_typical_tokens)")
    base, config, params, heads, choices, prompt, _ = case(name)
    kw = dict(mode="typical", epsilon=0.2, temperature=0.8) if mode == "typical" else {}
    full, _ = medusa.generate(params, base, heads, config, prompt, NEW, choices, **kw)
    eos, pad = [int(full[0, T0 + 5]), int(full[1, T0 + 11])], 2
    want, want_a = medusa.generate(params, base, heads, config, prompt, NEW, choices, eos_token_id=eos,
                                   pad_token_id=pad, **kw)  # fmt: skip
    np.testing.assert_array_equal(want, _cut(full, eos, pad))
    assert want.shape[1] < T0 + NEW or (want[:, -1] == pad).any(), "no row ended early: the case proves little"
    impl = Impl(side, params, heads)
    got_full, got_full_a = impl.m.generate(impl.P, base, impl.H, config, side.array(prompt), NEW, choices, **kw)
    got, got_a = impl.m.generate(impl.P, base, impl.H, config, side.array(prompt), NEW, choices, eos_token_id=eos,
                                 pad_token_id=pad, **kw)  # fmt: skip
    np.testing.assert_array_equal(side.numpy(got), _cut(side.numpy(got_full), eos, pad))
    for a, full_a in zip(got_a, got_full_a):
        np.testing.assert_array_equal(a, full_a[: len(a)])
    if not side.low_precision:
        np.testing.assert_array_equal(side.numpy(got), want)
        for a, b in zip(want_a, got_a):
            np.testing.assert_array_equal(a, b)
