"""`chainrule verify`'s text report and the shape of the verify/bench packages.

The report: one progress line per module x backend as it finishes, a module x backend
summary (every row with --full), the unavailable backends in one entry, every failure in
full, a verdict; every line within 100 columns; --quick a representative subset covering
every module; exit status 1 on any failure. Also `chainrule --version`, the discovery of
check and bench modules, and the test suite's own collection of backends.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import chainrule
from chainrule import bench, cli, verify
from chainrule.fast import backend as fb
from chainrule.verify import Result
from tests.test_cli import unavailable_entries

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 100
PROGRESS = re.compile(r"^(\S+)\s+(\S+)\s+(\d+ passed(, \d+ FAILED)?|- no rows)\s+\d+\.\d s$")


def too_wide(out: str) -> list[str]:
    return [line for line in out.splitlines() if len(line) > WIDTH]


def run_cli(*args) -> tuple[int, str]:
    """cli.main(args) in this process -> (exit status, stdout)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = cli.main(list(args))
    return status, buffer.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """`chainrule verify --quick` (with --json) and `--quick --full`, each run once, in process."""
    path = tmp_path_factory.mktemp("verify") / "quick.json"
    status, out = run_cli("verify", "--quick", "--json", str(path))
    full_status, full = run_cli("verify", "--quick", "--full")
    return {"status": status, "out": out, "doc": json.loads(path.read_text()), "full_status": full_status,
            "full": full}  # fmt: skip


LONG_NOTE = "planted failure: worst at index (2, 7, 41): reference 0.123456789, fast 0.987654321; "


def planted(backend, quick=False):
    """A module that fails: a long quantity, a long worst-offender note, then a crash."""
    yield Result("always fine", 0.0, 1.0, True)
    yield Result("deliberately wrong quantity " + "with a very long name " * 4, 2.0, 1.0, False, LONG_NOTE * 3)
    raise RuntimeError("kernel exploded " * 9)


# ----------------------------------------------------------------------------- the report


def test_quick_report_exits_zero_and_fits_100_columns(quick):
    assert quick["status"] == 0 and quick["full_status"] == 0, quick["out"]
    assert too_wide(quick["out"]) == [] and too_wide(quick["full"]) == []


def test_quick_report_progress_then_summary(quick):
    verify.load_checks()
    lines = quick["out"].splitlines()
    assert lines[0].startswith("chainrule verify --quick: ") and "torch-cpu-f64" in lines[0]
    progress = [PROGRESS.match(line) for line in lines[1:]]
    ran = [(m[1], m[2]) for m in progress if m]
    available = [b for b in verify.QUICK_BACKENDS if fb.available(b)[0]]
    assert ran == [(module, b) for module in verify.CHECKS for b in available]  # one line each, in order
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["module", *available]
    for module in verify.CHECKS:  # one summary row per module, a count per backend
        row = next(line.split() for line in table if line.split()[:1] == [module])
        assert re.fullmatch(r"(\d+ passed|-)( (\d+ passed|-))*", " ".join(row[1:])), row
    total = next(line for line in table if line.startswith("total"))
    assert "passed" in total and "FAIL" not in quick["out"]
    assert re.fullmatch(r"OK: \d+ passed, 0 failed.* in \d+\.\d s.*", lines[-1])


def test_quick_rows_cover_every_module_on_the_cpu_backends(quick):
    verify.load_checks()
    rows = quick["doc"]["rows"]
    assert quick["doc"]["passed"] is True and rows
    assert {r["backend"] for r in rows} <= set(verify.QUICK_BACKENDS)
    for module in verify.CHECKS:
        assert any(r["module"] == module and r["status"] == "pass" for r in rows), module


def test_every_check_declares_its_quick_rows():
    verify.load_checks()
    assert [m for m, fn in verify.CHECKS.items() if not verify.takes_quick(fn)] == []


@pytest.mark.parametrize("module", ["gpt", "sampling"])
def test_quick_rows_are_a_strict_subset_of_the_full_rows(module):
    def quantities(quick):
        rows = verify.run([module], ["torch-cpu-f64"], quick=quick)
        assert rows and not any(r.failed for r in rows), rows
        return [r.quantity for r in rows]

    fast, full = quantities(True), quantities(False)
    assert set(fast) < set(full) and fast == full[: len(fast)]  # the module's first rows


def test_full_lists_every_row_under_its_module_and_backend(quick):
    full = quick["full"].splitlines()
    for r in quick["doc"]["rows"]:
        assert f"{r['module']} on {r['backend']}: " in quick["full"]
        assert any(line.startswith("  " + r["quantity"][:40]) for line in full), r["quantity"]


