"""Training: one loop for every model that follows the protocol (teacher forcing, mean NLL).

API
---
    TrainConfig(steps, batch_size, lr, weight_decay, betas, eps, warmup_steps, min_lr, grad_clip,
                dtype, eval_every, eval_batches, checkpoint_every, log_every, seed, device, new_schedule)
        frozen, validated (ValueError names the field); TrainConfig.from_dict(d), .to_dict().
        dtype: "float32" (float32 everything), "bfloat16" (float32 master weights, bfloat16
        autocast for the forward pass) or "float64". new_schedule: see "Resume" below.
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
        resume=True continues from out_dir's checkpoint (see "Resume"); stop_at=k stops after
        update k (a run to be resumed later: the schedule is that of cfg.steps). Every run
        evaluates (when val_data is given) every eval_every steps and where it stops.
        TrainResult.val_loss / .val_metric: the last evaluation.
    History: per step `step, lr, loss (train, nats/unit), grad_norm, units_per_s`; per evaluation
        `eval_step, val_loss (nats/unit), val_metric`; .to_dict() / History.from_dict(d).
    evaluate(trainable, params, data, *, batch_size=64, max_examples=None, seed=0, dtype="float32",
             device="cpu") -> (nats per unit, metric value)
    learning_rate(cfg, step, *, start=0) -> float    the schedule (warmup + cosine) at step (0-based)
    make_optimizer(params, cfg, device) -> torch.optim.AdamW     the optimizer of a run
    batch_indices(n, batch_size, step, seed)    the examples of a step's global batch
    metric_value(metric, nats_per_unit) -> float
    save_checkpoint(out_dir, trainable, params, cfg, step, history, optimizer=None, *, schedule_start=0)
    load_checkpoint(out_dir, *, name=None, config=None) -> (params, meta)
        params: dict of CPU tensors from model.safetensors; meta: checkpoint.json as a dict
        ("model", "config" (dict), "train_config" (dict), "step", "schedule_start", "metric",
        "units", "optimizer", "history"). FileNotFoundError for a missing checkpoint; ValueError
        for a mismatching name/config.
    read_optimizer_state(out_dir) -> dict    the saved optimizer state as torch.optim's state_dict
    init_distributed(device="cpu") -> (rank, world_size)   process group from torchrun's variables
    main_process() -> bool        rank 0 (or not distributed): the process that prints and writes files
    Distributed data parallel: run under `torchrun --nproc_per_node N ...`; `train` starts the process
    group itself when WORLD_SIZE > 1 (gloo on CPU, NCCL on CUDA) and every rank computes its shard.

The modules: config.py (TrainConfig, metrics), optim.py (AdamW, the schedule, clipping),
checkpoints.py (the files), distributed.py (process group, gradient averaging), loop.py
(Trainable, batches, train, evaluate). Everything public is importable from here.

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
torch.optim.AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"; Adam:
Kingma & Ba 2015), fused=True on CUDA and foreach=True on the CPU (optim.py says why):

    m_t = b1 m_{t-1} + (1 - b1) g_t,        v_t = b2 v_{t-1} + (1 - b2) g_t^2
    theta_t = theta_{t-1} - lr_t * wd * theta_{t-1} - lr_t * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps)

Weight decay applies to tensors with two or more dimensions (weight matrices, embedding tables,
convolution kernels) and not to one-dimensional ones (biases, layer-norm gains and biases), the
rule of GPT-2 style training code (nanoGPT): two parameter groups. A parameter the loss does not
reach gets a zero gradient (so it still decays). The gradient is clipped to a global L2 norm
(Pascanu et al. 2013): g <- g * min(1, c / ||g||_2) over all parameters at once.

The learning rate at step s = 0, 1, ..., S-1 (S = steps, W = warmup_steps) is linear warmup then a
cosine decay to min_lr (Loshchilov & Hutter 2017, SGDR; as in GPT-3's training):

    lr_s = lr * (s + 1) / W                                           s < W
    lr_s = min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (S - W))) / 2    s >= W

It is a pure function of the step, learning_rate(cfg, step), set on the optimizer before every
update: there is no scheduler state to save or to get out of step.

Determinism and exact resume
----------------------------
Nothing random is carried from step to step: the examples of step s are the positions
s*B .. s*B + B - 1 of an endless sequence of epochs, epoch e being a permutation drawn from
numpy's default_rng([seed, 1, e]); a model's own randomness (dropout) at step s draws from
default_rng([seed, 2, s, rank]). So a checkpoint holds only the parameters, the optimizer
state (AdamW's moments and step counts) and the step, and training k steps, stopping and
resuming to n gives bit for bit the parameters, optimizer state, learning rates and losses of n
steps without interruption (on the CPU in float32 or float64).

Resume
------
A resumed run continues the checkpoint's learning-rate schedule, whose length was fixed by the
original run's `steps`: resuming needs the same `steps` (and the same model, config and the
settings that change the numbers), and then reproduces the uninterrupted run exactly. Asking
for another `steps` is refused with a ValueError naming `steps`, unless
TrainConfig(new_schedule=True) (CLI: --config new_schedule=true): that starts a new schedule at
the checkpoint's step k from its weights and optimizer state -- warmup then cosine over the
steps k .. steps-1, lr at step s = learning_rate(cfg, s, start=k), so the first resumed step
has lr / warmup_steps (lr without warmup) -- and lr, warmup_steps and min_lr may change with it.
The checkpoint records where its schedule began ("schedule_start"), so a run resumed with a new
schedule, stopped and resumed again (without new_schedule, same steps) is exact too. Checkpoints
written before torch.optim.AdamW (format version 1) load for sampling but cannot be resumed.

Checkpoints (out_dir) hold no pickle: model.safetensors (the parameters), optimizer.safetensors
(AdamW's "<name>.exp_avg", "<name>.exp_avg_sq"), checkpoint.json (model name, model config,
train config, step, schedule_start, metric, units, the optimizer's step counts and parameter
groups, history). Files are written to temporary names, made world-readable (0o644) and renamed
into place, checkpoint.json last.

Precision: "float32" and "float64" compute everything in that dtype. "bfloat16" keeps float32
parameters, gradients and optimizer state and runs the forward pass under torch.autocast: matrix
products and convolutions in bfloat16, reductions and the models' log-softmax in float32.

Data parallel
-------------
Under torch.distributed with world size R, every rank draws the same global batch of B
examples and takes its contiguous shard of B / R; each computes the gradient of its shard's
mean loss -(1 / ((B / R) D)) sum over its shard of log p, and the gradients are averaged across
ranks (torch.distributed.all_reduce of one flat bucket; distributed.py): exactly the gradient of
the global loss, up to the order of float summation. The parameters start from rank 0's; only
rank 0 writes checkpoints and logs. (A model with its own randomness, dropout, draws it per
rank, so its masks, unlike its gradients, depend on R.)
"""

from __future__ import annotations

from chainrule.fast.train.checkpoints import (
    CHECKPOINT_FILES, FORMAT, FORMAT_VERSION, load_checkpoint, read_optimizer_state, save_checkpoint,
)  # fmt: skip
from chainrule.fast.train.config import DTYPES, METRICS, TrainConfig, metric_value
from chainrule.fast.train.distributed import init_distributed, main_process
from chainrule.fast.train.loop import History, Trainable, TrainResult, batch_indices, evaluate, train
from chainrule.fast.train.optim import learning_rate, make_optimizer

__all__ = [
    "DTYPES", "METRICS", "TrainConfig", "Trainable", "History", "TrainResult", "learning_rate",
    "metric_value", "batch_indices", "evaluate", "train", "save_checkpoint", "load_checkpoint",
    "read_optimizer_state", "make_optimizer", "init_distributed", "main_process", "CHECKPOINT_FILES",
    "FORMAT", "FORMAT_VERSION",
]  # fmt: skip
