"""The one settings class of the project (environment variables with the prefix `ARMO_`, or a `.env` file).

Every field is documented here and in docs/SERVICE.md; `Settings()` validates at start-up and raises a
pydantic ValidationError naming the bad variable, which `armo serve` prints without a stack trace.
List-valued variables (ARMO_API_KEYS) accept a comma-separated string or a JSON list.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from armo.model_store.bundled import BUNDLED_ROOT, DEFAULT_ALIAS, DEFAULT_MODEL
from armo.model_store.devices import check_device, check_dtype
from armo.model_store.errors import VLLM_SETUP

if TYPE_CHECKING:  # the parts import torch; settings stay importable without it
    from armo.model_store.loader import BackboneOptions
    from armo.model_store.reward_model import ScoringConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ARMO_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    # -- what to serve --------------------------------------------------------------------------------------
    store_root: Path = Field(
        default=BUNDLED_ROOT, description="Root of the versioned model store (default: the packaged one)."
    )
    model: str = Field(default=DEFAULT_MODEL, description="Model name inside the store.")
    alias: str = Field(default=DEFAULT_ALIAS, description="Alias (or a pinned version name) the service follows.")
    backbone: str | None = Field(
        default=None,
        description="Backbone override ('embedded', a local directory or a hub id); default: the artifact "
        "manifest's backbone.id.",
    )
    cache_dir: Path | None = Field(default=None, description="Cache of converted backbones (default ~/.cache/armo).")
    device: str = Field(default="cpu", description="Torch device: cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Precision of the backbone's matmuls. auto: bfloat16 on a GPU or a CPU with AMX / AVX512-BF16 "
        "when the artifact states its bf16 agreement, else float32 (the startup log and /v1/models say which). An "
        "explicit dtype the artifact states no agreement for is refused.",
    )
    quantize: Literal["none", "int8", "int8-mixed"] = Field(
        default="none",
        description="Opt-in approximate CPU path: the backbone's Linear layers in int8 (per-token activations, "
        "SmoothQuant; int8-mixed keeps o_proj and down_proj fp32; speed and score cost in docs/BENCHMARKS.md).",
    )
    packed: bool = Field(
        default=True,
        description="Run sequences packed into unpadded passes, each response continuing its prompt in the same "
        "row (armo.model_store.packing); false: padded batches with the prompt's key/value cache reused.",
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Compile the packed transformers backbone with torch.compile (inductor) at load: ~1.15x faster "
        "passes for about a minute more at start. auto: on a CPU, when a C++ compiler is there, falling back to "
        "eager (logged) if compiling fails; on: always, failing the load otherwise; off: eager.",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch.set_num_threads; default: torch's choice.")
    backend: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description="What runs the backbone: transformers in-process, or vLLM (its own venv: scripts/setup-vllm.sh; "
        "which is faster where: docs/BENCHMARKS.md).",
    )
    vllm_kv_cache_gib: int = Field(
        default=2, ge=1, description="vLLM on a CPU: GiB for its key/value and prefix cache (VLLM_CPU_KVCACHE_SPACE)."
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.85, gt=0, le=1, description="vLLM on a GPU: the share of device memory it may take."
    )

    # -- micro-batcher: requests merged into one worker batch ------------------------------------------------
    max_batch_items: int = Field(
        default=32,
        ge=1,
        validation_alias=AliasChoices("max_batch_items", "ARMO_MAX_BATCH_ITEMS", "ARMO_MAX_BATCH_SIZE"),
        description="Most items the batcher merges into one worker batch (ARMO_MAX_BATCH_SIZE is read too).",
    )
    max_batch_tokens: int = Field(
        default=8192, ge=16, description="Real tokens the batcher merges into one worker batch (sum of lengths)."
    )
    # -- forward passes: a worker batch cut into passes ------------------------------------------------------
    max_pass_tokens: int = Field(
        default=1024,
        ge=16,
        validation_alias=AliasChoices("max_pass_tokens", "ARMO_MAX_PASS_TOKENS", "ARMO_FORWARD_BATCH_TOKENS"),
        description="Tokens per forward pass: real tokens when packed, rows × longest when padded. ~1024 is "
        "fastest on a CPU (docs/BENCHMARKS.md); use 8k-16k on a GPU (ARMO_FORWARD_BATCH_TOKENS is read too).",
    )
    max_pass_rows: int = Field(default=64, ge=1, description="Most sequences (outputs) per forward pass.")
    padding_side: Literal["left", "right"] = Field(
        default="right", description="Padding side of padded passes (scores do not depend on it)."
    )
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="How long the first request of a batch waits for company."
    )
    max_queue: int = Field(
        default=256,
        ge=1,
        description="Batch-sized jobs waiting for the worker (a request larger than one batch is several); beyond "
        "that → 429.",
    )
    max_queue_tokens: int = Field(
        default=1_048_576, ge=1, description="Real tokens waiting for the worker; beyond that → 429."
    )
    retry_after_s: int = Field(
        default=1, ge=0, description="Retry-After seconds sent with a 429 (more when the queued work says so)."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline of a request that names none (`timeout_s`) → 504."
    )
    max_request_timeout_s: float = Field(
        default=600.0, gt=0, description="Longest deadline a request may ask for: an RL rollout batch takes minutes."
    )
    get_reward_timeout_s: float = Field(
        default=170.0,
        gt=0,
        description="Deadline of /get_reward, whose clients name none: under OpenRLHF's 180 s client timeout, so "
        "the answer (or the 504) arrives before the client gives up.",
    )

    # -- limits ---------------------------------------------------------------------------------------------
    max_items: int = Field(
        default=1024, ge=1, description="Most items (or responses) per request: a whole RL rollout batch fits."
    )
    max_chars: int = Field(default=32_000, ge=1, description="Most characters in any one text field.")
    max_tokens: int | None = Field(
        default=None, ge=8, description="Token limit per sequence; default (and ceiling): the manifest's max_length."
    )
    long_response: Literal["cut", "error"] = Field(
        default="cut",
        description="A response longer than the token limit: keep its start and its end-of-turn token and flag it "
        "truncated (cut: every RL rollout gets a reward), or refuse it with a 422 on `response` (error).",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest accepted request body → 413.")
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Time for a whole request body to arrive → 408 (a stalled upload must not hold its memory).",
    )
    top_contributors: int = Field(default=3, ge=1, description="How many top contributors /v1/explain lists.")

    drain_s: float = Field(
        default=10.0,
        ge=0,
        description="On SIGTERM: readiness turns 503 and new requests get 503 at once; queued work is scored for "
        "this long, then what is left gets a JSON 503 shutting_down (uvicorn's graceful timeout is this + 2 s).",
    )

    # -- auth -----------------------------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Bearer keys for /v1/* and /get_reward; empty = no auth."
    )
    admin_key: SecretStr | None = Field(
        default=None, description="Bearer key for admin routes; unset = admin disabled."
    )
    auth_health: bool = Field(default=False, description="Require an API key on /health and /ready.")
    auth_metrics: bool = Field(default=False, description="Require an API key on /metrics.")

    # -- operations -----------------------------------------------------------------------------------------
    watch_interval_s: float = Field(default=5.0, ge=0, description="How often the watcher checks the alias; 0 = off.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    log_json: bool = Field(default=True, description="JSON-lines logs (false: plain text for a terminal).")
    host: str = Field(default="127.0.0.1", description="Interface `armo serve` binds (the --host option wins).")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `armo serve` binds (the --port option wins).")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys_not_blank(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 8 for k in value):
            raise ValueError("every API key must be at least 8 characters")
        return value

    @field_validator("admin_key", mode="before")
    @classmethod
    def _blank_admin_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("admin_key")
    @classmethod
    def _admin_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("the admin key must be at least 8 characters")
        return value

    @field_validator("backend")
    @classmethod
    def _backend_installed(cls, value: str) -> str:
        if value == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError(f"vLLM is not installed in this Python: {VLLM_SETUP}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _dtype_fits_device(self) -> Settings:
        try:  # a dtype the device would emulate (hundreds of times slower) is refused; auto falls back instead
            check_dtype(self.dtype, self.device)
        except ValueError as e:
            raise ValueError(f"ARMO_DTYPE={e}") from None
        if self.quantize != "none" and self.device != "cpu":
            raise ValueError(f"ARMO_QUANTIZE={self.quantize} runs on the CPU only (ARMO_DEVICE={self.device})")
        if self.quantize != "none" and self.dtype not in {"auto", "float32"}:
            raise ValueError(f"ARMO_QUANTIZE={self.quantize} runs on a float32 backbone (ARMO_DTYPE={self.dtype})")
        if self.compile == "on" and (self.backend != "transformers" or self.quantize != "none" or not self.packed):
            raise ValueError(
                "ARMO_COMPILE=on compiles the packed transformers backbone only (ARMO_BACKEND=transformers, "
                "ARMO_PACKED=true, ARMO_QUANTIZE=none)"
            )
        if self.quantize != "none" and self.backend != "transformers":
            raise ValueError(f"ARMO_QUANTIZE={self.quantize} runs on transformers only (ARMO_BACKEND={self.backend})")
        return self

    # -- the model_store's configs, built here so that no other place holds a default ------------------------
    # (The service builds its own configs, BatcherConfig and Limits, from these fields: settings import nothing
    # above them, and torch only inside these methods.)
    def scoring_config(self, manifest_max_length: int) -> ScoringConfig:
        """How a loaded model encodes and runs sequences: at most the manifest's max_length tokens each."""
        from armo.model_store.encoding import Truncation
        from armo.model_store.forward import PassBudget
        from armo.model_store.reward_model import ScoringConfig

        limit = manifest_max_length if self.max_tokens is None else min(manifest_max_length, self.max_tokens)
        return ScoringConfig(
            truncation=Truncation(max_length=limit, long_response=self.long_response),
            forward=PassBudget(tokens=self.max_pass_tokens, rows=self.max_pass_rows),
            padding_side=self.padding_side,
        )

    def backbone_options(self) -> BackboneOptions:
        """How the served artifact's backbone is loaded and run (`armo.model_store.loader`)."""
        from armo.model_store.loader import BackboneOptions, VllmResources

        vllm = None
        if self.backend == "vllm":
            vllm = VllmResources(self.vllm_kv_cache_gib, self.vllm_gpu_memory_utilization)
        return BackboneOptions(
            override=self.backbone,
            cache_dir=self.cache_dir,
            device=self.device,
            dtype=self.dtype,
            quantize=self.quantize,
            packed=self.packed,
            vllm=vllm,
            compile=self.compile,
        )

    def api_key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys]
