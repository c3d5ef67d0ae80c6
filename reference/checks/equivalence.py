"""Baselines and equivalences: the naive float32 baseline, and logits through a KV cache.

`naive_float32` runs a reference function on float32-rounded parameters, the baseline of the
low-precision rule of `tolerances.compare`; `logits_through_cache` computes the logits of a
sequence by prefill chunks and single steps, to compare with the teacher-forced forward.
"""

from __future__ import annotations

import numpy as np

from chainrule.reference.checks.arrays import as_float64


# ----------------------------------------------------------------------------- baselines and equivalences


def naive_float32(fn, params: dict, *args, **kwargs) -> np.ndarray:
    """The naive float32 baseline of the low-precision rule (`compare(..., naive=)`):
    `fn` -- a reference function such as `reference.gpt.forward` -- run on the
    float32-rounded `params` (NumPy, CuPy or torch on any device) in float32 NumPy,
    returned as float64.

    The spec itself in float32 is a computation independent of the implementation
    under test, so a float32 bug anywhere in it (not only in a fused kernel) shows up
    as an error the baseline does not have. AssertionError if fn silently computes in
    another dtype (the baseline would then be float64, and the rule meaningless).

        naive = naive_float32(reference.gpt.forward, params, config, tokens)
        assert_close("logits", truth, my_float32_logits, "float32", naive=naive)
    """
    out = fn({k: as_float64(v).astype(np.float32) for k, v in params.items()}, *args, **kwargs)
    if getattr(out, "dtype", None) != np.float32:
        raise AssertionError(f"naive float32 baseline computed in {getattr(out, 'dtype', type(out))}, not float32")
    return as_float64(out)


def logits_through_cache(model, params, config, tokens, chunks=()) -> np.ndarray:
    """The logits of `tokens` computed incrementally: `model.prefill` chunk by chunk
    (sizes `chunks`), then one `model.step` per remaining token. -> (B, T, V) float64 NumPy.

    model: anything with the KV-cache protocol of reference.gpt and fast.gpt:
        init_cache(params, config, batch) -> cache
        prefill(params, config, cache, tokens (B, Tc)) -> (logits (B, Tc, V), cache)
        step(params, config, cache, tokens_t (B,)) -> (logits_t (B, V), cache)
    tokens: (B, T) in the model's array kind (NumPy, CuPy or torch, on its device).
    chunks: positive prefill sizes summing to at most T (empty: every token is a step).

    Exact attention makes this equal to `forward(params, config, tokens)` up to
    summation order: compare them with `compare`/`assert_close`. Feeding the generated
    tokens of `generate` (all but the last) with chunks=[T0] gives the step logits of the
    generation itself, as `compare_tokens` wants them for `fast`.
    """
    chunks = [int(c) for c in chunks]
    B, T = tokens.shape
    if any(c < 1 for c in chunks) or sum(chunks) > T:
        raise ValueError(f"chunks: expected positive sizes summing to at most T={T}, got {chunks}")
    cache = model.init_cache(params, config, B)
    out, pos = [], 0
    for c in chunks:
        logits, cache = model.prefill(params, config, cache, tokens[:, pos : pos + c])
        out.append(as_float64(logits))  # (B, c, V)
        pos += c
    for t in range(pos, T):
        logits_t, cache = model.step(params, config, cache, tokens[:, t])
        out.append(as_float64(logits_t)[:, None])  # (B, 1, V)
    return np.concatenate(out, axis=1)
