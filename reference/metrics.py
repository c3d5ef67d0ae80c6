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


def masked_chain_rule_log_prob(logits_fn, tokens, mask, bos_token: int):
    """`chain_rule_log_prob` of padded rows: the sum over the real tokens only, each predicted
    from bos and the real tokens before it, so a padded row scores what the row alone scores:

        log p(x) = sum_{t : mask_t} log softmax(logits at r(t))[x_t],
        r(t) = the last real input at or before t in  inputs = (bos, x_1..x_{T-1}),
               input mask = (1, mask_1..mask_{T-1})

    (with left padding the bos sits before the pads, and the first real token is predicted
    from the bos, as in the unpadded row). logits_fn: (inputs (B, T), input mask (B, T) bool)
    -> logits (B, T, V), a real position seeing the real inputs up to it; tokens (B, T) int;
    mask (B, T) bool -> (B,) float64.
    """
    xp = namespace(tokens)
    tokens = xp.asarray(tokens)
    B, T = tokens.shape
    inputs = xp.concatenate([xp.full((B, 1), bos_token, dtype=tokens.dtype), tokens[:, :-1]], axis=1)  # (B, T)
    input_mask = xp.concatenate([xp.ones((B, 1), dtype=bool), mask[:, :-1]], axis=1)  # (B, T)
    logp = nn.log_softmax(logits_fn(inputs, input_mask), axis=-1)  # (B, T, V)
    index = xp.where(input_mask, xp.arange(T)[None, :], 0)  # (B, T): t at real inputs
    predictor = xp.maximum.accumulate(index, axis=1)  # (B, T): r(t), the last real input <= t
    picked = logp[xp.arange(B)[:, None], predictor, tokens]  # (B, T)
    return xp.sum(xp.where(mask, picked, 0.0), axis=1)
