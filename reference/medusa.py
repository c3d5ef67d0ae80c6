"""Medusa: several next-token heads on a frozen GPT, a candidate tree, one verifying forward.

Cai, Li, Geng, Peng, Lee, Chen, Dao 2024, "Medusa: Simple LLM Inference Acceleration
Framework with Multiple Decoding Heads" (Medusa-1: the heads trained on a frozen base).

The heads.  The base GPT (reference/gpt.py) gives the last hidden state h_t = LN_f(h_L)[t]
(after the final LayerNorm; the base head is logits_t = h_t W_te^T). Head k = 0..K-1 reads
the same h_t and predicts the token k + 2 positions ahead (the base predicts the next one):

    z_0 = h_t,   z_j = z_{j-1} + SiLU(z_{j-1} W_kj + b_kj)   j = 1..n_layers   (own weights per block)
    p^(k)_t = softmax(z_{n_layers} U_k)       ~ x_{t+k+2} given x_<=t           U_k: (C, V), no bias

The candidate tree.  A list of *choices*, tuples of ranks (i_1, ..., i_d): the node "the
i_1-th most likely token of head 0, then the i_2-th of head 1, ..." at depth d. The list is
closed under prefixes; the root (depth 0) is the base model's own next token. `tree_buffers`
turns it into the tree attention mask (node i sees node j iff j is an ancestor of i or i
itself), the position offsets (= depths) and the root-to-leaf paths.

One step, with the cache holding P positions and the root token r = argmax p_base:
  1. candidates: node tokens from the heads' top-k at the last position (`candidates`);
  2. one forward of the base over all N tree nodes at positions P + depth, each attending
     to the cache and to its own ancestors only (`tree_forward`): every node's logits are
     exactly those of plain decoding of its root-to-node path;
  3. verification (`verify`) along every path: node x at depth d >= 1 is accepted if the
     base's distribution at its parent accepts it,
        greedy:   x = argmax p                                   (exactly greedy decoding)
        typical:  p(x) > min(epsilon, delta exp(-H(p)))          (typical acceptance, Sec. 2.3.1)
     the accepted prefix of a path ends at its first rejection; the longest one wins (ties:
     the first path; typical: the largest sum of log p over the accepted tokens first);
  4. the root and the a accepted tokens are emitted (1 + a tokens per base forward); their
     keys and values are kept (gathered along the path), the other nodes' discarded; the
     logits of the last accepted node give the next root and the next candidates.
Greedy verification makes the output token for token that of greedy decoding
(reference.gpt.greedy): each emitted token is the argmax of the base's distribution given
exactly the tokens before it.

End of sequence (the convention of reference.generation and reference/speculative.py):
with eos_token_id (an id or several), a row ends at the first eos it emits (an eos in the
prompt does not count): the eos is kept, the accepted nodes after it on the same path are
discarded, and the row runs no more tree forwards. Emitting the root and the accepted path,
then cutting, emits exactly the tokens up to the eos, so greedy Medusa with eos is greedy
decoding cut after its first eos. The batch's output has T0 + n columns, n the most tokens
any row emitted; a row that ended earlier is filled with pad_token_id (default: the first
eos id).

Typical acceptance: p = softmax(logits / temperature), H(p) = -sum_v p_v log p_v computed
exactly (0 log 0 = 0); the public code's defaults are epsilon = 0.09 and delta = 0.3 =
sqrt(epsilon), which this spec takes (delta=None means sqrt(epsilon)). The root is always
the base's argmax and always accepted (the paper: "greedy decoding for the first token"),
so at least one token is emitted per step.

Where this spec differs from the public implementation (FasterDecoding/Medusa, read for
reference, not copied):
  - the ResBlocks of one head are built as `[ResBlock(C)] * n_layers`: the *same* module
    repeated, so with n_layers > 1 the blocks of a head share one weight; here every block
    has its own W_kj, b_kj;
  - a fresh ResBlock zeroes its weight but keeps torch's random bias, so it is not the
    identity; `init` zeroes both (a fresh head is exactly the base's LM head);
  - the entropy of typical acceptance is -sum p log(p + 1e-5), not exact; here it is exact;
  - retrieve paths shorter than the deepest are padded with index -1, which reads the token 0
    and the *last node's* logits, so a padding slot is "accepted" when the base's argmax after
    the path is token 0 -- and its kept cache entry and the next logits then come from the
    wrong places (index -1); here paths carry their length and padding is never accepted;
  - later versions draw the root by typical or nucleus *sampling* when temperature > 0 (unless
    `fast=True`); here the root is always the argmax, as the paper's typical acceptance says;
  - the top-k of the heads is a fixed TOPK = 10 (ranks must be < 10); here any rank < V;
  - batch size 1 only; here the rows of a batch are decoded one after the other (each row
    its own accept lengths and cache), and near the end the tree is cut to the depth still
    needed, so exactly max_new_tokens are produced (fewer when the row emits an eos) and the
    block size is respected;
  - the public loop checks for eos only after the whole accepted path is appended and keeps
    what follows it; here the path is cut after its first eos.

Head parameters are a flat dict of float64 arrays, (in, out) as everywhere:

    heads.{k}.blocks.{j}.w (C, C)   heads.{k}.blocks.{j}.b (C,)   heads.{k}.out.w (C, V)

Functions take (params, base_config) of the base GPT and (heads, config) of the heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from chainrule.reference import gpt, nn, validate
from chainrule.reference.speculative import check_eos, cut_at_eos
from chainrule.reference.xp import namespace

MODES = ("greedy", "typical")

# The sparse tree the public code ships as its default (`mc_sim_7b_63`: 63 nodes, depth <= 4, ranks
# <= 9), chosen there by simulated acceptance of Vicuna-7B's heads; written here as rank tuples.
MC_SIM_7B_63 = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0), (0, 5),
    (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,),
    (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1),
    (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0),
    (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0),
    (0, 0, 0, 1), (1, 6), (0, 7, 0),
)  # fmt: skip
DEFAULT_EPSILON = 0.09  # posterior_threshold of the public code
LOSS_DECAY = 0.8  # lambda_k = 0.8^k (k = 0 for the first head), the paper's weights up to a common factor


# ----------------------------------------------------------------------------- config and params


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Config:
    """Medusa heads: n_heads heads of n_layers residual SiLU blocks each, on a base of width
    n_embd and vocabulary vocab_size (those of the base GPT: `Config.for_base`)."""

    n_embd: int
    vocab_size: int
    n_heads: int = 4
    n_layers: int = 1

    def __post_init__(self):
        for name, low in (("n_embd", 1), ("vocab_size", 1), ("n_heads", 1), ("n_layers", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"Config.{name}: expected an int >= {low}, got {value!r}")

    @classmethod
    def for_base(cls, base_config: gpt.Config, n_heads: int = 4, n_layers: int = 1) -> Config:
        return cls(n_embd=base_config.n_embd, vocab_size=base_config.vocab_size, n_heads=n_heads, n_layers=n_layers)


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every head parameter."""
    C, V = config.n_embd, config.vocab_size
    shapes = {}
    for k in range(config.n_heads):
        for j in range(config.n_layers):
            shapes[f"heads.{k}.blocks.{j}.w"] = (C, C)
            shapes[f"heads.{k}.blocks.{j}.b"] = (C,)
        shapes[f"heads.{k}.out.w"] = (C, V)
    return shapes


