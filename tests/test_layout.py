"""The tree stays a product: what the layout promises is checked, so it cannot drift back."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "armo"
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _tracked(under: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", under], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_every_module_is_in_the_readme_layout_and_every_listed_path_exists() -> None:
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    listed: set[str] = set()
    for row in rows:
        first = row.split("|")[1]
        paths = re.findall(r"`([^`]+)`", first)
        base = Path(paths[0]).parent
        for i, p in enumerate(paths):
            path = Path(p) if i == 0 or "/" in p else base / p  # `a/b.py`, `c.py`: c.py sits beside b.py
            assert (ROOT / path).exists(), f"README layout lists {path}, which does not exist"
            listed.add(str(path).rstrip("/"))
    for module in sorted(SRC.rglob("*.py")):
        rel = module.relative_to(ROOT)
        covered = str(rel) in listed or any(str(rel).startswith(d + "/") for d in listed if not d.endswith(".py"))
        if module.name == "__init__.py" or rel.parent == Path("src/armo/bundled"):
            continue
        assert covered, f"{rel} is missing from the README layout table"


def test_no_source_file_is_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_the_package_ships_at_most_two_versions() -> None:
    versions = {Path(f).parts[4] for f in _tracked("src/armo/bundled") if Path(f).name == "manifest.json"}
    assert 1 <= len(versions) <= 2, versions


def test_no_research_in_the_product_tree() -> None:
    studies = [f for f in _tracked("src") + _tracked("benchmarks") if re.search(r"(study|round\d|ablation)", f)]
    assert not studies
    history = re.compile(r"\b(round|session|lesson)s?[ -]?\d", re.IGNORECASE)
    cited = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.open(), 1)
        if history.search(line)
    ]
    assert not cited, "comments and docstrings give the reason itself, not the round/session it came from"


# -- the dependency rule ------------------------------------------------------------------------------------------
# What each part of the package may import (every import counts, at module level, inside functions and under
# TYPE_CHECKING). The rule of DESIGN.md §7, `service → model_store ← training`, with the parts around it: the wire
# protocol sits under the client and the service alike; settings sit under the service and batch and over
# model_store only; the client and the integrations never reach the server or torch-bound code.
ALLOWED: dict[str, set[str]] = {
    "armo": set(),  # the package root (its version)
    "armo.protocol": {"armo"},
    "armo.client": {"armo", "armo.protocol"},
    "armo.integrations": {"armo", "armo.protocol", "armo.client"},
    "armo.model_store": {"armo"},
    "armo.settings": {"armo", "armo.model_store"},
    "armo.ray_pool": {"armo"},
    "armo.service": {"armo", "armo.protocol", "armo.model_store", "armo.settings"},
    "armo.batch": {"armo", "armo.model_store", "armo.settings", "armo.ray_pool"},
    "armo.training": {"armo", "armo.model_store", "armo.ray_pool"},
    "armo.cli": {"armo", "armo.service", "armo.batch", "armo.training", "armo.model_store", "armo.settings"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> dict[str, bool]:
    """Project modules `path` imports → whether the import runs (False: only under `if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for n in ast.walk(stmt)
    }
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: dict[str, bool] = {}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != _module_name(path):
                found[name] = found.get(name, False) or id(node) not in typing_only
    return found


def _graph() -> dict[str, dict[str, bool]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _part(module: str) -> str:
    return next(p for p in sorted(ALLOWED, key=len, reverse=True) if module == p or module.startswith(p + "."))


def test_imports_follow_the_dependency_rule() -> None:
    wrong = [
        f"{a} imports {b}"
        for a, targets in _graph().items()
        for b in targets
        if _part(b) != _part(a) and _part(b) not in ALLOWED[_part(a)]
    ]
    assert not wrong, wrong


def test_no_import_cycles() -> None:
    """No two modules need each other at run time (imports under TYPE_CHECKING are annotations, not needs)."""
    graph = {a: {b for b, runs in targets.items() if runs} for a, targets in _graph().items()}
    cycles = []
    for start in graph:  # a depth-first search from every module for a path back to it
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" → ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles
