"""Cross-validated model selection: every training pair scored once, by a recipe fit without its fold.

Why: the validation split holds ~15 % of the pairs (1,156 in the default sample), and its balanced accuracy has a
standard error of ~1.8 points — more than most differences between recipes, so a margin of one SE on it can veto a
change worth several RewardBench points. Here K folds keyed like the split (the prompt, with
`data.split_by: "prompt"`) score *every* pair out of fold, and variants are compared by their **paired** difference
on the same pairs, whose error is smaller than either accuracy's because the recipes' mistakes are correlated.

Fold j is removed from everything that learns from labels: the ridge and probe fits, their α / L2 choice, and the
gating with its early stopping (those keep using the config's validation split, inside the other folds). So are
the training rows that share a response with fold j (with the prompt split there are none). The standardiser and
the debiasing λ are still fit on every item's objective values: they use no labels, and they are the reference
distribution of responses, which is the same whatever is scored. RewardBench is never read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from armo.model_store.reward_model import RewardModel
from armo.training.artifact import assemble
from armo.training.bradley_terry import balanced_mean, pair_accuracy, wins
from armo.training.config import DataConfig, TrainConfig
from armo.training.data import PairRow, id_fraction
from armo.training.evaluate import score_items
from armo.training.extract import scoring_config
from armo.training.featurize import TrainingFeatures, check_same_features, load_features, run_backbone
from armo.training.objective_set import fit_objectives
from armo.training.prepare import Dataset, id_stem, pair_group, split_key

SALT = "cross-validation"


def folds_of(cfg: DataConfig, ds: Dataset, k: int) -> tuple[list[int], list[int]]:
    """(fold of every pair, fold of every rating row), by hash of the split key: a prompt's pairs and ratings (or a
    pair and the ratings of its two responses, with the id split) always share a fold."""

    def fold(key: str) -> int:
        return min(k - 1, int(id_fraction(key, SALT) * k))

    pairs = [fold(split_key(cfg, p.id, p.messages)) for p in ds.pairs]
    ratings = [fold(split_key(cfg, id_stem(r.id), r.messages)) for r in ds.ratings]
    return pairs, ratings


def subset(
    f: TrainingFeatures, pairs: Sequence[int], ratings: Sequence[int], *, held_out: bool = False
) -> TrainingFeatures:
    """The training features restricted to some pairs and rating rows (items re-indexed; validation flags kept, or
    all cleared with `held_out` — a test fold has no validation part)."""
    ds = f.train
    sub = Dataset(data_hashes=ds.data_hashes)
    for i in ratings:
        sub.add_rating(ds.ratings[i], ds.rating_val[i] and not held_out)
    for i in pairs:
        sub.add_pair(ds.pairs[i], ds.pair_val[i] and not held_out)
    return TrainingFeatures(sub, f.table.select([ds.index_of(it) for it in sub.items]), 0.0)


def fold_split(
    ds: Dataset, pair_fold: Sequence[int], rating_fold: Sequence[int], j: int
) -> tuple[list[int], list[int], list[int]]:
    """(pairs to fit on, rating rows to fit on, pairs to score) for fold j."""
    test = [i for i, f in enumerate(pair_fold) if f == j]
    test_items = {it for i in test for it in ds.pair_items[i]}
    fit_pairs = [i for i, f in enumerate(pair_fold) if f != j and not any(it in test_items for it in ds.pair_items[i])]
    fit_ratings = [i for i, f in enumerate(rating_fold) if f != j and ds.rating_item[i] not in test_items]
    return fit_pairs, fit_ratings, test


def out_of_fold_margins(cfg: TrainConfig, f: TrainingFeatures, k: int) -> np.ndarray:
    """Chosen-minus-rejected score [P] of every training pair from the recipe `cfg` fit without the pair's fold."""
    backbone = run_backbone(cfg)
    pair_fold, rating_fold = folds_of(cfg.data, f.train, k)
    margin = np.zeros(len(f.train.pairs))
    for j in range(k):
        fit_pairs, fit_ratings, test = fold_split(f.train, pair_fold, rating_fold, j)
        if not test:
            continue
        fit = subset(f, fit_pairs, fit_ratings)
        result = assemble(cfg, fit, fit_objectives(cfg, fit), backbone)
        scored = subset(f, test, [], held_out=True)
        rm = RewardModel(backbone, result.head, result.manifest, scoring_config(cfg.extract))
        scores = score_items(rm, scored.train, scored.table)[0].double().numpy()
        for row, (c, r) in zip(test, scored.train.pair_items, strict=True):
            margin[row] = scores[c] - scores[r]
    return margin


def cross_validate(
    base: TrainConfig, variants: dict[str, TrainConfig], k: int = 5, by: Callable[[PairRow], str] | None = None
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Out-of-fold pair accuracy of every variant (as `pair_accuracy`), plus its paired difference from the first
    variant on the same pairs ("vs_base" ± "vs_base_se", balanced over groups: a candidate replaces the incumbent
    iff this exceeds one paired standard error). With `by`, also a finer reading: per label of `by` (e.g.
    `pair_category`), as `by_label`. Nothing is written or published."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {k}")
    check_same_features(base, variants)
    f = load_features(base, run_backbone(base), with_eval=False)
    groups = [pair_group(p) for p in f.train.pairs]
    out: dict[str, dict[str, float]] = {}
    won: dict[str, np.ndarray] = {}
    for name, cfg in variants.items():
        margin = out_of_fold_margins(cfg, f, k)
        acc = pair_accuracy(margin, groups)
        won[name] = wins(margin)
        _, acc["vs_base"], acc["vs_base_se"] = balanced_mean(won[name] - next(iter(won.values())), groups)
        out[name] = acc
    return out, (by_label(won, [by(p) for p in f.train.pairs]) if by else {})


def by_label(won: dict[str, np.ndarray], labels: list[str]) -> dict[str, dict[str, float]]:
    """Per label: its pair count "n", every variant's accuracy (key: the variant's name) and, after the first, its
    paired difference from the first ("<name> vs") ± standard error ("<name> vs_se")."""
    names = list(won)
    diffs = {n: won[n] - won[names[0]] for n in names[1:]}
    acc = {n: balanced_mean(w, labels)[0] for n, w in won.items()}
    out: dict[str, dict[str, float]] = {}
    for label in sorted(set(labels)):
        rows = np.array(labels) == label
        row = {"n": float(rows.sum()), **{n: acc[n][label] for n in names}}
        for n, d in diffs.items():
            row[f"{n} vs"] = float(d[rows].mean())
            row[f"{n} vs_se"] = float(d[rows].std() / np.sqrt(rows.sum()))
        out[label] = row
    return out
