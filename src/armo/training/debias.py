"""Stage 3: standardisation on a reference distribution and verbosity debiasing by Spearman λ (DESIGN.md §2.3)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.stats import spearmanr

from armo.model_store.heads import debias_matrix
from armo.training.config import DebiasConfig

Array = NDArray[np.float64]


@dataclass
class Standardiser:
    mean: Array  # [k]
    std: Array  # [k]

    @classmethod
    def fit(cls, raw: Array, floor: Array | None = None) -> Standardiser:
        """Mean and std of raw [N, k] on the reference distribution; `floor` [k]: the least scale per column (rules'
        `min_scale`); a column with no spread and no floor keeps scale 1."""
        std = raw.std(axis=0)
        if floor is not None:
            std = np.maximum(std, floor)
        return cls(raw.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def __call__(self, raw: Array) -> Array:
        return (raw - self.mean) / self.std


@dataclass
class DebiasResult:
    lambdas: Array  # [k], 0 for the verbosity objective
    transform: Array  # [k, k] T with r' = T r
    before: Array  # [k] Spearman(r_i, r_verbose) on the reference distribution
    after: Array  # [k] Spearman(r'_i, r_verbose)


def _spearman(a: Array, b: Array) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def fit_debias(r: Array, verbosity_index: int, cfg: DebiasConfig, skip: Sequence[int] = ()) -> DebiasResult:
    """λ_i = smallest λ on [0, grid_max] with Spearman(r_i − λ r_v, r_v) ≤ threshold (grid_max if none);
    objectives in `skip` keep λ = 0."""
    k = r.shape[1]
    v = r[:, verbosity_index]
    grid = np.linspace(0.0, cfg.grid_max, cfg.grid_steps)
    lambdas = np.zeros(k)
    before = np.array([_spearman(r[:, i], v) for i in range(k)])
    for i in range(k):
        if i == verbosity_index or i in skip or before[i] <= cfg.threshold:
            continue
        lambdas[i] = grid[-1]
        for lam in grid:
            if _spearman(r[:, i] - lam * v, v) <= cfg.threshold:
                lambdas[i] = lam
                break
    t = debias_matrix(torch.tensor(lambdas), verbosity_index).numpy()
    debiased = r @ t.T
    after = np.array([_spearman(debiased[:, i], v) for i in range(k)])
    return DebiasResult(lambdas, t, before, after)


def identity_debias(r: Array, verbosity_index: int | None) -> DebiasResult:
    """No debiasing (ablation): T = I; correlations reported anyway."""
    k = r.shape[1]
    if verbosity_index is None:
        corr = np.zeros(k)
    else:
        corr = np.array([_spearman(r[:, i], r[:, verbosity_index]) for i in range(k)])
    return DebiasResult(np.zeros(k), np.eye(k), corr, corr.copy())
