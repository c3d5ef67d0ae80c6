"""The optimizer (torch.optim.AdamW), the learning-rate schedule and gradient clipping.

    make_optimizer(params, cfg, device) -> torch.optim.AdamW
    learning_rate(cfg, step, *, start=0) -> float
    clip_gradients(tensors, max_norm) -> float      (the norm before clipping)
    load_state(optimizer, state)                    torch's load_state_dict, keeping the device's kernel

AdamW (Loshchilov & Hutter 2019; Adam: Kingma & Ba 2015) is torch.optim.AdamW with two
parameter groups: weight decay for tensors of two or more dimensions, none for the others.
Its implementation is chosen by device: fused=True on CUDA (one kernel for every parameter,
torch's fastest AdamW there), foreach=True on the CPU (the multi-tensor path; the numbers the
CPU tests check against a NumPy transcription and that resume reproduces bit for bit). The
choice changes how the update is computed, not what it is.

The learning rate is a pure function of the step, set on the optimizer's groups before every
update: nothing about the schedule is stateful, so nothing about it can drift on resume.
"""

from __future__ import annotations

import math

import torch

from chainrule.fast.train.config import TrainConfig, is_int

# AdamW's fields that say how torch computes the update, not what it computes: they follow the
# device of the run that loads a state, not the run that saved it.
IMPLEMENTATION_FIELDS = ("foreach", "fused", "capturable")


def learning_rate(cfg: TrainConfig, step: int, *, start: int = 0) -> float:
    """The learning rate of update `step` (0-based): linear warmup, then cosine decay to min_lr.

    The schedule begins at update `start` (0 for a run from scratch; the checkpoint's step for a
    resume with TrainConfig.new_schedule) and ends at cfg.steps. With s = step - start,
    S = cfg.steps - start, W = cfg.warmup_steps:

        lr_s = lr (s + 1) / W                                         s < W
        lr_s = min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2   W <= s < S

    (Loshchilov & Hutter 2017, SGDR; the warmup + cosine of GPT-3's training.) Past the end it
    stays at min_lr.
    """
    if not is_int(start) or start < 0:
        raise ValueError(f"start: expected an int >= 0, got {start!r}")
    if not is_int(step) or step < start:
        raise ValueError(f"step: expected an int >= start={start}, got {step!r}")
    s, W, S = step - start, cfg.warmup_steps, cfg.steps - start
    if s < W:
        return cfg.lr * (s + 1) / W
    progress = min(1.0, (s - W) / max(1, S - W))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: dict, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """torch.optim.AdamW over the tensors of `params` (name -> leaf tensor), in two groups: those
    with ndim >= 2 (weight matrices, embeddings, kernels) decay by cfg.weight_decay, the others
    (biases, norm gains) not at all -- nanoGPT's rule. Empty groups are left out. fused=True on
    CUDA, foreach=True elsewhere (see the module docstring). The group order, and within a group
    the order of `params`, is the order of the optimizer's state indices."""
    decayed = [t for t in params.values() if t.ndim >= 2]
    plain = [t for t in params.values() if t.ndim < 2]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    kernel = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kernel)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def load_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state), keeping this optimizer's implementation (fused / foreach,
    chosen by the device of this run) over the one the state was saved with."""
    if len(state["param_groups"]) != len(optimizer.param_groups):
        raise ValueError(f"optimizer state: expected {len(optimizer.param_groups)} parameter groups, "
                         f"got {len(state['param_groups'])}")  # fmt: skip
    groups = [{**saved, **{k: own[k] for k in IMPLEMENTATION_FIELDS if k in own}}
              for saved, own in zip(state["param_groups"], optimizer.param_groups)]  # fmt: skip
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})


@torch.no_grad()
def clip_gradients(tensors: list, max_norm: float | None) -> float:
    """The global L2 norm ||g||_2 of the tensors' gradients (before clipping), and, when it exceeds
    max_norm, every gradient scaled in place by max_norm / ||g||_2 (Pascanu et al. 2013), so the
    clipped norm is max_norm. Non-finite norms are returned untouched (the caller refuses them)."""
    grads = [t.grad for t in tensors]
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    if max_norm is not None and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / norm
        for g in grads:
            g.mul_(scale)
    return norm
