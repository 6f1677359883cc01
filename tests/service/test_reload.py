"""Hot reload: readiness, zero failed requests under traffic, in-flight requests keep their version, refusals."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from armo.model_store.backbone import Backbone
from armo.model_store.manifest import HEADS_FILE
from armo.model_store.store import ModelStore
from tests.conftest import make_artifact
from tests.service.conftest import (
    ADMIN,
    AUTH,
    CountingLoader,
    Gate,
    current_rm,
    item,
    make_settings,
    serve,
    services,
    wait_until,
)


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_ready_is_503_until_the_model_is_loaded(tiny_store: ModelStore) -> None:
    release = threading.Event()
    counting = CountingLoader()

    def slow_loader(spec: str, **kwargs: Any) -> Backbone:  # a slow disk, at the process boundary
        assert release.wait(30)
        return counting(spec, **kwargs)

    async with serve(make_settings(tiny_store), loader=slow_loader, wait_ready=False) as (app, client):
        assert (await client.get("/health")).status_code == 200
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["message"] == "no model loaded"
        r = await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
        assert r.status_code == 503 and r.json()["error"]["type"] == "model_not_loaded"
        assert (await client.get("/v1/models", headers=AUTH)).json()["loaded"] is None
        release.set()
        await wait_until(lambda: services(app).reloader.current is not None)
        assert (await client.get("/ready")).json()["version"] == "v1"
        assert (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).status_code == 200


async def test_missing_store_starts_and_is_not_ready(tmp_path: Path) -> None:
    settings = make_settings(ModelStore(tmp_path / "absent"), model="armo-smollm2")
    async with serve(settings, wait_ready=False) as (app, client):
        await wait_until(lambda: services(app).reloader.last is not None)
        r = await client.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["message"] == "no model loaded"
        models = (await client.get("/v1/models", headers=AUTH)).json()
        assert models["loaded"] is None and models["last_reload"]["result"] == "failure"
        assert models["store"]["versions"] == []


async def test_hot_reload_under_traffic_via_the_watcher(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    """Four clients score continuously while v2 (heads only) is promoted: no failure, the version switches,
    and the backbone is not loaded a second time."""
    loader = CountingLoader()
    settings = make_settings(tiny_store, watch_interval_s=0.05)
    async with serve(settings, loader=loader) as (_, client):
        stop = asyncio.Event()
        seen: list[tuple[int, str]] = []

        async def traffic(n: int) -> None:
            while not stop.is_set():
                r = await client.post("/v1/score", json={"items": [item(f"answer {n}")]}, headers=AUTH)
                seen.append((r.status_code, r.json().get("version", r.text)))

        clients = [asyncio.create_task(traffic(n)) for n in range(4)]
        await wait_until(lambda: len(seen) >= 8)
        manifest, head = make_artifact(tiny_backbone, version="v2", seed=1)
        tiny_store.publish(manifest, head)  # promotes `current` → v2
        await wait_until(lambda: any(v == "v2" for _, v in seen[-4:]) and seen[-1][1] == "v2")
        after = len(seen)
        await wait_until(lambda: len(seen) >= after + 8)
        stop.set()
        await asyncio.gather(*clients)
        assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
        versions = [v for _, v in seen]
        first_v2 = versions.index("v2")
        assert set(versions[:first_v2]) == {"v1"}
        assert set(versions[first_v2 + 4 :]) == {"v2"}  # at most the 4 in-flight requests finish on v1
        assert loader.calls == [loader.calls[0]]  # one backbone load: the heads-only update reused it
        status = (await client.get("/v1/models", headers=AUTH)).json()["last_reload"]
        assert status["result"] == "success" and status["version"] == "v2" and status["backbone_reloaded"] is False
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, "armo_reloads_total", result="success") == 2.0
        assert sample(metrics, "armo_model_info", version="v2") == 1.0


async def test_in_flight_request_finishes_on_its_version(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    async with serve(make_settings(tiny_store)) as (app, client):
        gate = Gate(current_rm(app))
        try:
            pending = asyncio.create_task(client.post("/v1/score", json={"items": [item()]}, headers=AUTH))
            await gate.wait_entered()
            tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=2))
            # Loads run on the one torch thread (app.py says why), so the reload queues behind the forward pass.
            reload = asyncio.create_task(client.post("/v1/models/reload", headers=ADMIN))
            await asyncio.sleep(0.2)
            assert not reload.done() and current_rm(app).version == "v1"
            gate.release()
            old = await pending
            r = await reload
            assert r.status_code == 200 and r.json()["version"] == "v2"
        finally:
            gate.restore()
        assert old.status_code == 200 and old.json()["version"] == "v1"
        new = await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
        assert new.json()["version"] == "v2"
        assert new.json()["results"][0]["score"] != old.json()["results"][0]["score"]


async def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(
    tiny_store: ModelStore, tiny_backbone: Backbone
) -> None:
    async with serve(make_settings(tiny_store, watch_interval_s=0.05)) as (app, client):
        before = (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).json()
        tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=3), alias=None)
        heads = tiny_store.version_dir("tiny", "v2") / HEADS_FILE
        tiny_store.promote("tiny", "v2")  # promote verifies, so corrupt it afterwards (bit rot, a bad copy)
        data = bytearray(heads.read_bytes())
        data[-1] ^= 0xFF
        heads.write_bytes(bytes(data))
        await wait_until(lambda: getattr(services(app).reloader.last, "version", None) == "v2")
        r = await client.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["type"] == "artifact_refused"
        assert "sha256" in r.json()["error"]["message"] and r.json()["error"]["field"] == HEADS_FILE
        after = await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
        assert after.status_code == 200 and after.json() == before
        models = (await client.get("/v1/models", headers=AUTH)).json()
        assert models["loaded"]["version"] == "v1"
        assert models["last_reload"]["result"] == "failure" and models["last_reload"]["version"] == "v2"
        assert "sha256" in models["last_reload"]["error"]
        metrics = (await client.get("/metrics")).text
        assert sample(metrics, "armo_reloads_total", result="failure") == 2.0  # watcher once, admin once
        assert sample(metrics, "armo_reload_last_failed") == 1.0
        assert sample(metrics, "armo_model_info", version="v1") == 1.0
        assert (await client.get("/ready")).status_code == 200


async def test_incompatible_backbone_is_refused(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    manifest, head = make_artifact(tiny_backbone, version="v2")
    foreign = manifest.model_copy(update={"backbone": manifest.backbone.model_copy(update={"template_hash": "0" * 64})})
    tiny_store.publish(foreign, head, alias=None)
    async with serve(make_settings(tiny_store)) as (_, client):
        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["field"] == "backbone.template_hash"
        assert (await client.get("/ready")).json()["version"] == "v1"


async def test_admin_reload_to_a_pinned_version_and_back(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=4), alias=None)
    async with serve(make_settings(tiny_store)) as (_, client):
        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=ADMIN)
        assert r.json() == {**r.json(), "result": "success", "version": "v2", "backbone_reloaded": False}
        assert (await client.get("/ready")).json()["version"] == "v2"
        r = await client.post("/v1/models/reload", headers=ADMIN)  # the configured alias: still v1
        assert r.json()["version"] == "v1"
        scored = await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
        assert scored.json()["version"] == "v1"


async def test_reload_http_client_errors_do_not_leak(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store)) as (_, client):
        r = await client.post("/v1/models/reload", json={"version": "../etc"}, headers=ADMIN)
        assert r.status_code == 404 and "Traceback" not in r.text
        r = await client.post("/v1/models/reload", json={"version": 3}, headers=ADMIN)
        assert r.status_code == 422
        assert isinstance(r, httpx.Response)


async def test_a_new_backbone_is_loaded_when_the_artifact_names_one(
    tiny_store: ModelStore, other_backbone: Backbone
) -> None:
    loader = CountingLoader()
    async with serve(make_settings(tiny_store), loader=loader) as (_, client):
        tiny_store.publish(*make_artifact(other_backbone, version="v2"))
        r = await client.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 200 and r.json()["backbone_reloaded"] is True
        assert loader.calls[1] == other_backbone.id and len(loader.calls) == 2
        models = (await client.get("/v1/models", headers=AUTH)).json()
        assert models["loaded"]["backbone"]["hidden_size"] == 48
        assert (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).json()["version"] == "v2"


async def test_a_version_that_cannot_score_fails_the_smoke_test(
    tiny_store: ModelStore, tiny_backbone: Backbone
) -> None:
    import torch

    manifest, head = make_artifact(tiny_backbone, version="v2")
    with torch.no_grad():
        head.regression.weight.fill_(float("nan"))  # checksums fine, compatible, but scores NaN
    tiny_store.publish(manifest, head, alias=None)
    async with serve(make_settings(tiny_store)) as (_, client):
        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=ADMIN)
        assert r.status_code == 409 and "smoke test" in r.json()["error"]["message"]
        assert (await client.get("/ready")).json()["version"] == "v1"


async def test_packed_setting_reaches_the_backbone_and_both_paths_agree(tiny_store: ModelStore) -> None:
    items = [item(response="Paris."), item(response="It is Paris, the capital, on the Seine.")]
    scores = {}
    for packed in (True, False):
        async with serve(make_settings(tiny_store, packed=packed), loader=CountingLoader()) as (app, client):
            assert current_rm(app).backbone.packed is packed
            r = await client.post("/v1/score", json={"items": items}, headers=AUTH)
            assert r.status_code == 200
            scores[packed] = [x["score"] for x in r.json()["results"]]
    assert scores[True] == pytest.approx(scores[False], abs=1e-5)
    assert scores[True][0] != pytest.approx(scores[True][1], abs=1e-3)  # the two responses differ: not vacuous
