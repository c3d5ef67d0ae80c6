"""reference.paged: the paged KV cache (vLLM's PagedAttention) and the decoder driven through it.

- paged cache = contiguous cache = recompute: the logits of every prefill chunk and step are
  those of reference.gpt's contiguous cache with the same chunks bit for bit, and those of
  gpt.forward on the whole sequence under the float64 tolerance; the gathered keys and values
  are the contiguous cache's bit for bit; block sizes 1, 3 and larger than every sequence;
- prefix sharing: both forks equal recomputation, copy on write never changes the other
  sequence, shared full blocks stay shared; free returns the blocks;
- paged_attention = contiguous attention, multi-head and grouped-query;
- purity, and bad input -> ValueError naming the argument.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from chainrule.reference import gpt, nn, paged
from chainrule.reference.checks import assert_close

CONFIG = gpt.Config(vocab_size=13, block_size=24, n_layer=2, n_head=2, n_embd=8)
PARAMS = gpt.random_params(CONFIG, np.random.default_rng(0))
MODEL = paged.gpt_model(PARAMS, CONFIG)


def _tokens(seed, T):
    return np.random.default_rng(seed).integers(0, CONFIG.vocab_size, T)


def _run_paged(cache, seq, tokens, chunks):
    """Prefill `chunks`, then steps: -> (logits (T, V), cache)."""
    out, pos = [], 0
    for c in chunks:
        logits, cache = paged.prefill(MODEL, cache, seq, tokens[pos : pos + c])
        out.append(logits)
        pos += c
    for t in range(pos, len(tokens)):
        logits, cache = paged.step(MODEL, cache, seq, tokens[t])
        out.append(logits[None])
    return np.concatenate(out), cache


def _run_contiguous(tokens, chunks):
    """reference.gpt's contiguous cache, batch 1, the same chunks: -> (logits (T, V), cache)."""
    cache, out, pos = gpt.init_cache(PARAMS, CONFIG, 1), [], 0
    for c in chunks:
        logits, cache = gpt.prefill(PARAMS, CONFIG, cache, tokens[None, pos : pos + c])
        out.append(logits[0])
        pos += c
    for t in range(pos, len(tokens)):
        logits, cache = gpt.step(PARAMS, CONFIG, cache, tokens[None, t])
        out.append(logits)
    return np.concatenate(out), cache


# ----------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_paged_equals_contiguous_equals_recompute(block_size):
    """Several sequences of different lengths, interleaved in one pool."""
    specs = {"a": (_tokens(1, 11), [4]), "b": (_tokens(2, 5), [5]), "c": (_tokens(3, 17), [2, 6]),
             "d": (_tokens(4, 1), [])}
    cache = paged.init_model_pool(MODEL, 64, block_size)
    for seq in specs:
        cache = paged.add_sequence(cache, seq)
    got = {}
    for seq, (tokens, chunks) in specs.items():
        got[seq], cache = _run_paged(cache, seq, tokens, chunks)
        paged.check_cache(cache)
    for seq, (tokens, chunks) in specs.items():
        contiguous, ccache = _run_contiguous(tokens, chunks)
        # bit for bit: the same numbers in another memory layout, which this config does not round differently
        # (properties/test_paged.py: head_dim = 1 can, by an ulp, so there the rule is the tolerance)
        np.testing.assert_array_equal(got[seq], contiguous)
        assert_close(f"paged logits of {seq}", gpt.forward(PARAMS, CONFIG, tokens[None])[0], got[seq], "float64")
        assert cache.lengths[seq] == len(tokens)
        assert len(cache.tables[seq]) == -(-len(tokens) // block_size)
        for layer in range(CONFIG.n_layer):
            k, v = paged.gather(cache, seq, layer)
            np.testing.assert_array_equal(k, ccache["k"][layer][0])
            np.testing.assert_array_equal(v, ccache["v"][layer][0])


def test_prefill_matches_forward_bit_for_bit():
    """One prefill of the whole sequence is gpt.forward on it, exactly (batch 1 either way)."""
    tokens = _tokens(5, 9)
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 8, 4), 0)
    logits, _ = paged.prefill(MODEL, cache, 0, tokens)
    np.testing.assert_array_equal(logits, gpt.forward(PARAMS, CONFIG, tokens[None])[0])


