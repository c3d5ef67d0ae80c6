"""Training: one loop for every model that follows the protocol (teacher forcing, mean NLL).

API
---
    TrainConfig(steps, batch_size, lr, weight_decay, betas, eps, warmup_steps, min_lr, grad_clip,
                dtype, eval_every, eval_batches, checkpoint_every, log_every, seed, device)
        frozen, validated (ValueError names the field); TrainConfig.from_dict(d), .to_dict().
        dtype: "float32" (float32 everything), "bfloat16" (float32 master weights, bfloat16
        autocast for the forward pass) or "float64".
    Trainable(name, config, params, log_prob, units=None, metric="nats")
        what the loop needs from a model: log_prob(params, batch, rng) -> (B,) nats, where batch
        is a torch tensor (or a tuple (x, cond) of tensors when the data is a tuple) and rng a
        numpy Generator (for dropout; may be ignored); units = units per example (None: the
        product of an example's shape, e.g. T tokens or C*H*W sub-pixels); metric one of METRICS.
    Trainable.from_module(module, config, params, *, name=None, metric=None, units=None)
        any fast/ model module: module.log_prob(params, config, x[, cond=][, rng=]). metric
        defaults from the config: `levels` -> "bits/dim", vocab_size 256 -> "bits/byte",
        else "perplexity"; name defaults to the module's last dotted name ("gpt").
    train(trainable, train_data, val_data=None, cfg=TrainConfig(), out_dir=None, resume=False,
          progress=True, stop_at=None) -> TrainResult(params, history, step, out_dir, metric)
        data: integer NumPy arrays (N, ...) of examples, or tuples of arrays with one N (x, cond).
        resume=True continues from out_dir's checkpoint (same model, config and the settings that
        change the numbers; `steps` may grow); stop_at=k stops after update k (a run to be resumed
        later: the schedule is that of cfg.steps). Every run evaluates (when val_data is given) every
        eval_every steps and where it stops. TrainResult.val_loss / .val_metric: the last evaluation.
    History: per step `step, lr, loss (train, nats/unit), grad_norm, units_per_s`; per evaluation
        `eval_step, val_loss (nats/unit), val_metric`; .to_dict() / History.from_dict(d).
    evaluate(trainable, params, data, *, batch_size=64, max_examples=None, seed=0, dtype="float32",
             device="cpu") -> (nats per unit, metric value)
    learning_rate(cfg, step) -> float           the schedule (warmup + cosine) at step (0-based)
    batch_indices(n, batch_size, step, seed)    the examples of a step's global batch
    AdamW(params, cfg): .step(grads, lr), .state_dict(), .load_state_dict(d)   the optimizer
    metric_value(metric, nats_per_unit) -> float
    save_checkpoint(out_dir, trainable, params, cfg, step, history, optimizer_state=None)
    load_checkpoint(out_dir, *, name=None, config=None) -> (params, meta)
        params: dict of CPU tensors from model.safetensors; meta: checkpoint.json as a dict
        ("model", "config" (dict), "train_config" (dict), "step", "metric", "units", "history").
        FileNotFoundError for a missing checkpoint; ValueError for a mismatching name/config.
    init_distributed(device="cpu") -> (rank, world_size)   process group from torchrun's variables
    main_process() -> bool        rank 0 (or not distributed): the process that prints and writes files
    Distributed data parallel: run under `torchrun --nproc_per_node N ...`; `train` starts the process
    group itself when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA) and every rank computes its shard.

The objective
-------------
A model that factorizes p(x) = prod_i p(x_i | x_<i) (the chain rule) is trained by maximum
likelihood with teacher forcing: all conditionals are evaluated at once on the true prefix.
For a minibatch {x^(1..B)} of examples with D units each (tokens, sub-pixels, bytes) the loss is
the mean negative log-likelihood per unit, in nats:

    L(theta) = - 1 / (B D) * sum_b log p_theta(x^(b))

so that L / ln 2 is bits per unit (bits/dim, bits/byte) and exp(L) the perplexity.

The optimizer
-------------
AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"; Adam: Kingma & Ba
2015) with decoupled weight decay (class AdamW below; the same numbers as torch.optim.AdamW):

    m_t = b1 m_{t-1} + (1 - b1) g_t,        v_t = b2 v_{t-1} + (1 - b2) g_t^2
    theta_t = theta_{t-1} - lr_t * wd * theta_{t-1} - lr_t * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

Weight decay applies to tensors with two or more dimensions (weight matrices, embedding tables,
convolution kernels) and not to one-dimensional ones (biases, layer-norm gains and biases), the
rule of GPT-2 style training code (nanoGPT). The gradient is clipped to a global L2 norm
(Pascanu et al. 2013): g <- g * min(1, c / ||g||_2) over all parameters at once.

The learning rate at step s = 0, 1, ..., S-1 (S = steps, W = warmup_steps) is linear warmup then a
cosine decay to min_lr (Loshchilov & Hutter 2017, SGDR; as in GPT-3's training):

    lr_s = lr * (s + 1) / W                                           s < W
    lr_s = min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2    s >= W

Determinism and exact resume
----------------------------
Nothing random is carried from step to step: the examples of step s are the positions
s*B .. s*B + B - 1 of an endless sequence of epochs, epoch e being a permutation drawn from
numpy's default_rng([seed, 1, e]); a model's own randomness (dropout) at step s draws from
default_rng([seed, 2, s, rank]). So a checkpoint holds only the parameters, the optimizer
state (AdamW's m, v and step count) and the step, and training k steps, stopping and resuming
to n gives bit for bit the parameters and losses of n steps without interruption (on the CPU in
float32 or float64).

Checkpoints (out_dir) hold no pickle: model.safetensors (the parameters), optimizer.safetensors
("<name>.exp_avg", "<name>.exp_avg_sq" and the update count "step"), checkpoint.json (model name,
model config, train config, step, metric, units, history). Files are written to temporary names
and renamed into place, checkpoint.json last.

Precision: "float32" and "float64" compute everything in that dtype. "bfloat16" keeps float32
parameters, gradients and optimizer state and runs the forward pass under torch.autocast: matrix
products and convolutions in bfloat16, reductions and the models' log-softmax in float32.

Data parallel
-------------
Under torch.distributed with world size R, every rank draws the same global batch of B
examples and takes its contiguous shard of B / R; each computes the gradient of
-(1 / (B D)) sum over its shard of log p, and the gradients are summed across ranks
(all_reduce): exactly the gradient of the global loss, up to the order of float summation. The
parameters start from rank 0's; only rank 0 writes checkpoints and logs. (A model with its own
randomness, dropout, draws it per rank, so its masks, unlike its gradients, depend on R.)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy
import torch

from chainrule.fast.backend import to_torch

__all__ = [
    "DTYPES", "METRICS", "TrainConfig", "Trainable", "History", "TrainResult", "learning_rate",
    "metric_value", "batch_indices", "evaluate", "train", "save_checkpoint", "load_checkpoint",
    "init_distributed", "main_process", "AdamW", "CHECKPOINT_FILES",
]  # fmt: skip

DTYPES = ("float32", "bfloat16", "float64")
METRICS = ("nats", "bits/dim", "bits/byte", "perplexity")
CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "checkpoint.json")
FORMAT = "chainrule-checkpoint"
FORMAT_VERSION = 1

# Fields of TrainConfig that change the numbers a resumed run computes: they must match the checkpoint.
_RESUME_FIELDS = ("batch_size", "lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr", "grad_clip",
                  "dtype", "seed")  # fmt: skip

# Independent random streams derived from the seed.
_STREAM_BATCHES, _STREAM_MODEL, _STREAM_EVAL = 1, 2, 3


def _is_int(value) -> bool:
    return isinstance(value, (int, numpy.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, numpy.integer, numpy.floating)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (see the module docstring for the math).

    steps: optimizer updates S; batch_size: global examples per update B; lr: peak learning rate;
    weight_decay: decoupled decay of >= 2-D tensors; betas, eps: AdamW's; warmup_steps: W linear
    warmup steps; min_lr: the cosine's floor; grad_clip: global-norm clip c (None: off);
    dtype: "float32", "bfloat16" (float32 weights, bfloat16 autocast) or "float64";
    eval_every: evaluate every this many steps (0: only at the end); eval_batches: batches of
    held-out examples per evaluation (0: the whole validation set); checkpoint_every: write a
    checkpoint every this many steps (0: only at the end; needs out_dir); log_every: log line /
    progress-bar refresh period; seed: batches and model randomness; device: "cpu", "cuda", "cuda:1".
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

    def __post_init__(self):
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"TrainConfig.{name}: expected a positive int, got {value!r}")
        for name in ("warmup_steps", "eval_every", "eval_batches", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"TrainConfig.{name}: expected an int >= 0, got {value!r}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"TrainConfig.warmup_steps: expected at most steps={self.steps}, got {self.warmup_steps}")
        if not _is_real(self.lr) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"TrainConfig.lr: expected a finite float > 0, got {self.lr!r}")
        if not _is_real(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"TrainConfig.min_lr: expected a float in [0, lr={self.lr}], got {self.min_lr!r}")
        if not _is_real(self.weight_decay) or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay: expected a finite float >= 0, got {self.weight_decay!r}")
        betas = self.betas
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(_is_real(b) and 0 <= b < 1 for b in betas)):  # fmt: skip
            raise ValueError(f"TrainConfig.betas: expected two floats in [0, 1), got {betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        if not _is_real(self.eps) or not self.eps > 0:
            raise ValueError(f"TrainConfig.eps: expected a float > 0, got {self.eps!r}")
        clip = self.grad_clip
        if clip is not None and (not _is_real(clip) or not math.isfinite(clip) or clip <= 0):
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


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of update `step` (0-based): linear warmup, then cosine decay to min_lr.

        lr_s = lr (s + 1) / W                                         s < W
        lr_s = min_lr + (lr - min_lr) (1 + cos(pi (s - W) / (S - W))) / 2   W <= s < S
    """
    if not _is_int(step) or step < 0:
        raise ValueError(f"step: expected an int >= 0, got {step!r}")
    W, S = cfg.warmup_steps, cfg.steps
    if step < W:
        return cfg.lr * (step + 1) / W
    progress = min(1.0, (step - W) / max(1, S - W))
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def metric_value(metric: str, nats_per_unit: float) -> float:
    """nats -> the metric: "nats" as is, "bits/dim" and "bits/byte" L / ln 2, "perplexity" exp(L)."""
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if metric == "perplexity":
        return math.exp(nats_per_unit) if nats_per_unit < 700 else math.inf
    if metric == "nats":
        return float(nats_per_unit)
    return nats_per_unit / math.log(2.0)


