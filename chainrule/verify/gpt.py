"""`chainrule verify` rows for GPT (module "gpt"): reference.gpt vs fast.gpt.

A fixed seeded case with odd sizes (vocab 59, 2 layers, 3 heads of 11, batch 3 x 13 tokens)
and its float64 reference truth, computed once per process; on every backend: logits,
log_prob, logits through the KV cache (chunked prefill, then steps), greedy and sampled
tokens (judged by `reference.checks.compare_tokens`), the gradient of the mean NLL against
float64 finite differences (float64 torch backends), the exact dependency matrix and the
sum of p over all 3^3 sequences of a tiny vocabulary. On cupy-f64 the reference itself
runs on CuPy arrays.
"""

from __future__ import annotations

import functools
import math

import numpy

from chainrule.verify import Result, register

GPT_CONFIG_ARGS = dict(vocab_size=59, block_size=23, n_layer=2, n_head=3, n_embd=33)
GPT_ENUM_CONFIG_ARGS = dict(vocab_size=3, block_size=3, n_layer=2, n_head=3, n_embd=9)  # 3^3 sequences
GPT_BATCH, GPT_T, GPT_PROMPT, GPT_NEW = 3, 13, 5, 11
GPT_CHUNKS = (2, 3)  # KV-cache row: prefill 2 tokens, then 3 more after that cache (the offset mask), then steps
GPT_SEED = 1234
GPT_GRAD_COORDS = (  # a few parameter coordinates spread over the network (+ a used wte row, in the case)
    ("wpe", (2, 30)), ("blocks.0.attn.qkv.w", (4, 40)),
    ("blocks.1.attn.proj.b", (5,)), ("blocks.1.mlp.fc.w", (11, 100)), ("ln_f.g", (17,)),
)  # fmt: skip


@functools.cache
def _gpt_case() -> dict:
    """The fixed GPT case and its float64 reference truth (computed once per process)."""
    from chainrule.reference import gpt

    config = gpt.Config(**GPT_CONFIG_ARGS)
    rng = numpy.random.default_rng(GPT_SEED)
    params = gpt.random_params(config, rng)
    tokens = rng.integers(0, config.vocab_size, (GPT_BATCH, GPT_T))
    prompt = tokens[:, :GPT_PROMPT]
    case = {"config": config, "params": params, "tokens": tokens, "prompt": prompt}
    case["logits"] = gpt.forward(params, config, tokens)
    case["log_prob"] = gpt.log_prob(params, config, tokens)
    enum_config = gpt.Config(**GPT_ENUM_CONFIG_ARGS)
    case["enum_config"] = enum_config
    case["enum_params"] = gpt.random_params(enum_config, numpy.random.default_rng(GPT_SEED + 2))
    return case


@functools.cache
def _gpt_grad_truth() -> dict:
    """Finite-difference gradients of the case's mean NLL (float64 reference; computed once,
    and only when a gradient row runs)."""
    from chainrule.reference import checks, gpt

    case = _gpt_case()
    config, params, tokens = case["config"], case["params"], case["tokens"]

    def mean_nll(p):
        return -float(numpy.mean(gpt.log_prob(p, config, tokens))) / GPT_T

    coords = (("wte", (int(tokens[0, 2]), 3)),) + GPT_GRAD_COORDS
    fd = [checks.finite_difference_grad(mean_nll, params, n, i) for n, i in coords]
    return {"grad_coords": coords, "grad_fd": numpy.array([d.value for d in fd]), "grad_fd_err": max(d.error for d in fd)}


