"""TrainConfig: the hyper-parameters of a training run, validated; the metrics a run reports."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy
import torch

DTYPES = ("float32", "bfloat16", "float64")
METRICS = ("nats", "bits/dim", "bits/byte", "perplexity")


def is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def is_real(value) -> bool:
    return isinstance(value, (int, float, numpy.integer, numpy.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (see chainrule.fast.train's docstring for the math).

    steps: optimizer updates S, the end of the learning-rate schedule; batch_size: global examples
    per update B; lr: peak learning rate; weight_decay: decoupled decay of >= 2-D tensors; betas,
    eps: AdamW's; warmup_steps: W linear warmup steps; min_lr: the cosine's floor; grad_clip:
    global-norm clip c (None: off); dtype: "float32", "bfloat16" (float32 weights, bfloat16
    autocast) or "float64"; eval_every: evaluate every this many steps (0: only at the end);
    eval_batches: batches of held-out examples per evaluation (0: the whole validation set);
    checkpoint_every: write a checkpoint every this many steps (0: only at the end; needs out_dir);
    log_every: log line / progress-bar refresh period; seed: batches and model randomness;
    device: "cpu", "cuda", "cuda:1".
    new_schedule: only when resuming: start a new warmup + cosine schedule at the checkpoint's
    step, ending at `steps` (which, with lr, warmup_steps and min_lr, may then differ from the
    checkpoint's). Without it a resumed run continues the checkpoint's schedule and must keep its
    `steps`. It instructs one resume and is not written to the checkpoint.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 0
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    dtype: str = "float32"
    eval_every: int = 0
    eval_batches: int = 8
    checkpoint_every: int = 0
    log_every: int = 10
    seed: int = 0
    device: str = "cpu"
    new_schedule: bool = False

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive int, got {value!r}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                raise ValueError(f"TrainConfig.{name}: expected an int >= 0, got {value!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps: expected at most steps={self.steps}, got {self.warmup_steps}")
        if not is_real(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"TrainConfig.lr: expected a finite float > 0, got {self.lr!r}")
        if not is_real(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr: expected a float in [0, lr={self.lr}], got {self.min_lr!r}")
        if not is_real(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay: expected a finite float >= 0, got {self.weight_decay!r}")
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(is_real(b) and 0 <= b < 1 for b in betas)):  # fmt: skip
            raise ValueError(f"TrainConfig.betas: expected two floats in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        if not is_real(self.eps) or not self.eps > 0:
            raise ValueError(f"TrainConfig.eps: expected a float > 0, got {self.eps!r}")
        clip = self.grad_clip
        if clip is not None and (not is_real(clip) or not math.isfinite(clip) or clip <= 0):
            raise ValueError(f"TrainConfig.grad_clip: expected a finite float > 0 or None, got {clip!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TrainConfig.dtype: expected one of {DTYPES}, got {self.dtype!r}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"TrainConfig.device: expected a torch device like 'cpu' or 'cuda', got "
                             f"{self.device!r} ({error})") from None  # fmt: skip
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device: expected 'cpu' or 'cuda[:i]', got {self.device!r}")
        if not isinstance(self.new_schedule, bool):
            raise ValueError(f"TrainConfig.new_schedule: expected a bool, got {self.new_schedule!r}")

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of to_dict; ValueError naming unknown keys."""
        if not isinstance(d, dict):
            raise ValueError(f"train config: expected a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"train config: unknown fields {unknown}; expected some of {sorted(known)}")
        return cls(**d)


def metric_value(metric: str, nats_per_unit: float) -> float:
    """nats -> the metric: "nats" as is, "bits/dim" and "bits/byte" L / ln 2, "perplexity" exp(L)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if metric == "perplexity":
        return math.exp(nats_per_unit) if nats_per_unit < 700 else math.inf
    if metric == "nats":
        return float(nats_per_unit)
    return nats_per_unit / math.log(2.0)
