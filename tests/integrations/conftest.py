"""One real server process for the integration tests of a module (each adapter talks HTTP to it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from armo.integrations import common
from armo.model_store.store import ModelStore
from tests.live import API_KEY, Server, armo_server


@pytest.fixture
def live(
    tiny_store: ModelStore, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    with armo_server(tiny_store, tmp_path_factory.mktemp("server")) as server:
        monkeypatch.setenv(common.URL_ENV, server.url)
        monkeypatch.setenv(common.KEY_ENV, API_KEY)
        common.client.cache_clear()
        yield server
        common.client.cache_clear()
