"""Recurrent networks (Elman, LSTM, GRU) and the recurrent language model.

Part 1, the recurrent layers, with torch.nn.RNN / LSTM / GRU semantics and state_dicts:

    Elman (Elman 1990, "Finding Structure in Time"):
        h_t = act( W_ih x_t + b_ih + W_hh h_{t-1} + b_hh ),    act = tanh or relu

    LSTM (Hochreiter & Schmidhuber 1997, "Long Short-Term Memory", with the forget gate of
    Gers, Schmidhuber & Cummins 2000, "Learning to Forget"; no peepholes):
        [i f g o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          (gate order i, f, g, o)
        i, f, o = sigmoid(.)    g = tanh(.)
        c_t = f * c_{t-1} + i * g        h_t = o * tanh(c_t)

    GRU (Cho et al. 2014, "Learning Phrase Representations using RNN Encoder-Decoder"):
        [r_i z_i n_i] = W_ih x_t + b_ih      [r_h z_h n_h] = W_hh h_{t-1} + b_hh   (gate order r, z, n)
        r = sigmoid(r_i + r_h)    z = sigmoid(z_i + z_h)
        n = tanh( n_i + r * n_h )            (= tanh(W_in x + b_in + r * (W_hn h + b_hn)))
        h_t = (1 - z) * n + z * h_{t-1}
    The reset gate acts AFTER the recurrent product, as in torch and cuDNN; Cho et al.
    write it before, tanh(W x + U (r * h)), which is a different function of the weights.

Layers are stacked: layer l > 0 reads the outputs h_t of layer l - 1. Inputs are
batch first, x: (B, T, I); the functions return (outputs (B, T, H) of the last layer,
final state), the final state shaped like torch's: h_n (L, B, H), and (h_n, c_n)
for the LSTM.

Parameters: EXACTLY the names and layouts of a torch.nn.RNN/LSTM/GRU state_dict,

    weight_ih_l{k} (G H, I_k)   weight_hh_l{k} (G H, H)   bias_ih_l{k} (G H,)   bias_hh_l{k} (G H,)

with G = 1 (Elman), 4 (LSTM), 3 (GRU), I_0 = input size, I_k = H for k > 0, and the
gates stacked along the rows in the orders above. This is the one deliberate
exception to chainrule's (in, out) convention for linear weights: these weights
are (out, in), applied as x W^T, so that `module.state_dict()` loads directly.
Both biases may be absent (a module built with bias=False); bidirectional modules
and LSTM projections (proj_size > 0) are not implemented and are refused.

Part 2, the recurrent language model (Mikolov et al. 2010, "Recurrent neural network
based language model"; with LSTM or GRU cells in place of the Elman layer):

    e_t = W_te[x_t]                              embedding (V, E)
    h_t = RNN(e_t, h_{t-1})                      n_layer recurrent layers, hidden H
    logits_t = h_t W_head + b_head               (H, V), (V,)     (in, out, as everywhere else)
    p(x_1..x_T) = prod_t softmax(logits(bos, x_1..x_{t-1}))[x_t]

Parameters: wte (V, E), rnn.{torch state_dict name} (the recurrent stack, above),
head.w (H, V), head.b (V,). Mikolov's RNNLM used a sigmoid hidden layer on a one-hot
input (a one-hot vector times a matrix is an embedding lookup); here the Elman layer
uses torch's tanh (or relu), so that torch's modules are the peer.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy

from chainrule.reference import metrics, nn, validate
from chainrule.reference import generation, sampling
from chainrule.reference.xp import namespace, special

# ============================================================================= recurrent layers

MODES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x)), without overflow for large |x| (scipy's expit)."""
    return special(namespace(x)).expit(x)


def layer_shapes(mode: str, input_size: int, hidden: int, num_layers: int, bias: bool = True) -> dict:
    """Name -> shape of every parameter of a torch recurrent module (its state_dict)."""
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    G, H = GATES[mode], hidden
    shapes = {}
    for k in range(num_layers):
        shapes[f"weight_ih_l{k}"] = (G * H, input_size if k == 0 else H)
        shapes[f"weight_hh_l{k}"] = (G * H, H)
        if bias:
            shapes[f"bias_ih_l{k}"] = (G * H,)
            shapes[f"bias_hh_l{k}"] = (G * H,)
    return shapes


