"""Likelihood metrics, all derived from log-probabilities in nats.

- nll = -mean log p(x) per example (nats);
- perplexity = exp(total nats / total tokens);
- bits/dim = total nats / (number of dimensions * ln 2)  (van den Oord et al. 2016).
"""

from __future__ import annotations

import math

from chainrule.reference import nn
from chainrule.reference.xp import namespace


def nll(log_probs):
    """Mean negative log-likelihood in nats: -(1/B) sum_b log p(x_b).  log_probs: (B,)."""
    xp = namespace(log_probs)
    return -float(xp.mean(xp.asarray(log_probs, dtype=xp.float64)))


def perplexity(log_probs, n_tokens):
    """exp( -sum_b log p(x_b) / N ), N the total number of predicted tokens.

    log_probs: (B,) nats per sequence; n_tokens: total tokens scored (an int, or (B,) counts).
    """
    xp = namespace(log_probs)
    total_tokens = float(xp.sum(xp.asarray(n_tokens)))
    if total_tokens <= 0:
        raise ValueError(f"n_tokens: expected a positive total, got {total_tokens}")
    return math.exp(-float(xp.sum(log_probs)) / total_tokens)


def bits_per_dim(nats, n_dims):
    """Bits per dimension: nats / (n_dims ln 2).

    nats: negative log-likelihood of one example in nats (a float or an array,
    e.g. -log_prob); n_dims: dimensions per example (C*H*W for images, T for sequences).
    """
    if n_dims <= 0:
        raise ValueError(f"n_dims: expected a positive number of dimensions, got {n_dims}")
    return nats / (n_dims * math.log(2.0))


def chain_rule_log_prob(logits_fn, tokens, bos_token: int):
    """The exact chain-rule log-likelihood of token sequences by teacher forcing, in nats:

        log p(x_1..x_T) = sum_{t=1}^{T} log softmax(logits(bos, x_1..x_{t-1}))[x_t]

    with bos prepended, so every token, the first included, is predicted.
    logits_fn: inputs (B, T) -> logits (B, T, V), position t seeing inputs <= t;
    tokens: (B, T) int -> (B,) float64.
    """
    xp = namespace(tokens)
    tokens = xp.asarray(tokens)
    B = tokens.shape[0]
    inputs = xp.concatenate([xp.full((B, 1), bos_token, dtype=tokens.dtype), tokens[:, :-1]], axis=1)  # (B, T)
    logp = nn.log_softmax(logits_fn(inputs), axis=-1)  # (B, T, V)
    picked = xp.take_along_axis(logp, tokens[:, :, None], axis=-1)[:, :, 0]  # (B, T)
    return xp.sum(picked, axis=1)
