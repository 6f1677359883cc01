"""Import of the published ArmoRM checkpoint layout, proved against a from-scratch reimplementation of its
published forward pass on a tiny twin of the checkpoint (tests/armorm_twin.py) — our scores equal it within 1e-5.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from armo.model_store.armorm_import import ARMORM_OBJECTIVES, DEFAULT_MODEL, import_armorm
from armo.model_store.backbone import load_backbone
from armo.model_store.errors import ArtifactError
from armo.model_store.loader import BackboneOptions, load_reward_model
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.armorm_twin import CONVERSATIONS, build_armorm_twin, published_scores
from tests.conftest import default_scoring

SETTINGS = Settings.model_construct()


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


def _score(store: ModelStore, version: str, options: BackboneOptions) -> float:
    rm = load_reward_model(store, DEFAULT_MODEL, version, options, SETTINGS.scoring_config)
    messages, response = CONVERSATIONS[1]
    return rm.score([ScoreItem(messages, response)])[0].score


def test_the_backbone_is_named_relative_to_the_store_not_by_its_absolute_path(armorm_dir: Path, tmp_path: Path) -> None:
    """A store and its checkpoint moved together (one volume, mounted elsewhere) still load; a checkpoint moved alone
    is refused naming the manifest's id and how to name it, and loads once named (ARMO_BACKBONE); a manifest written
    before, with the checkpoint's absolute path, still loads."""
    from armo.cli import app

    volume = tmp_path / "volume"
    ckpt = shutil.copytree(armorm_dir, volume / "checkpoints" / "armorm")
    store = ModelStore(volume / "store")
    args = ["store", "import-armorm", str(ckpt), "--root", str(store.root), "--version", "t1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = store.read_manifest(DEFAULT_MODEL, "t1")
    assert manifest.backbone.id == "../checkpoints/armorm" and str(tmp_path) not in manifest.to_json()
    options = SETTINGS.backbone_options()
    before = _score(store, "t1", options)

    mounted = Path(shutil.move(volume, tmp_path / "mounted"))
    assert _score(ModelStore(mounted / "store"), "t1", options) == pytest.approx(before, abs=1e-6)

    alone = Path(shutil.move(mounted / "checkpoints", tmp_path / "elsewhere")) / "armorm"
    store = ModelStore(mounted / "store")
    with pytest.raises(
        ArtifactError, match=r"\.\./checkpoints/armorm \(relative to the store root\).*ARMO_BACKBONE"
    ) as e:
        _score(store, "t1", options)
    assert e.value.field == "backbone.id"
    assert _score(store, "t1", replace(options, override=str(alone))) == pytest.approx(before, abs=1e-6)

    _, head = store.load(DEFAULT_MODEL, "t1")
    absolute = manifest.backbone.model_copy(update={"id": str(alone.resolve())})
    store.publish(manifest.model_copy(update={"version": "t0", "backbone": absolute}), head)
    assert _score(store, "t0", options) == pytest.approx(before, abs=1e-6)
