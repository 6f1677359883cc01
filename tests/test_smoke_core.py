from armo.model_store.backbone import Backbone
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore


def test_tiny_store_scores(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    manifest, head = tiny_store.load("tiny")
    rm = RewardModel(tiny_backbone, head, manifest)
    out = rm.score([ScoreItem([{"role": "user", "content": "Hi"}], "Hello there")], detail=True)
    assert len(out) == 1 and out[0].tokens > 5
    assert abs(sum(out[0].contributions.values()) - out[0].score) < 1e-5