def layer_sizes(params: dict, mode: str, name: str = "params") -> tuple[int, int, int, bool]:
    """(input_size, hidden, num_layers, bias) read off a torch-style recurrent state_dict,
    after checking every key and shape: ValueError naming the key otherwise."""
    if not isinstance(params, dict):
        raise ValueError(f"{name}: expected a dict name -> array (a torch state_dict), got {type(params).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    for key in params:
        if not _KEY.match(key):
            why = ""
            if key.endswith("_reverse"):
                why = " (bidirectional modules are not implemented)"
            elif key.startswith("weight_hr"):
                why = " (LSTM projections, proj_size > 0, are not implemented)"
            raise ValueError(f"{name}: unexpected parameter {key!r}{why}; expected weight_ih_l<k>, weight_hh_l<k>, "
                             f"bias_ih_l<k>, bias_hh_l<k>")  # fmt: skip
    for key in ("weight_ih_l0", "weight_hh_l0"):
        if key not in params:
            raise ValueError(f"{name}: missing parameter {key!r}")
    w_hh = params["weight_hh_l0"]
    if len(w_hh.shape) != 2:
        raise ValueError(f"{name}['weight_hh_l0']: expected a 2-D (G*H, H) matrix, got shape {tuple(w_hh.shape)}")
    H = int(w_hh.shape[1])
    w_ih = params["weight_ih_l0"]
    if len(w_ih.shape) != 2:
        raise ValueError(f"{name}['weight_ih_l0']: expected a 2-D (G*H, I) matrix, got shape {tuple(w_ih.shape)}")
    I = int(w_ih.shape[1])
    L = 1 + max(int(_KEY.match(key).group(2)) for key in params)
    bias = "bias_ih_l0" in params or "bias_hh_l0" in params
    expected = layer_shapes(mode, I, H, L, bias)
    for key, shape in expected.items():
        if key not in params:
            raise ValueError(f"{name}: missing parameter {key!r} (expected shape {shape})")
        if tuple(params[key].shape) != shape:
            raise ValueError(f"{name}[{key!r}]: expected shape {shape} ({mode}, {GATES[mode]} gate(s) x hidden "
                             f"{H}), got {tuple(params[key].shape)}")  # fmt: skip
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"{name}: unexpected parameters {extra} (biases must be given for every layer or none)")
    return I, H, L, bias


def _check_input(x, input_size: int):
    if getattr(getattr(x, "dtype", None), "kind", None) != "f":
        raise ValueError(f"x: expected a floating array (B, T, I), got {getattr(x, 'dtype', type(x))}")
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (B, T, I) (batch first), got {tuple(x.shape)}")
    if x.shape[1] < 1:
        raise ValueError(f"x: expected at least one time step, got T={x.shape[1]}")
    if x.shape[2] != input_size:
        raise ValueError(f"x: expected input size I={input_size} (weight_ih_l0 is (G*H, I)), got {x.shape[2]}")


def _check_state(h, name: str, shape: tuple):
    if getattr(getattr(h, "dtype", None), "kind", None) != "f" or tuple(h.shape) != shape:
        got = f"{getattr(h, 'dtype', type(h))} {tuple(getattr(h, 'shape', ()))}"
        raise ValueError(f"{name}: expected a floating array of shape {shape} (num_layers, B, H), got {got}")


def _affine(x, w, b):
    """x W^T + b with torch's (out, in) weight layout.   x: (B, in), w: (out, in) -> (B, out)."""
    y = x @ w.T
    return y if b is None else y + b


