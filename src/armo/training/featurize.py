"""Stage 1: featurise a dataset with the run's backbone, frozen or reward-tuned by stage 0 (cached; see `extract`),
and a run's features in one place for the fitting stages (2-4)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armo.model_store.backbone import Backbone, Quantize, load_backbone
from armo.model_store.delta import LoadedDelta, read_run_delta
from armo.model_store.loader import BackboneOptions, load_reward_model
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig
from armo.training.extract import FeatureTable, ShardPool, run_extraction, scoring_config
from armo.training.prepare import Dataset, build_eval_set, build_training_set, part_bounds
from armo.training.stage0 import has_layer_cache

_BACKBONES: dict[tuple[str, ...], Backbone] = {}


def load_backbone_once(spec: str, **kwargs: Any) -> Backbone:
    """`load_backbone`, once per process for each backbone, delta, device, quantisation and precision: training
    reads the same backbone in many stages and comparisons."""
    delta: LoadedDelta | None = kwargs.get("delta")
    defaults = {"device": "cpu", "quantize": "none", "dtype": "float32", "compile": "off"}  # load_backbone's
    key = (spec, delta.sha256 if delta else "", *(str(kwargs.get(k, v)) for k, v in defaults.items()))
    if key not in _BACKBONES:
        _BACKBONES[key] = load_backbone(spec, **kwargs)
    return _BACKBONES[key]


def get_backbone(spec: str, delta: str = "", device: str = "cpu", dtype: str = "float32") -> Backbone:
    """`spec` on `device` in `dtype`, with `delta` (a stage-0 delta file) merged into it; loaded once per process."""
    loaded = read_run_delta(Path(delta)) if delta else None
    return load_backbone_once(spec, delta=loaded, device=device, dtype=dtype)


def backbone_options(cfg: TrainConfig, quantize: Quantize = "none", compile: bool = False) -> BackboneOptions:
    """Training's backbone: the config's (it overrides an artifact's id), in-process, on the config's device and
    in its dtype; compiled only when asked (`armo eval --compile`): training loads many backbones for short jobs,
    and a minute of compiling each would not pay."""
    return BackboneOptions(
        override=cfg.backbone,
        cache_dir=None,
        device=cfg.device,
        dtype=cfg.dtype,
        quantize=quantize,
        packed=True,
        vllm=None,
        compile="on" if compile else "off",
    )


def load_artifact(
    cfg: TrainConfig, store: ModelStore, model: str, ref: str, quantize: Quantize = "none", compile: bool = False
) -> RewardModel:
    """A published artifact on training's backbone (its delta merged), with training's own truncation."""
    scoring = scoring_config(cfg.extract)
    options = backbone_options(cfg, quantize, compile)
    return load_reward_model(store, model, ref, options, lambda _: scoring, loader=load_backbone_once)


def run_backbone(cfg: TrainConfig) -> Backbone:
    """The backbone a run's stages read: the configured one on the configured device, reward-tuned by
    `stage0.delta` when set."""
    return get_backbone(cfg.backbone, cfg.stage0.delta, cfg.device, cfg.dtype)


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


def check_same_features(base: TrainConfig, variants: dict[str, TrainConfig]) -> None:
    """Variants compared on `base`'s features (a sweep, a cross-validation) may change objectives, probes, debiasing
    and gating, not what the features are made of: the data, the extraction or the backbone (stage 0's delta and
    the precision included). Raises ValueError naming the first variant that does."""
    for name, cfg in variants.items():
        made_of = (cfg.data, cfg.extract, cfg.backbone, cfg.stage0, cfg.dtype)
        if made_of != (base.data, base.extract, base.backbone, base.stage0, base.dtype):
            raise ValueError(f"variant {name!r} changes the data, extraction or backbone: it needs other features")


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
    is complete: minutes instead of a full extraction) and, with `with_eval`, the evaluation set's. Stage 0's code is
    imported only when the cache directory holds a layer cache at all."""
    train = build_training_set(cfg.data)
    bb = backbone or run_backbone(cfg)
    pools: Sequence[ShardPool | None] = ()
    if has_layer_cache(Path(cfg.cache_dir)):  # a cache per precision: found only for `bb`'s own
        from armo.training.stage0.layer_cache import cached_pools

        pools = cached_pools(cfg, train, bb)
    table, seconds = featurize(cfg, train, "train", bb, pools=pools)
    feats = TrainingFeatures(train, table, seconds)
    if with_eval:
        feats.eval = build_eval_set(cfg.eval, cfg.fast_eval)
        feats.eval_table, feats.eval_seconds = featurize(
            cfg, feats.eval, "rewardbench-fast" if cfg.fast_eval else "rewardbench-full", bb
        )
    return feats
