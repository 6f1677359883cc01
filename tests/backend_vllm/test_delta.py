"""An artifact's backbone delta on vLLM: the view vLLM loads carries the merged weights, so its features equal the
transformers backbone with the same delta merged (and differ from the base backbone's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from armo.model_store.backbone import EMBEDDED_ID, Backbone, load_backbone
from armo.model_store.delta import LORA_A, LORA_B, read_delta
from armo.model_store.forward import item_features
from armo.model_store.manifest import BackboneDelta, sha256_file
from tests.backend_vllm.conftest import need_vllm, options
from tests.backend_vllm.test_parity import BUDGET, encoded, mixed_items

need_vllm()


@pytest.fixture(scope="module")
def delta(tmp_path_factory: pytest.TempPathFactory, embedded_backbone: Backbone):  # type: ignore[no-untyped-def]
    """A hand-made LoRA delta on the last two layers' attention and MLP (what stage 0 writes, without training)."""
    torch.manual_seed(0)
    tensors = {}
    for layer in (28, 29):
        for name, (out, inp) in {"self_attn.q_proj": (576, 576), "mlp.down_proj": (576, 1536)}.items():
            tensors[f"layers.{layer}.{name}.weight{LORA_A}"] = 0.05 * torch.randn(8, inp)
            tensors[f"layers.{layer}.{name}.weight{LORA_B}"] = 0.05 * torch.randn(out, 8)
    directory = tmp_path_factory.mktemp("delta")
    save_file(tensors, str(directory / "backbone_delta.safetensors"))
    ref = BackboneDelta(
        sha256=sha256_file(directory / "backbone_delta.safetensors"),
        base_revision=embedded_backbone.revision,
        method="lora",
        layers=(28, 29),
        scale=2.0,
        rank=8,
    )
    return read_delta(Path(directory), ref)


def test_vllm_serves_the_merged_delta(embedded_backbone: Backbone, delta) -> None:  # type: ignore[no-untyped-def]
    tuned = load_backbone(EMBEDDED_ID, delta=delta)
    on_vllm = load_backbone(EMBEDDED_ID, vllm=options("last"), delta=delta)
    assert on_vllm.delta == delta.ref and on_vllm.hf is None
    enc = encoded(embedded_backbone, mixed_items(4))
    want = item_features(tuned, enc, BUDGET)
    got = item_features(on_vllm, enc, BUDGET)
    torch.testing.assert_close(got.response, want.response, atol=2e-4, rtol=0)
    torch.testing.assert_close(got.prompt, want.prompt, atol=2e-4, rtol=0)
    base = item_features(embedded_backbone, enc, BUDGET)
    assert (base.response - want.response).abs().max() > 1e-2  # the delta changed the features