def init(config: Config, rng: numpy.random.Generator, base_params: dict | None = None) -> dict:
    """Medusa-1 initialization: every block zero (W = 0, b = 0: exactly the identity, as SiLU(0) = 0)
    and every head's U_k a copy of the base's LM head W_te^T when base_params is given (so a
    fresh head predicts what the base predicts for the next token), else N(0, 0.02^2)."""
    heads = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".out.w"):
            if base_params is not None:
                key = "lm_head.w" if "lm_head.w" in base_params else "wte"  # the base's LM head (untied or tied)
                wte = numpy.asarray(base_params[key], dtype=numpy.float64)
                if wte.shape != (config.vocab_size, config.n_embd):
                    raise ValueError(f"base_params[{key!r}]: expected shape {(config.vocab_size, config.n_embd)}, "
                                     f"got {wte.shape}")  # fmt: skip
                heads[name] = wte.T.copy()
            else:
                heads[name] = rng.normal(0.0, 0.02, shape)
        else:
            heads[name] = numpy.zeros(shape)
    return heads


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Head parameters far from the initialization, for tests: block weights N(0, 1/C),
    biases N(0, 0.2^2), U_k N(0, 1/C) (O(1) logits; nothing agrees by accident)."""
    heads = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".b"):
            heads[name] = rng.normal(0.0, 0.2, shape)
        else:
            heads[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
    return heads


def check_params(heads: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped head parameter."""
    validate.check_param_shapes(heads, param_shapes(config), "heads")


