"""The versioned store: round trip, refusal of corrupt/partial/foreign artifacts, atomic concurrent publishes."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from armo.cli import app
from armo.model_store.backbone import Backbone
from armo.model_store.errors import ArtifactError, StoreError
from armo.model_store.manifest import HEADS_FILE, MANIFEST_FILE
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from tests.conftest import default_scoring, make_artifact
from tests.model_store.publish_worker import publish_worker

ITEM = ScoreItem([{"role": "user", "content": "Say hi"}], "Hi!")


def test_round_trip_keeps_weights_and_scores(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path)
    manifest, head = make_artifact(tiny_backbone, objectives=("helpfulness", "safety"), rule_objectives=("verbosity",))
    path = store.publish(manifest, head)
    assert sorted(p.name for p in path.iterdir()) == [HEADS_FILE, MANIFEST_FILE]
    loaded_manifest, loaded = store.load("tiny")
    assert loaded_manifest.backbone.id.startswith("../")  # the local backbone, named relative to the store
    same = {"files": True, "backbone": {"id"}}
    assert loaded_manifest.model_dump(exclude=same) == manifest.model_dump(exclude=same)
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a = RewardModel(tiny_backbone, head, manifest, default_scoring(manifest)).score([ITEM])[0].score
    b = RewardModel(tiny_backbone, loaded, loaded_manifest, default_scoring(loaded_manifest)).score([ITEM])[0].score
    assert a == b


def test_flipped_byte_is_refused_naming_the_file(tiny_store: ModelStore) -> None:
    f = tiny_store.version_dir("tiny", "v1") / HEADS_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"heads\.safetensors: sha256 mismatch") as info:
        tiny_store.load("tiny")
    assert info.value.field == HEADS_FILE


def test_missing_file_is_refused(tiny_store: ModelStore) -> None:
    (tiny_store.version_dir("tiny", "v1") / HEADS_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"heads\.safetensors: file listed in the manifest is missing"):
        tiny_store.load("tiny")


def test_missing_manifest_is_refused(tiny_store: ModelStore) -> None:
    (tiny_store.version_dir("tiny", "v1") / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"missing manifest\.json"):
        tiny_store.load("tiny", "v1")


def test_manifest_for_another_hidden_size_is_refused(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path)
    manifest, head = make_artifact(tiny_backbone)
    store.publish(manifest, head)
    path = store.version_dir("tiny", "v1") / MANIFEST_FILE
    data = json.loads(path.read_text())
    data["backbone"]["hidden_size"] = 4096
    path.write_text(json.dumps(data))
    # The manifest itself is not checksummed (it holds the checksums), so the shape check must catch it …
    with pytest.raises(ArtifactError, match="weights do not match the manifest"):
        store.load("tiny")
    # … and an artifact built for another backbone is refused by the compatibility check.
    other = manifest.model_copy(update={"backbone": manifest.backbone.model_copy(update={"hidden_size": 64})})
    with pytest.raises(ArtifactError, match="expects hidden size 64"):
        RewardModel(tiny_backbone, head, other, default_scoring(other))
    foreign = manifest.model_copy(update={"backbone": manifest.backbone.model_copy(update={"template_hash": "0" * 64})})
    with pytest.raises(ArtifactError, match="another tokenizer/chat template"):
        RewardModel(tiny_backbone, head, foreign, default_scoring(foreign))


def test_promote_and_rollback(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path)
    for i, version in enumerate(("v1", "v2", "v3")):
        store.publish(*make_artifact(tiny_backbone, version=version, seed=i))
    assert store.versions("tiny") == ["v1", "v2", "v3"]
    assert store.resolve("tiny") == "v3"
    assert store.rollback("tiny") == "v2"
    assert store.rollback("tiny") == "v1"
    with pytest.raises(StoreError, match="no previous version"):
        store.rollback("tiny")
    store.promote("tiny", "v3", "canary")
    assert store.aliases("tiny") == {"canary": "v3", "current": "v1"}
    with pytest.raises(StoreError, match="already exists"):
        store.publish(*make_artifact(tiny_backbone, version="v2"))
    with pytest.raises(StoreError, match="no version or alias"):
        store.resolve("tiny", "v9")


def test_promote_refuses_a_corrupt_version(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path)
    store.publish(*make_artifact(tiny_backbone, version="v1"))
    store.publish(*make_artifact(tiny_backbone, version="v2"), alias=None)
    (store.version_dir("tiny", "v2") / HEADS_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError):
        store.promote("tiny", "v2")
    assert store.resolve("tiny") == "v1"


def test_concurrent_publishes_never_leave_partial_versions(tmp_path: Path, tiny_backbone: Backbone) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    artifacts = [
        make_artifact(tiny_backbone, version=v, seed=s)
        for v, s in (("same", 1), ("same", 2), ("other", 3), ("other", 4))
    ]
    procs = [ctx.Process(target=publish_worker, args=(str(tmp_path), m, h, barrier)) for m, h in artifacts]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = ModelStore(tmp_path)
    assert store.versions("tiny") == ["other", "same"]
    assert not [p.name for p in (tmp_path / "tiny").iterdir() if p.name.startswith(".tmp")]
    for version in store.versions("tiny"):
        store.load("tiny", version)  # complete and consistent: checksums verify
    assert store.resolve("tiny") in {"same", "other"}
    alias = json.loads((tmp_path / "tiny" / "aliases" / "current.json").read_text())
    assert set(alias["history"]) <= {"same", "other"}


def test_store_cli(tiny_store: ModelStore) -> None:
    runner = CliRunner()
    root = ["--root", str(tiny_store.root)]
    result = runner.invoke(app, ["store", "list", *root])
    assert result.exit_code == 0 and "tiny" in result.output and "current" in result.output
    result = runner.invoke(app, ["store", "verify", "tiny", *root])
    assert result.exit_code == 0 and "ok" in result.output
    result = runner.invoke(app, ["store", "show", "tiny", "v1", *root])
    assert result.exit_code == 0 and json.loads(result.output)["version"] == "v1"
    (tiny_store.version_dir("tiny", "v1") / HEADS_FILE).write_bytes(b"x")
    result = runner.invoke(app, ["store", "verify", "tiny", *root])
    assert result.exit_code == 1 and "sha256 mismatch" in result.output


def test_duplicate_objective_names_are_refused(tiny_backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="unique"):
        make_artifact(tiny_backbone, objectives=("safety", "verbosity"), rule_objectives=("verbosity",))


def test_paths_outside_the_version_folder_are_refused(tiny_store: ModelStore, tmp_path: Path) -> None:
    """A symlinked version folder is neither listed nor loaded; a manifest may only list plain files of its folder;
    messages name files relative to the store, never by absolute path."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tiny_store.root / "tiny" / "v9").symlink_to(outside)
    assert "v9" not in tiny_store.versions("tiny")
    with pytest.raises(ArtifactError, match="symbolic link"):
        tiny_store.load("tiny", "v9")

    path = tiny_store.version_dir("tiny", "v1") / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["files"]["../../../../etc/hostname"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain file") as info:
        tiny_store.verify("tiny", "v1")
    assert str(tiny_store.root) not in info.value.message and info.value.field == "files"