# ----------------------------------------------------------------------------- the model side


def _default_metric(config) -> str:
    if hasattr(config, "levels"):
        return "bits/dim"
    if getattr(config, "vocab_size", None) == 256:
        return "bits/byte"
    if hasattr(config, "vocab_size"):
        return "perplexity"
    return "nats"


@dataclass(frozen=True)
class Trainable:
    """A model as the loop sees it.

    name: the model's name (written to checkpoints); config: its config dataclass; params:
    initial parameters, dict name -> array (NumPy or torch, any float dtype; `train` copies
    them to the training dtype and device and never changes these); log_prob(params, batch, rng)
    -> (B,) log-likelihoods in nats, differentiable with respect to params; units: units per
    example (None: the product of an example's shape); metric: one of METRICS.
    """

    name: str
    config: Any
    params: dict
    log_prob: Callable
    units: int | None = None
    metric: str = "nats"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Trainable.name: expected a non-empty str, got {self.name!r}")
        if not dataclasses.is_dataclass(self.config) or isinstance(self.config, type):
            raise TypeError(f"Trainable.config: expected a dataclass instance, got {type(self.config).__name__}")
        if not isinstance(self.params, dict) or not self.params:
            got = type(self.params).__name__ if not isinstance(self.params, dict) else "an empty dict"
            raise ValueError(f"Trainable.params: expected a non-empty dict name -> array, got {got}")
        if not callable(self.log_prob):
            raise TypeError(f"Trainable.log_prob: expected a callable, got {type(self.log_prob).__name__}")
        if self.units is not None and (not _is_int(self.units) or self.units < 1):
            raise ValueError(f"Trainable.units: expected a positive int or None, got {self.units!r}")
        if self.metric not in METRICS:
            raise ValueError(f"Trainable.metric: expected one of {METRICS}, got {self.metric!r}")

    @classmethod
    def from_module(cls, module, config, params, *, name=None, metric=None, units=None) -> Trainable:
        """A Trainable from a model module: module.log_prob(params, config, x[, cond=...][, rng=...]).

        `cond=` is passed when the batch is a tuple (x, cond); `rng=` when module.log_prob takes it.
        """
        fn = getattr(module, "log_prob", None)
        if not callable(fn):
            raise TypeError(f"module: expected a model module with log_prob, got {module!r}")
        takes_rng = "rng" in inspect.signature(fn).parameters

        def log_prob(p, batch, rng=None):
            kwargs = {"rng": rng} if takes_rng else {}
            if isinstance(batch, tuple):
                x, cond = batch
                return fn(p, config, x, cond=cond, **kwargs)
            return fn(p, config, batch, **kwargs)

        name = name if name is not None else module.__name__.rsplit(".", 1)[-1]
        metric = metric if metric is not None else _default_metric(config)
        return cls(name=name, config=config, params=params, log_prob=log_prob, units=units, metric=metric)