def elman_cell(x, h, w_ih, w_hh, b_ih, b_hh, nonlinearity: str = "tanh"):
    """One Elman step: h' = act(W_ih x + b_ih + W_hh h + b_hh).   x: (B, I), h: (B, H) -> (B, H)."""
    xp = namespace(x)
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)  # (B, H)
    return xp.tanh(a) if nonlinearity == "tanh" else xp.maximum(a, 0)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step -> (h', c').   x: (B, I), h, c: (B, H).   Gates i, f, g, o (torch's order)."""
    xp = namespace(x)
    i, f, g, o = xp.split(_affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh), 4, axis=-1)  # 4 x (B, H)
    c_new = sigmoid(f) * c + sigmoid(i) * xp.tanh(g)  # (B, H)
    return sigmoid(o) * xp.tanh(c_new), c_new


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step -> h'.   x: (B, I), h: (B, H).   Gates r, z, n; r multiplies (W_hn h + b_hn)."""
    xp = namespace(x)
    r_i, z_i, n_i = xp.split(_affine(x, w_ih, b_ih), 3, axis=-1)  # 3 x (B, H)
    r_h, z_h, n_h = xp.split(_affine(h, w_hh, b_hh), 3, axis=-1)  # 3 x (B, H)
    r, z = sigmoid(r_i + r_h), sigmoid(z_i + z_h)
    n = xp.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h


def _layers(mode: str, params: dict, x, h0, c0):
    """The stacked recurrence. x: (B, T, I); h0, c0: (L, B, H) -> (outputs (B, T, H), h_n, c_n)."""
    xp = namespace(x, params)
    I, H, L, bias = layer_sizes(params, mode)
    _check_input(x, I)
    B, T, _ = x.shape
    dtype = xp.result_type(x, params["weight_ih_l0"])
    if h0 is None:
        h0 = xp.zeros((L, B, H), dtype=dtype)
    _check_state(h0, "h0" if mode != "lstm" else "state[0] (h0)", (L, B, H))
    if mode == "lstm":
        if c0 is None:
            c0 = xp.zeros((L, B, H), dtype=dtype)
        _check_state(c0, "state[1] (c0)", (L, B, H))
    h_n, c_n = [], []
    for k in range(L):
        w_ih, w_hh = params[f"weight_ih_l{k}"], params[f"weight_hh_l{k}"]
        b_ih, b_hh = (params[f"bias_ih_l{k}"], params[f"bias_hh_l{k}"]) if bias else (None, None)
        h, c = h0[k], (c0[k] if mode == "lstm" else None)  # (B, H)
        outputs = []
        for t in range(T):
            if mode == "lstm":
                h, c = lstm_cell(x[:, t], h, c, w_ih, w_hh, b_ih, b_hh)
            elif mode == "gru":
                h = gru_cell(x[:, t], h, w_ih, w_hh, b_ih, b_hh)
            else:
                h = elman_cell(x[:, t], h, w_ih, w_hh, b_ih, b_hh, "tanh" if mode == "rnn_tanh" else "relu")
            outputs.append(h)
        x = xp.stack(outputs, axis=1)  # (B, T, H): the input of the next layer
        h_n.append(h)
        c_n.append(c)
    return x, xp.stack(h_n), (xp.stack(c_n) if mode == "lstm" else None)


def rnn_tanh(params: dict, x, h0=None):
    """Elman layers with tanh, as torch.nn.RNN(nonlinearity="tanh", batch_first=True).

    params: a torch.nn.RNN state_dict (weight_ih_l{k} (H, I_k), weight_hh_l{k} (H, H),
    bias_ih_l{k}, bias_hh_l{k} (H,)); x: (B, T, I); h0: (L, B, H) or None (zeros).
    Returns (outputs (B, T, H), h_n (L, B, H)).
    """
    out, h_n, _ = _layers("rnn_tanh", params, x, h0, None)
    return out, h_n


def rnn_relu(params: dict, x, h0=None):
    """Elman layers with relu, as torch.nn.RNN(nonlinearity="relu", batch_first=True). See rnn_tanh."""
    out, h_n, _ = _layers("rnn_relu", params, x, h0, None)
    return out, h_n


def lstm(params: dict, x, state=None):
    """LSTM layers, as torch.nn.LSTM(batch_first=True).

    params: a torch.nn.LSTM state_dict (weights (4H, I_k) and (4H, H), gates i, f, g, o);
    x: (B, T, I); state: (h0, c0), each (L, B, H), or None (zeros).
    Returns (outputs (B, T, H), (h_n, c_n)), h_n and c_n (L, B, H).
    """
    if state is None:
        h0 = c0 = None
    elif isinstance(state, (tuple, list)) and len(state) == 2:
        h0, c0 = state
    else:
        raise ValueError(f"state: expected None or a pair (h0, c0) of (L, B, H) arrays, got {type(state).__name__}")
    out, h_n, c_n = _layers("lstm", params, x, h0, c0)
    return out, (h_n, c_n)


