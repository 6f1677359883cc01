"""`armo batch score --ray`: the same shards, scored by a pool of Ray Data actors (one model per actor).

The driver plans the shards exactly as the local run does (same selection, same hidden folder of finished shards,
so a killed run resumes either way and the output is the same file), hands Ray the shards still to do, and writes
each one as it comes back, in order. An actor loads the model once (`load_model`, as the service does) and scores a
whole shard per call with `score_rows`, the local code; on a cluster, `--ray-address` and `--gpus-per-actor` spread
the actors over machines and GPUs (`armo.ray_pool`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from armo.batch.files import write_rows
from armo.batch.runner import Options, Summary, finish, load_model, plan, score_rows
from armo.model_store.store import ModelStore
from armo.ray_pool import Pool, map_shards
from armo.settings import Settings


def worker_settings(settings: Settings) -> dict[str, Any]:
    """What an actor needs to load the model the driver would: every setting but the keys (never sent to workers)."""
    return settings.model_dump(mode="json", exclude={"api_keys", "admin_key"})


class ShardScorer:
    """A Ray Data actor: one model for its life; each call scores the shards of one batch."""

    def __init__(self, settings: dict[str, Any], layout: str, explain: bool, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.rm = load_model(Settings(**settings))
        self.layout = layout
        self.explain = explain

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"shard": [], "rows": [], "tokens": []}
        for shard, text in zip(batch["shard"], batch["rows"], strict=True):
            scored, tokens = score_rows(self.rm, json.loads(text), self.layout, self.explain)  # type: ignore[arg-type]
            out["shard"].append(int(shard))
            out["rows"].append(json.dumps(scored, ensure_ascii=False))
            out["tokens"].append(tokens)
        return out


def score_file_ray(
    settings: Settings,
    src: Path,
    dst: Path,
    options: Options,
    pool: Pool,
    *,
    max_new_shards: int | None = None,
) -> Summary:
    store = ModelStore(settings.store_root)
    manifest = store.read_manifest(settings.model, store.resolve(settings.model, settings.alias))
    limit = settings.scoring_config(manifest.backbone.max_length).max_length
    p = plan(src, dst, options, (manifest.model, manifest.version, limit))
    p.parts.mkdir(parents=True, exist_ok=True)
    todo = p.todo()
    done_before = len(p.shards) - len(todo)
    if max_new_shards is not None:
        todo = todo[:max_new_shards]
    started, tokens = time.perf_counter(), 0
    if todo:
        shipped = worker_settings(settings)
        items = [{"shard": s, "rows": json.dumps(p.shards[s])} for s in todo]
        constructor = {"settings": shipped, "layout": p.layout, "explain": options.explain}
        # In shard order, each written as it arrives: a kill loses no finished shard.
        for row in map_shards(ShardScorer, items, pool, **constructor):
            write_rows(p.part(int(row["shard"])), json.loads(row["rows"]))
            tokens += int(row["tokens"])
    if p.todo():
        raise RuntimeError(f"stopped with {len(p.todo())} shard(s) left (max_new_shards)")
    return finish(p, dst, tokens, started, done_before)
