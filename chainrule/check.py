"""`chainrule check` and `chainrule export`: the oracle for your own model, from the command line.

A *family* knows one kind of model directory: how to recognize it (`detect`), how to load it as a
`Subject` -- the model under test, in your dtype and on your device, beside chainrule's float64
reference on the same weights -- and, optionally, how to export it to another format. Families
register themselves with `register_family` in the modules of chainrule/families/, which
`load_families()` imports; neither command knows a family by name. GPT-2 is chainrule/families/gpt2.py:
"hf-gpt2" (a HF transformers GPT-2 directory; the model under test is transformers' GPT2LMHeadModel
itself) and "chainrule-gpt" (a run of `chainrule train gpt`; the model under test is fast.gpt).

`run_checks(subject)` gives one `Result` per check, on a seeded batch of odd sizes:

    logits          the model's logits vs the float64 reference, under the tolerance table
                    (reference.checks.compare): float64 entry by entry; low precision against the
                    naive same-dtype baseline, |model - ref| <= k max|naive - ref| + atol + 1 ulp |ref|
    log-likelihood  log p(x) per sequence (the family's bos token prepended), the same rule
    causality       perturbing the tokens at positions >= s leaves the model's logits at positions < s
                    bit-identical, for every s (reference.checks.assert_causal)
    kv-cache        the model's logits fed one token at a time through its own cache, judged against
                    the reference as `logits` is: cached = recompute within the table
    greedy          greedy decoding through the model's cache, token for token against the
                    reference's choice given the same prefix (reference.checks.compare_tokens: in low
                    precision, near-ties closer than the model's logit error are not judged)
    padding         each row alone vs inside left-, right- and mixed-padded batches, with the
                    attention mask (and, for HF models, the position ids HF's generate derives
                    from it): the logits at real positions must not move beyond the tolerance
                    table (reference.checks.compare_padding); n/a for a family without padding

A check whose model raises fails with the exception as its detail. Each line fits 100 columns: the
status, the check, and the worst offender (index, reference value, model value, error and bound).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from chainrule.reference import checks

DTYPES = ("float32", "bfloat16", "float16", "float64")
DEVICES = ("cpu", "cuda")
WIDTH = 100  # every line of the report fits this many columns

# The inputs: a seeded batch of odd sizes, each cut to the model's context length.
BATCH, LENGTH = 3, 31  # logits, log-likelihood, kv-cache
CAUSAL_BATCH, CAUSAL_LENGTH = 2, 13  # causality: each position alone, then every suffix (assert_causal)
PROMPT, NEW_TOKENS = 5, 11  # greedy: BATCH rows, 33 generated tokens (>= checks.MIN_JUDGED_COUNT)

HF_MISSING = "reading a HF directory needs transformers: pip install 'chainrule[hf]'"


class CheckError(ValueError):
    """A usage or load error of `check` / `export` (the command exits with status 2)."""


# ----------------------------------------------------------------------------- the subject


@dataclass
class Subject:
    """A loaded model: the model under test and the float64 reference on the same weights.

    The model's functions take tokens as an int64 NumPy array and return arrays of any kind
    (torch tensors on its device, NumPy) in the model's own precision:

        logits(tokens (B, T)) -> (B, T, V)          all positions at once
        log_prob(tokens (B, T)) -> (B,)             nats, config.bos_token prepended
        cached_logits(tokens (B, T)) -> (B, T, V)   one token at a time through the model's cache
        greedy(prompt (B, T0), n) -> (tokens (B, T0 + n), step logits (B, n, V)): greedy decoding,
            and the logits each step chose from

    reference: the reference module (its `forward(params, config, x)` and `log_prob`);
    params: float64 NumPy arrays; naive_logits / naive_log_prob: the naive same-dtype baseline of
    the low-precision rule (tokens -> float64 NumPy; None in float64: see `naive_baseline`).
    """

    family: str
    description: str
    dtype: str
    device: str
    reference: Any
    params: dict
    config: Any
    logits: Callable
    log_prob: Callable
    cached_logits: Callable
    greedy: Callable
    naive_logits: Callable | None = None
    naive_log_prob: Callable | None = None
    naive_description: str = ""
    notes: list[str] = field(default_factory=list)
    padded_logits: Callable | None = None  # (tokens (B, T), attention_mask (B, T)) -> logits (B, T, V)
    padded_note: Callable | None = None  # (tokens, mask) -> a remark for the padding line (e.g. a known bug)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def context(self) -> int:
        """The context length: GPT's block_size, or the max_position of a LLaMA-family config."""
        context = getattr(self.config, "block_size", None)
        return int(context if context is not None else self.config.max_position)


