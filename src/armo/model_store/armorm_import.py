"""Import a local `RLHFlow/ArmoRM-Llama3-8B-v0.1` checkpoint as an artifact of this store.

The checkpoint is a Llama backbone (weights under `model.`) plus the ArmoRM heads:
`regression_layer.weight [k, d]`, `gating.layers.{0..n}.{weight,bias}`, `gating.logit_scale [1]`,
`reward_transform_matrix [k, k]`. The published forward pass computes `rewards @ reward_transform_matrix`
(row vectors), so our column-vector T (r' = T r) is its transpose.

Only config, tokenizer and the head tensors are read: the 16 GB backbone is not loaded to import.

The manifest names the backbone by its path relative to the store root (identity.store_relative_id), never by an
absolute path, and by its revision: `armo serve CHECKPOINT_DIR` (import_cached) imports into a cache store once
per revision and names the directory it was given as the backbone, so a checkpoint moved, copied or mounted
elsewhere is served from the same import.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from armo.model_store.errors import ArtifactError, StoreError
from armo.model_store.heads import ArmoHead, GatingConfig
from armo.model_store.identity import local_revision, store_relative_id, template_hash
from armo.model_store.manifest import BackboneRef, Manifest, Objective, Precision
from armo.model_store.store import ModelStore

ARMORM_SOURCE = "RLHFlow/ArmoRM-Llama3-8B-v0.1"
DEFAULT_MODEL = "armorm-llama3-8b"
IMPORTS_DIR = "imports"  # the cache store of `armo serve CHECKPOINT_DIR`, under the cache directory
ARMORM_OBJECTIVES = (
    "helpsteer-helpfulness",
    "helpsteer-correctness",
    "helpsteer-coherence",
    "helpsteer-complexity",
    "helpsteer-verbosity",
    "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness",
    "ultrafeedback-honesty",
    "ultrafeedback-helpfulness",
    "beavertails-is_safe",
    "prometheus-score",
    "argilla-overall_quality",
    "argilla-judge_lm",
    "code-complexity",
    "code-style",
    "code-explanation",
    "code-instruction-following",
    "code-readability",
)
HEAD_PREFIXES = ("regression_layer.", "gating.", "reward_transform_matrix")


def _head_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Read only the head tensors, from a single file or from the shards named in the index."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted({f for k, f in weight_map.items() if k.startswith(HEAD_PREFIXES)})
    else:
        files = [p.name for p in sorted(directory.glob("*.safetensors"))]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.startswith(HEAD_PREFIXES):
                    tensors[key] = f.get_tensor(key).float()
    if not tensors:
        raise ArtifactError(
            f"{directory}: no ArmoRM head tensors (regression_layer.*, gating.*) found", field="weights"
        )
    return tensors


def import_armorm(
    directory: Path,
    *,
    store_root: Path = Path("."),
    model: str = DEFAULT_MODEL,
    version: str | None = None,
    max_length: int = 4096,
) -> tuple[Manifest, ArmoHead]:
    """Build the manifest and heads for a local ArmoRM checkpoint, to publish with `ModelStore(store_root).publish`:
    the backbone is named relative to `store_root`."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ArtifactError(f"{config_path}: missing (not a checkpoint directory)", field="config.json")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{config_path}: not JSON: {e}", field="config.json") from e
    missing = [k for k in ("num_objectives", "hidden_size") if k not in config]
    if missing:
        raise ArtifactError(f"{config_path}: not an ArmoRM config, missing {', '.join(missing)}", field="config.json")
    k, d = int(config["num_objectives"]), int(config["hidden_size"])
    n_hidden = int(config.get("gating_n_hidden", 3))
    gating = GatingConfig(
        hidden_dim=int(config.get("gating_hidden_dim", 1024)),
        n_hidden=n_hidden,
        temperature=float(config.get("gating_temperature", 10)),
        logit_scale_init=1.0,
        input="prompt",
    )
    t = _head_tensors(directory)
    head = ArmoHead(d, k, gating)
    state = {
        "regression.weight": t["regression_layer.weight"],
        "bias": torch.zeros(k),
        "transform": t["reward_transform_matrix"].T.contiguous(),
        "gating.logit_scale": t["gating.logit_scale"].reshape(1),
    }
    for i in range(n_hidden + 1):
        state[f"gating.layers.{i}.weight"] = t[f"gating.layers.{i}.weight"]
        state[f"gating.layers.{i}.bias"] = t[f"gating.layers.{i}.bias"]
    try:
        head.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError) as e:
        raise ArtifactError(f"{directory}: head tensors do not match config.json: {e}", field="weights") from e
    names = ARMORM_OBJECTIVES if k == len(ARMORM_OBJECTIVES) else tuple(f"objective-{i}" for i in range(k))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    revision = local_revision(directory)
    manifest = Manifest(
        model=model,
        version=version or f"import-{revision[:12]}",
        backbone=BackboneRef(
            id=store_relative_id(directory, store_root),
            revision=revision,
            hidden_size=d,
            template_hash=template_hash(tokenizer),
            # never past the positions the backbone was trained for
            max_length=min(max_length, int(config.get("max_position_embeddings", max_length))),
        ),
        objectives=tuple(
            Objective(name=n, kind="regression", source=ARMORM_SOURCE, description=f"published ArmoRM objective {n}")
            for n in names
        ),
        # The published checkpoint is bf16: its heads were fit on, and are served with, bf16 features.
        precision=Precision(fit="bfloat16"),
        gating=gating.to_dict(),
        training={"imported_from": directory.resolve().name, "source": ARMORM_SOURCE},
    )
    return manifest, head


def import_cached(directory: Path, cache_dir: Path, *, model: str = DEFAULT_MODEL) -> Path:
    """The version folder of checkpoint `directory` in the cache store `cache_dir/imports`, imported on first use.

    Keyed by the checkpoint's revision (identity.local_revision: config.json and the weight files' names and sizes,
    not their 16 GB of bytes), so the same checkpoint is imported once wherever it is mounted, and a changed one
    gets a version of its own. The caller names `directory` as the backbone (the override): the manifest's
    store-relative id holds only while the checkpoint stays where it was first imported from.
    """
    if not (directory / "config.json").is_file():
        raise ArtifactError(f"{directory / 'config.json'}: missing (not a checkpoint directory)", field="config.json")
    store = ModelStore(cache_dir / IMPORTS_DIR)
    version = f"import-{local_revision(directory)[:12]}"
    target = store.version_dir(model, version)
    if not target.is_dir():
        manifest, head = import_armorm(directory, store_root=store.root, model=model, version=version)
        try:
            store.publish(manifest, head, alias=None)  # no alias: checkpoints served side by side never share one
        except StoreError:
            if not target.is_dir():  # not a concurrent importer of the same checkpoint: a real failure
                raise
    store.verify(model, version)  # a corrupt cached import names its file (delete the folder to import again)
    return target
