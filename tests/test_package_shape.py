"""The package's shape: the project's modules import each other without a cycle.

Every .py file under reference/, fast/ and chainrule/ is parsed with `ast` (nothing is
imported) and mapped to its installed name (reference/gpt.py -> chainrule.reference.gpt,
reference/checks/__init__.py -> chainrule.reference.checks: a package's __init__ is a node
of its own). An edge M -> N says that running M's body imports N:

- `import a.b.c` and `from a.b import c` lead to the most specific project module named
  (`from a.b import c` to a.b.c when that is a module, else to a.b, whose attribute c is),
  and to the packages above it, since Python runs their __init__ first -- except the
  packages above M itself, which are always initialized before M runs (so a package's
  __init__ that imports its own submodules makes no cycle with them).
- Relative imports resolve against M's package.

Two graphs:

- the *module-level* graph: imports executed when the module is imported (top level,
  including if/try/with/class bodies). Imports inside functions are left out: they run
  only when the function is called, after every module involved has finished
  initializing, and the project uses them deliberately (torch, scipy, matplotlib and the
  verify/bench registries are imported lazily). This graph must be acyclic: a cycle in it
  is an import that works or fails depending on which module a user imports first.
- the *layering* of reference/: the models the checks judge never import the checks, at
  any level, functions included (they take their argument validators from
  reference/validate.py, the bottom layer); reference/validate.py imports nothing of the
  project but reference/xp.py; and the checks import only NumPy and the standard library
  at module level (torch, scipy, matplotlib and the models lazily, inside the functions
  that need them), so `import chainrule.reference.checks` stays light.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Installed package name -> its folder in the repository (pyproject's package-dir mapping).
PACKAGES = {
    "chainrule.reference": ROOT / "reference",
    "chainrule.fast": ROOT / "fast",
    "chainrule": ROOT / "chainrule",
}

# Module-level edges tolerated although they close a cycle, each with the reason. None today:
# a new cycle is fixed by moving the shared low-level piece down (as the argument validators
# moved from reference/checks to reference/validate.py), not by adding it here.
ALLOWED_CYCLE_EDGES: set[tuple[str, str]] = set()


def module_files() -> dict[str, pathlib.Path]:
    """Installed module name -> file, for every .py file of the project's packages."""
    files = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((package, *parts))] = path
    return files


MODULES = module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    """The project packages above `name` (outermost first), which Python initializes before it."""
    parts = name.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in MODULES]


def _import_nodes(tree: ast.Module, module_level: bool):
    """The Import/ImportFrom nodes of a module; module_level: only those its body runs on import
    (function bodies skipped; class bodies, if/try/with blocks included)."""
    todo = list(reversed(tree.body))  # a stack: source order
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            todo.extend(reversed(list(ast.iter_child_nodes(node))))


def _targets(importer: str, node) -> list[str]:
    """The project modules an Import/ImportFrom node in `importer` names (most specific first)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = importer if _is_package(importer) else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module
        names = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:  # `import chainrule.reference.gpt.x`: down to a module
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph(module_level: bool = True) -> dict[str, set[str]]:
    """Module name -> the project modules it imports (see the module docstring)."""
    graph = {}
    for name, path in MODULES.items():
        own = set(_ancestors(name))
        edges = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path)), module_level):
            for target in _targets(name, node):
                edges |= {t for t in (*_ancestors(target), target) if t not in own and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of the graph, or None (iterative depth-first search)."""
    state = {}  # absent: unseen; 1: on the current path; 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _without_allowed(graph):
    return {m: {t for t in ts if (m, t) not in ALLOWED_CYCLE_EDGES} for m, ts in graph.items()}


def _files(names):
    return " -> ".join(str(MODULES[n].relative_to(ROOT)) for n in names)


# ----------------------------------------------------------------------------- the graph itself


def test_every_project_module_is_a_node():
    assert "chainrule.reference.gpt" in MODULES and "chainrule.fast.gpt" in MODULES and "chainrule.cli" in MODULES
    assert MODULES["chainrule.reference.checks"] == ROOT / "reference" / "checks" / "__init__.py"
    assert MODULES["chainrule.reference.validate"] == ROOT / "reference" / "validate.py"


