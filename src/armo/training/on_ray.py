"""`armo train extract --ray`: the feature cache's missing shards computed by a pool of Ray Data actors (one backbone
each), written by the driver into the same cache as a local run — so training at paper scale (millions of pairs,
an 8B backbone, many GPUs) needs no other code, and a local run and a Ray run resume each other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor

from armo.ray_pool import Pool, map_shards
from armo.training.config import ExtractConfig
from armo.training.extract import Group, ShardPool, compute_shard


class ShardExtractor:
    """A Ray Data actor: loads the backbone once; each call computes whole shards."""

    def __init__(self, backbone: str, cfg: dict[str, Any], threads: int, device: str) -> None:
        from armo.model_store.backbone import load_backbone

        torch.set_num_threads(threads)
        # Ray gives an actor with GPUs its own CUDA_VISIBLE_DEVICES, so `cuda` is that actor's GPU.
        self.backbone = load_backbone(backbone, device=device)
        self.cfg = ExtractConfig(**cfg)

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


def ray_pool(backbone: str, pool: Pool, device: str = "cpu") -> ShardPool:
    """A `ShardPool` for `run_extraction(..., pool=...)` (`armo.ray_pool`: a local Ray unless `pool.address`);
    each actor runs the backbone on `device` (the training config's)."""

    def compute(inputs: dict[int, list[Group]], cfg: ExtractConfig) -> Iterator[tuple[int, dict[str, Tensor], int]]:
        items = [
            {"shard": s, "groups": json.dumps([{"messages": [dict(m) for m in ms], "responses": rs} for ms, rs in gs])}
            for s, gs in inputs.items()
        ]
        for row in map_shards(ShardExtractor, items, pool, backbone=backbone, cfg=vars(cfg), device=device):
            yield int(row["shard"]), load(bytes(row["tensors"])), int(row["tokens"])

    return compute
