"""The `chainrule` command: smoke tests through a real subprocess, and the
verify exit status on a deliberately failing check (in process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chainrule import cli, verify
from chainrule.verify import Result

ROOT = Path(__file__).resolve().parents[1]


def unavailable_entries(out: str) -> list[str]:
    """The report's "unavailable: ..." entries, each joined with its wrapped (indented) lines."""
    entries, lines = [], out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("unavailable:"):
            j = i + 1
            while j < len(lines) and lines[j].startswith("  "):
                j += 1
            entries.append(" ".join(x.strip() for x in lines[i:j]))
    return entries


def chainrule(*args, timeout=120):
    """Run `python -m chainrule ARGS` from the repository root -> CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "chainrule", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_verify_gpt_passes_and_prints_the_table(tmp_path):
    out = tmp_path / "verify.json"
    r = chainrule("verify", "--module", "gpt", "--json", str(out), "--full")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("quantity")).split()
    assert header == ["quantity", "max", "error", "tolerance", "pass"]
    groups = [line for line in lines if line.startswith("gpt on ")]  # one title per backend that ran
    assert {g.split()[2].rstrip(":") for g in groups} >= {"torch-cpu-f64", "torch-cpu-f32"}
    listing = "\n".join(lines[lines.index(groups[0]):])
    for quantity in ("logits", "log_prob", "greedy tokens", "causality"):
        assert f"\n  {quantity}" in listing, quantity
    doc = json.loads(out.read_text())
    assert doc["passed"] is True
    checked = [row for row in doc["rows"] if row["status"] == "pass"]
    assert len(checked) >= 15 and all(row["module"] == "gpt" for row in doc["rows"])
    skipped = [row for row in doc["rows"] if row["status"].startswith("skipped")]
    assert all("(" in row["status"] for row in skipped)  # every skip says why


def test_verify_unknown_module_is_a_clear_error():
    r = chainrule("verify", "--module", "no-such-model", timeout=60)
    assert r.returncode != 0
    assert "unknown module 'no-such-model'" in r.stderr and "gpt" in r.stderr


def test_bench_unknown_topic_is_a_clear_error():
    r = chainrule("bench", "no-such-topic", timeout=60)
    assert r.returncode != 0
    assert "unknown topic 'no-such-topic'" in r.stderr and "gpt" in r.stderr


def test_bench_gpt_quick_writes_json(tmp_path):
    out = tmp_path / "gpt.json"
    r = chainrule("bench", "gpt", "--quick", "--repeats", "1", "--warmup", "0", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "roofline" in r.stdout
    doc = json.loads(out.read_text())
    assert doc["topic"] == "gpt" and doc["quick"] is True
    names = {t["name"] for t in doc["timings"]}
    assert "fast.gpt.generate" in names
    for t in doc["timings"]:
        assert len(t["seconds"]) == 1 and t["median_s"] > 0
    results = doc["notes"]["results"]
    assert [r["batch"] for r in results] == [1, 3, "3 padded"]
    assert all(r["roofline_tokens_per_s"] > 0 for r in results)


# ----------------------------------------------------------------------------- exit status, in process


def test_verify_exits_nonzero_when_a_check_fails(monkeypatch, capsys):
    def failing(backend):
        yield Result("always fine", 0.0, 1.0, True)
        yield Result("deliberately wrong", 2.0, 1.0, False, "planted failure")

    monkeypatch.setitem(verify.CHECKS, "planted", failing)
    status = cli.main(["verify", "--module", "planted", "--backend", "torch-cpu-f64"])
    out = capsys.readouterr().out
    assert status == 1
    assert "deliberately wrong" in out and "FAIL" in out and "planted failure" in out
    assert "FAILED: 1 passed, 1 failed" in out


def test_verify_reports_a_crashing_check_as_a_failure(monkeypatch, capsys):
    def crashing(backend):
        yield Result("fine", 0.0, 1.0, True)
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(verify.CHECKS, "crashing", crashing)
    assert cli.main(["verify", "--module", "crashing", "--backend", "torch-cpu-f64"]) == 1
    out = capsys.readouterr().out
    assert "RuntimeError: kernel exploded" in out


def test_verify_passing_checks_exit_zero_and_skips_are_not_failures(monkeypatch, capsys):
    from chainrule.fast import backend as fb

    monkeypatch.setitem(verify.CHECKS, "passing", lambda backend: iter([Result("fine", 0.0, 1.0, True)]))
    assert cli.main(["verify", "--module", "passing"]) == 0
    out = capsys.readouterr().out
    entries = unavailable_entries(out)
    for b in fb.ALL_BACKENDS:
        ok, reason = fb.available(b)
        assert b.name in out
        if not ok:  # named once, with its reason, in the one unavailable entry
            assert len(entries) == 1 and f"{b.name}" in entries[0] and reason in entries[0]
    assert "skipped" not in out and "OK: " in out


def test_verify_named_unavailable_backend_is_an_error(capsys):
    from chainrule.fast import backend as fb

    missing = [b.name for b in fb.ALL_BACKENDS if not fb.available(b)[0]]
    if not missing:
        pytest.skip("every backend is available here")
    assert cli.main(["verify", "--module", "gpt", "--backend", missing[0]]) == 2
    assert "not available here" in capsys.readouterr().err


def test_unknown_backend_is_a_clear_error(capsys):
    assert cli.main(["verify", "--backend", "abacus-f128"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend 'abacus-f128'" in err and "torch-cpu-f64" in err


# ----------------------------------------------------------------------------- sampling


def test_verify_sampling_passes_with_its_rows(tmp_path):
    out = tmp_path / "verify.json"
    r = chainrule("verify", "--module", "sampling", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and all(row["module"] == "sampling" for row in doc["rows"])
    for backend in ("torch-cpu-f64", "torch-cpu-f32"):
        quantities = [row["quantity"] for row in doc["rows"] if row["backend"] == backend and row["status"] == "pass"]
        for name in ("top_k", "top_p", "typical", "min_p", "epsilon", "eta"):
            assert any(q.startswith(f"kept set {name}(") for q in quantities), (backend, name)
        for q in ("temperature(", "repetition_penalty(", "sampled tokens after apply", "sampler goodness of fit"):
            assert any(x.startswith(q) for x in quantities), (backend, q)
    kept = [row for row in doc["rows"] if row["quantity"].startswith("kept set")]
    assert all(row["bound"] == 0 for row in kept)


def test_bench_sampling_quick_writes_json(tmp_path):
    out = tmp_path / "sampling.json"
    r = chainrule("bench", "sampling", "--quick", "--repeats", "1", "--warmup", "0", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    assert doc["topic"] == "sampling" and doc["quick"] is True and doc["notes"]["shape"] == [4, 1009]
    results = {res["processor"]: res for res in doc["notes"]["results"]}
    assert {"top_k", "top_p", "typical", "min_p", "temperature"} <= set(results)
    for name in ("top_k", "top_p", "typical", "min_p"):
        assert results[name]["kept_sets_identical_to_reference"] is True, name  # what the diff tests enforce
        assert results[name]["fast_s"] > 0 and results[name]["reference_s"] > 0
    names = {t["name"] for t in doc["timings"]}
    assert "fast.sampling.top_p" in names and "reference.sampling.top_p" in names


def test_picture_blind_spot(tmp_path, capsys):
    path = tmp_path / "blind.png"
    assert cli.main(["picture", "blind-spot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["picture", "blind-spot", str(tmp_path / "missing" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
