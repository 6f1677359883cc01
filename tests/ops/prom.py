"""A real Prometheus on 127.0.0.1 for the ops tests: the deployed scrape settings aimed at a live service, a
temporary TSDB, bounded waits, and a process that is always stopped."""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.live import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"


def binary(name: str) -> str:
    """prometheus / promtool: Debian's `prometheus` package, which scripts/setup.sh installs when missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: `bash scripts/setup.sh` installs it (apt-get install prometheus, as root)")
    return path


def promtool(*args: str) -> str:
    r = subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, f"promtool {' '.join(args)} failed:\n{r.stdout}{r.stderr}"
    return r.stdout + r.stderr


def wait_for(ok: Callable[[], bool], timeout: float, message: str | Callable[[], str], poll: float = 0.5) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(poll)


def scrape_config(service_url: str) -> dict[str, Any]:
    """deploy/prometheus.yml with only the target replaced (the live server) and 1 s intervals (a test cannot wait
    15 s a scrape). Its job name, metrics path and rule files are kept as deployed, so a change there is tested."""
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "armo"]
    job["static_configs"] = [{"targets": [service_url.removeprefix("http://")]}]
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    # rule_files are relative to the config file: resolve them against deploy/, where the deployed config lives
    # (the test's copy lives in a temporary directory).
    rule_files = [str((DEPLOY / f).resolve()) for f in config.get("rule_files") or []]
    assert rule_files == [str(ALERTS)], rule_files
    config["rule_files"] = rule_files
    # Nothing leaves this machine: no remote write/read and no Alertmanager, whatever the deployed file grows.
    for key in ("remote_write", "remote_read", "alerting"):
        config.pop(key, None)
    return config


@contextmanager
def prometheus(
    service_url: str, logdir: Path, config: dict[str, Any] | None = None, files: dict[str, Any] | None = None
) -> Iterator[httpx.Client]:
    """A Prometheus scraping `service_url` (deploy/prometheus.yml's settings) or running `config`, with `files`
    (name -> YAML content) written beside the config first (file_sd targets); yields an HTTP client on its API. The
    TSDB is removed afterwards."""
    exe = binary("prometheus")
    port = free_port()
    log_path = logdir / "prometheus.log"
    with tempfile.TemporaryDirectory(prefix="armo-prometheus-") as tmp, log_path.open("wb") as log:
        for name, content in (files or {}).items():
            (Path(tmp) / name).write_text(yaml.safe_dump(content))
        config_path = Path(tmp) / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config or scrape_config(service_url)))
        cmd = [
            exe,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={Path(tmp) / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",  # loopback only: the web UI is not reachable from elsewhere
            "--log.level=warn",
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

                def ready() -> bool:
                    assert proc.poll() is None, log_path.read_text()[-3000:]
                    try:
                        return client.get("/-/ready").status_code == 200
                    except httpx.TransportError:
                        return False

                wait_for(ready, 30, lambda: "Prometheus not ready:\n" + log_path.read_text()[-3000:])
                yield client
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def check(client: httpx.Client, expr: str, *, need_data: bool = True) -> str | None:
    """None when `expr` is an instant query Prometheus accepts and (with need_data) answers with at least one
    finite value; otherwise what is wrong."""
    body = client.get("/api/v1/query", params={"query": expr}).json()
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}"
    if not need_data:
        return None
    data = body["data"]
    samples = data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]
    values = [float(s["value"][1]) for s in samples if "value" in s]
    if not values:
        return "no data"
    if not any(math.isfinite(v) for v in values):
        return f"no finite value: {values}"
    return None
