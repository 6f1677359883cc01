"""The heads' math (DESIGN.md §2) and the reward model's explain / steering outputs."""

from __future__ import annotations

import pytest
import torch

from armo.model_store.backbone import Backbone
from armo.model_store.errors import InputError
from armo.model_store.heads import ArmoHead, GatingConfig, GatingNetwork, debias_matrix
from armo.model_store.manifest import Objective
from armo.model_store.reward_model import RewardModel, ScoreItem, Steering
from tests.conftest import default_scoring, make_artifact


def test_gating_softmax_is_over_objectives_and_scaled_by_beta() -> None:
    torch.manual_seed(0)
    net = GatingNetwork(8, 5, GatingConfig(hidden_dim=16, n_hidden=3, temperature=10.0, logit_scale_init=2.5))
    assert len(net.layers) == 4
    g = net(torch.randn(3, 8))
    assert g.shape == (3, 5)
    torch.testing.assert_close(g.sum(dim=1), torch.full((3,), 2.5))
    # temperature: logits / τ then softmax
    x = torch.randn(3, 8)
    torch.testing.assert_close(net(x), torch.softmax(net.logits(x) / 10.0, dim=1) * 2.5)


def test_debias_matrix_subtracts_lambda_times_verbosity_and_zeroes_it() -> None:
    lam = torch.tensor([0.5, 0.0, 2.0, 9.0])
    t = debias_matrix(lam, verbosity_index=3)
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(r @ t.T, torch.tensor([[1.0 - 2.0, 2.0, 3.0 - 8.0, 0.0]]))


def test_explain_decomposes_the_score() -> None:
    torch.manual_seed(1)
    head = ArmoHead(8, 4, GatingConfig(hidden_dim=8, n_hidden=1))
    with torch.no_grad():
        head.transform.copy_(debias_matrix(torch.tensor([0.3, 0.1, 0.0, 0.0]), 3))
        head.bias.normal_()
    h, p = torch.randn(5, 8), torch.randn(5, 8)
    ex = head.explain(h, p)
    torch.testing.assert_close(ex.rewards, h @ head.regression.weight.T + head.bias)
    torch.testing.assert_close(ex.debiased, ex.rewards @ head.transform.T)
    torch.testing.assert_close(ex.contributions.sum(dim=1), ex.score)
    torch.testing.assert_close(ex.score, (ex.weights * ex.debiased).sum(dim=1))
    torch.testing.assert_close(ex.verbosity_penalty, (ex.weights * (ex.rewards - ex.debiased)).sum(dim=1))
    torch.testing.assert_close(head(h, p), ex.score)
    # the gating sees the prompt feature only by default, the response feature in the rule-based variant
    torch.testing.assert_close(ex.weights, head.gating(p))
    head_r = ArmoHead(8, 4, GatingConfig(hidden_dim=8, n_hidden=1, input="response"))
    head_r.load_state_dict(head.state_dict())
    torch.testing.assert_close(head_r.explain(h, p).weights, head.gating(h))


ITEMS = [
    ScoreItem([{"role": "user", "content": "How do I boil an egg?"}], "Put it in boiling water for 8 minutes."),
    ScoreItem([{"role": "user", "content": "How do I boil an egg?"}], "No."),
]


@pytest.fixture
def rm(tiny_backbone: Backbone) -> RewardModel:
    manifest, head = make_artifact(
        tiny_backbone, objectives=("helpfulness", "correctness", "safety"), rule_objectives=("verbosity",)
    )
    with torch.no_grad():
        head.regression.weight[-1] = 0.0  # a rule objective has no learned row
    return RewardModel(tiny_backbone, head, manifest, default_scoring(manifest))


def test_rule_objective_enters_standardised(rm: RewardModel) -> None:
    out = rm.score(ITEMS, detail=True)
    bias = rm.head.bias[rm.objectives.index("verbosity")].item()
    for item, res in zip(ITEMS, out, strict=True):
        tokens = rm.prepare(item).encoded.response_tokens
        assert res.rewards["verbosity"] == pytest.approx(bias + tokens / 100.0, abs=1e-5)  # scale 100 in the manifest
        assert abs(sum(res.contributions.values()) - res.score) < 1e-5
    assert out[0].rewards["verbosity"] > out[1].rewards["verbosity"]


