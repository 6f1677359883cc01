"""The tree stays a product: what the layout promises is checked, so it cannot drift back."""

from __future__ import annotations

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
