"""The micro-batcher under load: merging, 429 on a full queue, 504 on deadline, skipped cancellations, batch failure.

The forward pass is the real one; `Gate` only pauses it so that queue states are deterministic.
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from armo.model_store.reward_model import ScoreItem
from armo.model_store.store import ModelStore
from armo.protocol import ScoreRequest
from armo.service.cancellation import unless_disconnected
from armo.service.errors import ClientDisconnectedError, ShuttingDownError
from tests.service.conftest import (
    AUTH,
    CONV,
    Gate,
    current_rm,
    item,
    make_settings,
    poisoned,
    serve,
    services,
    wait_until,
)


async def test_concurrent_requests_are_merged_into_one_batch(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, max_batch_items=8, max_wait_ms=50)) as (app, client):
        gate = Gate(current_rm(app))
        try:
            first = asyncio.create_task(client.post("/v1/score", json={"items": [item("a")]}, headers=AUTH))
            await gate.wait_entered()
            texts = ["b", "c c", "d d d", "e e e e"]
            rest = [
                asyncio.create_task(client.post("/v1/score", json={"items": [item(t)]}, headers=AUTH)) for t in texts
            ]
            await wait_until(lambda: services(app).batcher.depth == len(texts))
            gate.release()
            responses = await asyncio.gather(first, *rest)
        finally:
            gate.restore()
        assert [r.status_code for r in responses] == [200] * 5
        assert gate.batches == [1, 4]  # the four waiting requests rode one forward pass
        direct = current_rm(app).score([ScoreItem(CONV, t) for t in texts])
        got = [r.json()["results"][0]["score"] for r in responses[1:]]
        assert max(abs(a - b.score) for a, b in zip(got, direct, strict=True)) < 1e-5


async def test_full_queue_answers_429_with_retry_after(tiny_store: ModelStore) -> None:
    settings = make_settings(tiny_store, max_queue=1, max_batch_items=1, retry_after_s=3)
    async with serve(settings) as (app, client):
        gate = Gate(current_rm(app))
        try:
            running = asyncio.create_task(client.post("/v1/score", json={"items": [item("a")]}, headers=AUTH))
            await gate.wait_entered()
            queued = asyncio.create_task(client.post("/v1/score", json={"items": [item("b")]}, headers=AUTH))
            await wait_until(lambda: services(app).batcher.depth == 1)
            refused = await client.post("/v1/score", json={"items": [item("c")]}, headers=AUTH)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "3"
            assert refused.json()["error"]["type"] == "queue_full"
            gate.release()
            assert [(await t).status_code for t in (running, queued)] == [200, 200]
        finally:
            gate.restore()
        # Once drained, the service accepts again.
        assert (await client.post("/v1/score", json={"items": [item("c")]}, headers=AUTH)).status_code == 200


async def test_deadline_answers_504_and_the_service_recovers(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, request_timeout_s=5)) as (app, client):
        gate = Gate(current_rm(app))
        try:
            r = await client.post("/v1/score", json={"items": [item()], "timeout_s": 0.2}, headers=AUTH)
            assert r.status_code == 504, r.text
            assert r.json()["error"]["type"] == "deadline_exceeded"
            # A request queued behind the stuck batch with a short deadline also times out, and is never run.
            r2 = await client.post("/v1/score", json={"items": [item("x")], "timeout_s": 0.1}, headers=AUTH)
            assert r2.status_code == 504
        finally:
            gate.restore()
        await wait_until(lambda: services(app).batcher.depth == 0)
        assert gate.batches == [1]  # the expired second request was skipped, not scored
        assert (await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)).status_code == 200


async def test_cancelled_request_is_skipped(tiny_store: ModelStore) -> None:
    """A request cancelled while queued (its client left: the route cancels its work) gets no forward pass."""
    async with serve(make_settings(tiny_store)) as (app, _):
        rm = current_rm(app)
        batcher = services(app).batcher
        gate = Gate(rm)
        try:
            blocker = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=10))
            await gate.wait_entered()
            left = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "b"))], timeout=10))
            stays = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "c"))], timeout=10))
            await wait_until(lambda: batcher.depth == 2)
            left.cancel()
            gate.release()
            await blocker
            results = await asyncio.gather(left, stays, return_exceptions=True)
        finally:
            gate.restore()
        assert isinstance(results[0], asyncio.CancelledError)
        assert not isinstance(results[1], BaseException)
        assert gate.batches == [1, 1]  # only the connected client's item ran


async def test_client_leaving_cancels_its_work(tiny_store: ModelStore) -> None:
    """The route's work is cancelled when the server reports a disconnect; the request never reaches a pass."""
    async with serve(make_settings(tiny_store)) as (app, _):
        rm = current_rm(app)
        s = services(app)
        gate = Gate(rm)
        try:
            blocker = asyncio.create_task(s.batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=10))
            await gate.wait_entered()
            gone = asyncio.Event()

            async def receive() -> dict[str, object]:  # the server's side of the connection (a network boundary)
                await gone.wait()
                return {"type": "http.disconnect"}

            request = Request({"type": "http", "method": "POST", "headers": []}, receive)
            work = s.scorer.score(ScoreRequest.model_validate({"items": [{"prompt": "Hi", "response": "Hello"}]}))
            route = asyncio.create_task(unless_disconnected(request, work, s.metrics))
            await wait_until(lambda: s.batcher.depth == 1)
            gone.set()
            with pytest.raises(ClientDisconnectedError):
                await route
            gate.release()
            await blocker
            await asyncio.sleep(0.05)
        finally:
            gate.restore()
        assert gate.batches == [1]  # the abandoned request was skipped
        assert s.metrics.registry.get_sample_value("armo_disconnected_total") == 1


