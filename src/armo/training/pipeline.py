"""`armo train run` and `armo train sweep`: every stage end to end — 1 features (`featurize`) → 2 objectives
(`objective_set`) → 3 standardise, debias, 4 gating, head and manifest (`artifact`) → 5 evaluate (`evaluate`) →
publish. Stage 0 (`stage0`, `armo train backbone`) runs before, on its own; a run reads its delta (`stage0.delta`).
This module only wires the stages and writes the run's results.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from armo.model_store.delta import DELTA_FILE
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.training.artifact import RunResult, assemble
from armo.training.config import TrainConfig
from armo.training.evaluate import evaluate_artifact
from armo.training.extract import scoring_config
from armo.training.featurize import check_same_features, load_features, run_backbone
from armo.training.objective_set import fit_objectives

log = logging.getLogger(__name__)


def run(cfg: TrainConfig, run_name: str = "default") -> RunResult:
    """Train, evaluate and write `<out_dir>/<run_name>/result.json`; publish to `cfg.store` only if `cfg.publish`."""
    started = time.perf_counter()
    backbone = run_backbone(cfg)
    f = load_features(cfg, backbone, with_eval=cfg.evaluate)
    t_fit = time.perf_counter()
    objs = fit_objectives(cfg, f)
    result = assemble(cfg, f, objs, backbone)
    fit_seconds = time.perf_counter() - t_fit
    out_dir = Path(cfg.out_dir) / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = dict(result.report)
    metrics["wall_seconds"] = {"extract_train": f.seconds, "extract_eval": f.eval_seconds, "fit": fit_seconds}
    if cfg.evaluate and f.eval is not None and f.eval_table is not None:
        rm = RewardModel(backbone, result.head, result.manifest, scoring_config(cfg.extract))
        result.eval = evaluate_artifact(rm, f.eval, f.eval_table, out_dir, fast=cfg.fast_eval, plots=cfg.plots)
        metrics["rewardbench"] = result.eval.scores
    metrics["wall_seconds"]["total"] = time.perf_counter() - started
    manifest = result.manifest.model_copy(update={"metrics": metrics})
    result.manifest = manifest
    (out_dir / "result.json").write_text(
        json.dumps({"run": run_name, "config": cfg.to_dict(), "metrics": metrics}, indent=2)
    )
    if cfg.publish:
        # A reward-tuned backbone travels with the heads: its delta is a file of the version, checked like them.
        extra = {DELTA_FILE: Path(cfg.stage0.delta).read_bytes()} if manifest.backbone_delta else None
        ModelStore(cfg.store).publish(manifest, result.head, extra_files=extra, alias=cfg.alias)
        log.info("published %s/%s to %s (alias %s)", manifest.model, manifest.version, cfg.store, cfg.alias)
    return result


def sweep(base: TrainConfig, variants: dict[str, TrainConfig]) -> dict[str, dict[str, float]]:
    """Validation-only model selection: every variant is fitted on the same cached features and scored by its
    validation pair accuracy; nothing is evaluated on RewardBench and nothing is published. Variants may change
    objectives, probes, debiasing and gating, not the data or the extraction (those would need other features)."""
    check_same_features(base, variants)
    backbone = run_backbone(base)
    f = load_features(base, backbone, with_eval=False)
    out = {}
    for name, cfg in variants.items():
        out[name] = assemble(cfg, f, fit_objectives(cfg, f), backbone).report["val_pair_accuracy"]
    return out