def test_a_wrong_cache_is_caught():
    """The comparison can fail: reading the keys of another sequence changes the logits."""
    cache = paged.init_model_pool(MODEL, 16, 3)
    cache = paged.add_sequence(paged.add_sequence(cache, "a"), "b")
    _, cache = paged.prefill(MODEL, cache, "a", _tokens(1, 6))
    _, cache = paged.prefill(MODEL, cache, "b", _tokens(2, 6))
    swapped = replace(cache, tables={"a": cache.tables["b"], "b": cache.tables["a"]})
    right, _ = paged.step(MODEL, cache, "a", 3)
    wrong, _ = paged.step(MODEL, swapped, "a", 3)
    assert np.abs(right - wrong).max() > 1e-3


# ----------------------------------------------------------------------------- prefix sharing


@pytest.mark.parametrize("block_size,prefix", [(1, 5), (3, 5), (3, 6), (4, 8), (64, 5)])
def test_forks_equal_recomputation_and_never_change_each_other(block_size, prefix):
    """A prompt prefix computed once, forked into two continuations (and a third forked later)."""
    prompt = _tokens(7, prefix)
    tails = {"x": _tokens(8, 7), "y": _tokens(9, 4), "z": _tokens(10, 3)}
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 40, block_size), "x")
    first, cache = paged.prefill(MODEL, cache, "x", prompt)
    cache = paged.fork(cache, "x", "y")
    assert cache.tables["x"] == cache.tables["y"] and cache.lengths["y"] == prefix
    paged.check_cache(cache)
    logits = {"x": [first], "y": [first]}
    for t in range(7):
        for seq in ("x", "y"):
            if t < len(tails[seq]):
                before = {s: [paged.gather(cache, s, i) for i in range(CONFIG.n_layer)]
                          for s in cache.tables if s != seq}
                out, cache = paged.step(MODEL, cache, seq, tails[seq][t])
                logits[seq].append(out[None])
                paged.check_cache(cache)
                for other, kv in before.items():  # copy on write: the other sequences are untouched
                    for i in range(CONFIG.n_layer):
                        np.testing.assert_array_equal(paged.gather(cache, other, i)[0], kv[i][0])
                        np.testing.assert_array_equal(paged.gather(cache, other, i)[1], kv[i][1])
        if t == 1:  # a late fork of x, sharing its prompt and first two tokens
            cache = paged.fork(cache, "x", "z")
            logits["z"] = [np.concatenate(logits["x"])]
            zs = np.concatenate([prompt, tails["x"][:2]])
    for t in range(3):
        out, cache = paged.step(MODEL, cache, "z", tails["z"][t])
        logits["z"].append(out[None])
    for seq, full in (("x", np.concatenate([prompt, tails["x"]])), ("y", np.concatenate([prompt, tails["y"]])),
                      ("z", np.concatenate([zs, tails["z"]]))):  # fmt: skip
        assert_close(f"fork {seq}", gpt.forward(PARAMS, CONFIG, full[None])[0], np.concatenate(logits[seq]), "float64")
    full_shared = prefix // block_size  # the prompt's full blocks stay shared by x and y
    assert cache.tables["x"][:full_shared] == cache.tables["y"][:full_shared]
    for block in cache.tables["x"][:full_shared]:
        assert cache.ref_counts[block] == 3  # x, y and z
    if prefix % block_size:  # the shared partial block was copied on the first write
        assert cache.tables["x"][full_shared] != cache.tables["y"][full_shared]


def test_copy_on_write_copies_only_a_shared_partial_block():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 8, 4), "p")
    _, cache = paged.prefill(MODEL, cache, "p", _tokens(1, 6))  # blocks 0 (full), 1 (2 of 4)
    assert cache.tables["p"] == (0, 1) and cache.free == tuple(range(2, 8))
    forked = paged.fork(cache, "p", "q")
    assert forked.ref_counts[:2] == (2, 2)
    _, after = paged.step(MODEL, forked, "q", 2)
    assert after.tables["q"] == (0, 2) and after.tables["p"] == (0, 1)  # block 1 copied to 2 for q
    assert after.ref_counts[:3] == (2, 1, 1)
    for layer in range(CONFIG.n_layer):  # the copy holds p's two positions, then q's new one
        np.testing.assert_array_equal(after.k[layer][2][:, :2], after.k[layer][1][:, :2])
    _, again = paged.step(MODEL, after, "q", 4)  # q's block is its own now: no second copy
    assert again.tables["q"] == (0, 2) and again.free == after.free
    # a sequence alone writes in place, whatever it shares a full block with
    _, alone = paged.step(MODEL, cache, "p", 2)
    assert alone.tables["p"] == (0, 1)