def check_base(base_config: gpt.Config, config: Config) -> None:
    """ValueError unless the heads fit the base (same width and vocabulary)."""
    if not isinstance(base_config, gpt.Config):
        raise ValueError(f"base_config: expected a reference.gpt.Config, got {type(base_config).__name__}")
    for name in ("n_embd", "vocab_size"):
        if getattr(base_config, name) != getattr(config, name):
            raise ValueError(f"config.{name}: expected {getattr(base_config, name)} (the base's), "
                             f"got {getattr(config, name)}")  # fmt: skip


# ----------------------------------------------------------------------------- the heads


def silu(x):
    """SiLU(x) = x sigmoid(x) = x / (1 + exp(-x)) (Elfwing et al. 2018; also "swish"),
    with sigmoid(x) = (1 + tanh(x / 2)) / 2, which never overflows."""
    xp = namespace(x)
    return x * (0.5 * (1.0 + xp.tanh(0.5 * x)))


def head_logits(heads: dict, config: Config, hidden):
    """All heads' logits from the base's last hidden states.

    hidden: (..., C), after LN_f -> (K, ..., V):
        z_0 = h, z_j = z_{j-1} + SiLU(z_{j-1} W_kj + b_kj), logits_k = z_{n_layers} U_k.
    """
    xp = namespace(hidden)
    out = []
    for k in range(config.n_heads):
        z = hidden  # (..., C)
        for j in range(config.n_layers):
            p = f"heads.{k}.blocks.{j}."
            z = z + silu(nn.linear(z, heads[p + "w"], heads[p + "b"]))  # (..., C)
        out.append(z @ heads[f"heads.{k}.out.w"])  # (..., V)
    return xp.stack(out, axis=0)  # (K, ..., V)


def base_logits(params: dict, hidden):
    """The base GPT's LM head: logits = h W_te^T (h W_head^T, W_head = lm_head.w, for a base with
    an untied head: reference.gpt.head_weight).  hidden (..., C) -> (..., V)."""
    return hidden @ params.get("lm_head.w", params["wte"]).T


def init_cache(params: dict, base_config: gpt.Config, max_len: int | None = None) -> dict:
    """An empty KV cache for one sequence (reference.gpt.init_cache with batch 1). The reference's
    cache grows as needed; max_len (the room fast.medusa.init_cache preallocates) is accepted
    for symmetry and unused."""
    return gpt.init_cache(params, base_config, 1)


def hidden(params: dict, base_config: gpt.Config, tokens, cache: dict):
    """The base's last hidden states of tokens (B, T) placed after the cache's positions
    (causal attention; reference.gpt.block) -> (h (B, T, C) after LN_f, new cache)."""
    xp = namespace(params["wte"])
    tokens = xp.asarray(tokens)
    P, T = cache["length"], tokens.shape[1]
    x = nn.embedding(tokens, params["wte"]) + params["wpe"][P : P + T]  # (B, T, C)
    keys, values = [], []
    for i in range(base_config.n_layer):
        x, k, v = gpt.block(params, base_config, i, x, cache["k"][i], cache["v"][i])
        keys.append(k)
        values.append(v)
    x = nn.layer_norm(x, params["ln_f.g"], params["ln_f.b"], base_config.layer_norm_eps)  # (B, T, C)
    return x, {"k": tuple(keys), "v": tuple(values), "length": P + T}


