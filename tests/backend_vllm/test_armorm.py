"""The ArmoRM checkpoint on vLLM: `armo store import-armorm`'s artifact, served with its backbone on vLLM, gives the
published forward pass's scores (on a tiny twin of the checkpoint: tests/armorm_twin.py)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from armo.model_store.armorm_import import import_armorm
from armo.model_store.backbone import load_backbone
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from tests.armorm_twin import CONVERSATIONS, build_armorm_twin, published_scores
from tests.backend_vllm.conftest import KV_CACHE_GIB, need_vllm, options
from tests.conftest import default_scoring
from tests.live import armo_server
from tests.service.conftest import API_KEY

need_vllm()


def test_armorm_twin_on_vllm_equals_the_published_forward(
    tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_dir: Path, tmp_path: Path
) -> None:
    # vLLM's CPU attention needs a real head size (64), not the 8 of the import test's twin.
    twin = build_armorm_twin(
        tmp_path_factory.mktemp("armorm-vllm"), llama3_tokenizer_dir, hidden_size=128, heads=2, kv_heads=1
    )
    manifest, head = import_armorm(twin, version="t1", max_length=512)
    store = ModelStore(tmp_path)
    store.publish(manifest, head)
    manifest, head = store.load("armorm-llama3-8b")
    cache = tmp_path / "cache"
    backbone = load_backbone(str(twin), cache_dir=cache, vllm=options("last", 512))
    # vLLM got a view of the checkpoint: a plain causal-LM config and the backbone's tensors only.
    [view] = (cache / "vllm").iterdir()
    assert '"LlamaForCausalLM"' in (view / "config.json").read_text()
    rm = RewardModel(backbone, head, manifest, default_scoring(manifest))
    ours = torch.tensor([r.score for r in rm.score([ScoreItem(m, r) for m, r in CONVERSATIONS])])
    reference = published_scores(twin, CONVERSATIONS)
    assert reference.std() > 1e-3
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)


def test_armo_serve_a_checkpoint_directory_on_vllm(
    tmp_path_factory: pytest.TempPathFactory, llama3_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """The one command that serves a published ArmoRM checkpoint (`armo serve DIR --backend vllm`), on its tiny twin:
    imported on the fly, the backbone on vLLM, the published forward's scores over HTTP."""
    twin = build_armorm_twin(
        tmp_path_factory.mktemp("armorm-serve"), llama3_tokenizer_dir, hidden_size=128, heads=2, kv_heads=1
    )
    args = (str(twin), "--backend", "vllm", "--dtype", "float32")  # fp32: the reference forward's precision
    env = {"ARMO_CACHE_DIR": str(tmp_path / "cache"), "ARMO_VLLM_KV_CACHE_GIB": str(KV_CACHE_GIB)}
    with armo_server(ModelStore(tmp_path / "unused"), tmp_path, args=args, **env) as server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        items = [{"messages": m, "response": r} for m, r in CONVERSATIONS]
        models = httpx.get(f"{server.url}/v1/models", headers=headers, timeout=30).json()
        assert models["loaded"]["backbone"]["backend"] == "vllm"
        r = httpx.post(f"{server.url}/v1/score", json={"items": items}, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        ours = torch.tensor([x["score"] for x in r.json()["results"]])
    reference = published_scores(twin, CONVERSATIONS)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