# ----------------------------------------------------------------------------- data


def _check_data(data, name: str):
    """-> (arrays tuple, is_tuple, N). Integer NumPy arrays (or a tuple of them) with one leading N >= 1."""
    is_tuple = isinstance(data, tuple)
    arrays = data if is_tuple else (data,)
    if not arrays:
        raise ValueError(f"{name}: expected an array or a non-empty tuple of arrays, got ()")
    out = []
    for i, a in enumerate(arrays):
        label = f"{name}[{i}]" if is_tuple else name
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        if not isinstance(a, numpy.ndarray):
            raise TypeError(f"{label}: expected a NumPy array, got {type(a).__name__}")
        if i == 0 and a.dtype.kind not in "iu":
            raise TypeError(f"{label}: expected an integer array, got dtype {a.dtype}")
        if a.ndim < (2 if i == 0 else 1):
            raise ValueError(f"{label}: expected shape (N, ...) of examples with ndim >= {2 if i == 0 else 1}, "
                             f"got {a.shape}")
        if a.shape[0] < 1:
            raise ValueError(f"{label}: expected at least one example, got shape {a.shape}")
        if a.shape[0] != arrays[0].shape[0]:
            raise ValueError(f"{label}: expected N={arrays[0].shape[0]} examples (as {name}[0]), got {a.shape[0]}")
        out.append(a)
    return tuple(out), is_tuple, out[0].shape[0]


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> numpy.ndarray:
    """Indices of the global batch of `step`: positions step*B .. step*B+B-1 of the concatenated
    epochs, epoch e being default_rng([seed, 1, e]).permutation(n). Pure: depends only on its arguments."""
    start = step * batch_size
    positions = numpy.arange(start, start + batch_size, dtype=numpy.int64)
    epochs = positions // n
    out = numpy.empty(batch_size, dtype=numpy.int64)
    for e in numpy.unique(epochs):
        perm = _permutation(n, seed, int(e))
        sel = epochs == e
        out[sel] = perm[positions[sel] % n]
    return out


