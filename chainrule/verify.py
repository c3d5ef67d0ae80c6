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
    from fast import backend as fb

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
    from reference import checks, gpt

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

        from fast import backend as fb
        from fast import gpt as fgpt

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

        from reference import checks, gpt

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
    from reference import checks

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
    from reference import checks
    from reference import gpt as reference_gpt

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
