"""The precision the service runs in is the one /v1/models reports: bf16 for the bundled default when asked for or
where `auto` finds it faster on this CPU (the artifact states its agreement), float32 when asked for or elsewhere."""

from __future__ import annotations

import pytest

from armo.model_store import devices
from armo.model_store.bundled import BUNDLED_ROOT
from armo.settings import Settings
from tests.service.conftest import serve

AUTO = "bfloat16" if devices.cpu_bf16_speedup() >= devices.BF16_MIN_SPEEDUP else "float32"


@pytest.mark.skipif(not devices.cpu_bf16_units(), reason="this CPU has no AMX / AVX512-BF16")
@pytest.mark.parametrize(("dtype", "served"), [("auto", AUTO), ("bfloat16", "bfloat16"), ("float32", "float32")])
async def test_v1_models_says_which_precision_is_served(dtype: str, served: str) -> None:
    settings = Settings(store_root=BUNDLED_ROOT, dtype=dtype, watch_interval_s=0)  # type: ignore[arg-type]
    async with serve(settings) as (app, client):
        backbone = (await client.get("/v1/models")).json()["loaded"]["backbone"]
        assert backbone["precision"] == served
        assert app.state.services.reloader.current.rm.backbone.precision == served
        agreement = backbone["precision_agreement"]
        assert (agreement is None) == (served == "float32")
        if agreement is not None:
            assert agreement["items"] > 0 and agreement["bound"] >= agreement["max_abs_delta"]
        r = await client.post("/v1/score", json={"items": [{"prompt": "Name a prime.", "response": "7."}]})
        assert r.status_code == 200, r.text
