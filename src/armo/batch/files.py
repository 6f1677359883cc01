"""Reading and writing rows: JSON lines (`.jsonl`, `.json`) or Parquet (`.parquet`, needs pyarrow)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from armo.model_store import atomic


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise ValueError(f"{path}: unknown file type (use .jsonl or .parquet)")


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is in requirements.lock
        raise RuntimeError("Parquet files need pyarrow: pip install pyarrow") from e
    return pq


def read_rows(path: Path) -> list[dict[str, Any]]:
    if _format(path) == "parquet":
        return list(_pyarrow().read_table(path).to_pylist())
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Atomically (a reader never sees half a file), every row with every column: an error row has the score
    columns too, as nulls (and Parquet has one schema)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k) for k in columns} for r in rows]
    if _format(path) == "parquet":
        import pyarrow as pa

        pq = _pyarrow()
        table = pa.Table.from_pylist(list(rows))
        atomic.write_file(path, lambda tmp: pq.write_table(table, tmp))
        return
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic.write_bytes(path, text.encode("utf-8"))
