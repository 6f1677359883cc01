"""A real `armo serve` (uvicorn) process on 127.0.0.1 for tests that talk HTTP to it as a client would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from armo.model_store.store import ModelStore

ROOT = Path(__file__).resolve().parents[1]
API_KEY, ADMIN_KEY = "test-api-key-0123", "test-admin-key-0123"  # the keys tests/service/conftest.py uses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if client.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready in {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def armo_server(
    store: ModelStore, workdir: Path, *, ready: bool = True, args: tuple[str, ...] = (), **env: str
) -> Iterator[Server]:
    """`armo serve` on a free port, serving model "tiny" of `store`; `env` adds ARMO_* settings, `args` arguments."""
    port = free_port()
    full_env = {
        **os.environ,
        "ARMO_STORE_ROOT": str(store.root),
        "ARMO_MODEL": "tiny",
        "ARMO_API_KEYS": API_KEY,
        "ARMO_ADMIN_KEY": ADMIN_KEY,
        "ARMO_WATCH_INTERVAL_S": "0.2",
        "ARMO_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
        **env,
    }
    log_path = workdir / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "armo.cli", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
            env=full_env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        server = Server(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            if ready:
                with httpx.Client(base_url=server.url, timeout=30) as client:
                    wait_ready(client, proc, log_path)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