def naive_numpy(fn, params: dict, dtype: str):
    """The naive same-dtype baseline in NumPy: tokens -> `fn` (a reference function such as
    `reference.gpt.forward`) run on the params rounded to `dtype` (float32 or float16), as float64.
    float32 is `reference.checks.naive_float32`; NumPy has no bfloat16 (a family gives its own)."""
    if dtype == "float32":
        return lambda config, tokens: checks.naive_float32(fn, params, config, tokens)
    if dtype != "float16":
        raise ValueError(f"dtype: expected float32 or float16 (NumPy has no {dtype}), got {dtype!r}")
    rounded = {k: checks.as_float64(v).astype(np.float16) for k, v in params.items()}

    def naive(config, tokens):
        out = fn(rounded, config, tokens)
        if getattr(out, "dtype", None) != np.float16:
            raise AssertionError(f"naive float16 baseline computed in {getattr(out, 'dtype', type(out))}")
        return checks.as_float64(out)

    return naive


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Family:
    """A kind of model directory `check` and `export` understand.

    detect(path: Path) -> bool: whether the directory is one of this family's (cheap: read a
        JSON file, never the weights).
    load(path, *, dtype, device, bos_token) -> Subject: dtype None means the checkpoint's own;
        errors are CheckError, ValueError, FileNotFoundError or ImportError, each naming the file
        or the option.
    exporters: format name ("hf") -> export(path, out_dir: Path) -> [written file names];
        out_dir exists and may be written into.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., Subject]
    exporters: dict = field(default_factory=dict)


FAMILIES: dict[str, Family] = {}


def register_family(name: str, description: str, detect, load, exporters=None) -> Family:
    """Register (or replace) a model family under `name`; detection tries families in the
    order they were registered. Returns the Family."""
    family = Family(name, description, detect, load, dict(exporters or {}))
    FAMILIES[name] = family
    return family


def load_families() -> None:
    """Import every module of the package `chainrule.families`: each registers its families on import."""
    import importlib
    import pkgutil

    from chainrule import families

    for info in pkgutil.iter_modules(families.__path__):
        importlib.import_module(f"chainrule.families.{info.name}")


def known_families() -> str:
    """'name (description); ...' of every registered family, for error messages."""
    return "; ".join(f"{f.name} ({f.description})" for f in FAMILIES.values())


def _what_is_there(path: Path) -> str:
    """A few words on what a directory no family recognizes holds."""
    for name, key in (("config.json", "model_type"), ("run.json", "model"), ("checkpoint.json", "model")):
        file = path / name
        if file.is_file():
            try:
                value = json.loads(file.read_text()).get(key)
            except (ValueError, AttributeError):
                return f"{name} is not a JSON object"
            return f"{name} has {key} {value!r}"
    return "no config.json, run.json or checkpoint.json in it"


def find_family(path, family: str | None = None, what: str = "PATH") -> Family:
    """The family of the model directory `path`: `family` by name, or the first registered family
    whose `detect` recognizes it. CheckError naming the path (as `what`) or the name, listing the
    known families."""
    load_families()
    path = Path(path)
    if family is not None:
        if family not in FAMILIES:
            raise CheckError(f"--family: unknown family {family!r}; known families: {known_families()}")
        if not path.is_dir():
            raise CheckError(f"{what}: {str(path)!r} is not a directory")
        return FAMILIES[family]
    if not path.exists():
        raise CheckError(f"{what}: {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckError(f"{what}: expected a model directory, got the file {str(path)!r}")
    for f in FAMILIES.values():
        if f.detect(path):
            return f
    raise CheckError(f"{what}: no known model family recognizes {str(path)!r} ({_what_is_there(path)}); "
                     f"known families: {known_families()}")  # fmt: skip


def load(path, *, dtype: str | None = None, device: str = "cpu", family: str | None = None,
         bos_token: int | None = None) -> Subject:  # fmt: skip
    """Load the model directory `path` as a Subject (see `Family.load`)."""
    if dtype is not None and dtype not in DTYPES:
        raise CheckError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if device not in DEVICES:
        raise CheckError(f"--device: expected one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise CheckError("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")
    fam = find_family(path, family)
    return fam.load(Path(path), dtype=dtype, device=device, bos_token=bos_token)


# ----------------------------------------------------------------------------- results


@dataclass
class Result:
    """One check: status "pass", "FAIL" or "n/a"; detail: the rest of its line."""

    check: str
    status: str
    detail: str
    max_err: float | None = None
    bound: float | None = None
    worst_index: tuple | None = None
    reference_value: float | None = None
    model_value: float | None = None
    naive_err: float | None = None
    rule: str = ""
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"

    def line(self) -> str:
        return _fit(f"{self.status:<4} {self.check:<14} {self.detail}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["worst_index"] = None if self.worst_index is None else list(self.worst_index)
        return d


def _fit(text: str) -> str:
    return text if len(text) <= WIDTH else text[: WIDTH - 3] + "..."


def _num(x: float, digits: int = 6) -> str:
    return f"{x:.{digits}g}"


def _index(index) -> str:
    return "(" + ", ".join(str(int(i)) for i in index) + ("," if len(index) == 1 else "") + ")"


def _from_comparison(check: str, c: checks.Comparison) -> Result:
    """A Comparison as a Result: the worst offender (by the fraction of its bound used)."""
    err = abs(c.got_value - c.truth_value) if math.isfinite(c.got_value - c.truth_value) else math.inf
    if c.got_value == c.truth_value:
        err = 0.0
    op = "<=" if c.passed else ">"
    detail = ""
    for digits in (6, 4):
        detail = (f"worst {_index(c.worst_index)} ref {_num(c.truth_value, digits)} "
                  f"model {_num(c.got_value, digits)} err {err:.2g} {op} {c.bound:.2g}")  # fmt: skip
        if len(detail) <= WIDTH - 20:
            break
    return Result(check, "pass" if c.passed else "FAIL", detail, c.max_err, c.bound, c.worst_index,
                  c.truth_value, c.got_value, c.naive_err, c.rule)  # fmt: skip


def _numpy(a) -> np.ndarray:
    """A NumPy view of a torch tensor (any device) or array, dtype kept."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _raised(check: str, error: BaseException) -> Result:
    return Result(check, "FAIL", f"the model raised {type(error).__name__}: {error}")


