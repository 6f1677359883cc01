"""`load_reward_model`: the one way from a store to a RewardModel, on a real tiny backbone loaded from disk."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.errors import ArtifactError
from armo.model_store.loader import load_reward_model
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.conftest import default_scoring, make_artifact

ITEM = ScoreItem([{"role": "user", "content": "Name a prime."}], "7 is prime.")
SETTINGS = Settings.model_construct()


class CountingLoader:
    def __init__(self) -> None:
        self.specs: list[str] = []

    def __call__(self, spec: str, **kwargs: Any) -> Backbone:
        self.specs.append(spec)
        return load_backbone(spec, **kwargs)


def test_loads_the_artifact_on_its_backbone_and_reuses_one_that_fits(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path / "store")
    manifest, head = make_artifact(tiny_backbone)
    store.publish(manifest, head)
    loader = CountingLoader()
    rm = load_reward_model(
        store, "tiny", "current", SETTINGS.backbone_options(), SETTINGS.scoring_config, loader=loader
    )
    assert loader.specs == [manifest.backbone.id] and rm.version == "v1"
    assert rm.config == default_scoring(manifest)
    direct = RewardModel(tiny_backbone, head, manifest, default_scoring(manifest))
    assert rm.score([ITEM])[0].score == pytest.approx(direct.score([ITEM])[0].score, abs=1e-5)

    # A heads-only update on the same backbone: no second load.
    store.publish(make_artifact(tiny_backbone, version="v2", seed=1)[0], make_artifact(tiny_backbone, seed=1)[1])
    again = load_reward_model(
        store, "tiny", "v2", SETTINGS.backbone_options(), SETTINGS.scoring_config, reuse=rm.backbone, loader=loader
    )
    assert again.backbone is rm.backbone and again.version == "v2" and len(loader.specs) == 1


def test_another_revision_is_refused_unless_the_backbone_is_overridden(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path / "store")
    manifest, head = make_artifact(tiny_backbone)
    moved = manifest.model_copy(update={"backbone": manifest.backbone.model_copy(update={"revision": "0" * 64})})
    store.publish(moved, head)
    options, loader = SETTINGS.backbone_options(), CountingLoader()
    with pytest.raises(ArtifactError, match="now has revision") as e:
        load_reward_model(
            store, "tiny", "current", options, SETTINGS.scoring_config, reuse=tiny_backbone, loader=loader
        )
    assert e.value.field == "backbone.revision" and len(loader.specs) == 1  # not reused: the revision differs
    # An operator's explicit backbone (ARMO_BACKBONE) is taken as given, and reused.
    override = replace(options, override=manifest.backbone.id)
    rm = load_reward_model(store, "tiny", "current", override, SETTINGS.scoring_config, reuse=tiny_backbone)
    assert rm.backbone is tiny_backbone


def test_a_version_trained_on_a_local_backbone_moves_with_it(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    """`armo train` publishes with the backbone it loaded from a directory: the store records that directory by
    its path relative to the store root, never by this machine's absolute path, so the store and the checkpoint
    moved together (one volume mounted elsewhere) still load and score the same."""
    shutil.copytree(tiny_backbone_dir, tmp_path / "vol" / "models" / "tiny")
    backbone = load_backbone(str(tmp_path / "vol" / "models" / "tiny"))
    store = ModelStore(tmp_path / "vol" / "store")
    manifest, head = make_artifact(backbone)
    store.publish(manifest, head)
    assert store.read_manifest("tiny", "v1").backbone.id == "../models/tiny"
    assert str(tmp_path) not in (store.version_dir("tiny", "v1") / "manifest.json").read_text()
    before = RewardModel(backbone, head, manifest, default_scoring(manifest)).score([ITEM])[0].score

    (tmp_path / "vol").rename(tmp_path / "mounted")
    moved = ModelStore(tmp_path / "mounted" / "store")
    loader = CountingLoader()
    rm = load_reward_model(
        moved, "tiny", "current", SETTINGS.backbone_options(), SETTINGS.scoring_config, loader=loader
    )
    assert loader.specs == [str((tmp_path / "mounted" / "models" / "tiny").resolve())]
    assert rm.score([ITEM])[0].score == pytest.approx(before, abs=1e-6)
