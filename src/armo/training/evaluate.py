"""Stage 5: score the RewardBench pairs with an artifact — through `RewardModel.forward_features`, the exact code
path the service uses after the backbone — and compute RewardBench v1 (`rewardbench`), JSON and plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from armo.model_store.encoding import Encoded
from armo.model_store.reward_model import Prepared, RewardModel, ScoreItem
from armo.training.extract import FeatureTable
from armo.training.prepare import Dataset
from armo.training.rewardbench import SECTIONS, rewardbench_scores


@dataclass
class EvalResult:
    scores: dict[str, Any]  # rewardbench_scores(...) + mode
    item_scores: torch.Tensor  # [N_items]
    item_weights: torch.Tensor  # [N_items, k] gating weights
    objectives: list[str]


def score_items(
    rm: RewardModel, ds: Dataset, table: FeatureTable, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores [N], gating weights [N, k] and debiased objective rewards [N, k] of every item from cached features."""
    scores, weights, debiased = [], [], []
    for start in range(0, len(ds.items), batch_size):
        idx = list(range(start, min(start + batch_size, len(ds.items))))
        batch = [
            Prepared(
                ScoreItem(ds.items[i].messages, ds.items[i].response),
                Encoded((), 0, int(table.response_tokens[i]), bool(table.truncated[i])),
            )
            for i in idx
        ]
        ex = rm.forward_features(batch, table.features(idx))
        scores.append(ex.score)
        weights.append(ex.weights)
        debiased.append(ex.debiased)
    return torch.cat(scores), torch.cat(weights), torch.cat(debiased)


def evaluate_artifact(
    rm: RewardModel,
    ds: Dataset,
    table: FeatureTable,
    out_dir: Path | None,
    *,
    fast: bool,
    plots: bool = True,
) -> EvalResult:
    manifest = rm.manifest
    s, w, deb = score_items(rm, ds, table)
    chosen = [float(s[c]) for c, _ in ds.pair_items]
    rejected = [float(s[r]) for _, r in ds.pair_items]
    scores = rewardbench_scores([p.subset for p in ds.pairs], chosen, rejected)
    # What each objective alone would score (its debiased reward as the RM), and where the gating puts its weight:
    # the two together say whether the gating trusts the objectives that are right on a section.
    c_idx = [c for c, _ in ds.pair_items]
    r_idx = [r for _, r in ds.pair_items]
    subsets = [p.subset for p in ds.pairs]
    scores["objectives_alone"] = {
        name: rewardbench_scores(subsets, deb[c_idx, k].tolist(), deb[r_idx, k].tolist())["per_section"]
        for k, name in enumerate(manifest.objective_names)
    }
    section_of = {sub: sec for sec, subs in SECTIONS.items() for sub in subs}
    scores["mean_gating_weight"] = {}
    for section in SECTIONS:
        rows = [c for c, p in zip(c_idx, ds.pairs, strict=True) if section_of.get(p.subset) == section]
        if rows:  # on the chosen side (with prompt-only gating both sides have the same weights)
            mean = w[rows].mean(dim=0)
            scores["mean_gating_weight"][section] = {n: float(mean[k]) for k, n in enumerate(manifest.objective_names)}
    scores["mode"] = "fast (stratified sample per subset)" if fast else "full"
    # Length baselines on the same sample (the published 54.3 / 45.7 are on the full set).
    tokens = table.response_tokens.tolist()
    for name, sign in (("always_shorter", -1.0), ("always_longer", 1.0)):
        b = rewardbench_scores(
            subsets, [sign * tokens[c] for c, _ in ds.pair_items], [sign * tokens[r] for _, r in ds.pair_items]
        )
        scores[f"baseline_{name}"] = {"four_section_mean": b["four_section_mean"], "per_section": b["per_section"]}
    trunc = [bool(table.truncated[c]) or bool(table.truncated[r]) for c, r in ds.pair_items]
    win = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    hit = [w for w, t in zip(win, trunc, strict=True) if t]
    miss = [w for w, t in zip(win, trunc, strict=True) if not t]
    scores["truncation"] = {
        "pairs_with_a_truncated_side": len(hit),
        "raw_accuracy_truncated": 100 * sum(hit) / len(hit) if hit else None,
        "raw_accuracy_untruncated": 100 * sum(miss) / len(miss) if miss else None,
    }
    scores["truncated_responses"] = int(table.truncated.sum())
    scores["n_responses"] = len(table)
    scores["max_length"] = int(table.length.max()) if len(table) else 0
    result = EvalResult(scores, s, w, manifest.objective_names)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rewardbench.json").write_text(json.dumps(scores, indent=2))
        if plots:
            from armo.training.plots import save_plots

            save_plots(result, ds, table, out_dir)
    return result