def test_free_returns_blocks():
    cache = paged.init_model_pool(MODEL, 10, 2)
    for seq, T in (("a", 5), ("b", 3)):
        cache = paged.add_sequence(cache, seq)
        _, cache = paged.prefill(MODEL, cache, seq, _tokens(T, T))
    cache = paged.fork(cache, "a", "c")
    _, cache = paged.step(MODEL, cache, "c", 1)  # copies a's partial block
    used = set(range(10)) - set(cache.free)
    assert len(used) == 3 + 2 + 1
    cache = paged.free(cache, "a")  # c still holds a's two full blocks
    paged.check_cache(cache)
    assert set(cache.tables["c"][:2]) <= set(range(10)) - set(cache.free)
    assert len(set(range(10)) - set(cache.free)) == 2 + 2 + 1  # a's partial block came back
    cache = paged.free(paged.free(cache, "b"), "c")
    paged.check_cache(cache)
    assert sorted(cache.free) == list(range(10)) and set(cache.ref_counts) == {0} and cache.tables == {}
    # the freed blocks are reused: a long sequence fits again
    cache = paged.add_sequence(cache, "long")
    _, cache = paged.prefill(MODEL, cache, "long", _tokens(11, 20))
    assert cache.free == ()


def test_purity():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 6, 3), "a")
    _, cache = paged.prefill(MODEL, cache, "a", _tokens(1, 4))
    snapshot = ([k.copy() for k in cache.k], [v.copy() for v in cache.v], dict(cache.tables), dict(cache.lengths),
                cache.ref_counts, cache.free)  # fmt: skip
    forked = paged.fork(cache, "a", "b")
    _, forked = paged.step(MODEL, forked, "b", 1)
    _, forked = paged.step(MODEL, forked, "a", 2)
    paged.free(forked, "a")
    for layer in range(CONFIG.n_layer):
        np.testing.assert_array_equal(cache.k[layer], snapshot[0][layer])
        np.testing.assert_array_equal(cache.v[layer], snapshot[1][layer])
    assert (cache.tables, cache.lengths, cache.ref_counts, cache.free) == snapshot[2:]


# ----------------------------------------------------------------------------- paged attention


@pytest.mark.parametrize("n_head,n_kv_head", [(2, 2), (4, 2), (3, 1)])
@pytest.mark.parametrize("block_size,length,Tq", [(1, 5, 5), (3, 7, 1), (3, 7, 4), (16, 9, 3)])
def test_paged_attention_equals_contiguous_attention(n_head, n_kv_head, block_size, length, Tq):
    rng = np.random.default_rng(length * 100 + block_size)
    d, num_blocks = 5, 12
    pool_k, pool_v = rng.normal(size=(2, num_blocks, n_kv_head, block_size, d))
    table = rng.permutation(num_blocks)[: -(-length // block_size)]  # scattered blocks, in any order
    q = rng.normal(size=(n_head, Tq, d))
    k = np.concatenate([pool_k[b] for b in table], axis=1)[:, :length]  # (n_kv_head, length, d)
    v = np.concatenate([pool_v[b] for b in table], axis=1)[:, :length]
    group = n_head // n_kv_head
    want = nn.attention(q, np.repeat(k, group, axis=0), np.repeat(v, group, axis=0), nn.causal_mask(Tq, length))
    np.testing.assert_array_equal(paged.paged_attention(q, pool_k, pool_v, table, length), want)
    # and against softmax(q k^T / sqrt(d) + causal) v written out, head by head
    for h in range(n_head):
        g = h // group
        scores = q[h] @ k[g].T / np.sqrt(d)
        scores[np.arange(length)[None, :] > np.arange(length - Tq, length)[:, None]] = -np.inf
        p = np.exp(scores - scores.max(-1, keepdims=True))
        assert_close("attention", p / p.sum(-1, keepdims=True) @ v[g], want[h], "float64")


def test_paged_attention_in_a_gpt_block():
    """The attention of gpt.block's step, recomputed from the pool: same bits."""
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 8, 3), "s")
    tokens = _tokens(3, 7)
    _, cache = paged.prefill(MODEL, cache, "s", tokens)
    k, _ = paged.gather(cache, "s", 0)
    q = np.random.default_rng(0).normal(size=(CONFIG.n_head, 2, CONFIG.head_dim))
    want = nn.attention(q, k, paged.gather(cache, "s", 0)[1], nn.causal_mask(2, 7))
    np.testing.assert_array_equal(paged.paged_attention(q, cache.k[0], cache.v[0], cache.tables["s"], 7), want)


