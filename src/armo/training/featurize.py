"""Stage 1: featurise a dataset with the frozen backbone (cached; see `extract`), and a run's features in one
place for the fitting stages."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.delta import read_delta, read_run_delta
from armo.model_store.manifest import Manifest
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig
from armo.training.extract import FeatureTable, ShardPool, run_extraction
from armo.training.layer_cache import cached_pools
from armo.training.prepare import Dataset, build_eval_set, build_training_set, part_bounds

_BACKBONES: dict[tuple[str, str, str], Backbone] = {}


def get_backbone(spec: str, delta: str = "", device: str = "cpu") -> Backbone:
    """`spec` loaded once per process and device; with `delta` (a stage-0 delta file) merged into it."""
    if (spec, delta, device) not in _BACKBONES:
        loaded = read_run_delta(Path(delta)) if delta else None
        _BACKBONES[spec, delta, device] = load_backbone(spec, delta=loaded, device=device)
    return _BACKBONES[spec, delta, device]


def artifact_backbone(spec: str, store: ModelStore, manifest: Manifest, device: str = "cpu") -> Backbone:
    """The backbone a published artifact scores with: `spec`, with the artifact's delta merged when it has one."""
    if manifest.backbone_delta is None:
        return get_backbone(spec, device=device)
    key = (spec, f"artifact:{manifest.backbone_delta.sha256}", device)
    if key not in _BACKBONES:
        delta = read_delta(store.version_dir(manifest.model, manifest.version), manifest.backbone_delta)
        _BACKBONES[key] = load_backbone(spec, delta=delta, device=device)
    return _BACKBONES[key]


def run_backbone(cfg: TrainConfig) -> Backbone:
    """The backbone a run's stages read: the configured one on the configured device, reward-tuned by
    `stage0.delta` when set."""
    return get_backbone(cfg.backbone, cfg.stage0.delta, cfg.device)


def featurize(
    cfg: TrainConfig,
    ds: Dataset,
    name: str,
    backbone: Backbone | None = None,
    only_part: int | None = None,
    pool: ShardPool | None = None,
    pools: Sequence[ShardPool | None] = (),
) -> tuple[FeatureTable, float]:
    """Features of every item of `ds` (in item order) and the wall time spent (0 when fully cached).

    Part 0 is job `name`, part i > 0 job `name-extra{i}`; `only_part` extracts just that one (parallel jobs).
    `pool` computes missing shards elsewhere (Ray); `pools[i]`, when given, does for part i (a layer cache)."""
    bb = backbone or run_backbone(cfg)
    started = time.perf_counter()
    tables = []
    for i, (a, b) in enumerate(part_bounds(ds)):
        if only_part is not None and i != only_part:
            continue
        job = name if i == 0 else f"{name}-extra{i}"
        tables.append(
            run_extraction(
                bb,
                ds.items[a:b],
                name=job,
                cache_root=Path(cfg.cache_dir),
                cfg=cfg.extract,
                data_hashes=ds.data_hashes if i == 0 else {},
                pool=pools[i] if i < len(pools) and pools[i] is not None else pool,
            )
        )
    return FeatureTable.concat(tables), time.perf_counter() - started


@dataclass
class TrainingFeatures:
    """A run's training set and its features (and the evaluation set's), computed once per run (features are cached on
    disk anyway); every fitting stage reads them."""

    train: Dataset
    table: FeatureTable
    seconds: float
    eval: Dataset | None = None
    eval_table: FeatureTable | None = None
    eval_seconds: float = 0.0


def load_features(cfg: TrainConfig, backbone: Backbone | None, with_eval: bool) -> TrainingFeatures:
    """The training set's features (from the stage-0 layer cache through the backbone's top layers when that cache
    is complete: minutes instead of a full extraction) and, with `with_eval`, the evaluation set's."""
    train = build_training_set(cfg.data)
    bb = backbone or run_backbone(cfg)
    pools = cached_pools(cfg, train, bb)
    table, seconds = featurize(cfg, train, "train", bb, pools=pools)
    feats = TrainingFeatures(train, table, seconds)
    if with_eval:
        feats.eval = build_eval_set(cfg.eval, cfg.fast_eval)
        feats.eval_table, feats.eval_seconds = featurize(
            cfg, feats.eval, "rewardbench-fast" if cfg.fast_eval else "rewardbench-full", bb
        )
    return feats
