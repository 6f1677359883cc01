"""The vLLM backend in bf16 (what `ARMO_DTYPE=auto` starts for the bundled default on a CPU whose bf16 pays): its
scores within the bound the artifact states against the fp32 transformers path."""

from __future__ import annotations

import pytest

from armo.model_store import devices
from armo.model_store.backbone import Backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.loader import load_reward_model
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.backend_vllm.conftest import KV_CACHE_GIB, need_vllm
from tests.model_store.test_precision import MIXED

need_vllm()


@pytest.mark.skipif(not devices.cpu_bf16_units(), reason="this CPU has no AMX / AVX512-BF16")
def test_vllm_in_bf16_stays_within_the_stated_bound(embedded_backbone: Backbone) -> None:
    settings = Settings(backend="vllm", dtype="bfloat16", vllm_kv_cache_gib=KV_CACHE_GIB, max_tokens=512)
    store = ModelStore(BUNDLED_ROOT)
    rm = load_reward_model(store, DEFAULT_MODEL, "current", settings.backbone_options(), settings.scoring_config)
    assert (rm.backbone.backend, rm.backbone.precision) == ("vllm", "bfloat16")
    exact = RewardModel(embedded_backbone, rm.head, rm.manifest, rm.config)
    got = [r.score for r in rm.score(MIXED)]
    want = [r.score for r in exact.score(MIXED)]
    bound = rm.manifest.precision.agreement["bfloat16"].bound
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= bound, (got, want)
