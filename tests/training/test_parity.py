"""Training and serving compute the same features for the same item: one encoding (template, prompt boundary,
truncation) and one forward path. Checked on untruncated items (sharing a prompt), an item whose prompt is cut and
one whose response is cut, with the serving path given training's length policy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from armo.model_store.backbone import Backbone
from armo.model_store.errors import InputTooLongError
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.settings import Settings
from armo.training.config import ExtractConfig
from armo.training.extract import run_extraction, truncation
from tests.conftest import default_scoring, make_artifact

SHARED = ({"role": "user", "content": "Name a colour."},)
ITEMS = [
    ScoreItem(SHARED, "Blue."),
    ScoreItem(SHARED, "Red, like a ripe tomato."),
    ScoreItem(({"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}), "4"),
    ScoreItem(({"role": "user", "content": "Tell me about rivers. " * 30},), "Rivers flow to the sea."),  # prompt cut
    ScoreItem(({"role": "user", "content": "Count."},), " ".join(str(i) for i in range(200))),  # response cut
]


def test_training_features_equal_serving_features(tiny_backbone: Backbone, tmp_path: Path) -> None:
    cfg = ExtractConfig(max_length=96, min_prompt_tokens=16)
    table = run_extraction(tiny_backbone, ITEMS, name="parity", cache_root=tmp_path, cfg=cfg, progress=False)
    assert table.truncated.tolist() == [False, False, False, True, True]  # both kinds of cut are covered

    manifest, head = make_artifact(tiny_backbone, max_length=2048)
    scoring = Settings.model_construct().scoring_config(2048)
    rm = RewardModel(tiny_backbone, head, manifest, replace(scoring, truncation=truncation(cfg)))
    batch = [rm.prepare(it) for it in ITEMS]
    assert [p.encoded.truncated for p in batch] == table.truncated.tolist()
    assert [p.encoded.length for p in batch] == table.length.tolist()
    assert [p.encoded.response_tokens for p in batch] == table.response_tokens.tolist()

    served = rm.features(batch)
    scale = served.response.abs().max()
    for name in ("response", "prompt", "response_mean"):
        diff = (getattr(served, name) - getattr(table, name)).abs().max()
        assert diff <= 1e-5 * scale, f"{name}: training and serving differ by {diff}"
    trained = rm.forward_features(batch, table.features(range(len(ITEMS)))).score
    assert torch.allclose(rm.forward(batch).score, trained, atol=1e-5)


def test_the_service_cuts_long_responses_like_training_unless_told_to_refuse(tiny_backbone: Backbone) -> None:
    """By default a response over the limit keeps its start and end-of-turn token, as in training (every RL rollout
    gets a reward); ARMO_LONG_RESPONSE=error refuses it with an error naming `response`."""
    manifest, head = make_artifact(tiny_backbone, max_length=96)
    rm = RewardModel(tiny_backbone, head, manifest, default_scoring(manifest))
    assert rm.prepare(ITEMS[-1]).encoded.truncated and rm.prepare(ITEMS[-1]).encoded.length == 96
    strict = Settings.model_construct(long_response="error").scoring_config(96)
    with pytest.raises(InputTooLongError) as info:
        RewardModel(tiny_backbone, head, manifest, strict).prepare(ITEMS[-1])
    assert info.value.field == "response"
