"""Every stage end to end on a handful of synthetic rows with the tiny random Llama: train → evaluate → publish,
then the published artifact scores through the serving code path exactly as the evaluation did."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from armo.model_store import rules
from armo.model_store.backbone import load_backbone
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.training.bradley_terry import SUMMARY_KEYS, pair_accuracy
from armo.training.compare import validation_accuracy
from armo.training.config import TrainConfig
from armo.training.featurize import load_features
from armo.training.objective_set import RuleObjective, fit_objectives, probe_name
from armo.training.pipeline import run, sweep
from armo.training.prepare import Dataset
from armo.training.rewardbench import SECTIONS
from tests.conftest import default_scoring


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pipeline_end_to_end(tiny_config: TrainConfig, pooling: str) -> None:
    tiny_config.pooling = pooling  # type: ignore[assignment]
    tiny_config.publish = True
    result = run(tiny_config, "e2e")
    m = result.manifest
    assert m.pooling == pooling
    kinds = {o.kind for o in m.objectives}
    assert kinds == {"regression", "pairwise", "rule"}
    rule_names = ["rule-verbosity", "rule-refusal", "rule-compliance", "rule-repetition", "rule-markdown"]
    assert [*rule_names, "rule-code-parses"] == [o.name for o in m.objectives if o.kind == "rule"]
    assert set(tiny_config.probes.objectives) <= set(m.objective_names)
    assert all(probe_name(groups) == name for name, groups in tiny_config.probes.objectives.items())
    names, descriptions = m.objective_names, [o.description for o in m.objectives]
    assert len(set(names)) == len(names) and all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", n) for n in names)
    assert all(d and "\n" not in d for d in descriptions) and len(set(descriptions)) == len(descriptions)
    by_name = {o.name: o for o in m.objectives}
    refusal, compliance = by_name["rule-refusal"], by_name["rule-compliance"]
    assert (refusal.rule, refusal.sign, compliance.rule, compliance.sign) == ("refusal", 1, "refusal", -1)
    assert (compliance.offset, compliance.scale) == pytest.approx((refusal.offset, refusal.scale))
    assert all(o.scale >= rules.RULES[o.rule].min_scale for o in m.objectives if o.rule)  # the floor is recorded
    assert m.verbosity_objective == "rule-verbosity" and m.debias_lambda["rule-verbosity"] == 0.0
    rb = m.metrics["rewardbench"]
    assert set(rb["per_section"]) == set(SECTIONS)
    assert rb["n_pairs"] == 2 * sum(len(s) for s in SECTIONS.values()) + 4
    assert rb["four_section_mean"] is not None and rb["v1_score"] is not None
    for name, corr in m.metrics["verbosity_spearman"].items():
        rule = by_name[name].rule
        exempt = rule is not None and rule not in tiny_config.debias.rules  # discrete rules
        if name != m.verbosity_objective and not exempt:
            assert corr["after"] <= tiny_config.debias.threshold + 1e-9
        if exempt:
            assert corr["lambda"] == 0.0
    assert set(rb["objectives_alone"]) == set(m.objective_names)
    assert all(0 <= v <= 100 for per in rb["objectives_alone"].values() for v in per.values() if v is not None)
    assert result.eval is not None
    ds = _eval_set(tiny_config)
    for section, subsets in SECTIONS.items():  # recomputed from the per-item weights
        rows = [c for (c, _), p in zip(ds.pair_items, ds.pairs, strict=True) if p.subset in subsets]
        expect = result.eval.item_weights[rows].mean(dim=0)
        got = torch.tensor([rb["mean_gating_weight"][section][n] for n in m.objective_names])
        torch.testing.assert_close(got, expect)
    out = Path(tiny_config.out_dir) / "e2e"
    assert json.loads((out / "result.json").read_text())["metrics"]["rewardbench"]["n_pairs"] == rb["n_pairs"]
    assert (out / "sections.png").is_file() and (out / "gating_by_subset.png").is_file()

    # The published artifact, loaded from the store, reproduces the evaluation scores through RewardModel.score.
    manifest, head = ModelStore(tiny_config.store).load(m.model, "current")
    assert manifest.version == "t1"
    rm = RewardModel(load_backbone(tiny_config.backbone), head, manifest, default_scoring(manifest))
    assert result.eval is not None
    items = [
        ScoreItem(list(result_item.messages), result_item.response) for result_item in _eval_items(tiny_config)[:6]
    ]
    scores = torch.tensor([r.score for r in rm.score(items)])
    assert torch.allclose(scores, result.eval.item_scores[:6], atol=1e-4)


def _eval_set(cfg: TrainConfig) -> Dataset:
    from armo.training.prepare import build_eval_set

    return build_eval_set(cfg.eval, cfg.fast_eval)


def _eval_items(cfg: TrainConfig) -> list:  # type: ignore[type-arg]
    return _eval_set(cfg).items


@pytest.mark.parametrize(
    "overrides",
    [
        {"objectives.blackbox": True},
        {"objectives.gating": "equal"},
        {"objectives.debias": False},
        {"objectives.rules": ["verbosity"]},
        {"objectives.negated_rules": {}},
        {"gating.input": "response"},
        {"gating.balance_groups": True},
        {"gating.init": "uniform"},
        {"probes.cross_fit": 3},
        {"probes.cross_fit": 3, "data.split_by": "prompt"},
    ],
)
def test_ablations_run(tiny_config: TrainConfig, overrides: dict[str, object]) -> None:
    for key, value in overrides.items():
        section, attr = key.split(".")
        setattr(tiny_config, section, dataclasses.replace(getattr(tiny_config, section), **{attr: value}))
    tiny_config.plots = False
    result = run(tiny_config, "ablation")
    assert result.manifest.metrics["rewardbench"]["four_section_mean"] is not None
    assert not Path(tiny_config.store).exists()  # publishing is opt-in
    if overrides.get("objectives.blackbox"):
        assert result.manifest.objective_names == ["all-preference"]


def test_sweep_selects_on_validation_only(tiny_config: TrainConfig) -> None:
    equal = copy.deepcopy(tiny_config)
    equal.objectives.gating = "equal"
    results = sweep(tiny_config, {"default": tiny_config, "equal": equal})
    for acc in results.values():
        groups = {k: v for k, v in acc.items() if k not in SUMMARY_KEYS}
        assert groups and all(0.0 <= v <= 1.0 for v in groups.values())
        assert acc["balanced"] == pytest.approx(sum(groups.values()) / len(groups))
    assert not (Path(tiny_config.out_dir)).exists()  # nothing evaluated, written or published
    assert not list(Path(tiny_config.cache_dir).glob("rewardbench*"))  # RewardBench not even featurised
    other_data = copy.deepcopy(tiny_config)
    other_data.data.val_fraction = 0.5
    with pytest.raises(ValueError, match="changes the data"):
        sweep(tiny_config, {"other": other_data})


def test_pair_accuracy_counts_ties_half_and_balances_groups() -> None:
    acc = pair_accuracy(torch.tensor([1.0, -1.0, 0.0, 2.0]), ["a", "a", "a", "b"])
    assert acc["a"] == pytest.approx(0.5) and acc["b"] == 1.0
    assert acc["all"] == pytest.approx(2.5 / 4) and acc["balanced"] == pytest.approx(0.75)
    # group a: wins 1, 0, 0.5 (a tie makes the variance 1/6, under the binomial 1/4) over 3 pairs; b: none
    assert acc["balanced_se"] == pytest.approx(((1 / 6) / 3) ** 0.5 / 2)


def test_compare_scores_published_versions_on_one_validation_split(tiny_config: TrainConfig) -> None:
    """Two artifacts trained on different samples, side by side on the larger sample's validation pairs."""
    small = copy.deepcopy(tiny_config)
    small.data.extensions = []
    small.version, small.plots, small.fast_eval, small.publish = "t0", False, True, True
    run(small, "small")
    tiny_config.plots, tiny_config.publish = False, True
    run(tiny_config, "large")
    results = validation_accuracy(tiny_config, ["t0", "t1"], Path(tiny_config.store))
    assert set(results) == {"t0", "t1"}
    from armo.training.prepare import pair_group

    f = load_features(tiny_config, None, with_eval=False)
    val = [i for i, v in enumerate(f.train.pair_val) if v]
    assert set(results["t1"]) - set(SUMMARY_KEYS) == {pair_group(f.train.pairs[i]) for i in val}
    manifest, head = ModelStore(tiny_config.store).load(tiny_config.name, "t0")
    rm = RewardModel(load_backbone(tiny_config.backbone), head, manifest, default_scoring(manifest))
    items = f.train.items
    wins = 0.0
    for i in val:
        c, r = (items[k] for k in f.train.pair_items[i])
        sc, sr = (
            x.score
            for x in rm.score([ScoreItem(list(c.messages), c.response), ScoreItem(list(r.messages), r.response)])
        )
        wins += 1.0 if sc > sr else 0.5 if sc == sr else 0.0
    assert results["t0"]["all"] == pytest.approx(wins / len(val), abs=1e-9)
    by_prompt = copy.deepcopy(tiny_config)
    by_prompt.data.split_by = "prompt"
    with pytest.raises(ValueError, match="t0 was trained with split_by='id'"):
        validation_accuracy(by_prompt, ["t0"], Path(tiny_config.store))


