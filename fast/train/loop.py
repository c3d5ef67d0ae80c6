"""The training loop: what a model gives it (Trainable), the batches, train, evaluate, History, TrainResult.

The math, the determinism that makes resume exact, and the resume rule are in the package's
docstring (chainrule.fast.train).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy
import torch
from tqdm import tqdm

from chainrule.fast.backend import to_torch
from chainrule.fast.train import distributed
from chainrule.fast.train.checkpoints import (
    check_match, check_resumable, load_checkpoint, read_meta, restore_optimizer, save_checkpoint,
)  # fmt: skip
from chainrule.fast.train.config import DTYPES, METRICS, TrainConfig, is_int, metric_value
from chainrule.fast.train.optim import clip_gradients, learning_rate, make_optimizer, set_learning_rate

# Fields of TrainConfig that change the numbers a resumed run computes: they must match the checkpoint.
RESUME_FIELDS = ("batch_size", "lr", "weight_decay", "betas", "eps", "warmup_steps", "min_lr", "grad_clip",
                 "dtype", "seed")  # fmt: skip
# Those of the learning-rate schedule (with `steps`): a resume with new_schedule=True may change them.
SCHEDULE_FIELDS = ("lr", "warmup_steps", "min_lr")

# Independent random streams derived from the seed.
STREAM_BATCHES, STREAM_MODEL, STREAM_EVAL = 1, 2, 3


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
        if self.units is not None and (not is_int(self.units) or self.units < 1):
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
        perm = numpy.random.default_rng([seed, STREAM_BATCHES, epoch]).permutation(n)
        perm.setflags(write=False)
        _PERM_CACHE.clear()  # one epoch at a time (at most two are alive per step)
        _PERM_CACHE[key] = perm
    return perm


def _take(arrays: tuple, is_tuple: bool, idx: numpy.ndarray, device):
    tensors = tuple(torch.from_numpy(numpy.ascontiguousarray(a[idx])).to(device) for a in arrays)
    tensors = tuple(t.long() if not t.is_floating_point() else t for t in tensors)
    return tensors if is_tuple else tensors[0]


# ----------------------------------------------------------------------------- history and result



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
    perm = numpy.random.default_rng([seed, STREAM_EVAL]).permutation(n)
    return numpy.sort(perm[: cfg_batches * batch_size])


def _evaluate(trainable, params, arrays, is_tuple, idx, batch_size, device, dtype, units) -> float:
    """Mean nats per unit over data[idx]; under torch.distributed each rank takes every R-th batch."""
    rank, world = distributed.rank_world()
    total = 0.0
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    with torch.no_grad(), _autocast(device, dtype):
        for b in batches[rank::world]:
            lp = trainable.log_prob(params, _take(arrays, is_tuple, b, device), None)
            total += -float(lp.double().sum())
    (total,) = distributed.sum_across_ranks([total], device)
    return total / (len(idx) * units)


def evaluate(trainable: Trainable, params: dict, data, *, batch_size: int = 64, max_examples: int | None = None,
             seed: int = 0, dtype: str = "float32", device: str = "cpu") -> tuple[float, float]:  # fmt: skip
    """Held-out mean NLL per unit (nats) and the trainable's metric on `data` (all of it, or
    `max_examples` chosen by a permutation from `seed`). Teacher forcing, no gradients."""
    arrays, is_tuple, n = _check_data(data, "data")
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    dev = torch.device(device)
    if max_examples is None:
        idx = numpy.arange(n)
    else:
        if not is_int(max_examples) or max_examples < 1:
            raise ValueError(f"max_examples: expected a positive int or None, got {max_examples!r}")
        idx = numpy.sort(numpy.random.default_rng([seed, STREAM_EVAL]).permutation(n)[:max_examples])
    p = {k: v.detach() for k, v in _to_master(params, dev, dtype).items()}
    nats = _evaluate(trainable, p, arrays, is_tuple, idx, batch_size, dev, dtype, _units(trainable, arrays))
    return nats, metric_value(trainable.metric, nats)


def _to_master(params: dict, device, dtype: str) -> dict:
    """The loop's own copies of `params`: torch tensors on `device` in the master dtype (float64 for
    "float64", else float32), detached from the caller's."""
    master = _master_dtype(dtype)
    out = {}
    for name, value in params.items():
        t = to_torch(value, device=device, dtype=master)
        if not t.is_floating_point():
            raise ValueError(f"params[{name!r}]: expected a float array, got {t.dtype}")
        out[name] = t.detach().clone()
    return out



