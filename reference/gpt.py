"""GPT: the decoder-only transformer language model, exactly as GPT-2.

Radford et al. 2019, "Language Models are Unsupervised Multitask Learners"
(architecture of Radford et al. 2018 with pre-LayerNorm blocks and a final
LayerNorm); Vaswani et al. 2017 for attention.

    h_0 = W_te[x_t] + W_pe[t]                                   token + learned position
    a_l = h_{l-1} + Attn( LN_1(h_{l-1}) )                       causal multi-head attention
    h_l = a_l + W_2 gelu_tanh( W_1 LN_2(a_l) + b_1 ) + b_2      MLP, hidden F = 4C
    logits_t = LN_f(h_L)[t] W_te^T                              LM head tied to W_te

    p(x_1..x_T) = prod_t softmax(logits(bos, x_1..x_{t-1}))[x_t]

Attn of layer l is softmax(s_l Q K^T + causal) V per head, s_l = 1/sqrt(head_dim).
That is GPT-2 with `Config`'s defaults; its other fields are the options of HF's
GPT2Config, computed as HF's GPT2LMHeadModel computes them: the MLP's activation
(`activation`: tanh GELU, exact GELU, HF's "gelu_fast", ReLU), its hidden size F
(`n_inner`), the attention scale (`scale_attn`: s_l = 1 when False;
`scale_attn_by_inverse_layer_idx`: s_l divided by l + 1, layers counted from 0),
and an LM head of its own (`tie_word_embeddings=False`: logits_t = LN_f(h_L)[t] W_head^T).

Parameters are a flat dict of float64 arrays, linear weights stored (in, out):

    wte (V, C)  wpe (block_size, C)
    blocks.{i}.ln_1.g / .b (C,)        blocks.{i}.attn.qkv.w (C, 3C)  .b (3C,)
    blocks.{i}.attn.proj.w (C, C) .b   blocks.{i}.ln_2.g / .b (C,)
    blocks.{i}.mlp.fc.w (C, F) .b      blocks.{i}.mlp.proj.w (F, C) .b
    ln_f.g / .b (C,)
    lm_head.w (V, C)                   untied configs only; stored like wte (out, in)

No dropout: this is the model at inference, and the spec of its likelihood.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy

from chainrule.reference import metrics, nn, validate
from chainrule.reference import beam, generation, sampling
from chainrule.reference.xp import namespace, to_numpy


# ----------------------------------------------------------------------------- config


ACTIVATIONS = {"gelu_tanh": nn.gelu_tanh, "gelu_erf": nn.gelu_erf, "gelu_fast": nn.gelu_fast, "relu": nn.relu}


@dataclass(frozen=True)
class Config:
    """GPT hyper-parameters. head_dim = n_embd // n_head.

    The defaults after bos_token are GPT-2's; each other value is an option of HF's GPT2Config:
        activation       the MLP's nonlinearity, a name of ACTIVATIONS: "gelu_tanh" (HF's
                         "gelu_new" / "gelu_pytorch_tanh"), "gelu_erf" ("gelu"), "gelu_fast"
                         ("gelu_fast"), "relu" ("relu")
        n_inner          the MLP's hidden size F; None: 4 n_embd (`inner_dim`)
        scale_attn       scores Q K^T / sqrt(head_dim) (True) or Q K^T (False) (HF: scale_attn_weights)
        scale_attn_by_inverse_layer_idx   the scores of layer l (from 0) divided by l + 1 as well
        tie_word_embeddings               the LM head is wte (True) or its own lm_head.w (False)
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    layer_norm_eps: float = 1e-5
    bos_token: int = 0
    activation: str = "gelu_tanh"
    n_inner: int | None = None
    scale_attn: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, (int, numpy.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"Config.n_embd: expected a multiple of n_head={self.n_head}, got {self.n_embd}"
            )
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ValueError(f"Config.layer_norm_eps: expected a positive float, got {self.layer_norm_eps!r}")
        bos = self.bos_token
        if not isinstance(bos, (int, numpy.integer)) or isinstance(bos, bool) or not 0 <= bos < self.vocab_size:
            raise ValueError(f"Config.bos_token: expected an int in [0, {self.vocab_size}), got {bos!r}")
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"Config.activation: expected one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        n_inner = self.n_inner
        if n_inner is not None and (not isinstance(n_inner, (int, numpy.integer)) or isinstance(n_inner, bool)
                                    or n_inner < 1):  # fmt: skip
            raise ValueError(f"Config.n_inner: expected None (4 n_embd) or a positive int, got {n_inner!r}")
        for name in ("scale_attn", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Config.{name}: expected a bool, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        """The MLP's hidden size F: n_inner, or 4 n_embd when it is None."""
        return 4 * self.n_embd if self.n_inner is None else int(self.n_inner)

    def attn_scale(self, layer: int) -> float:
        """s_l, the factor of layer `layer`'s (from 0) attention scores s_l Q K^T, as HF's GPT2Attention.scaling:

            s_l = head_dim^(-1/2) (scale_attn) or 1,  then divided by (layer + 1) (scale_attn_by_inverse_layer_idx)
        """
        scale = self.head_dim**-0.5 if self.scale_attn else 1.0
        return scale / float(layer + 1) if self.scale_attn_by_inverse_layer_idx else scale


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (the contract `check_params` enforces)."""
    V, C, L, F = config.vocab_size, config.n_embd, config.n_layer, config.inner_dim
    shapes = {"wte": (V, C), "wpe": (config.block_size, C)}
    for i in range(L):
        p = f"blocks.{i}."
        shapes |= {
            p + "ln_1.g": (C,), p + "ln_1.b": (C,),
            p + "attn.qkv.w": (C, 3 * C), p + "attn.qkv.b": (3 * C,),
            p + "attn.proj.w": (C, C), p + "attn.proj.b": (C,),
            p + "ln_2.g": (C,), p + "ln_2.b": (C,),
            p + "mlp.fc.w": (C, F), p + "mlp.fc.b": (F,),
            p + "mlp.proj.w": (F, C), p + "mlp.proj.b": (C,),
        }  # fmt: skip
    shapes |= {"ln_f.g": (C,), "ln_f.b": (C,)}
    return shapes if config.tie_word_embeddings else shapes | {"lm_head.w": (V, C)}


def head_weight(params: dict, config: Config):
    """The LM head's matrix W_head (V, C), logits = h W_head^T: wte (tied, GPT-2's) or lm_head.w (untied)."""
    return params["wte"] if config.tie_word_embeddings else params["lm_head.w"]


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """GPT-2 initialization: weights N(0, 0.02^2), residual projections N(0, (0.02/sqrt(2L))^2),
    biases 0, LayerNorm gains 1. Returns float64 NumPy arrays."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".g"):
            params[name] = numpy.ones(shape)
        elif name.endswith(".b"):
            params[name] = numpy.zeros(shape)
        else:
            std = 0.02 / math.sqrt(2 * config.n_layer) if name.endswith("proj.w") else 0.02
            params[name] = rng.normal(0.0, std, size=shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters far from the GPT-2 initialization, so that nothing is trivially equal:
    O(1) logits and attention scores, LayerNorm gains around 1 with spread, nonzero biases.

        wte, lm_head.w N(0, 1) wpe N(0, 0.5^2)         weights (in, out) N(0, 1/in)
        biases N(0, 0.2^2)     LayerNorm gains 1 + N(0, 0.3^2), biases N(0, 0.3^2)

    Use these, not `init`, to test an implementation: GPT-2's 0.02-std init gives
    near-uniform logits and near-uniform attention, which hide bugs (a wrong mask, a
    missing scale, a swapped head all change the output by almost nothing). Drawn in
    the order of `param_shapes`, so the same rng state gives the same parameters.
    Returns float64 NumPy arrays.
    """
    params = {}
    for name, shape in param_shapes(config).items():
        if name in ("wte", "lm_head.w"):
            params[name] = rng.normal(0.0, 1.0, shape)
        elif name == "wpe":
            params[name] = rng.normal(0.0, 0.5, shape)
        elif name.endswith(".g"):  # LayerNorm gains
            params[name] = 1.0 + rng.normal(0.0, 0.3, shape)
        elif ".ln_" in name or name.startswith("ln_"):  # LayerNorm biases
            params[name] = rng.normal(0.0, 0.3, shape)
        elif name.endswith(".b"):
            params[name] = rng.normal(0.0, 0.2, shape)
        else:  # linear weights (in, out)
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
    return params


# ----------------------------------------------------------------------------- validation


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    validate.check_param_shapes(params, param_shapes(config), "params")


def check_tokens(tokens, config: Config, name: str = "tokens", max_len: int | None = None, min_len: int = 1):
    """ValueError unless `tokens` is a (B, T) integer array with ids in [0, V) and min_len <= T <= max_len."""
    if getattr(getattr(tokens, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"{name}: expected an integer array, got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.ndim != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(tokens.shape)}")
    max_len = config.block_size if max_len is None else max_len
    T = tokens.shape[1]
    if not min_len <= T <= max_len:
        raise ValueError(f"{name}: expected length T in [{min_len}, {max_len}], got T={T}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size):
        bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
        raise ValueError(f"{name}: token ids must lie in [0, {config.vocab_size}), got {bad}")


def check_attention_mask(attention_mask, shape: tuple, name: str = "attention_mask"):
    """attention_mask as a bool array of `shape` (B, T); ValueError naming it unless it is an
    integer or bool array of that shape holding only 0 and 1, with at least one 1 per row.

    Any 0/1 pattern is accepted: left padding, right padding, and holes in the middle (a 0
    between real tokens: the token there is ignored, and positions skip it, see
    `positions_from_mask`). A row without any real token has nothing to condition on and is refused.
    """
    xp = namespace(attention_mask)
    kind = getattr(getattr(attention_mask, "dtype", None), "kind", None)
    if kind not in ("i", "u", "b"):
        raise ValueError(f"{name}: expected an integer or bool array of 0 and 1, "
                         f"got {getattr(attention_mask, 'dtype', type(attention_mask).__name__)}")
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the tokens'), got {tuple(attention_mask.shape)}")
    if kind != "b" and attention_mask.size and bool(xp.any((attention_mask != 0) & (attention_mask != 1))):
        bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)].ravel()[0]
        raise ValueError(f"{name}: expected only 0 and 1, got {int(bad)}")
    mask = attention_mask.astype(bool)
    empty = ~xp.any(mask, axis=1)
    if bool(xp.any(empty)):
        raise ValueError(f"{name}: row {int(xp.argmax(empty))} has no real token (all 0)")
    return mask


def positions_from_mask(mask, start=0):
    """Position ids of a padded batch, as Hugging Face's generate derives them:

        position_t = start + (number of real tokens before t)  = start + cumsum(mask)_t - 1   (real t)
        position_t = 1                                                                     (pad t)

    mask: (B, T) bool; start: int or (B,) the real tokens already seen (a KV cache's) -> (B, T) int64.
    A real token's position counts only the real tokens before it, so a row's positions do not
    depend on how much padding it carries, or where. (Pads get 1 as in HF; their outputs are
    not used.)
    """
    xp = namespace(mask)
    start = xp.asarray(start).reshape(-1, 1)  # (B, 1) or (1, 1)
    real_position = start + xp.cumsum(mask.astype(xp.int64), axis=1) - 1  # (B, T)
    return xp.where(mask, real_position, 1).astype(xp.int64)


def check_position_ids(position_ids, shape: tuple, config: Config, name: str = "position_ids"):
    """position_ids as an int64 array of `shape`; ValueError naming it unless integer with values in [0, block_size)."""
    xp = namespace(position_ids)
    if getattr(getattr(position_ids, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"{name}: expected an integer array, got {getattr(position_ids, 'dtype', type(position_ids))}")
    if tuple(position_ids.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the tokens'), got {tuple(position_ids.shape)}")
    if position_ids.size and (int(position_ids.min()) < 0 or int(position_ids.max()) >= config.block_size):
        bad = int(position_ids.min()) if int(position_ids.min()) < 0 else int(position_ids.max())
        raise ValueError(f"{name}: expected positions in [0, {config.block_size}) (block_size), got {bad}")
    return xp.asarray(position_ids).astype(xp.int64)


# ----------------------------------------------------------------------------- the network


def block(params: dict, config: Config, i: int, x, past_k, past_v, mask=None):
    """Transformer block i (pre-LN) on new positions x, attending to cached keys/values too.

    x: (B, T, C) activations of the T newest positions; past_k, past_v: (B, nh, P, hs)
    keys/values of the P earlier positions. mask: (T, P+T) bool, True where a new position
    may attend (default: causal, nn.causal_mask; decoders that verify trees or windows of
    candidates pass their own), or (B, 1, T, P+T) per row (padded batches, `padded_attention_mask`). Returns (x', k, v) with k, v: (B, nh, P+T, hs).
    """
    xp = namespace(x)
    p = f"blocks.{i}."
    h = nn.layer_norm(x, params[p + "ln_1.g"], params[p + "ln_1.b"], config.layer_norm_eps)
    q, k_new, v_new = xp.split(nn.linear(h, params[p + "attn.qkv.w"], params[p + "attn.qkv.b"]), 3, axis=-1)
    q = nn.split_heads(q, config.n_head)  # (B, nh, T, hs)
    k = xp.concatenate([past_k, nn.split_heads(k_new, config.n_head)], axis=2)  # (B, nh, P+T, hs)
    v = xp.concatenate([past_v, nn.split_heads(v_new, config.n_head)], axis=2)  # (B, nh, P+T, hs)
    if mask is None:
        mask = nn.causal_mask(q.shape[2], k.shape[2], xp)  # (T, P+T)
    y = nn.merge_heads(nn.attention(q, k, v, mask, scale=config.attn_scale(i)))  # (B, T, C)
    x = x + nn.linear(y, params[p + "attn.proj.w"], params[p + "attn.proj.b"])
    h = nn.layer_norm(x, params[p + "ln_2.g"], params[p + "ln_2.b"], config.layer_norm_eps)
    act = ACTIVATIONS[config.activation]
    h = act(nn.linear(h, params[p + "mlp.fc.w"], params[p + "mlp.fc.b"]))  # (B, T, F)
    x = x + nn.linear(h, params[p + "mlp.proj.w"], params[p + "mlp.proj.b"])
    return x, k, v


def padded_attention_mask(key_mask, t_query: int):
    """The attention mask of a padded batch, (B, 1, Tq, Tk) bool, True where query i may attend key j:

        allowed(i, j) = causal(i, j) and (key_mask[j] or j == p_i)

    key_mask: (B, Tk) bool, the real tokens among the Tk keys (cache then new); the queries are the
    last t_query positions (query i at p_i = Tk - Tq + i, `nn.causal_mask`). A real query sees
    the real keys before it and itself; a pad query sees itself as well, only so that its row is
    never empty (its outputs are discarded: see `forward`).
    """
    xp = namespace(key_mask)
    Tk = key_mask.shape[1]
    causal = nn.causal_mask(t_query, Tk, xp)  # (Tq, Tk)
    itself = xp.arange(Tk)[None, :] == xp.arange(Tk - t_query, Tk)[:, None]  # (Tq, Tk): j == p_i
    return causal[None, None] & (key_mask[:, None, None, :] | itself[None, None])  # (B, 1, Tq, Tk)


def _run(params: dict, config: Config, tokens, cache: dict, mask=None, positions=None):
    """The network on `tokens` (B, T) placed after the cache's positions -> (logits (B, T, V), new cache).

    mask: None (every token real; the cache has no padding either) or (B, T) bool, the real tokens;
    positions: None (P .. P+T-1) or (B, T) int position ids. With padding anywhere (mask given or
    the cache holding a mask) attention follows `padded_attention_mask` and the cache keeps the
    key mask (B, P+T); without, it is plain causal attention, as GPT-2's.
    """
    xp = namespace(params["wte"])
    tokens = xp.asarray(tokens)
    B, T = tokens.shape
    P = cache["length"]
    if positions is None:
        positions = xp.broadcast_to(xp.arange(P, P + T), (B, T))
    x = nn.embedding(tokens, params["wte"]) + params["wpe"][positions]  # (B, T, C)
    key_mask, attn_mask = cache.get("mask"), None
    if mask is not None or key_mask is not None:
        past = xp.ones((B, P), dtype=bool) if key_mask is None else key_mask  # (B, P)
        new = xp.ones((B, T), dtype=bool) if mask is None else mask  # (B, T)
        key_mask = xp.concatenate([past, new], axis=1)  # (B, P+T)
        attn_mask = padded_attention_mask(key_mask, T)  # (B, 1, T, P+T)
    keys, values = [], []
    for i in range(config.n_layer):
        x, k, v = block(params, config, i, x, cache["k"][i], cache["v"][i], attn_mask)
        keys.append(k)
        values.append(v)
    x = nn.layer_norm(x, params["ln_f.g"], params["ln_f.b"], config.layer_norm_eps)
    logits = x @ head_weight(params, config).T  # (B, T, V)
    if mask is not None:
        logits = xp.where(mask[:, :, None], logits, 0.0)  # pads: logits 0, by definition
    new_cache = {"k": tuple(keys), "v": tuple(values), "length": P + T}
    if key_mask is not None:
        new_cache["mask"] = key_mask
    return logits, new_cache


def _mask_and_positions(config: Config, tokens, attention_mask, position_ids, seen=0):
    """Checked (mask or None, positions or None) for tokens (B, T) after `seen` real tokens per row."""
    mask = None if attention_mask is None else check_attention_mask(attention_mask, tokens.shape)
    if position_ids is not None:
        return mask, check_position_ids(position_ids, tokens.shape, config)
    if mask is None:
        return None, None
    positions = positions_from_mask(mask, seen)
    if int(positions.max()) >= config.block_size:
        raise ValueError(f"tokens: a row holds more than block_size={config.block_size} real tokens")
    return mask, positions


def forward(params: dict, config: Config, tokens, attention_mask=None, position_ids=None):
    """All next-token logits at once (teacher forcing).

    tokens: (B, T) int, 1 <= T <= block_size -> logits (B, T, V) float64, where
    logits[:, t] is the (unnormalized log) distribution of the token that follows
    tokens[:, :t+1]. No token is prepended: see `log_prob` for the bos convention.

    Padded batches: attention_mask (B, T) of 1 (real token) and 0 (pad), any pattern
    (`check_attention_mask`). A real token attends to the real tokens up to it; position
    ids default to `positions_from_mask` (as HF's generate derives them; HF's own forward
    does not, which is why its left-padded forward without position_ids is wrong), or are
    given as position_ids (B, T). The logits at real positions are those of the row alone,
    without its pads; the logits at pad positions are 0 (defined so, and never used).
    """
    check_params(params, config)
    check_tokens(tokens, config)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids)
    logits, _ = _run(params, config, tokens, init_cache(params, config, tokens.shape[0]), mask, positions)
    return logits


def log_prob(params: dict, config: Config, tokens, attention_mask=None):
    """Exact chain-rule log-likelihood in nats:

        log p(x_1..x_T) = sum_{t=1}^{T} log softmax(logits(bos, x_1..x_{t-1}))[x_t]

    with bos = config.bos_token prepended, so every token, the first included, is
    predicted. tokens: (B, T), 1 <= T <= block_size -> (B,) float64.

    attention_mask (B, T): the sum runs over the real tokens only, each predicted from
    bos and the real tokens before it: a padded row scores exactly what the row alone
    scores (`metrics.masked_chain_rule_log_prob`).
    """
    xp = namespace(params["wte"])
    check_tokens(tokens, config)
    tokens = xp.asarray(tokens)
    if attention_mask is None:
        return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs), tokens, config.bos_token)
    mask = check_attention_mask(attention_mask, tokens.shape)
    return metrics.masked_chain_rule_log_prob(
        lambda inputs, input_mask: forward(params, config, inputs, input_mask), tokens, mask, config.bos_token)


# ----------------------------------------------------------------------------- KV cache


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """An empty KV cache: per layer keys and values of shape (B, nh, 0, hs) in the params' dtype, length 0."""
    xp = namespace(params["wte"])
    empty = xp.zeros((batch, config.n_head, 0, config.head_dim), dtype=params["wte"].dtype)
    return {"k": (empty,) * config.n_layer, "v": (empty,) * config.n_layer, "length": 0}


def prefill(params: dict, config: Config, cache: dict, tokens, attention_mask=None, position_ids=None):
    """Feed a chunk of tokens (B, T) after the cached positions -> (logits (B, T, V), new cache).

    Pure: the input cache is left as it was. Chunked prefill in any chunk sizes
    gives the logits of `forward` on the concatenation. attention_mask (B, T): the
    chunk's real tokens (the cache carries the mask of the earlier ones); position ids
    continue from the real tokens already cached unless given.
    """
    check_tokens(tokens, config, max_len=config.block_size - cache["length"])
    if tokens.shape[0] != cache["k"][0].shape[0]:
        raise ValueError(f"tokens: expected batch {cache['k'][0].shape[0]} (the cache's), got {tokens.shape[0]}")
    xp = namespace(params["wte"])
    seen = cache_positions(cache)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, seen)
    if positions is None and cache.get("mask") is not None:  # unpadded chunk after a padded cache
        positions = seen[:, None] + xp.arange(tokens.shape[1])[None, :]
    return _run(params, config, tokens, cache, mask, positions)


def cache_positions(cache: dict):
    """(B,) int64: the position of the next token of each row, the number of real tokens cached."""
    xp = namespace(cache["k"][0])
    B = cache["k"][0].shape[0]
    if cache.get("mask") is None:
        return xp.full((B,), cache["length"], dtype=xp.int64)
    return xp.sum(cache["mask"], axis=1).astype(xp.int64)


def step(params: dict, config: Config, cache: dict, tokens_t):
    """One decoding step: tokens_t (B,) at position cache['length'] -> (logits_t (B, V), new cache).
    The token is real (a padded cache's mask grows by a 1) at each row's next position."""
    xp = namespace(tokens_t)
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, xp.asarray(tokens_t)[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             attention_mask=None, processors=(), u=None):  # fmt: skip
    """Autoregressive generation, one token at a time through the KV cache, as HF's `generate`.

    prompt: (B, T0) int, T0 >= 1, fed to the model as it is (prepend config.bos_token
    yourself to sample from the distribution `log_prob` scores). attention_mask (B, T0):
    a padded batch of prompts of different lengths (left or right padding; a right-padded
    row continues from its last real token, its pads stay in place as holes).
    generation_config: a `generation.GenerationConfig` (HF's names: eos_token_id,
    min_new_tokens, repetition_penalty, do_sample, top_k, ...): its processors, in HF's
    order, with `processors` (the user's, of the processor protocol) between the
    penalties and the warpers. Without one: `processors` as given, no eos.
    Randomness: u None -> greedy (the argmax, first index on ties); u (B', N) uniforms in
    [0, 1) -> inverse-CDF sampling with u[:, n] at step n (do_sample=True needs u);
    B' = B * num_return_sequences (each prompt repeated in place, as HF).
    The loop is `generation.decode`: rows finish at eos or a stop sequence and then hold
    pad; it stops when all rows have finished.
    Returns (B', T0 + n) int64: the prompt as given (padded) followed by the n <= N new tokens.
    With generation_config.num_beams = W > 1: beam search (`beam_search`, HF's scoring, the
    processors acting on each beam's log-softmax), returning HF's layout (B * R, T0 + L), each
    prompt's R = num_return_sequences best hypotheses, pad after their end.
    T0 + N - 1 must not exceed block_size (the last token is never fed).
    """
    xp = namespace(params["wte"])
    check_params(params, config)
    check_tokens(prompt, config, name="prompt")
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u)
    N = run.max_new_tokens
    if run.num_beams > 1:  # HF's _beam_search: (B * R, T0 + L), each prompt's R best hypotheses
        if run.sample:
            raise ValueError("generation_config.do_sample: beam search here is deterministic (num_beams > 1 "
                             "needs do_sample=False; HF's beam sampling is not supported)")
        return beam.as_generate_output(beam_search(
            params, config, prompt, run.num_beams, N, eos=run.eos_token_id or None, length_penalty=run.length_penalty,
            early_stopping=run.early_stopping, num_return_sequences=run.num_return_sequences, pad=run.pad_token_id,
            attention_mask=attention_mask, processors=run.processors, stop_sequences=run.stop_sequences))
    check_tokens(prompt, config, name="prompt", max_len=config.block_size + 1 - max(N, 1))
    prompt = xp.asarray(prompt).astype(xp.int64)
    mask = None if attention_mask is None else check_attention_mask(attention_mask, prompt.shape)

    def start(x, m):  # (B, T0) -> (logits after each row's last real token (B, V), cache)
        logits, cache = prefill(params, config, init_cache(params, config, x.shape[0]), x, m)
        return last_real(logits, m), cache

    return generation.run_plan(run, prompt, mask, u, start, functools.partial(step, params, config))


def beam_search(params: dict, config: Config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1, pad=None,
                attention_mask=None, processors=(), stop_sequences=()) -> beam.BeamSearchResult:  # fmt: skip
    """Beam search on this GPT (reference.beam.beam_search: the algorithm, HF's scoring; the
    arguments are that function's). Every prefix is recomputed from scratch by `forward` (no
    cache: the spec), with its mask (the prompt's attention_mask, then ones) in padded batches;
    its scores are the log-softmax of its last real position's logits. T0 + max_new_tokens - 1
    must not exceed block_size. `generate` with num_beams > 1 runs this. Returns a
    beam.BeamSearchResult."""
    beam.check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                         num_return_sequences, pad, config.vocab_size, stop_sequences)  # fmt: skip
    check_params(params, config)
    check_tokens(prompt, config, name="prompt", max_len=config.block_size + 1 - max(max_new_tokens, 1))
    mask = None if attention_mask is None else check_attention_mask(attention_mask, prompt.shape)

    def step_log_probs(prefixes, prefix_mask=None):  # (N, t) -> (N, V)
        return nn.log_softmax(last_real(forward(params, config, prefixes, prefix_mask), prefix_mask), axis=-1)

    return beam.beam_search(step_log_probs, prompt, beam_width, max_new_tokens, eos=eos,
                            length_penalty=length_penalty, early_stopping=early_stopping,
                            num_return_sequences=num_return_sequences, pad=pad, attention_mask=mask,
                            processors=processors, stop_sequences=stop_sequences)  # fmt: skip