def gru(params: dict, x, h0=None):
    """GRU layers, as torch.nn.GRU(batch_first=True).

    params: a torch.nn.GRU state_dict (weights (3H, I_k) and (3H, H), gates r, z, n);
    x: (B, T, I); h0: (L, B, H) or None (zeros). Returns (outputs (B, T, H), h_n (L, B, H)).
    """
    out, h_n, _ = _layers("gru", params, x, h0, None)
    return out, h_n


# ============================================================================= the language model

KINDS = ("elman", "lstm", "gru")


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Config:
    """Recurrent LM hyper-parameters.

    kind: "elman" | "lstm" | "gru"; nonlinearity: "tanh" | "relu" (Elman only);
    vocab_size V, n_embd E (embedding size), hidden H, n_layer L; bos_token: the id
    fed before the first token (log_prob conditions the first token on it).
    """

    kind: str
    vocab_size: int
    n_embd: int
    hidden: int
    n_layer: int = 1
    nonlinearity: str = "tanh"
    bos_token: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Config.kind: expected one of {KINDS}, got {self.kind!r}")
        for name in ("vocab_size", "n_embd", "hidden", "n_layer"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"Config.{name}: expected a positive int, got {value!r}")
        allowed = ("tanh", "relu") if self.kind == "elman" else ("tanh",)
        if self.nonlinearity not in allowed:
            raise ValueError(f"Config.nonlinearity: expected one of {allowed} for kind {self.kind!r}, "
                             f"got {self.nonlinearity!r}")  # fmt: skip
        bos = self.bos_token
        if not _is_int(bos) or not 0 <= bos < self.vocab_size:
            raise ValueError(f"Config.bos_token: expected an int in [0, {self.vocab_size}), got {bos!r}")

    @property
    def mode(self) -> str:
        """The recurrent layer: "rnn_tanh", "rnn_relu", "lstm" or "gru"."""
        return {"lstm": "lstm", "gru": "gru"}.get(self.kind, "rnn_" + self.nonlinearity)


def param_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter (the contract `check_params` enforces)."""
    V, E, H = config.vocab_size, config.n_embd, config.hidden
    shapes = {"wte": (V, E)}
    for key, shape in layer_shapes(config.mode, E, H, config.n_layer).items():
        shapes["rnn." + key] = shape
    return shapes | {"head.w": (H, V), "head.b": (V,)}


def init(config: Config, rng: numpy.random.Generator) -> dict:
    """torch's initialization: recurrent weights and biases U(-1/sqrt(H), 1/sqrt(H)) (as
    torch.nn.RNN/LSTM/GRU), embedding N(0, 1) (as torch.nn.Embedding), head weight and bias
    U(-1/sqrt(H), 1/sqrt(H)) (as torch.nn.Linear). Float64 NumPy arrays."""
    bound = 1.0 / math.sqrt(config.hidden)
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "wte":
            params[name] = rng.normal(0.0, 1.0, shape)
        else:
            params[name] = rng.uniform(-bound, bound, shape)
    return params


def random_params(config: Config, rng: numpy.random.Generator) -> dict:
    """Parameters for tests: wte N(0, 1), recurrent weights N(0, 1/fan_in), biases N(0, 0.3^2),
    head.w N(0, 1/H), head.b N(0, 0.3^2) -- O(1) pre-activations, so that gates are neither
    saturated nor at 1/2 and every input visibly moves the output. Float64 NumPy arrays."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "wte":
            params[name] = rng.normal(0.0, 1.0, shape)
        elif len(shape) == 1:
            params[name] = rng.normal(0.0, 0.3, shape)
        elif name == "head.w":
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[0]), shape)
        else:  # torch layout (out, in)
            params[name] = rng.normal(0.0, 1.0 / math.sqrt(shape[1]), shape)
    return params


def recurrent_params(params: dict) -> dict:
    """The recurrent stack's parameters with their torch state_dict names (the "rnn." prefix removed)."""
    return {k[len("rnn.") :]: v for k, v in params.items() if k.startswith("rnn.")}


