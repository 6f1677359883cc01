"""Stage 0 over the whole backbone (every layer tuned from the embeddings, no layer cache on disk), in the bf16
policy (autocast over fp32 master weights), on the tiny random Llama: the BT loss goes down, a run killed mid-epoch
and resumed ends with the uninterrupted run's weights, an unstored cache hands the tuner the same inputs as a stored
one, and training never opens an evaluation file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from armo.model_store.backbone import load_backbone
from armo.model_store.delta import DELTA_FILE, LORA_B, read_run_delta
from armo.model_store.devices import cpu_bf16_units
from armo.training.config import TrainConfig, load_config
from armo.training.prepare import build_training_set
from armo.training.stage0 import has_layer_cache
from armo.training.stage0.layer_cache import layer_caches
from armo.training.stage0.tuning import RewardTuner, tune
from tests.training.test_stage0 import stage0_config

needs_bf16 = pytest.mark.skipif(not cpu_bf16_units(), reason="this CPU has no bf16 units (AMX / AVX512-BF16)")


def whole_config(cfg: TrainConfig, **stage0: object) -> TrainConfig:
    """Both layers of the tiny model tuned from its embeddings, nothing cached, in bf16."""
    out = stage0_config(cfg, layers=2, cache_layers=2, store_cache=False, **stage0)
    raw = out.to_dict()
    raw["dtype"] = "bfloat16"
    return load_config(None, raw)


def count_frozen_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, one entry per `RewardTuner.diffs` call: a forward over a split's pairs, which a saved fit spares."""
    computed: list[int] = []
    real = RewardTuner.diffs

    def counting(self: RewardTuner, *args: Any, **kwargs: Any) -> Any:
        computed.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RewardTuner, "diffs", counting)
    return computed