# ----------------------------------------------------------------------------- the loop


def _check_resume(meta: dict, cfg: TrainConfig, where: str) -> int:
    """ValueError unless cfg may resume the checkpoint `meta` (see the package docstring's rule);
    -> the step where the resumed run's learning-rate schedule begins."""
    saved, now, start = meta["train_config"], cfg.to_dict(), int(meta["step"])
    fields = [k for k in RESUME_FIELDS if not (cfg.new_schedule and k in SCHEDULE_FIELDS)]
    diff = [k for k in fields if saved.get(k) != now[k]]
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs given {now[k]!r}" for k in diff)
        raise ValueError(f"cfg: resuming from {where} needs the same training settings ({details})")
    if cfg.new_schedule:
        if cfg.steps <= start:
            raise ValueError(f"TrainConfig.steps: new_schedule=True starts a schedule at the checkpoint's step "
                             f"{start} that ends at steps; expected steps > {start}, got {cfg.steps}")  # fmt: skip
        if cfg.warmup_steps > cfg.steps - start:
            raise ValueError(f"TrainConfig.warmup_steps: expected at most the new schedule's length steps - {start} "
                             f"= {cfg.steps - start}, got {cfg.warmup_steps}")  # fmt: skip
        return start
    if saved.get("steps") != cfg.steps:
        raise ValueError(f"TrainConfig.steps: resuming continues the learning-rate schedule of {where}, which ends at "
                         f"steps={saved.get('steps')}; got steps={cfg.steps}. Keep steps={saved.get('steps')} to "
                         f"finish that run exactly, or pass new_schedule=True (TrainConfig(..., new_schedule=True); "
                         f"chainrule train: --config new_schedule=true) to start a new warmup + cosine schedule "
                         f"from the checkpoint's weights at step {start}, ending at steps={cfg.steps}")  # fmt: skip
    return int(meta.get("schedule_start", 0))


