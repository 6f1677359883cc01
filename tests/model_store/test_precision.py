"""bf16 on the CPU's units (AMX or AVX512-BF16): agreement with fp32 within what the artifact states, batch
invariance, capability detection (the flags, then the measured speed), and an artifact served only in a precision it
states."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from armo.model_store import devices, loader
from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_MODEL
from armo.model_store.errors import ArtifactError
from armo.model_store.loader import load_reward_model, served_dtype
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.settings import Settings
from tests.conftest import default_scoring, make_artifact

needs_units = pytest.mark.skipif(not devices.cpu_bf16_units(), reason="this CPU has no AMX / AVX512-BF16")
PROMPT = [{"role": "user", "content": "Name three primes and say why each is prime."}]
MIXED = [
    ScoreItem([{"role": "user", "content": "What is the capital of France?"}], "Paris."),  # a single
    ScoreItem(PROMPT, "2, 3 and 5: each has exactly two divisors."),  # a pair ...
    ScoreItem(PROMPT, "4, 6 and 8."),  # ... and with the next two, a Best-of-N group
    ScoreItem(PROMPT, "Two, three, five, seven: only 1 and themselves divide them."),
    ScoreItem(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "How do I boil an egg?"},
        ],
        "Boil it for 8 minutes, then cool it in cold water.",
    ),  # multi-turn
    ScoreItem([{"role": "user", "content": "Say nothing."}], ""),  # an empty response
    ScoreItem([{"role": "user", "content": "Tell me a long story. " * 150}], "Once upon a time. " * 40),  # truncated
]


@pytest.fixture(scope="module")
def bundled() -> tuple[ModelStore, Settings]:
    return ModelStore(BUNDLED_ROOT), Settings.model_construct(dtype="bfloat16", max_tokens=512)


@needs_units
def test_bf16_scores_stay_within_the_bound_the_default_artifact_states(
    embedded_backbone: Backbone, bundled: tuple[ModelStore, Settings]
) -> None:
    store, settings = bundled
    rm = load_reward_model(store, DEFAULT_MODEL, "current", settings.backbone_options(), settings.scoring_config)
    agreement = rm.manifest.precision.agreement["bfloat16"]
    assert rm.backbone.precision == "bfloat16" and rm.backbone.dtype == torch.bfloat16
    exact = RewardModel(embedded_backbone, rm.head, rm.manifest, rm.config)
    batch = [rm.prepare(it) for it in MIXED]
    assert batch[-1].encoded.truncated
    f16, f32 = rm.features(batch), exact.features(batch)
    assert f16.response.dtype == torch.float32  # the heads read fp32 features
    cosine = torch.nn.functional.cosine_similarity(f16.response_mean, f32.response_mean, dim=-1)
    assert bool((cosine > 0.99).all()), cosine
    a = exact.forward_features(batch, f32).score
    b = rm.forward_features(batch, f16).score
    assert float((a - b).abs().max()) <= agreement.bound, (a, b)


@needs_units
def test_bf16_scores_do_not_depend_on_the_batch(bundled: tuple[ModelStore, Settings]) -> None:
    store, settings = bundled
    rm = load_reward_model(store, DEFAULT_MODEL, "current", settings.backbone_options(), settings.scoring_config)
    together = [r.score for r in rm.score(MIXED)]
    alone = [rm.score([it])[0].score for it in MIXED]
    # Other pass shapes reorder bf16 sums: a few bf16 roundings (8-bit mantissa) of the features, far inside the
    # artifact's bound, which is what a caller can tell apart.
    bound = rm.manifest.precision.agreement["bfloat16"].bound
    assert max(abs(x - y) for x, y in zip(together, alone, strict=True)) <= bound / 4


def test_a_cpu_without_bf16_units_refuses_bf16_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})  # an older CPU
    with pytest.raises(ValidationError, match="ARMO_DTYPE=bfloat16: this CPU has neither AMX nor AVX512-BF16"):
        Settings(dtype="bfloat16")
    manifest = ModelStore(BUNDLED_ROOT).read_manifest(DEFAULT_MODEL, "v0.4.0")
    assert manifest.precision.allows("bfloat16")
    options = Settings(dtype="auto").backbone_options()
    assert served_dtype(options, manifest) == ("float32", "auto: this CPU has no bf16 units (AMX or AVX512-BF16)")
    # A GPU computes bf16 whatever the CPU has.
    assert served_dtype(replace(options, device="cuda"), manifest)[0] == "bfloat16"


def test_auto_takes_bf16_on_a_cpu_only_where_its_bf16_measures_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags do not say how fast: a Xeon reporting AVX512-BF16 without AMX multiplies bf16 at half fp32's rate.
    `auto` serves fp32 there, saying why; an explicit bfloat16 is still served."""
    monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo=None: {"avx512f", "avx512_bf16"})
    manifest = ModelStore(BUNDLED_ROOT).read_manifest(DEFAULT_MODEL, "v0.4.0")
    options = Settings(dtype="auto").backbone_options()
    monkeypatch.setattr(loader, "cpu_bf16_speedup", lambda: 0.54)
    assert served_dtype(options, manifest) == (
        "float32",
        "auto: bf16 matmuls run 0.54x fp32's on this CPU (bf16 from 1.5x)",
    )
    assert served_dtype(Settings(dtype="bfloat16").backbone_options(), manifest) == ("bfloat16", "ARMO_DTYPE")
    assert served_dtype(replace(options, device="cuda"), manifest)[0] == "bfloat16"
    monkeypatch.setattr(loader, "cpu_bf16_speedup", lambda: 2.2)
    assert served_dtype(options, manifest)[0] == "bfloat16"