def forward(params: dict, base_config: gpt.Config, heads: dict, config: Config, tokens):
    """Teacher forcing: (base logits (B, T, V), head logits (K, B, T, V)).

    logits[:, t] is the distribution of x_{t+1} given tokens[:, :t+1]; `heads[k][:, t]` that
    of x_{t+k+2}. tokens: (B, T) int, 1 <= T <= block_size.
    """
    _check_all(params, base_config, heads, config)
    gpt.check_tokens(tokens, base_config)
    h, _ = hidden(params, base_config, tokens, gpt.init_cache(params, base_config, tokens.shape[0]))
    return base_logits(params, h), head_logits(heads, config, h)


def loss_weights(config: Config, weights=None) -> tuple[float, ...]:
    """lambda_k of the Medusa-1 loss: the given weights (K nonnegative numbers) or 0.8^k, k = 0..K-1.
    (The paper numbers the heads from 1 and writes lambda_k = 0.8^k: the same weights times 0.8.)"""
    if weights is None:
        return tuple(LOSS_DECAY**k for k in range(config.n_heads))
    weights = tuple(float(w) for w in weights)
    if len(weights) != config.n_heads or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"weights: expected {config.n_heads} finite numbers >= 0, got {weights}")
    return weights


def loss(params: dict, base_config: gpt.Config, heads: dict, config: Config, tokens, weights=None):
    """The Medusa-1 loss of the heads on a frozen base (Cai et al. 2024, eq. (1)), in nats:

        L = sum_k lambda_k * mean_{b, t <= T-k-3} -log p^(k)_t(x_{b, t+k+2}),    lambda_k = 0.8^k

    head k at position t is scored on the token k + 2 positions ahead; each head's term is
    the mean over its T - k - 2 scored positions of every row. tokens: (B, T) with
    T >= K + 2 (every head scores at least one position). Returns a float64 scalar.
    """
    xp = namespace(params["wte"])
    lam = loss_weights(config, weights)
    gpt.check_tokens(tokens, base_config, min_len=config.n_heads + 2)
    _, medusa = forward(params, base_config, heads, config, tokens)  # (K, B, T, V)
    tokens = xp.asarray(tokens)
    T = tokens.shape[1]
    total = 0.0
    for k in range(config.n_heads):
        logp = nn.log_softmax(medusa[k, :, : T - k - 2], axis=-1)  # (B, T-k-2, V)
        target = tokens[:, k + 2 :]  # (B, T-k-2)
        picked = xp.take_along_axis(logp, target[:, :, None], axis=-1)[:, :, 0]
        total = total + lam[k] * -xp.mean(picked)
    return total


def _check_all(params, base_config, heads, config):
    gpt.check_params(params, base_config)
    check_base(base_config, config)
    check_params(heads, config)


# ----------------------------------------------------------------------------- the candidate tree


def check_choices(choices, config: Config | None = None) -> tuple[tuple[int, ...], ...]:
    """The choices as a tuple of int tuples; ValueError unless they form a tree: non-empty
    tuples of ranks >= 0, no duplicates, every prefix present; with a config, depth <= n_heads
    and ranks < vocab_size."""
    try:
        out = tuple(tuple(c) for c in choices)
    except TypeError:
        raise ValueError(f"choices: expected a sequence of tuples of ranks, got {choices!r}") from None
    if not out:
        raise ValueError("choices: expected at least one choice, got none")
    for c in out:
        if not c or not all(_is_int(i) and i >= 0 for i in c):
            raise ValueError(f"choices: expected non-empty tuples of ints >= 0, got {c!r}")
    seen = set(out)
    if len(seen) != len(out):
        raise ValueError(f"choices: expected no duplicates, got {len(out) - len(seen)} repeated")
    for c in out:
        if len(c) > 1 and c[:-1] not in seen:
            raise ValueError(f"choices: {c!r} needs its prefix {c[:-1]!r} in the list (a tree), which is missing")
    if config is not None:
        depth = max(len(c) for c in out)
        if depth > config.n_heads:
            raise ValueError(f"choices: expected depth <= n_heads={config.n_heads}, got depth {depth}")
        rank = max(max(c) for c in out)
        if rank >= config.vocab_size:
            raise ValueError(f"choices: expected ranks < vocab_size={config.vocab_size}, got rank {rank}")
    return tuple(tuple(int(i) for i in c) for c in out)


