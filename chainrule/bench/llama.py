"""Bench topic for LLaMA-family decoders.

llama   greedy decoding of a ~100M-parameter LLaMA (vocabulary 32000, C 768, 12 layers, 12 query
        heads sharing 4 key/value heads, SwiGLU 2048, tied embeddings; random weights from
        `reference.llama.init`), float32 and bfloat16, batch 1 (64 new tokens) and 32 (24 new
        tokens) after a 32-token prompt: fast.llama.generate vs HF transformers'
        LlamaForCausalLM.generate on the same weights (`reference.llama.to_hf`), interleaved in
        one run (`Run.race`), and vs the memory-bandwidth roofline with the read bandwidth
        measured in the same run (`chainrule.bench.gpt.measure_read_bandwidth`).

The roofline (reference/cost.py's is GPT's) is computed here from the bytes a generation must
read, `generate_bytes`: the prefill reads the weights once; each of the N - 1 later steps reads
every weight once (shared by the batch) plus every sequence's cached keys and values
(2 L n_kv hd per position: GQA's smaller cache), all in the params' dtype.
"""

from __future__ import annotations

import math

import numpy

from chainrule.bench import Run, topic

LLAMA_100M = dict(vocab_size=32000, max_position=2048, n_layer=12, n_head=12, n_kv_head=4, n_embd=768,
                  intermediate_size=2048, tie_word_embeddings=True)  # fmt: skip
LLAMA_QUICK = dict(vocab_size=101, max_position=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, intermediate_size=48)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def weight_bytes_per_step(config, dtype_bytes: int) -> int:
    """Bytes of weights one decoding step reads: every parameter once, except the embedding
    table of an untied model, of which only the looked-up row is read (C values):

        (sum of the parameter sizes - [V C if untied] + C) * dtype_bytes
    """
    from chainrule.reference import llama

    count = sum(math.prod(shape) for shape in llama.param_shapes(config).values())
    if not config.tie_word_embeddings:
        count -= config.vocab_size * config.n_embd
    return (count + config.n_embd) * dtype_bytes


def kv_bytes_per_position(config, dtype_bytes: int) -> int:
    """Bytes of keys and values one cached position of one sequence holds: 2 L n_kv hd dtype_bytes."""
    return 2 * config.n_layer * config.n_kv_head * config.head_dim * dtype_bytes


def generate_bytes(config, prompt_len: int, max_new_tokens: int, batch: int, dtype_bytes: int) -> int:
    """Bytes read by generate(prompt (batch, prompt_len), max_new_tokens) with a KV cache: the
    weights once for the prefill, then for n = 1 .. N-1 the weights plus batch * (prompt_len + n)
    cached positions (the first new token comes from the prefill; the last is never fed)."""
    W, kv = weight_bytes_per_step(config, dtype_bytes), kv_bytes_per_position(config, dtype_bytes)
    return W + sum(W + batch * (prompt_len + n) * kv for n in range(1, max_new_tokens))


def roofline_tokens_per_s(config, prompt_len: int, max_new_tokens: int, batch: int, bandwidth: float,
                          dtype_bytes: int) -> float:  # fmt: skip
    """batch * max_new_tokens / (generate_bytes / bandwidth)."""
    return batch * max_new_tokens * bandwidth / generate_bytes(config, prompt_len, max_new_tokens, batch, dtype_bytes)


def _hf_model(params, config):
    """HF LlamaForCausalLM with the same float32 weights, eval mode, never stopping early (None
    without transformers)."""
    try:
        import transformers
    except ImportError:
        return None
    import torch

    from chainrule.reference import llama

    transformers.logging.set_verbosity_error()
    state, hf_config = llama.to_hf(params, config)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_config))
    model.load_state_dict({k: torch.from_numpy(v).float() for k, v in state.items()}, strict=True)
    model.eval()
    model.generation_config.eos_token_id = None  # random weights: never stop early
    model.generation_config.pad_token_id = config.bos_token
    return model


@topic("llama", "greedy decoding, ~100M LLaMA (GQA 12/4, float32 and bfloat16): fast.llama vs HF vs the roofline",
       repeats=3)  # fmt: skip