# ----------------------------------------------------------------------------- the checks


@dataclass(frozen=True)
class Inputs:
    """The seeded inputs of the checks, cut to the model's context."""

    tokens: np.ndarray  # (BATCH, L)
    causal: np.ndarray  # (CAUSAL_BATCH, Lc)
    prompt: np.ndarray  # (BATCH, T0)
    new_tokens: int


def inputs(vocab_size: int, context: int, seed: int = 0) -> Inputs:
    """BATCH x min(LENGTH, context) tokens; the causality batch; a greedy prompt of PROMPT tokens
    followed by NEW_TOKENS (fewer if the context is short: the reference sees T0 + N - 1 tokens)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab_size, size=(BATCH, min(LENGTH, context)), dtype=np.int64)
    causal = rng.integers(0, vocab_size, size=(CAUSAL_BATCH, min(CAUSAL_LENGTH, context)), dtype=np.int64)
    T0 = min(PROMPT, context)
    prompt = rng.integers(0, vocab_size, size=(BATCH, T0), dtype=np.int64)
    return Inputs(tokens, causal, prompt, max(1, min(NEW_TOKENS, context + 1 - T0)))


def _logits(s: Subject, x: Inputs, truth) -> Result:
    naive = s.naive_logits(s.config, x.tokens) if s.naive_logits else None
    got = s.logits(x.tokens)
    return _from_comparison("logits", checks.compare("logits", truth, got, s.dtype, naive=naive))


def _log_likelihood(s: Subject, x: Inputs) -> Result:
    truth = s.reference.log_prob(s.params, s.config, x.tokens)
    naive = s.naive_log_prob(s.config, x.tokens) if s.naive_log_prob else None
    got = s.log_prob(x.tokens)
    return _from_comparison("log-likelihood", checks.compare("log-likelihood", truth, got, s.dtype, naive=naive))


def _causality(s: Subject, x: Inputs) -> Result:
    tokens = x.causal
    B, T = tokens.shape
    calls = [0]

    def fn(t):  # t: int64 NumPy, as `tokens`; float64 is exact for every float dtype (bfloat16 too)
        calls[0] += 1
        return checks.as_float64(s.logits(t))

    if T < 2:
        return Result("causality", "n/a", f"a context of {T} token has no future to perturb")
    try:
        checks.assert_causal(fn, tokens, vocab_size=s.vocab_size, n_trials=1, name="the model")
    except AssertionError as error:
        result = _causal_offender(s, tokens)
        result.info["message"] = str(error)
        return result
    return Result("causality", "pass", f"{B} x {T} tokens: earlier logits bit-identical under "
                                       f"{calls[0] - 2} perturbations", 0.0, 0.0, rule="bit-identical")  # fmt: skip


def _causal_offender(s: Subject, tokens: np.ndarray) -> Result:
    """The worst leak: perturb every token at positions >= s, for each s; the logit at a position
    < s that moved the most (before -> after)."""
    rng = np.random.default_rng(1)
    base = checks.as_float64(s.logits(tokens))
    worst = None
    B, T = tokens.shape
    for start in range(1, T):
        y = tokens.copy()
        y[:, start:] = (y[:, start:] + rng.integers(1, s.vocab_size, size=y[:, start:].shape)) % s.vocab_size
        out = checks.as_float64(s.logits(y))
        moved = np.where(np.isnan(base) & np.isnan(out), 0.0, np.abs(out - base))[:, :start]
        moved = np.nan_to_num(moved, nan=np.inf)
        if moved.size and moved.max() > 0 and (worst is None or moved.max() > worst[0]):
            index = np.unravel_index(int(np.argmax(moved)), moved.shape)
            worst = (float(moved.max()), index, float(base[index]), float(out[index]), start)
    if worst is None:  # assert_causal saw a dependency the suffix perturbations did not
        return Result("causality", "FAIL", "a logit depends on a later token (single-position perturbation)")
    err, index, before, after, start = worst
    detail = (f"{_index(index)} moved {_num(before)} -> {_num(after)} when tokens >= {start} "
              f"changed; bound 0")  # fmt: skip
    return Result("causality", "FAIL", detail, err, 0.0, tuple(int(i) for i in index), before, after,
                  rule="bit-identical")  # fmt: skip


def _kv_cache(s: Subject, x: Inputs, truth) -> Result:
    naive = s.naive_logits(s.config, x.tokens) if s.naive_logits else None
    cached = s.cached_logits(x.tokens)
    result = _from_comparison("kv-cache", checks.compare("kv-cache", truth, cached, s.dtype, naive=naive))
    recompute = checks.as_float64(s.logits(x.tokens))
    result.info["max |cached - recompute|"] = float(np.max(np.abs(checks.as_float64(cached) - recompute)))
    return result


def _greedy(s: Subject, x: Inputs) -> Result:
    tokens, steps = s.greedy(x.prompt, x.new_tokens)
    ref = lambda t: s.reference.forward(s.params, s.config, np.asarray(t, dtype=np.int64))  # noqa: E731
    c = checks.compare_tokens("greedy", x.prompt, _numpy(tokens), ref, s.dtype, fast=steps,
                              max_new_tokens=x.new_tokens)  # fmt: skip
    info = {"total": c.total, "judged": c.judged, "needed": c.needed, "mismatches": c.mismatches,
            "max_logit_err": c.max_logit_err, "note": c.note}  # fmt: skip
    if c.problem:
        return Result("greedy", "FAIL", c.problem, math.inf, 0.0, info=info)
    if c.mismatches:
        b, n, got, want, margin = _first_mismatch(x.prompt, _numpy(tokens), ref)
        detail = (f"row {b} step {n}: model {got}, ref {want} (margin {margin:.2g}); "
                  f"{c.mismatches} of {c.judged} judged differ")  # fmt: skip
        return Result("greedy", "FAIL", detail, float(c.mismatches), 0.0, (b, n), float(want), float(got), info=info)
    if c.judged < c.needed:
        return Result("greedy", "FAIL", f"only {c.judged} of {c.total} tokens clear of near-ties (need "
                                        f"{c.needed}): the comparison proves nothing", info=info)  # fmt: skip
    return Result("greedy", "pass", f"{c.judged}/{c.total} tokens judged (need {c.needed}), all equal the "
                                    "reference's choice", 0.0, 0.0, info=info)  # fmt: skip


def _first_mismatch(prompt, tokens, ref):
    """(row, step, model token, reference token, reference margin) of the first judged mismatch."""
    T0 = prompt.shape[1]
    logits = checks.as_float64(ref(tokens[:, :-1]))[:, T0 - 1 :]  # (B, N, V)
    want = logits.argmax(-1)
    got = tokens[:, T0:]
    b, n = (int(i) for i in np.argwhere(got != want)[0])
    top2 = np.sort(logits[b, n])[-2:]
    return b, n, int(got[b, n]), int(want[b, n]), float(top2[1] - top2[0])


PAD_WIDTH = 3  # pads per row in the padding check


def _padding(s: Subject, x: Inputs) -> Result:
    if s.padded_logits is None:
        return Result("padding", "n/a", f"the {s.family} family runs no padded batches")
    T = min(x.tokens.shape[1], s.context - PAD_WIDTH)
    if T < 1:
        return Result("padding", "n/a", f"a context of {s.context} leaves no room for {PAD_WIDTH} pads")
    tokens = x.tokens[:, :T]
    c = checks.compare_padding(s.padded_logits, tokens, dtype=s.dtype, max_pad=PAD_WIDTH)
    worst = max(c.worst.values())
    tol = checks.tolerance(s.dtype)
    bound = tol.atol
    if not c.passed and tol.k is not None and s.dtype not in ("float64", "float32"):
        # half precision: padding may move the rounding by as much as the model's own rounding
        # error moves it (k x its error against the float64 reference on these rows alone)
        own = float(np.max(np.abs(checks.as_float64(s.logits(tokens)) - s.reference.forward(s.params, s.config, tokens))))
        bound = tol.k * own + tol.atol
        c = dataclasses.replace(c, passed=worst <= bound, details=() if worst <= bound else c.details)
    detail = f"rows alone vs padded: max err {worst:.2g}"
    if s.padded_note is not None:
        detail += "; " + s.padded_note(tokens)
    rule = "the elementwise table rule" if bound == tol.atol else f"<= {tol.k:g} x the model's own error + atol"
    result = Result("padding", "pass" if c.passed else "FAIL", detail, worst, bound, rule=rule)
    result.info["details"] = list(c.details)
    return result


def run_checks(subject: Subject, seed: int = 0, progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Every check on `subject` -> [Result] (see the module docstring). progress(result) is called
    as each one finishes."""
    x = inputs(subject.vocab_size, subject.context, seed)
    results = []
    truth = None

    def run(name, fn):
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as error:  # the model under test raised: that check fails, the others run
            result = _raised(name, error)
        result.seconds = time.perf_counter() - start
        results.append(result)
        if progress:
            progress(result)

    start = time.perf_counter()
    truth = subject.reference.forward(subject.params, subject.config, x.tokens)  # (B, T, V) float64
    reference_seconds = time.perf_counter() - start
    run("logits", lambda: _logits(subject, x, truth))
    results[-1].seconds += reference_seconds
    run("log-likelihood", lambda: _log_likelihood(subject, x))
    run("causality", lambda: _causality(subject, x))
    run("kv-cache", lambda: _kv_cache(subject, x, truth))
    run("greedy", lambda: _greedy(subject, x))
    run("padding", lambda: _padding(subject, x))
    return results


