"""The vLLM backend (`ARMO_BACKEND=vllm`): the backbone runs on vLLM's pooling runner instead of transformers.

It is fed token ids (`TokensPrompt`) from the same encoding as the transformers backend, so every position is the
same; only the kernels differ (parity ≤ 2e-4 on the features, tests/backend_vllm). vLLM's own scheduler batches
what it is given; the service's batcher still does admission, deadlines and per-request isolation in front of it.

Two ways to get the features, fixed when the engine starts (vLLM binds one pooling task per engine):
- `last` artifacts (ArmoRM's choice): two LAST-pooled stages. First every distinct prompt prefix (through the last
  user turn's end-of-turn token) → the prompt feature; then the full sequences → the response feature. The second
  stage finds the prompt's key/value blocks in vLLM's prefix cache, so responses that share a prompt (pairs,
  Best-of-N, GRPO groups) compute it once, like the transformers backend's packed passes.
- `mean` artifacts: every token's state (`token_embed`, ALL pooling) over the full sequence; the mean runs over the
  response span as in armo.model_store.forward. vLLM skips its prefix cache for all-token pooling, so nothing is
  shared on this path.

vLLM is an optional engine with its own venv (scripts/setup-vllm.sh); this module imports it only when an engine
starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from armo.model_store import atomic
from armo.model_store.armorm_import import HEAD_PREFIXES
from armo.model_store.delta import LORA_A, LORA_B, LoadedDelta, merged
from armo.model_store.encoding import Encoded
from armo.model_store.errors import VLLM_SETUP, ArtifactError
from armo.model_store.forward import Features
from armo.model_store.manifest import Pooling

BLOCK_SIZE = 32


@dataclass(frozen=True)
class VllmOptions:
    """How to start the engine. No defaults here: `Settings.vllm_options` builds it."""

    pooling: Pooling  # the loaded artifact's; an engine serves one
    max_length: int  # longest sequence (vLLM's max_model_len)
    dtype: str
    kv_cache_gib: int  # CPU: the key/value cache (and prefix cache) size
    gpu_memory_utilization: float  # GPU: the share of device memory vLLM may take
    prefix_caching: bool = True


def _load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _param(delta_name: str) -> str:
    """The parameter a delta tensor changes (a LoRA factor's name without its suffix)."""
    return delta_name.removesuffix(LORA_A).removesuffix(LORA_B)


def _weight_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.safetensors"))


def _has_head_tensors(directory: Path) -> bool:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return any(k.startswith(HEAD_PREFIXES) for k in _load_json(index)["weight_map"])
    for name in _weight_files(directory):
        with safe_open(str(directory / name), framework="pt") as f:
            if any(k.startswith(HEAD_PREFIXES) for k in f.keys()):  # noqa: SIM118 - not a mapping
                return True
    return False


def _causal_lm_architecture(config: dict[str, Any]) -> list[str]:
    """Architectures vLLM can load for pooling: a `*ForCausalLM` or `*Model` name, else the model type's."""
    names = [a for a in config.get("architectures") or [] if a.endswith(("ForCausalLM", "Model"))]
    if names:
        return names
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
    if not isinstance(name, str):
        raise ArtifactError(f"vLLM cannot load model type {config.get('model_type')!r}", field="backbone")
    return [name]


def vllm_directory(directory: Path, revision: str, cache_dir: Path, delta: LoadedDelta | None = None) -> Path:
    """`directory` itself when vLLM can load it, else a view of it in the cache that it can.

    Two checkpoints need a view: the embedded backbone's conversion, whose config still names its GGUF source as a
    quantization (vLLM refuses it), and an ArmoRM checkpoint, whose architecture is a custom class and whose
    weights hold the head tensors next to the backbone's (vLLM's loader refuses unknown weights). The view has a
    plain causal-LM config and the backbone's tensors only; other files are links. An artifact's backbone delta
    (armo.model_store.delta) is merged into the view's weights, one view per delta.
    """
    config = _load_json(directory / "config.json")
    architectures = _causal_lm_architecture(config)
    heads = _has_head_tensors(directory)
    plain = "quantization_config" not in config and architectures == config.get("architectures") and not heads
    if plain and delta is None:
        return directory
    suffix = f"-delta-{delta.sha256[:16]}" if delta else ""
    target = cache_dir / "vllm" / f"{directory.name}-{revision[:16]}{suffix}"
    if (target / "config.json").is_file():
        return target

    def fill(tmp: Path) -> None:
        view = {k: v for k, v in config.items() if k != "quantization_config"} | {"architectures": architectures}
        (tmp / "config.json").write_text(json.dumps(view, indent=2))
        weights = set(_weight_files(directory)) | {"model.safetensors.index.json"}
        for f in directory.iterdir():
            if f.name not in weights and f.name != "config.json":
                (tmp / f.name).symlink_to(f.resolve())
        changed: set[str] = set()
        for name in _weight_files(directory):
            if not heads and delta is None:
                (tmp / name).symlink_to((directory / name).resolve())
                continue
            with safe_open(str(directory / name), framework="pt") as f:
                kept = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(HEAD_PREFIXES)}  # noqa: SIM118
            if delta is not None:  # a causal-LM checkpoint prefixes the base model's names with "model."
                base = {k.removeprefix("model."): k for k in kept}
                wanted = {_param(n) for n in delta.tensors}
                present = {p: kept[base[p]] for p in wanted if p in base}
                if present:
                    new = merged(
                        LoadedDelta(delta.ref, {n: t for n, t in delta.tensors.items() if _param(n) in present}),
                        present,
                    )
                    kept.update({base[p]: v for p, v in new.items()})
                    changed |= set(new)
            save_file(kept, str(tmp / name), metadata={"format": "pt"})
        if delta is not None and changed != {_param(n) for n in delta.tensors}:
            raise ArtifactError("backbone delta: parameters missing from the checkpoint", field="backbone_delta")
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            data = _load_json(index)
            data["weight_map"] = {k: v for k, v in data["weight_map"].items() if not k.startswith(HEAD_PREFIXES)}
            (tmp / index.name).write_text(json.dumps(data, indent=2))

    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # another process made the same view meanwhile
        atomic.write_dir(target, fill)
    return target


