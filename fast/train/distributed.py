"""Data parallel training on torch.distributed: the process group, the main process, gradient averaging.

    init_distributed(device="cpu") -> (rank, world_size)   the process group torchrun describes
    main_process() -> bool          rank 0 (or not distributed): the process that prints and writes files
    rank_world() -> (rank, world_size)
    training_device(name) -> torch.device
    broadcast_(tensors)             rank 0's values to every rank, in place
    average_gradients_(tensors)     every .grad becomes its mean over the ranks, in place
    sum_across_ranks(values, device) -> list[float]

Every rank computes the gradient of the mean loss over its shard of the global batch; the mean
of those gradients over the ranks is the gradient of the mean over the global batch (the
shards are equal). It is taken with one torch.distributed.all_reduce of one flat bucket of all
gradients: ReduceOp.AVG on NCCL; gloo has no AVG, so there it is ReduceOp.SUM, then a division
by the world size.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside an initialized torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
    gloo on the CPU, NCCL on CUDA (each rank on cuda:LOCAL_RANK). -> (rank, world_size)."""
    if active():
        return rank_world()
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"environment: expected {var} (set by torchrun) for distributed training, got none")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return rank_world()


def main_process() -> bool:
    """True on rank 0 (or without torch.distributed): the process that should print and write files.
    Read from the process group when one is active, else from torchrun's RANK variable."""
    if active():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def training_device(name: str) -> torch.device:
    """The device a rank trains on: `name`, with a bare "cuda" meaning cuda:LOCAL_RANK under
    torch.distributed. ValueError when CUDA is asked for and there is none."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"TrainConfig.device: expected an available device, got {name!r} (no CUDA)")
        if active() and device.index is None:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return device


@torch.no_grad()
def broadcast_(tensors: list) -> None:
    """Every rank's tensors become rank 0's (the parameters start from one initialization)."""
    for t in tensors:
        dist.broadcast(t, src=0)


@torch.no_grad()
def average_gradients_(tensors: list) -> None:
    """t.grad <- mean over the ranks of t.grad, for every tensor: one all_reduce of a flat bucket."""
    grads = [t.grad for t in tensors]
    flat = torch.cat([g.reshape(-1) for g in grads])
    if dist.get_backend() == dist.Backend.NCCL:
        dist.all_reduce(flat, op=dist.ReduceOp.AVG)
    else:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def sum_across_ranks(values: list[float], device) -> list[float]:
    """The sums over the ranks of a few floats (float64), or the values themselves without a group."""
    if not active():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