def bench_llama(run: Run) -> None:
    import torch

    from chainrule.bench.gpt import measure_read_bandwidth
    from chainrule.fast import backend as fb
    from chainrule.fast import llama as fllama
    from chainrule.reference import llama

    quick = run.quick
    args = LLAMA_QUICK if quick else LLAMA_100M
    config = llama.Config(**args)
    cases, prompt_len = (((1, 8), (3, 8)), 8) if quick else (((1, 64), (32, 24)), 32)
    rng = numpy.random.default_rng(0)
    params = llama.init(config, rng)
    run.note("config", dict(args))
    run.note("parameters", sum(v.size for v in params.values()))
    run.note("torch_threads", torch.get_num_threads())
    bw = measure_read_bandwidth(64 << 20 if quick else 1 << 30)
    run.note("read_bandwidth_GB_per_s", round(bw["bytes_per_s"] / 1e9, 3))
    model = _hf_model(params, config)
    if model is None:
        run.note("hf", "transformers not installed: HF rows skipped")
    prompts = {B: torch.as_tensor(rng.integers(0, config.vocab_size, (B, prompt_len)), dtype=torch.int64)
               for B, _ in cases}  # fmt: skip
    rows = []
    for dtype in ("float32", "bfloat16"):
        fast_params = fb.to_torch(params, device="cpu", dtype=dtype)
        if model is not None:
            model.to(torch.float32 if dtype == "float32" else torch.bfloat16)
        run.note(f"{dtype}: fast.llama kernel mode (batch 1 / batch 32 steps)",
                 " / ".join(fllama.kernel_mode(fast_params, B, False) for B, _ in cases))  # fmt: skip
        with torch.inference_mode():
            for B, new in cases:
                rows.append(_race(run, config, fast_params, model, prompts[B], new, dtype, bw["bytes_per_s"]))
        del fast_params
    run.summary(
        f"tokens/s ({prompt_len}-token prompt, greedy; roofline = batch * new tokens / (bytes the generation "
        f"must read / {bw['bytes_per_s'] / 1e9:.2f} GB/s measured))",
        ["dtype", "batch", "new", "fast tok/s", "HF tok/s", "fast/HF min", "fast/HF median", "roofline tok/s",
         "fast % roof", "HF % roof", "agreement"],
        [[r["dtype"], r["batch"], r["new_tokens"], r["fast_tokens_per_s"], r["hf_tokens_per_s"],
          None if r["fast_over_hf_min"] is None else f"{r['fast_over_hf_min']:.2f}x",
          None if r["fast_over_hf_median"] is None else f"{r['fast_over_hf_median']:.2f}x",
          r["roofline_tokens_per_s"], f"{r['fast_fraction_of_roofline']:.0%}",
          None if r["hf_fraction_of_roofline"] is None else f"{r['hf_fraction_of_roofline']:.0%}",
          r["token_agreement"]] for r in rows],
    )  # fmt: skip
    run.record("results", rows)


def _race(run: Run, config, fast_params, model, prompt, new: int, dtype: str, bandwidth: float) -> dict:
    """fast.llama.generate vs HF generate, interleaved; -> the case's row (ratios per round: min, median)."""
    import statistics

    import torch

    from chainrule.fast import llama as fllama

    B, T0 = prompt.shape
    out = {}

    def fast():
        out["fast"] = fllama.generate(fast_params, config, prompt, new)

    contenders = [("fast.llama.generate", fast)]
    if model is not None:
        mask = torch.ones_like(prompt)

        def hf():
            out["hf"] = model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=new,
                                       min_new_tokens=new)  # fmt: skip

        contenders.append(("HF LlamaForCausalLM.generate", hf))
    case = f"{dtype} batch {B}"
    timings = run.race(case, contenders, work=B * new, unit="tokens")
    roof = roofline_tokens_per_s(config, T0, new, B, bandwidth, DTYPE_BYTES[dtype])
    row = {"dtype": dtype, "batch": B, "new_tokens": new, "fast_tokens_per_s": timings[0].rate,
           "roofline_tokens_per_s": roof, "fast_fraction_of_roofline": timings[0].rate / roof,
           "hf_tokens_per_s": None, "fast_over_hf_min": None, "fast_over_hf_median": None,
           "hf_fraction_of_roofline": None, "token_agreement": None}  # fmt: skip
    if model is not None:
        ratios = [h / f for f, h in zip(timings[0].seconds, timings[1].seconds)]  # per round: HF time / fast time
        agree = float((out["fast"] == out["hf"]).float()[:, T0:].mean())
        row |= {"hf_tokens_per_s": timings[1].rate, "fast_over_hf_min": min(ratios),
                "fast_over_hf_median": statistics.median(ratios), "hf_fraction_of_roofline": timings[1].rate / roof,
                "token_agreement": agree}  # fmt: skip
        run.note(f"{case}: greedy token agreement fast vs HF", agree)
    return row
