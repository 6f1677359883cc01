"""Deployment files checked offline: the Dockerfiles lint clean (hadolint), the Kubernetes manifests validate
strictly against the Kubernetes schema (kubernetes-validate), and every ARMO_* value they and the compose file set
is a valid setting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from armo.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is installed by scripts/setup.sh (requirements.lock)"
    return path


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_lints_clean(dockerfile: str) -> None:
    r = subprocess.run([tool("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stdout.strip(), r.stdout + r.stderr


def test_manifests_validate_strictly() -> None:
    assert len(MANIFESTS) >= 2
    r = subprocess.run([tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") >= 7, r.stdout  # every resource was checked, none skipped


def _check_env(env: dict[str, str]) -> None:
    """Every ARMO_* value must pass Settings' validation (the backend's own check needs vLLM installed: its value
    is checked against the allowed names instead)."""
    values: dict[str, Any] = {k.removeprefix("ARMO_").lower(): v for k, v in env.items() if k.startswith("ARMO_")}
    backend = values.pop("backend", "transformers")
    assert backend in {"transformers", "vllm"}
    Settings(**values)


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