class _TorchGPT:
    """fast.gpt on one torch backend; every output returned as float64 NumPy (exact upcast)."""

    def __init__(self, backend, params, config):
        import torch

        from chainrule.fast import backend as fb
        from chainrule.fast import gpt as fgpt
        from chainrule.reference import checks
        from chainrule.reference import gpt as reference_gpt

        self.torch, self.fb, self.gpt, self.config, self.device = torch, fb, fgpt, config, backend.device
        self.params = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)
        self.reference, self.checks = reference_gpt, checks
        self.naive_in_numpy = backend.dtype == "float32"

    def _tokens(self, tokens):
        return self.torch.as_tensor(numpy.asarray(tokens), dtype=self.torch.int64, device=self.device)

    def _np(self, t):
        return self.fb.from_torch(t.detach())

    def forward(self, tokens, naive=False):
        if naive and self.naive_in_numpy:
            return self._naive(self.reference.forward, tokens)
        return self._np(self.gpt.forward(self.params, self.config, self._tokens(tokens), attn_impl="math" if naive else "sdpa"))

    def log_prob(self, tokens, naive=False):
        if naive and self.naive_in_numpy:
            return self._naive(self.reference.log_prob, tokens)
        return self._np(self.gpt.log_prob(self.params, self.config, self._tokens(tokens), attn_impl="math" if naive else "sdpa"))

    def _naive(self, reference_fn, tokens):
        """The naive float32 baseline: the spec itself run in float32 NumPy, independent of the
        fast path (bfloat16, which NumPy lacks, falls back to the unfused attn_impl="math")."""
        return self.checks.naive_float32(reference_fn, self.params, self.config, numpy.asarray(tokens))

    def cached(self, tokens, chunks):
        """prefill chunk by chunk (sizes `chunks`), then one step per remaining token -> logits (B, T, V)."""
        return self.checks.logits_through_cache(self.gpt, self.params, self.config, self._tokens(tokens), chunks)

    def greedy(self, prompt, n):
        return self.fb.from_torch(self.gpt.greedy(self.params, self.config, self._tokens(prompt), n)).astype(numpy.int64)

    def sample(self, rng, prompt, n):
        return self.fb.from_torch(self.gpt.sample(self.params, self.config, rng, self._tokens(prompt), n)).astype(numpy.int64)

    def mean_nll_grad(self, tokens, coords):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        nll = -self.gpt.log_prob(params, self.config, self._tokens(tokens)).mean() / tokens.shape[1]
        nll.backward()
        return numpy.array([float(params[n].grad[i]) for n, i in coords])


class _CupyGPT:
    """The reference itself run on CuPy arrays (the spec on the GPU)."""

    def __init__(self, backend, params, config):
        import cupy

        from chainrule.reference import checks, gpt

        self.cp, self.gpt, self.checks, self.config = cupy, gpt, checks, config
        self.params = {k: cupy.asarray(v) for k, v in params.items()}

    def forward(self, tokens, naive=False):
        return self.cp.asnumpy(self.gpt.forward(self.params, self.config, self.cp.asarray(tokens)))

    def log_prob(self, tokens, naive=False):
        return self.cp.asnumpy(self.gpt.log_prob(self.params, self.config, self.cp.asarray(tokens)))

    def cached(self, tokens, chunks):
        return self.checks.logits_through_cache(self.gpt, self.params, self.config, self.cp.asarray(tokens), chunks)

    def greedy(self, prompt, n):
        return self.cp.asnumpy(self.gpt.greedy(self.params, self.config, self.cp.asarray(prompt), n))

    def sample(self, rng, prompt, n):
        return self.cp.asnumpy(self.gpt.sample(self.params, self.config, rng, self.cp.asarray(prompt), n))

    mean_nll_grad = None  # no autograd on the reference


def _impl(backend, params, config):
    return (_CupyGPT if backend.kind == "cupy" else _TorchGPT)(backend, params, config)


def causality_result(forward, tokens, vocab_size) -> Result:
    """The dependency matrix of tokens -> logits measured on the backend, bit for bit
    (`reference.checks.dependency_matrix`): logits[t] may depend on tokens[:t+1] only,
    and must depend on all of them. max_err = number of forbidden dependencies."""
    from chainrule.reference import checks

    D = checks.dependency_matrix(forward, tokens, vocab_size=vocab_size)
    allowed = checks.allowed_dependencies(*D.shape)
    forbidden, missing = int((D & ~allowed).sum()), int((allowed & ~D).sum())
    T = D.shape[0]
    note = f"{T}x{T} dependency matrix exactly lower triangular"
    if forbidden or missing:
        note = f"{T}x{T} dependency matrix: {forbidden} dependencies on the future, {missing} missing on the past"
    return Result("causality (dependency matrix)", forbidden, 0, forbidden == 0 and missing == 0, note)