_PERM_CACHE: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> numpy.ndarray:
    key = (n, seed, epoch)
    perm = _PERM_CACHE.get(key)
    if perm is None:
        perm = numpy.random.default_rng([seed, _STREAM_BATCHES, epoch]).permutation(n)
        perm.setflags(write=False)
        _PERM_CACHE.clear()  # one epoch at a time (at most two are alive per step)
        _PERM_CACHE[key] = perm
    return perm


def _take(arrays: tuple, is_tuple: bool, idx: numpy.ndarray, device):
    tensors = tuple(torch.from_numpy(numpy.ascontiguousarray(a[idx])).to(device) for a in arrays)
    tensors = tuple(t.long() if not t.is_floating_point() else t for t in tensors)
    return tensors if is_tuple else tensors[0]


# ----------------------------------------------------------------------------- history and result


@dataclass
class History:
    """What a run measured. Per update: step (1-based count of updates done), lr, loss (train,
    nats/unit), grad_norm (before clipping), units_per_s. Per evaluation: eval_step, val_loss
    (nats/unit), val_metric."""

    step: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    units_per_s: list = field(default_factory=list)
    eval_step: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_metric: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{f.name: list(d.get(f.name, [])) for f in dataclasses.fields(cls)})


@dataclass
class TrainResult:
    """params: the final parameters (torch tensors, detached, on the training device, float32 or
    float64); history: a History; step: updates done; out_dir: where checkpoints went (or None);
    metric: the trainable's metric."""

    params: dict
    history: History
    step: int
    out_dir: Path | None
    metric: str

    @property
    def val_loss(self) -> float | None:
        return self.history.val_loss[-1] if self.history.val_loss else None

    @property
    def val_metric(self) -> float | None:
        return self.history.val_metric[-1] if self.history.val_metric else None


# ----------------------------------------------------------------------------- distributed


def _dist_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank_world() -> tuple[int, int]:
    if _dist_active():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    gloo on the CPU, NCCL on CUDA (each rank on cuda:LOCAL_RANK). -> (rank, world_size)."""
    if _dist_active():
        return _rank_world()
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"environment: expected {var} (set by torchrun) for distributed training, got none")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    return _rank_world()


def main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the process that should print and write files.
    Read from the process group when one is active, else from torchrun's RANK variable."""
    if _dist_active():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _device(cfg: TrainConfig) -> torch.device:
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device: expected an available device, got {cfg.device!r} (no CUDA)")
        if _dist_active() and device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


