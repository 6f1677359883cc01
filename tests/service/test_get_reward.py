"""OpenRLHF's remote reward-model protocol on /get_reward, every version since 0.5, with the real templates of five
policy families: each reward equals /v1/score of the same (conversation, response); cut-off and empty generations
are scored; one bad rollout never costs the others theirs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.service.conftest import AUTH, CONV, item
from tests.service.policy_templates import POLICIES, Policy, render

Api = tuple[FastAPI, httpx.AsyncClient]
TURNS = [{"role": "user", "content": "Name a colour."}]
GENERATIONS = ["Green, like grass.", "Blue, because the sky is", ""]  # finished, cut off at the limit, empty


def _prompt(policy: Policy) -> tuple[list[dict[str, str]], str]:
    messages = [{"role": "system", "content": "Be terse."}, *TURNS] if policy.system else list(TURNS)
    return messages, render(policy, messages, add_generation_prompt=True)


async def _v1_scores(client: httpx.AsyncClient, pairs: list[tuple[list[dict[str, str]], str]]) -> list[float]:
    body = {"items": [{"messages": m, "response": r} for m, r in pairs]}
    r = await client.post("/v1/score", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return [x["score"] for x in r.json()["results"]]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
async def test_openrlhf_06_protocol_equals_v1_score(api: Api, policy: Policy) -> None:
    """0.6+: query = prompt + generation (EOS kept by 0.6–0.9, dropped by vLLM in 0.10), prompts, labels."""
    _, client = api
    messages, prompt = _prompt(policy)
    endings = [policy.eos, "", ""]  # a finished generation with its EOS; a cut-off one; an empty one
    queries = [prompt + g + end for g, end in zip(GENERATIONS, endings, strict=True)]
    body = {"query": queries, "prompts": [prompt] * 3, "labels": ["", "", ""], "return_extra": True}  # unknown key
    r = await client.post("/get_reward", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()
    want = await _v1_scores(client, [(messages, g) for g in GENERATIONS])
    assert got["rewards"] == pytest.approx(want, abs=1e-5)
    assert got["scores"] == got["rewards"]
    assert got["unterminated"] == [False, True, True]
    assert got["extra_logs"]["unterminated"] == [0.0, 1.0, 1.0] and got["errors"] is None
    assert {"helpfulness", "truncated"} <= set(got["extra_logs"])


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
async def test_openrlhf_05_protocol_query_only(api: Api, policy: Policy) -> None:
    _, client = api
    messages, _ = _prompt(policy)
    queries = [render(policy, [*messages, {"role": "assistant", "content": g}]) for g in GENERATIONS]
    r = await client.post("/get_reward", json={"query": queries}, headers=AUTH)
    assert r.status_code == 200, r.text
    want = await _v1_scores(client, [(messages, g) for g in GENERATIONS])
    assert r.json()["rewards"] == pytest.approx(want, abs=1e-5)


async def test_a_whole_rollout_batch_in_one_request(api: Api) -> None:
    """OpenRLHF 0.8–0.9 send a rollout batch at once: 1,024 queries are one request."""
    _, client = api
    policy = POLICIES[0]
    messages, prompt = _prompt(policy)
    generations = [f"Colour number {i % 7}." for i in range(1024)]
    body = {"query": [prompt + g + policy.eos for g in generations], "prompts": [prompt] * 1024}
    r = await client.post("/get_reward", json=body, headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    rewards = r.json()["rewards"]
    assert len(rewards) == 1024 and all(isinstance(x, float) for x in rewards)
    want = await _v1_scores(client, [(messages, g) for g in generations[:7]])
    assert [rewards[i] for i in range(7)] == pytest.approx(want, abs=1e-5)
    assert rewards[7:14] == pytest.approx(rewards[:7], abs=1e-5)  # same generation, same reward, anywhere in the batch


async def test_one_poisoned_rollout_among_100_costs_only_itself(api: Api) -> None:
    _, client = api
    items: list[dict[str, Any]] = [item(f"Paris, answer {i}.") for i in range(100)]
    items[37] = {"messages": [*CONV, {"role": "assistant", "content": "not a user turn"}], "response": "x"}
    r = await client.post("/v1/score", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sum(x["score"] is not None for x in results) == 99
    assert results[37]["score"] is None and results[37]["error"]["field"] == f"items[37].messages[{len(CONV)}].role"

    policy = POLICIES[1]
    _, prompt = _prompt(policy)
    blank = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n   <|eot_id|>"
    blank += "<|start_header_id|>assistant<|end_header_id|>\n\nhi"
    queries = [prompt + f"Colour {i}" for i in range(100)]
    queries[5] = blank  # a rollout whose prompt has an empty user turn
    r = await client.post("/get_reward", json={"query": queries}, headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["rewards"][5] is None and got["errors"][5]["field"] == "query[5]"
    assert sum(x is not None for x in got["rewards"]) == 99
    assert got["extra_logs"]["helpfulness"][5] is None and got["extra_logs"]["helpfulness"][4] is not None


async def test_only_a_text_without_turns_is_refused(api: Api) -> None:
    _, client = api
    r = await client.post("/get_reward", json={"query": ["User: hi\nAssistant: hello"]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "query[0]"
    r = await client.post("/get_reward", json={"query": ["a", "b"], "prompts": ["a"]}, headers=AUTH)
    assert r.status_code == 422 and "prompts" in r.json()["error"]["message"]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
async def test_untemplate_shows_what_get_reward_reads(api: Api, policy: Policy) -> None:
    _, client = api
    messages, prompt = _prompt(policy)
    text = render(policy, [*messages, {"role": "assistant", "content": GENERATIONS[0]}])
    r = await client.post("/v1/untemplate", json={"text": text}, headers=AUTH)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["messages"] == messages and got["response"] == GENERATIONS[0] and not got["unterminated"]
    cut = await client.post("/v1/untemplate", json={"text": prompt + GENERATIONS[1], "prompt": prompt}, headers=AUTH)
    assert cut.json()["response"] == GENERATIONS[1] and cut.json()["unterminated"] is True


async def test_untemplate_refuses_plain_text_naming_the_field(api: Api) -> None:
    _, client = api
    r = await client.post("/v1/untemplate", json={"text": "just words, no turns"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["field"] == "text"
