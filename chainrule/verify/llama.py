"""`chainrule verify` rows for LLaMA-family decoders (module "llama"): reference.llama vs fast.llama.

A fixed seeded case with awkward sizes -- vocabulary 61, 2 layers, 6 query heads of 6 sharing
2 key/value heads (GQA), q/k/v biases, an untied head, llama3 RoPE scaling and a sliding window
of 5 shorter than the sequence -- and its float64 reference truth, computed once per process.
On every backend: logits, log_prob, logits through the KV cache (chunked prefill, then steps),
left-padded logits at the real positions, and greedy tokens (`reference.checks.compare_tokens`);
quick: logits, log_prob, KV cache. On cupy-f64 the reference itself runs on CuPy arrays.
Low precision is judged against the naive same-dtype baseline: the spec in float32 NumPy
(`checks.naive_float32`), for bfloat16 fast.llama's attn_impl="math".
"""

from __future__ import annotations

import functools

import numpy

from chainrule.verify import register

LLAMA_CONFIG_ARGS = dict(vocab_size=61, max_position=32, n_layer=2, n_head=6, n_kv_head=2, n_embd=15,
                         intermediate_size=17, head_dim=6, qkv_bias=True, sliding_window=5, bos_token=2,
                         rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 16})  # fmt: skip
LLAMA_BATCH, LLAMA_T, LLAMA_PROMPT, LLAMA_NEW = 3, 13, 4, 12
LLAMA_CHUNKS = (3, 4)  # prefill 3 tokens, then 4 more after that cache, then steps
LLAMA_PAD_LENGTHS = (13, 6, 1)  # the left-padded rows' real lengths
LLAMA_SEED = 4321


@functools.cache
def _case() -> dict:
    """The fixed case and its float64 reference truth (computed once per process)."""
    from chainrule.reference import llama

    config = llama.Config(**LLAMA_CONFIG_ARGS)
    rng = numpy.random.default_rng(LLAMA_SEED)
    params = llama.random_params(config, rng)
    tokens = rng.integers(0, config.vocab_size, (LLAMA_BATCH, LLAMA_T))
    mask = numpy.zeros_like(tokens)
    for b, n in enumerate(LLAMA_PAD_LENGTHS):
        mask[b, LLAMA_T - n :] = 1
    return {"config": config, "params": params, "tokens": tokens, "mask": mask, "prompt": tokens[:, :LLAMA_PROMPT],
            "logits": llama.forward(params, config, tokens), "log_prob": llama.log_prob(params, config, tokens),
            "padded": llama.forward(params, config, tokens, mask)}  # fmt: skip


class _Side:
    """What one backend runs -- fast.llama on torch, the reference on CuPy -- NumPy in, float64 NumPy out."""

    def __init__(self, backend, params, config):
        from chainrule.reference import checks
        from chainrule.reference import llama as reference

        self.checks, self.reference, self.config, self.backend = checks, reference, config, backend
        if backend.kind == "cupy":
            import cupy

            self.cp, self.model = cupy, reference
            self.params = {k: cupy.asarray(v) for k, v in params.items()}
        else:
            import torch

            from chainrule.fast import backend as fb
            from chainrule.fast import llama as fast

            self.cp, self.model, self.torch = None, fast, torch
            self.params = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)

    def array(self, a):
        a = numpy.asarray(a)
        if self.cp is not None:
            return self.cp.asarray(a)
        return self.torch.as_tensor(a, dtype=self.torch.int64, device=self.backend.device)

    def numpy(self, a):
        if self.cp is not None:
            return a.get()
        return self.checks.as_float64(a) if a.is_floating_point() else a.detach().cpu().numpy()

    def _kwargs(self, naive):
        return {} if self.cp is not None else {"attn_impl": "math" if naive else "sdpa"}

    def forward(self, tokens, mask=None, naive=False):
        mask = None if mask is None else self.array(mask)
        return self.numpy(self.model.forward(self.params, self.config, self.array(tokens), mask, **self._kwargs(naive)))

    def log_prob(self, tokens, naive=False):
        return self.numpy(self.model.log_prob(self.params, self.config, self.array(tokens), **self._kwargs(naive)))

    def cached(self, tokens, chunks):
        return self.checks.logits_through_cache(self.model, self.params, self.config, self.array(tokens), chunks)

    def greedy(self, prompt, n):
        return self.numpy(self.model.generate(self.params, self.config, self.array(prompt), n))

    def naive(self, reference_fn, fast_fn, *args):
        """The naive same-dtype baseline (None in float64)."""
        if self.backend.dtype == "float32":
            return self.checks.naive_float32(reference_fn, self.params, self.config, *args)
        if self.backend.dtype == "bfloat16":
            return fast_fn(*args, naive=True)
        return None


@register("llama")
def llama_checks(backend, quick=False):
    """LLaMA (reference.llama vs fast.llama) on one backend (quick: logits, log_prob, KV cache)."""
    from chainrule.reference import checks
    from chainrule.reference import llama as reference

    case = _case()
    config, tokens, dtype = case["config"], case["tokens"], backend.dtype
    side = _Side(backend, case["params"], config)
    naive_logits = side.naive(reference.forward, side.forward, tokens)
    yield checks.compare("logits", case["logits"], side.forward(tokens), dtype, naive=naive_logits)
    yield checks.compare("log_prob", case["log_prob"], side.log_prob(tokens), dtype,
                         naive=side.naive(reference.log_prob, side.log_prob, tokens))  # fmt: skip
    chunks = " + ".join(map(str, LLAMA_CHUNKS))
    yield checks.compare(f"logits, KV cache (prefill {chunks} + steps)", case["logits"],
                         side.cached(tokens, LLAMA_CHUNKS), dtype, naive=naive_logits)  # fmt: skip
    if quick:
        return
    mask = case["mask"]
    real = mask == 1
    naive = side.naive(reference.forward, side.forward, tokens, mask)
    yield checks.compare("left-padded logits (real positions)", case["padded"][real], side.forward(tokens, mask)[real],
                         dtype, naive=None if naive is None else naive[real])  # fmt: skip
    prompt, params = case["prompt"], case["params"]
    yield checks.compare_tokens("greedy tokens", prompt, side.greedy(prompt, LLAMA_NEW),
                                lambda x: reference.forward(params, config, x), dtype,
                                fast=lambda x: side.cached(x, [LLAMA_PROMPT]), max_new_tokens=LLAMA_NEW)  # fmt: skip