@needs_bf16
def test_the_whole_backbone_in_bf16_lowers_the_bt_loss_without_a_stored_cache(tiny_config: TrainConfig) -> None:
    cfg = whole_config(tiny_config)
    report = tune(cfg, "whole", progress=False).report
    losses = [h["train_loss"] for h in report["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert report["dtype"] == "bfloat16" and report["start_layer"] == 0
    assert all(h["train_tokens_per_s"] > 0 and h["train_seconds"] > 0 for h in report["history"])
    delta = read_run_delta(Path(cfg.stage0.out_dir) / "whole" / DELTA_FILE)
    assert delta.ref.layers == (0, 1)  # every layer carries adapters
    assert all(t.dtype == torch.float32 for t in delta.tensors.values())  # the fp32 master weights are exported
    assert all(t.abs().max() > 0 for n, t in delta.tensors.items() if n.endswith(LORA_B))
    assert not has_layer_cache(Path(cfg.cache_dir))  # nothing of the training set was written


@needs_bf16
def test_a_whole_backbone_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_config: TrainConfig) -> None:
    uninterrupted = tune(whole_config(tiny_config, epochs=2), "straight", progress=False)
    cfg = whole_config(tiny_config, epochs=2, checkpoint_minutes=0.0)  # a checkpoint after every step
    with pytest.raises(RuntimeError, match="max_passes"):
        tune(cfg, "killed", progress=False, max_passes=5)  # mid-way through epoch 1
    saved = torch.load(Path(cfg.stage0.out_dir) / "killed" / "checkpoint.pt", weights_only=False)["tuner"]
    assert saved and all("lora_" in k or k.startswith("head.") for k in saved)  # the frozen layers are not saved
    resumed = tune(cfg, "killed", progress=False)
    a, b = load_file(str(uninterrupted.delta)), load_file(str(resumed.delta))
    assert a.keys() == b.keys()
    for k in a:  # the same passes in the same order on the same threads: equal to the bit
        assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
    assert resumed.report["history"][-1]["train_loss"] == uninterrupted.report["history"][-1]["train_loss"]


@needs_bf16
def test_the_warm_start_fits_on_a_sample_of_the_training_pairs(tiny_config: TrainConfig) -> None:
    full = tune(whole_config(tiny_config, head_warmup=True, epochs=0), "warm-all", progress=False).report
    sampled = tune(
        whole_config(tiny_config, head_warmup=True, epochs=0, warmup_pairs=6), "warm-6", progress=False
    ).report
    assert full["history"][0]["fit_pairs"] == full["train_pairs"] > 6
    assert sampled["history"][0]["fit_pairs"] == 6
    assert sampled["history"][0]["val"]["pairs"] == full["history"][0]["val"]["pairs"]  # validated on every pair


@needs_bf16
def test_a_run_on_a_share_of_the_pairs_starts_from_the_same_warm_fit(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The warm start is drawn from every training pair, so a run that trains on `max_pairs` of them reuses the
    saved fit of a run on all of them (most of an hour of forward passes at the real scale) instead of redoing it."""
    full = tune(whole_config(tiny_config, head_warmup=True, epochs=0, warmup_pairs=6), "all", progress=False).report
    computed = count_frozen_passes(monkeypatch)
    cfg = whole_config(tiny_config, head_warmup=True, epochs=1, warmup_pairs=6, max_pairs=8)
    share = tune(cfg, "share", progress=False).report
    assert share["train_pairs"] == 8 < full["train_pairs"]
    assert share["history"][0] == {**full["history"][0], "seconds": share["history"][0]["seconds"]}
    assert len(computed) == 1  # epoch 1's validation only: epoch 0 was read back


@needs_bf16
def test_a_killed_warm_start_resumes_after_the_split_it_finished(
    tiny_config: TrainConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = whole_config(tiny_config, head_warmup=True, epochs=0)
    first = tune(cfg, "warm", progress=False).report["history"][0]
    out = Path(cfg.stage0.out_dir)
    [fit] = [p for p in out.glob("epoch0-*.pt") if p.stem.count("-") == 1]
    assert {p.name.removeprefix(fit.stem) for p in out.glob(f"{fit.stem}-*.pt")} == {"-validation.pt", "-training.pt"}
    fit.unlink()  # as if killed after both splits, before the fit was saved
    (out / f"{fit.stem}-training.pt").unlink()  # … or during the training split
    computed = count_frozen_passes(monkeypatch)
    again = tune(cfg, "warm-again", progress=False).report["history"][0]
    assert len(computed) == 1  # the training split only; the validation split was read back
    assert again == {**first, "seconds": again["seconds"]}


def test_an_unstored_cache_hands_the_tuner_the_inputs_a_stored_one_holds(
    tiny_config: TrainConfig, tiny_backbone_dir: Path
) -> None:
    backbone = load_backbone(str(tiny_backbone_dir))
    for start_layers in (2, 1):  # the embeddings; the output of layer 0
        stored_cfg = stage0_config(tiny_config, layers=1, cache_layers=start_layers)
        unstored_cfg = stage0_config(tiny_config, layers=1, cache_layers=start_layers, store_cache=False)
        ds = build_training_set(stored_cfg.data)
        stored = layer_caches(stored_cfg, ds, backbone)
        unstored = layer_caches(unstored_cfg, ds, backbone)
        for s_cache, u_cache in zip(stored, unstored, strict=True):
            u_cache.build(progress=False)
            assert u_cache.complete() and not u_cache.serves(backbone)  # features come from a normal extraction
            assert not u_cache.directory.exists()  # nothing written (the stored one, built next, has the same place)
            s_cache.build(progress=False)
            for shard in range(len(s_cache.shards)):
                for j in range(s_cache.pass_count(shard)):
                    got = u_cache.pass_input(shard, j)
                    assert not got.requires_grad and got.dtype == torch.float32
                    torch.testing.assert_close(got, s_cache.pass_input(shard, j), atol=1e-6, rtol=1e-6)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """Every path this process opens while the fixture is live (a Python audit hook: `open` events)."""
    paths: list[str] = []
    live = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if live[0] and event == "open" and isinstance(args[0], str | Path):
            paths.append(str(args[0]))

    sys.addaudithook(hook)  # audit hooks cannot be removed: the flag retires it
    yield paths
    live[0] = False


def test_stage0_never_opens_an_evaluation_file(tiny_config: TrainConfig, opened: list[str]) -> None:
    cfg = stage0_config(tiny_config, layers=2, cache_layers=2, store_cache=False, epochs=1, head_warmup=True)
    tune(cfg, "no-eval", progress=False)
    data_root = Path(cfg.data.root).resolve()
    read = {Path(p).resolve() for p in opened if Path(p).resolve().is_relative_to(data_root)}
    assert any(p.is_relative_to(data_root / "train") for p in read), read  # the hook saw the training data
    assert not [p for p in read if not p.is_relative_to(data_root / "train")], read
