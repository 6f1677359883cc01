"""Hostile input and admin mistakes that used to hurt other callers: each test fails on the code before the fix.

- steering weights the worker cannot compute with are refused up front (they used to fail a merged batch: 500 for
  every request in it), and a batch that fails is retried request by request, so only the culprit fails;
- masking every objective is a 422, not a silent score of 0;
- a lone surrogate echoed in an error message used to fail the error response itself (500, request_id null);
- an admin pin used to be undone by the watcher within a tick; a copied version folder was reloaded forever;
  an unknown admin name overwrote `last_reload`; a 405 had no `Allow`.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.backbone import Backbone
from armo.model_store.errors import ArtifactError
from armo.model_store.store import ModelStore
from tests.conftest import make_artifact
from tests.service.conftest import (
    ADMIN,
    AUTH,
    current_rm,
    item,
    make_settings,
    poisoned,
    serve,
    services,
    wait_until,
)

Api = tuple[FastAPI, httpx.AsyncClient]


@pytest.mark.parametrize("weight", [1e300, 3.4e38, 1e7])
async def test_weights_the_worker_cannot_compute_with_are_refused(api: Api, weight: float) -> None:
    _, client = api
    body = {"items": [item()], "weights": {"helpfulness": weight}}
    r = await client.post("/v1/score", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "weights" and "1e+06" in r.json()["error"]["message"]


async def test_a_failing_batch_is_retried_request_by_request(tiny_store: ModelStore) -> None:
    """Two requests merged into one batch; the forward pass fails on one request's input: the other is scored."""
    async with serve(make_settings(tiny_store, max_batch_items=8, max_wait_ms=300)) as (app, client):
        with poisoned(current_rm(app)) as merged:
            bad, good = await asyncio.gather(
                client.post("/v1/score", json={"items": [item("poison")]}, headers=AUTH),
                client.post("/v1/score", json={"items": [item("fine"), item("also fine")]}, headers=AUTH),
            )
        assert merged[0] == 3, merged  # they really were one batch
        assert bad.status_code == 500 and bad.json()["error"]["type"] == "batch_failed"
        assert good.status_code == 200 and len(good.json()["results"]) == 2


async def test_masking_every_objective_is_refused(api: Api) -> None:
    app, client = api
    names = current_rm(app).objectives
    r = await client.post("/v1/score", json={"items": [item()], "mask": list(names)}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "mask"
    body = {"items": [item()], "weights": {names[0]: 1.0}, "mask": [names[0]]}  # the one weighted one masked
    r = await client.post("/v1/score", json=body, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "mask"


async def test_a_lone_surrogate_gets_a_json_error_with_its_request_id(api: Api) -> None:
    _, client = api
    raw = b'{"items": [{"prompt": "Hi", "response": "Hello"}], "mask": ["\\ud800"]}'
    r = await client.post("/v1/score", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "mask" and err["request_id"] == r.headers["x-request-id"]
    assert "\\ud800" in err["message"]  # echoed, escaped


async def test_405_names_the_allowed_methods(api: Api) -> None:
    _, client = api
    r = await client.get("/v1/score", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_an_admin_pin_holds_until_the_alias_moves(tiny_store: ModelStore, tiny_backbone: Backbone) -> None:
    tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=4), alias=None)
    async with serve(make_settings(tiny_store, watch_interval_s=0.05)) as (app, client):
        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=ADMIN)
        assert r.status_code == 200 and r.json()["version"] == "v2"
        await asyncio.sleep(0.5)  # ten watcher ticks
        assert (await client.get("/ready")).json()["version"] == "v2"
        tiny_store.publish(*make_artifact(tiny_backbone, version="v3", seed=5))  # the alias moves: followed again
        await wait_until(
            lambda: services(app).reloader.current is not None and services(app).reloader.current.version == "v3"
        )
        r = await client.post("/v1/models/reload", json={"version": ""}, headers=ADMIN)
        assert r.status_code == 422  # an empty name is not "the alias"


async def test_unknown_admin_names_leave_last_reload_alone(api: Api) -> None:
    _, client = api
    before = (await client.get("/v1/models", headers=AUTH)).json()["last_reload"]
    r = await client.post("/v1/models/reload", json={"version": "nope-1"}, headers=ADMIN)
    assert r.status_code == 404
    assert (await client.get("/v1/models", headers=AUTH)).json()["last_reload"] == before


async def test_a_copied_version_folder_is_refused_once(tiny_store: ModelStore) -> None:
    """`cp -r v1 v8` and the alias pointed at v8: the manifest still says v1. `armo store promote` refuses it; a
    hand-edited alias gets it refused by the service once, not reloaded on every watcher tick."""
    shutil.copytree(tiny_store.version_dir("tiny", "v1"), tiny_store.version_dir("tiny", "v8"))
    with pytest.raises(ArtifactError, match="manifest says tiny/v1"):
        tiny_store.promote("tiny", "v8")
    async with serve(make_settings(tiny_store)) as (app, client):
        alias = tiny_store.root / "tiny" / "aliases" / "current.json"
        alias.write_text(json.dumps({"version": "v8", "history": ["v1"]}))
        reloader = services(app).reloader
        for _ in range(3):  # three watcher ticks
            await reloader.check()
        assert reloader.last is not None and reloader.last.result == "failure" and reloader.last.version == "v8"
        assert "manifest says" in (reloader.last.error or "") and str(tiny_store.root) not in (
            reloader.last.error or ""
        )
        metrics = (await client.get("/metrics")).text
        assert 'armo_reloads_total{result="failure"} 1.0' in metrics  # once, not once per tick
        assert reloader.current is not None and reloader.current.version == "v1"
        assert (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).status_code == 200


async def test_the_openapi_schema_states_exactly_one_of_messages_or_prompt(api: Api) -> None:
    _, client = api
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    for name in ("ScoreInput", "CompareRequest"):
        assert schemas[name]["oneOf"] == [{"required": ["messages"]}, {"required": ["prompt"]}], name


@pytest.mark.parametrize(
    "raw",
    [b'{"items": [{"prompt": "\xff\xfe", "response": "x"}]}', b'{"items": ' + b"[" * 5000 + b"]" * 5000 + b"}"],
    ids=["invalid-utf8", "nested-5000-deep"],
)
async def test_undecodable_bodies_are_malformed_json_with_a_request_id(api: Api, raw: bytes) -> None:
    _, client = api
    r = await client.post("/v1/score", content=raw, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code in (400, 422), r.text
    err = r.json()["error"]
    assert err["type"] in ("malformed_json", "validation_error") and err["field"] and err["request_id"]
