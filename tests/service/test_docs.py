"""docs/SERVICE.md stays complete: every setting, every metric and every error type is documented."""

from __future__ import annotations

import re
from pathlib import Path

from armo.service.errors import INTERNAL, TABLE, VALIDATION
from armo.service.metrics import ServiceMetrics
from armo.settings import Settings

DOC = (Path(__file__).resolve().parents[2] / "docs" / "SERVICE.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    missing = [f"ARMO_{name.upper()}" for name in Settings.model_fields if f"`ARMO_{name.upper()}`" not in DOC]
    assert not missing


def test_every_metric_is_documented() -> None:
    names = []
    for family in ServiceMetrics().registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.append(family.name + suffix)
    missing = [n for n in names if f"`{n}`" not in DOC]
    assert not missing and len(names) >= 20


def test_every_error_type_is_documented() -> None:
    kinds = [kind for _, kind in TABLE] + [INTERNAL, VALIDATION]
    missing = [k.type for k in kinds if f"| {k.status} | `{k.type}` |" not in DOC]
    assert not missing


def test_every_variable_the_docs_name_exists() -> None:
    """An `ARMO_*` name in README.md or docs/*.md is read somewhere (a setting, a training default, an integration's
    variable, a test switch): a renamed or removed variable cannot linger in the docs."""
    root = Path(__file__).resolve().parents[2]
    docs = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {v for doc in docs for v in re.findall(r"\bARMO_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text(encoding="utf-8"))}
    code = "\n".join(
        p.read_text(encoding="utf-8")
        for folder in ("src", "tests", "scripts", "deploy")
        for p in (root / folder).rglob("*")
        if p.is_file() and p.suffix in {".py", ".sh", ".yaml", ".yml"} and p.name != Path(__file__).name
    )
    settings = {f"ARMO_{name.upper()}" for name in Settings.model_fields}
    unread = sorted(v for v in named if v not in settings and v not in code)
    assert not unread, unread
