"""Stage 0 (`armo train backbone`) on the tiny random Llama: a run without a layer cache imports none of it, the BT
loss goes down, the delta travels through the store with its checksum, a tampered or foreign delta is refused, scores
with the delta equal an independent forward (peft's unmerged adapters on a plain padded pass), a killed run resumes,
and the service reloads the backbone exactly when the delta changes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.delta import DELTA_FILE, LORA_A, LORA_B, LoadedDelta, apply_to_model, read_delta, read_run_delta
from armo.model_store.devices import cpu_bf16_units
from armo.model_store.errors import ArtifactError
from armo.model_store.manifest import BackboneDelta, sha256_file
from armo.model_store.reward_model import RewardModel, ScoreItem
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig, load_config
from armo.training.extract import run_extraction
from armo.training.featurize import load_features
from armo.training.pipeline import run
from armo.training.prepare import build_training_set
from armo.training.stage0.batches import make_batch, pass_index
from armo.training.stage0.layer_cache import LayerCache, decoder_layers, layer_caches, top_view
from armo.training.stage0.tuning import TARGETS, tune
from tests.conftest import default_scoring
from tests.service.conftest import ADMIN, AUTH, CountingLoader, make_settings, serve

ITEMS = [
    ScoreItem([{"role": "user", "content": "Tell me about the moon."}], "Here is a clear answer about the moon."),
    ScoreItem([{"role": "user", "content": "Tell me about the moon."}], "I'm sorry, but I cannot help with that."),
    ScoreItem(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "A python loop?"},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Show me."},
        ],
        "for i in range(3):\n    print(i)",
    ),
]


def stage0_config(cfg: TrainConfig, **stage0: object) -> TrainConfig:
    """The tiny config with stage 0 on: the top layer tuned from a cache of the embedding output (layer 0)."""
    overrides = {
        "stage0.layers": 1,
        "stage0.cache_layers": 2,
        "stage0.epochs": 4,
        "stage0.lr": 0.02,
        "stage0.rank": 4,
        "stage0.alpha": 8,
        "stage0.pairs_per_step": 4,
        "stage0.head_warmup": False,
        "stage0.out_dir": str(Path(cfg.out_dir) / "stage0"),
        "data.split_by": "prompt",
        **{f"stage0.{k}": v for k, v in stage0.items()},
    }
    raw = cfg.to_dict()
    for key, value in overrides.items():
        section, leaf = key.split(".")
        raw[section][leaf] = value
    return load_config(None, raw)


@pytest.fixture
def tuned(tiny_config: TrainConfig) -> tuple[TrainConfig, dict[str, object]]:
    cfg = stage0_config(tiny_config)
    result = tune(cfg, "t", progress=False)
    cfg.stage0.delta = str(result.delta)
    return cfg, result.report


def test_stage0_lowers_the_bt_loss_and_exports_the_best_epoch(tuned: tuple[TrainConfig, dict[str, object]]) -> None:
    cfg, report = tuned
    history = report["history"]
    assert isinstance(history, list) and len(history) == 4
    losses = [h["train_loss"] for h in history]
    # chosen answers differ from the refusals they are paired with: the top layer + head can separate them
    assert losses[-1] < 0.7 * losses[0], losses
    best = max(history, key=lambda h: h["val"]["balanced"])
    assert report["best_epoch"] == best["epoch"] and report["train_pairs"] > 0 and report["val_pairs"] > 0
    assert best["val"]["balanced"] > 0.5
    delta = read_run_delta(Path(cfg.stage0.delta))
    assert delta.ref.method == "lora" and delta.ref.layers == (1,) and delta.ref.rank == 4
    assert delta.ref.scale == pytest.approx(2.0)
    names = {n.removesuffix(LORA_A).removesuffix(LORA_B) for n in delta.tensors}
    assert names == {
        f"layers.1.{'self_attn' if t.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{t}.weight"
        for t in TARGETS
    }
    assert any(t.abs().max() > 0 for n, t in delta.tensors.items() if n.endswith(LORA_B))  # B starts at zero
    stats = json.loads((Path(cfg.stage0.out_dir) / "t" / "stage0.json").read_text())
    assert stats["wall_seconds"]["train"] > 0 and stats["start_layer"] == 0


def test_the_warm_head_is_the_start_to_beat(tiny_config: TrainConfig) -> None:
    start = tune(stage0_config(tiny_config, head_warmup=True, epochs=0), "warm", progress=False).report
    (h0,) = start["history"]
    # the frozen features already separate the toy answers from the refusals: the fitted head starts below ln 2
    assert h0["epoch"] == 0 and start["best_epoch"] == 0 and h0["train_loss"] < 0.9 * math.log(2)
    assert h0["l2"] in tiny_config.probes.weight_decays and h0["val"]["balanced"] > 0.5
    delta = read_run_delta(Path(tiny_config.out_dir) / "stage0" / "warm" / DELTA_FILE)
    assert all(not t.any() for n, t in delta.tensors.items() if n.endswith(LORA_B))  # epoch 0 is the frozen backbone

    tuned = tune(stage0_config(tiny_config, head_warmup=True, epochs=2, lr=0.05), "warm-tuned", progress=False).report
    history = tuned["history"]
    # the frozen fit does not depend on lr: the second run reused the first one's instead of refitting
    fits = [p for p in (Path(tiny_config.out_dir) / "stage0").glob("epoch0-*.pt") if p.stem.count("-") == 1]
    assert len(fits) == 1  # beside it: each split's frozen differences (epoch0-<key>-<split>.pt)
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[0] == {**h0, "seconds": history[0]["seconds"]}
    scores = [h["val"]["balanced"] for h in history]
    assert tuned["best_epoch"] == scores.index(max(scores))  # an epoch must beat the start (ties keep the earlier)


def test_a_pair_whose_sides_sit_in_two_extraction_parts_is_trained_through_both(
    tiny_config: TrainConfig, tiny_backbone_dir: Path
) -> None:
    raw = tiny_config.to_dict()
    raw["data"]["pair_sample"]["rmb/helpfulness"] = 2
    # the grown sample's new RMB pairs repeat the base pairs' refusals, which are featurised once, in the base part
    raw["data"]["extensions"] = [{"pair_sample": {"rmb/helpfulness": 8}}]
    cfg = stage0_config(load_config(None, raw), epochs=1)
    report = tune(cfg, "two-part", progress=False).report
    assert report["two_pass_pairs"]["train"] + report["two_pass_pairs"]["val"] > 0
    assert report["history"][-1]["val"]["pairs"] == report["val_pairs"]  # no pair left out

    base = load_backbone(str(tiny_backbone_dir))
    ds = build_training_set(cfg.data)
    caches = layer_caches(cfg, ds, base)
    refs = [r for r in pass_index(caches, ds, set(range(len(ds.pairs)))) if len(r.passes) == 2]
    assert refs and all(len({c for c, _, _ in r.passes}) == 2 for r in refs)  # two parts, two caches
    b = make_batch(caches, refs[0], ds, set(refs[0].pairs))
    assert b is not None
    got = b.pooled(top_view(base.model, torch.nn.ModuleList(decoder_layers(base.model))), cfg.pooling)
    items = [ds.items[ds.pair_items[p][k]] for k in (0, 1) for p in b.pairs]
    full = run_extraction(base, items, name="check", cache_root=Path(cfg.cache_dir) / "check", cfg=cfg.extract)
    want = full.response if cfg.pooling == "last" else full.response_mean
    torch.testing.assert_close(torch.cat([got[b.chosen], got[b.rejected]]), want, atol=1e-5, rtol=1e-5)


def test_a_run_where_stage0_never_ran_reads_no_stage0_code(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("layer_cache", "batches", "tuning"):
        monkeypatch.setitem(sys.modules, f"armo.training.stage0.{module}", None)  # importing it now fails
    f = load_features(tiny_config, None, with_eval=False)
    assert len(f.table) == len(f.train.items)


def test_a_killed_run_resumes_where_it_stopped(tiny_config: TrainConfig) -> None:
    whole = tune(stage0_config(tiny_config, epochs=2), "whole", progress=False)
    cfg = stage0_config(tiny_config, epochs=2)
    with pytest.raises(RuntimeError, match="max_passes"):
        tune(cfg, "killed", progress=False, max_passes=3)
    assert (Path(cfg.stage0.out_dir) / "killed" / "checkpoint.pt").is_file()
    assert not (Path(cfg.stage0.out_dir) / "killed" / DELTA_FILE).exists()
    resumed = tune(cfg, "killed", progress=False)
    a, b = load_file(str(whole.delta)), load_file(str(resumed.delta))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="other stage-0 settings"):
        tune(stage0_config(tiny_config, epochs=2, lr=0.5), "killed", progress=False)


def test_features_from_the_layer_cache_equal_a_full_forward(
    tuned: tuple[TrainConfig, dict[str, object]], tiny_backbone_dir: Path
) -> None:
    cfg, _ = tuned
    backbone = load_backbone(str(tiny_backbone_dir), delta=read_run_delta(Path(cfg.stage0.delta)))
    cache = LayerCache(backbone, ITEMS * 3, name="x", cache_root=Path(cfg.cache_dir), cfg=cfg.extract, start=0)
    assert not cache.complete() and not cache.serves(backbone)
    base = load_backbone(str(tiny_backbone_dir))
    # built from the base backbone: the inputs of layer 0 are the same for the tuned one (its delta is on layer 1)
    LayerCache(base, ITEMS * 3, name="x", cache_root=Path(cfg.cache_dir), cfg=cfg.extract, start=0).build(False)
    assert cache.serves(backbone) and cache.complete()
    full = run_extraction(backbone, ITEMS * 3, name="full", cache_root=Path(cfg.cache_dir) / "a", cfg=cfg.extract)
    cached = run_extraction(
        backbone,
        ITEMS * 3,
        name="full",
        cache_root=Path(cfg.cache_dir) / "b",
        cfg=cfg.extract,
        pool=cache.pool_for(backbone),
    )
    frozen = run_extraction(
        base,
        ITEMS * 3,
        name="full",
        cache_root=Path(cfg.cache_dir) / "c",
        cfg=cfg.extract,
        pool=cache.top_pool(top_view(base.model, torch.nn.ModuleList(decoder_layers(base.model)))),
    )
    for column in ("response", "response_mean", "prompt"):
        torch.testing.assert_close(getattr(cached, column), getattr(full, column), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(getattr(frozen, column), getattr(full, column), atol=1e-3)  # the delta matters


def _published(cfg: TrainConfig) -> tuple[ModelStore, str]:
    cfg.publish, cfg.evaluate = True, False
    result = run(cfg, "with-delta")
    return ModelStore(cfg.store), result.manifest.version


def test_the_delta_travels_with_the_artifact_and_scores_equal_an_independent_forward(
    tuned: tuple[TrainConfig, dict[str, object]], tiny_backbone_dir: Path
) -> None:
    cfg, _ = tuned
    store, version = _published(cfg)
    manifest = store.verify("armo-smollm2", version)
    ref = manifest.backbone_delta
    assert ref is not None and ref.file == DELTA_FILE and manifest.files[DELTA_FILE] == ref.sha256
    assert ref.sha256 == sha256_file(Path(cfg.stage0.delta))
    manifest, head = store.load("armo-smollm2", version)
    delta = read_delta(store.version_dir("armo-smollm2", version), ref)
    served = RewardModel(load_backbone(str(tiny_backbone_dir), delta=delta), head, manifest, default_scoring(manifest))

    # Independent: peft's own (unmerged) adapters on the base model, on padded passes without packing.
    model = AutoModel.from_pretrained(tiny_backbone_dir, dtype=torch.float32)
    inject_adapter_in_model(
        LoraConfig(
            r=ref.rank,
            lora_alpha=int(ref.scale * ref.rank),
            target_modules=list(TARGETS),
            layers_to_transform=list(ref.layers),
            layers_pattern="layers",
        ),
        model,
    )
    state = {}
    for name, value in delta.tensors.items():
        param, factor = (name[: -len(LORA_A)], "lora_A") if name.endswith(LORA_A) else (name[: -len(LORA_B)], "lora_B")
        state[f"{param.removesuffix('.weight')}.{factor}.default.weight"] = value
    missing = set(state) - set(model.state_dict())
    assert not missing, missing
    model.load_state_dict(state, strict=False)
    model.eval().requires_grad_(False)
    independent = RewardModel(
        Backbone(
            model,
            served.backbone.tokenizer,
            served.backbone.id,
            served.backbone.revision,
            served.backbone.template_hash,
            served.backbone.hidden_size,
            packed=False,
            delta=ref,
        ),
        head,
        manifest,
        default_scoring(manifest),
    )
    got = [r.score for r in served.score(ITEMS)]
    want = [r.score for r in independent.score(ITEMS)]
    assert got == pytest.approx(want, abs=1e-4)
    base = RewardModel(load_backbone(str(tiny_backbone_dir)), head, manifest, default_scoring(manifest))
    assert [r.score for r in base.score(ITEMS)] != pytest.approx(got, abs=1e-3)  # the delta is what differs


def test_a_tampered_or_foreign_delta_is_refused(
    tuned: tuple[TrainConfig, dict[str, object]], tiny_backbone_dir: Path
) -> None:
    cfg, _ = tuned
    store, version = _published(cfg)
    directory = store.version_dir("armo-smollm2", version)
    manifest = store.verify("armo-smollm2", version)
    assert manifest.backbone_delta is not None
    foreign = manifest.backbone_delta.model_copy(update={"base_revision": "0" * 64})
    with pytest.raises(ArtifactError, match="tuned from revision") as e:
        load_backbone(str(tiny_backbone_dir), delta=read_delta(directory, foreign))
    assert e.value.field == "backbone_delta.base_revision"
    tensors = load_file(str(directory / DELTA_FILE))
    key = next(k for k in tensors if k.endswith(LORA_B))
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(directory / DELTA_FILE))
    with pytest.raises(ArtifactError, match="sha256 mismatch") as e:
        store.verify("armo-smollm2", version)
    assert e.value.field == DELTA_FILE
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        read_delta(directory, manifest.backbone_delta)
    foreign_layer = LoadedDelta(
        BackboneDelta(sha256="x", base_revision="r", method="full", layers=(9,)),
        {"layers.9.mlp.up_proj.weight": torch.zeros(1)},
    )
    with pytest.raises(ArtifactError, match="has no parameter"):
        apply_to_model(load_backbone(str(tiny_backbone_dir)).model, foreign_layer)


def _score_body(item: ScoreItem) -> dict[str, object]:
    return {"items": [{"messages": list(item.messages), "response": item.response}]}


async def test_the_service_reloads_the_backbone_only_when_the_delta_changes(
    tuned: tuple[TrainConfig, dict[str, object]],
) -> None:
    cfg, _ = tuned
    store, version = _published(cfg)
    manifest, head = store.load("armo-smollm2", version)
    assert manifest.backbone_delta is not None
    delta_bytes = (store.version_dir("armo-smollm2", version) / DELTA_FILE).read_bytes()
    # v2: the same delta, other heads (a heads-only update); v3: no delta (the base backbone)
    with torch.no_grad():
        head.bias.add_(0.5)
    store.publish(
        manifest.model_copy(update={"version": "v2"}), head, extra_files={DELTA_FILE: delta_bytes}, alias=None
    )
    store.publish(manifest.model_copy(update={"version": "v3", "backbone_delta": None}), head, alias=None)
    loader = CountingLoader()
    async with serve(make_settings(store, model="armo-smollm2"), loader=loader) as (_, client):
        info = (await client.get("/v1/models", headers=AUTH)).json()["loaded"]
        assert info["version"] == version
        assert info["backbone"]["delta"] == manifest.backbone_delta.sha256 and info["backbone"]["delta_layers"] == [1]
        r = await client.post("/v1/models/reload", json={"version": "v2"}, headers=ADMIN)
        assert r.json()["result"] == "success" and r.json()["backbone_reloaded"] is False
        tuned_score = (await client.post("/v1/score", json=_score_body(ITEMS[0]), headers=AUTH)).json()
        r = await client.post("/v1/models/reload", json={"version": "v3"}, headers=ADMIN)
        assert r.json()["result"] == "success" and r.json()["backbone_reloaded"] is True
        assert (await client.get("/v1/models", headers=AUTH)).json()["loaded"]["backbone"]["delta"] is None
        base_score = (await client.post("/v1/score", json=_score_body(ITEMS[0]), headers=AUTH)).json()
        assert base_score["results"][0]["score"] != pytest.approx(tuned_score["results"][0]["score"], abs=1e-3)
    assert len(loader.calls) == 2  # the first load and v3's; v2 reused the tuned backbone


def _on(cfg: TrainConfig, device: str, root: Path) -> TrainConfig:
    """`cfg` on `device` with caches and runs of its own, so nothing computed on the other device is reused."""
    raw = cfg.to_dict()
    raw.update(device=device, cache_dir=str(root / device / "features"), out_dir=str(root / device / "runs"))
    raw["stage0"]["out_dir"] = str(root / device / "stage0")
    return load_config(None, raw)


@pytest.mark.cuda
def test_stage0_and_its_features_on_cuda_match_the_cpu(tiny_config: TrainConfig, tmp_path: Path) -> None:
    """The same commands on a GPU (`device=cuda`): the layer cache, the BT epochs, the features read through the
    tuned top layers and stages 2-4 on them agree with the CPU run up to float rounding (fp32 on both)."""
    runs, features, heads = {}, {}, {}
    for device in ("cpu", "cuda"):
        cfg = _on(stage0_config(tiny_config, epochs=1, head_warmup=True), device, tmp_path)
        runs[device] = tune(cfg, "t", progress=False)
        cfg.stage0.delta = str(runs[device].delta)
        features[device] = load_features(cfg, None, with_eval=False).table
        cfg.evaluate = False
        heads[device] = run(cfg, "heads").report["val_pair_accuracy"]
    cpu, gpu = (runs[d].report["history"] for d in ("cpu", "cuda"))
    assert [h["train_loss"] for h in gpu] == pytest.approx([h["train_loss"] for h in cpu], rel=1e-3)
    a, b = load_file(str(runs["cpu"].delta)), load_file(str(runs["cuda"].delta))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=1e-2)
    for column in ("response", "response_mean", "prompt"):
        got, want = getattr(features["cuda"], column), getattr(features["cpu"], column)
        assert got.device.type == "cpu"  # features are cached on the CPU whatever the backbone's device
        torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
    assert heads["cuda"]["balanced"] == pytest.approx(heads["cpu"]["balanced"], abs=0.05)


@pytest.mark.skipif(not cpu_bf16_units(), reason="this CPU has no bf16 units (AMX / AVX512-BF16)")
def test_a_bf16_run_caches_its_own_precision_and_its_features_equal_a_bf16_forward(
    tiny_config: TrainConfig, tiny_backbone_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = stage0_config(tiny_config, epochs=1).to_dict()
    raw["dtype"] = "bfloat16"
    cfg = load_config(None, raw)
    delta = tune(cfg, "bf16", progress=False).delta
    base = load_backbone(str(tiny_backbone_dir), dtype="bfloat16")
    [job] = [c.directory for c in layer_caches(cfg, build_training_set(cfg.data), base)[:1]]
    assert job.is_dir()  # the run built its cache with the bf16 backbone: it sits under the bf16 key
    fp32 = layer_caches(cfg, build_training_set(cfg.data), load_backbone(str(tiny_backbone_dir)))[0]
    assert fp32.directory != job and not fp32.complete()  # an fp32 run would build (and read) its own
    shard = load_file(str(next(job.glob("shard-*.safetensors"))))
    assert {t.dtype for t in shard.values()} == {torch.bfloat16}
    tuned = load_backbone(str(tiny_backbone_dir), delta=read_run_delta(delta), dtype="bfloat16")
    cache = LayerCache(tuned, ITEMS * 3, name="x", cache_root=Path(cfg.cache_dir), cfg=cfg.extract, start=0)
    LayerCache(base, ITEMS * 3, name="x", cache_root=Path(cfg.cache_dir), cfg=cfg.extract, start=0).build(False)
    assert cache.serves(tuned) and not cache.serves(load_backbone(str(tiny_backbone_dir)))
    full = run_extraction(tuned, ITEMS * 3, name="full", cache_root=Path(cfg.cache_dir) / "a", cfg=cfg.extract)
    cached = run_extraction(
        tuned, ITEMS * 3, name="full", cache_root=Path(cfg.cache_dir) / "b", cfg=cfg.extract, pool=cache.pool_for(tuned)
    )
    for column in ("response", "response_mean", "prompt"):
        torch.testing.assert_close(getattr(cached, column), getattr(full, column), atol=0, rtol=0)
    pooled: list[int] = []  # the run's own training features then come through its bf16 cache
    real = LayerCache.pool_for
    monkeypatch.setattr(LayerCache, "pool_for", lambda self, bb: pooled.append(1) or real(self, bb))
    cfg.stage0.delta = str(delta)
    load_features(cfg, None, with_eval=False)
    assert pooled
