"""Likelihood metrics on torch tensors: the twins of reference/metrics.py.

They accept the (B,) log-probabilities that `fast.<model>.log_prob` returns (any
device, any float dtype) and accumulate in float64, returning Python floats.
"""

from __future__ import annotations

import math

import torch


def _f64(a) -> torch.Tensor:
    return torch.as_tensor(a).detach().to(torch.float64)


def nll(log_probs) -> float:
    """Mean negative log-likelihood in nats: -(1/B) sum_b log p(x_b)."""
    return -float(_f64(log_probs).mean())


def perplexity(log_probs, n_tokens) -> float:
    """exp( -sum_b log p(x_b) / N ), N the total number of predicted tokens."""
    total_tokens = float(_f64(n_tokens).sum())
    if total_tokens <= 0:
        raise ValueError(f"n_tokens: expected a positive total, got {total_tokens}")
    return math.exp(-float(_f64(log_probs).sum()) / total_tokens)


def bits_per_dim(nats, n_dims):
    """nats / (n_dims ln 2): a float for a float, a float64 tensor for a tensor."""
    if n_dims <= 0:
        raise ValueError(f"n_dims: expected a positive number of dimensions, got {n_dims}")
    if isinstance(nats, torch.Tensor):
        return _f64(nats) / (n_dims * math.log(2.0))
    return nats / (n_dims * math.log(2.0))


def chain_rule_log_prob(logits_fn, tokens: torch.Tensor, bos_token: int) -> torch.Tensor:
    """reference.metrics.chain_rule_log_prob on torch: sum_t (logits_t[x_t] - logsumexp(logits_t))
    with bos prepended. The logits are upcast to float32 (float64 stays float64) before the
    log-softmax; differentiable. tokens: (B, T) int64 -> (B,)."""
    bos = torch.full((tokens.shape[0], 1), bos_token, dtype=torch.int64, device=tokens.device)
    logits = logits_fn(torch.cat([bos, tokens[:, :-1]], dim=1))  # (B, T, V)
    logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    picked = logits.gather(-1, tokens[:, :, None])[:, :, 0] - torch.logsumexp(logits, dim=-1)  # (B, T)
    return picked.sum(dim=1)


def masked_chain_rule_log_prob(logits_fn, tokens: torch.Tensor, mask: torch.Tensor, bos_token: int) -> torch.Tensor:
    """reference.metrics.masked_chain_rule_log_prob on torch (padded rows: real tokens only, each
    predicted from the last real input before it); logits upcast as in `chain_rule_log_prob`.
    tokens (B, T) int64, mask (B, T) bool -> (B,)."""
    B, T = tokens.shape
    bos = torch.full((B, 1), bos_token, dtype=torch.int64, device=tokens.device)
    inputs = torch.cat([bos, tokens[:, :-1]], dim=1)  # (B, T)
    input_mask = torch.cat([torch.ones((B, 1), dtype=torch.bool, device=mask.device), mask[:, :-1]], dim=1)
    logits = logits_fn(inputs, input_mask)  # (B, T, V)
    logits = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    index = torch.where(input_mask, torch.arange(T, device=tokens.device)[None, :], 0)  # (B, T)
    predictor = torch.cummax(index, dim=1).values  # (B, T): the last real input <= t
    at = logits.gather(1, predictor[:, :, None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    picked = at.gather(-1, tokens[:, :, None])[:, :, 0] - torch.logsumexp(at, dim=-1)  # (B, T)
    return torch.where(mask, picked, 0.0).sum(dim=1)
