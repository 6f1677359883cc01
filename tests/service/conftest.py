"""Service fixtures: a real app over the tiny real model, driven in-process through ASGI (httpx.ASGITransport).

Only process/network boundaries are faked: `Gate` pauses the *real* forward pass (for 429/504/in-flight tests),
`CountingLoader` counts calls to the *real* backbone loader.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.service.app import create_app
from armo.service.state import Services
from armo.settings import Settings
from tests.conftest import build_tiny_llama

API_KEY = "test-api-key-0123"
ADMIN_KEY = "test-admin-key-0123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


def item(response: str = "Paris.", messages: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"messages": CONV if messages is None else messages, "response": response}


class CountingLoader:
    """The real `load_backbone`, counted (to prove a heads-only update does not reload the backbone)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, spec: str, **kwargs: Any) -> Backbone:
        self.calls.append(spec)
        return load_backbone(spec, **kwargs)


class Gate:
    """Wraps a RewardModel's real forward: every call signals `entered`, then waits until `release()`."""

    def __init__(self, rm: RewardModel) -> None:
        self.rm = rm
        self.real = rm.forward
        self.entered = threading.Semaphore(0)
        self.open = threading.Event()
        self.batches: list[int] = []
        rm.forward = self  # type: ignore[method-assign]

    def __call__(self, batch: Any, steers: Any = ()) -> Any:
        self.batches.append(len(batch))
        self.entered.release()
        assert self.open.wait(30), "gate never released"
        return self.real(batch, steers)

    async def wait_entered(self, timeout: float = 10.0) -> None:
        ok = await asyncio.to_thread(self.entered.acquire, True, timeout)
        assert ok, "no forward pass started"

    def release(self) -> None:
        self.open.set()

    def restore(self) -> None:
        self.open.set()
        self.rm.forward = self.real  # type: ignore[method-assign]


@contextmanager
def poisoned(rm: RewardModel, marker: str = "poison") -> Iterator[list[int]]:
    """A fault inside the worker for one input (a device error on that item): the real forward pass otherwise.
    Yields the sizes of the batches the forward pass saw."""
    real = rm.forward
    sizes: list[int] = []

    def forward(batch: Any, steers: Any = ()) -> Any:
        sizes.append(len(batch))
        if any(p.item.response == marker for p in batch):
            raise RuntimeError("simulated device fault")
        return real(batch, steers)

    rm.forward = forward  # type: ignore[method-assign]
    try:
        yield sizes
    finally:
        rm.forward = real  # type: ignore[method-assign]


_LOADED: dict[str, Backbone] = {}


def cached_loader(spec: str, **kwargs: Any) -> Backbone:
    """The real loader, once per backbone per test session: most tests start an app, none mutates a backbone."""
    key = f"{spec}:{kwargs.get('dtype', 'float32')}:{kwargs.get('compile', 'off')}"
    if key not in _LOADED:
        _LOADED[key] = load_backbone(spec, **kwargs)
    return _LOADED[key]


def make_settings(store: ModelStore, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "store_root": store.root,
        "model": "tiny",
        "watch_interval_s": 0,
        "max_wait_ms": 2,
        "api_keys": [API_KEY],
        "admin_key": ADMIN_KEY,
        "log_json": True,
    }
    values.update(overrides)
    return Settings(**values)


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


@asynccontextmanager
async def serve(
    settings: Settings, *, loader: Callable[..., Backbone] = cached_loader, wait_ready: bool = True
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app with its lifespan running, and a client talking to it through ASGI."""
    app = create_app(settings, backbone_loader=loader)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        if wait_ready:
            await wait_until(lambda: services.reloader.current is not None or services.reloader.last is not None)
            assert services.reloader.current is not None, services.reloader.last
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield app, client


def services(app: FastAPI) -> Services:
    s = app.state.services
    assert isinstance(s, Services)
    return s


def current_rm(app: FastAPI) -> RewardModel:
    loaded = services(app).reloader.current
    assert loaded is not None
    return loaded.rm


@pytest.fixture
async def api(tiny_store: ModelStore) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serve(make_settings(tiny_store)) as pair:
        yield pair


@pytest.fixture
def tiny_dir(tiny_backbone_dir: Path) -> Path:
    return tiny_backbone_dir


@pytest.fixture(scope="session")
def other_backbone(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Backbone) -> Backbone:
    """A second tiny real Llama (another hidden size, same tokenizer): an artifact for it needs a backbone load."""
    d = build_tiny_llama(
        tmp_path_factory.mktemp("tiny-llama-48"), tiny_backbone.tokenizer, hidden_size=48, layers=1, seed=1
    )
    return load_backbone(str(d))