def tree_buffers(choices) -> dict:
    """The index structures of the candidate tree (NumPy int64 / bool; N = len(choices) + 1 nodes).

    Nodes: 0 is the root; then the choices sorted by (depth, ranks), so that a parent comes
    before its children.
        choices      (N-1,) the sorted choices (node i >= 1 is choices[i-1])
        parent (N,)  parent node (-1 for the root)
        depth (N,)   0 for the root, len(choice) otherwise: the position offset P + depth
        head (N,)    depth - 1: the head whose top-k proposes the node (-1 for the root)
        rank (N,)    the node's rank in that head's top-k (last entry of its choice; 0 at the root)
        mask (N, N)  mask[i, j] = node j is an ancestor of node i or i itself (tree attention)
        paths (L, D+1)   one row per leaf: the nodes from the root down, padded with -1
        path_length (L,) the number of nodes of each path (root included)
    """
    cs = sorted(check_choices(choices), key=lambda c: (len(c), c))
    index = {c: i + 1 for i, c in enumerate(cs)}
    N = len(cs) + 1
    parent = numpy.full(N, -1, dtype=numpy.int64)
    depth = numpy.zeros(N, dtype=numpy.int64)
    rank = numpy.zeros(N, dtype=numpy.int64)
    mask = numpy.eye(N, dtype=bool)
    for c, i in index.items():
        parent[i] = index[c[:-1]] if len(c) > 1 else 0
        depth[i] = len(c)
        rank[i] = c[-1]
        mask[i] = mask[parent[i]]  # the parent's ancestors and the parent itself ...
        mask[i, i] = True  # ... and the node
    is_parent = set(parent[1:].tolist())
    leaves = [i for i in range(1, N) if i not in is_parent]
    D = int(depth.max())
    paths = numpy.full((len(leaves), D + 1), -1, dtype=numpy.int64)
    lengths = numpy.zeros(len(leaves), dtype=numpy.int64)
    for row, leaf in enumerate(leaves):
        nodes = [leaf]
        while nodes[-1] != 0:
            nodes.append(int(parent[nodes[-1]]))
        paths[row, : len(nodes)] = nodes[::-1]
        lengths[row] = len(nodes)
    return {"choices": tuple(cs), "parent": parent, "depth": depth, "head": depth - 1, "rank": rank,
            "mask": mask, "paths": paths, "path_length": lengths}  # fmt: skip


def prune(choices, max_depth: int) -> tuple[tuple[int, ...], ...]:
    """The choices of depth <= max_depth (still a tree: prefixes are shallower)."""
    return tuple(c for c in check_choices(choices) if len(c) <= max_depth)


def top_ranks(logits):
    """Token ids by decreasing logit, the lower id first on ties.  (..., V) -> (..., V) int64."""
    xp = namespace(logits)
    return xp.argsort(-logits, axis=-1, kind="stable").astype(xp.int64)


def candidates(logits_last, medusa_last, buffers: dict):
    """The tokens of the tree's nodes.

    logits_last: (V,) the base's logits for the next token; medusa_last: (K, V) the heads'
    logits at the same position. Root = argmax logits_last (the first on ties); node i =
    the rank[i]-th most likely token of head head[i]. -> (N,) int64.
    """
    xp = namespace(logits_last)
    order = top_ranks(medusa_last)  # (K, V)
    tokens = [int(xp.argmax(logits_last))]
    for i in range(1, len(buffers["parent"])):
        tokens.append(int(order[int(buffers["head"][i]), int(buffers["rank"][i])]))
    return xp.asarray(tokens, dtype=xp.int64)


def tree_attention_mask(P: int, buffers: dict, xp=None):
    """(N, P + N) bool: every node sees the P cached positions, and among the tree's nodes
    exactly its ancestors and itself."""
    xp = numpy if xp is None else xp
    N = buffers["mask"].shape[0]
    return xp.concatenate([xp.ones((N, P), dtype=bool), xp.asarray(buffers["mask"])], axis=1)