# ----------------------------------------------------------------------------- the adapter


def test_adapter_passes_positions_to_every_callable():
    """A decoder with rotary positions reads them in its block: the driver passes P .. P+T-1."""
    seen = []

    def embed(tokens, positions):
        seen.append(("embed", positions.tolist()))
        return MODEL.embed(tokens, positions)

    def block(i, x, past_k, past_v, mask, positions):
        seen.append((f"block{i}", positions.tolist()))
        assert mask.shape == (x.shape[1], past_k.shape[2] + x.shape[1])
        return MODEL.block(i, x, past_k, past_v, mask, positions)

    model = replace(MODEL, embed=embed, block=block)
    cache = paged.add_sequence(paged.init_model_pool(model, 8, 3), 0)
    _, cache = paged.prefill(model, cache, 0, _tokens(1, 3))
    _, cache = paged.step(model, cache, 0, 4)
    assert seen == [("embed", [[0, 1, 2]]), ("block0", [[0, 1, 2]]), ("block1", [[0, 1, 2]]),
                    ("embed", [[3]]), ("block0", [[3]]), ("block1", [[3]])]  # fmt: skip


# ----------------------------------------------------------------------------- errors


def test_bad_pool_sizes():
    with pytest.raises(ValueError, match=r"block_size: expected an int >= 1, got 0"):
        paged.init_pool(4, 0, 1, 1, 2)
    with pytest.raises(ValueError, match=r"num_blocks: expected an int >= 1, got -1"):
        paged.init_pool(-1, 2, 1, 1, 2)
    with pytest.raises(ValueError, match=r"head_dim: expected an int >= 1, got 2.0"):
        paged.init_pool(4, 2, 1, 1, 2.0)
    with pytest.raises(ValueError, match=r"n_layer: expected an int >= 1, got True"):
        paged.init_pool(4, 2, True, 1, 2)


def test_unknown_and_existing_sequences():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 4, 2), "a")
    kv = [np.zeros((CONFIG.n_head, 1, CONFIG.head_dim))] * CONFIG.n_layer
    for call in (lambda: paged.append(cache, "nope", kv, kv), lambda: paged.gather(cache, "nope", 0),
                 lambda: paged.free(cache, "nope"), lambda: paged.prefill(MODEL, cache, "nope", _tokens(0, 2)),
                 lambda: paged.step(MODEL, cache, "nope", 1)):  # fmt: skip
        with pytest.raises(ValueError, match=r"seq: unknown sequence 'nope'"):
            call()
    with pytest.raises(ValueError, match=r"parent: unknown sequence 'nope'"):
        paged.fork(cache, "nope", "b")
    with pytest.raises(ValueError, match=r"child: sequence 'a' exists already"):
        paged.fork(cache, "a", "a")
    with pytest.raises(ValueError, match=r"seq: sequence 'a' exists already"):
        paged.add_sequence(cache, "a")
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 2\), got 2"):
        paged.gather(cache, "a", 2)


def test_pool_exhausted_changes_nothing():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 3, 2), "a")
    _, cache = paged.prefill(MODEL, cache, "a", _tokens(1, 5))  # 3 blocks, the last half full
    with pytest.raises(ValueError, match=r"cache: pool exhausted: sequence 'a' needs 1 more blocks, 0 of num_blocks=3"):
        paged.prefill(MODEL, cache, "a", _tokens(2, 2))
    forked = paged.fork(cache, "a", "b")  # a write to the shared half-full block needs a copy: no block left
    with pytest.raises(ValueError, match=r"cache: pool exhausted: sequence 'b' needs 1 more blocks"):
        paged.step(MODEL, forked, "b", 1)
    assert forked.tables["a"] == forked.tables["b"] and forked.lengths["b"] == 5
    _, cache = paged.step(MODEL, cache, "a", 1)  # alone, a fills its last block in place
    assert cache.lengths["a"] == 6