def test_a_rule_with_sign_minus_one_is_minus_the_rule(tiny_backbone: Backbone) -> None:
    """r = sign · (raw − offset) / scale: `rule-compliance` (refusal, sign −1) is exactly −`rule-refusal`."""
    manifest, head = make_artifact(tiny_backbone, objectives=("helpfulness",))
    refusal = Objective(name="rule-refusal", kind="rule", source="rules", rule="refusal", offset=0.1, scale=0.3)
    compliance = refusal.model_copy(update={"name": "rule-compliance", "sign": -1})
    manifest = manifest.model_copy(update={"objectives": (*manifest.objectives, refusal, compliance)})
    head = ArmoHead(tiny_backbone.hidden_size, 3, manifest.gating_config())
    with torch.no_grad():
        head.regression.weight[1:] = 0.0  # rule objectives have no learned row and no bias
        head.bias[1:] = 0.0
    rm = RewardModel(tiny_backbone, head, manifest, default_scoring(manifest))
    items = [*ITEMS, ScoreItem(ITEMS[0].messages, "I'm sorry, but I can't help with that.")]
    values = rm.rule_values([rm.prepare(it) for it in items])
    assert values is not None
    torch.testing.assert_close(values[:, 2], -values[:, 1])
    torch.testing.assert_close(values[:, 1], (torch.tensor([0.0, 0.0, 1.0]) - 0.1) / 0.3)
    for res in rm.score(items, detail=True):
        assert res.rewards["rule-compliance"] == pytest.approx(-res.rewards["rule-refusal"], abs=1e-6)


def test_steering_with_the_gating_weights_reproduces_the_score(rm: RewardModel) -> None:
    base = rm.score(ITEMS, detail=True)
    for item, res in zip(ITEMS, base, strict=True):
        steered = rm.score([item], steering=Steering(weights=res.weights))[0]
        assert steered.score == pytest.approx(res.score, abs=1e-5)
    only = rm.score(ITEMS, steering=Steering(weights={"safety": 1.0}), detail=True)
    for res in only:
        assert res.score == pytest.approx(res.debiased["safety"], abs=1e-6)
        assert res.weights["helpfulness"] == 0.0


def test_mask_switches_objectives_off_and_keeps_total_weight(rm: RewardModel) -> None:
    base = rm.score(ITEMS, detail=True)
    masked = rm.score(ITEMS, steering=Steering(mask=("helpfulness", "verbosity")), detail=True)
    for b, m in zip(base, masked, strict=True):
        assert m.weights["helpfulness"] == 0.0 and m.weights["verbosity"] == 0.0
        assert sum(m.weights.values()) == pytest.approx(sum(b.weights.values()), abs=1e-5)
        assert m.score != pytest.approx(b.score)


@pytest.mark.parametrize(
    ("steering", "field", "match"),
    [
        (Steering(weights={"nonsense": 1.0}), "weights", "unknown objective"),
        (Steering(mask=("nope",)), "mask", "unknown objective"),
        (Steering(weights={"safety": -1.0}), "weights", "between 0 and"),
        (Steering(weights={"safety": 0.0}), "weights", "positive"),
    ],
)
def test_bad_steering_is_an_input_error(rm: RewardModel, steering: Steering, field: str, match: str) -> None:
    with pytest.raises(InputError, match=match) as info:
        rm.steer(steering)
    assert info.value.field == field


def test_batch_invariance_of_scores(rm: RewardModel) -> None:
    items = [*ITEMS, ScoreItem([{"role": "user", "content": "Hi " * 30}], "Hello " * 20)]
    together = [r.score for r in rm.score(items)]
    alone = [rm.score([it])[0].score for it in items]
    assert together == pytest.approx(alone, abs=1e-5)
    assert len(set(together)) == 3
