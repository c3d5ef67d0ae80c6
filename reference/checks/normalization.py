"""Normalization by enumeration: for a tiny vocabulary, sum over all V**T sequences of p(x) is 1.

`enumerate_sequences` lists them, `enumerate_log_probs` scores them in chunks, and
`assert_normalized` asserts the sum (math.fsum of exp(log p)) is 1 within atol.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from chainrule.reference.checks.arrays import as_float64


# ----------------------------------------------------------------------------- normalization


def enumerate_sequences(vocab_size: int, length: int, max_sequences: int = 1_000_000) -> np.ndarray:
    """All vocab_size**length sequences, lexicographic order, as an (N, length) int64 array."""
    if not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 1):
        raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
    if not (isinstance(length, (int, np.integer)) and length >= 1):
        raise ValueError(f"length: expected a positive int, got {length!r}")
    n = vocab_size**length
    if n > max_sequences:
        raise ValueError(f"vocab_size**length: expected at most {max_sequences} sequences, got {n}")
    return np.array(list(itertools.product(range(vocab_size), repeat=length)), dtype=np.int64).reshape(n, length)


def enumerate_log_probs(log_prob_fn, vocab_size: int, length: int, batch: int = 1024) -> np.ndarray:
    """log p(x) for every sequence x of `length` tokens in [0, vocab_size), in
    lexicographic order (as `enumerate_sequences`), as float64.

    log_prob_fn: tokens (N, length) int64 NumPy -> (N,) log-probabilities in nats
    (NumPy, CuPy or torch); called on chunks of at most `batch` sequences.

        lp = enumerate_log_probs(lambda x: reference.gpt.log_prob(params, config, x), 3, 3)
        lp.shape  # (27,)
    """
    seqs = enumerate_sequences(vocab_size, length)
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i : i + batch]
        lp = as_float64(log_prob_fn(chunk))
        if lp.shape != (len(chunk),):
            raise ValueError(f"log_prob_fn: expected shape ({len(chunk)},), got {lp.shape}")
        out.append(lp)
    return np.concatenate(out)


def assert_normalized(log_prob_fn, vocab_size: int, length: int, atol: float = 1e-12, batch: int = 1024) -> float:
    """Assert sum over all vocab_size**length sequences of exp(log p(x)) = 1 within atol.

    A sequence model's log_prob must define a distribution over sequences of each
    length: the chain rule guarantees it when each conditional is a softmax and
    the model is causal; a model that peeks at x_t while scoring x_t sums to more
    than 1. Returns the sum. Use for V**T up to ~1e6.

        assert_normalized(lambda x: reference.gpt.log_prob(params, config, x), vocab_size=3, length=3)
    """
    lp = enumerate_log_probs(log_prob_fn, vocab_size, length, batch=batch)
    if np.isnan(lp).any() or (lp == np.inf).any():
        bad = int(np.flatnonzero(np.isnan(lp) | (lp == np.inf))[0])
        seq = enumerate_sequences(vocab_size, length)[bad].tolist()
        raise AssertionError(f"log_prob_fn: log p of sequence {seq} is {lp[bad]}")
    total = math.fsum(np.exp(lp))
    if not abs(total - 1.0) <= atol:
        worst = int(np.argmax(lp))
        raise AssertionError(
            f"log_prob_fn is not normalized: the sum over all {vocab_size}**{length} = {lp.size} sequences "
            f"of p(x) is {total!r} (|sum - 1| = {abs(total - 1.0):.3e} > atol {atol:g}); "
            f"largest p(x) = {math.exp(lp[worst])!r} at x = {enumerate_sequences(vocab_size, length)[worst].tolist()}"
        )
    return total
