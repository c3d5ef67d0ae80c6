"""`chainrule verify` rows for the classic neural language models:

    nplm   Bengio et al. 2003 (reference.nplm vs fast.nplm), a 4-gram with direct connections
    rnn    the recurrent LM (reference.rnn vs fast.rnn), one row group per kind: elman, lstm, gru

Each: a fixed seeded case with odd sizes, its float64 reference truth computed once; on
every backend the logits, log_prob, logits through the cache (prefill 2 + 3 tokens, then
steps), greedy and sampled tokens (judged by `reference.checks.compare_tokens`), the
gradient of the mean NLL against finite differences (float64 torch backends), the exact
dependency structure (lower triangle for the RNN, the n-gram band for the NPLM) and the
sum of p over every sequence of a tiny vocabulary.
"""

from __future__ import annotations

import functools
import importlib
import math

import numpy

from chainrule.verify import Result, register

BATCH, T, PROMPT, NEW = 3, 13, 5, 11
CHUNKS = (2, 3)
DEP_T = 9  # positions of the dependency-structure row
SEED = 2003

RNN_CONFIGS = {
    "elman": dict(kind="elman", vocab_size=59, n_embd=5, hidden=7, n_layer=2, bos_token=3),
    "lstm": dict(kind="lstm", vocab_size=59, n_embd=5, hidden=7, n_layer=2, bos_token=3),
    "gru": dict(kind="gru", vocab_size=59, n_embd=5, hidden=7, n_layer=2, bos_token=3),
}
NPLM_CONFIG = dict(vocab_size=59, order=4, n_embd=5, hidden=7, direct=True, bos_token=3)
ENUM_V, ENUM_T = 3, 3


@functools.cache
def _case(model: str, key: str) -> dict:
    """The fixed case of one model and its float64 reference truth (computed once per process)."""
    ref = importlib.import_module(f"chainrule.reference.{model}")
    args = RNN_CONFIGS[key] if model == "rnn" else NPLM_CONFIG
    config = ref.Config(**args)
    rng = numpy.random.default_rng(SEED + len(key))
    params = ref.random_params(config, rng)
    tokens = rng.integers(0, config.vocab_size, (BATCH, T))
    case = {"ref": ref, "config": config, "params": params, "tokens": tokens, "prompt": tokens[:, :PROMPT]}
    case["logits"] = ref.forward(params, config, tokens)
    case["log_prob"] = ref.log_prob(params, config, tokens)
    coords = [(n, tuple(int(rng.integers(0, s)) for s in shape)) for n, shape in ref.param_shapes(config).items()
              if 0 not in shape]  # fmt: skip
    embedding = "wte" if model == "rnn" else "C"
    case["grad_coords"] = coords + [(embedding, (int(tokens[0, 2]), 1))]
    enum_config = ref.Config(**(args | {"vocab_size": ENUM_V, "bos_token": 1}))
    case["enum_config"] = enum_config
    case["enum_params"] = ref.random_params(enum_config, numpy.random.default_rng(SEED + 1))
    return case


@functools.cache
def _grad_truth(model: str, key: str) -> tuple:
    """(finite differences of the case's mean NLL at its grad_coords, their worst error estimate):
    float64 reference, computed once, when the gradient row first runs."""
    from chainrule.reference import checks

    case = _case(model, key)
    ref, config, tokens = case["ref"], case["config"], case["tokens"]

    def mean_nll(p):
        return -float(numpy.mean(ref.log_prob(p, config, tokens))) / T

    fd = [checks.finite_difference_grad(mean_nll, case["params"], n, i) for n, i in case["grad_coords"]]
    return numpy.array([d.value for d in fd]), max(d.error for d in fd)


class _Impl:
    """One backend running a model: fast.<model> on torch, or the reference itself on CuPy.
    Every output comes back as NumPy (floats exactly upcast to float64)."""

    def __init__(self, backend, model: str, params, config):
        self.config, self.backend = config, backend
        self.ref = importlib.import_module(f"chainrule.reference.{model}")
        self.checks = importlib.import_module("chainrule.reference.checks")
        self.naive_impl = "loop" if model == "rnn" else "plain"
        self.cupy = backend.kind == "cupy"
        if self.cupy:
            import cupy

            self.xp, self.module = cupy, self.ref
            self.params = {k: cupy.asarray(v) for k, v in params.items()}
        else:
            import torch

            from chainrule.fast import backend as fb

            self.torch, self.module = torch, importlib.import_module(f"chainrule.fast.{model}")
            self.params = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)

    def _in(self, a):
        a = numpy.asarray(a)
        if self.cupy:
            return self.xp.asarray(a)
        return self.torch.as_tensor(a, dtype=self.torch.int64, device=self.backend.device)

    def _out(self, a):
        from chainrule.reference import checks

        if self.cupy:
            return a.get()
        return checks.as_float64(a) if a.is_floating_point() else a.detach().cpu().numpy()

    def _call(self, fn, tokens, naive):
        if self.cupy:
            return self._out(getattr(self.ref, fn)(self.params, self.config, self._in(tokens)))
        if naive and self.backend.dtype == "float32":  # the spec itself in float32 NumPy
            return self.checks.naive_float32(getattr(self.ref, fn), self.params, self.config, numpy.asarray(tokens))
        impl = self.naive_impl if naive else "fused"
        return self._out(getattr(self.module, fn)(self.params, self.config, self._in(tokens), impl=impl))

    def forward(self, tokens, naive=False):
        return self._call("forward", tokens, naive)

    def log_prob(self, tokens, naive=False):
        return self._call("log_prob", tokens, naive)

    def cached(self, tokens, chunks):
        return self.checks.logits_through_cache(self.module, self.params, self.config, self._in(tokens), chunks)

    def greedy(self, prompt, n):
        return self._out(self.module.greedy(self.params, self.config, self._in(prompt), n)).astype(numpy.int64)

    def sample(self, rng, prompt, n):
        return self._out(self.module.sample(self.params, self.config, rng, self._in(prompt), n)).astype(numpy.int64)

    def mean_nll_grad(self, tokens, coords):
        if self.cupy:
            return None  # the reference has no autograd
        params = {k: v.detach().clone().requires_grad_(True) for k, v in self.params.items()}
        nll = -self.module.log_prob(params, self.config, self._in(tokens)).mean() / tokens.shape[1]
        nll.backward()
        return numpy.array([float(params[n].grad[i]) for n, i in coords])