def test_bad_keys_values():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 4, 2), "a")
    good = [np.zeros((CONFIG.n_head, 2, CONFIG.head_dim))] * CONFIG.n_layer
    with pytest.raises(ValueError, match=r"keys: expected a sequence of n_layer=2 arrays, got 1"):
        paged.append(cache, "a", good[:1], good)
    with pytest.raises(ValueError, match=r"keys\[1\]: expected shape \(n_kv_head, T, head_dim\) = \(2, 2, 4\), "
                                         r"got \(2, 2, 3\)"):
        paged.append(cache, "a", [good[0], np.zeros((2, 2, 3))], good)
    with pytest.raises(ValueError, match=r"values: expected T=2 positions \(the keys'\), got 1"):
        paged.append(cache, "a", good, [np.zeros((CONFIG.n_head, 1, CONFIG.head_dim))] * CONFIG.n_layer)


@pytest.mark.parametrize("tokens,match", [
    (np.array([1, 13]), r"tokens: token ids must lie in \[0, 13\), got 13"),
    (np.array([-1]), r"tokens: token ids must lie in \[0, 13\), got -1"),
    (np.array([1.0, 2.0]), r"tokens: expected a non-empty 1-D integer array"),
    (np.zeros((1, 2), dtype=np.int64), r"tokens: expected a non-empty 1-D integer array"),
    (np.zeros(0, dtype=np.int64), r"tokens: expected a non-empty 1-D integer array"),
    (np.zeros(25, dtype=np.int64), r"tokens: 0 cached \+ 25 new positions exceed max_positions=24"),
])  # fmt: skip
def test_bad_tokens(tokens, match):
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 30, 1), "a")
    with pytest.raises(ValueError, match=match):
        paged.prefill(MODEL, cache, "a", tokens)


@pytest.mark.parametrize("token", [True, 1.0, np.array([1]), "1"])
def test_bad_step_token(token):
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 4, 2), "a")
    with pytest.raises(ValueError, match=r"token: expected an int"):
        paged.step(MODEL, cache, "a", token)


def test_step_past_max_positions():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 30, 1), "a")
    _, cache = paged.prefill(MODEL, cache, "a", _tokens(1, 24))
    with pytest.raises(ValueError, match=r"tokens: 24 cached \+ 1 new positions exceed max_positions=24"):
        paged.step(MODEL, cache, "a", 1)


def test_bad_paged_attention_arguments():
    pool = np.zeros((4, 2, 3, 5))
    q = np.zeros((2, 1, 5))
    with pytest.raises(ValueError, match=r"block_table: expected at least 2 block ids in \[0, 4\) for length=4, "
                                         r"got \[0\]"):
        paged.paged_attention(q, pool, pool, [0], 4)
    with pytest.raises(ValueError, match=r"block_table: .* got \[0, 4\]"):
        paged.paged_attention(q, pool, pool, [0, 4], 4)
    with pytest.raises(ValueError, match=r"q: expected 1 <= Tq <= length=1 queries, got Tq=2"):
        paged.paged_attention(np.zeros((2, 2, 5)), pool, pool, [0], 1)
    with pytest.raises(ValueError, match=r"q: expected \(n_head, Tq, 5\) with n_head a multiple of n_kv_head=2"):
        paged.paged_attention(np.zeros((3, 1, 5)), pool, pool, [0], 1)
    with pytest.raises(ValueError, match=r"length: expected an int >= 1, got 0"):
        paged.paged_attention(q, pool, pool, [0], 0)
    with pytest.raises(ValueError, match=r"pool_v: expected shape \(4, 2, 3, 5\)"):
        paged.paged_attention(q, pool, np.zeros((4, 2, 3, 4)), [0], 1)


def test_check_cache_catches_broken_bookkeeping():
    cache = paged.add_sequence(paged.init_model_pool(MODEL, 4, 2), "a")
    _, cache = paged.prefill(MODEL, cache, "a", _tokens(1, 3))
    paged.check_cache(cache)
    with pytest.raises(ValueError, match=r"cache: reference counts"):
        paged.check_cache(replace(cache, ref_counts=(1, 2, 0, 0)))
    with pytest.raises(ValueError, match=r"cache: free list"):
        paged.check_cache(replace(cache, free=(2, 3, 3)))
    with pytest.raises(ValueError, match=r"cache: sequence 'a' of length 5 holds 2 blocks"):
        paged.check_cache(replace(cache, lengths={"a": 5}))
