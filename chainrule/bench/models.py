"""Trained models shared by the decoding benchmarks (speculative, Medusa, lookahead).

`trained_gpt_pair(quick=False)` -> (target_config, target_params, draft_config, draft_params):
two byte-level GPTs (vocab 256) trained by the training loop (`fast.train`) on the same
text, `chainrule.data.stdlib_bytes` (Python's standard library sources):

    target   4 layers x 128 channels (4 heads), context 96
    draft    1 layer  x 64 channels (2 heads),  context 96

The draft has 11.5x fewer weights (72,640 vs 838,400); trained on the same bytes it agrees with the
target on most tokens of source code (indentation, keywords, identifiers seen before),
which is what makes speculative decoding pay (measured: alpha ~0.8 greedy, ~0.75 sampled).
Trained for 450 steps of 16 x 96 bytes, the target reaches about 3.3 bits/byte on held-out text
(a small, quickly trained model). `quick=True` gives a much smaller pair trained for a few
seconds (for `--quick` runs of the benches).

Training is deterministic (fixed seeds, stateless batches) and its result is cached as
safetensors + JSON (the training loop's checkpoint format) in
bench-results/models/<name>-<key>/, where key is a hash of everything that determines
the numbers (model config, training config, data size, format version): a repeated bench
reuses the checkpoint instead of training again. Params come back as float32 CPU torch
tensors (the training dtype).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy

MODELS_DIR = Path("bench-results") / "models"  # relative to the working directory, like the bench JSON
CACHE_VERSION = 1

TARGET = dict(vocab_size=256, block_size=96, n_layer=4, n_head=4, n_embd=128)
DRAFT = dict(vocab_size=256, block_size=96, n_layer=1, n_head=2, n_embd=64)
TRAIN = dict(steps=450, batch_size=16, lr=3e-3, weight_decay=0.1, warmup_steps=30, min_lr=1e-4,
             grad_clip=1.0, log_every=50, seed=0)  # fmt: skip
DATA_BYTES = 2_000_000

QUICK_TARGET = dict(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32)
QUICK_DRAFT = dict(vocab_size=256, block_size=64, n_layer=1, n_head=1, n_embd=16)
QUICK_TRAIN = dict(steps=40, batch_size=8, lr=3e-3, weight_decay=0.1, warmup_steps=5, min_lr=1e-4,
                   grad_clip=1.0, log_every=10, seed=0)  # fmt: skip
QUICK_DATA_BYTES = 200_000


def _key(name: str, model: dict, train: dict, n_bytes: int) -> str:
    text = json.dumps({"name": name, "model": model, "train": train, "bytes": n_bytes, "v": CACHE_VERSION},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def trained_gpt(name: str, model: dict, train: dict, n_bytes: int, progress: bool = False):
    """A byte-level GPT of config `model` trained with `train` (fast.train.TrainConfig fields) on the
    first n_bytes of stdlib_bytes('train'), windows of block_size bytes -> (config, params).
    Cached under MODELS_DIR (see the module docstring)."""
    from chainrule import data
    from chainrule.fast import train as ft
    from chainrule.fast import gpt as fgpt
    from chainrule.reference import gpt

    config = gpt.Config(**model)
    out_dir = MODELS_DIR / f"{name}-{_key(name, model, train, n_bytes)}"
    cfg = ft.TrainConfig(**train)
    try:
        params, meta = ft.load_checkpoint(out_dir, name=name, config=config)
        if meta["step"] == cfg.steps:
            return config, params
    except FileNotFoundError:
        pass
    stream = data.stdlib_bytes(n_bytes, "train")
    windows = data.windows(stream, config.block_size)  # (N, block_size)
    val = data.windows(data.stdlib_bytes(n_bytes // 10, "validation"), config.block_size)
    init = gpt.init(config, numpy.random.default_rng(train.get("seed", 0)))
    trainable = ft.Trainable.from_module(fgpt, config, init, name=name)
    ft.train(trainable, windows, val, cfg, out_dir=out_dir, progress=progress)
    params, _ = ft.load_checkpoint(out_dir, name=name, config=config)
    return config, params


def trained_gpt_pair(quick: bool = False, progress: bool = False):
    """(target_config, target_params, draft_config, draft_params): a target and a smaller draft
    trained on the same bytes (module docstring). Cached; the first call trains (about three to
    four minutes on two idle cores, longer on a busy machine; seconds with quick=True)."""
    if quick:
        t = trained_gpt("quick-target", QUICK_TARGET, QUICK_TRAIN, QUICK_DATA_BYTES, progress)
        d = trained_gpt("quick-draft", QUICK_DRAFT, QUICK_TRAIN, QUICK_DATA_BYTES, progress)
    else:
        t = trained_gpt("target", TARGET, TRAIN, DATA_BYTES, progress)
        d = trained_gpt("draft", DRAFT, TRAIN, DATA_BYTES, progress)
    return t[0], t[1], d[0], d[1]
