"""The compiled backbone (torch.compile, ARMO_COMPILE): what it scores, that one compilation serves every pass, when
`auto` compiles, and that a compiler that fails leaves the model serving eager."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from armo.model_store import compiled, devices
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.loader import load_reward_model
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.conftest import default_scoring, make_artifact
from tests.model_store.test_precision import MIXED
from tests.service.conftest import cached_loader, serve

needs_compiler = pytest.mark.skipif(compiled.compiler_found() is None, reason="no C++ compiler for inductor")
needs_units = pytest.mark.skipif(not devices.cpu_bf16_units(), reason="this CPU has no AMX / AVX512-BF16")


def _graphs() -> int:
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def default_compiled() -> RewardModel:
    """The bundled default as `armo serve` runs it on a CPU whose bf16 pays: bf16, compiled (shared with the service
    test below through the service tests' loader cache: one compilation for the module)."""
    settings = Settings.model_construct(dtype="bfloat16", compile="auto", max_tokens=512)
    store = ModelStore(BUNDLED_ROOT)
    return load_reward_model(
        store, DEFAULT_MODEL, "current", settings.backbone_options(), settings.scoring_config, loader=cached_loader
    )


@needs_compiler
@needs_units
def test_the_compiled_default_stays_within_its_stated_bf16_bound_on_mixed_batches(
    default_compiled: RewardModel, embedded_backbone: Backbone
) -> None:
    rm = default_compiled
    assert rm.backbone.compiled is not None and rm.backbone.precision == "bfloat16"
    exact = RewardModel(embedded_backbone, rm.head, rm.manifest, rm.config)  # fp32, eager: what the heads were fit on
    batch = [rm.prepare(it) for it in MIXED]
    assert batch[-1].encoded.truncated and batch[-2].encoded.length > 0
    got = rm.forward_features(batch, rm.features(batch)).score
    want = exact.forward_features(batch, exact.features(batch)).score
    bound = rm.manifest.precision.agreement["bfloat16"].bound
    assert float((got - want).abs().max()) <= bound, (got, want)


@needs_compiler
@needs_units
def test_one_compilation_serves_every_batch_and_scores_do_not_depend_on_it(default_compiled: RewardModel) -> None:
    rm = default_compiled
    before = _graphs()
    together = [r.score for r in rm.score(MIXED)]
    alone = [rm.score([it])[0].score for it in MIXED]  # passes of one sequence, of a group, of other lengths
    pairs = [r.score for r in rm.score(MIXED[1:3])]
    assert _graphs() == before, "a pass recompiled the backbone"
    bound = rm.manifest.precision.agreement["bfloat16"].bound
    assert max(abs(x - y) for x, y in zip(together, alone, strict=True)) <= bound / 4
    assert max(abs(x - y) for x, y in zip(together[1:3], pairs, strict=True)) <= bound / 4


@needs_compiler
@needs_units
async def test_armo_serve_s_default_runs_compiled_and_says_so(default_compiled: RewardModel) -> None:
    settings = Settings(store_root=BUNDLED_ROOT, dtype="bfloat16", compile="auto", watch_interval_s=0)
    async with serve(settings) as (_, client):
        backbone = (await client.get("/v1/models")).json()["loaded"]["backbone"]
        assert backbone["compiled"] is True and backbone["precision"] == "bfloat16"
        item = MIXED[0]
        r = await client.post("/v1/score", json={"items": [{"messages": item.messages, "response": item.response}]})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["score"] == pytest.approx(default_compiled.score([item])[0].score, abs=1e-5)


@needs_compiler
def test_the_compiled_tiny_model_matches_eager_in_fp32(tiny_backbone_dir: Path, tiny_backbone: Backbone) -> None:
    bb = load_backbone(str(tiny_backbone_dir), compile="on")
    assert bb.compiled is not None and tiny_backbone.compiled is None
    manifest, head = make_artifact(tiny_backbone)
    eager = RewardModel(tiny_backbone, head, manifest, default_scoring(manifest))
    fast = RewardModel(bb, head, manifest, default_scoring(manifest))
    a = [r.score for r in eager.score(MIXED)]
    b = [r.score for r in fast.score(MIXED)]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True)) <= 1e-4, (a, b)
    # Training and `armo eval --compile` never mix compiled and eager features in one cache.
    from armo.training.config import ExtractConfig
    from armo.training.extract import job_key

    assert job_key(bb, [], ExtractConfig(), {}) != job_key(tiny_backbone, [], ExtractConfig(), {})


def test_auto_compiles_only_where_it_pays_and_on_refuses_what_it_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    decide = compiled.decide
    if compiled.compiler_found() is not None:
        assert decide("auto", device="cpu", quantize="none", packed=True, engine=False)[0]
    assert decide("off", device="cpu", quantize="none", packed=True, engine=False) == (False, "ARMO_COMPILE=off")
    assert decide("auto", device="cuda", quantize="none", packed=True, engine=False)[0] is False
    assert decide("auto", device="cpu", quantize="int8", packed=True, engine=False)[0] is False
    assert decide("auto", device="cpu", quantize="none", packed=False, engine=False)[0] is False
    with pytest.raises(compiled.CompileError, match="another engine"):
        decide("on", device="cpu", quantize="none", packed=True, engine=True)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without a C++ compiler
    assert compiled.compiler_found() is None
    assert decide("auto", device="cpu", quantize="none", packed=True, engine=False) == (
        False,
        "not compiled: no C++ compiler (g++, c++ or clang++) for inductor's CPU code",
    )
    with pytest.raises(compiled.CompileError, match="no C\\+\\+ compiler"):
        decide("on", device="cpu", quantize="none", packed=True, engine=False)
    with pytest.raises(ValueError, match="ARMO_COMPILE=on compiles the packed transformers backbone only"):
        Settings(compile="on", packed=False)


@needs_compiler
def test_a_failing_compiler_leaves_auto_serving_eager_and_fails_on(
    tiny_backbone_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch._inductor.config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before is reused
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    monkeypatch.setattr(inductor.cpp, "cxx", (None, "/bin/false"))  # a compiler that fails every build
    torch._dynamo.reset()
    bb = load_backbone(str(tiny_backbone_dir), compile="auto")
    assert bb.compiled is None and bb.packed  # still serving, eager
    with pytest.raises(compiled.CompileError, match="compiling the backbone failed"):
        load_backbone(str(tiny_backbone_dir), compile="on")
