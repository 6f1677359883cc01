"""The Kubernetes scrape checked for real: deploy/prometheus/kubernetes.yml's relabelling, run by a real Prometheus on
pods built from the shipped manifests (tests/ops/kube.py stands in for the Kubernetes discovery), scraping a real
`armo serve`; the labels it produces are the ones the alerts select and prometheus-adapter maps onto pods."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import yaml

from armo.model_store.store import ModelStore
from tests.live import armo_server
from tests.ops.kube import KUBERNETES_CONFIG, kubernetes_scrape_config, pod_target_groups
from tests.ops.prom import DEPLOY, check, prometheus, promtool, wait_for

KUBERNETES = DEPLOY / "kubernetes"
ADAPTER = DEPLOY / "prometheus" / "adapter.yml"
NAMESPACE = "armo-test"


def deployment(manifest: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((KUBERNETES / manifest).read_text()) if d and d["kind"] == "Deployment"]
    return doc


def served_on(template: dict[str, Any], port: int) -> dict[str, Any]:
    """The pod template with its annotated port and the armo container's port set to `port` (the live server's):
    the only change, as tests/ops/prom.py replaces only the compose target."""
    template = copy.deepcopy(template)
    annotations = template["metadata"]["annotations"]
    (container,) = [c for c in template["spec"]["containers"] if c.get("ports")]
    (container_port,) = container["ports"]
    assert str(container_port["containerPort"]) == annotations["prometheus.io/port"]
    container_port["containerPort"] = port
    annotations["prometheus.io/port"] = str(port)
    return template


def test_promtool_checks_the_kubernetes_config(tmp_path: Path) -> None:
    # Debian's promtool knows no kubernetes_sd_configs: the config is checked with the discovery swapped for file_sd,
    # everything else (relabel actions, keepequal included, and the rule file) as shipped.
    config = tmp_path / "kubernetes.yml"
    config.write_text(yaml.safe_dump(kubernetes_scrape_config(str(tmp_path / "pods.yml"))))
    out = promtool("check", "config", str(config))
    assert "1 rule files found" in out, out
    assert yaml.safe_load(KUBERNETES_CONFIG.read_text())["rule_files"] == ["alerts.yml"]


def _targets(prom: httpx.Client) -> list[dict[str, Any]]:
    return [t for t in prom.get("/api/v1/targets").json()["data"]["activeTargets"] if t["labels"]["job"] == "armo"]


def test_pod_scrape_gives_the_labels_alerts_and_adapter_use(tiny_store: ModelStore, tmp_path: Path) -> None:
    cpu, gpu = deployment("armo.yaml"), deployment("armo-gpu.yaml")
    other = copy.deepcopy(cpu["spec"]["template"])  # another team's annotated pod: not armo's job
    other["metadata"]["labels"] = {"app.kubernetes.io/name": "something-else"}
    with armo_server(tiny_store, tmp_path) as server:
        port = int(server.url.rsplit(":", 1)[1])
        pods = [
            *pod_target_groups(served_on(cpu["spec"]["template"], port), NAMESPACE, "armo-7d9f-abcde", "127.0.0.1"),
            # As shipped; 192.0.2.1 (TEST-NET-1) answers nothing: only its discovered labels are checked.
            *pod_target_groups(gpu["spec"]["template"], NAMESPACE, "armo-gpu-5c4b-fghij", "192.0.2.1"),
            *pod_target_groups(other, NAMESPACE, "other-1", "192.0.2.2"),
        ]
        config = kubernetes_scrape_config("pods.yml")
        with prometheus(server.url, tmp_path, config=config, files={"pods.yml": pods}) as prom:
            wait_for(lambda: len(_targets(prom)) >= 2, 30, lambda: f"targets: {_targets(prom)}")
            targets = _targets(prom)
            by_pod = {t["labels"]["pod"]: t for t in targets}
            # One target a pod (the init container's port-less one and the other app dropped), at the annotated port
            # and path.
            assert sorted(t["labels"]["pod"] for t in targets) == ["armo-7d9f-abcde", "armo-gpu-5c4b-fghij"], targets
            gpu_target = by_pod["armo-gpu-5c4b-fghij"]
            assert gpu_target["scrapeUrl"] == "http://192.0.2.1:8000/metrics", gpu_target
            assert {k: v for k, v in gpu_target["labels"].items() if k != "instance"} == {
                "job": "armo",
                "namespace": NAMESPACE,
                "pod": "armo-gpu-5c4b-fghij",
                "app": "armo-gpu",
            }
            assert by_pod["armo-7d9f-abcde"]["scrapeUrl"] == f"http://127.0.0.1:{port}/metrics"

            # What ArmoDown selects, on the pod's own labels.
            live = f'up{{job="armo",namespace="{NAMESPACE}",pod="armo-7d9f-abcde"}} == 1'
            wait_for(lambda: check(prom, live) is None, 60, lambda: f"{live}: {check(prom, live)}")

            # prometheus-adapter's rule: its series query finds the pod's queue depth, and its metrics query, with
            # <<.LabelMatchers>> as the adapter fills it for the HPA (namespace and the pods), answers with data.
            (rule,) = yaml.safe_load(ADAPTER.read_text())["rules"]
            series = prom.get("/api/v1/series", params={"match[]": rule["seriesQuery"]}).json()["data"]
            assert {(s["namespace"], s["pod"]) for s in series} == {(NAMESPACE, "armo-7d9f-abcde")}, series
            matchers = f'namespace="{NAMESPACE}",pod=~"armo-7d9f-abcde|armo-gpu-5c4b-fghij"'
            query = rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers)
            assert (problem := check(prom, query)) is None, f"{query}: {problem}"
