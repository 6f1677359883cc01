"""Pairs scored by a margin m = score(chosen) − score(rejected), defined once for every stage that reads them: the
Bradley-Terry loss −log σ(m) that the gating and stage 0 minimise, and pair accuracy, the selection metric (a win 1,
a tie 0.5, a loss 0) overall, per group and balanced over groups with its standard error.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

# Keys of `pair_accuracy` / `crossval.cross_validate` results that are not pair groups.
SUMMARY_KEYS = ("all", "balanced", "balanced_se", "vs_base", "vs_base_se")


def bt_loss(margin: Tensor, weight: Tensor | None = None, *, total: bool = False) -> Tensor:
    """The Bradley-Terry loss −log σ(m) = softplus(−m) of margins [P]: their mean, weighted by `weight` [P] when
    given (Σ w·l / Σ w), or with `total` their sum."""
    loss = F.softplus(-margin)
    if total:
        return loss.sum()
    if weight is not None:
        return (loss * weight).sum() / weight.sum()
    return loss.mean()


def wins(margin: Tensor | np.ndarray) -> np.ndarray:
    """Chosen-minus-rejected margins [P] -> 1 (right), 0.5 (tie), 0 (wrong)."""
    m = np.asarray(margin, dtype=np.float64)
    return (m > 0) + 0.5 * (m == 0)


def accuracy(margin: Tensor | np.ndarray) -> float:
    """Pair accuracy (ties 0.5) of margins [P]; 0 for no pairs."""
    return float(wins(margin).mean()) if len(margin) else 0.0


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


def pair_accuracy(margin: Tensor | np.ndarray, groups: list[str]) -> dict[str, float]:
    """Accuracy (ties 0.5) of chosen-minus-rejected margins [P]: "all", per group, "balanced" (group mean) and its
    standard error "balanced_se" — a difference between recipes smaller than that is noise."""
    win = wins(margin)
    per_group, balanced, se = balanced_mean(win, groups)
    return {"all": float(win.mean()), **per_group, "balanced": balanced, "balanced_se": se}
