"""PixelCNN++'s case of the bench topic "pixelcnn": cached vs naive sampling.

pixelcnnpp  16 RGB images of 32x32 over 256 levels, a small width (nr_filters 16, nr_resnet 1,
            5 logistic components, float32): fast.pixelcnnpp.generate(cached=True) -- every
            activation computed once, when the pixels it depends on are drawn (Ramachandran et
            al. 2017: whole rows of the vertical stream, single positions of the horizontal
            one, at all three resolutions) -- vs cached=False, the whole network on the whole
            image for each of the H W pixels; timed in the same run from the same uniforms, the
            naive once (it takes minutes). The samples must agree (float32 rounding ties aside:
            the fraction of equal entries is reported). The cached sampler is also timed with
            one torch thread: its per-pixel operations are tiny, and on a busy machine a
            second thread costs more in synchronization than it gives.
            `--quick`: 4 images of 16x16.

`pixelcnnpp_case(run, quick)` returns the summary row of chainrule.bench.pixelcnn's table
    [model, images, naive s, cached s, speedup, equal entries]
so that the "pixelcnn" topic can list PixelCNN++ beside PixelCNN and Gated PixelCNN.
"""

from __future__ import annotations

import numpy

from chainrule.bench import Run

SIZE = dict(height=32, width=32, channels=3, nr_filters=16, nr_resnet=1, nr_logistic_mix=5, levels=256)
QUICK = dict(SIZE, height=16, width=16)
BATCH, BATCH_QUICK = 16, 4


def pixelcnnpp_case(run: Run, quick: bool) -> list:
    """Cached vs naive PixelCNN++ sampling -> the summary row."""
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import pixelcnnpp as fpp
    from chainrule.reference import pixelcnnpp as pp

    config = pp.Config(**(QUICK if quick else SIZE))
    B = BATCH_QUICK if quick else BATCH
    rng = numpy.random.default_rng(0)
    params = fb.to_torch(pp.random_params(config, rng), device="cuda" if torch.cuda.is_available() else "cpu",
                         dtype=torch.float32)  # fmt: skip
    u = rng.random(pp.uniforms_shape(config, B))
    case = f"pixelcnn++ {B}x{config.height}x{config.width}"
    out = {}

    def cached():
        out["cached"] = fpp.generate(params, config, u, cached=True)

    def cached_one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            out["cached_1"] = fpp.generate(params, config, u, cached=True)
        finally:
            torch.set_num_threads(threads)

    def naive():
        out["naive"] = fpp.generate(params, config, u, cached=False)

    pixels = B * config.height * config.width
    t_cached = run.time(case, "cached (per-layer caches)", cached, work=pixels, unit="pixels", baseline=True)
    t_one = run.time(case, "cached, 1 torch thread", cached_one_thread, work=pixels, unit="pixels")
    t_naive = run.time(case, "naive (whole image per pixel)", naive, work=pixels, unit="pixels", repeats=1,
                       warmup=0)  # fmt: skip
    equal = float((out["cached"] == out["naive"]).double().mean())
    speedup, speedup_one = t_naive.median / t_cached.median, t_naive.median / t_one.median
    run.note(f"{case}: speedup cached over naive", round(speedup, 1))
    run.note(f"{case}: speedup cached (1 thread) over naive ({torch.get_num_threads()} threads)", round(speedup_one, 1))
    run.note(f"{case}: fraction of entries equal (cached vs naive, same uniforms)", equal)
    return [f"PixelCNN++ ({config.levels} levels, {config.nr_filters} filters, nr_resnet {config.nr_resnet}, "
            f"K={config.nr_logistic_mix}, float32)", f"{B} x {config.height}x{config.width}",
            t_naive.median, min(t_cached.median, t_one.median), f"{max(speedup, speedup_one):.1f}x", equal]  # fmt: skip
