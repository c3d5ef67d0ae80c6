"""LLaMA-family decoders: the transformer people ship today (LLaMA 1-3, Mistral, Qwen2).

Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models" (pre-RMSNorm,
SwiGLU, rotary embeddings); Ainslie et al. 2023, "GQA" (grouped-query attention); Jiang et
al. 2023, "Mistral 7B" (sliding-window attention); Qwen2 (q/k/v biases).

    h_0 = E[x_t]                                                   token embedding, no positions
    a_l = h_{l-1} + W_o Attn( RoPE(W_q n), RoPE(W_k n), W_v n ),   n = RMSNorm(h_{l-1})
    h_l = a_l + SwiGLU( RMSNorm(a_l) )                            silu(n W_gate) * (n W_up), then W_down
    logits_t = RMSNorm(h_L)[t] W_head^T                           W_head = E when tied

Attention: n_head query heads share n_kv_head key/value heads (GQA; n_kv_head = 1 is MQA,
n_kv_head = n_head is MHA); scores q.k / sqrt(head_dim); query at position i sees key at
position j iff j <= i, and, with a sliding window W, i - j < W (Mistral; HF 5.x). Positions
enter only through RoPE (`reference.nn.rope`), so scores depend on i - j alone.

Parameters, float64, linear weights stored (in, out) as every chainrule model:

    embed (V, C)                               [lm_head.w (V, C) when not tied]
    layers.{i}.attn_norm.w (C,)                layers.{i}.mlp_norm.w (C,)
    layers.{i}.attn.q.w (C, nh*hd) [.q.b]      layers.{i}.mlp.gate.w (C, I)
    layers.{i}.attn.k.w (C, nkv*hd) [.k.b]     layers.{i}.mlp.up.w (C, I)
    layers.{i}.attn.v.w (C, nkv*hd) [.v.b]     layers.{i}.mlp.down.w (I, C)
    layers.{i}.attn.o.w (nh*hd, C)             norm.w (C,)

The q/k rows follow `Config.rope_layout` ("half", HF's; or "interleaved", Meta's):
`convert_rope_layout` turns one into the other. Padded batches, position ids, the KV cache and
generation are those of reference.gpt, through the same code (gpt.check_attention_mask,
gpt.positions_from_mask, reference.generation).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy

from chainrule.reference import beam, generation, gpt, metrics, nn, validate
from chainrule.reference.xp import namespace, to_numpy

ROPE_TYPES = ("default", "linear", "llama3")
ROPE_LAYOUTS = ("half", "interleaved")


# ----------------------------------------------------------------------------- config


def _positive_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Config:
    """LLaMA-family hyper-parameters (HF names in brackets).

    vocab_size, max_position [max_position_embeddings], n_layer [num_hidden_layers], n_head
    [num_attention_heads], n_kv_head [num_key_value_heads] (divides n_head), n_embd
    [hidden_size], intermediate_size, head_dim (default n_embd // n_head), rope_theta,
    rope_scaling (None, {"rope_type": "linear", "factor"} or {"rope_type": "llama3", "factor",
    "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}), rope_layout
    ("half" or "interleaved"), rms_norm_eps, norm_offset (0, or 1 for Gemma's (1 + w)),
    qkv_bias (Qwen2), sliding_window (None or W >= 1), tie_word_embeddings, bos_token.
    """

    vocab_size: int
    max_position: int
    n_layer: int
    n_head: int
    n_kv_head: int
    n_embd: int
    intermediate_size: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False, compare=True)
    rope_layout: str = "half"
    rms_norm_eps: float = 1e-6
    norm_offset: float = 0.0
    qkv_bias: bool = False
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    bos_token: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "max_position", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"Config.{name}: expected a positive int, got {getattr(self, name)!r}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"Config.n_kv_head: expected a divisor of n_head={self.n_head}, got {self.n_kv_head}")
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise ValueError(f"Config.head_dim: n_embd={self.n_embd} is not a multiple of n_head={self.n_head}; "
                                 f"give head_dim")  # fmt: skip
            object.__setattr__(self, "head_dim", self.n_embd // self.n_head)
        if not _positive_int(self.head_dim) or self.head_dim % 2:
            raise ValueError(f"Config.head_dim: expected a positive even int (RoPE rotates pairs), got {self.head_dim!r}")
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
                raise ValueError(f"Config.{name}: expected a positive float, got {value!r}")
        if self.norm_offset not in (0, 1, 0.0, 1.0):
            raise ValueError(f"Config.norm_offset: expected 0 (w x) or 1 (Gemma's (1 + w) x), got {self.norm_offset!r}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"Config.rope_layout: expected one of {ROPE_LAYOUTS}, got {self.rope_layout!r}")
        if self.sliding_window is not None and not _positive_int(self.sliding_window):
            raise ValueError(f"Config.sliding_window: expected None or a positive int, got {self.sliding_window!r}")
        for name in ("qkv_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Config.{name}: expected True or False, got {getattr(self, name)!r}")
        bos = self.bos_token
        if not isinstance(bos, (int, numpy.integer)) or isinstance(bos, bool) or not 0 <= bos < self.vocab_size:
            raise ValueError(f"Config.bos_token: expected an int in [0, {self.vocab_size}), got {bos!r}")
        object.__setattr__(self, "rope_scaling", check_rope_scaling(self.rope_scaling))

    def __hash__(self):
        scaling = None if self.rope_scaling is None else tuple(sorted(self.rope_scaling.items()))
        return hash((self.vocab_size, self.n_layer, self.n_head, self.n_kv_head, self.n_embd, self.head_dim, scaling))

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head


def check_rope_scaling(scaling):
    """None or a checked copy of a rope scaling dict (HF's rope_scaling / rope_parameters without
    rope_theta); "default" means None. ValueError naming Config.rope_scaling."""
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ValueError(f"Config.rope_scaling: expected None or a dict, got {scaling!r}")
    s = {k: v for k, v in scaling.items() if k not in ("rope_theta", "type")}
    kind = s.pop("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"Config.rope_scaling: rope_type {kind!r} is not supported (expected one of {ROPE_TYPES})")
    want = {"default": (), "linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}[kind]
    extra = sorted(set(s) - set(want) - {"partial_rotary_factor"})
    missing = sorted(set(want) - set(s))
    if extra or missing:
        raise ValueError(f"Config.rope_scaling: {kind} takes {want}; got {'extra ' + str(extra) if extra else ''}"
                         f"{' missing ' + str(missing) if missing else ''}")  # fmt: skip
    if s.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"Config.rope_scaling: partial_rotary_factor {s['partial_rotary_factor']!r} is not supported")
    s.pop("partial_rotary_factor", None)
    if kind == "default":
        return None
    for k, v in s.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"Config.rope_scaling: {k} expected a positive number, got {v!r}")
    if kind == "llama3" and not s["high_freq_factor"] > s["low_freq_factor"]:
        raise ValueError("Config.rope_scaling: llama3 needs high_freq_factor > low_freq_factor")
    return {"rope_type": kind, **s}


def inv_freq(config: Config, xp=None):
    """RoPE's inverse frequencies (d/2,), with the config's scaling, as HF's rope init functions:

      default   omega_i = theta^(-2i/d)
      linear    omega_i / factor                 (positions interpolated, Chen et al. 2023)
      llama3    wavelength lambda_i = 2 pi / omega_i against the original context L:
                lambda_i < L / high_freq_factor: omega_i;  lambda_i > L / low_freq_factor: omega_i / factor;
                between: (1 - s) omega_i / factor + s omega_i,  s = (L / lambda_i - low) / (high - low)
    """
    omega = nn.rope_inv_freq(config.head_dim, float(config.rope_theta), xp)
    s = config.rope_scaling
    if s is None:
        return omega
    if s["rope_type"] == "linear":
        return omega / s["factor"]
    xp = namespace(omega)
    factor, low, high, L = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelength = 2 * math.pi / omega
    scaled = xp.where(wavelength > L / low, omega / factor, omega)
    smooth = (L / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < L / high) & ~(wavelength > L / low)
    return xp.where(medium, smoothed, scaled)


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter."""
    V, C, I, hd = config.vocab_size, config.n_embd, config.intermediate_size, config.head_dim
    q, kv = config.n_head * hd, config.n_kv_head * hd
    shapes = {"embed": (V, C)}
    for i in range(config.n_layer):
        p = f"layers.{i}."
        shapes |= {p + "attn_norm.w": (C,), p + "attn.q.w": (C, q), p + "attn.k.w": (C, kv), p + "attn.v.w": (C, kv)}
        if config.qkv_bias:
            shapes |= {p + "attn.q.b": (q,), p + "attn.k.b": (kv,), p + "attn.v.b": (kv,)}
        shapes |= {p + "attn.o.w": (q, C), p + "mlp_norm.w": (C,),
                   p + "mlp.gate.w": (C, I), p + "mlp.up.w": (C, I), p + "mlp.down.w": (I, C)}  # fmt: skip
    shapes["norm.w"] = (C,)
    if not config.tie_word_embeddings:
        shapes["lm_head.w"] = (V, C)
    return shapes


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """HF's LLaMA initialization: weights N(0, 0.02^2), biases 0, norm weights 1 (0 with norm_offset 1)."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith("norm.w"):
            params[name] = numpy.full(shape, 1.0 - config.norm_offset)
        elif name.endswith(".b"):
            params[name] = numpy.zeros(shape)
        else:
            params[name] = rng.normal(0.0, 0.02, size=shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters far from the init, so that nothing agrees by accident (as reference.gpt.random_params):
    embed N(0, 1), weights (in, out) N(0, 1/in), biases N(0, 0.2^2), norm weights 1 + N(0, 0.3^2)
    (N(0, 0.3^2) with norm_offset 1), lm_head N(0, 1/C)."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "embed":
            params[name] = rng.normal(0.0, 1.0, shape)
        elif name.endswith("norm.w"):
            params[name] = 1.0 - config.norm_offset + rng.normal(0.0, 0.3, shape)
        elif name.endswith(".b"):
            params[name] = rng.normal(0.0, 0.2, shape)
        elif name == "lm_head.w":
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), shape)
        else:
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
    return params


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    validate.check_param_shapes(params, param_shapes(config), "params")


def check_tokens(tokens, config: Config, name: str = "tokens", max_len: int | None = None):
    """reference.gpt.check_tokens with max_position as the context length."""
    gpt.check_tokens(tokens, _as_gpt_context(config), name=name, max_len=max_len)


@functools.lru_cache(maxsize=None)
def _as_gpt_context(config: Config) -> gpt.Config:
    """A stand-in carrying vocab_size and the context (max_position) for the shared token checks."""
    return gpt.Config(vocab_size=config.vocab_size, block_size=config.max_position, n_layer=1, n_head=1, n_embd=1,
                      bos_token=config.bos_token)  # fmt: skip


def convert_rope_layout(params: dict, config: Config, layout: str):
    """-> (params, config) of the same model with its q/k rows in `layout`: the rows of W_q and
    W_k (and their biases) are permuted within each head by nn.rope_permutation (half[j] =
    interleaved[perm[j]]), so that rotating pairs in the new layout rotates the same numbers."""
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"layout: expected one of {ROPE_LAYOUTS}, got {layout!r}")
    check_params(params, config)
    if layout == config.rope_layout:
        return dict(params), config
    hd = config.head_dim
    perm = nn.rope_permutation(hd)
    if layout == "interleaved":  # half -> interleaved: the inverse permutation
        perm = numpy.argsort(perm)
    out = dict(params)
    for i in range(config.n_layer):
        for name, heads in (("q", config.n_head), ("k", config.n_kv_head)):
            index = (numpy.arange(heads)[:, None] * hd + perm[None, :]).reshape(-1)  # (heads * hd,)
            w = f"layers.{i}.attn.{name}.w"
            out[w] = params[w][:, index]
            if config.qkv_bias:
                b = f"layers.{i}.attn.{name}.b"
                out[b] = params[b][index]
    import dataclasses

    return out, dataclasses.replace(config, rope_layout=layout)


# ----------------------------------------------------------------------------- the network


def attention_mask(key_mask, key_positions, query_positions, t_query: int, window):
    """(B, 1, Tq, Tk) bool, True where query i may attend key j:

        causal(i, j) and (key j real or j is i) and (window is None or pos_i - pos_j < W)

    key_mask: (B, Tk) bool or None (all real); key_positions (B, Tk), query_positions (B, Tq):
    position ids (the window is measured in positions: padding never counts). Without padding
    and window this is plain causal attention (gpt.padded_attention_mask, with the window added).
    """
    xp = namespace(key_positions)
    B, Tk = key_positions.shape
    keys = xp.ones((B, Tk), dtype=bool) if key_mask is None else key_mask
    allowed = gpt.padded_attention_mask(keys, t_query)  # (B, 1, Tq, Tk)
    if window is not None:
        gap = query_positions[:, None, :, None] - key_positions[:, None, None, :]  # (B, 1, Tq, Tk)
        allowed = allowed & (gap < window)
    return allowed


def block(params: dict, config: Config, i: int, x, past_k, past_v, mask, positions):
    """Block i (pre-RMSNorm) on the T newest positions, attending to cached keys/values too.

    x: (B, T, C); past_k, past_v: (B, n_kv, P, hd) (keys already rotated); mask: (B, 1, T, P+T)
    bool (`attention_mask`); positions: (B, T) position ids of the new tokens.
    Returns (x', k, v), k and v: (B, n_kv, P+T, hd).
    """
    xp = namespace(x)
    p = f"layers.{i}."
    h = nn.rms_norm(x, params[p + "attn_norm.w"], config.rms_norm_eps, config.norm_offset)
    q = nn.split_heads(nn.linear(h, params[p + "attn.q.w"], params.get(p + "attn.q.b")), config.n_head)
    k = nn.split_heads(nn.linear(h, params[p + "attn.k.w"], params.get(p + "attn.k.b")), config.n_kv_head)
    v = nn.split_heads(nn.linear(h, params[p + "attn.v.w"], params.get(p + "attn.v.b")), config.n_kv_head)
    cos, sin = nn.rope_cos_sin(positions[:, None, :], inv_freq(config, xp))  # (B, 1, T, hd/2), float64
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)  # then x's dtype (float32 params stay float32)
    q, k = nn.rope(q, cos, sin, config.rope_layout), nn.rope(k, cos, sin, config.rope_layout)
    k = xp.concatenate([past_k, k], axis=2)  # (B, n_kv, P+T, hd)
    v = xp.concatenate([past_v, v], axis=2)
    y = nn.attention(q, nn.repeat_kv(k, config.n_rep), nn.repeat_kv(v, config.n_rep), mask)  # (B, nh, T, hd)
    x = x + nn.linear(nn.merge_heads(y), params[p + "attn.o.w"])
    h = nn.rms_norm(x, params[p + "mlp_norm.w"], config.rms_norm_eps, config.norm_offset)
    return x + nn.swiglu(h, params[p + "mlp.gate.w"], params[p + "mlp.up.w"], params[p + "mlp.down.w"]), k, v


def head(params: dict, config: Config, x):
    """Final RMSNorm and the LM head: (B, T, C) -> logits (B, T, V)."""
    x = nn.rms_norm(x, params["norm.w"], config.rms_norm_eps, config.norm_offset)
    return x @ params["embed" if config.tie_word_embeddings else "lm_head.w"].T


def _run(params: dict, config: Config, tokens, cache: dict, mask=None, positions=None):
    """The network on tokens (B, T) after the cache's positions -> (logits (B, T, V), new cache).
    mask: None or (B, T) bool real tokens; positions: None (P..P+T-1) or (B, T)."""
    xp = namespace(params["embed"])
    tokens = xp.asarray(tokens)
    B, T = tokens.shape
    P = cache["length"]
    if positions is None:
        positions = xp.broadcast_to(xp.arange(P, P + T), (B, T))
    if int(positions.max()) >= config.max_position:
        raise ValueError(f"position_ids: expected positions < max_position={config.max_position}, "
                         f"got {int(positions.max())}")  # fmt: skip
    key_mask = cache.get("mask")
    if mask is not None or key_mask is not None:
        past = xp.ones((B, P), dtype=bool) if key_mask is None else key_mask
        key_mask = xp.concatenate([past, xp.ones((B, T), dtype=bool) if mask is None else mask], axis=1)
    key_positions = xp.concatenate([cache["positions"], positions], axis=1)  # (B, P+T)
    allowed = attention_mask(key_mask, key_positions, positions, T, config.sliding_window)
    x = nn.embedding(tokens, params["embed"])  # (B, T, C)
    keys, values = [], []
    for i in range(config.n_layer):
        x, k, v = block(params, config, i, x, cache["k"][i], cache["v"][i], allowed, positions)
        keys.append(k)
        values.append(v)
    logits = head(params, config, x)
    if mask is not None:
        logits = xp.where(mask[:, :, None], logits, 0.0)  # pads: logits 0, by definition
    new_cache = {"k": tuple(keys), "v": tuple(values), "length": P + T, "positions": key_positions}
    if key_mask is not None:
        new_cache["mask"] = key_mask
    return logits, new_cache


def _mask_and_positions(config: Config, tokens, attention_mask, position_ids, seen=0):
    return gpt._mask_and_positions(_as_gpt_context(config), tokens, attention_mask, position_ids, seen)


def forward(params: dict, config: Config, tokens, attention_mask=None, position_ids=None):
    """All next-token logits at once: tokens (B, T), 1 <= T <= max_position -> logits (B, T, V).

    Padded batches as reference.gpt.forward: attention_mask (B, T) of 1/0 (any pattern), position
    ids from the mask unless given (`gpt.positions_from_mask`), pads' logits 0.
    """
    check_params(params, config)
    check_tokens(tokens, config)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids)
    logits, _ = _run(params, config, tokens, init_cache(params, config, tokens.shape[0]), mask, positions)
    return logits


def log_prob(params: dict, config: Config, tokens, attention_mask=None):
    """Exact chain-rule log-likelihood in nats, bos prepended (reference.gpt.log_prob):
    sum_t log softmax(logits(bos, x_<t))[x_t] over the real tokens. tokens (B, T) -> (B,)."""
    xp = namespace(params["embed"])
    check_tokens(tokens, config)
    tokens = xp.asarray(tokens)
    if attention_mask is None:
        return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs), tokens, config.bos_token)
    mask = gpt.check_attention_mask(attention_mask, tokens.shape)
    return metrics.masked_chain_rule_log_prob(
        lambda inputs, input_mask: forward(params, config, inputs, input_mask), tokens, mask, config.bos_token)


# ----------------------------------------------------------------------------- KV cache and generation


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """An empty KV cache: per layer keys and values (B, n_kv, 0, hd), key positions (B, 0), length 0."""
    xp = namespace(params["embed"])
    empty = xp.zeros((batch, config.n_kv_head, 0, config.head_dim), dtype=params["embed"].dtype)
    return {"k": (empty,) * config.n_layer, "v": (empty,) * config.n_layer, "length": 0,
            "positions": xp.zeros((batch, 0), dtype=xp.int64)}  # fmt: skip


def prefill(params: dict, config: Config, cache: dict, tokens, attention_mask=None, position_ids=None):
    """Feed tokens (B, T) after the cached ones -> (logits (B, T, V), new cache); pure.
    Position ids continue from the real tokens cached (reference.gpt.prefill)."""
    check_tokens(tokens, config, max_len=config.max_position - cache["length"])
    if tokens.shape[0] != cache["k"][0].shape[0]:
        raise ValueError(f"tokens: expected batch {cache['k'][0].shape[0]} (the cache's), got {tokens.shape[0]}")
    xp = namespace(params["embed"])
    seen = gpt.cache_positions(cache)
    mask, positions = _mask_and_positions(config, tokens, attention_mask, position_ids, seen)
    if positions is None:
        positions = seen[:, None] + xp.arange(tokens.shape[1])[None, :]
    return _run(params, config, tokens, cache, mask, positions)


def step(params: dict, config: Config, cache: dict, tokens_t):
    """One decoding step: tokens_t (B,) at each row's next position -> (logits (B, V), new cache)."""
    xp = namespace(tokens_t)
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, xp.asarray(tokens_t)[:, None])
    return logits[:, 0], cache


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             attention_mask=None, processors=(), u=None):  # fmt: skip
    """Generation as reference.gpt.generate (the same arguments, the same loop: padded prompts,
    eos, HF's processors in HF's order, num_return_sequences, beam search with num_beams > 1).
    Returns (B', T0 + n) int64."""
    check_params(params, config)
    check_tokens(prompt, config, name="prompt")
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u)
    if run.num_beams > 1:
        if run.sample:
            raise ValueError("generation_config.do_sample: beam search here is deterministic (num_beams > 1 "
                             "needs do_sample=False)")  # fmt: skip
        return beam.as_generate_output(beam_search(
            params, config, prompt, run.num_beams, run.max_new_tokens, eos=run.eos_token_id or None,
            length_penalty=run.length_penalty, early_stopping=run.early_stopping,
            num_return_sequences=run.num_return_sequences, pad=run.pad_token_id, attention_mask=attention_mask,
            processors=run.processors, stop_sequences=run.stop_sequences))  # fmt: skip
    check_tokens(prompt, config, name="prompt", max_len=config.max_position + 1 - max(run.max_new_tokens, 1))
    xp = namespace(params["embed"])
    prompt = xp.asarray(prompt).astype(xp.int64)
    mask = None if attention_mask is None else gpt.check_attention_mask(attention_mask, prompt.shape)

    def start(x, m):  # (B, T0) -> (logits after each row's last real token (B, V), cache)
        logits, cache = prefill(params, config, init_cache(params, config, x.shape[0]), x, m)
        return gpt.last_real(logits, m), cache

    return generation.run_plan(run, prompt, mask, u, start, functools.partial(step, params, config))


def beam_search(params: dict, config: Config, prompt, beam_width: int, max_new_tokens: int, *, eos=None,
                length_penalty=1.0, early_stopping=False, num_return_sequences: int = 1, pad=None,
                attention_mask=None, processors=(), stop_sequences=()) -> beam.BeamSearchResult:  # fmt: skip
    """reference.gpt.beam_search on this model: every prefix recomputed by `forward` with its mask."""
    beam.check_arguments(prompt, beam_width, max_new_tokens, eos, length_penalty, early_stopping,
                         num_return_sequences, pad, config.vocab_size, stop_sequences)  # fmt: skip
    check_params(params, config)
    check_tokens(prompt, config, name="prompt", max_len=config.max_position + 1 - max(max_new_tokens, 1))
    mask = None if attention_mask is None else gpt.check_attention_mask(attention_mask, prompt.shape)

    def step_log_probs(prefixes, prefix_mask=None):  # (N, t) -> (N, V)
        return nn.log_softmax(gpt.last_real(forward(params, config, prefixes, prefix_mask), prefix_mask), axis=-1)

    return beam.beam_search(step_log_probs, prompt, beam_width, max_new_tokens, eos=eos,
                            length_penalty=length_penalty, early_stopping=early_stopping,
                            num_return_sequences=num_return_sequences, pad=pad, attention_mask=mask,
                            processors=processors, stop_sequences=stop_sequences)  # fmt: skip


# ----------------------------------------------------------------------------- HF interop

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_HF_LAYER = {
    "input_layernorm.weight": "attn_norm.w", "post_attention_layernorm.weight": "mlp_norm.w",
    "self_attn.q_proj.weight": "attn.q.w", "self_attn.k_proj.weight": "attn.k.w",
    "self_attn.v_proj.weight": "attn.v.w", "self_attn.o_proj.weight": "attn.o.w",
    "self_attn.q_proj.bias": "attn.q.b", "self_attn.k_proj.bias": "attn.k.b", "self_attn.v_proj.bias": "attn.v.b",
    "mlp.gate_proj.weight": "mlp.gate.w", "mlp.up_proj.weight": "mlp.up.w", "mlp.down_proj.weight": "mlp.down.w",
}  # fmt: skip
_HF_TOP = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm.w", "lm_head.weight": "lm_head.w"}
# HF settings that must have these values (anything else is refused, by name)
_HF_FIXED = {"hidden_act": "silu", "pretraining_tp": 1, "attention_bias": False, "mlp_bias": False,
             "is_encoder_decoder": False}  # fmt: skip


def _hf_rope(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope scaling) from transformers 5's `rope_parameters` or the older
    `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta = params["rope_theta"]
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = hf.get("rope_theta", 10000.0)
        scaling = hf.get("rope_scaling")
    try:
        return float(theta), check_rope_scaling(scaling)
    except ValueError as error:
        raise ValueError(f"hf_config['rope_parameters']: {str(error).removeprefix('Config.rope_scaling: ')}") from None


def config_from_hf(hf_config: dict, bos_token: int | None = None) -> Config:
    """A HF LlamaConfig / MistralConfig / Qwen2Config dict -> Config. ValueError naming
    hf_config[key] for an option this spec does not implement (other activations, o_proj or
    MLP biases, pretraining_tp > 1, Qwen2's per-layer sliding windows)."""
    hf = dict(hf_config)
    kind = hf.get("model_type")
    if kind not in MODEL_TYPES:
        raise ValueError(f"hf_config['model_type']: expected one of {tuple(MODEL_TYPES)}, got {kind!r}")
    for key, want in _HF_FIXED.items():
        if hf.get(key, want) not in (want, None):
            raise ValueError(f"hf_config[{key!r}]: expected {want!r}, got {hf[key]!r}")
    window = None
    if kind == "mistral":
        window = hf.get("sliding_window")
    elif kind == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError("hf_config['use_sliding_window']: Qwen2's per-layer sliding windows are not supported")
    layer_types = hf.get("layer_types")
    if layer_types and any(t != ("sliding_attention" if window else "full_attention") for t in layer_types):
        raise ValueError(f"hf_config['layer_types']: expected every layer "
                         f"{'sliding_attention' if window else 'full_attention'}, got {layer_types!r}")
    theta, scaling = _hf_rope(hf)
    V = hf["vocab_size"]
    bos = gpt.hf_bos_token({"vocab_size": V, "bos_token_id": hf.get("bos_token_id", 0) if bos_token is None
                            else bos_token}, bos_token)  # fmt: skip
    return Config(
        vocab_size=V, max_position=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"], n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_embd=hf["hidden_size"], intermediate_size=hf["intermediate_size"], head_dim=hf.get("head_dim"),
        rope_theta=theta, rope_scaling=scaling, rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        qkv_bias=kind == "qwen2", sliding_window=window,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)), bos_token=bos,
    )  # fmt: skip


def from_hf(state_dict: dict, hf_config: dict, bos_token: int | None = None):
    """Load a HF LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM state dict -> (params, config).

    state_dict: name -> numpy array or torch tensor; hf_config: `model.config.to_dict()`. HF's
    linear weights are (out, in): transposed here to chainrule's (in, out). HF's q/k rows are in
    the rotate-half layout: the config says rope_layout="half" (`convert_rope_layout` gives the
    interleaved one). A tied model's lm_head.weight, if present, must equal the embedding.
    bos_token: as reference.gpt.hf_bos_token (default: the config's bos_token_id).
    """
    config = config_from_hf(hf_config, bos_token)
    params, head = {}, None
    for key, value in state_dict.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some versions save: recomputed from the config
        value = gpt._as_float64(value)
        if key in _HF_TOP:
            if key == "lm_head.weight" and config.tie_word_embeddings:
                head = value
                continue
            params[_HF_TOP[key]] = value
        elif key.startswith("model.layers.") and key.split(".", 3)[3] in _HF_LAYER:
            _, _, i, rest = key.split(".", 3)
            name = _HF_LAYER[rest]
            params[f"layers.{i}.{name}"] = value.T if name.endswith(".w") and value.ndim == 2 else value
        else:
            raise ValueError(f"state_dict: unexpected key {key!r}")
    check_params(params, config)
    if head is not None and not numpy.array_equal(head, params["embed"]):
        raise ValueError("state_dict['lm_head.weight']: expected to be tied to (equal to) the embedding "
                         "(hf_config['tie_word_embeddings'] is True), got a different matrix")  # fmt: skip
    return params, config


def to_hf(params: dict, config: Config, model_type: str | None = None):
    """-> (state_dict of float64 NumPy arrays, hf config dict) for LlamaForCausalLM,
    MistralForCausalLM (a sliding window) or Qwen2ForCausalLM (q/k/v biases); model_type
    defaults to the one the config implies. The q/k rows are written in HF's rotate-half layout
    (converted from an interleaved config). `AutoModelForCausalLM.from_config(AutoConfig.for_model(
    **hf_config))` then `load_state_dict(..., strict=True)` loads it."""
    check_params(params, config)
    if model_type is None:
        model_type = "qwen2" if config.qkv_bias else ("mistral" if config.sliding_window else "llama")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {tuple(MODEL_TYPES)}, got {model_type!r}")
    if config.qkv_bias != (model_type == "qwen2"):
        raise ValueError(f"model_type: {model_type!r} {'has no' if config.qkv_bias else 'needs'} q/k/v biases "
                         f"(Config.qkv_bias={config.qkv_bias})")  # fmt: skip
    if config.sliding_window is not None and model_type != "mistral":
        raise ValueError(f"model_type: {model_type!r} has no sliding window (Config.sliding_window="
                         f"{config.sliding_window}); use 'mistral'")  # fmt: skip
    if config.norm_offset:
        raise ValueError("Config.norm_offset: Gemma's (1 + w) norm has no Llama/Mistral/Qwen2 layout")
    params, config = convert_rope_layout(params, config, "half")
    inverse_layer, inverse_top = {v: k for k, v in _HF_LAYER.items()}, {v: k for k, v in _HF_TOP.items()}
    state = {}
    for name, value in params.items():
        value = to_numpy(value).astype(numpy.float64)
        if name in inverse_top:
            state[inverse_top[name]] = value
        else:
            _, i, rest = name.split(".", 2)
            state[f"model.layers.{i}.{inverse_layer[rest]}"] = value.T.copy() if value.ndim == 2 else value
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].copy()
    rope = {"rope_type": "default", "rope_theta": float(config.rope_theta)}
    if config.rope_scaling is not None:
        rope |= config.rope_scaling
    hf = {
        "model_type": model_type, "architectures": [MODEL_TYPES[model_type]], "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd, "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_position, "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope, "hidden_act": "silu", "tie_word_embeddings": config.tie_word_embeddings,
        "attention_dropout": 0.0, "bos_token_id": config.bos_token, "eos_token_id": config.bos_token,
    }  # fmt: skip
    if model_type == "mistral":
        hf["sliding_window"] = config.sliding_window
    if model_type == "qwen2":
        hf |= {"use_sliding_window": False, "sliding_window": None}
    if model_type == "llama":
        hf |= {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1}
    return state, hf
