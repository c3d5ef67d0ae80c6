"""Paged KV cache: the memory manager of LLM serving engines, and a decoder driven through it.

Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention" (vLLM). A serving engine does not give each sequence one contiguous
(n_kv_head, max_len, head_dim) buffer: it cuts the KV cache into fixed-size blocks drawn
from one pool, as an operating system pages memory, so that no memory is reserved for tokens
not yet generated and sequences that share a prefix share its blocks.

    pool_k[l], pool_v[l]   (num_blocks, n_kv_head, block_size, head_dim)   one pool per layer l;
                           a block id names the same block in every layer's pool
    table[s]               (b_0, b_1, ...): the blocks of sequence s, in order
    length[s]              the number of positions cached for s

    position t of s lives in block table[s][t // block_size], slot t % block_size

    gather:  K_s = concat_j pool_k[table[s][j]]  [:, :length[s]]          (n_kv_head, length, head_dim)
    paged_attention(q) = softmax(q K_s^T / sqrt(d) + causal) V_s         = attention on the contiguous cache

Blocks are allocated from a free list, one when the last block of a sequence is full.
Prefix sharing: `fork` gives a new sequence the table of another (no copy); each block
carries a reference count, the number of tables holding it. Copy on write: before `append`
writes into a sequence's last block while another sequence holds it too (a shared, partially
filled block), the block is copied to a fresh one, so the other sequence never changes. A
full shared block is never written to and stays shared. `free` drops a sequence, and a block
whose count falls to 0 returns to the free list.

Everything is pure: each function returns a new `PagedCache` and leaves its input as it was
(the reference's cache is a value; a real engine writes its pool in place).

The driver (`prefill`, `step`) runs a decoder with its KV cache held in the pool, one sequence
at a time, through a small adapter (`Model`: embed / block / head callables that take the
positions), so that any decoder with a KV-cache block plugs in; `gpt_model` adapts
reference.gpt. It stores the same keys and values as the contiguous cache fed the same
chunks, and its logits are those of the contiguous cache and of `forward` on the whole
sequence, up to rounding (bit for bit as a rule: only the memory layout differs, which NumPy's
BLAS may round differently in degenerate shapes, such as head_dim = 1 with one query).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy

from chainrule.reference import gpt, nn
from chainrule.reference.xp import namespace


# ----------------------------------------------------------------------------- the block pool


@dataclass(frozen=True)
class PagedCache:
    """The block pool of every layer, the block tables and lengths of the sequences, the
    reference counts of the blocks and the free list. A value: the functions of this module
    return new caches and never write into one (do not write into its arrays or dicts either).

    k, v: per layer, (num_blocks, n_kv_head, block_size, head_dim) arrays.
    tables: sequence id -> tuple of block ids; lengths: sequence id -> positions cached.
    ref_counts: per block, the number of tables holding it. free: the ids of the unused
    blocks, allocated from the front.
    """

    k: tuple
    v: tuple
    block_size: int
    tables: dict
    lengths: dict
    ref_counts: tuple
    free: tuple

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[0]

    @property
    def n_layer(self) -> int:
        return len(self.k)

    @property
    def n_kv_head(self) -> int:
        return self.k[0].shape[1]

    @property
    def head_dim(self) -> int:
        return self.k[0].shape[3]


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def init_pool(num_blocks: int, block_size: int, n_layer: int, n_kv_head: int, head_dim: int, *,
              dtype=numpy.float64, xp=None) -> PagedCache:  # fmt: skip
    """An empty pool: num_blocks blocks of block_size positions per layer, all free, no sequence.

    Pools of zeros, (num_blocks, n_kv_head, block_size, head_dim) per layer, in `dtype` of the
    array module `xp` (NumPy by default; CuPy to run on a GPU). ValueError naming the argument
    unless every size is an int >= 1.
    """
    for name, value in (("num_blocks", num_blocks), ("block_size", block_size), ("n_layer", n_layer),
                        ("n_kv_head", n_kv_head), ("head_dim", head_dim)):  # fmt: skip
        _check_count(value, name)
    xp = namespace() if xp is None else xp
    shape = (num_blocks, n_kv_head, block_size, head_dim)
    pools = tuple(xp.zeros(shape, dtype=dtype) for _ in range(n_layer))
    return PagedCache(k=pools, v=tuple(xp.zeros(shape, dtype=dtype) for _ in range(n_layer)),
                      block_size=int(block_size), tables={}, lengths={}, ref_counts=(0,) * num_blocks,
                      free=tuple(range(num_blocks)))  # fmt: skip


def blocks_needed(length: int, block_size: int) -> int:
    """ceil(length / block_size): the blocks that hold `length` positions."""
    return -(-length // block_size)


def _check_sequence(cache: PagedCache, seq, name: str = "seq") -> None:
    if seq not in cache.tables:
        raise ValueError(f"{name}: unknown sequence {seq!r}; the cache holds {sorted(map(repr, cache.tables))}")


def add_sequence(cache: PagedCache, seq) -> PagedCache:
    """A new, empty sequence `seq` (any hashable id): no block, length 0.
    ValueError naming seq if the cache holds it already."""
    if seq in cache.tables:
        raise ValueError(f"seq: sequence {seq!r} exists already")
    return replace(cache, tables={**cache.tables, seq: ()}, lengths={**cache.lengths, seq: 0})


def _check_kv(cache: PagedCache, arrays, name: str) -> int:
    """The number of new positions T of per-layer (n_kv_head, T, head_dim) arrays; ValueError naming `name`."""
    if not isinstance(arrays, (tuple, list)) or len(arrays) != cache.n_layer:
        raise ValueError(f"{name}: expected a sequence of n_layer={cache.n_layer} arrays, got "
                         f"{len(arrays) if isinstance(arrays, (tuple, list)) else type(arrays).__name__}")  # fmt: skip
    T = getattr(arrays[0], "shape", (None, None))[1] if getattr(arrays[0], "ndim", 0) == 3 else None
    for layer, a in enumerate(arrays):
        want = (cache.n_kv_head, T, cache.head_dim)
        if T is None or tuple(getattr(a, "shape", ())) != want:
            raise ValueError(f"{name}[{layer}]: expected shape (n_kv_head, T, head_dim) = {want}, "
                             f"got {getattr(a, 'shape', type(a).__name__)}")  # fmt: skip
    return T


def append(cache: PagedCache, seq, keys, values) -> PagedCache:
    """Cache the keys and values of T new positions of `seq` -> the new cache.

    keys, values: per layer, (n_kv_head, T, head_dim) arrays. Position length[seq] + t goes to
    block table[seq][(length + t) // block_size], slot (length + t) % block_size; a new block
    comes from the front of the free list when the last one is full. Copy on write: if the
    last block is partially filled and shared (ref count > 1), it is first copied to a fresh
    block, which replaces it in this sequence's table only. ValueError naming seq (unknown),
    keys / values (shapes), or cache (the pool has too few free blocks: nothing is changed).
    """
    _check_sequence(cache, seq)
    T = _check_kv(cache, keys, "keys")
    if _check_kv(cache, values, "values") != T:
        raise ValueError(f"values: expected T={T} positions (the keys'), got {values[0].shape[1]}")
    length, table = cache.lengths[seq], list(cache.tables[seq])
    refs, free = list(cache.ref_counts), list(cache.free)
    copy_on_write = T > 0 and length % cache.block_size != 0 and refs[table[-1]] > 1
    need = blocks_needed(length + T, cache.block_size) - len(table) + copy_on_write
    if need > len(free):
        raise ValueError(f"cache: pool exhausted: sequence {seq!r} needs {need} more blocks, {len(free)} of "
                         f"num_blocks={cache.num_blocks} are free")  # fmt: skip
    k_pools = [pool.copy() for pool in cache.k]  # the new cache's pools: the input's stay as they are
    v_pools = [pool.copy() for pool in cache.v]
    if copy_on_write:
        shared, fresh = table[-1], free.pop(0)
        for layer in range(cache.n_layer):
            k_pools[layer][fresh] = k_pools[layer][shared]
            v_pools[layer][fresh] = v_pools[layer][shared]
        refs[shared] -= 1
        refs[fresh] = 1
        table[-1] = fresh
    while len(table) < blocks_needed(length + T, cache.block_size):
        block = free.pop(0)
        refs[block] = 1
        table.append(block)
    for t in range(T):
        position = length + t
        block, slot = table[position // cache.block_size], position % cache.block_size
        for layer in range(cache.n_layer):
            k_pools[layer][block, :, slot] = keys[layer][:, t]  # (n_kv_head, head_dim)
            v_pools[layer][block, :, slot] = values[layer][:, t]
    return replace(cache, k=tuple(k_pools), v=tuple(v_pools), tables={**cache.tables, seq: tuple(table)},
                   lengths={**cache.lengths, seq: length + T}, ref_counts=tuple(refs), free=tuple(free))  # fmt: skip


def gather_blocks(pool, block_table, length: int):
    """The first `length` positions stored in `block_table`'s blocks of one layer's `pool`:

        out = concat_j pool[block_table[j]]  [:, :length]

    pool: (num_blocks, n_kv_head, block_size, head_dim) -> (n_kv_head, length, head_dim).
    """
    xp = namespace(pool)
    if length == 0:
        return xp.zeros((pool.shape[1], 0, pool.shape[3]), dtype=pool.dtype)
    blocks = [pool[b] for b in block_table]  # each (n_kv_head, block_size, head_dim)
    return xp.concatenate(blocks, axis=1)[:, :length]  # (n_kv_head, length, head_dim)


def gather(cache: PagedCache, seq, layer: int):
    """The contiguous keys and values of `seq` in `layer`, read through its block table:
    -> (k, v), each (n_kv_head, length, head_dim). ValueError naming seq or layer."""
    _check_sequence(cache, seq)
    if isinstance(layer, bool) or not isinstance(layer, (int, numpy.integer)) or not 0 <= layer < cache.n_layer:
        raise ValueError(f"layer: expected an int in [0, {cache.n_layer}), got {layer!r}")
    table, length = cache.tables[seq], cache.lengths[seq]
    return gather_blocks(cache.k[layer], table, length), gather_blocks(cache.v[layer], table, length)


def fork(cache: PagedCache, parent, child) -> PagedCache:
    """A new sequence `child` holding the same blocks as `parent` (prefix sharing, no copy):
    the tables are equal and every block's reference count grows by one. Later appends to
    either copy a shared partially filled last block first (`append`). ValueError naming
    parent (unknown) or child (exists already)."""
    _check_sequence(cache, parent, "parent")
    if child in cache.tables:
        raise ValueError(f"child: sequence {child!r} exists already")
    refs = list(cache.ref_counts)
    for block in cache.tables[parent]:
        refs[block] += 1
    return replace(cache, tables={**cache.tables, child: cache.tables[parent]},
                   lengths={**cache.lengths, child: cache.lengths[parent]}, ref_counts=tuple(refs))  # fmt: skip


def free(cache: PagedCache, seq) -> PagedCache:
    """Drop `seq`: each of its blocks' reference counts falls by one, and a block no table holds
    any more goes back to the end of the free list (its contents stay until it is reused).
    ValueError naming seq (unknown)."""
    _check_sequence(cache, seq)
    refs, released = list(cache.ref_counts), []
    for block in cache.tables[seq]:
        refs[block] -= 1
        if refs[block] == 0:
            released.append(block)
    tables = {s: t for s, t in cache.tables.items() if s != seq}
    lengths = {s: n for s, n in cache.lengths.items() if s != seq}
    return replace(cache, tables=tables, lengths=lengths, ref_counts=tuple(refs), free=cache.free + tuple(released))


def check_cache(cache: PagedCache) -> None:
    """The bookkeeping invariants, ValueError naming cache when one fails: each table holds
    ceil(length / block_size) blocks; each block's reference count is the number of tables
    holding it; the free list holds exactly the blocks of count 0, each once."""
    held = [0] * cache.num_blocks
    for seq, table in cache.tables.items():
        if len(table) != blocks_needed(cache.lengths[seq], cache.block_size):
            raise ValueError(f"cache: sequence {seq!r} of length {cache.lengths[seq]} holds {len(table)} blocks")
        for block in table:
            held[block] += 1
    if tuple(held) != tuple(cache.ref_counts):
        raise ValueError(f"cache: reference counts {cache.ref_counts}, but the tables hold the blocks "
                         f"{tuple(held)} times")
    unused = [b for b in range(cache.num_blocks) if held[b] == 0]
    if sorted(cache.free) != unused:
        raise ValueError(f"cache: free list {cache.free}, but the unused blocks are {unused}")


# ----------------------------------------------------------------------------- paged attention


def paged_attention(q, pool_k, pool_v, block_table, length: int):
    """Attention of the newest positions of one sequence over its keys and values in a block pool:

        K = gather(pool_k, block_table, length),  V likewise            (n_kv_head, length, head_dim)
        out_h = softmax( q_h K_g(h)^T / sqrt(d) + causal ) V_g(h),       g(h) = h // (n_head / n_kv_head)

    q: (n_head, Tq, head_dim), the queries of positions length - Tq .. length - 1 (each sees the
    keys up to itself, `nn.causal_mask`); pool_k, pool_v: (num_blocks, n_kv_head, block_size,
    head_dim); block_table: the sequence's block ids; n_head a multiple of n_kv_head (grouped-query
    attention; equal for multi-head). -> (n_head, Tq, head_dim): the attention of the contiguous
    cache (`nn.attention`), bit for bit. vLLM's kernel computes the same softmax block by block.
    ValueError naming the argument.
    """
    xp = namespace(q, pool_k)
    if getattr(q, "ndim", None) != 3 or getattr(pool_k, "ndim", None) != 4:
        raise ValueError(f"q, pool_k: expected (n_head, Tq, head_dim) and (num_blocks, n_kv_head, block_size, "
                         f"head_dim), got {getattr(q, 'shape', q)} and {getattr(pool_k, 'shape', pool_k)}")  # fmt: skip
    if tuple(pool_v.shape) != tuple(pool_k.shape):
        raise ValueError(f"pool_v: expected shape {tuple(pool_k.shape)} (pool_k's), got {tuple(pool_v.shape)}")
    num_blocks, n_kv_head, block_size, head_dim = pool_k.shape
    n_head, Tq, d = q.shape
    if d != head_dim or n_head % n_kv_head != 0:
        raise ValueError(f"q: expected (n_head, Tq, {head_dim}) with n_head a multiple of n_kv_head={n_kv_head}, "
                         f"got {tuple(q.shape)}")  # fmt: skip
    _check_count(length, "length")
    if not 1 <= Tq <= length:
        raise ValueError(f"q: expected 1 <= Tq <= length={length} queries, got Tq={Tq}")
    table = [int(b) for b in block_table]
    if len(table) < blocks_needed(length, block_size) or any(not 0 <= b < num_blocks for b in table):
        raise ValueError(f"block_table: expected at least {blocks_needed(length, block_size)} block ids in "
                         f"[0, {num_blocks}) for length={length}, got {table}")  # fmt: skip
    group = n_head // n_kv_head
    k = xp.repeat(gather_blocks(pool_k, table, length), group, axis=0)  # (n_head, length, head_dim)
    v = xp.repeat(gather_blocks(pool_v, table, length), group, axis=0)  # (n_head, length, head_dim)
    return nn.attention(q, k, v, nn.causal_mask(Tq, length, xp))  # (n_head, Tq, head_dim)


# ----------------------------------------------------------------------------- the model driver


@dataclass(frozen=True)
class Model:
    """A decoder as the driver runs it: one sequence at a time (batch 1), T new positions after
    P cached ones.

        embed(tokens (1, T) int, positions (1, T) int) -> x (1, T, C)
        block(i, x (1, T, C), past_k (1, n_kv_head, P, head_dim), past_v, mask (T, P+T) bool,
              positions (1, T) int) -> (x (1, T, C), k, v (1, n_kv_head, P+T, head_dim))
        head(x (1, T, C)) -> logits (1, T, vocab_size)

    block i returns the keys and values of the past followed by the new positions (as
    reference.gpt.block); mask is causal (`nn.causal_mask(T, P+T)`). Every callable gets the
    positions P .. P+T-1: a learned position embedding (GPT) adds them in `embed`; rotary
    position embeddings (LLaMA) use them in `block`, whose signature there is
    block(params, config, i, x, past_k, past_v, mask, positions), so that

        Model(embed=lambda tokens, positions: nn.embedding(tokens, params[...]),
              block=lambda i, x, pk, pv, mask, positions: llama.block(params, config, i, x, pk, pv, mask, positions),
              head=..., ...)

    plugs a LLaMA in. n_kv_head: the heads of the keys and values (fewer than the query heads
    under grouped-query attention). max_positions: the longest sequence (block_size).
    """

    embed: Callable
    block: Callable
    head: Callable
    n_layer: int
    n_kv_head: int
    head_dim: int
    vocab_size: int
    max_positions: int


def gpt_model(params: dict, config: gpt.Config) -> Model:
    """reference.gpt as a `Model`: the operations of gpt's forward, one sequence at a time.

        embed: W_te[x_t] + W_pe[t];   block: gpt.block;   head: LN_f(h) W_head^T  (gpt.head_weight: W_te, tied)
    """
    gpt.check_params(params, config)

    def embed(tokens, positions):  # (1, T), (1, T) -> (1, T, C)
        return nn.embedding(tokens, params["wte"]) + params["wpe"][positions]

    def block(i, x, past_k, past_v, mask, positions):  # learned positions: the block does not use them
        return gpt.block(params, config, i, x, past_k, past_v, mask)

    def head(x):  # (1, T, C) -> (1, T, V)
        h = nn.layer_norm(x, params["ln_f.g"], params["ln_f.b"], config.layer_norm_eps)  # (1, T, C)
        return h @ gpt.head_weight(params, config).T

    return Model(embed=embed, block=block, head=head, n_layer=config.n_layer, n_kv_head=config.n_head,
                 head_dim=config.head_dim, vocab_size=config.vocab_size, max_positions=config.block_size)  # fmt: skip


def init_model_pool(model: Model, num_blocks: int, block_size: int, *, dtype=numpy.float64, xp=None) -> PagedCache:
    """`init_pool` sized for `model`'s layers, key/value heads and head size."""
    return init_pool(num_blocks, block_size, model.n_layer, model.n_kv_head, model.head_dim, dtype=dtype, xp=xp)


