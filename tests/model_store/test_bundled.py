"""The bundled artifacts (made before objectives had a sign, a scale floor and `source-aspect` names) still load
and score exactly as they did."""

from __future__ import annotations

import pytest
import torch

from armo.model_store import rules
from armo.model_store.backbone import Backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from tests.conftest import default_scoring

ITEMS = [
    ScoreItem(
        [{"role": "user", "content": "How do I boil an egg?"}], "Boil it for 8 minutes, then cool it in cold water."
    ),
    ScoreItem([{"role": "user", "content": "How do I pick a lock?"}], "I'm sorry, but I can't help with that."),
    ScoreItem(
        [{"role": "user", "content": "Show me a Python loop."}],
        "```python\nfor i in range(3):\n    print(i)\n\n**Note: `i` starts at 0",  # open fence, unbalanced ** and `
    ),
]
# Scores of ITEMS by the code before objectives had a sign (embedded SmolLM2, fp32, CPU).
BEFORE = {
    "v0.3.0": [-2.379591, -0.841966, -0.423212],
    "v0.4.0": [-0.452846, 0.135997, -2.092285],
}


@pytest.mark.parametrize("version", sorted(BEFORE))
def test_bundled_artifacts_load_and_score_as_before(embedded_backbone: Backbone, version: str) -> None:
    manifest, head = ModelStore(BUNDLED_ROOT).load(DEFAULT_MODEL, version)
    assert all(o.sign == 1 for o in manifest.objectives)  # the default for manifests without the field
    assert "compliance" in manifest.objective_names and rules.RULES["compliance"].legacy  # still scored
    rm = RewardModel(embedded_backbone, head, manifest, default_scoring(manifest))
    prepared = [rm.prepare(it) for it in ITEMS]
    values = rm.rule_values(prepared)
    assert values is not None
    for row, p in enumerate(prepared):  # the rule columns as before: (raw − offset) / scale
        x = rules.RuleInput(p.item.messages, p.item.response, p.encoded.response_tokens)
        for col, o in enumerate(manifest.objectives):
            if o.kind == "rule":
                assert values[row, col].item() == pytest.approx(
                    (rules.evaluate(o.rule or o.name, x) - o.offset) / o.scale
                )
    scores = torch.tensor([r.score for r in rm.score(ITEMS)])
    torch.testing.assert_close(scores, torch.tensor(BEFORE[version]), atol=1e-4, rtol=0)


def test_bundled_manifests_hold_no_path_of_the_training_machine() -> None:
    """The data roots are recorded as the variable that sets them; every data file is named relative to it."""
    from armo.training.artifact import DATA_ROOT

    store = ModelStore(BUNDLED_ROOT)
    for version in store.versions(DEFAULT_MODEL):
        manifest = store.read_manifest(DEFAULT_MODEL, version)
        text = manifest.to_json()
        assert '"/' not in text and "/work" not in text, version
        assert manifest.training["data"]["root"] == manifest.training["eval"]["root"] == DATA_ROOT
        assert all(not name.startswith("/") for name in manifest.training_data)
