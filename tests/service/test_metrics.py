"""/metrics parsed with prometheus_client's own parser; the rolling Spearman reward-hacking alarm."""

from __future__ import annotations

import math
import random

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from scipy.stats import spearmanr

from armo.model_store.store import ModelStore
from armo.service.metrics import SPEARMAN_MIN_SAMPLES, RollingSpearman, spearman
from tests.service.conftest import AUTH, item, make_settings, serve

Api = tuple[FastAPI, httpx.AsyncClient]


def parse(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matches = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, (name, labels, samples.get(name))
    return float(matches[0])


async def test_metrics_cover_the_issue_list(tiny_store: ModelStore) -> None:
    async with serve(make_settings(tiny_store, max_tokens=64)) as (_, client):
        texts = [("word " * n).strip() for n in range(1, 21)]
        r = await client.post("/v1/score", json={"items": [item(t) for t in texts]}, headers=AUTH)
        assert r.status_code == 200
        long_conv = [{"role": "user", "content": "tell me everything " * 20}]
        assert (
            await client.post("/v1/score", json={"items": [item("ok", long_conv)]}, headers=AUTH)
        ).status_code == 200
        await client.post("/v1/explain", json={"items": [item()], "weights": {"safety": 1.0}}, headers=AUTH)
        await client.post("/v1/score", json={"items": []}, headers=AUTH)
        await client.post("/v1/score", json={"items": [item()]})  # 401
        resp = await client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain")
        m = parse(resp.text)

    assert value(m, "armo_requests_total", route="/v1/score", status="200") == 2
    assert value(m, "armo_requests_total", route="/v1/score", status="422") == 1
    assert value(m, "armo_requests_total", route="/v1/score", status="401") == 1
    assert value(m, "armo_errors_total", route="/v1/score", type="validation_error") == 1
    assert value(m, "armo_errors_total", route="/v1/score", type="unauthorized") == 1
    assert value(m, "armo_request_duration_seconds_count", route="/v1/explain") == 1
    assert value(m, "armo_items_total", endpoint="score") == 21
    assert value(m, "armo_queue_depth") == 0
    assert value(m, "armo_batch_size_count") == 3 and value(m, "armo_batch_size_sum") == 22
    assert value(m, "armo_batch_tokens_sum") > 0 and value(m, "armo_tokens_total") == value(m, "armo_batch_tokens_sum")
    assert value(m, "armo_forward_seconds_count") == 3
    assert value(m, "armo_tokens_per_second") > 0
    assert value(m, "armo_truncations_total") == 1
    assert value(m, "armo_model_info", model="tiny", version="v1") == 1
    assert value(m, "armo_model_loaded") == 1
    assert value(m, "armo_reloads_total", result="success") == 1
    # Distributions of learned scores only: the steered /explain is not counted.
    assert value(m, "armo_score_count") == 21
    assert value(m, "armo_objective_value_count", objective="safety") == 21
    assert value(m, "armo_gating_weight_count", objective="verbosity") == 21
    assert value(m, "armo_score_length_window") == 21
    rho = value(m, "armo_score_length_spearman")
    assert -1.0 <= rho <= 1.0
    routes = {s.labels["route"] for s in m["armo_requests_total"]}
    assert routes <= {"/v1/score", "/v1/explain", "/metrics", "other"}


async def test_unmatched_paths_share_one_label(api: Api) -> None:
    _, client = api
    for i in range(5):
        await client.get(f"/random/{i}")
    m = parse((await client.get("/metrics")).text)
    assert value(m, "armo_requests_total", route="other", status="404") == 5


def test_spearman_matches_scipy() -> None:
    rng = random.Random(0)
    x = [rng.random() for _ in range(200)]
    y = [a + rng.gauss(0, 0.3) for a in x]
    y[:20] = [1.0] * 20  # ties
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, x) == pytest.approx(1.0)
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))


def test_rolling_spearman_raises_the_length_alarm_and_forgets() -> None:
    rolling = RollingSpearman(window=50)
    for i in range(SPEARMAN_MIN_SAMPLES - 1):
        rolling.add(float(i), float(i))
    assert math.isnan(rolling.value())  # too few samples to say anything
    for i in range(100):  # a length-hacked model: score grows with length
        rolling.add(float(i), float(i) * 3)
    assert len(rolling) == 50 and rolling.value() == pytest.approx(1.0)
    for i in range(50):  # now anti-correlated: the window forgets the past
        rolling.add(float(i), float(100 - i))
    assert rolling.value() == pytest.approx(-1.0)
