"""`armo serve MODEL` in a real process for each kind of MODEL: an artifact folder, a model name@version of the
configured store, an ArmoRM-style checkpoint directory (imported once into the cache store) — each answering
/v1/score — and a bad path refused with its name and a non-zero exit. The checkpoint's import is reused while the
checkpoint is unchanged, wherever it is mounted, and never records the checkpoint's absolute path."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer

from armo.model_store.armorm_import import DEFAULT_MODEL, IMPORTS_DIR, import_cached
from armo.model_store.backbone import Backbone
from armo.model_store.loader import load_reward_model
from armo.model_store.reward_model import ScoreItem
from armo.model_store.store import ModelStore
from armo.service.cli import model_settings
from armo.settings import Settings
from tests.armorm_twin import CONVERSATIONS, build_armorm_twin
from tests.conftest import make_artifact
from tests.live import API_KEY, ROOT, armo_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ITEM = {"messages": [{"role": "user", "content": "What is 2+2?"}], "response": "4"}


@pytest.fixture(scope="module")
def armorm_dir(tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_dir: Path) -> Path:
    return build_armorm_twin(tmp_path_factory.mktemp("armorm-serve") / "ArmoRM-tiny", llama3_tokenizer_dir)


def _score(url: str) -> dict[str, object]:
    r = httpx.post(f"{url}/v1/score", json={"items": [ITEM]}, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _numeric(body: dict[str, object]) -> float:
    [result] = body["results"]  # type: ignore[misc]
    score = result["score"]
    assert isinstance(score, float) and math.isfinite(score), result
    return score


@pytest.mark.parametrize("form", ["artifact folder", "name@version"])
def test_serve_an_artifact_folder_and_a_name_at_version(
    form: str, tmp_path: Path, tiny_store: ModelStore, tiny_backbone: Backbone
) -> None:
    """v2 is published without moving the alias (`current` → v1): serving v2 proves MODEL chose it."""
    tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=1), alias=None)
    arg = str(tiny_store.root / "tiny" / "v2") if form == "artifact folder" else "tiny@v2"
    with armo_server(tiny_store, tmp_path, args=(arg,), ARMO_MODEL="elsewhere") as server:
        body = _score(server.url)
    assert body["version"] == "v2"
    _numeric(body)


def test_serve_an_armorm_checkpoint_directory(tmp_path: Path, armorm_dir: Path) -> None:
    """`armo serve CHECKPOINT_DIR`: imported into ARMO_CACHE_DIR's store, served with the directory as backbone."""
    cache = tmp_path / "cache"
    unused = ModelStore(tmp_path / "no-store")  # ARMO_STORE_ROOT / ARMO_MODEL point elsewhere: MODEL wins
    with armo_server(unused, tmp_path, args=(str(armorm_dir),), ARMO_CACHE_DIR=str(cache)) as server:
        body = _score(server.url)
        info = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()
    _numeric(body)
    store = ModelStore(cache / IMPORTS_DIR)
    [version] = store.versions(DEFAULT_MODEL)
    assert (info["loaded"]["model"], info["loaded"]["version"]) == (DEFAULT_MODEL, version)
    backbone_id = store.read_manifest(DEFAULT_MODEL, version).backbone.id
    assert backbone_id.startswith("../") and str(tmp_path) not in backbone_id  # never the absolute path


def test_serve_refuses_a_bad_path_naming_it(tmp_path: Path) -> None:
    # COLUMNS: typer's error box would otherwise fold a long path across lines
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ARMO_CACHE_DIR": str(tmp_path / "cache"), "COLUMNS": "500"}
    cases = {
        tmp_path / "no" / "such" / "model": "no artifact, model folder or checkpoint there",
        tmp_path / "plain": "not an ArmoRM config",  # a config.json that is no ArmoRM checkpoint
    }
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text('{"model_type": "llama"}')
    for path, words in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "armo.cli", "serve", str(path), "--port", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode != 0
        assert words in proc.stderr and str(path) in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "cache" / IMPORTS_DIR).exists()  # nothing half-imported


def test_a_checkpoint_is_imported_once_and_still_loads_when_moved(tmp_path: Path, armorm_dir: Path) -> None:
    """The same checkpoint, passed again or copied elsewhere and passed from there, is served from the first import
    (keyed by its revision), its backbone loaded from where it is now; a changed checkpoint is imported anew."""
    cache = tmp_path / "cache"
    first = model_settings(str(armorm_dir), cache)
    again = model_settings(str(armorm_dir), cache)
    assert first == again and first["backbone"] == str(armorm_dir.resolve())
    heads = Path(first["store_root"]) / first["model"] / first["alias"] / "heads.safetensors"
    written = heads.stat().st_mtime_ns

    moved = shutil.copytree(armorm_dir, tmp_path / "elsewhere" / "mounted-here")
    there = model_settings(str(moved), cache)
    assert {k: v for k, v in there.items() if k != "backbone"} == {k: v for k, v in first.items() if k != "backbone"}
    assert there["backbone"] == str(moved.resolve()) and heads.stat().st_mtime_ns == written  # not imported again

    def score(values: dict[str, object]) -> float:
        settings = Settings(**values)  # what `armo serve` builds from MODEL
        rm = load_reward_model(
            ModelStore(settings.store_root),
            settings.model,
            settings.alias,
            settings.backbone_options(),
            settings.scoring_config,
        )
        assert rm.backbone.id == values["backbone"]
        messages, response = CONVERSATIONS[0]
        return rm.score([ScoreItem(messages, response)])[0].score

    assert score(there) == pytest.approx(score(first), abs=1e-6)

    changed = shutil.copytree(armorm_dir, tmp_path / "changed")
    config = changed / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "gating_temperature": 5}))
    assert model_settings(str(changed), cache)["alias"] != first["alias"]
    assert len(ModelStore(cache / IMPORTS_DIR).versions(DEFAULT_MODEL)) == 2


def test_checkpoint_argument_errors_name_the_path(tmp_path: Path, armorm_dir: Path) -> None:
    with pytest.raises(typer.BadParameter, match="drop @v1"):
        model_settings(f"{armorm_dir}@v1", tmp_path)
    assert import_cached(armorm_dir, tmp_path) == import_cached(armorm_dir, tmp_path)
