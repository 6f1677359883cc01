"""Stage 1: featurise a dataset with the frozen backbone (cached; see `extract`), and a run's features in one
place for the fitting stages."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from armo.model_store.backbone import Backbone, load_backbone
from armo.training.config import TrainConfig
from armo.training.extract import FeatureTable, ShardPool, run_extraction
from armo.training.prepare import Dataset, build_eval_set, build_training_set

_BACKBONES: dict[str, Backbone] = {}


def get_backbone(spec: str) -> Backbone:
    if spec not in _BACKBONES:
        _BACKBONES[spec] = load_backbone(spec)
    return _BACKBONES[spec]


def part_bounds(ds: Dataset) -> list[tuple[int, int]]:
    bounds = ds.parts if len(ds.parts) > 1 else [0, len(ds.items)]
    return list(itertools.pairwise(bounds))


def featurize(
    cfg: TrainConfig,
    ds: Dataset,
    name: str,
    backbone: Backbone | None = None,
    only_part: int | None = None,
    pool: ShardPool | None = None,
) -> tuple[FeatureTable, float]:
    """Features of every item of `ds` (in item order) and the wall time spent (0 when fully cached).

    Part 0 is job `name`, part i > 0 job `name-extra{i}`; `only_part` extracts just that one (parallel jobs)."""
    bb = backbone or get_backbone(cfg.backbone)
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
                pool=pool,
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
    train = build_training_set(cfg.data)
    table, seconds = featurize(cfg, train, "train", backbone)
    feats = TrainingFeatures(train, table, seconds)
    if with_eval:
        feats.eval = build_eval_set(cfg.eval, cfg.fast_eval)
        feats.eval_table, feats.eval_seconds = featurize(
            cfg, feats.eval, "rewardbench-fast" if cfg.fast_eval else "rewardbench-full", backbone
        )
    return feats
