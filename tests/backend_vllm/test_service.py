"""The service on the vLLM backend: it scores, a heads-only reload reuses the running engine, and an artifact the
engine was not started for gets a new engine (smoke-scored before the swap, as any reload)."""

from __future__ import annotations

from pathlib import Path

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.store import ModelStore
from tests.backend_vllm.conftest import KV_CACHE_GIB, need_vllm
from tests.conftest import make_artifact
from tests.service.conftest import ADMIN_KEY, API_KEY, make_settings, serve

need_vllm()

ITEMS = [
    {"messages": [{"role": "user", "content": "Name a prime number."}], "response": "7 is prime."},
    {"messages": [{"role": "user", "content": "Name a prime number."}], "response": "Nine."},
]


async def test_served_on_vllm_with_a_heads_only_reload(embedded_backbone: Backbone, tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    store.publish(*make_artifact(embedded_backbone, version="v1", seed=0, max_length=512))
    store.publish(*make_artifact(embedded_backbone, version="v2", seed=1, max_length=512), alias=None)
    mean, head = make_artifact(embedded_backbone, version="v3", seed=2, max_length=512)
    store.publish(mean.model_copy(update={"pooling": "mean"}), head, alias=None)
    settings = make_settings(store, backend="vllm", vllm_kv_cache_gib=KV_CACHE_GIB)
    user, admin = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with serve(settings, loader=load_backbone) as (app, client):
        reloader = app.state.services.reloader
        engine = reloader.current.rm.backbone.engine
        assert engine is not None and engine.name == "vllm"
        info = (await client.get("/v1/models", headers=user)).json()
        assert info["loaded"]["backbone"]["backend"] == "vllm"
        first = (await client.post("/v1/score", json={"items": ITEMS}, headers=user)).json()["results"]

        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["backbone_reloaded"] is False
        assert reloader.current.rm.backbone.engine is engine  # the same engine, new heads
        second = (await client.post("/v1/score", json={"items": ITEMS}, headers=user)).json()["results"]
        assert [a["score"] for a in first] != [b["score"] for b in second]

        r = await client.post("/v1/models/reload", json={"version": "v3"}, headers=admin)
        assert r.status_code == 200, r.text
        assert r.json()["backbone_reloaded"] is True  # mean pooling: a new engine
        assert reloader.current.rm.backbone.engine is not engine
        third = await client.post("/v1/score", json={"items": ITEMS}, headers=user)
        assert third.status_code == 200 and len(third.json()["results"]) == 2
