"""Cross-validated selection: folds keep a prompt together, the fit never sees the scored fold, every pair is scored
once, and the paired difference is the difference of the balanced accuracies."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from armo.training.bradley_terry import SUMMARY_KEYS, balanced_mean
from armo.training.config import TrainConfig
from armo.training.crossval import cross_validate, fold_split, folds_of, subset
from armo.training.featurize import load_features
from armo.training.prepare import pair_group, prompt_key


def test_balanced_mean_by_hand() -> None:
    means, balanced, se = balanced_mean(np.array([1.0, 0.0, 1.0, 1.0]), ["a", "a", "a", "b"])
    assert means == pytest.approx({"a": 2 / 3, "b": 1.0})
    assert balanced == pytest.approx((2 / 3 + 1) / 2)
    assert se == pytest.approx(((2 / 9) / 3) ** 0.5 / 2)  # group a: variance 2/9 over 3 pairs; b: none


def test_folds_keep_a_prompt_together_and_the_fit_never_sees_the_scored_fold(tiny_config: TrainConfig) -> None:
    tiny_config.data.split_by = "prompt"
    f = load_features(tiny_config, None, with_eval=False)
    ds = f.train
    pair_fold, rating_fold = folds_of(tiny_config.data, ds, 3)
    assert len(set(pair_fold)) == 3  # not vacuous: pairs land in every fold
    scored: list[int] = []
    for j in range(3):
        fit_pairs, fit_ratings, test = fold_split(ds, pair_fold, rating_fold, j)
        scored += test
        test_prompts = {prompt_key(ds.pairs[i].messages) for i in test}
        test_items = {it for i in test for it in ds.pair_items[i]}
        assert not test_prompts & {prompt_key(ds.pairs[i].messages) for i in fit_pairs}
        assert not test_items & {it for i in fit_pairs for it in ds.pair_items[i]}
        assert not test_items & {ds.rating_item[i] for i in fit_ratings}
        assert not test_prompts & {prompt_key(ds.ratings[i].messages) for i in fit_ratings}
        fit = subset(f, fit_pairs, fit_ratings)
        assert len(fit.train.pairs) == len(fit_pairs) and len(fit.table) == len(fit.train.items)
        for k, (c, _) in enumerate(fit.train.pair_items):  # re-indexed rows carry their own features
            original = ds.pair_items[fit_pairs[k]][0]
            assert np.array_equal(fit.table.response[c].numpy(), f.table.response[original].numpy())
        assert not any(subset(f, test, [], held_out=True).train.pair_val)
    assert sorted(scored) == list(range(len(ds.pairs)))  # every pair scored exactly once


def test_cross_validation_pairs_every_variant_with_the_first(tiny_config: TrainConfig) -> None:
    tiny_config.data.split_by = "prompt"
    equal = copy.deepcopy(tiny_config)
    equal.objectives.gating = "equal"
    results, detail = cross_validate(
        tiny_config, {"": tiny_config, "same": copy.deepcopy(tiny_config), "equal": equal}, 3, by=pair_group
    )
    f = load_features(tiny_config, None, with_eval=False)
    assert set(results[""]) - set(SUMMARY_KEYS) == {pair_group(p) for p in f.train.pairs}
    assert results["same"] == pytest.approx(results[""])  # seeded: the same recipe scores the same margins
    assert results["same"]["vs_base"] == 0.0 and results["same"]["vs_base_se"] == 0.0
    # a balanced mean is linear: the paired difference equals the difference of the balanced accuracies
    assert results["equal"]["vs_base"] == pytest.approx(results["equal"]["balanced"] - results[""]["balanced"])
    assert all(0.0 <= results[n]["balanced"] <= 1.0 for n in results)
    # read by the rule's own groups, the finer table holds the same per-group accuracies and paired differences
    assert set(detail) == {pair_group(p) for p in f.train.pairs}
    for g, row in detail.items():
        assert row[""] == pytest.approx(results[""][g]) and row["equal"] == pytest.approx(results["equal"][g])
        assert row["equal vs"] == pytest.approx(results["equal"][g] - results[""][g])
        assert row["same vs"] == 0.0 and row["same vs_se"] == 0.0
    assert sum(row["n"] for row in detail.values()) == len(f.train.pairs)
    with pytest.raises(ValueError, match="at least 2 folds"):
        cross_validate(tiny_config, {"": tiny_config}, 1)