def last_real(logits, mask):
    """logits (B, T, V) -> (B, V): at each row's last real position (the last one without a mask)."""
    xp = namespace(logits)
    if mask is None:
        return logits[:, -1]
    T = mask.shape[1]
    last = T - 1 - xp.argmax(xp.flip(mask, axis=1), axis=1)  # (B,)
    return logits[xp.arange(logits.shape[0]), last]


def greedy(params: dict, config: Config, prompt, max_new_tokens: int):
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)), then `generate` with those uniforms."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)


# ----------------------------------------------------------------------------- HF GPT-2 interop

_HF_BLOCK = {
    "ln_1.weight": "ln_1.g", "ln_1.bias": "ln_1.b",
    "attn.c_attn.weight": "attn.qkv.w", "attn.c_attn.bias": "attn.qkv.b",
    "attn.c_proj.weight": "attn.proj.w", "attn.c_proj.bias": "attn.proj.b",
    "ln_2.weight": "ln_2.g", "ln_2.bias": "ln_2.b",
    "mlp.c_fc.weight": "mlp.fc.w", "mlp.c_fc.bias": "mlp.fc.b",
    "mlp.c_proj.weight": "mlp.proj.w", "mlp.c_proj.bias": "mlp.proj.b",
}  # fmt: skip
_HF_TOP = {"wte.weight": "wte", "wpe.weight": "wpe", "ln_f.weight": "ln_f.g", "ln_f.bias": "ln_f.b"}
_HF_BUFFERS = ("attn.bias", "attn.masked_bias")  # causal-mask buffers some versions save