def _all_reduce_grads(grads: list) -> list:
    """Sum the gradients over the ranks: one all_reduce of one flat buffer. -> new tensors (views of it)."""
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    out, offset = [], 0
    for g in grads:
        out.append(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return out


def _sum_across_ranks(values: list[float], device) -> list[float]:
    if not _dist_active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- evaluation


def _master_dtype(dtype: str) -> torch.dtype:
    return torch.float64 if dtype == "float64" else torch.float32


def _autocast(device: torch.device, dtype: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def _units(trainable: Trainable, arrays: tuple) -> int:
    return trainable.units if trainable.units is not None else int(numpy.prod(arrays[0].shape[1:]))


def _eval_indices(n: int, cfg_batches: int, batch_size: int, seed: int) -> numpy.ndarray:
    if cfg_batches == 0 or cfg_batches * batch_size >= n:
        return numpy.arange(n)
    perm = numpy.random.default_rng([seed, _STREAM_EVAL]).permutation(n)
    return numpy.sort(perm[: cfg_batches * batch_size])


def _evaluate(trainable, params, arrays, is_tuple, idx, batch_size, device, dtype, units) -> float:
    """Mean nats per unit over data[idx]; under torch.distributed each rank takes every R-th batch."""
    rank, world = _rank_world()
    total = 0.0
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    with torch.no_grad(), _autocast(device, dtype):
        for b in batches[rank::world]:
            lp = trainable.log_prob(params, _take(arrays, is_tuple, b, device), None)
            total += -float(lp.double().sum())
    (total,) = _sum_across_ranks([total], device)
    return total / (len(idx) * units)


def evaluate(trainable: Trainable, params: dict, data, *, batch_size: int = 64, max_examples: int | None = None,
             seed: int = 0, dtype: str = "float32", device: str = "cpu") -> tuple[float, float]:  # fmt: skip
    """Held-out mean NLL per unit (nats) and the trainable's metric on `data` (all of it, or
    `max_examples` chosen by a permutation from `seed`). Teacher forcing, no gradients."""
    arrays, is_tuple, n = _check_data(data, "data")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    dev = torch.device(device)
    if max_examples is None:
        idx = numpy.arange(n)
    else:
        if not _is_int(max_examples) or max_examples < 1:
            raise ValueError(f"max_examples: expected a positive int or None, got {max_examples!r}")
        idx = numpy.sort(numpy.random.default_rng([seed, _STREAM_EVAL]).permutation(n)[:max_examples])
    p = {k: v.detach() for k, v in _to_master(params, dev, dtype).items()}
    nats = _evaluate(trainable, p, arrays, is_tuple, idx, batch_size, dev, dtype, _units(trainable, arrays))
    return nats, metric_value(trainable.metric, nats)


# ----------------------------------------------------------------------------- checkpoints


def _to_master(params: dict, device, dtype: str) -> dict:
    master = _master_dtype(dtype)
    out = {}
    for name, value in params.items():
        t = to_torch(value, device=device, dtype=master)
        if not t.is_floating_point():
            raise ValueError(f"params[{name!r}]: expected a float array, got {t.dtype}")
        out[name] = t.detach().clone()
    return out


def _config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, as stored


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out_dir, trainable: Trainable, params: dict, cfg: TrainConfig, step: int,
                    history: History, optimizer_state: dict | None = None) -> Path:  # fmt: skip
    """Write model.safetensors, optimizer.safetensors (when optimizer_state, a dict name -> tensor,
    is given) and checkpoint.json to out_dir (created). -> out_dir as a Path."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt", "step": str(int(step))}  # the step ties the three files together
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in params.items()}
    _atomic_write(out / "model.safetensors", lambda p: save_file(tensors, str(p), metadata=header))
    if optimizer_state is not None:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in optimizer_state.items()}
        _atomic_write(out / "optimizer.safetensors", lambda p: save_file(state, str(p), metadata=header))
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": trainable.name,
        "config": _config_dict(trainable.config),
        "train_config": cfg.to_dict(),
        "step": int(step),
        "metric": trainable.metric,
        "units": trainable.units,
        "random": "stateless: batches from default_rng([seed, 1, epoch]), model noise from "
                  "default_rng([seed, 2, step, rank])",
        "history": history.to_dict(),
    }
    text = json.dumps(meta, indent=1, allow_nan=True)
    _atomic_write(out / "checkpoint.json", lambda p: p.write_text(text))
    return out


def _read_meta(out_dir) -> tuple[Path, dict]:
    out = Path(out_dir)
    path = out / "checkpoint.json"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected {path} (with model.safetensors beside it), "
                                f"got {'no such directory' if not out.is_dir() else 'no checkpoint.json'}")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint: {path} is not valid JSON ({error})") from None
    got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if got != FORMAT:
        raise ValueError(f"checkpoint: expected {path} with format {FORMAT!r}, got {got!r}")
    missing = [k for k in ("model", "config", "train_config", "step", "history") if k not in meta]
    if missing:
        raise ValueError(f"checkpoint: {path} lacks the fields {missing}")
    return out, meta


def _load_tensors(path: Path, step: int) -> dict:
    """A safetensors file of the checkpoint at `step` (ValueError if it was written at another step)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        written = (f.metadata() or {}).get("step")
    if written is not None and written != str(step):
        raise ValueError(f"checkpoint: {path} was written at step {written}, checkpoint.json says step {step} "
                         "(an interrupted write?)")  # fmt: skip
    return load_file(str(path))


def _check_match(meta: dict, name, config, where: str) -> None:
    if name is not None and meta["model"] != name:
        raise ValueError(f"checkpoint: {where} holds model {meta['model']!r}, expected {name!r}")
    if config is not None:
        want = _config_dict(config)
        got = meta["config"]
        diff = sorted(k for k in set(want) | set(got) if want.get(k, "<missing>") != got.get(k, "<missing>"))
        if diff:
            details = ", ".join(f"{k}: checkpoint {got.get(k, '<missing>')!r} vs given {want.get(k, '<missing>')!r}"
                                for k in diff)  # fmt: skip
            raise ValueError(f"checkpoint: the config in {where} does not match ({details})")


def load_checkpoint(out_dir, *, name: str | None = None, config=None) -> tuple[dict, dict]:
    """Parameters and metadata of the checkpoint in out_dir (safetensors + JSON; nothing unpickled).

    -> (params: dict name -> CPU torch tensor, meta: checkpoint.json as a dict). FileNotFoundError
    when out_dir holds no checkpoint; ValueError when `name` or `config` (a config dataclass) is
    given and differs from the checkpoint's (the message lists the differing fields).
    """
    out, meta = _read_meta(out_dir)
    _check_match(meta, name, config, str(out))
    model = out / "model.safetensors"
    if not model.is_file():
        raise FileNotFoundError(f"checkpoint: expected {model} beside {out / 'checkpoint.json'}, got none")
    return _load_tensors(model, meta["step"]), meta


def _load_optimizer(out: Path, step: int) -> dict:
    path = out / "optimizer.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: resuming needs {path}, got none")
    return _load_tensors(path, step)


