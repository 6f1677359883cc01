"""Every 4xx path: status, error type and the field it names; never a stack trace."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.store import ModelStore
from armo.service.errors import TABLE, ErrorKind, describe
from tests.service.conftest import AUTH, item, make_settings, serve

Api = tuple[FastAPI, httpx.AsyncClient]
U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello"}


def check(r: httpx.Response, status: int, type_: str, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == type_, err
    assert err["field"] == field, err
    assert err["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    return dict(err)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"items": [{"messages": [{"role": "robot", "content": "x"}], "response": "y"}]}, "items[0].messages[0].role"),
        ({"items": [{"messages": [{"role": "user", "content": ""}], "response": "y"}]}, "items[0].messages[0].content"),
        ({"items": [{"messages": [U], "response": 5}]}, "items[0].response"),
        ({"items": [{"messages": [U]}]}, "items[0].response"),
        ({"items": []}, "items"),
        ({"items": [item()], "colour": "blue"}, "colour"),
        ({"items": [{**item(), "extra": 1}]}, "items[0].extra"),
        ({"items": [{"messages": [U], "prompt": "Hi", "response": "y"}]}, "items[0]"),
        ({"items": [{"response": "y"}]}, "items[0]"),
        ({"items": [item()], "timeout_s": -1}, "timeout_s"),
    ],
)
async def test_schema_errors_name_the_field(api: Api, payload: dict[str, Any], field: str) -> None:
    _, client = api
    check(await client.post("/v1/score", json=payload, headers=AUTH), 422, "validation_error", field)


@pytest.mark.parametrize(
    ("messages", "response", "field"),
    [
        ([U, A], "y", "items[0].messages[1].role"),  # does not end with a user turn
        ([U, {"role": "system", "content": "late"}, U], "y", "items[0].messages[1].role"),  # system not first
        ([{"role": "user", "content": "   "}], "y", "items[0].messages[0].content"),  # blank
        ([], "y", "items[0].messages"),
    ],
)
async def test_conversation_errors_name_the_field(
    api: Api, messages: list[dict[str, str]], response: str, field: str
) -> None:
    """Alone, the bad item is the request's 422; next to a good one, it is that item's error and the other scores."""
    _, client = api
    check(
        await client.post("/v1/score", json={"items": [item(response, messages)]}, headers=AUTH),
        422,
        "input_error",
        field,
    )
    r = await client.post("/v1/score", json={"items": [item("ok"), item(response, messages)]}, headers=AUTH)
    assert r.status_code == 200, r.text
    good, bad = r.json()["results"]
    assert isinstance(good["score"], float) and good["error"] is None
    assert bad["score"] is None and bad["error"] == {
        **bad["error"],
        "type": "input_error",
        "field": field.replace("items[0]", "items[1]"),
    }


async def test_malformed_json_is_400(api: Api) -> None:
    _, client = api
    r = await client.post("/v1/score", content=b'{"items": [', headers={**AUTH, "content-type": "application/json"})
    check(r, 400, "malformed_json", "body")


async def test_limits(tiny_store: ModelStore) -> None:
    settings = make_settings(tiny_store, max_items=2, max_chars=50, max_tokens=40, max_body_bytes=2048)
    async with serve(settings) as (_, client):
        r = await client.post("/v1/score", json={"items": [item()] * 3}, headers=AUTH)
        check(r, 422, "input_error", "items")
        r = await client.post("/v1/score", json={"items": [item("x" * 51)]}, headers=AUTH)
        check(r, 422, "input_error", "items[0].response")
        long_conv = [{"role": "user", "content": "y" * 51}]
        r = await client.post("/v1/score", json={"items": [item("ok", long_conv)]}, headers=AUTH)
        check(r, 422, "input_error", "items[0].messages[0].content")
        r = await client.post("/v1/compare", json={"prompt": "Hi", "responses": ["a", "b", "c"]}, headers=AUTH)
        check(r, 422, "input_error", "responses")

        # Token limit: truncate=false refuses, the default truncates from the start and says so.
        turns = [{"role": "user", "content": "tell me more " * 3}, {"role": "assistant", "content": "sure " * 8}] * 2
        conv = [*turns, {"role": "user", "content": "and?"}]
        r = await client.post("/v1/score", json={"items": [item("fine", conv)], "truncate": False}, headers=AUTH)
        check(r, 422, "input_too_long", "items[0].messages")
        r = await client.post("/v1/score", json={"items": [item("fine", conv)]}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0] == {**r.json()["results"][0], "truncated": True, "tokens": 40}
        # A response that alone passes the limit keeps its start and its end-of-turn token (every rollout is scored).
        r = await client.post("/v1/score", json={"items": [item("🙂" * 30)]}, headers=AUTH)  # 30 chars, 40+ tokens
        assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True
        assert r.json()["results"][0]["tokens"] == 40

        # Body size: by Content-Length, and by the bytes actually sent (chunked, no Content-Length).
        r = await client.post("/v1/score", json={"items": [item("z" * 3000)]}, headers=AUTH)
        check(r, 413, "body_too_large", "body")

        async def chunks() -> Any:
            for _ in range(5):
                yield b" " * 1000

        r = await client.post("/v1/score", content=chunks(), headers={**AUTH, "content-type": "application/json"})
        check(r, 413, "body_too_large", "body")


async def test_compare_and_get_reward_shapes(api: Api) -> None:
    _, client = api
    r = await client.post("/v1/compare", json={"prompt": "Hi", "responses": ["only one"]}, headers=AUTH)
    check(r, 422, "validation_error", "responses")
    bad_conv = {"messages": [U, A], "responses": ["a", "b"]}
    check(await client.post("/v1/compare", json=bad_conv, headers=AUTH), 422, "input_error", "messages[1].role")
    blank = {"items": [{"prompt": "   ", "response": "y"}]}
    check(await client.post("/v1/score", json=blank, headers=AUTH), 422, "input_error", "items[0].prompt")
    r = await client.post("/get_reward", json={"query": []}, headers=AUTH)
    check(r, 422, "validation_error", "query")
    r = await client.post("/get_reward", json={"queries": ["x"]}, headers=AUTH)
    assert r.status_code == 422


async def test_unknown_route_and_method(api: Api) -> None:
    _, client = api
    check(await client.get("/v1/nothing", headers=AUTH), 404, "not_found", None)
    check(await client.get("/v1/score", headers=AUTH), 405, "method_not_allowed", None)


async def test_unknown_version_on_reload_is_404(api: Api) -> None:
    from tests.service.conftest import ADMIN

    _, client = api
    r = await client.post("/v1/models/reload", json={"version": "v404"}, headers=ADMIN)
    check(r, 404, "store_error", "version")


def test_table_orders_subclasses_first_and_hides_unknown_errors() -> None:
    classes = [cls for cls, _ in TABLE]
    for i, cls in enumerate(classes):
        for later in classes[i + 1 :]:
            assert not issubclass(later, cls) or later is cls, f"{later.__name__} is shadowed by {cls.__name__}"
    resp = describe(RuntimeError("secret path /etc/x"), "rid")
    assert resp.status == 500 and resp.body["error"]["message"] == "internal error"
    assert all(isinstance(kind, ErrorKind) and 400 <= kind.status < 600 for _, kind in TABLE)
