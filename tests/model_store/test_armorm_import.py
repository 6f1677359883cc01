"""Import of the published ArmoRM checkpoint layout, proved against a from-scratch reimplementation of its
published forward pass on a tiny twin of the checkpoint (tests/armorm_twin.py) — our scores equal it within 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from armo.model_store.armorm_import import ARMORM_OBJECTIVES, import_armorm
from armo.model_store.backbone import load_backbone
from armo.model_store.errors import ArtifactError
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from tests.armorm_twin import CONVERSATIONS, build_armorm_twin, published_scores
from tests.conftest import default_scoring


@pytest.fixture(scope="module")
def armorm_dir(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_dir: Path) -> Path:
    return build_armorm_twin(tmp_path_factory.mktemp("armorm-tiny"), llama3_tokenizer_dir)


def test_import_matches_published_forward_pass(armorm_dir: Path, tmp_path: Path) -> None:
    assert len(list(armorm_dir.glob("model-*.safetensors"))) > 1
    manifest, head = import_armorm(armorm_dir, version="t1")
    assert manifest.objective_names == list(ARMORM_OBJECTIVES)
    store = ModelStore(tmp_path)
    store.publish(manifest, head)
    manifest, head = store.load("armorm-llama3-8b")
    backbone = load_backbone(str(armorm_dir))
    rm = RewardModel(backbone, head, manifest, default_scoring(manifest))
    items = [ScoreItem(m, r) for m, r in CONVERSATIONS]
    ours = torch.tensor([r.score for r in rm.score(items)])
    reference = published_scores(armorm_dir, CONVERSATIONS)
    assert reference.std() > 1e-3  # distinct scores, so equality is not vacuous
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_import_refuses_a_plain_llama_directory(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="not an ArmoRM config"):
        import_armorm(tiny_backbone_dir)
    with pytest.raises(ArtifactError, match="missing"):
        import_armorm(tmp_path)