class VllmEngine:
    """A vLLM `LLM` in pooling mode, in this process, computing `Features` for encoded sequences."""

    name = "vllm"

    def __init__(self, model: str, options: VllmOptions) -> None:
        # In-process engine core: the service's worker thread calls it directly, and nothing is spawned (a spawned
        # engine core would re-import the server's __main__).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # The CPU build otherwise asks for most of the machine's memory for its key/value cache, and drops torch to
        # one thread unless OMP_NUM_THREADS is set.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(options.kv_cache_gib)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
        try:
            from vllm import LLM, PoolingParams
            from vllm.config import PoolerConfig
            from vllm.inputs import TokensPrompt
        except ImportError as e:
            raise ArtifactError(f"ARMO_BACKEND=vllm needs vLLM: {VLLM_SETUP}", field="backend") from e
        self.options = options
        self.all_tokens = options.pooling == "mean"
        self.task = "token_embed" if self.all_tokens else "embed"
        self._prompt = TokensPrompt
        self._params = PoolingParams(use_activation=False)  # raw hidden states: no normalisation, no activation
        self._lock = threading.Lock()
        on_gpu = torch.cuda.is_available()
        self.llm = LLM(
            model=model,
            runner="pooling",
            dtype=options.dtype,
            max_model_len=options.max_length,
            enable_prefix_caching=options.prefix_caching,
            # The prefix cache shares whole blocks only: the CPU build's default of 128 tokens would leave most of a
            # short prompt to be recomputed by every response; 32 is the smallest size its kernels prefer.
            block_size=BLOCK_SIZE,
            # CUDA graphs pay off on a GPU; on the CPU build, compiling costs minutes at start-up for little.
            enforce_eager=not on_gpu,
            gpu_memory_utilization=options.gpu_memory_utilization,
            pooler_config=PoolerConfig(
                task=self.task, pooling_type="ALL" if self.all_tokens else "LAST", use_activation=False
            ),
            seed=0,
        )

    def serves(self, pooling: Pooling, max_length: int) -> bool:
        return pooling == self.options.pooling and max_length <= self.options.max_length

    def _run(self, sequences: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """One `encode` call: vLLM schedules the batch. -> per sequence [d] (LAST) or [length, d] (ALL)."""
        prompts = [self._prompt(prompt_token_ids=list(ids)) for ids in sequences]
        outputs = self.llm.encode(prompts, pooling_task=self.task, pooling_params=self._params, use_tqdm=False)
        return [o.outputs.data.float().cpu() for o in outputs]

    def features(self, encoded: Sequence[Encoded]) -> Features:
        with self._lock:
            return self._all_tokens(encoded) if self.all_tokens else self._two_stage(encoded)

    def _two_stage(self, encoded: Sequence[Encoded]) -> Features:
        # Stage 1 first and alone: its prompts must be in the prefix cache before the full sequences are scheduled.
        prefixes = list(dict.fromkeys(tuple(e.input_ids[: e.prompt_index + 1]) for e in encoded))
        prompt_of = dict(zip(prefixes, self._run(prefixes), strict=True))
        response = torch.stack(self._run([e.input_ids for e in encoded]))  # [B, d]
        prompt = torch.stack([prompt_of[tuple(e.input_ids[: e.prompt_index + 1])] for e in encoded])  # [B, d]
        return Features(response=response, prompt=prompt, response_mean=torch.full_like(response, float("nan")))

    def _all_tokens(self, encoded: Sequence[Encoded]) -> Features:
        states = self._run([e.input_ids for e in encoded])  # per sequence [length, d]
        pairs = list(zip(states, encoded, strict=True))
        return Features(
            response=torch.stack([s[-1] for s in states]),
            prompt=torch.stack([s[e.prompt_index] for s, e in pairs]),
            # the response span: every position after the prompt boundary, through the end-of-turn token
            response_mean=torch.stack([s[e.prompt_index + 1 :].mean(dim=0) for s, e in pairs]),
        )
