"""Training configuration: one dataclass per stage, loaded from JSON and dumped into the manifest.

Every field carries its help text in `metadata["help"]` (TRL's style), so the reason for a default sits next to it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from armo.model_store.devices import check_device, check_dtype
from armo.model_store.heads import GatingConfig
from armo.model_store.manifest import Pooling
from armo.model_store.rules import RULES
from armo.training.stage0.config import BackboneTuneConfig


def default_data_root() -> str:
    """$ARMO_DATA_DIR, else ../shared/data next to the repository."""
    return os.environ.get("ARMO_DATA_DIR", str(Path(__file__).resolve().parents[4] / "shared" / "data"))


def default_store_root() -> str:
    """$ARMO_STORE_ROOT (the store the service reads), else runs/store: training never writes into the package."""
    return os.environ.get("ARMO_STORE_ROOT") or "runs/store"


@dataclass
class SampleExtension:
    pair_sample: dict[str, int] = field(
        default_factory=dict, metadata={"help": "New total pairs per '<source>/<objective>' group."}
    )
    rating_sample: dict[str, int] = field(
        default_factory=dict, metadata={"help": "New total rating rows per '<source>/<group>'."}
    )
    parts: int = field(
        default=2,
        metadata={"help": "Extraction jobs for this extension's new responses (parallel processes may take one each)."},
    )


@dataclass
class DataConfig:
    root: str = field(
        default_factory=default_data_root,
        metadata={"help": "Data directory ($ARMO_DATA_DIR, else ../shared/data next to the repository)."},
    )
    ratings: list[str] = field(
        default_factory=lambda: [
            "train/ratings/justeval_multiaspect.jsonl.gz",
            "train/ratings/ultrafeedback_overall.jsonl.gz",
        ],
        metadata={"help": "Rating files (relative to `root`) the regression objectives are fit on."},
    )
    pairwise: list[str] = field(
        default_factory=lambda: [
            "train/pairwise/hh_rlhf.jsonl.gz",
            "train/pairwise/rmb.jsonl.gz",
            "train/pairwise/ultrafeedback.jsonl.gz",
        ],
        metadata={"help": "Preference-pair files (relative to `root`) the probes and the gating are fit on."},
    )
    pair_sample: dict[str, int] = field(
        default_factory=lambda: {
            "hh-rlhf/helpfulness": 150,
            "hh-rlhf/harmlessness": 200,
            "rmb/helpfulness": 80,
            "rmb/harmlessness": 80,
            "ultrafeedback/overall": 60,
        },
        metadata={"help": "Pairs per '<source>/<objective>': a subsample sized so extraction fits a CPU budget."},
    )
    rating_sample: dict[str, int] = field(
        default_factory=lambda: {"just-eval/multi": 200, "just-eval/justeval-safety": 100},
        metadata={
            "help": "Rating rows per '<source>/<group>'; group 'multi' for multi-aspect rows, else the rating's name."
        },
    )
    ratings_follow_pairs: list[str] = field(
        default_factory=lambda: ["ultrafeedback"],
        metadata={"help": "Sources whose rating rows are taken iff their pair was sampled (their features are free)."},
    )
    extensions: list[SampleExtension] = field(
        default_factory=list,
        metadata={
            "help": "Growth steps of the sample, in order: each gives new totals (a superset, same seed) featurised as "
            "separate jobs after the earlier ones, so every earlier cache is reused when the sample grows."
        },
    )
    val_fraction: float = field(
        default=0.15, metadata={"help": "Share of training pairs and ratings held out for validation (by hash)."}
    )
    split_by: Literal["id", "prompt"] = field(
        default="id",
        metadata={
            "help": "What the train/validation split hashes: 'id' (the row id) or 'prompt' (the conversation before "
            "the response). 'prompt' keeps every pair and rating of a prompt on one side: RMB has many pairs per "
            "prompt, and with the id split most of its validation pairs share a response or the prompt with a "
            "training pair, so probes that fit in-sample look good on 'held-out' pairs."
        },
    )
    seed: int = field(default=0, metadata={"help": "Sampling seed."})

    def __post_init__(self) -> None:
        # JSON configs give plain dicts
        self.extensions = [e if isinstance(e, SampleExtension) else SampleExtension(**e) for e in self.extensions]


@dataclass
class EvalConfig:
    root: str = field(
        default_factory=default_data_root,
        metadata={"help": "Data directory ($ARMO_DATA_DIR, else ../shared/data next to the repository)."},
    )
    rewardbench: str = field(
        default="eval/rewardbench_filtered.jsonl.gz", metadata={"help": "RewardBench v1 pairs, relative to `root`."}
    )
    prior: list[str] = field(
        default_factory=lambda: ["eval/anthropic_hhh.jsonl.gz"],
        metadata={"help": "Prior-set files (relative to `root`) for the v1 score."},
    )
    fast_fraction: float = field(
        default=0.1, metadata={"help": "Fast mode: share of each subset's pairs (stratified), for quick checks."}
    )
    fast_min: int = field(
        default=6, metadata={"help": "Fast mode: at least this many pairs per subset, so no subset is empty."}
    )
    seed: int = field(default=0, metadata={"help": "Fast-mode sampling seed."})


@dataclass
class ExtractConfig:
    max_length: int = field(
        default=512,
        metadata={
            "help": "Token cap on prompt + response: the prompt's start is cut first, then the response (its "
            "end-of-turn token, where the feature is read, stays)."
        },
    )
    min_prompt_tokens: int = field(
        default=64,
        metadata={"help": "Prompt tokens always kept when truncating, so the gating still sees the question."},
    )
    max_pass_tokens: int = field(
        default=4096,
        metadata={
            "help": "Real tokens per forward pass when packed; padded rows × longest when not (training extraction)."
        },
    )
    shard_size: int = field(
        default=256, metadata={"help": "Responses per cache shard: the unit an interrupted extraction resumes from."}
    )
    threads: int = field(default=0, metadata={"help": "Torch threads; 0 leaves torch's default."})


@dataclass
class RegressionConfig:
    alphas: list[float] = field(
        default_factory=lambda: [10.0**e for e in range(-4, 5)],
        metadata={"help": "Ridge penalties tried; the best on the validation rows is kept."},
    )
    min_rows: int = field(
        default=30, metadata={"help": "Objectives with fewer labelled training rows are skipped (too noisy to fit)."}
    )


@dataclass
class ProbeConfig:
    """Linear Bradley-Terry probes (pairwise objectives and the black-box baseline). Probe names follow the
    `<data>-<aspect>` scheme of `armo.training.objective_set.probe_name`."""

    objectives: dict[str, list[str]] = field(
        default_factory=lambda: {
            "hhrmb-helpfulness": ["hh-rlhf/helpfulness", "rmb/helpfulness"],
            "hhrmb-harmlessness": ["hh-rlhf/harmlessness", "rmb/harmlessness"],
            "mixed-preference": ["ultrafeedback/overall", "hh-rlhf/helpfulness", "rmb/helpfulness"],
        },
        metadata={
            "help": "Objective name -> the '<source>/<objective>' pair groups it is learned from; name it "
            "`probe_name(groups)` (armo.training.objective_set: e.g. 'hhrmb-helpfulness'). A probe is dropped by "
            "leaving it out, e.g. one fit on a subset of another probe's pairs ('rmb-helpfulness' beside "
            "'hhrmb-helpfulness')."
        },
    )
    weight_decays: list[float] = field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0],
        metadata={"help": "L2 penalties tried; the best on the validation pairs is kept."},
    )
    fit_fraction: float = field(
        default=1.0,
        metadata={
            "help": "< 1: probes see only this share of the training pairs (by id hash) and the gating the rest, so "
            "the gating is not trained on rewards fit to the very same pairs."
        },
    )
    cross_fit: int = field(
        default=0,
        metadata={
            "help": ">= 2: the gating trains on out-of-fold probe values (each training pair's value from a probe fit "
            "at the same L2 on the other folds, keyed like the split); published probes are still fit on all pairs. "
            "In-sample probe values flatter the probe, and the gating, which learns whom to trust, would over-trust "
            "it. 0 = off."
        },
    )


@dataclass
class DebiasConfig:
    threshold: float = field(
        default=0.03, metadata={"help": "Target |Spearman| of each debiased objective with verbosity."}
    )
    grid_max: float = field(default=3.0, metadata={"help": "Largest λ searched."})
    grid_steps: int = field(default=301, metadata={"help": "λ grid points in [0, grid_max]."})
    rules: list[str] = field(
        default_factory=lambda: ["repetition"],
        metadata={
            "help": "Rule functions whose objectives (either sign) are debiased: most rules are discrete (ties), "
            "where subtracting λ·verbosity would just break ties by length; repetition grows with length by "
            "construction."
        },
    )


@dataclass(frozen=True)
class GatingTrainConfig(GatingConfig):
    """The gating network's architecture (`GatingConfig`, inherited, with training defaults) and how it is fit."""

    hidden_dim: int = field(
        default=256, metadata={"help": "Hidden width; below ArmoRM's 1024 because the sample is thousands of pairs."}
    )
    n_hidden: int = field(default=2, metadata={"help": "Hidden layers; fewer than ArmoRM's 3 for the small sample."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout between hidden layers, against overfitting."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (cosine decay)."})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay."})
    batch_size: int = field(default=256, metadata={"help": "Pairs per step."})
    max_epochs: int = field(default=200, metadata={"help": "Epoch cap; early stopping usually ends sooner."})
    patience: int = field(
        default=20, metadata={"help": "Epochs without a better validation loss before stopping early."}
    )
    balance_groups: bool = field(
        default=False,
        metadata={
            "help": "Weight each '<source>/<objective>' pair group equally in the training and early-stopping losses "
            "(else by pair count), so the sample's group mix does not decide whom the gating trusts."
        },
    )
    init: Literal["random", "uniform"] = field(
        default="random",
        metadata={
            "help": "'random': PyTorch's default init (ArmoRM); 'uniform': last layer zeroed, so training starts "
            "from equal weights."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for the init and the batch order (reproducible fits)."})


@dataclass
class ObjectiveSet:
    regression: bool = field(default=True, metadata={"help": "Ridge objectives from the rating files."})
    pairwise: bool = field(default=True, metadata={"help": "Bradley-Terry probes from `probes.objectives`."})
    rules: list[str] = field(
        default_factory=lambda: ["verbosity", "refusal", "repetition", "markdown", "code_parses"],
        metadata={
            "help": "Rule functions (armo.model_store.rules) offered with sign +1, each as objective "
            "'rule-<rule>' (underscores as hyphens: 'rule-code-parses'); 'verbosity' is also the debias target."
        },
    )
    negated_rules: dict[str, str] = field(
        default_factory=lambda: {"refusal": "compliance"},
        metadata={
            "help": "Rule function -> aspect name: the rule also offered with sign −1, as objective 'rule-<aspect>' "
            "(the default: 'rule-compliance' = −refusal after standardisation). Gating weights are non-negative "
            "(softmax), so a rule whose direction depends on the prompt (refuse harmful requests, answer benign ones) "
            "needs both signs to be usable either way; {} offers each rule in one direction only."
        },
    )
    rule_scale_floor: bool = field(
        default=True,
        metadata={
            "help": "Standardise each rule with scale max(std, its `min_scale`) (armo.model_store.rules.rule), so a "
            "rare event is not many σ; false: the plain std (artifacts up to v0.4.0)."
        },
    )
    debias: bool = field(default=True, metadata={"help": "Decorrelate objectives from verbosity (ArmoRM's T)."})
    gating: Literal["learned", "equal"] = field(
        default="learned", metadata={"help": "'learned': the prompt-conditioned MLP; 'equal': fixed 1/k (ablation)."}
    )
    blackbox: bool = field(
        default=False,
        metadata={"help": "Ablation: one BT head on the response feature, nothing else (the scalar-RM baseline)."},
    )

    def __post_init__(self) -> None:
        for name in [*self.rules, *self.negated_rules]:
            r = RULES.get(name)
            if r is None:
                raise ValueError(f"objectives: unknown rule {name!r}; known: {', '.join(sorted(RULES))}")
            if r.legacy:
                raise ValueError(f"objectives: rule {name!r} is legacy (old artifacts only): {r.description}")
        names = [n.replace("_", "-") for n in [*self.rules, *self.negated_rules.values()]]  # as in 'rule-<name>'
        if len(set(names)) != len(names):
            raise ValueError(f"objectives: rule objective names collide: rules {self.rules}, {self.negated_rules}")


@dataclass
class TrainConfig:
    name: str = field(default="armo-smollm2", metadata={"help": "Model name in the store."})
    version: str = field(default="", metadata={"help": "Version to publish; empty: derived from the date."})
    store: str = field(
        default_factory=default_store_root,
        metadata={
            "help": "Store root to publish to: $ARMO_STORE_ROOT, else runs/store (git-ignored), never the installed "
            "package."
        },
    )
    alias: str = field(default="current", metadata={"help": "Alias pointed at the published version."})
    backbone: str = field(
        default="embedded", metadata={"help": "Backbone: 'embedded' (SmolLM2), a local directory or a hub id."}
    )
    device: str = field(
        default="cpu",
        metadata={
            "help": "Torch device of the jobs' backbone passes (extraction, stage 0, evaluation): cpu, cuda, cuda:N "
            "or mps. Caches are keyed by backbone, data, cap and dtype, not device; heads are fit on the CPU."
        },
    )
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata={"help": "Backbone precision of extraction and evaluation (cached apart)."}
    )
    pooling: Pooling = field(
        default="last",
        metadata={
            "help": "Response feature the heads read: 'last' (end-of-turn token, ArmoRM) or 'mean' (over the response "
            "span). Extraction caches both, so switching needs no new extraction."
        },
    )
    cache_dir: str = field(default="runs/features", metadata={"help": "Feature cache (resumable extraction jobs)."})
    out_dir: str = field(default="runs/train", metadata={"help": "Run outputs: result.json and plots per run name."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training data and its sample."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "RewardBench evaluation set."})
    extract: ExtractConfig = field(default_factory=ExtractConfig, metadata={"help": "Feature extraction."})
    regression: RegressionConfig = field(
        default_factory=RegressionConfig, metadata={"help": "Ridge regression objectives."}
    )
    probes: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": "Bradley-Terry probe objectives."})
    debias: DebiasConfig = field(default_factory=DebiasConfig, metadata={"help": "Verbosity debiasing."})
    gating: GatingTrainConfig = field(
        default_factory=GatingTrainConfig, metadata={"help": "Gating network architecture and training."}
    )
    objectives: ObjectiveSet = field(
        default_factory=ObjectiveSet, metadata={"help": "Which objectives and stages the head has."}
    )
    stage0: BackboneTuneConfig = field(
        default_factory=BackboneTuneConfig, metadata={"help": "Reward-tuning of the backbone (stage 0)."}
    )
    publish: bool = field(
        default=False,
        metadata={"help": "Publish the artifact to `store` (`armo train run --publish`); off: results only."},
    )
    evaluate: bool = field(default=True, metadata={"help": "Score the artifact on RewardBench after training."})
    fast_eval: bool = field(
        default=True, metadata={"help": "Evaluate on the stratified fast subset instead of every pair."}
    )
    plots: bool = field(default=True, metadata={"help": "Write the evaluation plots."})

    def __post_init__(self) -> None:
        check_device(self.device)
        check_dtype(self.dtype, self.device, allowed=("float32", "bfloat16"))
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
