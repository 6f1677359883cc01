"""Loading a published artifact as a `RewardModel`: store → delta → backbone → revision check → RewardModel.

The one way every caller gets a model out of a store: the service's reloader, `armo batch` (local and on Ray),
training's comparisons and `armo eval`. A backbone already in memory is reused when it is the one the artifact
names (same id and revision, or the configured override; the same delta; an engine started for the artifact's
pooling and length), so a heads-only update costs milliseconds and no second copy of the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armo.model_store.backbone import Backbone, Quantize, load_backbone
from armo.model_store.compiled import CompileMode
from armo.model_store.delta import read_delta
from armo.model_store.devices import BF16_MIN_SPEEDUP, cpu_bf16_speedup, cpu_bf16_units
from armo.model_store.errors import ArtifactError
from armo.model_store.identity import is_store_relative
from armo.model_store.manifest import Manifest
from armo.model_store.reward_model import RewardModel, ScoringConfig
from armo.model_store.store import ModelStore

BackboneLoader = Callable[..., Backbone]  # load_backbone's signature; tests and training pass their own
ScoringFor = Callable[[int], ScoringConfig]  # the scoring config of an artifact with this max_length

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VllmResources:
    """What a vLLM engine may take (its pooling and length come from the artifact)."""

    kv_cache_gib: int  # CPU: key/value and prefix cache
    gpu_memory_utilization: float  # GPU: share of device memory


@dataclass(frozen=True)
class BackboneOptions:
    """How a backbone is loaded and run. No defaults here: `Settings.backbone_options` builds it for the service and
    `armo batch`; training builds its own from its config."""

    override: str | None  # a backbone to use instead of the manifest's `backbone.id` (its revision is then not checked)
    cache_dir: Path | None
    device: str
    dtype: str  # float32, bfloat16, float16, or auto (per artifact: `served_dtype`)
    quantize: Quantize
    packed: bool
    vllm: VllmResources | None  # None: in-process transformers
    compile: CompileMode  # auto, on or off (armo.model_store.compiled)

    def load_kwargs(self, manifest: Manifest) -> dict[str, Any]:
        """`load_backbone`'s keyword arguments for this artifact (the delta is added by the caller)."""
        dtype = served_dtype(self, manifest)[0]
        vllm = None
        if self.vllm is not None:  # the engine module (safetensors, the view-making code) only when asked for
            from armo.model_store.vllm_engine import VllmOptions

            vllm = VllmOptions(
                pooling=manifest.pooling,
                max_length=manifest.backbone.max_length,
                dtype=dtype,
                kv_cache_gib=self.vllm.kv_cache_gib,
                gpu_memory_utilization=self.vllm.gpu_memory_utilization,
            )
        return {
            "cache_dir": self.cache_dir,
            "device": self.device,
            "dtype": dtype,
            "quantize": self.quantize,
            "packed": self.packed,
            "vllm": vllm,
            "compile": self.compile if vllm is None else "off",
        }


def served_dtype(options: BackboneOptions, manifest: Manifest) -> tuple[str, str]:
    """(the precision this artifact runs in under these options, why). `auto`: bf16 where the device computes it fast
    (a CUDA GPU; a CPU with AMX or AVX512-BF16 whose bf16 matmuls measure >= BF16_MIN_SPEEDUP x fp32's) and the
    artifact states its bf16 agreement, else float32. An explicit dtype the artifact states no agreement for is
    refused, naming the field."""
    allows = manifest.precision.allows
    if options.dtype != "auto":
        if not allows(options.dtype):
            raise ArtifactError(
                f"artifact {manifest.model}/{manifest.version} was fit in {manifest.precision.fit} and states no "
                f"agreement for {options.dtype}; serve it with ARMO_DTYPE=float32 or auto",
                field="precision",
            )
        return options.dtype, "ARMO_DTYPE"
    if options.device == "cpu" and not cpu_bf16_units():
        return "float32", "auto: this CPU has no bf16 units (AMX or AVX512-BF16)"
    if options.device not in {"cpu", "cuda"} and not options.device.startswith("cuda:"):
        return "float32", f"auto: float32 on {options.device}"
    if options.quantize != "none":
        return "float32", "auto: the int8 backbone runs on float32"
    if not allows("bfloat16"):
        return "float32", "auto: the artifact states no bf16 agreement"
    if options.device == "cpu" and (speedup := cpu_bf16_speedup()) < BF16_MIN_SPEEDUP:  # timed last: ~0.1 s
        return "float32", f"auto: bf16 matmuls run {speedup:.2f}x fp32's on this CPU (bf16 from {BF16_MIN_SPEEDUP}x)"
    return "bfloat16", "auto: fast bf16 units and the artifact's stated agreement"