def _as_float64(value):
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().to("cpu").double().numpy()
    return numpy.array(value, dtype=numpy.float64)


# HF's activation_function -> Config.activation: the names whose HF function (transformers'
# activations.ACT2FN) computes exactly that equation; every other name is refused.
_HF_ACTIVATIONS = {
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_python_tanh": "gelu_tanh",
    "gelu": "gelu_erf", "gelu_python": "gelu_erf", "gelu_fast": "gelu_fast", "relu": "relu",
}  # fmt: skip
_TO_HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu_erf": "gelu", "gelu_fast": "gelu_fast", "relu": "relu"}


def _hf_options(hf: dict) -> dict:
    """The Config options of a HF GPT-2 config; ValueError naming the option this spec does not implement."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise ValueError(f"hf_config['activation_function']: expected one of {tuple(_HF_ACTIVATIONS)}, got {act!r}")
    if hf.get("add_cross_attention", False) is not False:
        raise ValueError(f"hf_config['add_cross_attention']: expected False (cross-attention is not implemented), "
                         f"got {hf['add_cross_attention']!r}")  # fmt: skip
    options = {"activation": _HF_ACTIVATIONS[act], "n_inner": hf.get("n_inner")}
    for key, field, default in (  # GPT2Config's key, Config's field, GPT2Config's default
        ("scale_attn_weights", "scale_attn", True),
        ("scale_attn_by_inverse_layer_idx", "scale_attn_by_inverse_layer_idx", False),
        ("tie_word_embeddings", "tie_word_embeddings", True),
    ):
        value = hf.get(key, default)
        if not isinstance(value, (bool, numpy.bool_)):
            raise ValueError(f"hf_config[{key!r}]: expected a bool, got {value!r}")
        options[field] = bool(value)
    return options


def hf_bos_token(hf_config: dict, bos_token: int | None = None) -> int:
    """The bos token of a HF GPT-2 config: `bos_token` when given, else hf_config['bos_token_id'].

    Either must be an id in [0, vocab_size). GPT2Config's default bos_token_id is 50256 (GPT-2's
    <|endoftext|>), which a small or custom-vocabulary GPT-2 keeps unless it was set: then pass
    bos_token= the id your tokenizer puts before the first token. ValueError naming bos_token=.
    """
    V = hf_config["vocab_size"]
    if bos_token is not None:
        if isinstance(bos_token, bool) or not isinstance(bos_token, (int, numpy.integer)) or not 0 <= bos_token < V:
            raise ValueError(f"bos_token: expected an int in [0, {V}) (the vocabulary), got {bos_token!r}")
        return int(bos_token)
    bos = hf_config.get("bos_token_id")
    if isinstance(bos, (list, tuple)) and len(bos) == 1:
        bos = bos[0]
    if isinstance(bos, (int, numpy.integer)) and not isinstance(bos, bool) and 0 <= bos < V:
        return int(bos)
    why = "has no bos_token_id" if bos is None else f"has bos_token_id={bos!r}, outside the vocabulary [0, {V})"
    raise ValueError(f"bos_token: hf_config {why}; pass bos_token= the id that starts a sequence "
                     f"(an int in [0, {V}), e.g. bos_token=0)")


def from_hf_gpt2(state_dict: dict, hf_config: dict, bos_token: int | None = None):
    """Load a HF transformers GPT2LMHeadModel (or GPT2Model) state dict -> (params, config).

    state_dict: name -> numpy array or torch tensor; hf_config: a dict such as
    `model.config.to_dict()`. HF's Conv1D stores weights (in, out) like chainrule.
    GPT2Config's options become Config's: activation_function (`_HF_ACTIVATIONS`: "gelu_new",
    "gelu_pytorch_tanh", "gelu", "gelu_fast", "relu" and the "gelu_python" forms), n_inner,
    scale_attn_weights, scale_attn_by_inverse_layer_idx and tie_word_embeddings; other
    activations and add_cross_attention=True raise ValueError naming the key.
    The LM head: tied to wte when hf_config['tie_word_embeddings'] (default True) and
    lm_head.weight is absent or equal to wte; a lm_head.weight that differs from wte is a head
    of its own (Config.tie_word_embeddings=False, params["lm_head.w"]), as transformers then
    loads it untied; with tie_word_embeddings False, lm_head.weight must be given.
    bos_token (the token `log_prob` prepends) defaults to hf_config['bos_token_id'] when that
    lies in the vocabulary; otherwise (a custom-vocabulary GPT-2 keeping GPT-2's 50256) pass it:
    ValueError naming bos_token= (`hf_bos_token`).
    """
    hf = dict(hf_config)
    options = _hf_options(hf)
    bos = hf_bos_token(hf, bos_token)
    params, head = {}, None
    for key, value in state_dict.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight":
            head = _as_float64(value)
        elif name in _HF_TOP:
            params[_HF_TOP[name]] = _as_float64(value)
        elif name.startswith("h.") and name.split(".", 2)[2] in _HF_BLOCK:
            _, i, rest = name.split(".", 2)
            params[f"blocks.{i}.{_HF_BLOCK[rest]}"] = _as_float64(value)
        elif not name.endswith(_HF_BUFFERS):
            raise ValueError(f"state_dict: unexpected key {key!r}")
    if head is not None and not numpy.array_equal(head, params.get("wte")):
        options["tie_word_embeddings"] = False  # a head of its own, as transformers loads it
    config = Config(
        vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        bos_token=bos, **options,
    )  # fmt: skip
    if not config.tie_word_embeddings:
        if head is None:
            raise ValueError("state_dict: missing 'lm_head.weight' (hf_config['tie_word_embeddings'] is False: "
                             "the LM head is a matrix of its own)")  # fmt: skip
        params["lm_head.w"] = head
    check_params(params, config)
    return params, config


def to_hf_gpt2(params: dict, config: Config):
    """-> (state_dict of float64 NumPy arrays for GPT2LMHeadModel, hf config dict).

    `GPT2LMHeadModel(GPT2Config(**hf_config)).load_state_dict({k: torch.from_numpy(v) ...})`
    loads it; lm_head.weight is included (equal to wte when tied, lm_head.w when not) so
    strict loading works. The Config's options become GPT2Config's (`from_hf_gpt2` reads them back).
    """
    check_params(params, config)
    inverse_block = {v: k for k, v in _HF_BLOCK.items()}
    inverse_top = {v: k for k, v in _HF_TOP.items()}
    state = {}
    for name, value in params.items():
        value = to_numpy(value).astype(numpy.float64)
        if name in inverse_top:
            state["transformer." + inverse_top[name]] = value
        elif name == "lm_head.w":
            state["lm_head.weight"] = value
        else:
            _, i, rest = name.split(".", 2)
            state[f"transformer.h.{i}.{inverse_block[rest]}"] = value
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"].copy()
    hf_config = {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_embd": config.n_embd,
        "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": config.n_inner,
        "activation_function": _TO_HF_ACTIVATION[config.activation], "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": config.scale_attn,
        "scale_attn_by_inverse_layer_idx": config.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token, "eos_token_id": config.bos_token,
    }  # fmt: skip
    return state, hf_config
