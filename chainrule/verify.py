"""`chainrule verify`: the conformance table.

For every registered module and every backend of `fast.backend.ALL_BACKENDS`,
run the module's conformance checks -- the reference (float64 NumPy) against
that backend on fixed seeded cases, plus the cheap properties (causality,
normalization) on the backend itself -- and report one row per quantity:

    module | backend | quantity | max error | tolerance | pass

A module registers one function that takes a `Backend` and yields results::

    @register("gpt")
    def gpt_checks(backend):
        yield compare("logits", truth, got, backend.dtype, naive=naive)
        ...

A result is a `reference.checks.Comparison`, a `reference.checks.TokenComparison`
(generated tokens) or a `Result` (other quantities that are not elementwise
differences: exact causality). A check that raises is reported as a failed row
carrying the exception; an unavailable backend as one "skipped (reason)" row.
"""

from __future__ import annotations

import functools
import json
import importlib
import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy

# ----------------------------------------------------------------------------- rows and registry


@dataclass(frozen=True)
class Result:
    """One checked quantity that is not an elementwise comparison (counts, exact properties)."""

    quantity: str
    max_err: float
    bound: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Row:
    """One line of the conformance table."""

    module: str
    backend: str
    quantity: str
    max_err: float | None
    bound: float | None
    status: str  # "pass", "FAIL" or "skipped (reason)"
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


CHECKS: dict[str, Callable] = {}


def register(module: str):
    """Decorator: register `fn(backend) -> iterable of Comparison | TokenComparison | Result` under a module name."""

    def decorate(fn):
        if module in CHECKS:
            raise ValueError(f"register: module {module!r} is already registered")
        CHECKS[module] = fn
        return fn

    return decorate


def load_checks() -> None:
    """Import every `chainrule/verify_*.py`: each registers its modules' checks on import
    (the GPT and sampling checks live at the end of this file)."""
    import pkgutil

    import chainrule

    for info in pkgutil.iter_modules(chainrule.__path__):
        if info.name.startswith("verify_"):
            importlib.import_module(f"chainrule.{info.name}")


def _row(module: str, backend: str, result) -> Row:
    passed = bool(result.passed)
    note = getattr(result, "note", "")
    if not passed and not note:
        note = str(result)  # a Comparison: reference vs fast at the worst index
    return Row(module, backend, result.quantity, float(result.max_err), float(result.bound),
               "pass" if passed else "FAIL", note)  # fmt: skip


