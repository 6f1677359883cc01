"""`armo batch score --ray`: the same shards, scored by a pool of Ray Data actors (one model per actor).

The driver plans the shards exactly as the local run does (same selection, same hidden folder of finished shards,
so a killed run resumes either way and the output is the same file), hands Ray the shards still to do, and writes
each one as it comes back, in order. An actor loads the model once (`load_model`, as the service does) and scores a
whole shard per call with `score_rows`, the local code; on a cluster, `--ray-address` and `--gpus-per-actor` spread
the actors over machines and GPUs. Ray is an optional dependency, imported here only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from armo.batch.files import write_rows
from armo.batch.runner import Options, Summary, finish, load_model, plan, score_rows
from armo.model_store.store import ModelStore
from armo.settings import Settings

# What an actor needs to load the model the driver would: every setting but the keys (never shipped to workers).
_SHIPPED = ("api_keys", "admin_key")


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
    *,
    actors: int = 2,
    threads_per_actor: int = 1,
    gpus_per_actor: float = 0.0,
    address: str | None = None,
    max_new_shards: int | None = None,
) -> Summary:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RuntimeError("--ray needs Ray Data: pip install 'ray[data]'") from e
    manifest = ModelStore(settings.store_root).read_manifest(
        settings.model, ModelStore(settings.store_root).resolve(settings.model, settings.alias)
    )
    limit = (
        manifest.backbone.max_length
        if settings.max_tokens is None
        else min(manifest.backbone.max_length, settings.max_tokens)
    )
    p = plan(src, dst, options, (manifest.model, manifest.version, limit))
    p.parts.mkdir(parents=True, exist_ok=True)
    todo = p.todo()
    if max_new_shards is not None:
        todo = todo[:max_new_shards]
    started, tokens, done_before = time.perf_counter(), 0, len(p.shards) - len(p.todo())
    if todo:
        started_here = not ray.is_initialized()
        if started_here:  # a local Ray for this run, on loopback, without the dashboard
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs |= {"num_cpus": max(1, actors * threads_per_actor), "_node_ip_address": "127.0.0.1"}
            ray.init(address=address, **kwargs)
        try:
            ray.data.DataContext.get_current().execution_options.preserve_order = True
            shipped = {k: v for k, v in settings.model_dump(mode="json").items() if k not in _SHIPPED}
            # One block per shard, so that every actor gets work.
            items = [{"shard": s, "rows": json.dumps(p.shards[s])} for s in todo]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            scored = ds.map_batches(
                ShardScorer,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
                num_cpus=threads_per_actor,
                num_gpus=gpus_per_actor,
                batch_format="numpy",
                fn_constructor_kwargs={
                    "settings": shipped,
                    "layout": p.layout,
                    "explain": options.explain,
                    "threads": threads_per_actor,
                },
            )
            for (
                row
            ) in scored.iter_rows():  # in shard order: each written as it arrives, so a kill loses no finished shard
                write_rows(p.part(int(row["shard"])), json.loads(row["rows"]))
                tokens += int(row["tokens"])
        finally:
            if started_here:
                ray.shutdown()
    if p.todo():
        raise RuntimeError(f"stopped with {len(p.todo())} shard(s) left (max_new_shards)")
    return finish(p, dst, tokens, started, done_before)
