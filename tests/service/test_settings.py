"""The one settings class: environment parsing, validation with clear errors, and `armo serve` refusing bad ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

from armo.model_store.backbone import Backbone
from armo.model_store.bundled import BUNDLED_ROOT
from armo.model_store.store import ModelStore
from armo.service.app import batcher_config
from armo.service.app import limits as request_limits
from armo.settings import Settings
from tests.conftest import make_artifact
from tests.live import API_KEY, armo_server


def test_defaults_serve_the_bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ARMO_STORE_ROOT", raising=False)
    s = Settings()
    assert (s.store_root, s.model, s.alias, s.backbone) == (BUNDLED_ROOT, "armo-smollm2", "current", None)
    assert (s.host, s.port, s.device, s.dtype) == ("127.0.0.1", 8000, "cpu", "auto")
    assert s.api_keys == [] and s.admin_key is None


def test_settings_build_every_part_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts' configs have no defaults of their own: what they hold comes from Settings (and its variables)."""
    monkeypatch.setenv("ARMO_MAX_BATCH_ITEMS", "5")
    monkeypatch.setenv("ARMO_MAX_PASS_TOKENS", "777")
    monkeypatch.setenv("ARMO_MAX_TOKENS", "300")
    monkeypatch.setenv("ARMO_MAX_WAIT_MS", "20")
    s = Settings()
    batcher, limits, scoring = batcher_config(s), request_limits(s), s.scoring_config(2048)
    assert (batcher.max_items, batcher.max_tokens, batcher.max_wait_s) == (5, s.max_batch_tokens, 0.02)
    assert (limits.max_items, limits.request_timeout_s) == (s.max_items, s.request_timeout_s)
    assert (scoring.forward.tokens, scoring.forward.rows, scoring.max_length) == (777, s.max_pass_rows, 300)
    assert s.scoring_config(256).max_length == 256  # never above the manifest's max_length
    options = s.backbone_options()
    assert (options.override, options.device, options.vllm) == (None, "cpu", None)


def test_settings_import_nothing_above_them_and_no_torch() -> None:
    """Settings sit under the service and batch: importing them loads neither the service nor torch."""
    code = (
        "import armo.settings, sys; "
        "bad = [m for m in sys.modules if m.startswith('armo.service') or m == 'torch']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_environment_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMO_API_KEYS", "first-key-123, second-key-456")
    monkeypatch.setenv("ARMO_ADMIN_KEY", "admin-key-789")
    monkeypatch.setenv("ARMO_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("ARMO_WATCH_INTERVAL_S", "0")
    s = Settings()
    assert s.api_key_values() == ["first-key-123", "second-key-456"]
    assert s.max_batch_items == 7 and s.watch_interval_s == 0  # the variable's earlier name is still read
    assert "admin-key-789" not in repr(s) and "first-key-123" not in repr(s)  # secrets stay hidden
    monkeypatch.setenv("ARMO_API_KEYS", '["json-key-0001"]')
    assert Settings().api_key_values() == ["json-key-0001"]


@pytest.mark.parametrize(
    ("env", "value", "words"),
    [
        ("ARMO_DEVICE", "tpu", "device"),
        ("ARMO_DTYPE", "float16", "no fast CPU path"),
        ("ARMO_MAX_BATCH_SIZE", "0", "greater than or equal"),
        ("ARMO_API_KEYS", "short", "at least 8"),
        ("ARMO_PORT", "70000", "less than or equal"),
        ("ARMO_QUANTIZE", "fp4", "none"),
    ],
)
def test_bad_values_are_refused_clearly(monkeypatch: pytest.MonkeyPatch, env: str, value: str, words: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError, match=words):
        Settings()


def test_armo_serve_reports_bad_settings_without_a_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from armo.service.cli import serve

    app = typer.Typer()
    app.command()(serve)
    monkeypatch.setenv("ARMO_DEVICE", "tpu")
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert "ARMO_DEVICE" in result.output and "Traceback" not in result.output


def test_int8_is_refused_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARMO_QUANTIZE", "int8")
    assert Settings().quantize == "int8"
    monkeypatch.setenv("ARMO_DEVICE", "cuda")
    monkeypatch.setenv("ARMO_DTYPE", "bfloat16")
    with pytest.raises(ValidationError, match="CPU only"):
        Settings()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed in this Python")
def test_armo_serve_without_vllm_names_the_setting_and_the_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer

    from armo.service.cli import serve

    app = typer.Typer()
    app.command()(serve)
    monkeypatch.setenv("ARMO_BACKEND", "vllm")
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2, result.output
    assert "ARMO_BACKEND" in result.output and "scripts/setup-vllm.sh" in result.output
    assert "Traceback" not in result.output


def test_armo_serve_model_names_an_artifact_a_model_folder_or_a_model(tmp_path: Path, tiny_store: ModelStore) -> None:
    from armo.service.cli import model_settings

    root = tiny_store.root.resolve()
    assert model_settings(None) == {}
    assert model_settings(str(root / "tiny" / "v1")) == {"store_root": root, "model": "tiny", "alias": "v1"}
    assert model_settings(f"{root / 'tiny'}@v1") == {"store_root": root, "model": "tiny", "alias": "v1"}
    assert model_settings(str(root / "tiny")) == {"store_root": root, "model": "tiny"}
    assert model_settings("armo-smollm2@v0.3.0") == {"model": "armo-smollm2", "alias": "v0.3.0"}
    with pytest.raises(typer.BadParameter, match="no artifact, model folder or checkpoint there"):
        model_settings(str(tmp_path / "nowhere" / "tiny"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    # a checkpoint directory is imported (tests/service/test_serve_model.py); one that is not ArmoRM's is refused
    with pytest.raises(typer.BadParameter, match=r"ckpt.*not an ArmoRM config, missing num_objectives"):
        model_settings(str(tmp_path / "ckpt"), tmp_path / "cache")


def test_armo_serve_takes_the_model_and_the_precision_on_the_command_line(
    tmp_path: Path, tiny_store: ModelStore, tiny_backbone: Backbone
) -> None:
    """A real `armo serve STORE/tiny@v1 --dtype float32` process: the arguments win over ARMO_MODEL / ARMO_DTYPE
    (and over the alias, which points at v2)."""
    tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=1))
    args = (f"{tiny_store.root}/tiny@v1", "--dtype", "float32", "--device", "cpu")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with armo_server(tiny_store, tmp_path, args=args, ARMO_MODEL="elsewhere", ARMO_DTYPE="bogus") as server:
        info = httpx.get(f"{server.url}/v1/models", headers=auth).json()
        item = {"messages": [{"role": "user", "content": "Hi"}], "response": "Hello."}
        scored = httpx.post(f"{server.url}/v1/score", json={"items": [item]}, headers=auth).json()
    assert (info["loaded"]["model"], info["loaded"]["version"]) == ("tiny", "v1")
    assert scored["version"] == "v1" and isinstance(scored["results"][0]["score"], float)
    assert info["loaded"]["backbone"]["precision"] == "float32"