def test_the_bf16_speedup_is_measured_once_and_never_where_bf16_is_emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    devices.cpu_bf16_speedup.cache_clear()
    try:
        if devices.cpu_bf16_units():
            measured = devices.cpu_bf16_speedup()
            assert 0.05 < measured < 50 and devices.cpu_bf16_speedup() == measured  # a ratio of rates, cached
            devices.cpu_bf16_speedup.cache_clear()
        monkeypatch.setattr(devices, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
        assert devices.cpu_bf16_speedup() == 0.0
    finally:
        devices.cpu_bf16_speedup.cache_clear()


def test_an_artifact_without_a_bf16_agreement_is_not_served_in_bf16(tmp_path: Path, tiny_backbone: Backbone) -> None:
    store = ModelStore(tmp_path / "store")
    manifest, head = make_artifact(tiny_backbone)
    store.publish(manifest, head)
    with pytest.raises(ArtifactError, match="states no agreement for bfloat16") as e:
        options = Settings.model_construct(dtype="bfloat16").backbone_options()
        load_reward_model(store, "tiny", "current", options, default_scoring)  # type: ignore[arg-type]
    assert e.value.field == "precision"
    auto = Settings.model_construct(dtype="auto").backbone_options()
    assert served_dtype(auto, manifest) == ("float32", "auto: the artifact states no bf16 agreement")
    rm = load_reward_model(store, "tiny", "current", auto, Settings.model_construct().scoring_config)
    assert rm.backbone.precision == "float32"


@needs_units
def test_features_are_cached_per_precision(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    """Training never mixes precisions in one feature cache: a bf16 backbone's job has its own key (and folder),
    and a Ray actor that loads another precision than the driver's is refused."""
    from armo.training.config import ExtractConfig
    from armo.training.extract import Item, job_key, run_extraction
    from armo.training.on_ray import ShardExtractor

    fp32, bf16 = load_backbone(str(tiny_backbone_dir)), load_backbone(str(tiny_backbone_dir), dtype="bfloat16")
    cfg = ExtractConfig(max_length=128, shard_size=4)
    items = [Item(tuple(it.messages), it.response) for it in MIXED[:4]]
    assert job_key(fp32, items, cfg, {}) != job_key(bf16, items, cfg, {})
    a = run_extraction(fp32, items, name="t", cache_root=tmp_path, cfg=cfg, progress=False)
    b = run_extraction(bf16, items, name="t", cache_root=tmp_path, cfg=cfg, progress=False)
    assert len(list(tmp_path.glob("t-*"))) == 2 and not torch.equal(a.response, b.response)
    with pytest.raises(RuntimeError, match="not the backbone the feature cache is keyed by"):
        ShardExtractor(str(tiny_backbone_dir), vars(cfg), 1, "cpu", "", "float32", job_key(bf16, [], cfg, {}))
