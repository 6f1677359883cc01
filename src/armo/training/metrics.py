"""Pair accuracy, the selection metric: chosen-minus-rejected margins → wins (ties 0.5) → per-group and balanced
accuracy with its standard error; on a head's validation pairs and on published artifacts. RewardBench is never read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from armo.model_store.heads import ArmoHead
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig
from armo.training.evaluate import score_items
from armo.training.featurize import load_artifact, load_features
from armo.training.gating import pair_tensors
from armo.training.prepare import Dataset, build_training_set, pair_group

# Keys of `pair_accuracy` / `crossval.cross_validate` results that are not pair groups.
SUMMARY_KEYS = ("all", "balanced", "balanced_se", "vs_base", "vs_base_se")


def balanced_mean(values: np.ndarray, groups: list[str]) -> tuple[dict[str, float], float, float]:
    """Per-group means of `values` [P], their mean (every group weighs the same) and its standard error (groups
    independent: sqrt(Σ_g var_g / n_g) / G, population variance — for 0/1 wins exactly the binomial p(1-p))."""
    labels = np.array(groups)
    means: dict[str, float] = {}
    variance = 0.0
    for g in sorted(set(groups)):
        v = values[labels == g]
        means[g] = float(v.mean())
        variance += float(v.var()) / len(v)
    return means, float(np.mean(list(means.values()))), float(np.sqrt(variance)) / len(means)


def wins(margin: torch.Tensor | np.ndarray) -> np.ndarray:
    """Chosen-minus-rejected margins [P] -> 1 (right), 0.5 (tie), 0 (wrong)."""
    m = np.asarray(margin, dtype=np.float64)
    return (m > 0) + 0.5 * (m == 0)


def pair_accuracy(margin: torch.Tensor | np.ndarray, groups: list[str]) -> dict[str, float]:
    """Accuracy (ties 0.5) of chosen-minus-rejected margins [P]: "all", per group, "balanced" (group mean) and its
    standard error "balanced_se" — a difference between recipes smaller than that is noise."""
    win = wins(margin)
    per_group, balanced, se = balanced_mean(win, groups)
    return {"all": float(win.mean()), **per_group, "balanced": balanced, "balanced_se": se}


def val_pair_accuracy(
    ds: Dataset, val_idx: list[int], head: ArmoHead, x: np.ndarray, debiased: np.ndarray
) -> dict[str, float]:
    """Pair accuracy (ties 0.5) of R = g(x) · r' on the validation pairs: overall, per source/objective, and
    "balanced" = the mean over those groups (the selection criterion: the group mix of the sample is a budget
    choice, not the mix users score, so no group should dominate the choice)."""
    if not val_idx:
        return {}
    p = pair_tensors(ds, val_idx, x, debiased)
    with torch.no_grad():
        margin = (head.gating(p.x_chosen) * p.r_chosen).sum(1) - (head.gating(p.x_rejected) * p.r_rejected).sum(1)
    return pair_accuracy(margin, [pair_group(ds.pairs[i]) for i in val_idx])


def validation_accuracy(cfg: TrainConfig, versions: list[str], store: Path) -> dict[str, dict[str, float]]:
    """Pair accuracy of published artifacts on this config's validation pairs (cached features; RewardBench never
    read). Splits are by hash (of the id or of the prompt), so no artifact trained with the same split settings
    has seen these pairs: artifacts trained on different samples can be compared on the larger sample's validation
    split; an artifact trained with other split settings is refused."""
    train = build_training_set(cfg.data)
    val_idx = [i for i, v in enumerate(train.pair_val) if v]
    chosen = [train.pair_items[i][0] for i in val_idx]
    rejected = [train.pair_items[i][1] for i in val_idx]
    groups = [pair_group(train.pairs[i]) for i in val_idx]
    models = ModelStore(store)
    out: dict[str, dict[str, float]] = {}
    won: dict[str, np.ndarray] = {}
    for version in versions:
        rm = load_artifact(cfg, models, cfg.name, version)
        trained = rm.manifest.training.get("data", {})
        split = (trained.get("split_by", "id"), trained.get("val_fraction"))
        if split != (cfg.data.split_by, cfg.data.val_fraction):
            raise ValueError(
                f"{version} was trained with split_by={split[0]!r}, val_fraction={split[1]}: some of this config's "
                f"validation pairs (split_by={cfg.data.split_by!r}, val_fraction={cfg.data.val_fraction}) may be "
                "its training pairs"
            )
        # Each artifact reads its own backbone's features (a reward-tuned one has its own).
        f = load_features(cfg, rm.backbone, with_eval=False)
        scores, _, _ = score_items(rm, f.train, f.table)
        margin = scores[chosen] - scores[rejected]
        out[version] = pair_accuracy(margin, groups)
        won[version] = wins(margin)
        if len(won) > 1:  # the promotion rule's paired difference from the first version, on the same pairs
            _, out[version]["vs_base"], out[version]["vs_base_se"] = balanced_mean(
                won[version] - next(iter(won.values())), groups
            )
    return out