# ----------------------------------------------------------------------------- the optimizer


class AdamW:
    """AdamW over a dict of tensors, the update of the module docstring (torch.optim.AdamW's numbers).

    state: the first and second moments m, v of every parameter and the count t of updates done.
    Weight decay applies to parameters with ndim >= 2. `step(grads, lr)` updates the parameters in
    place (they are the loop's own copies). `state_dict()` / `load_state_dict()` give and take a
    dict "<name>.exp_avg" / "<name>.exp_avg_sq" -> tensor, plus "step" (t, int64 scalar).
    """

    def __init__(self, params: dict, cfg: TrainConfig):
        self.params, self.cfg, self.t = params, cfg, 0
        self.names = list(params)
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        self.decayed = [params[k] for k in self.names if params[k].ndim >= 2]

    @torch.no_grad()
    def step(self, grads: list, lr: float) -> None:
        """One update with the gradients `grads` (in the order of the params dict) at learning rate lr."""
        b1, b2 = self.cfg.betas
        self.t += 1
        p = [self.params[k] for k in self.names]
        m = [self.m[k] for k in self.names]
        v = [self.v[k] for k in self.names]
        if self.decayed and self.cfg.weight_decay:
            torch._foreach_mul_(self.decayed, 1.0 - lr * self.cfg.weight_decay)  # theta <- theta (1 - lr wd)
        torch._foreach_lerp_(m, grads, 1.0 - b1)  # m <- b1 m + (1 - b1) g
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1.0 - b2)  # v <- b2 v + (1 - b2) g^2
        bias1, bias2 = 1.0 - b1**self.t, 1.0 - b2**self.t
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, math.sqrt(bias2))
        torch._foreach_add_(denom, self.cfg.eps)  # sqrt(v / (1 - b2^t)) + eps
        torch._foreach_addcdiv_(p, m, denom, -lr / bias1)  # theta <- theta - lr (m / (1 - b1^t)) / denom

    def state_dict(self) -> dict:
        out = {"step": torch.tensor(self.t, dtype=torch.int64)}
        for k in self.names:
            out[f"{k}.exp_avg"], out[f"{k}.exp_avg_sq"] = self.m[k], self.v[k]
        return out

    def load_state_dict(self, saved: dict) -> None:
        wanted = ["step"] + [f"{k}.{s}" for k in self.names for s in ("exp_avg", "exp_avg_sq")]
        missing = [k for k in wanted if k not in saved]
        if missing:
            raise ValueError(f"checkpoint: optimizer.safetensors lacks {missing[:5]}")
        for k in self.names:
            for moments, suffix in ((self.m, "exp_avg"), (self.v, "exp_avg_sq")):
                value = saved[f"{k}.{suffix}"]
                if value.shape != moments[k].shape:
                    raise ValueError(f"checkpoint: optimizer state {k}.{suffix!r} has shape {tuple(value.shape)}, "
                                     f"expected {tuple(moments[k].shape)}")  # fmt: skip
                moments[k] = value.to(device=moments[k].device, dtype=moments[k].dtype).clone()
        self.t = int(saved["step"])


