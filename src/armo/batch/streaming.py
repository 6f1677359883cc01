"""`armo batch score --ray` on Ray's own datasources: for inputs one machine should not read whole.

When the input is a directory, a glob or a URI (`s3://…`, `gs://…`), or the output is a directory or a URI, Ray Data
reads the rows (`read_json` / `read_parquet`), an actor pool scores them in batches of `--shard-rows` (one model per
actor, `score_rows`: the local code), and Ray writes them (`write_parquet` / `write_json`: one file per block, in
input order). Nothing passes through the driver, so the same command runs on a laptop and on a cluster
(`--ray-address`). Unlike the single-file path (armo.batch.on_ray) it does not resume after a kill: Ray retries
failed tasks itself, and a stopped run is started again.

The output columns have fixed Arrow types (`result_types`), so that a block whose rows all failed writes the same
schema as any other and the output directory reads back as one table.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from armo.batch import rows
from armo.batch.on_ray import worker_settings
from armo.batch.runner import Options, load_model, score_rows
from armo.ray_pool import Pool, actor_map, ray_session
from armo.settings import Settings

FORMATS = ("jsonl", "parquet")


def is_dataset_path(path: str) -> bool:
    """A directory, a glob or a URI: read or written by Ray's datasources rather than by this process."""
    return "://" in path or any(c in path for c in "*?[") or Path(path).is_dir() or path.endswith("/")


def input_format(src: str) -> str:
    """From the name: a `.parquet`/`.jsonl`/`.json` file or glob, else the files of a local directory."""
    names = [src]
    if Path(src).is_dir():
        names = sorted(p.name for p in Path(src).iterdir() if p.is_file() and not p.name.startswith("."))
    for name in names:
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith((".jsonl", ".json")):
            return "jsonl"
    raise ValueError(f"{src}: cannot tell the format from the file names (use --input-format jsonl|parquet)")


def result_types(layout: rows.Layout, explain: bool, objectives: Sequence[str]) -> dict[str, Any]:
    """The Arrow type of every column `rows.scored` adds, for this layout and model."""
    import pyarrow as pa

    values = pa.struct([(name, pa.float64()) for name in objectives])
    explained = pa.struct([("objectives", values), ("weights", values), ("truncated", pa.bool_())])
    types: dict[str, Any] = {"error": pa.string()}
    if layout == "items":
        types |= {"score": pa.float64(), "truncated": pa.bool_()}
        if explain:
            types |= {"objectives": values, "weights": values}
    elif layout == "pairs":
        types |= {name: pa.float64() for name in ("score_chosen", "score_rejected", "margin", "p_chosen")}
        types["truncated"] = pa.bool_()
        if explain:
            types |= {"explain_chosen": explained, "explain_rejected": explained}
    else:
        types |= {
            "scores": pa.list_(pa.float64()),
            "ranking": pa.list_(pa.int64()),
            "best": pa.int64(),
            "truncated": pa.list_(pa.bool_()),
        }
        if explain:
            types["explain"] = pa.list_(explained)
    return types


class BatchScorer:
    """A Ray Data actor: one model for its life; each call scores one Arrow batch of rows."""

    def __init__(self, settings: dict[str, Any], layout: rows.Layout, explain: bool, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.rm = load_model(Settings(**settings))
        self.layout = layout
        self.explain = explain
        self.types = result_types(layout, explain, self.rm.objectives)

    def __call__(self, batch: Any) -> Any:  # pyarrow.Table -> pyarrow.Table (input columns, then the results)
        import pyarrow as pa

        scored, _ = score_rows(self.rm, batch.to_pylist(), self.layout, self.explain)
        out = batch.drop_columns([c for c in self.types if c in batch.column_names])
        for name, kind in self.types.items():
            out = out.append_column(name, pa.array([r.get(name) for r in scored], type=kind))
        return out


def score_dataset_ray(
    settings: Settings,
    src: str,
    dst: str,
    options: Options,
    pool: Pool,
    *,
    in_format: str | None = None,
    out_format: str = "parquet",
) -> tuple[int, float]:
    """Score `src` into the directory `dst` on Ray's datasources. -> (rows written, seconds)."""
    if options.shard != (0, 1):
        raise ValueError("--shard splits a file between processes; on Ray's datasources Ray spreads the work")
    started = time.perf_counter()
    fmt = in_format or input_format(src)
    shipped = worker_settings(settings)
    with ray_session(pool) as ray:
        # No hive partitioning: the rows are the files' rows (no columns from directory names), and its path
        # handling imports fsspec inside read tasks, which races in Ray's threaded workers.
        read = ray.data.read_parquet if fmt == "parquet" else ray.data.read_json
        ds = read(src, partitioning=None)
        if options.limit is not None:
            ds = ds.limit(options.limit)
        layout = options.layout or rows.detect(ds.take(1)[0])
        constructor = {"settings": shipped, "layout": layout, "explain": options.explain}
        scored = actor_map(ds, BatchScorer, pool, options.shard_rows, "pyarrow", **constructor)
        # A run started again replaces what a stopped one wrote (appending would duplicate rows).
        if out_format == "parquet":
            scored.write_parquet(dst, mode=ray.data.SaveMode.OVERWRITE)
        else:
            scored.write_json(dst, mode=ray.data.SaveMode.OVERWRITE)
        count = int(
            (ray.data.read_parquet if out_format == "parquet" else ray.data.read_json)(dst, partitioning=None).count()
        )
    return count, time.perf_counter() - started
