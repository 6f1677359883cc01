"""`armo train extract --ray`: the feature cache's missing shards computed by a pool of Ray Data actors (one backbone
each), written by the driver into the same cache as a local run — so training at paper scale (millions of pairs,
an 8B backbone, many GPUs) needs no other code, and a local run and a Ray run resume each other."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import torch
from safetensors.torch import load, save
from torch import Tensor

from armo.training.config import ExtractConfig
from armo.training.extract import Group, ShardPool, compute_shard


class ShardExtractor:
    """A Ray Data actor: loads the backbone once; each call computes whole shards."""

    def __init__(self, backbone: str, cfg: dict[str, Any], threads: int) -> None:
        from armo.model_store.backbone import load_backbone

        torch.set_num_threads(threads)
        self.backbone = load_backbone(backbone)
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


def ray_pool(
    backbone: str,
    *,
    actors: int = 2,
    threads_per_actor: int = 1,
    gpus_per_actor: float = 0.0,
    address: str | None = None,
) -> ShardPool:
    """A `ShardPool` for `run_extraction(..., pool=...)`; starts a local Ray on loopback unless `address` is given."""

    def pool(inputs: dict[int, list[Group]], cfg: ExtractConfig) -> Iterator[tuple[int, dict[str, Tensor], int]]:
        try:
            import ray
            import ray.data
        except ImportError as e:
            raise RuntimeError("--ray needs Ray Data: pip install 'ray[data]'") from e
        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs |= {"num_cpus": max(1, actors * threads_per_actor), "_node_ip_address": "127.0.0.1"}
            ray.init(address=address, **kwargs)
        try:
            ray.data.DataContext.get_current().execution_options.preserve_order = True
            items = [
                {
                    "shard": s,
                    "groups": json.dumps(
                        [{"messages": [dict(m) for m in msgs], "responses": rs} for msgs, rs in groups]
                    ),
                }
                for s, groups in inputs.items()
            ]
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            done = ds.map_batches(
                ShardExtractor,
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=min(actors, len(items))),
                num_cpus=threads_per_actor,
                num_gpus=gpus_per_actor,
                batch_format="numpy",
                fn_constructor_kwargs={"backbone": backbone, "cfg": vars(cfg), "threads": threads_per_actor},
            )
            for row in done.iter_rows():
                yield int(row["shard"]), load(bytes(row["tensors"])), int(row["tokens"])
        finally:
            if started_here:
                with contextlib.suppress(Exception):
                    ray.shutdown()

    return pool
