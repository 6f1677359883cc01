"""`armo train compare`: published artifacts' pair accuracy (`bradley_terry.pair_accuracy`) on a config's validation
pairs, each paired against the first — the promotion rule's reading. RewardBench is never read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from armo.model_store.store import ModelStore
from armo.training.bradley_terry import balanced_mean, pair_accuracy, wins
from armo.training.config import TrainConfig
from armo.training.evaluate import score_items
from armo.training.featurize import load_artifact, load_features
from armo.training.prepare import build_training_set, pair_group


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