def check_params(params: dict, config: Config) -> None:
    """ValueError naming the key for a missing, unexpected or mis-shaped parameter."""
    validate.check_param_shapes(params, param_shapes(config), "params")


def check_tokens(tokens, config, name: str = "tokens", min_len: int = 1) -> None:
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


def _state(cache: dict):
    """The recurrent state of a cache, as the layer functions take it."""
    return (cache["h"], cache["c"]) if "c" in cache else cache["h"]


def _run(params: dict, config: Config, tokens, cache: dict):
    """The network on tokens (B, T) after the cache's state -> (logits (B, T, V), new cache)."""
    xp = namespace(params)
    x = nn.embedding(xp.asarray(tokens), params["wte"])  # (B, T, E)
    rnn = recurrent_params(params)
    if config.kind == "lstm":
        out, (h, c) = lstm(rnn, x, _state(cache))  # (B, T, H)
        new = {"h": h, "c": c}
    else:
        layer = {"rnn_tanh": rnn_tanh, "rnn_relu": rnn_relu, "gru": gru}[config.mode]
        out, h = layer(rnn, x, _state(cache))  # (B, T, H)
        new = {"h": h}
    logits = nn.linear(out, params["head.w"], params["head.b"])  # (B, T, V)
    return logits, new | {"length": cache["length"] + tokens.shape[1]}


def forward(params: dict, config: Config, tokens):
    """All next-token logits at once (teacher forcing), from the zero initial state.

    tokens: (B, T) int, T >= 1 -> logits (B, T, V) float64, where logits[:, t] is the
    distribution of the token that follows tokens[:, :t+1]. No token is prepended: see
    `log_prob` for the bos convention.
    """
    check_params(params, config)
    check_tokens(tokens, config)
    logits, _ = _run(params, config, tokens, init_cache(params, config, tokens.shape[0]))
    return logits


def log_prob(params: dict, config: Config, tokens):
    """Exact chain-rule log-likelihood in nats, bos = config.bos_token prepended:

        log p(x_1..x_T) = sum_{t=1}^{T} log softmax(logits(bos, x_1..x_{t-1}))[x_t]

    tokens: (B, T), T >= 1 -> (B,) float64.
    """
    xp = namespace(params)
    check_tokens(tokens, config)
    return metrics.chain_rule_log_prob(lambda inputs: forward(params, config, inputs), xp.asarray(tokens),
                                       config.bos_token)


# ----------------------------------------------------------------------------- recurrent state


def init_cache(params: dict, config: Config, batch: int) -> dict:
    """The initial state: {"h": zeros (L, B, H)} (+ "c" for the LSTM), in the params' dtype, length 0."""
    check_params(params, config)
    xp = namespace(params)
    if not _is_int(batch) or batch < 1:
        raise ValueError(f"batch: expected a positive int, got {batch!r}")
    zeros = xp.zeros((config.n_layer, int(batch), config.hidden), dtype=params["wte"].dtype)
    cache = {"h": zeros, "length": 0}
    return cache | {"c": zeros.copy()} if config.kind == "lstm" else cache


def _check_cache(cache, config: Config) -> int:
    keys = {"h", "length"} | ({"c"} if config.kind == "lstm" else set())
    if not isinstance(cache, dict) or set(cache) != keys:
        got = sorted(cache) if isinstance(cache, dict) else type(cache).__name__
        raise ValueError(f"cache: expected a dict with keys {sorted(keys)} (from init_cache), got {got}")
    return cache["h"].shape[1]


def prefill(params: dict, config: Config, cache: dict, tokens):
    """Feed tokens (B, T) after the cached state -> (logits (B, T, V), new cache).

    Pure: the input cache is left as it was. Any split of a sequence into chunks gives
    the logits of `forward` on the whole.
    """
    check_params(params, config)
    batch = _check_cache(cache, config)
    check_tokens(tokens, config)
    if tokens.shape[0] != batch:
        raise ValueError(f"tokens: expected batch {batch} (the cache's), got {tokens.shape[0]}")
    return _run(params, config, tokens, cache)


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
    """Autoregressive generation, one token at a time through the recurrent state.

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
    run.without_beams("reference.rnn")
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
