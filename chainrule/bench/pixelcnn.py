"""Bench topic "pixelcnn": cached vs naive sampling of image models.

pixelcnn   16 images, 28x28 grayscale over 256 levels, small widths (PixelCNN and Gated
           PixelCNN, hidden 16, 4 layers, float32): fast.pixelcnn.generate with
           method="cached" (Ramachandran et al. 2017: every layer computed at the new
           position only, from caches) vs method="naive" (the whole network on the whole
           image for each of the H W C entries), timed in the same run, both from the same
           uniforms; the samples must agree (float32 ties aside: the count of equal entries
           is reported). `--quick`: 4 images of 12x12.
           PixelCNN++: 16 RGB images of 32x32 (chainrule.bench.pixelcnnpp).

The topic runs every function of SAMPLING_CASES in turn: each takes the Run, times its
contenders with `run.time`, and returns one summary row
    [model, images, naive s, cached s, speedup, equal entries]
so that another model's cached sampler can join the same table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy

from chainrule.bench import Run, topic
from chainrule.bench.pixelcnnpp import pixelcnnpp_case

PIXELCNN_SIZE = dict(channels=1, height=28, width=28, levels=256, hidden=16, n_layers=4, kernel_size=3,
                     input_kernel=7)  # fmt: skip
PIXELCNN_QUICK = dict(PIXELCNN_SIZE, height=12, width=12)
BATCH, BATCH_QUICK = 16, 4


def pixelcnn_sampling_case(run: Run, kind: str) -> list:
    """Cached vs naive sampling for one PixelCNN kind ("pixelcnn" or "gated") -> the summary row."""
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import pixelcnn as fpc
    from chainrule.reference import pixelcnn as pc

    config = pc.Config(kind=kind, **(PIXELCNN_QUICK if run.quick else PIXELCNN_SIZE))
    B = BATCH_QUICK if run.quick else BATCH
    rng = numpy.random.default_rng(0)
    params = fb.to_torch(pc.random_params(config, rng), device="cpu", dtype=torch.float32)
    u = rng.random((B, config.channels, config.height, config.width))
    case = f"{kind} {B}x{config.height}x{config.width}"
    out = {}

    def cached():
        out["cached"] = fpc.generate(params, config, u, method="cached")

    def naive():
        out["naive"] = fpc.generate(params, config, u, method="naive")

    entries = B * config.channels * config.height * config.width
    t_cached = run.time(case, "cached (per-layer caches)", cached, work=entries, unit="entries", baseline=True)
    t_naive = run.time(case, "naive (whole image per entry)", naive, work=entries, unit="entries", repeats=1,
                       warmup=0)  # fmt: skip
    equal = float((out["cached"] == out["naive"]).double().mean())
    speedup = t_naive.median / t_cached.median
    run.note(f"{case}: speedup cached over naive", round(speedup, 1))
    run.note(f"{case}: fraction of entries equal (cached vs naive, same uniforms)", equal)
    return [f"{'PixelCNN' if kind == 'pixelcnn' else 'Gated PixelCNN'} ({config.levels} levels, hidden "
            f"{config.hidden}, {config.n_layers} layers, float32)", f"{B} x {config.height}x{config.width}",
            t_naive.median, t_cached.median, f"{speedup:.1f}x", equal]  # fmt: skip


SAMPLING_CASES: list[Callable[[Run], list]] = [
    lambda run: pixelcnn_sampling_case(run, "pixelcnn"),
    lambda run: pixelcnn_sampling_case(run, "gated"),
    lambda run: pixelcnnpp_case(run, run.quick),
]


@topic("pixelcnn", "image sampling: cached (Ramachandran et al. 2017) vs naive generation: PixelCNN, Gated PixelCNN 28x28, PixelCNN++ 32x32",
       repeats=3)  # fmt: skip
def bench_pixelcnn(run: Run) -> None:
    import torch

    run.note("torch_threads", torch.get_num_threads())
    rows = [case(run) for case in SAMPLING_CASES]
    run.summary("sampling time, cached vs naive (same uniforms; naive timed once, cached median of the repeats)",
                ["model", "images", "naive s", "cached s", "speedup", "equal entries"], rows)  # fmt: skip
    run.record("results", [dict(zip(["model", "images", "naive_s", "cached_s", "speedup", "equal_fraction"], r))
                           for r in rows])  # fmt: skip