def tree_forward(params: dict, base_config: gpt.Config, heads: dict, config: Config, cache: dict, tree_tokens,
                 buffers: dict):  # fmt: skip
    """One forward of the base over the whole tree, after the P cached positions of one sequence.

    tree_tokens: (N,) node tokens; node i sits at position P + depth[i] and attends to the
    cache and to its ancestors and itself (`tree_attention_mask`), so its outputs equal those
    of plain decoding of its root-to-node path. cache: batch 1.
    -> (logits (N, V), head logits (K, N, V), cache with P + N positions in node order).
    """
    xp = namespace(params["wte"])
    P = cache["length"]
    depth = xp.asarray(buffers["depth"])
    if P + int(buffers["depth"].max()) >= base_config.block_size:
        raise ValueError(f"cache: the tree reaches position {P + int(buffers['depth'].max())}, "
                         f"beyond block_size={base_config.block_size}")  # fmt: skip
    tokens = xp.asarray(tree_tokens)[None, :]  # (1, N)
    x = nn.embedding(tokens, params["wte"]) + params["wpe"][P + depth]  # (1, N, C)
    mask = tree_attention_mask(P, buffers, xp)  # (N, P+N)
    keys, values = [], []
    for i in range(base_config.n_layer):
        x, k, v = gpt.block(params, base_config, i, x, cache["k"][i], cache["v"][i], mask=mask)
        keys.append(k)
        values.append(v)
    h = nn.layer_norm(x, params["ln_f.g"], params["ln_f.b"], base_config.layer_norm_eps)[0]  # (N, C)
    new_cache = {"k": tuple(keys), "v": tuple(values), "length": P + len(buffers["depth"])}
    return base_logits(params, h), head_logits(heads, config, h), new_cache


def keep_path(cache: dict, P: int, nodes) -> dict:
    """The cache after acceptance: the first P positions, then the tree nodes `nodes` (the
    accepted path, root first) in that order; every other node's keys and values dropped."""
    xp = namespace(cache["k"][0])
    keep = xp.concatenate([xp.arange(P), P + xp.asarray(nodes, dtype=xp.int64)])
    return {"k": tuple(k[:, :, keep] for k in cache["k"]), "v": tuple(v[:, :, keep] for v in cache["v"]),
            "length": P + len(nodes)}  # fmt: skip


# ----------------------------------------------------------------------------- verification


