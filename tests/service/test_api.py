"""Every endpoint through the real ASGI app with the tiny real model; scores checked against RewardModel itself."""

from __future__ import annotations

import math

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.reward_model import ScoreItem
from tests.service.conftest import AUTH, CONV, current_rm, item

Api = tuple[FastAPI, httpx.AsyncClient]


async def test_score_matches_the_model_in_order(api: Api) -> None:
    app, client = api
    responses = ["Paris.", "It is Lyon, obviously, and everyone knows it.", "Paris, on the Seine."]
    r = await client.post("/v1/score", json={"items": [item(x) for x in responses]}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("tiny", "v1")
    assert r.headers["x-request-id"]
    direct = current_rm(app).score([ScoreItem(CONV, x) for x in responses])
    assert [x["score"] for x in body["results"]] == pytest.approx([x.score for x in direct], abs=1e-5)
    assert [x["tokens"] for x in body["results"]] == [x.tokens for x in direct]
    assert all(x["truncated"] is False and x["objectives"] is None for x in body["results"])


async def test_score_prompt_shorthand_and_return_objectives(api: Api) -> None:
    app, client = api
    r = await client.post(
        "/v1/score",
        json={"items": [{"prompt": "Hi", "response": "Hello!"}], "return_objectives": True},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    [direct] = current_rm(app).score([ScoreItem([{"role": "user", "content": "Hi"}], "Hello!")], detail=True)
    assert res["score"] == direct.score
    assert res["objectives"] == direct.rewards
    assert list(res["objectives"]) == ["helpfulness", "correctness", "safety", "verbosity"]


async def test_batch_invariance_across_requests(api: Api) -> None:
    """The same item scored alone and merged with longer ones (padding) gives the same score."""
    _, client = api
    alone = (await client.post("/v1/score", json={"items": [item("Paris.")]}, headers=AUTH)).json()
    many = [item("Paris.")] + [item("word " * n) for n in (5, 40, 90)]
    mixed = (await client.post("/v1/score", json={"items": many}, headers=AUTH)).json()
    assert abs(alone["results"][0]["score"] - mixed["results"][0]["score"]) < 1e-5


async def test_explain_contributions_sum_to_score(api: Api) -> None:
    _, client = api
    items = [item("Paris."), item("Marseille, I think, but I am not sure at all.")]
    scored = (await client.post("/v1/score", json={"items": items}, headers=AUTH)).json()["results"]
    r = await client.post("/v1/explain", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["objectives"] == ["helpfulness", "correctness", "safety", "verbosity"]
    for ex, sc in zip(body["results"], scored, strict=True):
        assert abs(sum(ex["contributions"].values()) - sc["score"]) < 1e-5
        assert abs(ex["score"] - sc["score"]) < 1e-5
        for name in body["objectives"]:
            assert abs(ex["weights"][name] * ex["debiased"][name] - ex["contributions"][name]) < 1e-5
        penalty = sum(ex["weights"][n] * (ex["rewards"][n] - ex["debiased"][n]) for n in body["objectives"])
        assert abs(ex["verbosity_penalty"] - penalty) < 1e-5
        top = ex["top_contributors"]
        assert len(top) == 3
        assert [abs(t["contribution"]) for t in top] == sorted(abs(v) for v in ex["contributions"].values())[::-1][:3]
        assert ex["steered"] is False


async def test_steering_with_the_gating_weights_reproduces_the_score(api: Api) -> None:
    _, client = api
    ex = (await client.post("/v1/explain", json={"items": [item()]}, headers=AUTH)).json()["results"][0]
    score = (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).json()["results"][0]["score"]
    steered = await client.post("/v1/score", json={"items": [item()], "weights": ex["weights"]}, headers=AUTH)
    assert steered.status_code == 200, steered.text
    assert abs(steered.json()["results"][0]["score"] - score) < 1e-5


async def test_steering_weights_and_mask_change_the_mixture(api: Api) -> None:
    _, client = api
    only = await client.post("/v1/explain", json={"items": [item()], "weights": {"safety": 2.0}}, headers=AUTH)
    res = only.json()["results"][0]
    assert res["steered"] is True
    assert res["weights"] == {"helpfulness": 0.0, "correctness": 0.0, "safety": 2.0, "verbosity": 0.0}
    assert abs(res["score"] - 2.0 * res["debiased"]["safety"]) < 1e-5

    base = (await client.post("/v1/explain", json={"items": [item()]}, headers=AUTH)).json()["results"][0]
    masked = await client.post("/v1/explain", json={"items": [item()], "mask": ["safety"]}, headers=AUTH)
    m = masked.json()["results"][0]
    assert m["weights"]["safety"] == 0.0
    assert abs(sum(m["weights"].values()) - sum(base["weights"].values())) < 1e-5  # β kept


async def test_steering_unknown_objective_is_422_naming_it(api: Api) -> None:
    _, client = api
    r = await client.post("/v1/score", json={"items": [item()], "weights": {"humour": 1.0}}, headers=AUTH)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "weights" and "humour" in err["message"]
    r = await client.post("/v1/score", json={"items": [item()], "mask": ["nope"]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "mask" and "nope" in r.json()["error"]["message"]
    r = await client.post("/v1/score", json={"items": [item()], "weights": {"safety": -1.0}}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "weights"


async def test_compare_ranks_and_gives_bradley_terry_probabilities(api: Api) -> None:
    _, client = api
    responses = ["Paris.", "Lyon.", "The capital of France is Paris, a city on the Seine."]
    r = await client.post("/v1/compare", json={"messages": CONV, "responses": responses}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    scored = (await client.post("/v1/score", json={"items": [item(x) for x in responses]}, headers=AUTH)).json()
    assert body["scores"] == pytest.approx([x["score"] for x in scored["results"]], abs=1e-5)
    assert sorted(body["ranking"]) == [0, 1, 2]
    assert [body["scores"][i] for i in body["ranking"]] == sorted(body["scores"], reverse=True)
    assert body["best"] == body["ranking"][0]
    assert len(body["pairwise"]) == 3
    for pair in body["pairwise"]:
        diff = body["scores"][pair["a"]] - body["scores"][pair["b"]]
        assert abs(pair["p_a_over_b"] - 1 / (1 + math.exp(-diff))) < 1e-9
        assert (pair["p_a_over_b"] > 0.5) == (diff > 0)


async def test_get_reward_equals_v1_score(api: Api) -> None:
    app, client = api
    tok = current_rm(app).backbone.tokenizer
    convs = [
        (CONV, "Paris."),
        ([{"role": "user", "content": "Hi"}], "Hello! How can I help?"),  # the template adds its default system
        (
            [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": "and 3+3?"},
            ],
            "6",
        ),
    ]
    texts = [
        str(tok.apply_chat_template([*m, {"role": "assistant", "content": resp}], tokenize=False)) for m, resp in convs
    ]
    texts[1] = texts[1].rstrip()  # clients often strip the trailing newline
    r = await client.post("/get_reward", json={"query": texts}, headers=AUTH)
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    scored = await client.post("/v1/score", json={"items": [item(resp, m) for m, resp in convs]}, headers=AUTH)
    assert rewards == pytest.approx([x["score"] for x in scored.json()["results"]], abs=1e-5)


async def test_get_reward_refuses_text_from_another_template(api: Api) -> None:
    app, client = api
    r = await client.post("/get_reward", json={"query": ["User: hi\nAssistant: hello"]}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "query[0]"
    # Well-formed template, but no user turn before the response: the conversation rule names the text.
    tok = current_rm(app).backbone.tokenizer
    text = str(
        tok.apply_chat_template(
            [{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}], tokenize=False
        )
    )
    r = await client.post("/get_reward", json={"query": [text]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "query[0]"
    assert "user turn" in r.json()["error"]["message"]


async def test_models_health_ready_openapi(api: Api) -> None:
    _, client = api
    r = await client.get("/v1/models", headers=AUTH)
    assert r.status_code == 200
    body = r.json()
    assert body["loaded"]["version"] == "v1"
    assert [o["name"] for o in body["loaded"]["objectives"]] == ["helpfulness", "correctness", "safety", "verbosity"]
    assert body["loaded"]["backbone"]["hidden_size"] == 32
    assert body["loaded"]["pooling"] == "last"  # not set by the tiny artifact: the default
    assert body["store"] == {"model": "tiny", "alias": "current", "versions": ["v1"], "aliases": {"current": "v1"}}
    assert body["last_reload"]["result"] == "success"
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": "tiny", "version": "v1"}
    spec = (await client.get("/openapi.json")).json()
    for path in ("/v1/score", "/v1/explain", "/v1/compare", "/v1/models", "/v1/models/reload", "/get_reward"):
        assert path in spec["paths"], path
    assert spec["components"]["schemas"]["ScoreRequest"]["additionalProperties"] is False
