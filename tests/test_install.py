"""The package as a user gets it: build the wheel, install it into a fresh virtual
environment with its declared dependencies, and run the CLI from it with the repository
nowhere on the path.

This is the test that `pip install .` gives a working `chainrule` (every runtime
dependency declared in pyproject, the reference/ and fast/ folders installed as
`chainrule.reference` and `chainrule.fast`, no generic top-level names). Versions are held
to the pinned ones of requirements/run.txt (a constraints file) so the install takes the
same wheels `make run` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = (".git", ".venv", "build", "dist", "site", "*.egg-info", "__pycache__", "runs", "demo", "bench-results")


def _base_python() -> str:
    """The interpreter the project's virtual environment was made from (a venv's python
    cannot make a clean venv of its own packages)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _clean_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = os.environ.get("HOME", str(tmp))
    env["MPLBACKEND"] = "Agg"
    return env


def _run(cmd, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv with the built wheel installed, a scratch folder outside the repository)."""
    tmp = tmp_path_factory.mktemp("install")
    env = _clean_env(tmp)
    dist, source = tmp / "dist", tmp / "source"
    # a copy of the source: setuptools leaves build/ beside pyproject, and a stale build/lib
    # (a module since moved) would end up in the wheel
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*SCRATCH))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, source], cwd=tmp, env=env)
    wheels = list(dist.glob("chainrule-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp / "venv"
    _run([_base_python(), "-m", "venv", venv], cwd=tmp, env=env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, wheels[0], "-c", ROOT / "requirements" / "run.txt"], cwd=tmp, env=env)
    work = tmp / "work"
    work.mkdir()
    return wheels[0], venv / "bin", work, env


def test_wheel_holds_only_the_chainrule_namespace(installed):
    wheel, _, _, _ = installed
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
        names = set(z.namelist())
    assert tops == {"chainrule", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    assert "chainrule/reference/gpt.py" in names and "chainrule/fast/gpt.py" in names
    # exactly the package's source files: nothing stale, nothing left out
    folders = {"chainrule": ROOT / "chainrule", "chainrule/reference": ROOT / "reference", "chainrule/fast": ROOT / "fast"}
    source = {f"{prefix}/{path.relative_to(folder).as_posix()}" for prefix, folder in folders.items()
              for path in folder.rglob("*.py") if "__pycache__" not in path.parts}  # fmt: skip
    assert {n for n in names if n.endswith(".py")} == source


def test_installed_imports_resolve_inside_the_venv(installed):
    _, bin_, work, env = installed
    code = (
        "import importlib.util, chainrule.reference.gpt as g, chainrule.fast.gpt as f\n"
        "print(g.__file__); print(f.__file__)\n"
        "print(importlib.util.find_spec('reference'), importlib.util.find_spec('fast'))\n"
    )
    out = _run([bin_ / "python", "-c", code], cwd=work, env=env).stdout.splitlines()
    venv = str(bin_.parent)
    assert out[0].startswith(venv) and out[1].startswith(venv), out
    assert out[2] == "None None", out  # no generic top-level names installed
    assert not any(str(ROOT) in line for line in out)


def test_installed_cli_version_verify_quick_and_train(installed):
    _, bin_, work, env = installed
    version = _run([bin_ / "chainrule", "--version"], cwd=work, env=env).stdout
    assert "chainrule" in version and "0.1.0" in version
    verify = _run([bin_ / "chainrule", "verify", "--quick"], cwd=work, env=env)
    assert "fail" not in verify.stdout.lower().replace("0 failed", ""), verify.stdout
    run = work / "run"
    _run([bin_ / "chainrule", "train", "gpt", "--steps", "2", "--out", run, "--quiet"], cwd=work, env=env)
    assert (run / "meta.json").exists() or any(run.iterdir())
    sample = _run([bin_ / "chainrule", "sample", run, "--n", "2"], cwd=work, env=env)
    assert sample.stdout.strip()
