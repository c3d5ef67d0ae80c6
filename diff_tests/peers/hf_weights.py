"""Random weights for HF GPT-2 models in the tests (a helper, not a test file)."""

from __future__ import annotations


def perturb_gpt2(model, seed: int):
    """Every weight of a transformers GPT-2 away from its 0.02-std init, in place: O(1) logits,
    LayerNorm gains 1 +- 0.3, nonzero biases (near-uniform logits would make comparisons
    trivial). Drawn in float64 from `seed`, then cast to the model's dtype. -> model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if name.endswith(("wte.weight", "lm_head.weight")):  # lm_head: an untied head, scaled as wte
                p.copy_(noise)
            elif name.endswith("wpe.weight"):
                p.copy_(0.5 * noise)
            elif ".ln_" in name or "ln_f" in name:
                p.copy_(1.0 + 0.3 * noise if name.endswith("weight") else 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.2 * noise)
            else:  # Conv1D weights (in, out)
                p.copy_(noise / p.shape[0] ** 0.5)
    return model