def test_a_failure_is_printed_in_full_whatever_the_flags(monkeypatch):
    monkeypatch.setitem(verify.CHECKS, "planted", planted)
    for flags in ((), ("--full",), ("--quick",)):
        status, out = run_cli("verify", "--module", "planted", "--backend", "torch-cpu-f64", *flags)
        assert status == 1, out
        assert too_wide(out) == [], flags
        lines = out.splitlines()
        assert PROGRESS.match(lines[1])[3] == "1 passed, 2 FAILED"
        failures = "\n".join(lines[next(i for i, x in enumerate(lines) if x == "2 failing rows:") :])
        flat = " ".join(x.strip() for x in failures.splitlines())
        assert "FAIL  planted on torch-cpu-f64: deliberately wrong quantity " + "with a very long name " * 3 in flat
        assert "max error 2 > tolerance 1" in flat
        assert (LONG_NOTE * 3).strip() in flat
        assert "RuntimeError: " + ("kernel exploded " * 9).strip() in flat
        assert all(x.startswith(("FAIL  ", "      ")) for x in failures.splitlines()[1:-1])  # continuation indented
        assert lines[-1].startswith("FAILED: 1 passed, 2 failed")


def test_passing_run_exits_zero_and_a_failing_one_one(monkeypatch):
    monkeypatch.setitem(verify.CHECKS, "passing", lambda backend: iter([Result("fine", 0.0, 1.0, True)]))
    assert run_cli("verify", "--module", "passing", "--backend", "torch-cpu-f64")[0] == 0
    monkeypatch.setitem(verify.CHECKS, "planted", planted)
    assert run_cli("verify", "--module", "passing", "--module", "planted", "--backend", "torch-cpu-f64")[0] == 1


def test_unavailable_backends_are_named_once_with_their_reasons(monkeypatch, tmp_path):
    reasons = {"torch-cpu-f32": "pretend: switched off for this test", "torch-cuda-f32": "no CUDA device here",
               "torch-cuda-bf16": "no CUDA device here", "cupy-f64": "CuPy not installed"}  # fmt: skip
    monkeypatch.setattr(fb, "available", lambda b: (False, reasons[fb.get(b).name]) if fb.get(b).name in reasons
                        else (True, ""))  # fmt: skip
    monkeypatch.setitem(verify.CHECKS, "passing", lambda backend: iter([Result("fine", 0.0, 1.0, True)]))
    monkeypatch.setitem(verify.CHECKS, "passing-too", lambda backend: iter([Result("fine", 0.0, 1.0, True)]))
    path = tmp_path / "rows.json"
    for flags in ((), ("--full",)):
        status, out = run_cli("verify", "--module", "passing", "--module", "passing-too", "--json", str(path), *flags)
        assert status == 0 and too_wide(out) == []
        (entry,) = unavailable_entries(out)
        assert entry.startswith("unavailable: ")
        for name, reason in reasons.items():
            assert entry.count(name) == 1 and reason in entry, (name, entry)
        assert entry.count("no CUDA device here") == 1  # grouped by reason
        assert "skipped" not in out  # no row, no progress line, no column for an unavailable backend
        assert [x for x in out.splitlines() if "torch-cpu-f32" in x and not x.startswith(("unavailable:", "  "))] == []
        assert out.splitlines()[-1].startswith("OK: 2 passed, 0 failed (4 backends unavailable)")
    rows = json.loads(path.read_text())["rows"]  # the JSON keeps one skipped row per module x backend
    skipped = [r for r in rows if r["status"].startswith("skipped (")]
    assert len(skipped) == 2 * len(reasons) and {r["status"] for r in skipped} == {
        f"skipped ({reason})" for reason in reasons.values()}  # fmt: skip


# ----------------------------------------------------------------------------- version, packages


def test_version_matches_pyproject(capsys):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chainrule.__version__ == version
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip() == f"chainrule {version}"


def test_discovery_imports_every_module_of_the_verify_and_bench_packages():
    verify.load_checks()
    bench.load_topics()
    for package in (verify, bench):
        names = {f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)}
        assert names and all(n in sys.modules for n in names), names - set(sys.modules)
    # every module of chainrule/verify/ registers checks, and only they do
    assert {fn.__module__ for fn in verify.CHECKS.values()} == {
        f"chainrule.verify.{m.name}" for m in pkgutil.iter_modules(verify.__path__)}  # fmt: skip
    assert {fn.__module__ for fn, _, _ in bench.TOPICS.values()} <= {
        f"chainrule.bench.{m.name}" for m in pkgutil.iter_modules(bench.__path__)}  # fmt: skip
    for old in ("chainrule.verify_gpt", "chainrule.bench_gpt", "chainrule.verify_ngram"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


# ----------------------------------------------------------------------------- the suite's backends


def test_the_suite_collects_only_available_backends_and_names_the_others():
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "diff_tests/test_nplm.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    assert ids
    for b in fb.ALL_BACKENDS:
        ok, reason = fb.available(b)
        assert any(f"[{b.name}" in i or f"-{b.name}" in i for i in ids) == ok, b.name
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("backends: ")]
    for b in fb.ALL_BACKENDS:
        ok, reason = fb.available(b)
        assert b.name in line and (ok or reason in line.split("not collected: ")[1])
