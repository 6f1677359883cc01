"""The real thing: `armo serve` (uvicorn) in a subprocess on 127.0.0.1, talked to over HTTP."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from armo.model_store.backbone import Backbone
from armo.model_store.store import ModelStore
from tests.conftest import make_artifact
from tests.live import armo_server, wait_ready
from tests.service.conftest import ADMIN, ADMIN_KEY, API_KEY, AUTH, CONV, item


@pytest.fixture
def server(tiny_store: ModelStore, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    with armo_server(tiny_store, tmp_path, ready=False) as s:
        yield s.url, s.proc, s.log


def test_armo_serve_over_http(
    server: tuple[str, subprocess.Popen[bytes], Path], tiny_store: ModelStore, tiny_backbone: Backbone
) -> None:
    base, proc, log = server
    with httpx.Client(base_url=base, timeout=30) as client:
        wait_ready(client, proc, log)
        assert client.get("/health").json() == {"status": "ok"}

        r = client.post("/v1/score", json={"items": [item("Paris."), item("Lyon.")]}, headers=AUTH)
        assert r.status_code == 200, r.text
        scores = [x["score"] for x in r.json()["results"]]
        assert client.post("/v1/score", json={"items": [item()]}).status_code == 401

        ex = client.post("/v1/explain", json={"items": [item("Paris.")]}, headers=AUTH).json()["results"][0]
        assert abs(sum(ex["contributions"].values()) - scores[0]) < 1e-5

        cmp = client.post("/v1/compare", json={"messages": CONV, "responses": ["Paris.", "Lyon."]}, headers=AUTH)
        assert cmp.json()["scores"] == pytest.approx(scores, abs=1e-5)

        text = tiny_backbone.tokenizer.apply_chat_template(
            [*CONV, {"role": "assistant", "content": "Paris."}], tokenize=False
        )
        rewards = client.post("/get_reward", json={"query": [text]}, headers=AUTH).json()["rewards"]
        assert rewards == pytest.approx(scores[:1], abs=1e-5)

        bad = client.post("/v1/score", content=b"{nope", headers={**AUTH, "content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "malformed_json"

        # Hot reload picked up by the watcher of the running process.
        tiny_store.publish(*make_artifact(tiny_backbone, version="v2", seed=7))
        end = time.monotonic() + 30
        while client.get("/ready").json()["version"] != "v2":
            assert time.monotonic() < end, log.read_text()[-3000:]
            time.sleep(0.1)
        assert client.post("/v1/score", json={"items": [item()]}, headers=AUTH).json()["version"] == "v2"
        assert client.post("/v1/models/reload", headers=ADMIN).json()["result"] == "unchanged"

        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert {"armo_requests", "armo_batch_size", "armo_score_length_spearman", "armo_model_info"} <= set(families)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a graceful shutdown
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [x for x in lines if x.get("event") == "access"]
    assert access and all(len(x["request_id"]) >= 8 for x in access)
    assert any(x.get("event") == "reload" and x.get("version") == "v2" for x in lines)
    assert any(x.get("event") == "stop" for x in lines), lines[-3:]  # the lifespan ran to the end: graceful
    assert API_KEY not in log.read_text() and ADMIN_KEY not in log.read_text()


def test_sigterm_with_more_queued_work_than_the_drain_period(tiny_store: ModelStore, tmp_path: Path) -> None:
    """Queued work longer than ARMO_DRAIN_S: every request is either scored or answered with the JSON 503
    `shutting_down` (never a plain-text 500 or a dropped connection), and the process exits within the drain
    period plus uvicorn's margin."""
    settings = {"ARMO_DRAIN_S": "1", "ARMO_MAX_BATCH_ITEMS": "1", "ARMO_MAX_QUEUE": "100000"}
    with armo_server(tiny_store, tmp_path, **settings) as server:
        outcomes: list[tuple[int, str]] = []

        def heavy(n: int) -> None:
            body = {"items": [item(f"answer {n}-{i} " * 20) for i in range(300)], "timeout_s": 120}
            try:
                r = httpx.post(f"{server.url}/v1/score", json=body, headers=AUTH, timeout=60)
                outcomes.append((r.status_code, r.json().get("error", {}).get("type", "ok")))
            except httpx.HTTPError as e:  # a dropped connection is a failure of the test
                outcomes.append((0, type(e).__name__))

        threads = [threading.Thread(target=heavy, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            end = time.monotonic() + 30
            while sample_value(client.get("/metrics").text, "armo_queue_depth") < 100:  # the backlog is queued
                assert time.monotonic() < end
                time.sleep(0.05)
            stopped = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)  # uvicorn closes its socket: new connections are refused
        for t in threads:
            t.join(60)
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - stopped < 1 + 2 + 5
    assert len(outcomes) == 4 and all(o in ((200, "ok"), (503, "shutting_down")) for o in outcomes), outcomes
    assert (503, "shutting_down") in outcomes  # there really was more work than the drain period


def sample_value(text: str, name: str) -> float:
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_a_stalled_upload_gets_408_and_lets_go(tiny_store: ModelStore, tmp_path: Path) -> None:
    """A client that announces more body than it sends is answered (JSON 408 naming the body) once the body timeout
    has passed, instead of holding the connection and its buffer indefinitely."""
    with armo_server(tiny_store, tmp_path, ARMO_BODY_TIMEOUT_S="1") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = (
                "POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 100000\r\n\r\n"
            )
            sock.sendall(head.encode() + b'{"items": [')
            started = time.monotonic()
            reply = sock.recv(65536).decode()
            waited = time.monotonic() - started
            while "\r\n\r\n" not in reply or not reply.split("\r\n\r\n", 1)[1]:  # the body may follow the head
                more = sock.recv(65536).decode()
                if not more:
                    break
                reply += more
        assert reply.startswith("HTTP/1.1 408"), reply[:200]
        body = json.loads(reply.split("\r\n\r\n", 1)[1])
        assert body["error"]["type"] == "body_timeout" and body["error"]["field"] == "body"
        assert 0.8 < waited < 5
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