def _check_epsilon_delta(epsilon, delta, temperature):
    if not (isinstance(epsilon, (int, float)) and 0 < epsilon <= 1):
        raise ValueError(f"epsilon: expected a number in (0, 1], got {epsilon!r}")
    delta = math.sqrt(epsilon) if delta is None else delta
    if not (isinstance(delta, (int, float)) and delta >= 0 and math.isfinite(delta)):
        raise ValueError(f"delta: expected a finite number >= 0 (or None: sqrt(epsilon)), got {delta!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    return float(epsilon), float(delta), float(temperature)


def typical_threshold(logits, epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
                      temperature: float = 1.0):  # fmt: skip
    """The typical-acceptance threshold min(epsilon, delta exp(-H(p))), p = softmax(logits / T),
    H(p) = -sum_v p_v log p_v exactly (0 log 0 = 0).  (..., V) -> (...) float64."""
    xp = namespace(logits)
    epsilon, delta, temperature = _check_epsilon_delta(epsilon, delta, temperature)
    logp = nn.log_softmax(logits / temperature, axis=-1)  # (..., V)
    p = xp.exp(logp)
    H = -xp.sum(p * xp.where(p > 0, logp, 0.0), axis=-1)  # (...): 0 log 0 = 0
    return xp.minimum(epsilon, delta * xp.exp(-H))


def typical_accepts(logits, tokens, epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
                    temperature: float = 1.0):  # fmt: skip
    """The typical-acceptance rule: p(x) > min(epsilon, delta exp(-H(p))).
    logits (..., V), tokens (...) int -> (...) bool."""
    xp = namespace(logits)
    p = nn.softmax(logits / temperature, axis=-1)
    px = xp.take_along_axis(p, xp.asarray(tokens)[..., None], axis=-1)[..., 0]
    return px > typical_threshold(logits, epsilon, delta, temperature)


def verify(tree_logits, tree_tokens, buffers: dict, mode: str = "greedy", epsilon: float = DEFAULT_EPSILON,
           delta: float | None = None, temperature: float = 1.0):  # fmt: skip
    """The accepted path: -> (path row, a), a = the number of accepted nodes below the root.

    tree_logits: (N, V) the base's logits at every node; tree_tokens: (N,). Along path
    (n_0 = 0, n_1, ..., n_m), node n_i (i >= 1) passes if the distribution at its parent
    n_{i-1} accepts tree_tokens[n_i] (greedy: it is the argmax, the first on ties; typical:
    `typical_accepts`); a path's accept length is its number of leading passes. The longest
    wins; ties: the first path (greedy), the largest sum of log p(x) over the accepted tokens,
    then the first path (typical). Padding (-1) is never accepted.
    """
    xp = namespace(tree_logits)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    paths, lengths = buffers["paths"], buffers["path_length"]
    if mode == "greedy":
        parent = xp.asarray(xp.maximum(xp.asarray(buffers["parent"]), 0))  # the root's "parent" is itself (unused)
        ok = xp.asarray(tree_tokens) == xp.argmax(tree_logits, axis=-1)[parent]  # (N,): node vs its parent's argmax
    else:
        parent_logits = tree_logits[xp.maximum(xp.asarray(buffers["parent"]), 0)]  # (N, V)
        ok = typical_accepts(parent_logits, tree_tokens, epsilon, delta, temperature)  # (N,)
        logp = nn.log_softmax(parent_logits / temperature, axis=-1)
        score = xp.take_along_axis(logp, xp.asarray(tree_tokens)[:, None], axis=-1)[:, 0]  # (N,)
    best, best_a, best_score = 0, -1, -math.inf
    for row in range(paths.shape[0]):
        a = 0
        while a + 1 < int(lengths[row]) and bool(ok[int(paths[row, a + 1])]):
            a += 1
        s = 0.0 if mode == "greedy" else math.fsum(float(score[int(n)]) for n in paths[row, 1 : a + 1])
        if a > best_a or (a == best_a and s > best_score):
            best, best_a, best_score = row, a, s
    return best, best_a


# ----------------------------------------------------------------------------- generation


def _check_generate_args(params, base_config, heads, config, prompt, max_new_tokens, choices, mode, eos_token_id,
                         pad_token_id):  # fmt: skip
    """ValueError for a bad argument of `generate` -> (eos ids, pad id) (speculative.check_eos)."""
    _check_all(params, base_config, heads, config)
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    check_choices(choices, config)
    eos = check_eos(eos_token_id, pad_token_id, base_config.vocab_size)
    gpt.check_tokens(prompt, base_config, name="prompt", max_len=base_config.block_size + 1 - max(max_new_tokens, 1))
    return eos


def generate(params: dict, base_config: gpt.Config, heads: dict, config: Config, prompt, max_new_tokens: int,
             choices, *, mode: str = "greedy", epsilon: float = DEFAULT_EPSILON, delta: float | None = None,
             temperature: float = 1.0, eos_token_id=None, pad_token_id=None):  # fmt: skip
    """Medusa decoding: -> (tokens (B, T0 + n) int64, accept lengths).

    prompt: (B, T0), fed as it is; each row is decoded on its own (its own accept lengths and
    cache). choices: the candidate tree (a list of rank tuples, depth <= n_heads). mode:
    "greedy" (output = reference.gpt.greedy, token for token) or "typical" (root greedy, the
    other nodes by typical acceptance with epsilon, delta = sqrt(epsilon) by default, and
    temperature). Each step is one base forward over the tree and emits 1 + a tokens; the
    tree is cut to the depth still needed and to the positions left below block_size, so
    exactly max_new_tokens come out, and T0 + max_new_tokens - 1 <= block_size as for
    reference.gpt.generate (a tree cut to its root alone is a plain decoding step, a = 0).
    End of sequence (module docstring): eos_token_id (an id or a sequence of ids in [0, V))
    ends a row at the first eos it emits (kept; the rest of its accepted path discarded);
    n = the most tokens any row emitted (n = max_new_tokens without eos), and a row that
    ended earlier is followed by pad_token_id (default: the first eos id).
    accept lengths: a tuple with, per row, an int64 array of a (the accepted nodes below the
    root) for each tree forward the row ran (a row that ended at an eos runs no more; its last
    a counts the nodes its verification accepted, those cut after the eos included). A row
    that emitted n_b tokens without an eos costs 1 + len(a) base forwards (the prompt's
    prefill, then one per tree) for n_b = sum(a + 1) tokens, plus 1 when its last token is a
    root emitted without a tree (plain decoding, too, never feeds its last token).
    """
    eos, pad = _check_generate_args(params, base_config, heads, config, prompt, max_new_tokens, choices, mode,
                                    eos_token_id, pad_token_id)  # fmt: skip
    if mode == "typical":
        _check_epsilon_delta(epsilon, delta, temperature)
    xp = namespace(params["wte"])
    prompt = xp.asarray(prompt).astype(xp.int64)
    rows, steps = [], []
    for b in range(prompt.shape[0]):
        new, counts = _generate_row(params, base_config, heads, config, prompt[b : b + 1], int(max_new_tokens),
                                    choices, mode, epsilon, delta, temperature, eos)  # fmt: skip
        rows.append(new)
        steps.append(numpy.asarray(counts, dtype=numpy.int64))
    n = max(len(new) for new in rows)
    out = xp.full((prompt.shape[0], prompt.shape[1] + n), 0 if pad is None else pad, dtype=xp.int64)
    out[:, : prompt.shape[1]] = prompt
    for b, new in enumerate(rows):  # rows that ended earlier keep the pad after their eos
        out[b, prompt.shape[1] : prompt.shape[1] + len(new)] = xp.asarray(new, dtype=xp.int64)
    return out, tuple(steps)


def _generate_row(params, base_config, heads, config, prompt, N, choices, mode, epsilon, delta, temperature, eos):
    """One sequence: prompt (1, T0) -> (its new tokens, a list of n <= N ints ending at the
    first eos; the accept length of each tree forward)."""
    xp = namespace(params["wte"])
    if N == 0:
        return [], []
    h, cache = hidden(params, base_config, prompt, gpt.init_cache(params, base_config, 1))
    logits_last, medusa_last = base_logits(params, h[0, -1]), head_logits(heads, config, h[0, -1])  # (V,), (K, V)
    out, counts = [], []
    while len(out) < N:
        remaining = N - len(out)
        if remaining == 1:  # the root alone: the base's argmax, no forward needed
            out.append(int(xp.argmax(logits_last)))
            break
        P = cache["length"]
        depth = min(remaining - 1, base_config.block_size - 1 - P)  # the tree's nodes sit at P + depth
        if depth == 0:  # the root at the last position: a plain step
            root = int(xp.argmax(logits_last))
            out.append(root)
            counts.append(0)
            if root in eos:
                break
            h, cache = hidden(params, base_config, xp.asarray([[root]]), cache)
            logits_last, medusa_last = base_logits(params, h[0, -1]), head_logits(heads, config, h[0, -1])
            continue
        buffers = tree_buffers(prune(choices, depth))
        tokens = candidates(logits_last, medusa_last, buffers)  # (N_nodes,)
        tree_logits, tree_medusa, cache = tree_forward(params, base_config, heads, config, cache, tokens, buffers)
        row, a = verify(tree_logits, tokens, buffers, mode, epsilon, delta, temperature)
        nodes = buffers["paths"][row, : a + 1]  # the root and the a accepted nodes
        block, ended = cut_at_eos([int(tokens[int(n)]) for n in nodes], eos)  # up to the first eos
        out.extend(block)
        counts.append(a)
        if ended:
            break
        cache = keep_path(cache, P, nodes)
        last = int(nodes[-1])
        logits_last, medusa_last = tree_logits[last], tree_medusa[:, last]
    return out, counts