def run(modules: Iterable[str] | None = None, backends: Iterable[str] | None = None,
        progress: Callable[[Row], None] | None = None) -> list[Row]:
    """Run the checks of `modules` (default all) on `backends` (names; default all) -> rows.

    ValueError for an unknown module or backend name.
    """
    from chainrule.fast import backend as fb

    load_checks()
    modules = list(CHECKS) if modules is None else list(modules)
    for m in modules:
        if m not in CHECKS:
            raise ValueError(f"module: expected one of {sorted(CHECKS)}, got {m!r}")
    by_name = {b.name: b for b in fb.ALL_BACKENDS}
    names = list(by_name) if backends is None else list(backends)
    for n in names:
        if n not in by_name:
            raise ValueError(f"backend: expected one of {list(by_name)}, got {n!r}")
    rows = []

    def emit(row):
        rows.append(row)
        if progress is not None:
            progress(row)

    for m in modules:
        for n in names:
            backend = by_name[n]
            ok, reason = fb.available(backend)
            if not ok:
                emit(Row(m, n, "-", None, None, f"skipped ({reason})"))
                continue
            try:
                for result in CHECKS[m](backend):
                    emit(_row(m, n, result))
            except Exception as exc:  # a crash is a failure of that backend, reported, not fatal
                where = traceback.extract_tb(exc.__traceback__)[-1]
                emit(Row(m, n, "error", None, None, "FAIL",
                         f"{type(exc).__name__}: {exc} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- output


def _num(x) -> str:
    if x is None:
        return ""
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.2e}"


HEADER = ("module", "backend", "quantity", "max error", "tolerance", "pass", "")


def format_row(row: Row, widths=None) -> str:
    cells = (row.module, row.backend, row.quantity, _num(row.max_err), _num(row.bound), row.status, row.note)
    widths = widths or (8, 16, 34, 9, 9, 4)
    out = [c.ljust(w) if i < 3 or i == 5 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
    return "  ".join(out + [cells[-1]]).rstrip()


def format_table(rows: list[Row]) -> str:
    """The table as text: one header, one line per row."""
    widths = [len(h) for h in HEADER[:6]]
    for r in rows:
        for i, c in enumerate((r.module, r.backend, r.quantity, _num(r.max_err), _num(r.bound), r.status)):
            if i != 5 or not r.status.startswith("skipped"):
                widths[i] = max(widths[i], len(c))
    head = "  ".join(h.ljust(w) if i < 3 or i == 5 else h.rjust(w) for i, (h, w) in enumerate(zip(HEADER, widths)))
    lines = [head.rstrip(), "-" * len(head.rstrip())]
    return "\n".join(lines + [format_row(r, widths) for r in rows])


def summary(rows: list[Row], seconds: float | None = None) -> str:
    failed = sum(r.failed for r in rows)
    passed = sum(r.status == "pass" for r in rows)
    skipped = sum(r.status.startswith("skipped") for r in rows)
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    verdict = "FAILED" if failed else "OK"
    return f"{verdict}: {passed} passed, {failed} failed, {skipped} backends skipped{took}"


def write_json(rows: list[Row], path: str, seconds: float | None = None) -> None:
    import platform

    import torch

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {
        "passed": not any(r.failed for r in rows),
        "seconds": seconds,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "machine": platform.platform(),
        "rows": [{k: clean(v) for k, v in asdict(r).items()} for r in rows],
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main(modules=None, backends=None, json_path=None, out=print) -> int:
    """Run, print the table and a one-line verdict; return 0 if nothing failed, else 1."""
    start = time.perf_counter()
    rows = run(modules, backends)
    seconds = time.perf_counter() - start
    out(format_table(rows))
    out(summary(rows, seconds))
    if json_path:
        write_json(rows, json_path, seconds)
    return 1 if any(r.failed for r in rows) else 0


# ============================================================================= module checks
#
# Each module: a fixed seeded case (odd sizes), its float64 reference truth
# computed once, and a function that checks one backend against it.

# ----------------------------------------------------------------------------- GPT

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
    from chainrule.reference import checks, gpt

    config = gpt.Config(**GPT_CONFIG_ARGS)
    rng = numpy.random.default_rng(GPT_SEED)
    params = gpt.random_params(config, rng)
    tokens = rng.integers(0, config.vocab_size, (GPT_BATCH, GPT_T))
    prompt = tokens[:, :GPT_PROMPT]
    case = {"config": config, "params": params, "tokens": tokens, "prompt": prompt}
    case["logits"] = gpt.forward(params, config, tokens)
    case["log_prob"] = gpt.log_prob(params, config, tokens)

    def mean_nll(p):
        return -float(numpy.mean(gpt.log_prob(p, config, tokens))) / GPT_T

    case["grad_coords"] = (("wte", (int(tokens[0, 2]), 3)),) + GPT_GRAD_COORDS
    fd = [checks.finite_difference_grad(mean_nll, params, n, i) for n, i in case["grad_coords"]]
    case["grad_fd"], case["grad_fd_err"] = numpy.array([d.value for d in fd]), max(d.error for d in fd)
    enum_config = gpt.Config(**GPT_ENUM_CONFIG_ARGS)
    case["enum_config"] = enum_config
    case["enum_params"] = gpt.random_params(enum_config, numpy.random.default_rng(GPT_SEED + 2))
    return case


class _TorchGPT:
    """fast.gpt on one torch backend; every output returned as float64 NumPy (exact upcast)."""

    def __init__(self, backend, params, config):
        import torch

        from chainrule.fast import backend as fb
        from chainrule.fast import gpt as fgpt

        self.torch, self.fb, self.gpt, self.config, self.device = torch, fb, fgpt, config, backend.device
        self.params = fb.to_torch(params, device=backend.device, dtype=backend.torch_dtype)
        self.reference = importlib.import_module("reference.gpt")
        self.checks = importlib.import_module("reference.checks")
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
def gpt_checks(backend):
    """GPT (reference.gpt vs fast.gpt) on one backend."""
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
        got = impl.mean_nll_grad(tokens, case["grad_coords"])
        quantity = f"grad mean NLL vs finite diff ({len(got)} coords)"
        if case["grad_fd_err"] > checks.FD_ACCURACY:  # the truth itself is not good enough to judge
            yield Result(quantity, math.inf, checks.FD_ACCURACY, False,
                         f"finite-difference truth self-consistency {case['grad_fd_err']:.2e} > {checks.FD_ACCURACY:g}")  # fmt: skip
        else:
            yield checks.compare(quantity, case["grad_fd"], got, dtype)
    yield causality_result(impl.forward, tokens[:1], config.vocab_size)
    enum = _impl(backend, case["enum_params"], case["enum_config"])
    V, T = case["enum_config"].vocab_size, case["enum_config"].block_size
    total = math.fsum(numpy.exp(checks.enumerate_log_probs(enum.log_prob, V, T)))
    # log_prob accumulates the log-softmax in >= float32: normalized to float32 accuracy in every dtype
    yield checks.compare(f"sum of p over all {V}^{T} sequences", 1.0, total, "float32" if low else "float64")


# ----------------------------------------------------------------------------- sampling

SAMPLING_SHAPE = (3, 59)
SAMPLING_SEED = 4321
SAMPLING_FILTERS = (
    ("top_k", {"k": 5}),
    ("top_k", {"k": 3, "min_tokens_to_keep": 7}),
    ("top_p", {"p": 0.9}),
    ("top_p", {"p": 0.4, "min_tokens_to_keep": 3}),
    ("typical", {"mass": 0.9}),
    ("typical", {"mass": 0.3, "min_tokens_to_keep": 2}),
    ("min_p", {"p": 0.05}),
    ("epsilon", {"eps": 0.02}),
    ("eta", {"eps": 0.02}),
)  # fmt: skip
SAMPLING_CHAIN = {"repetition_penalty": {"penalty": 1.2}, "temperature": 0.8, "top_k": 20, "top_p": 0.95,
                  "min_p": 0.01, "typical": 0.97, "epsilon": 1e-4, "eta": 1e-4}  # fmt: skip
SAMPLING_DRAWS = 400  # rows of apply-then-sample, one shared uniform each
SAMPLING_GOF_N = 20000  # draws for the goodness-of-fit row
SAMPLING_GOF_LOGITS = (0.5, -1.0, 2.0, -numpy.inf, 0.0, 1.5, -3.0)  # one token of probability 0
BOUNDARY = 1e-12  # a draw whose u lies this close to a cdf boundary may go either way: not compared


def sampling_kinds(rng, shape) -> dict:
    """Logits of four kinds: random (a -inf column), tie-heavy (few distinct values, whole rows
    equal), -inf-heavy (80% -inf), |logit| ~ 1e4 (ties among huge values too)."""
    B, V = shape
    random = rng.normal(0.0, 2.0, size=shape)
    random[:, 3] = -numpy.inf
    ties = rng.integers(-2, 2, size=shape).astype(numpy.float64)
    ties[::2] = 0.0
    inf_heavy = numpy.where(rng.random(shape) < 0.8, -numpy.inf, rng.normal(0.0, 1.0, size=shape))
    inf_heavy[numpy.arange(B), rng.integers(0, V, size=B)] = 0.5
    huge = rng.normal(0.0, 1e4, size=shape)
    huge[:, : V // 2] = numpy.round(huge[:, : V // 2], -3)
    return {"random": random, "tie-heavy": ties, "-inf-heavy": inf_heavy, "|x|~1e4": huge}


@functools.cache
def _sampling_case() -> dict:
    rng = numpy.random.default_rng(SAMPLING_SEED)
    kinds = sampling_kinds(rng, SAMPLING_SHAPE)
    draws = sampling_kinds(rng, (SAMPLING_DRAWS, 13))
    return {"kinds": kinds, "context": rng.integers(0, SAMPLING_SHAPE[1], size=(SAMPLING_SHAPE[0], 9)),
            "draws": {k: draws[k] for k in ("random", "tie-heavy", "-inf-heavy")},
            "draw_context": numpy.array([0, 2, 2, 5]), "u": rng.random(SAMPLING_DRAWS)}  # fmt: skip


class _SamplingSide:
    """The sampling module a backend runs (fast.sampling on torch; the reference on CuPy),
    with conversions from and back to NumPy (floats exactly to float64)."""

    def __init__(self, backend):
        self.backend = backend
        if backend.kind == "cupy":
            import cupy

            from chainrule.reference import sampling

            self.cp, self.sampling = cupy, sampling
        else:
            import torch

            from chainrule.fast import sampling

            self.cp, self.torch, self.sampling = None, torch, sampling

    def array(self, a, float64=False):
        a = numpy.asarray(a)
        if self.cp is not None:
            return self.cp.asarray(a)
        torch = self.torch
        if a.dtype.kind in "iu":
            return torch.as_tensor(a, dtype=torch.int64, device=self.backend.device)
        dtype = torch.float64 if float64 else self.backend.torch_dtype
        return torch.as_tensor(a, device=self.backend.device).to(dtype)

    def numpy(self, a):
        from chainrule.reference import checks

        if self.cp is not None:
            return a.get()
        if a.is_floating_point():
            return checks.as_float64(a)
        return a.detach().cpu().numpy()

    def seen(self, x):
        """The logits as the backend holds them (rounded to its dtype), back in float64."""
        return self.numpy(self.array(x))


@register("sampling")
def sampling_checks(backend):
    """Logits processors and samplers (reference.sampling vs fast.sampling) on one backend: kept
    sets exactly, rescaled values under the tolerance table, sampled tokens exactly from shared
    uniforms, and the sampler's distribution (chi-square)."""
    from scipy import stats

    from chainrule.reference import checks
    from chainrule.reference import sampling as ref

    case, side, dtype = _sampling_case(), _SamplingSide(backend), backend.dtype
    kinds = case["kinds"]
    seen = {k: side.seen(x) for k, x in kinds.items()}
    # kept sets: decided in float64 on the logits the backend holds, so exactly the reference's
    for name, kwargs in SAMPLING_FILTERS:
        differing, entries = 0, 0
        for k, x in kinds.items():
            want = getattr(ref, "keep_" + name)(seen[k], **kwargs)
            got = side.numpy(getattr(side.sampling, "keep_" + name)(side.array(x), **kwargs))
            differing += int((got != want).sum()) if got.shape == want.shape else want.size
            entries += want.size
        args = ", ".join(f"{a}={v}" for a, v in kwargs.items())
        yield Result(f"kept set {name}({args})", differing, 0, differing == 0,
                     f"differing mask entries of {entries} ({len(kinds)} kinds of logits)")  # fmt: skip
    # values of the rescaling processors, under the tolerance table
    for t in (0.3, 2.5):
        truth = numpy.concatenate([ref.temperature(seen[k], t) for k in kinds])
        got = numpy.concatenate([side.numpy(side.sampling.temperature(side.array(x), t)) for x in kinds.values()])
        yield checks.compare(f"temperature({t}) values", truth, got, dtype)
    for penalty in (0.7, 1.3):
        context = case["context"]
        truth = numpy.concatenate([ref.repetition_penalty(seen[k], context, penalty) for k in kinds])
        penalized = [side.sampling.repetition_penalty(side.array(x), side.array(context), penalty) for x in kinds.values()]
        got = numpy.concatenate([side.numpy(y) for y in penalized])
        yield checks.compare(f"repetition_penalty({penalty}) values", truth, got, dtype)
    # apply then sample: the reference's token from the same u, for the logits the backend produced
    u = case["u"]
    spec = dict(SAMPLING_CHAIN, repetition_penalty=dict(SAMPLING_CHAIN["repetition_penalty"],
                                                        context=case["draw_context"]))  # fmt: skip
    mismatched, compared, logits_off = 0, 0, 0
    for k, x in case["draws"].items():
        got_logits_b = side.sampling.apply(side.array(x), spec)
        got_logits = side.numpy(got_logits_b)
        want_logits = ref.apply(side.seen(x), spec)
        if dtype == "float64":  # the chain is not continuous: its kept sets are compared in float64 only
            logits_off += int((numpy.isneginf(got_logits) != numpy.isneginf(want_logits)).sum())
        want = ref.sample(got_logits, u)
        got = side.numpy(side.sampling.sample(got_logits_b, side.array(u, float64=True)))
        margin = numpy.min(numpy.abs(numpy.cumsum(ref.probs(got_logits), axis=-1) - u[:, None]), axis=-1)
        clear = margin >= BOUNDARY
        mismatched += int((got[clear] != want[clear]).sum())
        if dtype == "float64":
            mismatched += int((got[clear] != ref.sample(want_logits, u)[clear]).sum())
        compared += int(clear.sum())
    total = SAMPLING_DRAWS * len(case["draws"])
    yield Result("sampled tokens after apply (shared u)", mismatched + logits_off, 0,
                 mismatched + logits_off == 0 and compared >= 0.95 * total,
                 f"{compared} of {total} draws compared (u within {BOUNDARY:g} of a cdf boundary skipped)"
                 + (f"; {logits_off} kept-set entries of apply differ" if logits_off else ""))  # fmt: skip
    # the sampler's distribution: chi-square goodness of fit of n draws
    logits = numpy.array(SAMPLING_GOF_LOGITS)
    probs = ref.probs(side.seen(logits))
    rows = side.array(numpy.broadcast_to(logits, (SAMPLING_GOF_N, logits.size)).copy())
    gof_rng = numpy.random.default_rng(SAMPLING_SEED + 1)
    fit = checks.sampler_goodness_of_fit(
        lambda n: side.numpy(side.sampling.sample(rows[:n], side.array(gof_rng.random(n), float64=True))), probs,
        SAMPLING_GOF_N)  # fmt: skip
    critical = float(stats.chi2.ppf(1 - fit.alpha, fit.dof)) if fit.dof > 0 else 0.0
    yield Result(f"sampler goodness of fit (chi-square, n={SAMPLING_GOF_N})", fit.statistic, critical, fit.passed,
                 f"p = {fit.p_value:.3g} >= alpha {fit.alpha:g} on {fit.dof} dof; {fit.impossible} draws of "
                 f"probability-0 tokens")  # fmt: skip