# ----------------------------------------------------------------------------- the report


def _rule(dtype: str, naive: bool) -> str:
    tol = checks.tolerance(dtype)
    if naive and tol.k is not None:
        return f"|model - ref| <= {tol.k:g} x naive error + {tol.atol:g} + 1 ulp x |ref|"
    return f"|model - ref| <= {tol.atol:g} + {tol.rtol:g} x |ref|"


def header(subject: Subject, path, x: Inputs, seed: int) -> list[str]:
    """The lines before the results: what is checked, against what, on which inputs."""
    naive = subject.naive_logits is not None
    lines = [
        f"chainrule check {path}",
        f"family {subject.family}: {subject.description}",
        f"under test in {subject.dtype} on {subject.device}; reference: {subject.reference.__name__}, float64, "
        "same weights",
        f"rule ({subject.dtype}): {_rule(subject.dtype, naive)}",
    ]
    if naive:
        lines.append(f"naive same-dtype baseline: {subject.naive_description}")
    B, T = x.tokens.shape
    lines.append(f"inputs (seed {seed}): {B} x {T} tokens; causality {x.causal.shape[0]} x {x.causal.shape[1]}; "
                 f"greedy {x.prompt.shape[0]} x ({x.prompt.shape[1]} + {x.new_tokens})")  # fmt: skip
    lines += [f"note: {n}" for n in subject.notes]
    return [_fit(line) for line in lines]


