"""Bench topics for GPT.

gpt          greedy decoding of a GPT-2-small-shaped model (124M parameters, random
             weights, float32; batch 1 and 32, 32-token prompt, 128 new tokens; and 32
             left-padded prompts of lengths 8..128 with their attention mask, 32 new tokens):
             fast.gpt.generate vs HF transformers `generate` on the same weights,
             and vs the bandwidth roofline (reference.cost) computed from a
             memory-read bandwidth measured in the same run.
gpt-forward  teacher-forced logits on a small config: reference (float64 NumPy)
             vs fast (torch float64 and float32).
"""

from __future__ import annotations

import numpy

from chainrule.bench import Run, topic

GPT2_SMALL = dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
GPT_QUICK = dict(vocab_size=101, block_size=64, n_layer=2, n_head=3, n_embd=33)


def measure_read_bandwidth(nbytes: int, repeats: int = 7) -> dict:
    """Memory-read bandwidth in bytes/s: the median time to sum a float32 tensor of `nbytes`
    (large enough to defeat the caches), with the threads torch uses for everything else."""
    import statistics
    import time

    import torch

    x = torch.ones(nbytes // 4, dtype=torch.float32)
    x.sum()  # warm up: page in, spin up the thread pool
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        x.sum()
        seconds.append(time.perf_counter() - start)
    t = statistics.median(seconds)
    return {"bytes": x.numel() * 4, "median_s": t, "bytes_per_s": x.numel() * 4 / t,
            "best_bytes_per_s": x.numel() * 4 / min(seconds)}  # fmt: skip


def measure_matmul_flops(n: int, repeats: int = 5) -> float:
    """FLOP/s of an n x n by n x n float32 matmul (2 n^3 FLOPs), median of repeats."""
    import statistics
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(seconds)


def _hf_model(params, config):
    """HF GPT2LMHeadModel with the same float32 weights, eval mode, never stopping early; None if
    transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    import torch

    from chainrule.reference import gpt

    transformers.logging.set_verbosity_error()
    state, hf_config = gpt.to_hf_gpt2(params, config)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    model.load_state_dict({k: torch.from_numpy(v).float() for k, v in state.items()}, strict=True)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = config.bos_token
    return model


@topic("gpt", "greedy decoding, GPT-2-small shape (124M, float32): fast.gpt vs HF transformers vs the roofline",
       repeats=3)
def bench_gpt(run: Run) -> None:
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import gpt as fgpt
    from chainrule.reference import cost, gpt

    quick = run.quick
    config = gpt.Config(**(GPT_QUICK if quick else GPT2_SMALL))
    batches, prompt_len, new = ((1, 3), 8, 8) if quick else ((1, 32), 32, 128)
    rng = numpy.random.default_rng(0)
    params = gpt.init(config, rng)
    run.note("config", dict(GPT_QUICK if quick else GPT2_SMALL))
    run.note("parameters", cost.param_count(config))
    run.note("torch_threads", torch.get_num_threads())
    bw = measure_read_bandwidth(64 << 20 if quick else 1 << 30)
    run.note("read_bandwidth_GB_per_s", round(bw["bytes_per_s"] / 1e9, 3))
    peak = measure_matmul_flops(256 if quick else 2048)
    run.note("matmul_GFLOP_per_s", round(peak / 1e9, 1))
    context = prompt_len + new // 2
    run.note(f"compute-bound from batch (context {context}, measured bandwidth and matmul rate)",
             round(cost.crossover_batch(config, context, bw["bytes_per_s"], peak, 4), 1))
    fast_params = fb.to_torch(params, device="cpu", dtype=torch.float32)
    model = _hf_model(params, config)
    del params
    if model is None:
        run.note("hf", "transformers not installed: HF rows skipped")
    rows = []
    with torch.inference_mode():
        for B in batches:
            prompt = torch.as_tensor(rng.integers(0, config.vocab_size, (B, prompt_len)), dtype=torch.int64)
            case = f"batch {B}"
            out = {}

            def fast():
                out["fast"] = fgpt.generate(fast_params, config, prompt, new)

            roof = cost.generate_roofline_tokens_per_s(config, prompt_len, new, B, bw["bytes_per_s"], 4)
            contenders = [("fast.gpt.generate", fast)]
            if model is not None:
                mask = torch.ones_like(prompt)

                def hf():
                    out["hf"] = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=new,
                                               min_new_tokens=new)  # fmt: skip

                contenders.append(("HF GPT2LMHeadModel.generate", hf))
            timings = run.race(case, contenders, work=B * new, unit="tokens")
            t_fast = timings[0]
            row = [B, t_fast.rate]
            if model is not None:
                t_hf = timings[1]
                agree = float((out["fast"] == out["hf"]).float()[:, prompt_len:].mean())
                run.note(f"{case}: greedy token agreement fast vs HF", agree)
                row += [t_hf.rate, t_fast.rate / t_hf.rate]
            else:
                row += [None, None]
                agree = None
            row += [roof, t_fast.rate / roof, None if model is None else t_hf.rate / roof, agree]
            rows.append(row)
        rows.append(_padded_case(run, config, fast_params, model, rng, quick, bw["bytes_per_s"]))
    run.summary(
        f"tokens/s ({prompt_len}-token prompt, {new} new tokens, greedy, float32; roofline = batch * new tokens"
        f" / (bytes read by the whole generation / {bw['bytes_per_s'] / 1e9:.2f} GB/s measured))",
        ["batch", "fast tok/s", "HF tok/s", "fast/HF", "roofline tok/s", "fast % roof", "HF % roof", "agreement"],
        [[b, f, h, r if r is None else f"{r:.2f}x", roof, f"{fr:.0%}", hr if hr is None else f"{hr:.0%}", a]
         for b, f, h, r, roof, fr, hr, a in rows],
    )  # fmt: skip
    run.record("results", [dict(zip(["batch", "fast_tokens_per_s", "hf_tokens_per_s", "fast_over_hf",
                                    "roofline_tokens_per_s", "fast_fraction_of_roofline",
                                    "hf_fraction_of_roofline", "token_agreement"], r)) for r in rows])  # fmt: skip


def _padded_case(run, config, fast_params, model, rng, quick: bool, bandwidth: float) -> list:
    """The padded-batch case: prompts of lengths 8..128 (quick: 2..8), left padded, greedy, with the
    attention mask (HF given the same mask derives the same position ids in its generate)."""
    import torch

    from chainrule.fast import gpt as fgpt
    from chainrule.reference import cost

    B, (low, high), new = (3, (2, 8), 8) if quick else (32, (8, 128), 32)
    lengths = numpy.linspace(low, high, B).round().astype(int)
    prompt = torch.full((B, high), config.bos_token, dtype=torch.int64)
    mask = torch.zeros((B, high), dtype=torch.int64)
    for b, n in enumerate(lengths):
        prompt[b, high - n :] = torch.as_tensor(rng.integers(0, config.vocab_size, n))
        mask[b, high - n :] = 1
    case = f"batch {B} left-padded, prompts {low}..{high}"
    out = {}

    def fast():
        out["fast"] = fgpt.generate(fast_params, config, prompt, new, attention_mask=mask)

    contenders = [("fast.gpt.generate", fast)]
    if model is not None:

        def hf():
            out["hf"] = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=new,
                                       min_new_tokens=new)  # fmt: skip

        contenders.append(("HF GPT2LMHeadModel.generate", hf))
    with torch.inference_mode():
        timings = run.race(case, contenders, work=B * new, unit="tokens")
    roof = cost.generate_roofline_tokens_per_s(config, high, new, B, bandwidth, 4)
    row = [f"{B} padded", timings[0].rate]
    if model is None:
        return row + [None, None, roof, timings[0].rate / roof, None, None]
    agree = float((out["fast"] == out["hf"]).float()[:, high:].mean())
    run.note(f"{case}: greedy token agreement fast vs HF", agree)
    return row + [timings[1].rate, timings[0].rate / timings[1].rate, roof, timings[0].rate / roof,
                  timings[1].rate / roof, agree]


@topic("gpt-forward", "GPT teacher-forced logits, small config: reference (NumPy float64) vs fast (torch)")
def bench_gpt_forward(run: Run) -> None:
    import torch

    from chainrule.fast import backend as fb
    from chainrule.fast import gpt as fgpt
    from chainrule.reference import gpt

    args = GPT_QUICK if run.quick else dict(vocab_size=1009, block_size=128, n_layer=4, n_head=4, n_embd=128)
    config = gpt.Config(**args)
    B, T = (2, 16) if run.quick else (4, 128)
    rng = numpy.random.default_rng(0)
    params = gpt.init(config, rng)
    tokens = rng.integers(0, config.vocab_size, (B, T))
    case = f"B={B} T={T}"
    p64 = fb.to_torch(params, dtype=torch.float64)
    p32 = fb.to_torch(params, dtype=torch.float32)
    t = torch.as_tensor(tokens)
    with torch.inference_mode():
        run.race(case, [
            ("fast float64 (sdpa)", lambda: fgpt.forward(p64, config, t)),
            ("fast float32 (sdpa)", lambda: fgpt.forward(p32, config, t)),
            ("fast float32 (math)", lambda: fgpt.forward(p32, config, t, attn_impl="math")),
            ("reference float64", lambda: gpt.forward(params, config, tokens)),
        ], work=B * T, unit="tokens")  # fmt: skip