def _dependency_result(prefix, forward, tokens, vocab_size, allowed, what) -> Result:
    """The measured dependency matrix of tokens -> logits must equal `allowed` bit for bit."""
    from chainrule.reference import checks

    D = checks.dependency_matrix(forward, tokens, vocab_size=vocab_size)
    forbidden, missing = int((D & ~allowed).sum()), int((allowed & ~D).sum())
    n = D.shape[0]
    note = f"{n}x{n} dependency matrix exactly {what}"
    if forbidden or missing:
        note = f"{n}x{n} dependency matrix: {forbidden} forbidden dependencies, {missing} missing ones (want {what})"
    return Result(prefix + "dependency structure", forbidden + missing, 0, forbidden == 0 and missing == 0, note)


def _model_checks(backend, model: str, key: str, prefix: str, quick: bool = False):
    from chainrule.reference import checks

    case = _case(model, key)
    ref, config, tokens, params = case["ref"], case["config"], case["tokens"], case["params"]
    dtype = backend.dtype
    low = dtype != "float64"
    impl = _Impl(backend, model, params, config)

    naive_logits = impl.forward(tokens, naive=True) if low else None
    yield checks.compare(prefix + "logits", case["logits"], impl.forward(tokens), dtype, naive=naive_logits)
    naive_lp = impl.log_prob(tokens, naive=True) if low else None
    yield checks.compare(prefix + "log_prob", case["log_prob"], impl.log_prob(tokens), dtype, naive=naive_lp)
    if quick:
        return
    chunks = " + ".join(map(str, CHUNKS))
    yield checks.compare(prefix + f"logits, cache (prefill {chunks} + steps)", case["logits"],
                         impl.cached(tokens, CHUNKS), dtype, naive=naive_logits)  # fmt: skip
    prompt = case["prompt"]

    def reference(x):
        return ref.forward(params, config, x)

    def fast(x):
        return impl.cached(x, [PROMPT])

    yield checks.compare_tokens(prefix + "greedy tokens", prompt, impl.greedy(prompt, NEW), reference, dtype,
                                fast=fast, max_new_tokens=NEW)  # fmt: skip
    u = numpy.random.default_rng(SEED + 7).random((BATCH, NEW))
    yield checks.compare_tokens(prefix + "sampled tokens (rng, shared uniforms)", prompt,
                                impl.sample(numpy.random.default_rng(SEED + 7), prompt, NEW), reference, dtype,
                                u=u, fast=fast, max_new_tokens=NEW)  # fmt: skip
    if not low:
        got = impl.mean_nll_grad(tokens, case["grad_coords"])
        if got is not None:
            quantity = f"{prefix}grad mean NLL vs finite diff ({len(got)} coords)"
            grad_fd, grad_fd_err = _grad_truth(model, key)
            if grad_fd_err > checks.FD_ACCURACY:
                yield Result(quantity, math.inf, checks.FD_ACCURACY, False,
                             f"finite-difference truth self-consistency {grad_fd_err:.2e}")  # fmt: skip
            else:
                yield checks.compare(quantity, grad_fd, got, dtype)
    if model == "rnn":
        allowed, what = checks.allowed_dependencies(DEP_T, DEP_T), "lower triangular (the whole prefix)"
    else:
        t, s = numpy.arange(DEP_T)[:, None], numpy.arange(DEP_T)[None, :]
        allowed, what = (s <= t) & (s >= t - config.order + 2), f"the {config.order}-gram band"
    yield _dependency_result(prefix, impl.forward, tokens[:1, :DEP_T], config.vocab_size, allowed, what)
    enum = _Impl(backend, model, case["enum_params"], case["enum_config"])
    total = math.fsum(numpy.exp(checks.enumerate_log_probs(enum.log_prob, ENUM_V, ENUM_T)))
    yield checks.compare(prefix + f"sum of p over all {ENUM_V}^{ENUM_T} sequences", 1.0, total,
                         "float32" if low else "float64")  # fmt: skip


@register("rnn")
def rnn_checks(backend, quick=False):
    """The recurrent LM of every kind (reference.rnn vs fast.rnn) on one backend (quick: logits
    and log_prob of each kind)."""
    for kind in RNN_CONFIGS:
        yield from _model_checks(backend, "rnn", kind, f"{kind}: ", quick)


@register("nplm")
def nplm_checks(backend, quick=False):
    """Bengio et al.'s NPLM (reference.nplm vs fast.nplm) on one backend (quick: logits and log_prob)."""
    yield from _model_checks(backend, "nplm", "4gram", "", quick)
