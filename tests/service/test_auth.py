"""API keys on /v1 and /get_reward, a separate admin key, configurable ops routes; keys never logged."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.store import ModelStore
from tests.service.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH, item, make_settings, serve

Api = tuple[FastAPI, httpx.AsyncClient]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/score", {"items": [item()]}),
        ("POST", "/v1/explain", {"items": [item()]}),
        ("POST", "/v1/compare", {"prompt": "Hi", "responses": ["a", "b"]}),
        ("GET", "/v1/models", None),
        ("POST", "/get_reward", {"query": ["x"]}),
    ],
)
async def test_api_routes_need_a_valid_key(api: Api, method: str, path: str, body: object) -> None:
    _, client = api
    for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": API_KEY}):
        r = await client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    r = await client.request(method, path, json=body, headers=AUTH)
    assert r.status_code in (200, 422), r.text  # authenticated (get_reward's "x" is not a templated text)


async def test_ops_routes_open_by_default(api: Api) -> None:
    _, client = api
    for path in ("/health", "/ready", "/metrics"):
        assert (await client.get(path)).status_code == 200, path


async def test_ops_routes_can_require_a_key(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, auth_health=True, auth_metrics=True)) as (_, client):
        for path in ("/health", "/ready", "/metrics"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=AUTH)).status_code == 200, path


async def test_reload_needs_the_admin_key(api: Api) -> None:
    _, client = api
    assert (await client.post("/v1/models/reload")).status_code == 401
    r = await client.post("/v1/models/reload", headers=AUTH)  # a valid API key is not an admin key
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden"
    assert (await client.post("/v1/models/reload", headers={"Authorization": "Bearer nope-nope"})).status_code == 401
    r = await client.post("/v1/models/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["result"] == "unchanged"


async def test_admin_disabled_without_admin_key(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, admin_key=None)) as (_, client):
        r = await client.post("/v1/models/reload", headers=ADMIN)
        assert r.status_code == 403 and "ARMO_ADMIN_KEY" in r.json()["error"]["message"]


async def test_no_keys_configured_means_open(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, api_keys=[])) as (_, client):
        assert (await client.post("/v1/score", json={"items": [item()]})).status_code == 200


async def test_keys_are_never_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    _, client = api
    with caplog.at_level(logging.DEBUG):
        await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
        await client.post("/v1/score", json={"items": [item()]}, headers={"Authorization": "Bearer leaked-key-42"})
        await client.post("/v1/models/reload", headers=ADMIN)
    access = [r for r in caplog.records if getattr(r, "event", None) == "access"]
    assert len(access) == 3
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    for secret in (API_KEY, ADMIN_KEY, "leaked-key-42"):
        assert secret not in text
