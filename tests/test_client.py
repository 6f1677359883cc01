"""`armo.client` against a real server process: chunking at the advertised limit, retries that honour Retry-After
on a server really made to overload, auth, and typed errors."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from armo.client import AsyncRewardClient, RewardClient, RewardServiceError
from armo.model_store.store import ModelStore
from tests.live import API_KEY, armo_server

CONV = [{"role": "user", "content": "What is the capital of France?"}]


def _items(n: int) -> list[dict[str, Any]]:
    return [{"messages": CONV, "response": f"Paris, answer number {i}."} for i in range(n)]


def _recording_client(url: str, log: list[tuple[float, str, int]]) -> httpx.Client:
    def on_response(response: httpx.Response) -> None:
        log.append((time.monotonic(), response.request.url.path, response.status_code))

    return httpx.Client(base_url=url, timeout=60, event_hooks={"response": [on_response]})


def test_chunking_auth_and_typed_errors(tiny_store: ModelStore, tmp_path: Path) -> None:
    with armo_server(tiny_store, tmp_path, ARMO_MAX_ITEMS="3") as server:
        log: list[tuple[float, str, int]] = []
        with RewardClient(api_key=API_KEY, http=_recording_client(server.url, log)) as rm:
            assert rm.models().limits.max_items == 3
            items = _items(7)
            scores = rm.score(items)
            assert [p for _, p, _ in log].count("/v1/score") == 3  # 3 + 3 + 1
            one_by_one = [rm.score([it])[0] for it in items]
            assert scores == pytest.approx(one_by_one, abs=1e-5)  # in order, chunking changes nothing
            explained = rm.explain(items[:4], mask=["verbosity"])
            assert len(explained) == 4 and all(e.weights["verbosity"] == 0.0 for e in explained)
            ranked = rm.compare(CONV, ["Paris.", "Lyon.", "Paris, of course."])
            assert sorted(ranked.ranking) == [0, 1, 2]

            with pytest.raises(RewardServiceError) as e:  # every item invalid: nothing to score → the item's 422
                rm.score([{"messages": [*CONV, {"role": "assistant", "content": "x"}], "response": "y"}])
            assert (e.value.status, e.value.type, e.value.field) == (422, "input_error", "items[0].messages[1].role")
            with pytest.raises(RewardServiceError) as e:
                rm.explain(items[:1], weights={"nonsense": 1.0})
            assert e.value.field == "weights"
            before = len(log)
            with pytest.raises(RewardServiceError):
                rm.score([{"prompt": "x"}])  # malformed: no response
            assert len(log) == before + 1  # a 4xx is not retried

        with RewardClient(server.url) as anonymous, pytest.raises(RewardServiceError) as e:
            anonymous.score(items[:1])
        assert (e.value.status, e.value.type) == (401, "unauthorized")


def _queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "armo_queue_depth"
    )


def test_retries_honour_retry_after_on_a_real_overload(tiny_store: ModelStore, tmp_path: Path) -> None:
    """A flood fills the queue; the client's request gets 429 + Retry-After, waits that long, and gets through."""
    settings = {"ARMO_MAX_QUEUE": "2", "ARMO_MAX_BATCH_ITEMS": "2", "ARMO_RETRY_AFTER_S": "1"}
    with armo_server(tiny_store, tmp_path, **settings) as server:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        flood = threading.Thread(
            target=lambda: httpx.post(
                f"{server.url}/v1/score", json={"items": _items(400)}, headers=headers, timeout=300
            ).raise_for_status()
        )
        flood.start()
        deadline = time.monotonic() + 30
        while _queue_depth(server.url) < 3:  # the flood (200 batch-sized jobs) is queued
            assert time.monotonic() < deadline
            time.sleep(0.05)
        log: list[tuple[float, str, int]] = []
        with RewardClient(api_key=API_KEY, max_items=2, max_retries=100, http=_recording_client(server.url, log)) as rm:
            scores = rm.score(_items(2))
        flood.join(300)
        statuses = [s for _, _, s in log]
        assert 429 in statuses and statuses[-1] == 200 and all(x is not None for x in scores)
        first = statuses.index(429)
        assert log[first + 1][0] - log[first][0] >= 1.0  # waited Retry-After, not the 0.5 s backoff


def test_async_client_sends_chunks_concurrently(tiny_store: ModelStore, tmp_path: Path) -> None:
    with armo_server(tiny_store, tmp_path, ARMO_MAX_ITEMS="2") as server:

        async def run() -> tuple[list[float | None], list[float | None]]:
            async with AsyncRewardClient(server.url, api_key=API_KEY) as rm:
                together = await rm.score(_items(5))
                alone = [(await rm.score([it]))[0] for it in _items(5)]
                return together, alone

        together, alone = asyncio.run(run())
        assert together == pytest.approx(alone, abs=1e-5)
