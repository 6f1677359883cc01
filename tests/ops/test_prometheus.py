"""Ops checked for real: the alert rules pass promtool, and a real Prometheus (Debian's 2.42, installed by
scripts/setup.sh) scraping a real `armo serve` with deploy/prometheus.yml's scrape settings answers every Grafana
dashboard query and every alert expression with data.

The Prometheus helpers live in tests/ops/prom.py; this file holds the checks and the traffic."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from armo.model_store.store import ModelStore
from tests.live import API_KEY, armo_server
from tests.ops.prom import ALERTS, DEPLOY, check, prometheus, promtool, wait_for

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "armo.json"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
AUTH = {"Authorization": f"Bearer {API_KEY}"}

# Grafana's built-in interval variables, expanded as Grafana would for a short range. The dashboard itself uses
# fixed windows ([1m], [5m]) and no template variables today; this keeps the check right if that changes.
GRAFANA_VARS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m", "__range_s": "300"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# An alert's threshold comparison: `> 0.1`, `== 0`, `>= 256`. Label matchers (`!="x"`) never match: a number
# must follow the operator.
THRESHOLD = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*-?[0-9][0-9.e+]*")


def test_promtool_checks_the_rules_and_their_unit_tests() -> None:
    promtool("check", "rules", str(ALERTS))
    out = promtool("test", "rules", str(ALERTS_TEST))
    assert "SUCCESS" in out, out
    # The shipped config parses and its rule_files resolve (relative to deploy/) to alerts.yml.
    out = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert "1 rule files found" in out, out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel (rows included), template variables substituted."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    values = dict(GRAFANA_VARS)
    for var in board.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value", ".*")
        # A multi-value variable is used inside a regex matcher (=~): Grafana joins the values with |.
        values[var["name"]] = "|".join(current) if isinstance(current, list) else str(current)

    def expand(expr: str) -> str:
        return VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), m.group(0)), expr)

    out: list[tuple[str, str]] = []
    stack: list[dict[str, Any]] = list(board["panels"])
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside it
        out += [(panel.get("title", "?"), expand(t["expr"])) for t in panel.get("targets", []) if t.get("expr")]
    unknown = [(title, expr) for title, expr in out if "$" in expr]
    assert not unknown, f"dashboard variables this test does not know how to expand: {unknown}"
    return out


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def _items(n: int, start: int = 0) -> list[dict[str, str]]:
    # Responses of growing length: the Spearman(score, length) gauge needs 16+ scores with distinct lengths.
    return [{"prompt": f"Question {i}?", "response": "word " * (1 + (start + i) % 40)} for i in range(n)]


def _queue_depth(client: httpx.Client) -> float:
    (line,) = [x for x in client.get("/metrics").text.splitlines() if x.startswith("armo_queue_depth ")]
    return float(line.split()[1])


def drive_errors(url: str) -> None:
    """A 429 (a flood fills the 2-job queue), a 422 and a 401: the error series exist only once one happened."""
    flood_status: list[int] = []
    flood = threading.Thread(
        target=lambda: flood_status.append(
            httpx.post(f"{url}/v1/score", json={"items": _items(1000)}, headers=AUTH, timeout=180).status_code
        )
    )
    with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        flood.start()
        # With ARMO_MAX_BATCH_ITEMS=2 the flood is ~500 jobs. Only /metrics is read until they are queued (a score
        # request running when the flood arrives would get the flood itself refused); past ARMO_MAX_QUEUE=2 waiting
        # jobs the next request is refused at once.
        wait_for(lambda: _queue_depth(client) >= 3, 60, lambda: f"the flood never queued: {flood_status}", 0.02)
        assert client.post("/v1/score", json={"items": _items(1)}).status_code == 429
        flood.join(180)
        assert flood_status == [200]
        assert client.post("/v1/score", json={"items": [{"response": "no prompt"}]}).status_code == 422
        assert httpx.post(f"{url}/v1/score", json={"items": _items(1)}, timeout=30).status_code == 401


@contextmanager
def steady_traffic(url: str) -> Iterator[None]:
    """Score, explain and compare calls every ~0.2 s while the queries run. A rate() needs an increase between two
    scrapes: a burst that fits between two scrapes (the flood above takes ~2 s) leaves every rate at 0 and every
    ratio of rates NaN, as an idle service would."""
    stop = threading.Event()
    statuses: list[int] = []
    explain = {"items": [{"prompt": "How do I boil an egg?", "response": "Boil it for 8 minutes."}]}
    compare = {"prompt": "Name a prime number.", "responses": ["7", "9", "Eleven is prime."]}

    def run() -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            i = 0
            while not stop.is_set():
                for path, body in [("/v1/score", {"items": _items(2, start=i)}), ("/v1/explain", explain)]:
                    statuses.append(client.post(path, json=body).status_code)
                statuses.append(client.post("/v1/compare", json=compare).status_code)
                i += 2
                stop.wait(0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
    assert statuses and set(statuses) == {200}, statuses


def test_a_real_prometheus_answers_every_dashboard_query_and_alert(tiny_store: ModelStore, tmp_path: Path) -> None:
    queries = dashboard_queries()
    rules = alert_rules()
    assert len(queries) >= 20 and len(rules) >= 7
    # A 2-job queue and 2-item batches: a 1000-item flood queues long enough for a 429 (drive_errors).
    service = armo_server(tiny_store, tmp_path, ARMO_MAX_QUEUE="2", ARMO_MAX_BATCH_ITEMS="2", ARMO_RETRY_AFTER_S="1")
    with service as server, prometheus(server.url, tmp_path) as prom:
        wait_for(lambda: check(prom, 'up{job="armo"} == 1') is None, 60, "Prometheus never scraped the service")
        drive_errors(server.url)
        with steady_traffic(server.url):
            # Every dashboard query must parse and return data with a finite value (a panel of NaN draws nothing,
            # as an empty one does). Polled: a series born in the traffic needs two scrapes (1 s apart) before
            # rate() has a value.
            failures: list[str] = []

            def dashboard_ok() -> bool:
                failures[:] = [f"{t}: {e} -> {p}" for t, e in queries if (p := check(prom, e)) is not None]
                return not failures

            wait_for(dashboard_ok, 60, lambda: "dashboard queries failing:\n" + "\n".join(failures))

            # Every alert expression evaluates without error (it may well select nothing: nothing is wrong), and
            # what it compares - the expr without its threshold comparisons (`up == 0` -> `up`, `ratio > 0.1` ->
            # `ratio`) - returns data: the alert watches series that exist, not a misspelt name that never fires.
            for rule in rules:
                expr = rule["expr"].strip()
                assert check(prom, expr, need_data=False) is None, rule["alert"]
                measured = THRESHOLD.sub("", expr)
                assert measured != expr, f"{rule['alert']}: no threshold found in {expr}"
                assert (problem := check(prom, measured)) is None, f"{rule['alert']}: {measured} -> {problem}"

            # The same rules loaded into Prometheus through rule_files: each evaluated, none with an error.
            def rules_evaluated() -> bool:
                groups = prom.get("/api/v1/rules").json()["data"]["groups"]
                loaded = {r["name"]: r for g in groups for r in g["rules"]}
                failures[:] = [f"{n}: {r['health']} {r.get('lastError', '')}" for n, r in loaded.items()]
                return set(loaded) == {r["alert"] for r in rules} and all(r["health"] == "ok" for r in loaded.values())

            wait_for(rules_evaluated, 30, lambda: "rules not evaluated cleanly: " + "; ".join(failures))
    print(f"checked {len(queries)} dashboard queries and {len(rules)} alert rules")
