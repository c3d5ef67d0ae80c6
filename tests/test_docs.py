"""The documentation is tested like code.

- Every ```python block of README.md and docs/**/*.md runs: the blocks of one page in order,
  in one namespace, in a temporary working directory. A block may be skipped only when the
  HTML comment `<!-- no-test: REASON -->` stands right before it, with a reason (examples that
  need a GPU or the network).
- Every `chainrule ...` command line of a ```bash / ```sh / ```console block is parsed by the
  CLI's own parser (chainrule.cli._parser): the subcommand exists and the arguments parse.
  Inline `chainrule SUBCOMMAND` mentions must name an existing subcommand.
- README: the quick start is exactly `make run` and `make test`; it stays short; every
  relative link points to a file that exists; every row of its model table links to the
  reference page of the model or says "planned"; docs/index.md carries the same table.
- Every module of reference/ has its API page docs/reference/NAME.md in the site's nav.
- The site builds with `mkdocs build --strict` (broken links, anchors or docstring
  cross-references fail it) and loads no script, style or font from another host.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
NO_TEST = re.compile(r"^<!--\s*no-test(?P<colon>:)?(?P<reason>.*?)-->\s*$")
MAX_README_LINES = 150
PLANNED = ["PixelRNN", "WaveNet", "Encoder-decoder transformer", "VQ-VAE", "VQGAN", "ImageGPT",
           "DALL-E", "MADE", "MAF", "IAF", "masked diffusion"]  # fmt: skip


@dataclass
class Block:
    page: Path
    lang: str
    code: str
    line: int  # 1-based line of the first code line
    skip: str | None  # the no-test reason, or None


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the no-test marker before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        start, i = i, i + 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_TEST.match(before)
        out.append(Block(page, lang.lower(), "\n".join(body) + "\n", start + 2,
                         marker.group("reason").strip() if marker else None))  # fmt: skip
    return out


PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=rel)
def test_python_examples_run(page, tmp_path, monkeypatch):
    code = [b for b in blocks(page) if b.lang == "python"]
    if any("transformers" in b.code for b in code if b.skip is None):
        pytest.importorskip("transformers", reason=f"{rel(page)} has examples with HF transformers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny examples run many times faster than with threads fighting for 2 cores
    namespace = {"__name__": "__docs__"}
    try:
        for b in code:
            if b.skip is None:  # padded, so that a traceback names the line of the page
                exec(compile("\n" * (b.line - 1) + b.code, str(page), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)


def test_no_test_markers_have_reasons():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"<!--\s*no-test.*?-->", text, flags=re.S):
            line = text[: m.start()].count("\n") + 1
            marker = NO_TEST.match(m.group(0))
            assert marker and marker.group("colon") and marker.group("reason").strip(), (
                f"{rel(page)}:{line}: write the reason: <!-- no-test: why this example cannot run here -->")
        for b in blocks(page):
            if b.skip is not None:
                assert b.lang == "python", f"{rel(page)}:{b.line}: no-test marks a {b.lang or 'plain'} block"


def _subcommands() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The CLI's parser and its subcommands (name -> subparser)."""
    from chainrule.cli import _parser

    parser = _parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def _chainrule_argv(line: str) -> list[str] | None:
    """The arguments after `chainrule` (or `python -m chainrule`) on a shell line, else None."""
    words = shlex.split(line.removeprefix("$ "), comments=True)
    for k, w in enumerate(words):
        if w == "chainrule" or w.endswith("/chainrule"):
            if k == 0 or words[k - 1] == "-m" or words[k - 1] in {"sudo", "time", "env"}:
                return words[k + 1:]
    return None


def shell_commands():
    out = []
    for page in PAGES:
        for b in blocks(page):
            if b.lang in SHELL_LANGS:
                for n, line in enumerate(b.code.splitlines()):
                    argv = _chainrule_argv(line)
                    if argv is not None:
                        out.append((f"{rel(page)}:{b.line + n}", argv))
    return out


SHELL_COMMANDS = shell_commands()


def test_docs_show_the_commands():
    shown = {argv[0] for _, argv in SHELL_COMMANDS if argv}
    assert {"check", "verify", "train", "sample", "demo", "bench", "export"} <= shown


@pytest.mark.parametrize("where, argv", SHELL_COMMANDS, ids=[w for w, _ in SHELL_COMMANDS])
def test_cli_examples_parse(where, argv):
    parser, commands = _subcommands()
    assert argv and argv[0] in commands, (
        f"{where}: `chainrule {' '.join(argv)}`: no subcommand {argv[:1]}; the CLI has {sorted(commands)}")
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `chainrule {' '.join(argv)}` does not parse (exit {e.code}); see the usage above")


