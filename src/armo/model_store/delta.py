"""A backbone delta: the reward-tuned top layers an artifact carries (stage 0, `armo train backbone`).

ArmoRM's heads read a backbone that preference training had already shaped. Ours is a frozen chat model plus a
small delta: low-rank adapters (LoRA) on the Linear layers of its top layers, or those layers' full weights. The
delta lives in the artifact's version folder as safetensors (`backbone_delta.safetensors`), listed in the manifest
with its sha256 and tied to the base backbone's revision, so it is verified like every other artifact file and can
never be applied to another backbone.

Tensor names are the base model's parameter names (`layers.28.self_attn.q_proj.weight`):
- LoRA: `<param>.lora_A` [rank, in] and `<param>.lora_B` [out, rank]; loading merges W ← W + scale · B A in fp32,
  so serving runs the plain model (no adapter code on the request path, nothing slower).
- full: `<param>` replaces the parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from armo.model_store.errors import ArtifactError
from armo.model_store.manifest import BackboneDelta, sha256_file

DELTA_FILE = "backbone_delta.safetensors"
LORA_A, LORA_B = ".lora_A", ".lora_B"
DeltaMethod = Literal["lora", "full"]
RUN_DELTA_ENTRY = "delta.json"  # beside a stage-0 run's delta: its manifest entry (BackboneDelta)


@dataclass(frozen=True)
class LoadedDelta:
    """A verified delta, ready to apply: its manifest entry and its tensors."""

    ref: BackboneDelta
    tensors: dict[str, Tensor]

    @property
    def sha256(self) -> str:
        return self.ref.sha256


def read_delta(directory: Path, ref: BackboneDelta | None) -> LoadedDelta | None:
    """The delta of the artifact in `directory` (None when it has none), checked against its manifest entry."""
    if ref is None:
        return None
    path = directory / ref.file
    if not path.is_file():
        raise ArtifactError(
            f"{path.name}: the backbone delta listed in the manifest is missing", field="backbone_delta"
        )
    if sha256_file(path) != ref.sha256:
        raise ArtifactError(
            f"{path.name}: sha256 mismatch (corrupt or modified backbone delta)", field="backbone_delta.sha256"
        )
    try:
        tensors = load_file(str(path))
    except SafetensorError as e:
        raise ArtifactError(f"{path.name}: unreadable backbone delta: {e}", field="backbone_delta") from e
    return LoadedDelta(ref, tensors)


def read_run_delta(path: Path) -> LoadedDelta:
    """A delta written by stage 0 (`armo train backbone`), with its manifest entry in delta.json beside it."""
    entry = path.parent / RUN_DELTA_ENTRY
    if not entry.is_file():
        raise ArtifactError(f"{path}: no {RUN_DELTA_ENTRY} beside the delta (not a stage-0 run)", field="stage0.delta")
    ref = BackboneDelta.model_validate_json(entry.read_text())
    delta = read_delta(path.parent, ref.model_copy(update={"file": path.name}))
    assert delta is not None
    return delta


def merged(delta: LoadedDelta, base: dict[str, Tensor]) -> dict[str, Tensor]:
    """The parameters the delta changes, with their new values, from the base parameters `base` (name → tensor).
    Raises ArtifactError when a name or shape does not fit the base model."""
    out: dict[str, Tensor] = {}
    for name, value in delta.tensors.items():
        if name.endswith(LORA_B):
            continue
        if delta.ref.method == "lora":
            if not name.endswith(LORA_A) or name[: -len(LORA_A)] + LORA_B not in delta.tensors:
                raise ArtifactError(f"backbone delta: {name!r} is not a LoRA pair", field="backbone_delta")
            param = name[: -len(LORA_A)]
            a, b = value.float(), delta.tensors[param + LORA_B].float()  # [r, in], [out, r]
        else:
            param = name
        if param not in base:
            raise ArtifactError(f"backbone delta: the backbone has no parameter {param!r}", field="backbone_delta")
        weight = base[param]
        if delta.ref.method == "lora":
            if b.shape[0] != weight.shape[0] or a.shape[1] != weight.shape[1] or a.shape[0] != b.shape[1]:
                raise ArtifactError(
                    f"backbone delta: {param} is {tuple(weight.shape)}, its adapter is "
                    f"{tuple(b.shape)} × {tuple(a.shape)}",
                    field="backbone_delta",
                )
            out[param] = (weight.float() + delta.ref.scale * (b @ a)).to(weight.dtype)
        else:
            if value.shape != weight.shape:
                raise ArtifactError(
                    f"backbone delta: {param} is {tuple(weight.shape)}, the delta has {tuple(value.shape)}",
                    field="backbone_delta",
                )
            out[param] = value.to(weight.dtype)
    return out


@torch.no_grad()
def apply_to_model(model: nn.Module, delta: LoadedDelta) -> int:
    """Write the delta into `model`'s parameters in place; returns how many parameters changed."""
    params = dict(model.named_parameters())
    new = merged(delta, {k: v.detach() for k, v in params.items()})
    for name, value in new.items():
        params[name].copy_(value.to(params[name].device))
    return len(new)


def check_base(delta: LoadedDelta, revision: str, backbone_id: str) -> None:
    if delta.ref.base_revision != revision:
        raise ArtifactError(
            f"backbone delta was tuned from revision {delta.ref.base_revision[:12]} of its backbone, but "
            f"{backbone_id} has revision {revision[:12]}",
            field="backbone_delta.base_revision",
        )