def test_every_package_folder_is_installed():
    """pyproject lists its packages one by one (no discovery): a new package folder such as
    reference/checks/ must be listed too, or the wheel silently ships without it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name in MODULES if _is_package(name)}
    assert packages <= listed, f"packages missing from [tool.setuptools] packages in pyproject.toml: {sorted(packages - listed)}"


def test_import_resolution():
    def targets(importer, source):
        return [t for node in _import_nodes(ast.parse(source), True) for t in _targets(importer, node)]

    assert targets("chainrule.reference.gpt", "from chainrule.reference import nn, validate") == [
        "chainrule.reference.nn", "chainrule.reference.validate"]  # fmt: skip
    assert targets("chainrule.reference.gpt", "from chainrule.reference.checks import assert_close") == [
        "chainrule.reference.checks"]  # fmt: skip
    assert targets("chainrule.reference.checks", "from . import tolerances\nfrom .. import validate") == [
        "chainrule.reference.checks.tolerances", "chainrule.reference.validate"]  # fmt: skip
    assert targets("chainrule.reference.checks.tokens", "from .tolerances import compare") == [
        "chainrule.reference.checks.tolerances"]  # fmt: skip
    assert targets("chainrule.fast.gpt", "import chainrule.reference.gpt as rg\nimport numpy") == ["chainrule.reference.gpt"]
    assert targets("chainrule.cli", "def main():\n    from chainrule import verify") == []  # lazy: not module level


def test_find_cycle_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # the cycle this layout broke: checks -> speculative -> gpt -> checks
    graph = {"checks": {"speculative"}, "speculative": {"gpt"}, "gpt": {"checks", "nn"}, "nn": set()}
    assert find_cycle(graph) == ["checks", "speculative", "gpt", "checks"]


def test_module_level_imports_are_acyclic():
    graph = import_graph(module_level=True)
    assert graph["chainrule.reference.gpt"], "the graph has no edges: the import resolution is broken"
    cycle = find_cycle(_without_allowed(graph))
    assert cycle is None, f"import cycle among the project's modules at module level:\n  {' -> '.join(cycle)}\n  ({_files(cycle)})"


# ----------------------------------------------------------------------------- the layering of reference/

CHECKS = "chainrule.reference.checks"
VALIDATE = "chainrule.reference.validate"


def _in_checks(name: str) -> bool:
    return name == CHECKS or name.startswith(CHECKS + ".")


def test_validate_imports_no_model_only_xp():
    full = import_graph(module_level=False)
    assert full[VALIDATE] <= {"chainrule.reference.xp"}, full[VALIDATE]


def test_models_never_import_the_checks():
    """The checks sit above the models they check: no module of reference/ or fast/ outside
    reference/checks/ imports it, not even inside a function (where it would close the cycle
    checks -> speculative -> gpt -> checks as soon as both run)."""
    full = import_graph(module_level=False)
    below = {m for m in MODULES if m.startswith(("chainrule.reference.", "chainrule.fast.")) and not _in_checks(m)}
    offenders = {m: sorted(filter(_in_checks, full[m])) for m in sorted(below) if any(map(_in_checks, full[m]))}
    assert not offenders, f"model modules importing reference.checks (use reference/validate.py): {offenders}"


def test_reference_including_lazy_imports_is_acyclic():
    """Within reference/ even the imports inside functions form no cycle: the spec reads bottom up."""
    full = import_graph(module_level=False)
    ref = {m: {t for t in ts if t.startswith("chainrule.reference")} for m, ts in full.items()
           if m.startswith("chainrule.reference")}  # fmt: skip
    cycle = find_cycle(ref)
    assert cycle is None, f"import cycle within reference/ (lazy imports included): {' -> '.join(cycle)}"


def test_checks_import_only_numpy_and_the_standard_library_at_module_level():
    """Every module of reference/checks/, its __init__ included: at module level, NumPy, the
    standard library, the package's own parts, reference/validate.py and reference/xp.py."""
    for name in sorted(filter(_in_checks, MODULES)):
        for node in _import_nodes(ast.parse(MODULES[name].read_text()), module_level=True):
            if isinstance(node, ast.ImportFrom):
                modules = [] if node.level else [node.module]  # relative imports are the project's
            else:
                modules = [alias.name for alias in node.names]
            outside = {m.split(".")[0] for m in modules} - {"chainrule", "numpy", *sys.stdlib_module_names}
            assert not outside, f"{name} imports {sorted(outside)} at module level"
            project = _targets(name, node)
            assert all(_in_checks(t) or t in (VALIDATE, "chainrule.reference.xp") for t in project), (
                f"{name} imports {project} at module level")  # fmt: skip
