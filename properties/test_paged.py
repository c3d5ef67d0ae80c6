"""Properties of the paged KV cache (reference.paged), on random programs of the serving engine:
sequences added with a prompt, extended by prefill chunks and steps, forked at any point,
freed in any order, all in one pool of blocks of size 1..5.

- equivalence: every logit equals reference.gpt's contiguous cache fed the same chunks, and
  gpt.forward on the whole sequence, under the float64 tolerance; the gathered keys and
  values of the first layer are the contiguous cache's bit for bit, those of later layers
  under the float64 tolerance (they follow an attention, whose dot products NumPy's BLAS
  may round differently on the contiguous cache's memory layout: with head_dim = 1 and one
  query, a dot product over keys strided by n_head, against the pool's unit stride; the
  tests/test_paged.py configurations are bit for bit);
- isolation: an operation on one sequence (copy on write included) never changes the keys
  and values of another, bit for bit;
- bookkeeping: after every operation the reference counts are the number of tables holding
  each block, and the free list the unheld blocks (`check_cache`); freeing every sequence
  returns every block;
- paged_attention = contiguous attention, multi-head and grouped-query, bit for bit.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from chainrule.reference import gpt, nn, paged
from chainrule.reference.checks import assert_close
from properties.conftest import gpt_models, seeds


def _contiguous(params, config, tokens, chunks):
    """reference.gpt's contiguous cache (batch 1) fed `chunks` of tokens: -> (logits (T, V), cache)."""
    cache, out, pos = gpt.init_cache(params, config, 1), [], 0
    for c in chunks:
        logits, cache = gpt.prefill(params, config, cache, tokens[None, pos : pos + c])
        out.append(logits[0])
        pos += c
    return np.concatenate(out), cache


def _kv(cache, seq):
    return [paged.gather(cache, seq, i) for i in range(cache.n_layer)]


@given(gpt_models(min_block_size=2), st.integers(1, 5), st.data())
def test_random_serving_programs(model, block_size, data):
    config, params = model
    decoder = paged.gpt_model(params, config)
    cache = paged.init_model_pool(decoder, 96, block_size)
    rng = np.random.default_rng(data.draw(seeds, label="token seed"))
    live = {}  # seq -> (tokens, chunks, logits (T, V))
    for n in range(data.draw(st.integers(3, 10), label="operations")):
        room = [s for s, (tok, _, _) in live.items() if len(tok) < config.block_size]
        choices = ["add"] + (["extend", "extend"] if room else []) + (["fork", "free"] if live else [])
        op = data.draw(st.sampled_from(choices), label=f"op {n}")
        before = {s: _kv(cache, s) for s in live}
        if op in ("add", "extend"):
            seq = n if op == "add" else data.draw(st.sampled_from(room), label="seq")
            if op == "add":
                cache, live[seq] = paged.add_sequence(cache, seq), (np.zeros(0, dtype=np.int64), [], None)
            tokens, chunks, logits = live[seq]
            size = data.draw(st.integers(1, config.block_size - len(tokens)), label="chunk")
            new = rng.integers(0, config.vocab_size, size)
            if size == 1 and data.draw(st.booleans(), label="as a step"):
                out, cache = paged.step(decoder, cache, seq, new[0])
                out = out[None]
            else:
                out, cache = paged.prefill(decoder, cache, seq, new)
            logits = out if logits is None else np.concatenate([logits, out])
            live[seq] = (np.concatenate([tokens, new]), chunks + [size], logits)
            before.pop(seq, None)
        elif op == "fork":
            parent = data.draw(st.sampled_from(sorted(live)), label="parent")
            cache = paged.fork(cache, parent, n)
            live[n] = live[parent]
        else:
            seq = data.draw(st.sampled_from(sorted(live)), label="seq")
            cache = paged.free(cache, seq)
            del live[seq], before[seq]
        paged.check_cache(cache)
        for seq, kv in before.items():  # no other sequence changed, copy on write included
            for (k0, v0), (k1, v1) in zip(kv, _kv(cache, seq)):
                np.testing.assert_array_equal(k1, k0)
                np.testing.assert_array_equal(v1, v0)
    for seq, (tokens, chunks, logits) in live.items():
        if not chunks:
            assert cache.tables[seq] == () and cache.lengths[seq] == 0
            continue
        want, contiguous = _contiguous(params, config, tokens, chunks)
        assert_close("paged vs contiguous logits", want, logits, "float64")
        assert_close("paged vs recomputed logits", gpt.forward(params, config, tokens[None])[0], logits, "float64")
        for layer, (k, v) in enumerate(_kv(cache, seq)):
            if layer == 0:  # computed from the embeddings alone: the same bits
                np.testing.assert_array_equal(k, contiguous["k"][0][0])
                np.testing.assert_array_equal(v, contiguous["v"][0][0])
            else:  # after an attention, which may round differently on the contiguous cache's memory layout
                assert_close(f"keys of layer {layer}", contiguous["k"][layer][0], k, "float64")
                assert_close(f"values of layer {layer}", contiguous["v"][layer][0], v, "float64")
    for seq in list(live):
        cache = paged.free(cache, seq)
    assert sorted(cache.free) == list(range(96)) and set(cache.ref_counts) == {0}


@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 12), st.data())
def test_paged_attention_is_contiguous_attention(n_kv_head, group, head_dim, block_size, length, data):
    rng = np.random.default_rng(data.draw(seeds))
    n_head, Tq = n_kv_head * group, data.draw(st.integers(1, length))
    num_blocks = -(-length // block_size) + data.draw(st.integers(0, 4))
    pool_k, pool_v = rng.normal(size=(2, num_blocks, n_kv_head, block_size, head_dim))
    table = rng.permutation(num_blocks)[: -(-length // block_size)]
    q = rng.normal(size=(n_head, Tq, head_dim))
    k = np.concatenate([pool_k[b] for b in table], axis=1)[:, :length]
    v = np.concatenate([pool_v[b] for b in table], axis=1)[:, :length]
    want = nn.attention(q, np.repeat(k, group, axis=0), np.repeat(v, group, axis=0), nn.causal_mask(Tq, length))
    np.testing.assert_array_equal(paged.paged_attention(q, pool_k, pool_v, table, length), want)
