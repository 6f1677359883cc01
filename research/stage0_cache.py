"""Stage 0's layer cache built by several processes at once (`python research/stage0_cache.py CONFIG WORKER WORKERS`).

`armo train backbone` builds the cache in one process; on two cores, two single-thread processes are faster than
one two-thread process (≈ 330 tok/s each against ≈ 606 tok/s). Worker w computes the shards s with s % WORKERS == w
of every job, written atomically exactly where `LayerCache.build` would write them, so `armo train backbone` then
finds the cache complete and goes straight to training.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from armo.training.config import load_config
from armo.training.featurize import get_backbone
from armo.training.prepare import build_training_set
from armo.training.stage0.layer_cache import bottom_view, layer_caches


def main(config: str, worker: int, workers: int) -> None:
    cfg = load_config(config)
    torch.set_num_threads(1)
    backbone = get_backbone(cfg.backbone, device=cfg.device)
    ds = build_training_set(cfg.data)
    started, tokens = time.perf_counter(), 0
    for cache in layer_caches(cfg, ds, backbone):
        cache.directory.mkdir(parents=True, exist_ok=True)
        bottom = bottom_view(backbone.model, cache.start)
        mine = [s for s in range(len(cache.shards)) if s % workers == worker and not cache.path(s).is_file()]
        for s in mine:
            tokens += cache.build_shard(s, bottom)
            seconds = time.perf_counter() - started
            print(json.dumps({"job": cache.directory.name, "shard": s, "tokens": tokens, "seconds": round(seconds)}))
            sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