def test_prompt_split_keeps_every_pair_of_a_prompt_on_one_side(tiny_config: TrainConfig) -> None:
    from armo.training.prepare import build_training_set, split_overlap

    by_id = build_training_set(tiny_config.data)
    tiny_config.data.split_by = "prompt"
    ds = build_training_set(tiny_config.data)
    assert [p.id for p in ds.pairs] == [p.id for p in by_id.pairs]  # same sample, so the same feature cache
    assert ds.pair_val != by_id.pair_val and any(ds.pair_val) and not all(ds.pair_val)
    side: dict[str, bool] = {}
    for p, val in zip(ds.pairs, ds.pair_val, strict=True):
        assert side.setdefault(repr(p.messages), val) == val
    for r, val in zip(ds.ratings, ds.rating_val, strict=True):
        assert side.setdefault(repr(r.messages), val) == val
    assert len(side) < len(ds.pairs) + len(ds.ratings)  # prompts do repeat here, so the test has teeth
    overlap = split_overlap(ds)
    assert sum(r["val_pairs"] for r in overlap.values()) == sum(ds.pair_val)
    assert all(r["share_the_prompt"] == r["share_a_response"] == 0 for r in overlap.values())
    leaky = split_overlap(by_id)
    assert any(r["share_the_prompt"] > 0 for r in leaky.values())  # the id split lets prompts cross over
    assert all(r["share_a_response"] <= r["share_the_prompt"] <= r["val_pairs"] for r in leaky.values())


