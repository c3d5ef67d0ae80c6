"""`chainrule verify`: the conformance table.

For every registered module and every backend of `fast.backend.ALL_BACKENDS`,
run the module's conformance checks -- the reference (float64 NumPy) against
that backend on fixed seeded cases, plus the cheap properties (causality,
normalization) on the backend itself -- and report one row per quantity:

    module | backend | quantity | max error | tolerance | pass

The checks live in this package, one module per topic (chainrule/verify/gpt.py,
sampling.py, ngram.py, ...). `load_checks` imports every module of the package, so a
new module adds its rows without editing a list. A module registers one function that
takes a `Backend` and yields results, cheapest and most representative first::

    @register("gpt")
    def gpt_checks(backend, quick=False):
        yield compare("logits", truth, got, backend.dtype, naive=naive)
        if quick:
            return  # `chainrule verify --quick`: this module's representative rows end here
        ...

A result is a `reference.checks.Comparison`, a `reference.checks.TokenComparison`
(generated tokens) or a `Result` (other quantities that are not elementwise
differences: exact causality). A check that raises is reported as a failed row
carrying the exception; an unavailable backend as one "skipped (reason)" row per
module (in the JSON; the text report names unavailable backends once).

`quick`: under `chainrule verify --quick` a function that takes a `quick` argument is
called with quick=True and yields its representative, cheap rows only, on the CPU
backends (`QUICK_BACKENDS`); a function without that argument runs in full.

The text report (`main`): one progress line per module x backend as it finishes, then a
module x backend summary (or every row with full=True), the unavailable backends in one
line, every failing row in full, and a verdict. Every line fits `WIDTH` columns.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
import textwrap
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

    @property
    def skipped(self) -> bool:
        return self.status.startswith("skipped")


CHECKS: dict[str, Callable] = {}
QUICK_BACKENDS = ("torch-cpu-f64", "torch-cpu-f32")  # where --quick runs unless backends are named
WIDTH = 100  # every line of the text report fits this many columns


def register(module: str):
    """Decorator: register `fn(backend[, quick]) -> iterable of Comparison | TokenComparison | Result`
    under a module name."""

    def decorate(fn):
        if module in CHECKS:
            raise ValueError(f"register: module {module!r} is already registered")
        CHECKS[module] = fn
        return fn

    return decorate


def load_checks() -> None:
    """Import every module of this package (chainrule/verify/*.py): each registers its
    modules' checks on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def takes_quick(fn: Callable) -> bool:
    """Whether a check function declares a `quick` argument (or takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "quick" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _row(module: str, backend: str, result) -> Row:
    passed = bool(result.passed)
    note = getattr(result, "note", "")
    if not passed and not note:
        note = str(result)  # a Comparison: reference vs fast at the worst index
    return Row(module, backend, result.quantity, float(result.max_err), float(result.bound),
               "pass" if passed else "FAIL", note)  # fmt: skip


def run(modules: Iterable[str] | None = None, backends: Iterable[str] | None = None,
        progress: Callable[[Row], None] | None = None, *, quick: bool = False,
        on_start: Callable[[str, str], None] | None = None,
        on_done: Callable[[str, str, list[Row], float], None] | None = None) -> list[Row]:
    """Run the checks of `modules` (default all) on `backends` (names; default all, or
    `QUICK_BACKENDS` with quick=True) -> rows.

    quick: each module's representative rows only (see the module docstring).
    progress(row) is called for every row as it comes; on_start(module, backend) before and
    on_done(module, backend, rows, seconds) after each module x backend that runs (not for
    unavailable backends, which give one "skipped (reason)" row per module).
    ValueError for an unknown module or backend name.

    torch runs on one CPU thread meanwhile (restored after): the cases are tiny, and a
    thread pool spinning on them is several times slower, more so on a busy machine.
    """
    from chainrule.fast import backend as fb

    load_checks()
    modules = list(CHECKS) if modules is None else list(modules)
    for m in modules:
        if m not in CHECKS:
            raise ValueError(f"module: expected one of {sorted(CHECKS)}, got {m!r}")
    by_name = {b.name: b for b in fb.ALL_BACKENDS}
    if backends is not None:
        names = list(backends)
    else:
        names = [n for n in by_name if n in QUICK_BACKENDS] if quick else list(by_name)
    for n in names:
        if n not in by_name:
            raise ValueError(f"backend: expected one of {list(by_name)}, got {n!r}")
    rows = []

    def emit(row, cell):
        rows.append(row)
        cell.append(row)
        if progress is not None:
            progress(row)

    with _one_torch_thread():
        for m in modules:
            fn = CHECKS[m]
            kwargs = {"quick": True} if quick and takes_quick(fn) else {}
            for n in names:
                backend, cell = by_name[n], []
                ok, reason = fb.available(backend)
                if not ok:
                    emit(Row(m, n, "-", None, None, f"skipped ({reason})"), cell)
                    continue
                if on_start is not None:
                    on_start(m, n)
                start = time.perf_counter()
                try:
                    for result in fn(backend, **kwargs):
                        emit(_row(m, n, result), cell)
                except Exception as exc:  # a crash is a failure of that backend, reported, not fatal
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    note = f"{type(exc).__name__}: {exc} ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
                    emit(Row(m, n, "error", None, None, "FAIL", note), cell)
                if on_done is not None:
                    on_done(m, n, cell, time.perf_counter() - start)
    return rows


@contextlib.contextmanager
def _one_torch_thread():
    """torch on one CPU thread for the duration (the previous setting restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- output


def _num(x) -> str:
    if x is None:
        return ""
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.2e}"


def _wrap(text: str, indent: int, first: int | None = None, width: int = WIDTH) -> list[str]:
    """`text` wrapped into lines of at most `width` columns, indented by `indent` (the
    first line by `first`, default `indent`)."""
    pad = " " * indent
    head = pad if first is None else " " * first
    return textwrap.wrap(text, width, initial_indent=head, subsequent_indent=pad, break_long_words=True,
                         break_on_hyphens=False) or [""]  # fmt: skip


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _counts(rows: list[Row], width: int = 0) -> str:
    """ "14 passed", "13 passed, 1 FAILED" or "no rows" for the rows of one module x backend
    (the first number right-aligned in `width` columns)."""
    checked = [r for r in rows if not r.skipped]
    if not checked:
        return f"{'-':>{width}} no rows"
    failed = sum(r.failed for r in checked)
    text = f"{len(checked) - failed:>{width}} passed"
    return text + f", {failed} FAILED" if failed else text


def format_progress(module: str, backend: str, rows: list[Row], seconds: float, module_width: int = 17) -> str:
    """One line for a module x backend that has finished: module, backend, counts, time."""
    w = min(module_width, 24)
    return f"{_clip(module, w):<{w}}  {_clip(backend, 16):<16}  {_counts(rows, 3):<24} {seconds:6.1f} s"


def _ran(rows: list[Row]) -> tuple[list[str], list[str]]:
    """(modules, backends) in the order they ran, leaving out backends that were only skipped."""
    modules = list(dict.fromkeys(r.module for r in rows))
    backends = list(dict.fromkeys(r.backend for r in rows if not r.skipped))
    return modules, backends


def format_summary(rows: list[Row]) -> str:
    """The module x backend table of counts: "14 passed", "1 FAIL of 14", or "-" where a
    module has no rows on a backend; a total line at the bottom."""
    modules, backends = _ran(rows)

    def cell(rs):
        rs = [r for r in rs if not r.skipped]
        failed = sum(r.failed for r in rs)
        if not rs:
            return "-"
        return f"{failed} FAIL of {len(rs)}" if failed else f"{len(rs)} passed"

    table = [[_clip(m, 24)] + [cell([r for r in rows if r.module == m and r.backend == b]) for b in backends]
             for m in modules]  # fmt: skip
    table.append(["total"] + [cell([r for r in rows if r.backend == b]) for b in backends])
    head = ["module"] + backends
    widths = [max(len(line[i]) for line in table + [head]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(head), "-" * len(line(head))] + [line(c) for c in table[:-1]]
    lines += ["-" * len(line(head)), line(table[-1])]
    if any("-" in c[1:] for c in table):
        lines.append("(-: the module has no rows on that backend)")
    return "\n".join(_clip(x, WIDTH) for x in lines)


def format_unavailable(rows: list[Row]) -> str:
    """One entry naming every backend that could not run, grouped by reason
    ("" if none), wrapped to `WIDTH` columns."""
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r.skipped:
            reason = r.status[len("skipped (") : -1] if r.status.endswith(")") else r.status
            names = reasons.setdefault(reason, [])
            if r.backend not in names:
                names.append(r.backend)
    if not reasons:
        return ""
    text = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items())
    return "\n".join(_wrap("unavailable: " + text, 2, first=0))


def format_failure(row: Row) -> str:
    """A failing row in full: where, what, the error against its bound, and the note (the
    worst offender), wrapped and indented."""
    lines = _wrap(f"FAIL  {row.module} on {row.backend}: {row.quantity}", 6, first=0)
    if row.max_err is not None:
        lines.append(f"      max error {_num(row.max_err)} > tolerance {_num(row.bound)}")
    if row.note:
        lines += _wrap(row.note, 6)
    return "\n".join(lines)


HEADER = ("quantity", "max error", "tolerance", "pass")


def format_row(row: Row, width: int = 60) -> str:
    """One row of the full table: quantity (wrapped at `width`), max error, tolerance,
    pass/FAIL; the note on the following lines, indented."""
    quantity = textwrap.wrap(row.quantity, width, break_long_words=True) or [""]
    first = f"  {quantity[0]:<{width}}  {_num(row.max_err):>9}  {_num(row.bound):>9}  {row.status}"
    lines = [first.rstrip()] + [f"    {q}" for q in quantity[1:]]
    if row.note:
        lines += _wrap(row.note, 6)
    return "\n".join(lines)


def format_table(rows: list[Row]) -> str:
    """Every row that ran, grouped by module x backend under one header (unavailable
    backends left out: see `format_unavailable`)."""
    shown = [r for r in rows if not r.skipped]
    width = min(max([len(r.quantity) for r in shown] + [len(HEADER[0])]), WIDTH - 32)
    head = f"  {HEADER[0]:<{width}}  {HEADER[1]:>9}  {HEADER[2]:>9}  {HEADER[3]}"
    lines = [head, "-" * len(head)]
    group = None
    for r in shown:
        if (r.module, r.backend) != group:
            group = (r.module, r.backend)
            cell = [x for x in shown if (x.module, x.backend) == group]
            lines.append(_clip(f"{r.module} on {r.backend}: {_counts(cell)}", WIDTH))
        lines.append(format_row(r, width))
    return "\n".join(lines)


def summary(rows: list[Row], seconds: float | None = None) -> str:
    """The verdict line: "OK: 264 passed, 0 failed in 75.6 s" (FAILED if anything failed)."""
    failed = sum(r.failed for r in rows)
    passed = sum(r.status == "pass" for r in rows)
    unavailable = len({r.backend for r in rows if r.skipped})
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    verdict = "FAILED" if failed else "OK"
    extra = f" ({unavailable} backend{'s' * (unavailable != 1)} unavailable)" if unavailable else ""
    return f"{verdict}: {passed} passed, {failed} failed{extra}{took}"


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


class _Progress:
    """Progress as modules run: one plain line per module x backend when it finishes (flushed,
    so it reads well piped into a file or CI log); on a terminal also a transient line
    (module, backend, rows so far) while one runs."""

    def __init__(self, out: Callable[[str], None], module_width: int, tty: bool):
        self.out, self.width, self.tty, self.count, self.current = out, module_width, tty, 0, None

    def _transient(self):
        m, b = self.current
        rows = f"{self.count} row{'s' * (self.count != 1)}"
        sys.stdout.write(f"\r\x1b[K{_clip(m, self.width):<{self.width}}  {b:<16}  running... {rows}")
        sys.stdout.flush()

    def start(self, module, backend):
        self.current, self.count = (module, backend), 0
        if self.tty:
            self._transient()

    def row(self, row):
        self.count += 1
        if self.tty and self.current is not None:
            self._transient()

    def done(self, module, backend, rows, seconds):
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        self.out(format_progress(module, backend, rows, seconds, self.width))
        self.current = None


def _print(line: str) -> None:
    print(line, flush=True)


def main(modules=None, backends=None, json_path=None, out=None, *, full: bool = False,
         quick: bool = False) -> int:
    """Run and report: progress lines, the summary (every row with full=True), the
    unavailable backends, every failure in full, the verdict. Return 0 if nothing failed, else 1.

    out: a function that prints one line (default: print to stdout, flushed; on a
    terminal progress also shows the module running).
    """
    tty = out is None and sys.stdout.isatty()
    out = out or _print
    load_checks()
    names = list(CHECKS) if modules is None else list(modules)
    width = min(max([len(m) for m in names] + [6]), 24)
    progress = _Progress(out, width, tty)
    where = ", ".join(backends) if backends is not None else (
        ", ".join(QUICK_BACKENDS) if quick else "every available backend")  # fmt: skip
    out("\n".join(_wrap(f"chainrule verify{' --quick' if quick else ''}: {len(names)} modules on {where}", 2, first=0)))
    start = time.perf_counter()
    rows = run(names, backends, progress.row, quick=quick, on_start=progress.start, on_done=progress.done)
    seconds = time.perf_counter() - start
    out("")
    out(format_table(rows) if full else format_summary(rows))
    unavailable = format_unavailable(rows)
    if unavailable:
        out(unavailable)
    failures = [r for r in rows if r.failed]
    if failures:
        out("")
        out(f"{len(failures)} failing row{'s' * (len(failures) != 1)}:")
        for r in failures:
            out(format_failure(r))
    out(summary(rows, seconds) + ("" if full or failures else "  (every row: --full)"))
    if json_path:
        write_json(rows, json_path, seconds)
    return 1 if failures else 0
