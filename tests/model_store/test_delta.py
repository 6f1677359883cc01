"""Backbone deltas without training: a hand-made LoRA or full-weight delta merges into the transformers model and
into the checkpoint view vLLM loads, and what does not fit the backbone is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.delta import LORA_A, LORA_B, LoadedDelta, merged, read_delta
from armo.model_store.errors import ArtifactError
from armo.model_store.identity import local_revision
from armo.model_store.manifest import BackboneDelta, sha256_file
from armo.model_store.vllm_engine import vllm_directory

Q, DOWN = "layers.1.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight"


def lora_delta(tmp_path: Path, revision: str, scale: float = 2.0) -> LoadedDelta:
    torch.manual_seed(3)
    tensors = {
        Q + LORA_A: torch.randn(4, 32),
        Q + LORA_B: torch.randn(32, 4),
        DOWN + LORA_A: torch.randn(4, 64),
        DOWN + LORA_B: torch.randn(32, 4),
    }
    path = tmp_path / "backbone_delta.safetensors"
    save_file(tensors, str(path))
    ref = BackboneDelta(
        sha256=sha256_file(path), base_revision=revision, method="lora", layers=(1,), scale=scale, rank=4
    )
    delta = read_delta(tmp_path, ref)
    assert delta is not None
    return delta


def test_a_lora_delta_merges_into_the_transformers_model(
    tmp_path: Path, tiny_backbone_dir: Path, tiny_backbone: Backbone
) -> None:
    delta = lora_delta(tmp_path, local_revision(tiny_backbone_dir))
    tuned = load_backbone(str(tiny_backbone_dir), delta=delta)
    base = dict(tiny_backbone.model.named_parameters())
    new = dict(tuned.model.named_parameters())
    for name in (Q, DOWN):
        want = base[name] + 2.0 * delta.tensors[name + LORA_B] @ delta.tensors[name + LORA_A]
        torch.testing.assert_close(new[name], want)
    untouched = "layers.1.self_attn.k_proj.weight"
    assert torch.equal(new[untouched], base[untouched])
    assert tuned.delta == delta.ref and tiny_backbone.delta is None


def test_the_vllm_view_carries_the_merged_weights(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    revision = local_revision(tiny_backbone_dir)
    assert vllm_directory(tiny_backbone_dir, revision, tmp_path / "cache") == tiny_backbone_dir  # plain: as is
    delta = lora_delta(tmp_path, revision)
    view = vllm_directory(tiny_backbone_dir, revision, tmp_path / "cache", delta)
    assert view != tiny_backbone_dir and delta.sha256[:16] in view.name
    base = load_file(str(tiny_backbone_dir / "model.safetensors"))
    merged_view = load_file(str(view / "model.safetensors"))
    want = merged(delta, {k: base[k] for k in (Q, DOWN)})
    for name in (Q, DOWN):
        torch.testing.assert_close(merged_view[name], want[name])
    assert torch.equal(merged_view["layers.0.mlp.up_proj.weight"], base["layers.0.mlp.up_proj.weight"])
    assert (view / "config.json").is_file() and (view / "tokenizer.json").exists()


def test_a_full_delta_replaces_the_layer_and_bad_ones_are_refused(tmp_path: Path, tiny_backbone_dir: Path) -> None:
    revision = local_revision(tiny_backbone_dir)
    weight = torch.full((32, 32), 0.5)
    full = LoadedDelta(BackboneDelta(sha256="-", base_revision=revision, method="full", layers=(1,)), {Q: weight})
    tuned = load_backbone(str(tiny_backbone_dir), delta=full)
    assert torch.equal(dict(tuned.model.named_parameters())[Q], weight)
    wrong = LoadedDelta(full.ref, {Q: torch.zeros(32, 16)})
    with pytest.raises(ArtifactError, match=r"is \(32, 32\), the delta has \(32, 16\)"):
        load_backbone(str(tiny_backbone_dir), delta=wrong)
    half = LoadedDelta(lora_delta(tmp_path, revision).ref, {Q + LORA_A: torch.zeros(4, 32)})
    with pytest.raises(ArtifactError, match="not a LoRA pair"):
        load_backbone(str(tiny_backbone_dir), delta=half)
    other = LoadedDelta(full.ref.model_copy(update={"base_revision": "f" * 64}), {Q: weight})
    with pytest.raises(ArtifactError, match="tuned from revision ffffffffffff"):
        load_backbone(str(tiny_backbone_dir), delta=other)
