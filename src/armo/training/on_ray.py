"""`armo train extract --ray`: the feature cache's missing shards computed by a pool of Ray Data actors (one backbone
each), written by the driver into the same cache as a local run — so training at paper scale (millions of pairs,
an 8B backbone, many GPUs) needs no other code, and a local run and a Ray run resume each other. The actors load the
driver's backbone, stage-0 delta included, and refuse to start when theirs is not the one the cache is keyed by."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor

from armo.model_store.backbone import Backbone
from armo.ray_pool import Pool, map_shards
from armo.training.config import ExtractConfig
from armo.training.extract import Group, ShardPool, compute_shard, job_key


class ShardExtractor:
    """A Ray Data actor: loads the backbone once (with `delta`, a stage-0 delta file, merged); each call computes
    whole shards. `key` is the driver's `job_key` of an empty job: the backbone's identity (id, revision, template,
    delta) and the extraction settings, as the cache directory's key sees them; another backbone is refused."""

    def __init__(
        self, backbone: str, cfg: dict[str, Any], threads: int, device: str, delta: str, dtype: str, key: str
    ) -> None:
        from armo.model_store.backbone import load_backbone
        from armo.model_store.delta import read_run_delta

        torch.set_num_threads(threads)
        # Ray gives an actor with GPUs its own CUDA_VISIBLE_DEVICES, so `cuda` is that actor's GPU.
        loaded = read_run_delta(Path(delta)) if delta else None
        self.backbone = load_backbone(backbone, delta=loaded, device=device, dtype=dtype)
        self.cfg = ExtractConfig(**cfg)
        if job_key(self.backbone, [], self.cfg, {}) != key:
            raise RuntimeError(
                f"the Ray actor loaded {backbone} (delta {delta or 'none'}, {dtype}), not the backbone the feature "
                "cache is keyed by: its features would be filed under another backbone's key"
            )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        # JSON in, safetensors bytes out: plain columns, whatever Ray's Arrow conversion does with nested data.
        out: dict[str, list[Any]] = {"shard": [], "tensors": [], "tokens": []}
        for shard, text in zip(batch["shard"], batch["groups"], strict=True):
            groups = [(g["messages"], g["responses"]) for g in json.loads(text)]
            tensors, tokens = compute_shard(self.backbone, groups, self.cfg)
            out["shard"].append(int(shard))
            out["tensors"].append(save({k: v.contiguous() for k, v in tensors.items()}))
            out["tokens"].append(tokens)
        return out


def ray_pool(driver: Backbone, spec: str, pool: Pool, device: str = "cpu", delta: str = "") -> ShardPool:
    """A `ShardPool` for `run_extraction(driver, ..., pool=...)` (`armo.ray_pool`: a local Ray unless
    `pool.address`): each actor loads `spec` with `delta` (a stage-0 delta file; the training config's `backbone` and
    `stage0.delta`) on `device`, and must get `driver`, the backbone whose key the cache is filed under."""

    def compute(inputs: dict[int, list[Group]], cfg: ExtractConfig) -> Iterator[tuple[int, dict[str, Tensor], int]]:
        items = [
            {"shard": s, "groups": json.dumps([{"messages": [dict(m) for m in ms], "responses": rs} for ms, rs in gs])}
            for s, gs in inputs.items()
        ]
        key = job_key(driver, [], cfg, {})
        actor = {"backbone": spec, "cfg": vars(cfg), "device": device, "delta": delta, "dtype": driver.precision}
        actor["key"] = key
        for row in map_shards(ShardExtractor, items, pool, **actor):
            yield int(row["shard"]), load(bytes(row["tensors"])), int(row["tokens"])

    return compute
