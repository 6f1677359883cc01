"""Stage 2, one objective's fit — ridge regression on absolute ratings, a linear Bradley-Terry probe on preference
pairs, rule values — each a raw linear function of the response feature (or of the text, for rules). The set of a
run's objectives and their names: `objective_set`.

Shapes: N = rows, d = hidden size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import mean_squared_error, r2_score

from armo.model_store import rules
from armo.training.bradley_terry import accuracy
from armo.training.config import ProbeConfig, RegressionConfig
from armo.training.extract import FeatureTable, Item

log = logging.getLogger(__name__)
Array = NDArray[np.float64]


@dataclass
class LinearObjective:
    """raw = w · h + b (before standardisation)."""

    name: str
    kind: Literal["regression", "pairwise"]
    source: str
    description: str
    w: Array  # [d]
    b: float
    metrics: dict[str, float] = field(default_factory=dict)

    def predict(self, h: Array) -> Array:  # [N, d] -> [N]
        return np.asarray(h @ self.w + self.b, dtype=np.float64)


def fit_ridge(
    name: str,
    x_train: Array,
    y_train: Array,
    x_val: Array,
    y_val: Array,
    cfg: RegressionConfig,
    source: str,
) -> LinearObjective:
    """Ridge per objective, alpha by validation MSE; refit on train + validation with that alpha."""
    best: tuple[float, float] | None = None
    for alpha in cfg.alphas:
        m = Ridge(alpha=alpha).fit(x_train, y_train)
        mse = float(mean_squared_error(y_val, m.predict(x_val)))
        if best is None or mse < best[1]:
            best = (alpha, mse)
    assert best is not None
    alpha = best[0]
    m = Ridge(alpha=alpha).fit(x_train, y_train)
    pred = m.predict(x_val)
    metrics = {
        "alpha": alpha,
        "val_r2": float(r2_score(y_val, pred)),
        "val_mse": float(mean_squared_error(y_val, pred)),
        "val_baseline_mse": float(np.var(y_val)),
        "n_train": float(len(y_train)),
        "n_val": float(len(y_val)),
    }
    final = Ridge(alpha=alpha).fit(np.vstack([x_train, x_val]), np.concatenate([y_train, y_val]))
    aspect = name.split("-", 1)[-1]  # rating names are '<judge>-<aspect>'
    labels = np.concatenate([y_train, y_val])
    desc = (
        f"the {source} judge's {aspect} rating (labels {labels.min():g}–{labels.max():g} in the training rows), "
        f"by ridge regression (alpha {alpha:g}, chosen on the validation split)"
    )
    return LinearObjective(
        name, "regression", source, desc, final.coef_.astype(np.float64), float(final.intercept_), metrics
    )


def bt_weights(diff_train: Array, l2: float) -> Array:
    """w [d] of a linear Bradley-Terry probe at a fixed L2 strength (see `fit_bt_probe`)."""
    scale = diff_train.std(axis=0) + 1e-6
    xt = np.vstack([diff_train, -diff_train]) / scale
    yt = np.concatenate([np.ones(len(diff_train)), np.zeros(len(diff_train))])
    m = LogisticRegression(C=1.0 / (l2 * len(xt)), fit_intercept=False, max_iter=2000).fit(xt, yt)
    return np.asarray(m.coef_[0] / scale, dtype=np.float64)


def fit_bt_probe(
    name: str,
    diff_train: Array,
    diff_val: Array,
    cfg: ProbeConfig,
    source: str,
) -> LinearObjective:
    """Linear Bradley-Terry probe: P(chosen ≻ rejected) = σ(w · (h_c − h_r)). diff = h_c − h_r, [N, d].

    Logistic regression without intercept on ±diff (both orders, so the problem is symmetric); features are
    scaled by their standard deviation for conditioning; the L2 strength is picked on validation accuracy.
    """
    best: tuple[float, float, Array] | None = None
    for wd in cfg.weight_decays:
        w = bt_weights(diff_train, wd)
        acc = accuracy(diff_val @ w) if len(diff_val) else 0.0
        if best is None or acc > best[1]:
            best = (wd, acc, w)
    assert best is not None
    wd, acc, w = best
    metrics = {
        "l2": wd,
        "val_accuracy": acc,
        "train_accuracy": accuracy(diff_train @ w),
        "n_train": float(len(diff_train)),
        "n_val": float(len(diff_val)),
    }
    desc = f"linear Bradley-Terry probe on preference pairs ({source}); L2 {wd:g} chosen on validation accuracy"
    return LinearObjective(name, "pairwise", source, desc, w.astype(np.float64), 0.0, metrics)


def rule_matrix(items: Sequence[Item], table: FeatureTable, names: Sequence[str]) -> Array:
    """Raw rule values [N, len(names)]; the verbosity rule sees the untruncated response length."""
    out = np.zeros((len(items), len(names)))
    tokens = table.response_tokens.tolist()
    for i, it in enumerate(items):
        x = rules.RuleInput(it.messages, it.response, int(tokens[i]))
        for j, n in enumerate(names):
            out[i, j] = rules.evaluate(n, x)
    return out