def _check_tokens(model: Model, tokens, length: int, name: str = "tokens"):
    if getattr(getattr(tokens, "dtype", None), "kind", None) not in ("i", "u") or tokens.ndim != 1 or len(tokens) < 1:
        got = f"{getattr(tokens, 'dtype', type(tokens).__name__)} {getattr(tokens, 'shape', '')}"
        raise ValueError(f"{name}: expected a non-empty 1-D integer array (T,), got {got}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= model.vocab_size:
        bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
        raise ValueError(f"{name}: token ids must lie in [0, {model.vocab_size}), got {bad}")
    if length + len(tokens) > model.max_positions:
        raise ValueError(f"{name}: {length} cached + {len(tokens)} new positions exceed max_positions="
                         f"{model.max_positions}")  # fmt: skip


def prefill(model: Model, cache: PagedCache, seq, tokens):
    """Feed tokens (T,) to sequence `seq` after its cached positions -> (logits (T, V), new cache).

    Each layer reads the sequence's past keys and values through its block table (`gather`),
    runs the block on the new positions, and the new keys and values of all layers are
    appended to the pool at the end (`append`). The logits are those of the contiguous cache
    (reference.gpt.prefill with the same chunks) and of `forward` on the whole sequence, up
    to rounding. ValueError naming seq, tokens, or cache (pool exhausted).
    """
    _check_sequence(cache, seq)
    xp = namespace(cache.k[0])
    tokens = xp.asarray(tokens)
    P = cache.lengths[seq]
    _check_tokens(model, tokens, P)
    T = len(tokens)
    positions = xp.arange(P, P + T)[None]  # (1, T)
    x = model.embed(tokens[None], positions)  # (1, T, C)
    mask = nn.causal_mask(T, P + T, xp)  # (T, P+T)
    new_k, new_v = [], []
    for i in range(model.n_layer):
        past_k, past_v = gather(cache, seq, i)  # (n_kv_head, P, head_dim)
        x, k, v = model.block(i, x, past_k[None], past_v[None], mask, positions)  # k, v: (1, n_kv_head, P+T, hd)
        new_k.append(k[0, :, P:])  # (n_kv_head, T, head_dim)
        new_v.append(v[0, :, P:])
    logits = model.head(x)[0]  # (T, V)
    return logits, append(cache, seq, new_k, new_v)


def step(model: Model, cache: PagedCache, seq, token):
    """One decoding step of sequence `seq`: token (an int) at its next position
    -> (logits (V,), new cache). `prefill` of one token."""
    xp = namespace(cache.k[0])
    is_int = isinstance(token, (int, numpy.integer)) and not isinstance(token, bool)
    if not (is_int or (getattr(token, "ndim", None) == 0 and token.dtype.kind in "iu")):
        raise ValueError(f"token: expected an int, got {token!r}")
    logits, cache = prefill(model, cache, seq, xp.asarray([int(token)]))
    return logits[0], cache
