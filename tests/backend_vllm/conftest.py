"""The vLLM backend's tests. They run inside the vLLM venv (`bash scripts/setup-vllm.sh`, then
`.venv-vllm/bin/pytest tests/backend_vllm`); elsewhere every module is skipped with that reason (`need_vllm`)."""

from __future__ import annotations

import pytest

from armo.model_store.backbone import EMBEDDED_ID, Backbone, load_backbone
from armo.model_store.manifest import Pooling
from armo.model_store.vllm_engine import VllmOptions  # imports vLLM only when an engine starts

SETUP = "vLLM is not installed here: bash scripts/setup-vllm.sh, then .venv-vllm/bin/pytest tests/backend_vllm"


def need_vllm() -> None:
    """Skip the calling test module where vLLM is not installed (a module skip, so that naming this folder on the
    command line skips too instead of failing in the conftest)."""
    pytest.importorskip("vllm", reason=SETUP)


# Small enough for CI's machine next to the transformers backbone; the embedded model needs ~46 KB per cached token.
KV_CACHE_GIB = 1
MAX_LENGTH = 2048  # the bundled artifact's


def options(pooling: Pooling, max_length: int = MAX_LENGTH) -> VllmOptions:
    return VllmOptions(
        pooling=pooling, max_length=max_length, dtype="float32", kv_cache_gib=KV_CACHE_GIB, gpu_memory_utilization=0.5
    )


@pytest.fixture(scope="session")
def vllm_last() -> Backbone:
    """The embedded backbone on vLLM, for `last`-pooled artifacts (two LAST-pooled stages)."""
    return load_backbone(EMBEDDED_ID, vllm=options("last"))


@pytest.fixture(scope="session")
def vllm_mean() -> Backbone:
    """The embedded backbone on vLLM, for `mean`-pooled artifacts (every token's state)."""
    return load_backbone(EMBEDDED_ID, vllm=options("mean"))
