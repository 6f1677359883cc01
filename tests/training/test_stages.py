"""Each fitting stage on synthetic features: ridge, BT probe, standardisation, debiasing, gating."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from armo.model_store import rules
from armo.training.artifact import manifest_objectives, standardise_and_debias
from armo.training.config import DebiasConfig, GatingTrainConfig, ProbeConfig, RegressionConfig, TrainConfig
from armo.training.debias import Standardiser, fit_debias, identity_debias
from armo.training.gating import PairTensors, equal_gating, train_gating
from armo.training.objective_fits import fit_bt_probe, fit_ridge
from armo.training.objective_set import Objectives, RuleObjective


def test_ridge_recovers_a_linear_target_and_reports_metrics() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=16)
    x = rng.normal(size=(120, 16))
    y = x @ w + 3.0 + 0.05 * rng.normal(size=120)
    obj = fit_ridge("t", x[:90], y[:90], x[90:], y[90:], RegressionConfig(), "synthetic")
    assert obj.metrics["val_r2"] > 0.95
    assert obj.metrics["alpha"] in RegressionConfig().alphas
    assert np.allclose(obj.predict(x[:5]), y[:5], atol=0.5)


def test_bt_probe_learns_the_preference_direction() -> None:
    rng = np.random.default_rng(1)
    direction = rng.normal(size=8)
    diffs = rng.normal(size=(200, 8))
    diffs *= np.sign(diffs @ direction)[:, None]  # every pair prefers the side along `direction`
    obj = fit_bt_probe("t", diffs[:150], diffs[150:], ProbeConfig(), "synthetic")
    assert obj.metrics["val_accuracy"] > 0.9
    assert obj.b == 0.0
    assert np.corrcoef(obj.w, direction)[0, 1] > 0.8


def test_standardiser() -> None:
    raw = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Standardiser.fit(raw)
    assert np.allclose(s(raw), [[-1.0, 0.0], [1.0, 0.0]])  # a constant column is centred, not divided by 0


def _rule_objectives(*specs: tuple[str, int]) -> list[RuleObjective]:
    return [RuleObjective(f"rule-{r}-{sign}", r, sign, f"{r} · {sign}") for r, sign in specs]  # type: ignore[arg-type]


def test_rule_scale_floor_binds_for_a_rule_with_near_zero_spread() -> None:
    rng = np.random.default_rng(3)
    markdown = np.ones(200)
    markdown[0] = 0.8  # one failed check of five in 200 responses: std 0.014
    verbosity = rng.integers(10, 400, size=200).astype(float)
    objs = Objectives(_rule_objectives(("verbosity", 1), ("markdown", 1)), np.stack([verbosity, markdown], axis=1))
    cfg = TrainConfig()
    deb = standardise_and_debias(cfg, objs)
    assert rules.RULES["markdown"].min_scale == 0.1 and deb.std.std[1] == 0.1  # the floor binds …
    assert deb.std.std[0] == pytest.approx(verbosity.std())  # … only where the spread is below it
    r = deb.std(objs.raw)
    assert r[0, 1] == pytest.approx((0.8 - markdown.mean()) / 0.1)  # about −2 σ
    cfg.objectives.rule_scale_floor = False
    assert standardise_and_debias(cfg, objs).std(objs.raw)[0, 1] < -14  # without it: about −14 σ
    assert manifest_objectives(objs, deb.std)[1].scale == 0.1  # the manifest records the scale used


def test_a_negated_rule_is_minus_the_rule_after_standardisation() -> None:
    refusal = np.random.default_rng(4).choice([0.0, 0.5, 1.0], size=100, p=[0.8, 0.05, 0.15])
    objs = Objectives(_rule_objectives(("refusal", 1), ("refusal", -1)), np.stack([refusal, -refusal], axis=1))
    deb = standardise_and_debias(TrainConfig(), objs)
    r = deb.std(objs.raw)
    np.testing.assert_allclose(r[:, 1], -r[:, 0])
    plus, minus = manifest_objectives(objs, deb.std)
    assert (plus.sign, minus.sign) == (1, -1) and minus.rule == plus.rule == "refusal"
    assert minus.offset == pytest.approx(plus.offset) == pytest.approx(refusal.mean())  # rule(x)'s offset
    assert minus.scale == plus.scale


def test_debias_brings_correlation_under_threshold() -> None:
    rng = np.random.default_rng(2)
    v = rng.normal(size=500)
    quality = rng.normal(size=500)
    r = np.stack([quality + 0.8 * v, quality - 0.5 * v, v], axis=1)  # objective 0 rewards length, 1 penalises it
    res = fit_debias(r, 2, DebiasConfig(threshold=0.03))
    assert res.before[0] > 0.3 and res.after[0] <= 0.03
    assert 0.5 < res.lambdas[0] < 1.1
    assert res.lambdas[1] == 0.0  # already negatively correlated: untouched
    assert res.lambdas[2] == 0.0 and np.all(res.transform[2] == 0)  # verbosity itself zeroed
    none = identity_debias(r, 2)
    assert np.allclose(none.transform, np.eye(3)) and none.before[0] == none.after[0]


def _pairs(n: int, seed: int) -> PairTensors:
    """Objective 0 decides pairs whose gating input has x[0] > 0, objective 1 the others."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    good = torch.randn(n, 2, generator=g)
    bad = torch.randn(n, 2, generator=g)
    first = x[:, 0] > 0
    good[first, 0] += 2.0
    good[~first, 1] += 2.0
    return PairTensors(x, x, good, bad)


def test_gating_learns_prompt_dependent_weights_and_is_reproducible() -> None:
    cfg = GatingTrainConfig(hidden_dim=16, n_hidden=1, max_epochs=60, batch_size=64, lr=1e-2, dropout=0.0, patience=60)
    res = train_gating(_pairs(400, 0), _pairs(100, 1), cfg)
    assert res.metrics["val_accuracy"] > 0.8
    with torch.no_grad():
        w = res.network(torch.tensor([[3.0, 0, 0, 0, 0, 0], [-3.0, 0, 0, 0, 0, 0]]))
    assert w[0, 0] > w[0, 1] and w[1, 1] > w[1, 0]  # softmax over objectives, conditioned on the input
    assert torch.allclose(w.sum(1), res.network.logit_scale.detach().expand(2))
    again = train_gating(_pairs(400, 0), _pairs(100, 1), cfg)
    assert again.metrics == res.metrics


def test_equal_gating_is_uniform() -> None:
    net = equal_gating(6, 4, GatingTrainConfig(hidden_dim=8))
    w = net(torch.randn(3, 6))
    assert torch.allclose(w, torch.full((3, 4), 0.25))


def test_uniform_init_starts_at_equal_weights_and_still_learns() -> None:
    frozen = GatingTrainConfig(hidden_dim=16, n_hidden=1, max_epochs=1, lr=0.0, dropout=0.0, init="uniform")
    w0 = train_gating(_pairs(64, 0), _pairs(32, 1), frozen).network(torch.randn(5, 6))
    assert torch.allclose(w0, torch.full((5, 2), 0.5))  # lr 0: still exactly the uniform start
    cfg = GatingTrainConfig(
        hidden_dim=16, n_hidden=1, max_epochs=60, batch_size=64, lr=1e-2, dropout=0.0, patience=60, init="uniform"
    )
    net = train_gating(_pairs(400, 0), _pairs(100, 1), cfg).network
    with torch.no_grad():
        w = net(torch.tensor([[3.0, 0, 0, 0, 0, 0], [-3.0, 0, 0, 0, 0, 0]]))
    assert w[0, 0] > w[0, 1] and w[1, 1] > w[1, 0]
