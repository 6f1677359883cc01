"""Stage 0's start and its measure: the frozen backbone's Bradley-Terry model (epoch 0, the start a tuned epoch must
beat) and the validation pair accuracy of a tuner's head."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from armo.model_store import atomic
from armo.training.bradley_terry import balanced_mean, bt_loss, wins
from armo.training.config import TrainConfig
from armo.training.prepare import Dataset, pair_group
from armo.training.stage0.batches import PassRef
from armo.training.stage0.layer_cache import LayerCache

if TYPE_CHECKING:
    from armo.training.stage0.tuning import RewardTuner


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic.write_file(path, lambda tmp: torch.save(state, tmp))


def validate(tuner: RewardTuner, ids: list[int], diffs: Tensor, ds: Dataset) -> dict[str, Any]:
    with torch.inference_mode():
        margin = (diffs @ tuner.head.weight[0].cpu()).numpy()  # [P]
    win = wins(margin)
    by_group, balanced, se = balanced_mean(win, [pair_group(ds.pairs[p]) for p in ids])
    return {"pairs": len(ids), "balanced": balanced, "balanced_se": se, "all": float(win.mean()), "groups": by_group}


def _warm_head(
    tuner: RewardTuner, train: tuple[list[int], Tensor], val: tuple[list[int], Tensor], cfg: TrainConfig
) -> tuple[float, float]:
    """Fit the scalar head as the frozen backbone's linear BT model (the adapters start at zero, so the tuner's
    features are the frozen ones): the probes' logistic regression, L2 picked on the validation pairs. Returns the
    training pairs' mean BT loss at that start and the L2 chosen."""
    from armo.training.objective_fits import fit_bt_probe

    probe = fit_bt_probe("stage0-head", train[1].double().numpy(), val[1].double().numpy(), cfg.probes, "stage 0")
    with torch.no_grad():
        tuner.head.weight.copy_(torch.as_tensor(probe.w, dtype=torch.float32)[None])
        tuner.head.bias.zero_()
        margin = train[1] @ tuner.head.weight[0].cpu()
    return float(bt_loss(margin)), probe.metrics["l2"]


def epoch_zero(
    tuner: RewardTuner,
    caches: list[LayerCache],
    refs: tuple[list[PassRef], list[PassRef]],
    ds: Dataset,
    cfg: TrainConfig,
    fingerprint: dict[str, Any],
    progress: bool,
) -> dict[str, Any]:
    """Fit the head on the frozen features (`_warm_head`) and validate it: the history's epoch 0. The frozen
    features do not depend on lr, rank, method or steps, so the fit is saved beside the runs (keyed by what it
    does depend on) and every `--try` variant of one search reuses it instead of another forward over the pairs."""
    import hashlib

    s0 = cfg.stage0
    key = {
        **fingerprint,
        "stage0": {
            k: fingerprint["stage0"][k]
            for k in ("layers", "cache_layers", "max_pairs", "seed", "warmup_pairs")
            if k in fingerprint["stage0"]
        },
        "l2": cfg.probes.weight_decays,
    }
    if s0.warmup_pairs:  # the start is drawn from every training pair, whatever share of them the epochs train on
        key["stage0"]["max_pairs"] = 0
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(s0.out_dir) / f"epoch0-{digest}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        tuner.head.load_state_dict(saved["head"])
        return dict(saved["entry"])
    tuner.eval()
    bar = "stage 0 epoch 0: frozen features of the {} pairs" if progress else None

    def frozen(split: str, split_refs: list[PassRef]) -> tuple[list[int], Tensor]:
        # each split's differences are kept as soon as they exist: a run killed during the other split (each is
        # most of an hour over every training pair on a CPU) resumes after this one
        part = Path(s0.out_dir) / f"epoch0-{digest}-{split}.pt"
        if part.is_file():
            saved = torch.load(part, weights_only=False)
            return list(saved["ids"]), saved["diffs"]
        ids, diffs = tuner.diffs(caches, split_refs, ds, bar and bar.format(split))
        save_checkpoint(part, {"ids": ids, "diffs": diffs})
        return ids, diffs

    val_diffs = frozen("validation", refs[1])
    train_diffs = frozen("training", refs[0])
    warm_loss, l2 = _warm_head(tuner, train_diffs, val_diffs, cfg)
    entry = {
        "epoch": 0,
        "train_loss": warm_loss,  # over the pairs the head was fit on
        "fit_pairs": len(train_diffs[0]),
        "l2": l2,
        "val": validate(tuner, *val_diffs, ds),
    }
    save_checkpoint(path, {"head": tuner.head.state_dict(), "entry": entry})
    return entry