def test_inline_commands_exist():
    _, commands = _subcommands()
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"`(?:\S*/)?chainrule ([a-z][\w-]*)", text):
            line = text[: m.start()].count("\n") + 1
            assert m.group(1) in commands, f"{rel(page)}:{line}: `chainrule {m.group(1)}` is no subcommand"


def test_examples_import_the_installed_names():
    for page in PAGES:
        for b in blocks(page):
            for n, line in enumerate(b.code.splitlines()):
                assert not re.match(r"\s*(from|import)\s+(reference|fast)\b", line), (
                    f"{rel(page)}:{b.line + n}: import chainrule.reference / chainrule.fast, not {line.strip()!r}")


def test_readme_quick_start_is_the_two_commands():
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Quick start\n")
    end = text.index("\n## ", start + 1)
    first, last = text[:start].count("\n") + 1, text[:end].count("\n") + 1
    code = [b.code for b in blocks(README) if first < b.line < last]
    assert code == ["make run\nmake test\n"], f"README.md's quick start must be exactly `make run`, `make test`: {code}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; the long sections belong in docs/"


def _links(page: Path):
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for m in re.finditer(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield text[: m.start()].count("\n") + 1, m.group(1)


def test_readme_links_exist():
    for line, target in _links(README):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"README.md:{line}: link to {target}, which does not exist"


def test_named_repository_files_exist():
    """A file of the repository named on a page (`reference/sampling.py`, `tests/test_ddp.py`) exists."""
    named = re.compile(r"(?<![\w/.-])((?:reference|fast|chainrule|diff_tests|properties|tests|requirements|docs)"
                       r"/[\w/.-]*\.(?:py|txt|md|png|toml|yml))\b")  # fmt: skip
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in named.finditer(text):
            line = text[: m.start()].count("\n") + 1
            found = (ROOT / m.group(1)).exists() or (page.parent / m.group(1)).exists()  # or a link from the page
            assert found, f"{rel(page)}:{line}: {m.group(1)} does not exist"


def _model_table(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    section = text.split("## Models", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| model")]


def test_model_table():
    rows = _model_table(README)
    assert len(rows) >= 20
    for row in rows:
        spec = row.split("|")[2].strip()
        if spec == "planned":
            continue
        targets = re.findall(r"\]\((docs/reference/(\w+)\.md)\)", spec)
        assert targets, f"README model table: {row!r}: link the reference page, or say 'planned'"
        for path, _ in targets:
            assert (ROOT / path).exists(), f"README model table: {path} does not exist"
    planned = [row for row in rows if row.split("|")[2].strip() == "planned"]
    for name in PLANNED:
        assert any(name.lower() in row.lower() for row in planned), f"README model table: no planned row for {name}"
    assert _model_table(DOCS / "index.md") == [row.replace("](docs/", "](") for row in rows], (
        "docs/index.md: its model table must be README's (links relative to docs/)")


def reference_modules() -> list[str]:
    names = {p.stem for p in (ROOT / "reference").glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in (ROOT / "reference").glob("*/__init__.py")}
    return sorted(names)


def test_every_reference_module_has_a_page():
    import yaml

    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    modules = reference_modules()
    for name in modules:
        page = DOCS / "reference" / f"{name}.md"
        assert page.exists(), f"reference/{name}: write docs/reference/{name}.md (::: chainrule.reference.{name})"
        assert f"::: chainrule.reference.{name}\n" in page.read_text(encoding="utf-8"), page
        assert f"reference/{name}.md" in nav, f"mkdocs.yml: put reference/{name}.md in the nav"
        for sub in sorted((ROOT / "reference" / name).glob("[!_]*.py")):  # a package: each module on its page
            directive = f"::: chainrule.reference.{name}.{sub.stem}\n"
            assert directive in page.read_text(encoding="utf-8"), f"docs/reference/{name}.md: add {directive!r}"
    pages = {p.stem for p in (DOCS / "reference").glob("*.md")} - {"index"}
    assert pages <= set(modules), f"docs/reference/: pages of no module: {sorted(pages - set(modules))}"
    yaml.safe_load(nav)  # mkdocs.yml stays plain YAML


def test_site_builds_strict_and_offline(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs dependencies: pip install -r requirements/docs.txt")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, f"mkdocs build --strict failed:\n{run.stdout}\n{run.stderr}"
    for name in reference_modules():
        assert (site / "reference" / f"{name}.html").exists(), name
    assert (site / "javascripts" / "tex-svg-full.js").stat().st_size > 1_000_000  # MathJax, served locally
    remote = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"")
    for html in site.rglob("*.html"):
        found = [m.group(0) for m in remote.finditer(html.read_text(encoding="utf-8"))]
        assert not found, f"{html.relative_to(site)} loads from another host: {found[:3]}"
    math = (site / "models.html").read_text(encoding="utf-8")
    assert 'class="arithmatex"' in math and "tex-svg-full.js" in math
