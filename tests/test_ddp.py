"""fast/train/ under torch.distributed: 2 CPU processes (gloo) train exactly what 1 process trains.

The loss is a mean over the examples of the global batch, so the gradient decomposes:
grad L = mean over the R ranks of grad (-(R / (B D)) sum over the rank's shard of log p). Two ranks,
each with half of every batch (the gradient of its half's mean loss) and the gradients
averaged by all_reduce, must reach the parameters and AdamW state of one process on the whole
batch, up to the order of float summation (compared in float64 against the float64 row of the
tolerance table).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

import chainrule.fast.gpt as gpt
from chainrule.fast.train import (
    Trainable, TrainConfig, init_distributed, load_checkpoint, read_optimizer_state, train,
)  # fmt: skip
from chainrule.reference.checks import assert_close

WORLD = 2
TEXT = b"to be or not to be, that is the question. " * 6


def _data() -> np.ndarray:
    data = np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64)
    return np.lib.stride_tricks.sliding_window_view(data, 5)[::3].copy()  # (85, 5)


def _trainable() -> Trainable:
    config = gpt.Config(vocab_size=256, block_size=5, n_layer=1, n_head=1, n_embd=8)
    return Trainable.from_module(gpt, config, gpt.init(config, np.random.default_rng(1)))


CFG = TrainConfig(steps=3, batch_size=6, lr=3e-2, warmup_steps=1, grad_clip=0.3, dtype="float64", eval_every=2,
                  eval_batches=2, seed=5)  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, ports: tuple, out: str) -> None:
    torch.set_num_threads(1)  # two processes share the cores
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(ports[0]))  # fmt: skip
    data = _data()
    # as under torchrun: `train` joins the process group the environment describes, and leaves it
    result = train(_trainable(), data, data[:20], CFG, out_dir=os.path.join(out, f"ckpt{rank}"), progress=False)
    assert not torch.distributed.is_initialized()
    np.savez(os.path.join(out, f"rank{rank}.npz"), loss=np.array(result.history.loss),
             val=np.array(result.history.val_loss), **{k: v.numpy() for k, v in result.params.items()})  # fmt: skip
    # a global batch that does not split evenly is refused on every rank
    os.environ["MASTER_PORT"] = str(ports[1])
    assert init_distributed() == (rank, WORLD)
    try:
        train(_trainable(), data, cfg=TrainConfig(steps=1, batch_size=5), progress=False)
    except ValueError as error:
        assert "batch_size: expected a multiple of the world size 2, got 5" in str(error), error
    else:
        raise AssertionError("batch_size 5 on 2 ranks was accepted")
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_equal_one_on_the_combined_batch(tmp_path):
    mp.spawn(_worker, args=((_free_port(), _free_port()), str(tmp_path)), nprocs=WORLD, join=True)
    data = _data()
    single = train(_trainable(), data, data[:20], CFG, out_dir=tmp_path / "single", progress=False)
    ranks = [np.load(tmp_path / f"rank{r}.npz", allow_pickle=False) for r in range(WORLD)]
    worst = 0.0
    for name, value in single.params.items():
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])  # the ranks hold identical parameters
        result = assert_close(f"params[{name}]", value.numpy(), ranks[0][name], "float64")
        worst = max(worst, result.max_err)
    assert_close("train loss", np.array(single.history.loss), ranks[0]["loss"], "float64")
    assert_close("val loss", np.array(single.history.val_loss), ranks[0]["val"], "float64")
    # the parameters moved: agreement is not the trivial one of untrained parameters
    init = _trainable().params
    assert max(float(np.abs(ranks[0][k] - init[k]).max()) for k in init) > 1e-2
    print(f"2-rank vs 1-process float64 parameters: max |difference| = {worst:.3g}")
    # only rank 0 writes checkpoints
    assert not (tmp_path / "ckpt1").exists()
    params, meta = load_checkpoint(tmp_path / "ckpt0", name="gpt")
    assert meta["step"] == 3
    for name in params:
        np.testing.assert_array_equal(params[name].numpy(), ranks[0][name])
    # and its AdamW state is that of the single process
    want, got = read_optimizer_state(tmp_path / "single"), read_optimizer_state(tmp_path / "ckpt0")
    assert want["param_groups"] == got["param_groups"] and want["state"].keys() == got["state"].keys()
    for i, entry in want["state"].items():
        assert float(got["state"][i]["step"]) == float(entry["step"]) == 3.0
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(f"optimizer[{i}].{key}", entry[key].numpy(), got["state"][i][key].numpy(), "float64")
