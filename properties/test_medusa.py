"""Properties of Medusa decoding (reference.medusa, fast.medusa) that hold exactly.

- greedy Medusa = greedy decoding, token for token (reference against reference.gpt.greedy,
  fast float64 against fast.gpt.greedy), for random tiny GPTs, random heads, random trees
  and random prompts; every accepted token is accounted for (1 + len(a) base forwards);
- typical acceptance never accepts a token the rule rejects: every emitted token is the
  base's argmax (a root) or passes p(x) > min(epsilon, delta exp(-H(p))) given exactly the
  tokens before it; and `verify` returns the longest passing prefix over all paths;
- tree buffers: the mask is the ancestor-or-self relation, positions are depths, the paths
  are the root-to-leaf chains (each leaf once, parent before child, padding after the length);
- the tree forward gives every node the logits of plain decoding of its path, and the cache
  after acceptance equals the prefill of the accepted tokens;
- fresh Medusa-1 heads (`init` with the base) are exactly the base's LM head;
- purity: generate mutates nothing and is deterministic;
- end of sequence: with eos ids, Medusa (greedy and typical, reference and fast float64) gives
  its output without eos cut after each row's first new eos, padded to the longest row (greedy:
  greedy decoding cut at eos), and the accept lengths are a prefix of those without eos.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from chainrule.fast import backend as fb
from chainrule.fast import gpt as fast_gpt
from chainrule.fast import medusa as fast_medusa
from properties.conftest import seeds
from chainrule.reference import gpt as ref_gpt
from chainrule.reference import medusa
from chainrule.reference.checks import assert_close, assert_pure


def random_tree(rng: np.random.Generator, n_heads: int, vocab_size: int, max_nodes: int = 9):
    """A random prefix-closed list of choices: depth <= n_heads, ranks < min(V, 4)."""
    ranks = min(vocab_size, 4)
    nodes = [()]
    children: dict = {(): set()}
    for _ in range(int(rng.integers(1, max_nodes + 1))):
        parent = nodes[int(rng.integers(0, len(nodes)))]
        free = [r for r in range(ranks) if r not in children[parent]]
        if len(parent) >= n_heads or not free:
            continue
        child = parent + (int(rng.choice(free)),)
        children[parent].add(child[-1])
        children[child] = set()
        nodes.append(child)
    if len(nodes) == 1:
        nodes.append((0,))
    order = rng.permutation(len(nodes) - 1)
    return [nodes[1:][i] for i in order]  # any order: tree_buffers sorts


@st.composite
def medusa_models(draw):
    """(base config, base params, head config, heads, choices) with random weights and tree."""
    n_head, head_dim = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    V = draw(st.integers(2, 7))
    base = ref_gpt.Config(vocab_size=V, block_size=draw(st.integers(6, 12)), n_layer=draw(st.integers(1, 2)),
                          n_head=n_head, n_embd=n_head * head_dim, bos_token=0)  # fmt: skip
    config = medusa.Config.for_base(base, n_heads=draw(st.integers(1, 3)), n_layers=draw(st.integers(0, 2)))
    rng = np.random.default_rng(draw(seeds))
    params = ref_gpt.random_params(base, rng)
    heads = medusa.random_params(config, rng)
    return base, params, config, heads, random_tree(rng, config.n_heads, V)


@st.composite
def prompts_and_lengths(draw, base):
    T0 = draw(st.integers(1, 3))
    N = draw(st.integers(1, base.block_size + 1 - T0))
    B = draw(st.integers(1, 2))
    return np.random.default_rng(draw(seeds)).integers(0, base.vocab_size, (B, T0)), N


def _accounting(accepted, N):
    for a in accepted:
        total = int(np.sum(a + 1))
        assert total in (N, N - 1), f"accept lengths {a} account for {total} tokens, expected {N} (or {N - 1})"
        assert np.all(a >= 0)


# ----------------------------------------------------------------------------- greedy = greedy decoding


@given(medusa_models(), st.data())
def test_greedy_medusa_equals_greedy_decoding(model, data):
    base, params, config, heads, choices = model
    prompt, N = data.draw(prompts_and_lengths(base))
    out, accepted = medusa.generate(params, base, heads, config, prompt, N, choices)
    want = ref_gpt.greedy(params, base, prompt, N)
    np.testing.assert_array_equal(out, want)
    _accounting(accepted, N)
    P, Hd = fb.to_torch(params, "cpu", torch.float64), fb.to_torch(heads, "cpu", torch.float64)
    fast_out, fast_accepted = fast_medusa.generate(P, base, Hd, config, torch.as_tensor(prompt), N, choices)
    np.testing.assert_array_equal(fast_out.numpy(), fast_gpt.greedy(P, base, torch.as_tensor(prompt), N).numpy())
    np.testing.assert_array_equal(fast_out.numpy(), want)
    for a, b in zip(accepted, fast_accepted):
        np.testing.assert_array_equal(a, b)


def test_greedy_medusa_accepts_several_tokens_per_forward():
    """A tree holding every token at every depth (V = 3) must accept the whole path each step:
    the multi-token path of the loop is exercised, and the output is still greedy decoding."""
    rng = np.random.default_rng(5)
    base = ref_gpt.Config(vocab_size=3, block_size=31, n_layer=2, n_head=2, n_embd=6)
    params = ref_gpt.random_params(base, rng)
    config = medusa.Config.for_base(base, n_heads=3, n_layers=1)
    heads = medusa.random_params(config, rng)
    choices = [(i,) for i in range(3)] + [(i, j) for i in range(3) for j in range(3)]
    prompt = rng.integers(0, 3, (1, 4))
    out, (a,) = medusa.generate(params, base, heads, config, prompt, 25, choices)
    np.testing.assert_array_equal(out, ref_gpt.greedy(params, base, prompt, 25))
    assert a.tolist() == [2] * 8, a  # 8 trees x 3 tokens, then one root: 25 tokens in 9 base forwards


# ----------------------------------------------------------------------------- typical acceptance


@given(medusa_models(), st.data(), st.floats(0.01, 0.6), st.sampled_from([None, 0.05, 0.5]),
       st.sampled_from([1.0, 0.7, 1.5]))  # fmt: skip
def test_typical_acceptance_only_accepts_what_the_rule_accepts(model, data, epsilon, delta, temperature):
    base, params, config, heads, choices = model
    prompt, N = data.draw(prompts_and_lengths(base))
    out, accepted = medusa.generate(params, base, heads, config, prompt, N, choices, mode="typical",
                                    epsilon=epsilon, delta=delta, temperature=temperature)  # fmt: skip
    _accounting(accepted, N)
    T0 = prompt.shape[1]
    logits = ref_gpt.forward(params, base, out[:, :-1])[:, T0 - 1 :]  # (B, N, V): the step distributions
    for b, a in enumerate(accepted):
        starts = np.cumsum(np.concatenate([[0], a + 1]))  # where each step's root lands; the last: a final root
        is_root = np.zeros(N, dtype=bool)
        is_root[starts[starts < N]] = True
        new = out[b, T0:]
        roots = np.flatnonzero(is_root)
        np.testing.assert_array_equal(new[roots], np.argmax(logits[b, roots], axis=-1))
        rest = np.flatnonzero(~is_root)
        ok = medusa.typical_accepts(logits[b, rest], new[rest], epsilon, delta, temperature)
        assert ok.all(), f"row {b}: tokens at steps {rest[~ok]} were accepted though the rule rejects them"


@given(st.integers(2, 7), seeds, st.floats(0.01, 0.9), st.sampled_from(["greedy", "typical"]))
def test_verify_returns_the_longest_accepted_prefix(V, seed, epsilon, mode):
    """Against brute force: a node is reachable if every node on its path from the root passes;
    the accept length is the deepest reachable node, and the returned path reaches that deep."""
    rng = np.random.default_rng(seed)
    buffers = medusa.tree_buffers(random_tree(rng, 3, V, max_nodes=12))
    N = len(buffers["depth"])
    logits = rng.normal(0, 2, (N, V))
    tokens = rng.integers(0, V, N)
    tokens[1:] = np.where(rng.random(N - 1) < 0.5, np.argmax(logits, -1)[buffers["parent"][1:]], tokens[1:])
    if mode == "greedy":
        passes = tokens == np.argmax(logits, -1)[np.maximum(buffers["parent"], 0)]
    else:
        passes = medusa.typical_accepts(logits[np.maximum(buffers["parent"], 0)], tokens, epsilon)
    reach = np.zeros(N, dtype=bool)
    reach[0] = True
    for i in range(1, N):  # parents come first
        reach[i] = reach[buffers["parent"][i]] and passes[i]
    want = int(buffers["depth"][reach].max())
    row, a = medusa.verify(logits, tokens, buffers, mode, epsilon)
    assert a == want
    path = buffers["paths"][row, : a + 1]
    assert reach[path].all() and len(path) == a + 1
    assert (row, a) == fast_medusa.verify(torch.as_tensor(logits), tokens, buffers, mode, epsilon)


def test_typical_threshold_exact_entropy():
    """Uniform over V: H = log V exactly, threshold = min(eps, delta / V); a -inf entry has
    p = 0 and contributes 0 log 0 = 0 (no NaN)."""
    for V in (1, 3, 7):
        got = medusa.typical_threshold(np.zeros(V), 0.09, 0.3)
        assert math.isclose(got, min(0.09, 0.3 / V), rel_tol=1e-15)
    got = medusa.typical_threshold(np.array([0.0, 0.0, -np.inf]), 0.5, 0.3)
    assert math.isclose(got, 0.3 / 2, rel_tol=1e-15)
    assert medusa.typical_threshold(np.zeros(4), 0.09) == min(0.09, math.sqrt(0.09) / 4)  # delta = sqrt(eps)
    with pytest.raises(ValueError, match="epsilon"):
        medusa.typical_threshold(np.zeros(3), 0.0)


# ----------------------------------------------------------------------------- tree buffers


@given(seeds, st.integers(1, 4), st.integers(2, 9))
def test_tree_buffers(seed, n_heads, V):
    rng = np.random.default_rng(seed)
    choices = random_tree(rng, n_heads, V, max_nodes=15)
    b = medusa.tree_buffers(choices)
    names = [()] + list(b["choices"])
    N = len(names)
    assert sorted(b["choices"]) == sorted(tuple(c) for c in choices)
    for i, ci in enumerate(names):
        assert b["depth"][i] == len(ci)
        for j, cj in enumerate(names):
            assert b["mask"][i, j] == (ci[: len(cj)] == cj), (ci, cj)  # j is an ancestor of i or i itself
        if i:
            assert names[b["parent"][i]] == ci[:-1] and b["parent"][i] < i
            assert b["head"][i] == len(ci) - 1 and b["rank"][i] == ci[-1]
    leaves = {i for i in range(1, N) if not any(names[j][:-1] == names[i] for j in range(1, N))}
    assert {int(p[L - 1]) for p, L in zip(b["paths"], b["path_length"])} == leaves
    assert len(b["paths"]) == len(leaves)
    on_a_path = set()
    for p, L in zip(b["paths"], b["path_length"]):
        assert p[0] == 0 and np.all(p[L:] == -1)
        for d in range(1, L):
            assert b["parent"][p[d]] == p[d - 1] and b["depth"][p[d]] == d
        on_a_path |= set(p[:L].tolist())
    assert on_a_path == set(range(N))
    mask = fast_medusa.tree_attention_mask(3, b)
    assert mask.shape == (N, 3 + N) and bool(mask[:, :3].all())
    np.testing.assert_array_equal(mask[:, 3:].numpy(), b["mask"])


def test_bad_choices():
    config = medusa.Config(n_embd=4, vocab_size=5, n_heads=2)
    for bad, match in [([], "at least one"), ([(0,), (0,)], "duplicates"), ([(1, 0)], "prefix"),
                       ([(0,), (0, 0), (0, 0, 0)], "depth"), ([(5,)], "vocab_size"), ([(-1,)], "ints >= 0"),
                       ([()], "non-empty")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            medusa.check_choices(bad, config)


# ----------------------------------------------------------------------------- tree forward and cache


@given(medusa_models(), seeds)
def test_tree_forward_is_plain_decoding_of_each_path(model, seed):
    base, params, config, heads, choices = model
    rng = np.random.default_rng(seed)
    depth = max(len(c) for c in choices)
    T0 = int(rng.integers(1, base.block_size - depth))  # the deepest node at T0 + depth < block_size
    prompt = rng.integers(0, base.vocab_size, (1, T0))
    b = medusa.tree_buffers(choices)
    h, cache = medusa.hidden(params, base, prompt, ref_gpt.init_cache(params, base, 1))
    tokens = medusa.candidates(medusa.base_logits(params, h[0, -1]), medusa.head_logits(heads, config, h[0, -1]), b)
    logits, heads_logits, tree_cache = medusa.tree_forward(params, base, heads, config, cache, tokens, b)
    for i in range(len(tokens)):
        path = [i]
        while path[-1] != 0:
            path.append(int(b["parent"][path[-1]]))
        seq = np.concatenate([prompt[0], tokens[path[::-1]]])[None, :]  # prompt then the path's tokens
        want, want_heads = medusa.forward(params, base, heads, config, seq)
        assert_close(f"node {i} logits", want[0, -1], logits[i], "float64")
        assert_close(f"node {i} head logits", want_heads[:, 0, -1], heads_logits[:, i], "float64")
    row = int(rng.integers(0, len(b["paths"])))
    nodes = b["paths"][row, : int(rng.integers(1, b["path_length"][row] + 1))]
    kept = medusa.keep_path(tree_cache, T0, nodes)
    _, want_cache = medusa.hidden(params, base, np.concatenate([prompt[0], tokens[nodes]])[None, :],
                                  ref_gpt.init_cache(params, base, 1))  # fmt: skip
    assert kept["length"] == want_cache["length"] == T0 + len(nodes)
    for layer in range(base.n_layer):
        assert_close(f"cached keys, layer {layer}", want_cache["k"][layer], kept["k"][layer], "float64")
        assert_close(f"cached values, layer {layer}", want_cache["v"][layer], kept["v"][layer], "float64")


def test_fresh_heads_are_the_base_head():
    rng = np.random.default_rng(0)
    base = ref_gpt.Config(vocab_size=7, block_size=9, n_layer=1, n_head=1, n_embd=5)
    params = ref_gpt.random_params(base, rng)
    config = medusa.Config.for_base(base, n_heads=3, n_layers=2)
    heads = medusa.init(config, rng, params)
    tokens = rng.integers(0, 7, (2, 9))
    logits, head_logits = medusa.forward(params, base, heads, config, tokens)
    for k in range(3):
        np.testing.assert_array_equal(head_logits[k], logits)


def test_generate_is_pure():
    rng = np.random.default_rng(1)
    base = ref_gpt.Config(vocab_size=5, block_size=13, n_layer=1, n_head=1, n_embd=3)
    params = ref_gpt.random_params(base, rng)
    config = medusa.Config.for_base(base, n_heads=2)
    heads = medusa.random_params(config, rng)
    prompt = rng.integers(0, 5, (2, 3))
    choices = [(0,), (1,), (0, 0), (1, 2)]
    assert_pure(medusa.generate, params, base, heads, config, prompt, 9, choices, mode="typical")
    assert_pure(fast_medusa.generate, fb.to_torch(params), base, fb.to_torch(heads), config,
                torch.as_tensor(prompt), 9, choices)  # fmt: skip


# ----------------------------------------------------------------------------- end of sequence


def cut_at_eos(tokens, T0: int, eos, pad: int):
    """Each row of tokens (B, T0 + N) cut after its first new token in eos, the rows padded with
    pad to the longest -> (B, T0 + n)."""
    rows = []
    for row in np.asarray(tokens):
        ends = [t for t in range(T0, row.shape[0]) if int(row[t]) in eos]
        rows.append(row[: ends[0] + 1] if ends else row)
    out = np.full((len(rows), max(len(r) for r in rows)), pad, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : len(r)] = r
    return out


@given(medusa_models(), st.data(), st.sampled_from(["greedy", "typical"]))
def test_medusa_with_eos_is_medusa_cut_at_eos(model, data, mode):
    base, params, config, heads, choices = model
    prompt, N = data.draw(prompts_and_lengths(base))
    V = base.vocab_size
    eos = data.draw(st.lists(st.integers(0, V - 1), min_size=1, max_size=2, unique=True))
    pad = data.draw(st.one_of(st.none(), st.integers(0, V - 1)))
    kw = dict(mode=mode, epsilon=0.2) if mode == "typical" else {}
    full, full_accepted = medusa.generate(params, base, heads, config, prompt, N, choices, **kw)
    if mode == "greedy":
        np.testing.assert_array_equal(full, ref_gpt.greedy(params, base, prompt, N))
    want = cut_at_eos(full, prompt.shape[1], eos, eos[0] if pad is None else pad)
    out, accepted = medusa.generate(params, base, heads, config, prompt, N, choices, eos_token_id=eos,
                                    pad_token_id=pad, **kw)  # fmt: skip
    np.testing.assert_array_equal(out, want)
    for a, full_a in zip(accepted, full_accepted):
        np.testing.assert_array_equal(a, full_a[: len(a)])  # the same tree forwards, the row's first ones
    P, Hd = fb.to_torch(params, "cpu", torch.float64), fb.to_torch(heads, "cpu", torch.float64)
    fast_out, fast_accepted = fast_medusa.generate(P, base, Hd, config, torch.as_tensor(prompt), N, choices,
                                                   eos_token_id=eos, pad_token_id=pad, **kw)  # fmt: skip
    np.testing.assert_array_equal(fast_out.numpy(), want)
    for a, b in zip(accepted, fast_accepted):
        np.testing.assert_array_equal(a, b)
