"""The sequential bottleneck, as arithmetic: what one decoding step of a GPT costs.

Generating T tokens takes T sequential forward passes. Each step feeds one new
token per sequence through the network, attending over the KV cache of the
tokens before it. Per sequence and per step, with L layers, width C, vocabulary
V and n cached positions, the multiply-adds are

    O(C^2 L)  in the weight matmuls (attention projections and MLP),
    O(n C L)  in the attention over the cache,
    O(C V)    in the LM head,

while the memory traffic is every weight read once (shared by the whole batch)
plus every sequence's keys and values read once. With one sequence a step does
about 2 FLOPs per weight read, i.e. 0.5 FLOP per float32 byte; no processor
keeps its arithmetic units busy at that intensity, so decoding is limited by
memory bandwidth: the roofline

    tokens/s <= batch * bandwidth / bytes_per_step.

Batching raises the FLOPs per weight byte until the step becomes compute bound
(`crossover_batch`); the KV cache, read once per sequence, does not amortize.

All functions are plain integer/float arithmetic on a `reference.gpt.Config`
(or anything with vocab_size, block_size, n_layer, n_head, n_embd).

Conventions:
  * one multiply-add counts as 2 FLOPs;
  * counted: the matmuls with weights (qkv, attention output projection, MLP
    fc and proj, the tied LM head), and the attention products Q K^T and A V;
  * not counted: bias additions, LayerNorm, softmax, GELU, the residual adds
    and the embedding lookups (elementwise, O(C) or O(n) per token, and
    bandwidth-free since they touch activations only);
  * `context_len` is the number of key/value positions a step attends to,
    its own position included (the cache length after the step).
"""

from __future__ import annotations

import math

_DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def dtype_bytes(dtype) -> int:
    """Bytes per element of a dtype name ("float32"), NumPy or torch dtype, or an int (returned as is)."""
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype < 1:
            raise ValueError(f"dtype_bytes: expected a positive byte count, got {dtype}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"dtype: expected one of {sorted(_DTYPE_BYTES)} or a byte count, got {dtype!r}")
    return _DTYPE_BYTES[name]


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


# ----------------------------------------------------------------------------- parameters


def param_count(config) -> int:
    """Number of parameters of the GPT of `config` (the LM head is tied to wte, counted once):

        V C + block_size C                      token and position embeddings
        + L (12 C^2 + 13 C)                     per block: qkv 3C^2+3C, proj C^2+C,
                                                fc 4C^2+4C, proj 4C^2+C, two LayerNorms 4C
        + 2 C                                   final LayerNorm

    GPT-2 small (V=50257, block 1024, L=12, C=768): 124,439,808. With an MLP of hidden size
    F = config.inner_dim the blocks hold L (4 C^2 + 2 C F + 9 C + F); an untied head adds V C.
    """
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    F = getattr(config, "inner_dim", 4 * C)
    head = 0 if getattr(config, "tie_word_embeddings", True) else V * C
    return V * C + config.block_size * C + L * (4 * C * C + 2 * C * F + 9 * C + F) + 2 * C + head


def weight_bytes_per_step(config, dtype=4) -> int:
    """Bytes of weights one decoding step reads: every parameter once, except wpe, of which
    only the row of the current position is read (C values).

        (param_count - block_size C + C) * dtype_bytes

    The batch shares the read: this does not grow with the batch size. wte is read
    once for the LM head; the embedding lookup reuses it (tied weights, counted once).
    (An untied head is read whole as well; wte is then counted whole too, an upper bound.)
    """
    C = config.n_embd
    return (param_count(config) - config.block_size * C + C) * dtype_bytes(dtype)


# ----------------------------------------------------------------------------- KV cache


def kv_cache_bytes(batch: int, length: int, n_layer: int, n_head: int, head_dim: int, dtype=4) -> int:
    """Bytes of a KV cache: keys AND values of every layer, head and position.

        2 * batch * length * n_layer * n_head * head_dim * dtype_bytes

    GPT-2 small in float32 (L=12, 12 heads of 64): 73,728 bytes per token per sequence.
    """
    for name, value in (("batch", batch), ("length", length), ("n_layer", n_layer),
                        ("n_head", n_head), ("head_dim", head_dim)):  # fmt: skip
        _positive(name, value)
    return 2 * batch * length * n_layer * n_head * head_dim * dtype_bytes(dtype)


def config_kv_cache_bytes(config, batch: int, length: int, dtype=4) -> int:
    """`kv_cache_bytes` with the layer and head sizes of a GPT config."""
    return kv_cache_bytes(batch, length, config.n_layer, config.n_head, config.head_dim, dtype)


# ----------------------------------------------------------------------------- one decoding step


def decode_step_flops(config, context_len: int, batch: int = 1) -> int:
    """FLOPs of one decoding step (one new token for each of `batch` sequences):

        batch * ( L * (24 C^2 + 4 C n) + 2 C V )

    per layer and token: qkv 2*C*3C, output projection 2*C*C, MLP 2*C*4C + 2*4C*C
    (together 24 C^2; 8 C^2 + 4 C F with an MLP of hidden size F = config.inner_dim);
    attention Q K^T 2*C*n and A V 2*n*C over n = context_len positions (summed over
    heads: n_head * head_dim = C); LM head 2*C*V.
    Excluded: biases, LayerNorm, softmax, GELU, residuals, embedding lookups.
    """
    _positive("context_len", context_len)
    _positive("batch", batch)
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    F = getattr(config, "inner_dim", 4 * C)
    if context_len > config.block_size:
        raise ValueError(f"context_len: expected at most block_size={config.block_size}, got {context_len}")
    return batch * (L * (8 * C * C + 4 * C * F + 4 * C * context_len) + 2 * C * V)


def decode_step_bytes(config, context_len: int, batch: int = 1, dtype=4) -> int:
    """Bytes one decoding step must read from memory:

        weight_bytes_per_step(config)                 once, shared by the batch
        + kv_cache_bytes(batch, context_len, ...)     every sequence's keys and values

    Activations (O(batch C) per layer) and the one new key/value written per
    layer are ignored: they are small and stay in cache.
    """
    _positive("context_len", context_len)
    _positive("batch", batch)
    return weight_bytes_per_step(config, dtype) + config_kv_cache_bytes(config, batch, context_len, dtype)


def arithmetic_intensity(config, context_len: int, batch: int = 1, dtype=4) -> float:
    """FLOPs per byte moved of one decoding step: decode_step_flops / decode_step_bytes.

    While the weights dominate the traffic it is about 2 * batch / dtype_bytes
    (2 FLOPs per weight, shared by the batch); once the KV cache dominates it
    saturates at the attention's own intensity, 4 C n / (2 n C dtype_bytes) =
    2 / dtype_bytes, whatever the batch.
    """
    return decode_step_flops(config, context_len, batch) / decode_step_bytes(config, context_len, batch, dtype)


# ----------------------------------------------------------------------------- rooflines


def roofline_tokens_per_s(bytes_per_step: float, bandwidth_bytes_per_s: float, batch: int = 1,
                          flops_per_step: float | None = None, peak_flops_per_s: float | None = None) -> float:
    """Upper bound on decoding throughput (tokens per second, all sequences together):

        step_time >= max( bytes_per_step / bandwidth, flops_per_step / peak_flops )
        tokens/s  <= batch / step_time

    Without flops_per_step and peak_flops_per_s, only the bandwidth roof applies:
    batch * bandwidth / bytes_per_step.
    """
    if not bytes_per_step > 0:
        raise ValueError(f"bytes_per_step: expected > 0, got {bytes_per_step!r}")
    if not bandwidth_bytes_per_s > 0:
        raise ValueError(f"bandwidth_bytes_per_s: expected > 0, got {bandwidth_bytes_per_s!r}")
    _positive("batch", batch)
    step_time = bytes_per_step / bandwidth_bytes_per_s
    if (flops_per_step is None) != (peak_flops_per_s is None):
        raise ValueError("flops_per_step, peak_flops_per_s: expected both or neither")
    if flops_per_step is not None:
        if not peak_flops_per_s > 0:
            raise ValueError(f"peak_flops_per_s: expected > 0, got {peak_flops_per_s!r}")
        step_time = max(step_time, flops_per_step / peak_flops_per_s)
    return batch / step_time


def crossover_batch(config, context_len: int, bandwidth_bytes_per_s: float, peak_flops_per_s: float,
                    dtype=4) -> float:
    """The smallest batch at which a decoding step becomes compute bound.

    With f = FLOPs per sequence, W = weight bytes and k = KV bytes per sequence,
    a step of batch b is compute bound when

        b f / peak >= (W + b k) / bandwidth   <=>   b >= (W / bw) / (f / peak - k / bw).

    Returns math.inf when f / peak <= k / bw: the KV cache alone keeps the step
    bandwidth bound at every batch size (long contexts).
    """
    if not bandwidth_bytes_per_s > 0 or not peak_flops_per_s > 0:
        raise ValueError(
            f"bandwidth_bytes_per_s, peak_flops_per_s: expected > 0, got {bandwidth_bytes_per_s!r}, {peak_flops_per_s!r}"
        )
    f = decode_step_flops(config, context_len, 1)
    W = weight_bytes_per_step(config, dtype)
    k = config_kv_cache_bytes(config, 1, context_len, dtype)
    margin = f / peak_flops_per_s - k / bandwidth_bytes_per_s
    if margin <= 0:
        return math.inf
    return (W / bandwidth_bytes_per_s) / margin


# ----------------------------------------------------------------------------- a whole generation


def generate_bytes(config, prompt_len: int, max_new_tokens: int, batch: int = 1, dtype=4) -> int:
    """Bytes read by `generate(prompt (batch, prompt_len), max_new_tokens)` with a KV cache:

        prefill:  the weights once (the prompt's tokens are processed in one pass)
        steps:    for n = 1 .. max_new_tokens - 1, decode_step_bytes(context_len = prompt_len + n)

    (the first new token comes from the prefill; the last one is never fed back).
    """
    _positive("prompt_len", prompt_len)
    _positive("batch", batch)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
    total = weight_bytes_per_step(config, dtype)
    for n in range(1, max_new_tokens):
        total += decode_step_bytes(config, prompt_len + n, batch, dtype)
    return total


def generate_roofline_tokens_per_s(config, prompt_len: int, max_new_tokens: int, batch: int,
                                   bandwidth_bytes_per_s: float, dtype=4) -> float:
    """Bandwidth roofline of a whole generation: batch * max_new_tokens / (generate_bytes / bandwidth)."""
    seconds = generate_bytes(config, prompt_len, max_new_tokens, batch, dtype) / bandwidth_bytes_per_s
    return batch * max_new_tokens / seconds