def backbone_spec(manifest: Manifest, store_root: Path) -> str:
    """What `load_backbone` loads for the backbone an artifact's manifest names (no override given).

    A local backbone is named by a path relative to the store root, `./…` or `../…` (identity.store_relative_id;
    what `armo store import-armorm` and `armo serve CHECKPOINT_DIR` write): resolved here against the root, so the
    store and the checkpoint may move together. A checkpoint mounted elsewhere is named at start instead (`armo
    serve CHECKPOINT_DIR` or ARMO_BACKBONE, the override). Manifests written before hold an absolute path, still read
    as it is. Any other id is the embedded backbone or a hub id. A local backbone that is not there is refused here,
    naming the manifest's id and the way to name it, not handed to the hub client as a repository name.
    """
    ref = manifest.backbone
    relative = is_store_relative(ref.id)
    if not relative and not Path(ref.id).is_absolute():
        return ref.id
    path = store_root / ref.id if relative else Path(ref.id)
    if not path.is_dir():
        where = " (relative to the store root)" if relative else ""
        raise ArtifactError(
            f"artifact {manifest.model}/{manifest.version}: its backbone {ref.id}{where} is not a directory here; "
            "name the checkpoint where it is mounted: armo serve CHECKPOINT_DIR, or ARMO_BACKBONE=DIR",
            field="backbone.id",
        )
    return str(path.resolve())


def reusable(backbone: Backbone, manifest: Manifest, options: BackboneOptions, store_root: Path) -> bool:
    """Whether `backbone` (already loaded) is the one this artifact scores with under these options."""
    ref = manifest.backbone
    if options.override is None:
        try:
            spec = backbone_spec(manifest, store_root)
        except ArtifactError:  # not there: loading it says so
            return False
        if (backbone.id, backbone.revision) != (spec, ref.revision):
            return False
    if backbone.precision != served_dtype(options, manifest)[0]:
        return False
    want = manifest.backbone_delta.sha256 if manifest.backbone_delta else None
    if (backbone.delta.sha256 if backbone.delta else None) != want:
        return False
    # An engine (vLLM) is started for one pooling and sequence limit; another artifact may need a new one.
    return backbone.engine is None or backbone.engine.serves(manifest.pooling, ref.max_length)


def artifact_backbone(
    store: ModelStore, manifest: Manifest, options: BackboneOptions, loader: BackboneLoader = load_backbone
) -> Backbone:
    """The backbone an artifact names (or the override), its delta merged, its revision checked."""
    ref = manifest.backbone
    kwargs = options.load_kwargs(manifest)
    delta = read_delta(store.version_dir(manifest.model, manifest.version), manifest.backbone_delta)
    if delta is not None:  # only then: a loader that predates deltas still loads every other artifact
        kwargs["delta"] = delta
    backbone = loader(options.override or backbone_spec(manifest, store.root), **kwargs)
    log.info("artifact %s/%s runs in %s (%s)", manifest.model, manifest.version, *served_dtype(options, manifest))
    if options.override is None and backbone.revision != ref.revision:
        raise ArtifactError(
            f"artifact {manifest.model}/{manifest.version} was trained on backbone {ref.id} revision "
            f"{ref.revision[:12]}, but that backbone now has revision {backbone.revision[:12]}",
            field="backbone.revision",
        )
    return backbone


def load_reward_model(
    store: ModelStore,
    model: str,
    ref: str,
    options: BackboneOptions,
    scoring: ScoringFor,
    *,
    reuse: Backbone | None = None,
    loader: BackboneLoader = load_backbone,
) -> RewardModel:
    """`model` at `ref` (a version or an alias) from `store`, every file's checksum verified, on `reuse` when that
    backbone fits the artifact, else on a freshly loaded one (`RewardModel.backbone is reuse` tells which)."""
    manifest, head = store.load(model, ref)
    fits = reuse is not None and reusable(reuse, manifest, options, store.root)
    backbone = reuse if reuse is not None and fits else artifact_backbone(store, manifest, options, loader)
    return RewardModel(backbone, head, manifest, scoring(manifest.backbone.max_length))  # checks compatibility
