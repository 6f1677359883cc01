"""Child-process body for the concurrent-publish test; kept in its own light module so `spawn` imports little."""

from __future__ import annotations

import contextlib

from armo.model_store.errors import StoreError
from armo.model_store.heads import ArmoHead
from armo.model_store.manifest import Manifest
from armo.model_store.store import ModelStore


def publish_worker(root: str, manifest: Manifest, head: ArmoHead, barrier: object) -> None:
    store = ModelStore(root)
    barrier.wait()  # type: ignore[attr-defined]
    for _ in range(5):
        with contextlib.suppress(StoreError):  # the other process won this version: expected
            store.publish(manifest, head)
        store.promote("tiny", manifest.version)
