"""A stand-in for Prometheus' Kubernetes pod discovery, for deploy/prometheus/kubernetes.yml.

Debian's Prometheus (the one these tests run) is built without Kubernetes discovery, and no cluster runs here. What
the `role: pod` discovery hands to relabelling is a set of targets with documented `__meta_kubernetes_*` labels
(prometheus/discovery/kubernetes/pod.go: one target per container port, `__address__` = pod IP:port; a container
without ports gives one port-less target; init containers are included, marked `…_container_init="true"`). This
module builds exactly those labels from a pod template of the manifests and writes them as file_sd target groups, so
the shipped relabel_configs run unchanged in a real Prometheus; only the discovery mechanism is swapped."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.ops.prom import DEPLOY

KUBERNETES_CONFIG = DEPLOY / "prometheus" / "kubernetes.yml"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _sanitize(name: str) -> str:
    return _INVALID.sub("_", name)


def pod_target_groups(template: dict[str, Any], namespace: str, name: str, ip: str) -> list[dict[str, Any]]:
    """The targets the pod role discovers for a pod made from a Deployment's `template` (file_sd groups)."""
    meta, spec = template["metadata"], template["spec"]
    pod: dict[str, str] = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_ip": ip,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_controller_kind": "ReplicaSet",
    }
    for key, value in meta.get("labels", {}).items():
        pod[f"__meta_kubernetes_pod_label_{_sanitize(key)}"] = str(value)
        pod[f"__meta_kubernetes_pod_labelpresent_{_sanitize(key)}"] = "true"
    for key, value in meta.get("annotations", {}).items():
        pod[f"__meta_kubernetes_pod_annotation_{_sanitize(key)}"] = str(value)
        pod[f"__meta_kubernetes_pod_annotationpresent_{_sanitize(key)}"] = "true"
    groups = []
    containers = [(c, "true") for c in spec.get("initContainers", [])] + [(c, "false") for c in spec["containers"]]
    for container, init in containers:
        labels = pod | {"__meta_kubernetes_pod_container_name": container["name"]}
        labels["__meta_kubernetes_pod_container_init"] = init
        if not container.get("ports"):
            groups.append({"targets": [ip], "labels": labels})
        for port in container.get("ports", []):
            number = str(port["containerPort"])
            groups.append(
                {
                    "targets": [f"{ip}:{number}"],
                    "labels": labels
                    | {
                        "__meta_kubernetes_pod_container_port_number": number,
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
                    },
                }
            )
    return groups


def kubernetes_scrape_config(targets_file: str) -> dict[str, Any]:
    """deploy/prometheus/kubernetes.yml with its pod discovery swapped for `targets_file` (file_sd, written by the
    test) and 1 s intervals; the job name, relabel_configs and rule files are the shipped ones."""
    config: dict[str, Any] = yaml.safe_load(KUBERNETES_CONFIG.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "armo"]
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    job["file_sd_configs"] = [{"files": [targets_file], "refresh_interval": "1s"}]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str((KUBERNETES_CONFIG.parent / f).resolve()) for f in config.get("rule_files") or []]
    for key in ("remote_write", "remote_read", "alerting"):
        config.pop(key, None)
    return config