def test_cross_fit_gives_the_gating_out_of_fold_probe_values(tiny_config: TrainConfig) -> None:
    tiny_config.probes.weight_decays = [1e-3]  # a probe that overfits its few pairs: in-sample it looks perfect
    f = load_features(tiny_config, None, with_eval=False)
    # Features that carry no signal (wide enough for a probe to separate its few pairs by chance)
    g = torch.Generator().manual_seed(0)
    f.table.response = torch.randn(f.table.response.shape[0], 256, generator=g)
    plain = fit_objectives(tiny_config, f)
    assert plain.gating_raw is None
    tiny_config.probes.cross_fit = 3
    objs = fit_objectives(tiny_config, f)
    assert objs.gating_raw is not None
    np.testing.assert_array_equal(objs.raw, plain.raw)  # the published objectives do not change
    in_train = {it for i, v in enumerate(f.train.pair_val) if not v for it in f.train.pair_items[i]}
    # responses only in validation pairs (a response can be in several pairs): no probe was fit on them
    val_items = [it for i, v in enumerate(f.train.pair_val) if v for it in f.train.pair_items[i] if it not in in_train]
    assert val_items
    out_of_fold = []
    for i, spec in enumerate(objs.specs):
        column = objs.gating_raw[:, i]
        if isinstance(spec, RuleObjective) or spec.kind != "pairwise":  # rules and ratings: never fit on pairs
            np.testing.assert_array_equal(column, objs.raw[:, i])
            continue
        np.testing.assert_array_equal(column[val_items], objs.raw[val_items, i])  # out of sample already
        assert not np.allclose(column, objs.raw[:, i])
        # In sample a probe "explains" its pairs; out of fold it is a coin toss — the gap the gating must not
        # learn from.
        assert spec.metrics["train_accuracy"] >= 0.9
        out_of_fold.append(spec.metrics["cross_fit_accuracy"])
    assert len(out_of_fold) == 3 and np.mean(out_of_fold) <= 0.7  # chance is 0.5; a handful of pairs per probe


def test_pooling_is_validated_in_the_config() -> None:
    from armo.training.config import load_config

    assert load_config(None, {"pooling": "mean"}).pooling == "mean"
    with pytest.raises(ValueError, match="pooling must be one of last, mean"):
        load_config(None, {"pooling": "max"})
