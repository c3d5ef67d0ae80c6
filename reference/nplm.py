"""The neural probabilistic language model of Bengio, Ducharme, Vincent & Jauvin (2003),
"A Neural Probabilistic Language Model", JMLR 3:1137-1155.

An n-gram model whose conditional is a neural network: the previous n - 1 words are
looked up in a shared embedding table C, concatenated (most recent first, as in the
paper), and mapped to the next word's logits by a tanh hidden layer plus optional
direct connections from the embeddings to the output (the paper's equation 1):

    x = ( C(w_{t-1}), C(w_{t-2}), ..., C(w_{t-n+1}) )                 ((n-1) m,)
    y = b + W x + U tanh(d + H x)                                     (V,)
    P(w_t = i | w_{t-1}, ..., w_{t-n+1}) = exp(y_i) / sum_j exp(y_j)

Parameters (a flat dict of float64 arrays; the paper's letters, linear weights
stored (in, out) as everywhere in chainrule, i.e. the paper's matrices transposed):

    C (V, m)            the word features (embedding table)
    H ((n-1) m, h)      d (h,)          the hidden layer
    U (h, V)            b (V,)          hidden-to-output weights, output biases
    W ((n-1) m, V)      the direct connections (present iff config.direct)

The window at the start of a sequence. The context of a position before the first
token holds config.bos_token, as the n - 1 "<s>" symbols that pad a sentence in an
n-gram model (and as GPT's bos convention in reference.gpt): `forward` on tokens
(B, T) gives at position t the logits after the window (x_t, x_{t-1}, ..., x_{t-n+2})
with x_s = bos for s < 0, and `log_prob` prepends one bos, so that the first word is
conditioned on the all-bos window. The cache of step-by-step generation is that
window, initialised to bos.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy

from chainrule.reference import metrics, nn, validate
from chainrule.reference import generation, sampling
from chainrule.reference.xp import namespace


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Config:
    """NPLM hyper-parameters (the paper's symbols): vocab_size |V|, order n (the model
    conditions on the n - 1 previous words), n_embd m, hidden h, direct (whether the
    direct connections W exist), bos_token (pads the window before the first token)."""

    vocab_size: int
    order: int
    n_embd: int
    hidden: int
    direct: bool = True
    bos_token: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "order", "n_embd", "hidden"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {value!r}")
        if not isinstance(self.direct, bool):
            raise ValueError(f"Config.direct: expected a bool, got {self.direct!r}")
        bos = self.bos_token
        if not _is_int(bos) or not 0 <= bos < self.vocab_size:
            raise ValueError(f"Config.bos_token: expected an int in [0, {self.vocab_size}), got {bos!r}")

    @property
    def context(self) -> int:
        """n - 1, the number of previous words the model sees."""
        return self.order - 1


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (the contract `check_params` enforces)."""
    V, m, h, k = config.vocab_size, config.n_embd, config.hidden, config.context
    shapes = {"C": (V, m), "H": (k * m, h), "d": (h,), "U": (h, V), "b": (V,)}
    return shapes | ({"W": (k * m, V)} if config.direct else {})


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """A training initialization: weight matrices (H, U, W) U(-r, r) with r = 1/sqrt(fan_in),
    biases (d, b) 0, features C U(-0.01, 0.01). Float64 NumPy arrays."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name in ("d", "b"):
            params[name] = numpy.zeros(shape)
        elif name == "C":
            params[name] = rng.uniform(-0.01, 0.01, shape)
        else:
            r = 1.0 / math.sqrt(max(shape[0], 1))
            params[name] = rng.uniform(-r, r, shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters for tests: C N(0, 1), H, U, W N(0, 1/fan_in), d, b N(0, 0.3^2) -- O(1)
    hidden pre-activations and logits, so every context word visibly moves the output
    (the paper's small init makes the model nearly uniform, which hides bugs)."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "C":
            params[name] = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 1:
            params[name] = rng.normal(0.0, 0.3, shape)
        else:
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(max(shape[0], 1)), shape)
    return params


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    try:
        validate.check_param_shapes(params, param_shapes(config), "params")
    except ValueError as error:
        if str(error) != "params: unexpected parameters ['W']":
            raise
        raise ValueError(f"{error} (config.direct is False: no direct connections W)") from None


def check_tokens(tokens, config: Config, name: str = "tokens", min_len: int = 1) -> None:
    """ValueError unless `tokens` is a (B, T) integer array with ids in [0, V) and T >= min_len."""
    if getattr(getattr(tokens, "dtype", None), "kind", None) not in ("i", "u"):
        raise ValueError(f"{name}: expected an integer array, got {getattr(tokens, 'dtype', type(tokens))}")
    if tokens.ndim != 2:
        raise ValueError(f"{name}: expected shape (B, T), got {tuple(tokens.shape)}")
    if tokens.shape[1] < min_len:
        raise ValueError(f"{name}: expected length T >= {min_len}, got T={tokens.shape[1]}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size):
        bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
        raise ValueError(f"{name}: token ids must lie in [0, {config.vocab_size}), got {bad}")


# ----------------------------------------------------------------------------- the network


def conditional_logits(params: dict, config: Config, window):
    """y = b + W x + U tanh(d + H x) for windows of the n - 1 previous words.

    window: (..., n-1) int, most recent word first (window[..., 0] = w_{t-1}) -> y (..., V).
    """
    xp = namespace(params)
    window = xp.asarray(window)
    x = nn.embedding(window, params["C"])  # (..., n-1, m)
    x = x.reshape(window.shape[:-1] + (config.context * config.n_embd,))  # (..., (n-1) m): concatenation
    a = xp.tanh(nn.linear(x, params["H"], params["d"]))  # (..., h)
    y = nn.linear(a, params["U"], params["b"])  # (..., V)
    if config.direct:
        y = y + x @ params["W"]  # (..., V)
    return y


def windows(config: Config, tokens):
    """The window of every position: out[b, t, j] = tokens[b, t - j], bos where t - j < 0.

    tokens: (B, T) -> (B, T, n-1) int, most recent first (out[:, t, 0] = tokens[:, t]).
    """
    xp = namespace(tokens)
    B, T = tokens.shape
    k = config.context
    padded = xp.concatenate([xp.full((B, k), config.bos_token, dtype=tokens.dtype), tokens], axis=1)  # (B, k+T)
    out = xp.zeros((B, T, k), dtype=tokens.dtype)
    for t in range(T):
        for j in range(k):
            out[:, t, j] = padded[:, k + t - j]  # tokens[:, t - j]
    return out


def forward(params: dict, config: Config, tokens):
    """All next-token logits at once (teacher forcing).

    tokens: (B, T) int, T >= 1 -> logits (B, T, V) float64; logits[:, t] is the
    distribution of the token after tokens[:, :t+1], which depends on the window
    tokens[:, t-n+2 .. t] only (bos before the start). No token is prepended: see `log_prob`.
    """
    xp = namespace(params)
    check_params(params, config)
    check_tokens(tokens, config)
    return conditional_logits(params, config, windows(config, xp.asarray(tokens)))


def log_prob(params: dict, config: Config, tokens):
    """Exact chain-rule log-likelihood in nats, bos = config.bos_token prepended:

        log p(x_1..x_T) = sum_{t=1}^{T} log P(x_t | x_{t-1}, ..., x_{t-n+1}),   x_s = bos for s < 1

    tokens: (B, T), T >= 1 -> (B,) float64.
    """
    xp = namespace(params)
    check_tokens(tokens, config)
    return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs), xp.asarray(tokens),
                                       config.bos_token)


# ----------------------------------------------------------------------------- the window as a cache


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """The window before any token: {"window": (B, n-1) all bos (most recent first), "length": 0}."""
    check_params(params, config)
    xp = namespace(params)
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    return {"window": xp.full((int(batch), config.context), config.bos_token, dtype=xp.int64), "length": 0}


def _check_cache(cache, config: Config) -> int:
    if not isinstance(cache, dict) or set(cache) != {"window", "length"}:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected a dict with keys ['length', 'window'] (from init_cache), got {got}")
    if cache["window"].ndim != 2 or cache["window"].shape[1] != config.context:
        raise ValueError(f"cache['window']: expected shape (B, {config.context}), got {tuple(cache['window'].shape)}")
    return cache["window"].shape[0]


def prefill(params: dict, config: Config, cache: dict, tokens):
    """Feed tokens (B, T) after the cached window -> (logits (B, T, V), new cache). Pure."""
    xp = namespace(params)
    check_params(params, config)
    batch = _check_cache(cache, config)
    check_tokens(tokens, config)
    if tokens.shape[0] != batch:
        raise ValueError(f"tokens: expected batch {batch} (the cache's), got {tokens.shape[0]}")
    tokens = xp.asarray(tokens).astype(xp.int64)
    k, T = config.context, tokens.shape[1]
    history = xp.concatenate([xp.flip(cache["window"], axis=1), tokens], axis=1)  # (B, k+T), oldest first
    window = xp.stack([xp.flip(history[:, t + 1 : t + 1 + k], axis=1) for t in range(T)], axis=1)  # (B, T, k)
    logits = conditional_logits(params, config, window)  # (B, T, V)
    new = {"window": xp.flip(history[:, T:], axis=1).copy(), "length": cache["length"] + T}
    return logits, new


def step(params: dict, config: Config, cache: dict, tokens_t):
    """One step: tokens_t (B,) -> (logits_t (B, V), new cache). Pure: returns a new cache."""
    xp = namespace(tokens_t)
    if getattr(tokens_t, "ndim", None) != 1:
        raise ValueError(f"tokens_t: expected shape (B,), got {getattr(tokens_t, 'shape', type(tokens_t))}")
    logits, cache = prefill(params, config, cache, xp.asarray(tokens_t)[:, None])
    return logits[:, 0], cache


# ----------------------------------------------------------------------------- generation


def generate(params: dict, config: Config, prompt, max_new_tokens: int | None = None, *, generation_config=None,
             processors=(), u=None):  # fmt: skip
    """Autoregressive generation through the window.

    prompt: (B, T0) int, T0 >= 1, fed as it is (prepend config.bos_token yourself to
    sample from the distribution `log_prob` scores). At each step the last logits pass
    through `processors` (callables (B, V) -> (B, V), in order), then the next token is
      - u is None: the argmax (first index on ties)                    -> greedy;
      - u (B, max_new_tokens) uniforms in [0, 1): inverse-CDF sample with u[:, n].
    generation_config (reference.generation.GenerationConfig: eos_token_id, min_new_tokens,
    repetition_penalty, do_sample, top_k, ...; HF's names and order, as reference.gpt.generate)
    and eos: rows that finish hold pad, the loop stops when all have.
    Returns (B', T0 + n) int64, the prompt followed by the n <= max_new_tokens new tokens.
    """
    xp = namespace(params)
    check_params(params, config)
    check_tokens(prompt, config, name="prompt")
    run = generation.plan(generation_config, prompt.shape[1], config.vocab_size, max_new_tokens, processors, u)
    run.without_beams("reference.nplm")
    N = run.max_new_tokens
    prompt = xp.repeat(xp.asarray(prompt).astype(xp.int64), run.num_return_sequences, axis=0)
    B = prompt.shape[0]
    u = sampling.check_uniforms(u, (B, N), xp)
    if N == 0:
        return prompt
    logits, cache = prefill(params, config, init_cache(params, config, B), prompt)
    step_fn = functools.partial(step, params, config)  # (cache, tokens (B,)) -> (logits (B, V), new cache)
    new = generation.decode(logits[:, -1], cache, step_fn, prompt, N, u=u, **run.decode_kwargs())
    return xp.concatenate([prompt, new], axis=1)  # (B, T0 + n)


def greedy(params: dict, config: Config, prompt, max_new_tokens: int):
    """Greedy decoding: generate with the argmax at every step (first index on ties)."""
    return generate(params, config, prompt, max_new_tokens)


def sample(params: dict, config: Config, rng: numpy.random.Generator, prompt, max_new_tokens: int, processors=()):
    """Ancestral sampling: u = rng.random((B, max_new_tokens)), then `generate` with those uniforms."""
    u = rng.random((prompt.shape[0], max_new_tokens))
    return generate(params, config, prompt, max_new_tokens, processors=processors, u=u)