@register("gpt")
def gpt_checks(backend, quick=False):
    """GPT (reference.gpt vs fast.gpt) on one backend (quick: logits, log_prob, KV cache)."""
    from chainrule.reference import checks
    from chainrule.reference import gpt as reference_gpt

    case = _gpt_case()
    config, tokens, dtype = case["config"], case["tokens"], backend.dtype
    low = dtype != "float64"
    impl = _impl(backend, case["params"], config)

    def naive(fn, *args):
        return fn(*args, naive=True) if low else None

    naive_logits = naive(impl.forward, tokens)
    yield checks.compare("logits", case["logits"], impl.forward(tokens), dtype, naive=naive_logits)
    yield checks.compare("log_prob", case["log_prob"], impl.log_prob(tokens), dtype,
                         naive=naive(impl.log_prob, tokens))  # fmt: skip
    chunks = " + ".join(map(str, GPT_CHUNKS))
    yield checks.compare(f"logits, KV cache (prefill {chunks} + steps)", case["logits"], impl.cached(tokens, GPT_CHUNKS),
                         dtype, naive=naive_logits)  # fmt: skip
    if quick:
        return
    # Token rows (reference.checks.compare_tokens): each generated token against the reference's
    # choice given the backend's own prefix; float64 must agree on every token, low precision
    # wherever the reference margin is clear of the backend's step-logit error along its sequence.
    prompt, params = case["prompt"], case["params"]

    def reference(x):
        return reference_gpt.forward(params, config, x)

    def fast(x):  # the backend's step logits as generation computes them: prompt prefill, then steps
        return impl.cached(x, [GPT_PROMPT])

    yield checks.compare_tokens("greedy tokens", prompt, impl.greedy(prompt, GPT_NEW), reference, dtype,
                                fast=fast, max_new_tokens=GPT_NEW)  # fmt: skip
    u = numpy.random.default_rng(GPT_SEED + 1).random((GPT_BATCH, GPT_NEW))  # what sample(rng) draws
    yield checks.compare_tokens("sampled tokens (rng, shared uniforms)", prompt,
                                impl.sample(numpy.random.default_rng(GPT_SEED + 1), prompt, GPT_NEW), reference,
                                dtype, u=u, fast=fast, max_new_tokens=GPT_NEW)  # fmt: skip
    if not low and impl.mean_nll_grad is not None:
        fd = _gpt_grad_truth()
        got = impl.mean_nll_grad(tokens, fd["grad_coords"])
        quantity = f"grad mean NLL vs finite diff ({len(got)} coords)"
        if fd["grad_fd_err"] > checks.FD_ACCURACY:  # the truth itself is not good enough to judge
            yield Result(quantity, math.inf, checks.FD_ACCURACY, False,
                         f"finite-difference truth self-consistency {fd['grad_fd_err']:.2e} > {checks.FD_ACCURACY:g}")  # fmt: skip
        else:
            yield checks.compare(quantity, fd["grad_fd"], got, dtype)
    yield causality_result(impl.forward, tokens[:1], config.vocab_size)
    enum = _impl(backend, case["enum_params"], case["enum_config"])
    V, T = case["enum_config"].vocab_size, case["enum_config"].block_size
    total = math.fsum(numpy.exp(checks.enumerate_log_probs(enum.log_prob, V, T)))
    # log_prob accumulates the log-softmax in >= float32: normalized to float32 accuracy in every dtype
    yield checks.compare(f"sum of p over all {V}^{T} sequences", 1.0, total, "float32" if low else "float64")


