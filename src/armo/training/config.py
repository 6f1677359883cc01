"""Training configuration: one dataclass per stage, loaded from JSON and dumped into the manifest."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from armo.model_store.manifest import Pooling
from armo.training.extract import ExtractConfig


def default_data_root() -> str:
    """$ARMO_DATA_DIR, else ../shared/data next to the repository."""
    return os.environ.get("ARMO_DATA_DIR", str(Path(__file__).resolve().parents[4] / "shared" / "data"))


@dataclass
class SampleExtension:
    pair_sample: dict[str, int] = field(default_factory=dict)
    rating_sample: dict[str, int] = field(default_factory=dict)
    parts: int = 2  # extraction jobs for this extension's new responses (parallel processes may take one each)


@dataclass
class DataConfig:
    root: str = field(default_factory=default_data_root)
    ratings: list[str] = field(
        default_factory=lambda: [
            "train/ratings/justeval_multiaspect.jsonl.gz",
            "train/ratings/ultrafeedback_overall.jsonl.gz",
        ]
    )
    pairwise: list[str] = field(
        default_factory=lambda: [
            "train/pairwise/hh_rlhf.jsonl.gz",
            "train/pairwise/rmb.jsonl.gz",
            "train/pairwise/ultrafeedback.jsonl.gz",
        ]
    )
    # Pairs per "<source>/<objective>" (a subsample sized to the CPU budget; see docs/RESULTS.md).
    pair_sample: dict[str, int] = field(
        default_factory=lambda: {
            "hh-rlhf/helpfulness": 150,
            "hh-rlhf/harmlessness": 200,
            "rmb/helpfulness": 80,
            "rmb/harmlessness": 80,
            "ultrafeedback/overall": 60,
        }
    )
    # Rating rows per "<source>/<group>", group = "multi" for multi-aspect rows, else the single rating's name.
    rating_sample: dict[str, int] = field(
        default_factory=lambda: {"just-eval/multi": 200, "just-eval/justeval-safety": 100}
    )
    # Rating rows of these sources are taken iff their pair was sampled (their features are then free).
    ratings_follow_pairs: list[str] = field(default_factory=lambda: ["ultrafeedback"])
    # Optional extensions of the sample, applied in order: each gives new totals per group (a superset of the sample
    # before it, same seed) and its new responses are featurised as `parts` separate jobs after the ones before, so
    # every earlier cache is reused when the sample grows.
    extensions: list[SampleExtension] = field(default_factory=list)
    val_fraction: float = 0.15
    # What the train/validation split hashes. "id": the row id (v0.1.0-v0.4.0). "prompt": the conversation before the
    # response, so every pair and rating of one prompt falls on one side: RMB has many pairs per prompt, and with the
    # id split 57 % of its validation pairs shared a response (83 % the prompt) with a training pair, which let probes
    # fit in sample score well on "held-out" pairs (docs/RESULTS.md, round 5).
    split_by: Literal["id", "prompt"] = "id"
    seed: int = 0

    def __post_init__(self) -> None:
        # JSON configs give plain dicts
        self.extensions = [e if isinstance(e, SampleExtension) else SampleExtension(**e) for e in self.extensions]


@dataclass
class EvalConfig:
    root: str = field(default_factory=default_data_root)
    rewardbench: str = "eval/rewardbench_filtered.jsonl.gz"
    prior: list[str] = field(default_factory=lambda: ["eval/anthropic_hhh.jsonl.gz"])
    fast_fraction: float = 0.1  # stratified per subset in fast mode …
    fast_min: int = 6  # … with at least this many pairs per subset
    seed: int = 0


@dataclass
class RegressionConfig:
    alphas: list[float] = field(default_factory=lambda: [10.0**e for e in range(-4, 5)])
    min_rows: int = 30  # objectives with fewer labelled training rows are skipped


@dataclass
class ProbeConfig:
    """Linear Bradley-Terry probes (pairwise objectives and the black-box baseline)."""

    # objective name -> list of "<source>/<objective>" pair groups it is learned from
    objectives: dict[str, list[str]] = field(
        default_factory=lambda: {
            "helpfulness": ["hh-rlhf/helpfulness", "rmb/helpfulness"],
            "harmlessness": ["hh-rlhf/harmlessness", "rmb/harmlessness"],
            "preference": ["ultrafeedback/overall", "hh-rlhf/helpfulness", "rmb/helpfulness"],
        }
    )
    weight_decays: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])
    # < 1: probes see only this share of the training pairs (by id hash) and the gating the rest, so the gating
    # is not trained on rewards that were fit to the very same pairs.
    fit_fraction: float = 1.0
    # >= 2: the gating is trained on out-of-fold probe values (each training pair's value from a probe fit, at the
    # same L2, on the other folds, by hash of the split key); the published probes are still fit on all pairs. A
    # probe's value on the very pairs it was fit to flatters it (train accuracy 0.84 vs validation 0.74 for
    # harmlessness in v0.4.0), and the gating, which learns whom to trust, would over-trust it. 0 = off.
    cross_fit: int = 0


@dataclass
class DebiasConfig:
    threshold: float = 0.03
    grid_max: float = 3.0
    grid_steps: int = 301
    # Rule objectives are debiased only if listed: most are discrete (ties), where subtracting λ·verbosity would
    # just break ties by length; repetition grows with length by construction, so it is debiased.
    rules: list[str] = field(default_factory=lambda: ["repetition"])


@dataclass
class GatingTrainConfig:
    input: Literal["prompt", "response"] = "prompt"
    hidden_dim: int = 256
    n_hidden: int = 2
    temperature: float = 10.0
    logit_scale_init: float = 1.0
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 20
    # Weight each "<source>/<objective>" group of pairs equally in the training and early-stopping losses (else: by
    # pair count).
    balance_groups: bool = False
    # "random": PyTorch's default init (ArmoRM); "uniform": last layer zeroed, so training starts from equal weights.
    init: Literal["random", "uniform"] = "random"
    seed: int = 0


@dataclass
class ObjectiveSet:
    regression: bool = True
    pairwise: bool = True
    rules: list[str] = field(
        default_factory=lambda: ["verbosity", "refusal", "compliance", "repetition", "markdown", "code_parses"]
    )
    debias: bool = True
    gating: Literal["learned", "equal"] = "learned"
    blackbox: bool = False  # ablation (a): one BT head on the response feature, nothing else


@dataclass
class TrainConfig:
    name: str = "armo-smollm2"
    version: str = ""  # empty: derived from the date
    store: str = "src/armo/bundled"
    alias: str = "current"
    backbone: str = "embedded"
    # The response feature the heads read: "last" (end-of-turn token, ArmoRM; v0.1.0-v0.5.0) or "mean" (over the
    # response span). Extraction caches both, so switching costs no new extraction.
    pooling: Pooling = "last"
    cache_dir: str = "runs/features"
    out_dir: str = "runs/train"
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    gating: GatingTrainConfig = field(default_factory=GatingTrainConfig)
    objectives: ObjectiveSet = field(default_factory=ObjectiveSet)
    publish: bool = True
    evaluate: bool = True
    fast_eval: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"pooling must be one of {', '.join(get_args(Pooling))}, got {self.pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config key(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if name in known else None
        kwargs[name] = _build(type(default), value) if is_dataclass(default) and isinstance(value, dict) else value
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    raw: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    cfg: TrainConfig = _build(TrainConfig, raw)
    return cfg