async def test_batch_failure_fails_only_its_requests(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, max_batch_items=1)) as (app, client):
        with poisoned(current_rm(app)):
            bad, good = await asyncio.gather(
                client.post("/v1/score", json={"items": [item("poison")]}, headers=AUTH),
                client.post("/v1/score", json={"items": [item("fine")]}, headers=AUTH),
            )
        assert bad.status_code == 500 and bad.json()["error"]["type"] == "batch_failed"
        assert "simulated" not in bad.text and "Traceback" not in bad.text
        assert good.status_code == 200
        assert (await client.post("/v1/score", json={"items": [item("poison")]}, headers=AUTH)).status_code == 200


async def test_stopping_fails_queued_and_running_requests_instead_of_hanging(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store)) as (app, _):
        rm, batcher = current_rm(app), services(app).batcher
        gate = Gate(rm)
        try:
            running = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=30))
            await gate.wait_entered()
            queued = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "b"))], timeout=30))
            await wait_until(lambda: batcher.depth == 1)
            await batcher.stop()
            results = await asyncio.wait_for(asyncio.gather(running, queued, return_exceptions=True), 5)
        finally:
            gate.restore()
        assert all(isinstance(r, ShuttingDownError) for r in results), results
        with pytest.raises(ShuttingDownError):  # a stopped batcher takes no new work
            await batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "c"))], timeout=30)


async def test_work_that_cannot_finish_in_time_is_refused_at_once(tiny_store: ModelStore) -> None:
    """With the worker busy and more queued work than it gets through before the deadline, a request is refused in
    milliseconds with a Retry-After from the queued work, instead of waiting its deadline for a 504."""
    async with serve(make_settings(tiny_store, max_batch_items=2)) as (app, client):
        rm = current_rm(app)
        batcher = services(app).batcher
        assert (await client.post("/v1/score", json={"items": [item()] * 4}, headers=AUTH)).status_code == 200
        assert batcher._rate is not None  # measured on the batches that ran
        gate = Gate(rm)
        try:
            blocker = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=60))
            await gate.wait_entered()
            queued = [rm.prepare(ScoreItem(CONV, f"queued {i}")) for i in range(40)]
            backlog = asyncio.create_task(batcher.submit(rm, queued, timeout=60))
            await wait_until(lambda: batcher.depth >= 10)
            batcher._rate = 10.0  # a slow worker: the backlog takes far longer than a short deadline
            loop = asyncio.get_running_loop()
            started = loop.time()
            r = await client.post("/v1/score", json={"items": [item()], "timeout_s": 1}, headers=AUTH)
            elapsed = loop.time() - started
            assert r.status_code == 429 and r.json()["error"]["type"] == "queue_full", r.text
            assert "deadline" in r.json()["error"]["message"] and int(r.headers["retry-after"]) > 1
            assert elapsed < 0.5
            gate.release()
            await asyncio.gather(blocker, backlog)
        finally:
            gate.restore()


async def test_draining_turns_ready_and_new_work_away_then_answers_the_rest(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store)) as (app, client):
        rm = current_rm(app)
        batcher = services(app).batcher
        gate = Gate(rm)
        try:
            running = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=30))
            await gate.wait_entered()
            queued = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "b"))], timeout=30))
            await wait_until(lambda: batcher.depth == 1)
            batcher.begin_drain(0.2)  # what SIGTERM calls
            await wait_until(lambda: batcher.draining)
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["error"]["type"] == "shutting_down"
            late = await client.post("/v1/score", json={"items": [item()]}, headers=AUTH)
            assert late.status_code == 503 and late.json()["error"]["type"] == "shutting_down"
            results = await asyncio.gather(running, queued, return_exceptions=True)  # the drain period ends
            assert all(isinstance(r, ShuttingDownError) for r in results), results
        finally:
            gate.restore()


async def test_a_busy_caller_does_not_starve_another(tiny_store: ModelStore) -> None:
    """One API key queues a rollout batch of 20 batch-sized jobs; another key's single request, arriving after it,
    is scored next rather than after all of them."""
    async with serve(make_settings(tiny_store, max_batch_items=2)) as (app, _):
        rm = current_rm(app)
        batcher = services(app).batcher
        gate = Gate(rm)
        try:
            blocker = asyncio.create_task(batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "a"))], timeout=60))
            await gate.wait_entered()
            big = [rm.prepare(ScoreItem(CONV, f"rollout {i}")) for i in range(40)]
            busy = asyncio.create_task(batcher.submit(rm, big, timeout=60, caller="key-0"))
            await wait_until(lambda: batcher.depth == 20)
            other = asyncio.create_task(
                batcher.submit(rm, [rm.prepare(ScoreItem(CONV, "b"))], timeout=60, caller="key-1")
            )
            await wait_until(lambda: batcher.depth == 21)
            gate.release()
            await other
            assert not busy.done()  # the busy caller's batch is still being worked through
            assert gate.batches[:3] == [1, 2, 1]  # blocker, the busy caller's first job, then the other caller
            await asyncio.gather(blocker, busy)
        finally:
            gate.restore()
