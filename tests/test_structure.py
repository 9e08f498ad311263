"""The code's shape: no import cycles, long files say why, examples use only the library.

These guard what issue-driven refactors established: one module per job that imports the jobs
below it, the public library (not the CLI) as what examples build on.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "diagnostics": "embscope.diagnostics",
    "cli": "embscope.cli",
    "losses": "embscope.losses",
    "embscope": "embscope",
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts]
            parts = [p for p in parts if p != "__init__"]
            mods[".".join([name, *parts])] = path
    return mods


def _imports(module: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Package modules that ``module`` imports anywhere (lazily too), except for type checking."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & set(mods)
            found |= subs or ({target} & set(mods))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & set(mods)
    found.discard(module)
    return found


def test_no_import_cycles_between_modules():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    # a package's __init__ re-exports its modules; a module importing its own package's
    # __init__ is the cycle that counts, so __init__ stays in the graph
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n) :] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_long_files_state_why():
    long = []
    for path in _modules().values():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            if "400 lines" not in doc:
                long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long, (
        "split these by job, or say in the module docstring why they exceed 400 lines: "
        + ", ".join(long)
    )


def test_examples_import_only_the_library():
    offenders = []
    for path in sorted((ROOT / "examples").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("embscope.cli")]
    assert not offenders, offenders
