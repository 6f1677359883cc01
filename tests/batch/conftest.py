"""The service app (for the /v1/score the batch scores are compared with), as tests/service uses it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from armo.model_store.store import ModelStore
from tests.service.conftest import make_settings, serve


@pytest.fixture
async def api(tiny_store: ModelStore) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with serve(make_settings(tiny_store)) as pair:
        yield pair