# ----------------------------------------------------------------------------- the loop


def _terminal_columns() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


class _Log:
    """tqdm on a terminal; plain lines every log_every steps otherwise; nothing when disabled."""

    def __init__(self, enabled: bool, total: int, initial: int, every: int, metric: str):
        self.enabled, self.every, self.metric = enabled, every, metric
        self.bar = None
        if enabled and sys.stderr.isatty() and _terminal_columns() > 0:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def step(self, step: int, loss: float, lr: float, rate: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % self.every == 0:
                self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", units_s=f"{rate:,.0f}")
        elif step % self.every == 0:
            print(f"step {step}: loss {loss:.4f} nats/unit, lr {lr:.3e}, {rate:,.0f} units/s", file=sys.stderr)

    def eval(self, step: int, nats: float, value: float) -> None:
        if not self.enabled:
            return
        line = f"step {step}: val loss {nats:.4f} nats/unit, {self.metric} {value:.4f}"
        (self.bar.write if self.bar is not None else lambda s: print(s, file=sys.stderr))(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_resume_config(meta: dict, cfg: TrainConfig, where: str) -> None:
    saved = meta["train_config"]
    now = cfg.to_dict()
    diff = [k for k in _RESUME_FIELDS if saved.get(k) != now[k]]
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs given {now[k]!r}" for k in diff)
        raise ValueError(f"cfg: resuming from {where} needs the same training settings ({details})")
    if meta["step"] > cfg.steps:
        raise ValueError(f"cfg.steps: expected at least the checkpoint's step {meta['step']}, got {cfg.steps}")


def train(trainable: Trainable, train_data, val_data=None, cfg: TrainConfig | None = None, out_dir=None,
          resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainResult:  # fmt: skip
    """Minimize the mean NLL per unit of `train_data` under `trainable` (module docstring: the math).

    train_data / val_data: integer NumPy arrays (N, ...) (or tuples (x, cond) with one N).
    out_dir: checkpoints every cfg.checkpoint_every steps and at the end (rank 0 only).
    resume: continue from out_dir's checkpoint (same model, config and training settings;
    ValueError otherwise). stop_at: stop after this many updates (<= cfg.steps), keeping the
    schedule of cfg.steps. progress: tqdm bar on a terminal, log lines otherwise; False: silent.
    Under torchrun (WORLD_SIZE > 1) the process group is started here; each rank takes its
    shard of every global batch. -> TrainResult.
    """
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(trainable, Trainable):
        raise TypeError(f"trainable: expected a Trainable, got {type(trainable).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}")
    arrays, is_tuple, n = _check_data(train_data, "train_data")
    val = _check_data(val_data, "val_data") if val_data is not None else None
    if val is not None and val[0][0].shape[1:] != arrays[0].shape[1:]:
        raise ValueError(f"val_data: expected examples of shape {arrays[0].shape[1:]} (as train_data), "
                         f"got {val[0][0].shape[1:]}")  # fmt: skip
    end = cfg.steps if stop_at is None else stop_at
    if not _is_int(end) or not 1 <= end <= cfg.steps:
        raise ValueError(f"stop_at: expected an int in [1, steps={cfg.steps}] or None, got {stop_at!r}")
    if resume and out_dir is None:
        raise ValueError("out_dir: expected the checkpoint directory to resume from, got None")

    created_group = False
    if not _dist_active() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        init_distributed(cfg.device)
        created_group = True
    try:
        return _train(trainable, arrays, is_tuple, n, val, cfg, out_dir, resume, progress, end)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _train(trainable, arrays, is_tuple, n, val, cfg, out_dir, resume, progress, end) -> TrainResult:
    rank, world = _rank_world()
    if cfg.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size: expected a multiple of the world size {world}, got {cfg.batch_size}")
    device = _device(cfg)
    units = _units(trainable, arrays)
    local = cfg.batch_size // world

    params = _to_master(trainable.params, device, cfg.dtype)
    history, start = History(), 0
    saved_optimizer = None
    if resume:
        out, meta = _read_meta(out_dir)
        _check_match(meta, trainable.name, trainable.config, str(out))
        _check_resume_config(meta, cfg, str(out))
        loaded, _ = load_checkpoint(out)
        if set(loaded) != set(params):
            raise ValueError(f"checkpoint: parameter names differ from the trainable's: "
                             f"{sorted(set(loaded) ^ set(params))}")  # fmt: skip
        params = {k: loaded[k].to(device=device, dtype=_master_dtype(cfg.dtype)).clone() for k in params}
        history, start = History.from_dict(meta["history"]), int(meta["step"])
        saved_optimizer = _load_optimizer(out, start)
        if end < start:
            raise ValueError(f"stop_at: expected at least the checkpoint's step {start}, got {end}")
    if world > 1:
        for value in params.values():
            torch.distributed.broadcast(value, src=0)
    for value in params.values():
        value.requires_grad_(True)
    opt = AdamW(params, cfg)
    if saved_optimizer is not None:
        opt.load_state_dict(saved_optimizer)
    ordered = list(params.values())
    write = out_dir is not None and rank == 0
    val_idx = _eval_indices(val[2], cfg.eval_batches, cfg.batch_size, cfg.seed) if val is not None else None
    log = _Log(progress and rank == 0, cfg.steps, start, cfg.log_every, trainable.metric)
    last_saved = start if resume else -1

    def evaluate_now(step):
        nats = _evaluate(trainable, {k: v.detach() for k, v in params.items()}, val[0], val[1], val_idx,
                         cfg.batch_size, device, cfg.dtype, units)  # fmt: skip
        history.eval_step.append(step)
        history.val_loss.append(nats)
        history.val_metric.append(metric_value(trainable.metric, nats))
        log.eval(step, nats, history.val_metric[-1])

    def checkpoint(step):
        nonlocal last_saved
        if write:
            save_checkpoint(out_dir, trainable, params, cfg, step, history, opt.state_dict())
        last_saved = step

    try:
        for s in range(start, end):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, s)
            idx = batch_indices(n, cfg.batch_size, s, cfg.seed)[rank * local:(rank + 1) * local]
            batch = _take(arrays, is_tuple, idx, device)
            rng = numpy.random.default_rng([cfg.seed, _STREAM_MODEL, s, rank])
            with _autocast(device, cfg.dtype):
                lp = trainable.log_prob(params, batch, rng)
            if lp.shape != (local,):
                raise ValueError(f"trainable.log_prob: expected shape ({local},), got {tuple(lp.shape)}")
            nll_sum = -lp.sum()
            loss = nll_sum / (cfg.batch_size * units)
            grads = torch.autograd.grad(loss, ordered, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(ordered, grads)]
            if world > 1:
                grads = _all_reduce_grads(grads)
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
            if not math.isfinite(norm):
                raise FloatingPointError(f"step {s + 1}: gradient norm is {norm} (loss {float(loss.detach())})")
            if cfg.grad_clip is not None and norm > cfg.grad_clip:
                scale = cfg.grad_clip / norm  # g <- g * c / ||g||: the clipped norm is c
                grads = [g * scale for g in grads]
            opt.step(grads, lr)
            (total_nll,) = _sum_across_ranks([float(nll_sum.detach())], device)
            step = s + 1
            seconds = time.perf_counter() - t0
            history.step.append(step)
            history.lr.append(lr)
            history.loss.append(total_nll / (cfg.batch_size * units))
            history.grad_norm.append(norm)
            history.units_per_s.append(cfg.batch_size * units / seconds if seconds > 0 else math.inf)
            log.step(step, history.loss[-1], lr, history.units_per_s[-1])
            if val is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != end:
                evaluate_now(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != end:
                checkpoint(step)
        if val is not None and (not history.eval_step or history.eval_step[-1] != end):
            evaluate_now(end)
        if out_dir is not None and last_saved != end:
            checkpoint(end)
    finally:
        log.close()
    final = {k: v.detach() for k, v in params.items()}
    return TrainResult(params=final, history=history, step=end, out_dir=Path(out_dir) if out_dir else None,
                       metric=trainable.metric)  # fmt: skip
