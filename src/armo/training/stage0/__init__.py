"""Stage 0, `armo train backbone`: reward-tuning the backbone's top layers before the heads are fit (never promoted
so far: docs/RESULTS.md).

Every run imports `config` (the `stage0` section of `TrainConfig`) and this file; the machinery (`layer_cache`,
`batches`, `tuning`) is imported only by `armo train backbone` and by a run whose cache directory holds a layer cache
(`has_layer_cache`): a run where stage 0 never ran reads no stage-0 code.
"""

from __future__ import annotations

from pathlib import Path


def layer_cache_dir(cache_root: Path, job: str, key: str, start: int) -> Path:
    """Where the layer cache of extraction job `job` (feature-cache key `key`) keeps the inputs of layer `start`."""
    return cache_root / f"{job}-{key[:16]}-layer{start}"


def has_layer_cache(cache_root: Path) -> bool:
    """Whether `cache_root` holds a layer cache of a training job at all: without one, no feature can come through
    stage 0's cached layers (`layer_cache.cached_pools` would find none)."""
    return any(p.is_dir() for p in cache_root.glob("train*-layer*"))  # `layer_cache_dir` of "train", "train-extra1", …