def train(trainable: Trainable, train_data, val_data=None, cfg: TrainConfig | None = None, out_dir=None,
          resume: bool = False, progress: bool = True, stop_at: int | None = None) -> TrainResult:  # fmt: skip
    """Minimize the mean NLL per unit of `train_data` under `trainable` (package docstring: the math).

    train_data / val_data: integer NumPy arrays (N, ...) (or tuples (x, cond) with one N).
    out_dir: checkpoints every cfg.checkpoint_every steps and at the end (rank 0 only).
    resume: continue from out_dir's checkpoint: same model, config and training settings, and the
    same `steps` -- the checkpoint's schedule goes on -- unless cfg.new_schedule (ValueError
    otherwise; a version-1 checkpoint, written before torch.optim.AdamW, is refused).
    stop_at: stop after this many updates (<= cfg.steps), keeping the schedule of cfg.steps.
    progress: a tqdm bar on a terminal, log lines every cfg.log_every steps otherwise (stderr,
    rank 0); False: silent. Under torchrun (WORLD_SIZE > 1) the process group is started here;
    each rank takes its shard of every global batch. -> TrainResult.
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
    if not is_int(end) or not 1 <= end <= cfg.steps:
        raise ValueError(f"stop_at: expected an int in [1, steps={cfg.steps}] or None, got {stop_at!r}")
    if resume and out_dir is None:
        raise ValueError("out_dir: expected the checkpoint directory to resume from, got None")

    created_group = False
    if not distributed.active() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        distributed.init_distributed(cfg.device)
        created_group = True
    try:
        return _train(trainable, arrays, is_tuple, n, val, cfg, out_dir, resume, progress, end)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _train(trainable, arrays, is_tuple, n, val, cfg, out_dir, resume, progress, end) -> TrainResult:
    rank, world = distributed.rank_world()
    if cfg.batch_size % world:
        raise ValueError(f"TrainConfig.batch_size: expected a multiple of the world size {world}, got {cfg.batch_size}")
    device = distributed.training_device(cfg.device)
    units = _units(trainable, arrays)
    local = cfg.batch_size // world

    params = _to_master(trainable.params, device, cfg.dtype)
    history, start, schedule_start = History(), 0, 0
    if resume:
        out, meta = read_meta(out_dir)
        check_match(meta, trainable.name, trainable.config, str(out))
        check_resumable(out, meta)
        schedule_start = _check_resume(meta, cfg, str(out))
        loaded, _ = load_checkpoint(out)
        if set(loaded) != set(params):
            raise ValueError(f"checkpoint: parameter names differ from the trainable's: "
                             f"{sorted(set(loaded) ^ set(params))}")  # fmt: skip
        params = {k: loaded[k].to(device=device, dtype=_master_dtype(cfg.dtype)).clone() for k in params}
        history, start = History.from_dict(meta["history"]), int(meta["step"])
        if end < start:
            raise ValueError(f"stop_at: expected at least the checkpoint's step {start}, got {end}")
    ordered = list(params.values())
    if world > 1:
        distributed.broadcast_(ordered)  # every rank starts from rank 0's parameters
    for value in ordered:
        value.requires_grad_(True)
    opt = make_optimizer(params, cfg, device)
    if resume:
        restore_optimizer(out_dir, opt, params)
    write = out_dir is not None and rank == 0
    val_idx = _eval_indices(val[2], cfg.eval_batches, cfg.batch_size, cfg.seed) if val is not None else None
    shown = progress and rank == 0
    # disable=None: tqdm draws the bar only on a terminal; elsewhere the loop prints log lines
    bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
               disable=None if shown else True)  # fmt: skip
    last_saved = start if resume else -1

    def evaluate_now(step):
        nats = _evaluate(trainable, {k: v.detach() for k, v in params.items()}, val[0], val[1], val_idx,
                         cfg.batch_size, device, cfg.dtype, units)  # fmt: skip
        history.eval_step.append(step)
        history.val_loss.append(nats)
        history.val_metric.append(metric_value(trainable.metric, nats))
        if shown:
            tqdm.write(f"step {step}: val loss {nats:.4f} nats/unit, {trainable.metric} {history.val_metric[-1]:.4f}",
                       file=sys.stderr)  # fmt: skip

    def checkpoint(step):
        nonlocal last_saved
        if write:
            save_checkpoint(out_dir, trainable, params, cfg, step, history, opt, schedule_start=schedule_start)
        last_saved = step

    try:
        for s in range(start, end):
            t0 = time.perf_counter()
            lr = learning_rate(cfg, s, start=schedule_start)
            idx = batch_indices(n, cfg.batch_size, s, cfg.seed)[rank * local:(rank + 1) * local]
            batch = _take(arrays, is_tuple, idx, device)
            rng = numpy.random.default_rng([cfg.seed, STREAM_MODEL, s, rank])
            with _autocast(device, cfg.dtype):
                lp = trainable.log_prob(params, batch, rng)
            if lp.shape != (local,):
                raise ValueError(f"trainable.log_prob: expected shape ({local},), got {tuple(lp.shape)}")
            nll_sum = -lp.sum()
            loss = nll_sum / (local * units)  # this rank's mean; the ranks' gradients are averaged
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for value in ordered:  # a parameter the loss does not reach: a zero gradient (decay still applies)
                if value.grad is None:
                    value.grad = torch.zeros_like(value)
            if world > 1:
                distributed.average_gradients_(ordered)
            norm = clip_gradients(ordered, cfg.grad_clip)
            if not math.isfinite(norm):
                raise FloatingPointError(f"step {s + 1}: gradient norm is {norm} (loss {float(loss.detach())})")
            set_learning_rate(opt, lr)
            opt.step()
            (total_nll,) = distributed.sum_across_ranks([float(nll_sum.detach())], device)
            step = s + 1
            seconds = time.perf_counter() - t0
            history.step.append(step)
            history.lr.append(lr)
            history.loss.append(total_nll / (cfg.batch_size * units))
            history.grad_norm.append(norm)
            history.units_per_s.append(cfg.batch_size * units / seconds if seconds > 0 else math.inf)
            bar.update(1)
            if step % cfg.log_every == 0 and shown:
                loss_now, rate = history.loss[-1], history.units_per_s[-1]
                if not bar.disable:
                    bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{lr:.2e}", units_s=f"{rate:,.0f}")
                else:
                    print(f"step {step}: loss {loss_now:.4f} nats/unit, lr {lr:.3e}, {rate:,.0f} units/s",
                          file=sys.stderr)  # fmt: skip
            if val is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != end:
                evaluate_now(step)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != end:
                checkpoint(step)
        if val is not None and (not history.eval_step or history.eval_step[-1] != end):
            evaluate_now(end)
        if out_dir is not None and last_saved != end:
            checkpoint(end)
    finally:
        bar.close()
    final = {k: v.detach() for k, v in params.items()}
    return TrainResult(params=final, history=history, step=end, out_dir=Path(out_dir) if out_dir else None,
                       metric=trainable.metric)  # fmt: skip
