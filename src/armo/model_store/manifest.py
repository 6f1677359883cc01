"""What an artifact *is*: the schema-versioned manifest that sits beside the head weights."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from armo import __version__
from armo.model_store.heads import GatingConfig

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
HEADS_FILE = "heads.safetensors"

ObjectiveKind = Literal["regression", "pairwise", "rule"]
Pooling = Literal["last", "mean"]  # the response feature the heads read (armo.model_store.forward)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneRef(_Strict):
    """Which backbone an artifact was trained on; checked against the loaded backbone on every load."""

    id: str  # "embedded:smollm2-135m-instruct", a local directory, or a hub id
    revision: str  # content hash of the weights (or a hub revision)
    hidden_size: int
    template_hash: str  # sha256 of the tokenizer's chat template and special tokens
    max_length: int = 2048


class BackboneDelta(_Strict):
    """The reward-tuned layers an artifact applies to its backbone (armo.model_store.delta)."""

    file: str = "backbone_delta.safetensors"
    sha256: str
    base_revision: str  # the backbone revision it was tuned from: never applied to another
    method: Literal["lora", "full"]
    layers: tuple[int, ...]  # the decoder layers it changes
    scale: float = 1.0  # LoRA: alpha / rank
    rank: int = 0  # LoRA rank (0 for full)


Dtype = Literal["float32", "bfloat16", "float16"]


class PrecisionAgreement(_Strict):
    """How far scores computed in another precision sat from those in the precision the heads were fit in, on
    validation items of the training data (never evaluation data)."""

    policy: str  # what ran in that precision (e.g. the whole backbone in bf16, fp32 features for the heads)
    items: int
    mean_abs_delta: float
    max_abs_delta: float
    spearman: float
    pair_agreement: float  # share of validation pairs ordered the same way in both precisions
    bound: float  # the |Δ score| an item may reach: what serving is tested against


class Precision(_Strict):
    """The precision the heads were fit in, and the agreement measured for each other one an artifact may be
    served in. float32 is the reference and always allowed; any other precision only with its agreement stated
    (or when the heads were fit in it)."""

    fit: Dtype = "float32"
    agreement: dict[str, PrecisionAgreement] = Field(default_factory=dict)

    def allows(self, dtype: str) -> bool:
        return dtype in {"float32", self.fit} or dtype in self.agreement


class Objective(_Strict):
    """One column of r. Names are `<source>-<aspect>` (armo.training.objective_set documents the scheme); the
    description is one line a dashboard can show."""

    name: str
    kind: ObjectiveKind
    source: str  # data file(s) or rule function it was made from
    description: str = ""
    # How raw values were scaled into r: r = sign · (raw - offset) / scale (recorded so a reader can undo it). For
    # learned objectives the scaling is folded into W, b and recorded only; rules are scaled at request time.
    scale: float = 1.0
    offset: float = 0.0
    # -1: the rule read the other way round (e.g. compliance = refusal with sign -1); 1 for every artifact made
    # before the field existed, so they load and score as before.
    sign: Literal[1, -1] = 1
    rule: str | None = None  # name of the rule function, for kind == "rule"
    # Validation metrics of the fit (R², MSE, pairwise accuracy …).
    metrics: dict[str, float] = Field(default_factory=dict)


class Manifest(_Strict):
    schema_version: int = SCHEMA_VERSION
    model: str
    version: str
    created_at: str = Field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    code_version: str = Field(default_factory=lambda: __version__)
    backbone: BackboneRef
    backbone_delta: BackboneDelta | None = None  # None: the backbone as published (every artifact before stage 0)
    objectives: tuple[Objective, ...]
    # "last" for artifacts made before the field existed and for imported ArmoRM checkpoints.
    pooling: Pooling = "last"
    # float32 with no other precision stated for artifacts made before the field existed.
    precision: Precision = Field(default_factory=Precision)
    gating: dict[str, Any] = Field(default_factory=lambda: GatingConfig().to_dict())
    verbosity_objective: str | None = None
    debias_lambda: dict[str, float] = Field(default_factory=dict)
    debias_threshold: float | None = None
    training: dict[str, Any] = Field(default_factory=dict)  # stage configs, dumped dataclasses
    training_data: dict[str, str] = Field(default_factory=dict)  # data file name -> sha256
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # relative file name -> sha256 (all but the manifest)

    @field_validator("objectives")
    @classmethod
    def _unique_names(cls, objectives: tuple[Objective, ...]) -> tuple[Objective, ...]:
        names = [o.name for o in objectives]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"objective names must be non-empty and unique, got {names}")
        return objectives

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def gating_config(self) -> GatingConfig:
        return GatingConfig(**self.gating)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.model_validate_json(path.read_text(encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