def summary(results: list[Result], seconds: float) -> str:
    passed = sum(r.status == "pass" for r in results)
    failed = sum(r.status == "FAIL" for r in results)
    na = sum(r.status == "n/a" for r in results)
    verdict = "FAILED" if failed else "passed"
    return f"{verdict}: {passed} pass, {failed} fail, {na} n/a in {seconds:.1f} s"


def report_dict(subject: Subject, path, results: list[Result], seed: int, seconds: float) -> dict:
    """The JSON document of `check --json`."""
    return {
        "format": "chainrule-check", "version": 1, "path": str(path), "family": subject.family,
        "model": subject.description, "dtype": subject.dtype, "device": subject.device,
        "reference": subject.reference.__name__, "naive_baseline": subject.naive_description or None,
        "rule": _rule(subject.dtype, subject.naive_logits is not None), "seed": seed,
        "tolerance": dataclasses.asdict(checks.tolerance(subject.dtype)), "notes": list(subject.notes),
        "passed": all(r.passed for r in results), "seconds": seconds,
        "results": [r.to_dict() for r in results],
    }  # fmt: skip


def _jsonable(obj):
    """NaN and infinities as strings (JSON has none); everything else as it is."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def check(path, *, dtype: str | None = None, device: str = "cpu", family: str | None = None,
          bos_token: int | None = None, seed: int = 0, json_path=None, out=print) -> int:  # fmt: skip
    """`chainrule check PATH`: load, run every check, print the report with `out` (line by line),
    write JSON to `json_path` if given. -> 0 if every check passes (n/a counts as no failure),
    1 if any fails. CheckError / ValueError / FileNotFoundError / ImportError for a usage or
    load error (the command turns them into status 2)."""
    if json_path is not None and not Path(json_path).resolve().parent.is_dir():
        raise CheckError(f"--json: folder {str(Path(json_path).resolve().parent)!r} does not exist")
    start = time.perf_counter()
    subject = load(path, dtype=dtype, device=device, family=family, bos_token=bos_token)
    for line in header(subject, path, inputs(subject.vocab_size, subject.context, seed), seed):
        out(line)
    results = run_checks(subject, seed, progress=lambda r: out(r.line()))
    seconds = time.perf_counter() - start
    out(summary(results, seconds))
    if json_path is not None:
        doc = _jsonable(report_dict(subject, path, results, seed, seconds))
        Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if all(r.passed for r in results) else 1


# ----------------------------------------------------------------------------- export


def export(path, to: str, out_dir, *, force: bool = False, family: str | None = None) -> list[Path]:
    """`chainrule export RUN --to FORMAT DIR`: write the model of `path` in format `to` into
    `out_dir` (created; a non-empty one only with force=True, and then only the files the
    exporter writes are replaced). -> the files written. CheckError naming the argument."""
    fam = find_family(path, family, what="RUN")
    formats = sorted({f for fa in FAMILIES.values() for f in fa.exporters})
    if to not in fam.exporters:
        able = [fa.name for fa in FAMILIES.values() if to in fa.exporters]
        if to not in formats:
            raise CheckError(f"--to: unknown format {to!r}; known formats: {', '.join(formats) or 'none'}")
        raise CheckError(f"RUN: family {fam.name!r} has no exporter to {to!r}; families that export to "
                         f"{to!r}: {', '.join(able)}")  # fmt: skip
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckError(f"DIR: {str(out)!r} is a file, expected a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise CheckError(f"DIR: {str(out)!r} is not empty; pass --force to write into it anyway")
    if Path(path).resolve() == out.resolve():
        raise CheckError("DIR: expected a directory other than RUN")
    if not out.parent.resolve().is_dir():
        raise CheckError(f"DIR: folder {str(out.parent.resolve())!r} does not exist")
    out.mkdir(exist_ok=True)
    return [out / name for name in fam.exporters[to](Path(path), out)]
