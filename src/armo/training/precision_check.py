"""`armo train precision`: how far a published artifact's scores move when its backbone runs in another precision
(bf16 on AMX), measured on validation pairs of the training data — never on evaluation data — through the serving
path, and stated in the artifact's manifest: the service serves an artifact only in a precision it states.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.stats import spearmanr

from armo.model_store.delta import read_delta
from armo.model_store.manifest import PrecisionAgreement
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig
from armo.training.featurize import load_artifact, load_backbone_once
from armo.training.prepare import build_training_set

# The bound an item's |Δ score| is held to: the largest difference seen on the validation items, doubled (an item
# outside the sample may sit a little further out; a real defect of a precision is far larger).
BOUND_FACTOR = 2.0


def validation_items(cfg: TrainConfig, pairs: int) -> list[ScoreItem]:
    """Both sides of `pairs` validation pairs, evenly spaced over the split (deterministic), chosen first."""
    train = build_training_set(cfg.data)
    val = [i for i, v in enumerate(train.pair_val) if v]
    picked = val[:: max(1, len(val) // pairs)][:pairs]
    return [ScoreItem(train.items[k].messages, train.items[k].response) for i in picked for k in train.pair_items[i]]


def scores(rm: RewardModel, items: list[ScoreItem], chunk: int = 64) -> np.ndarray:
    out = [r.score for k in range(0, len(items), chunk) for r in rm.score(items[k : k + chunk])]
    return np.asarray(out, dtype=np.float64)


def measure_agreement(
    cfg: TrainConfig, store: ModelStore, model: str, version: str, dtype: str = "bfloat16", pairs: int = 400
) -> PrecisionAgreement:
    """Scores of validation pairs in the precision the heads were fit in and in `dtype`, compared."""
    fit = store.read_manifest(model, store.resolve(model, version)).precision.fit
    reference = load_artifact(replace(cfg, dtype=fit), store, model, version)  # type: ignore[arg-type]
    m = reference.manifest
    delta = read_delta(store.version_dir(m.model, m.version), m.backbone_delta)
    backbone = load_backbone_once(cfg.backbone, device=cfg.device, dtype=dtype, delta=delta)
    candidate = RewardModel(backbone, reference.head, m, reference.config)
    items = validation_items(cfg, pairs)
    a, b = scores(reference, items), scores(candidate, items)
    diff = np.abs(a - b)
    same_order = np.sign(a[0::2] - a[1::2]) == np.sign(b[0::2] - b[1::2])
    return PrecisionAgreement(
        policy=f"the whole backbone in {dtype}, features cast to float32 for the heads",
        items=len(items),
        mean_abs_delta=round(float(diff.mean()), 5),
        max_abs_delta=round(float(diff.max()), 5),
        spearman=round(float(spearmanr(a, b).statistic), 5),
        pair_agreement=round(float(same_order.mean()), 5),
        bound=round(float(diff.max()) * BOUND_FACTOR, 4),
    )
