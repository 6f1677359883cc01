"""Stages 3-4 and the artifact: standardise → debias → gating on fitted objectives, then the `ArmoHead` (W, b, T,
gating) and the `Manifest` that describes it (objective list, debiasing, gating config, training config)."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from armo.model_store import rules
from armo.model_store.backbone import Backbone, backbone_ref
from armo.model_store.delta import DELTA_FILE
from armo.model_store.heads import ArmoHead, GatingConfig, GatingNetwork
from armo.model_store.manifest import Dtype, Manifest, Objective, Precision
from armo.training.config import TrainConfig
from armo.training.debias import DebiasResult, Standardiser, fit_debias, identity_debias
from armo.training.evaluate import EvalResult
from armo.training.featurize import TrainingFeatures
from armo.training.gating import (
    balanced_weights,
    equal_gating,
    gating_config,
    pair_tensors,
    train_gating,
    val_pair_accuracy,
)
from armo.training.objective_set import Objectives, RuleObjective, as_float64, in_probe_share

# The token cap the artifact declares (manifest backbone.max_length): the service truncates requests at the manifest's
# max_length, so this, not cfg.extract.max_length, is what serving uses. Training features are read at the shorter
# cfg.extract.max_length only to bound extraction time; the heads read one hidden state per sequence at any length.
SERVE_MAX_LENGTH = 2048
# How a manifest records the data roots (data.root, eval.root): a path of the training machine means nothing where
# the artifact is served or retrained, so the root is named by the variable that sets it; the files are named
# relative to it and pinned by sha256 (training_data).
DATA_ROOT = "$ARMO_DATA_DIR"


def recorded_config(cfg: TrainConfig) -> dict[str, Any]:
    """The run's config as the manifest records it: every setting, the data roots as DATA_ROOT."""
    config = cfg.to_dict()
    for section in ("data", "eval"):
        config[section] = {**config[section], "root": DATA_ROOT}
    return config


@dataclass
class RunResult:
    manifest: Manifest
    head: ArmoHead
    eval: EvalResult | None
    report: dict[str, Any] = field(default_factory=dict)


@dataclass
class Debiased:
    """Standardised, verbosity-debiased objective values on every training item."""

    std: Standardiser  # raw -> standardised, fit on every training response
    debias: DebiasResult  # T and the λ per objective
    verbosity: int | None  # column of the verbosity objective
    values: np.ndarray  # [N, k] r' = T std(raw)
    gating_values: np.ndarray  # [N, k] what the gating trains on (out-of-fold probe columns when cross-fitting)


@dataclass
class Gating:
    network: GatingNetwork
    metrics: dict[str, float]
    x: np.ndarray  # [N, d] gating input per item
    train_idx: list[int]  # pairs it was trained on
    val_idx: list[int]  # pairs it was early-stopped and is selected on


def assemble(cfg: TrainConfig, f: TrainingFeatures, objs: Objectives, backbone: Backbone) -> RunResult:
    """Standardise → debias → gating → ArmoHead + Manifest."""
    deb = standardise_and_debias(cfg, objs)
    gating = fit_gating(cfg, f, deb)
    gcfg = gating_config(cfg.gating)
    head = build_head(f.table.response.shape[1], objs, deb, gating.network, gcfg)
    objectives = manifest_objectives(objs, deb.std)
    report = {
        # One selection criterion for every variant (black box, equal weights, learned gating): balanced pair
        # accuracy of the final score on the validation split of the training pairs. RewardBench is never used.
        "val_pair_accuracy": val_pair_accuracy(f.train, gating.val_idx, head, gating.x, deb.values),
        "objectives": {o.name: dict(o.metrics) for o in objectives if o.metrics},
        "verbosity_spearman": {
            n: {
                "before": float(deb.debias.before[i]),
                "after": float(deb.debias.after[i]),
                "lambda": float(deb.debias.lambdas[i]),
            }
            for i, n in enumerate(objs.names)
        },
        "gating": gating.metrics,
        "n_train_pairs": len(gating.train_idx),
        "n_val_pairs": len(gating.val_idx),
        "n_rating_rows": len(f.train.ratings),
        "n_train_responses": len(f.train.items),
    }
    manifest = Manifest(
        model=cfg.name,
        version=cfg.version or dt.datetime.now(dt.UTC).strftime("v%Y%m%d-%H%M%S"),
        code_version=_git_rev(),
        backbone=backbone_ref(backbone, SERVE_MAX_LENGTH),
        backbone_delta=backbone.delta.model_copy(update={"file": DELTA_FILE}) if backbone.delta else None,
        objectives=tuple(objectives),
        pooling=cfg.pooling,
        precision=Precision(fit=cast(Dtype, backbone.precision)),  # the features the heads were fit on
        gating=gcfg.to_dict(),
        verbosity_objective=objs.names[deb.verbosity] if deb.verbosity is not None else None,
        debias_lambda=(
            {n: float(deb.debias.lambdas[i]) for i, n in enumerate(objs.names)} if cfg.objectives.debias else {}
        ),
        debias_threshold=cfg.debias.threshold if cfg.objectives.debias else None,
        training=recorded_config(cfg),
        training_data=f.train.data_hashes,
    )
    return RunResult(manifest, head, None, report)


def standardise_and_debias(cfg: TrainConfig, objs: Objectives) -> Debiased:
    floor = objs.scale_floors() if cfg.objectives.rule_scale_floor else None
    std = Standardiser.fit(objs.raw, floor)  # reference distribution: every training response
    r = std(objs.raw)  # [N, k]
    vi = verbosity_column(objs)
    if cfg.objectives.debias and vi is not None:
        skip = [i for i, s in enumerate(objs.specs) if isinstance(s, RuleObjective) and s.rule not in cfg.debias.rules]
        deb = fit_debias(r, vi, cfg.debias, skip)
    else:
        deb = identity_debias(r, vi)
    debiased = r @ deb.transform.T
    # The gating's training pairs read out-of-fold probe values when cross-fitting (same standardiser, same T);
    # validation pairs were never fit on, so their published values are already out of sample.
    gating_debiased = debiased if objs.gating_raw is None else std(objs.gating_raw) @ deb.transform.T
    return Debiased(std, deb, vi, debiased, gating_debiased)


def verbosity_column(objs: Objectives) -> int | None:
    """The column debiasing subtracts: the verbosity rule with sign +1 (`rule-verbosity`), if the set has it."""
    cols = [
        i for i, s in enumerate(objs.specs) if isinstance(s, RuleObjective) and (s.rule, s.sign) == ("verbosity", 1)
    ]
    return cols[0] if cols else None


def fit_gating(cfg: TrainConfig, f: TrainingFeatures, deb: Debiased) -> Gating:
    """The gating network on the training pairs (or fixed equal weights), early-stopped on the validation pairs."""
    x = as_float64(f.table.prompt if cfg.gating.input == "prompt" else f.table.pooled(cfg.pooling))
    train_idx = [i for i, v in enumerate(f.train.pair_val) if not v]
    if cfg.probes.fit_fraction < 1.0 and not cfg.objectives.blackbox:
        train_idx = [i for i in train_idx if not in_probe_share(cfg, f.train.pairs[i].id)]
    val_idx = [i for i, v in enumerate(f.train.pair_val) if v]
    d, k = f.table.response.shape[1], deb.values.shape[1]
    if cfg.objectives.gating == "equal" or k == 1:
        return Gating(equal_gating(d, k, cfg.gating), {}, x, train_idx, val_idx)
    train_pairs = pair_tensors(f.train, train_idx, x, deb.gating_values)
    val_pairs = pair_tensors(f.train, val_idx, x, deb.values)
    if cfg.gating.balance_groups:
        train_pairs.weight = balanced_weights(f.train, train_idx)
        val_pairs.weight = balanced_weights(f.train, val_idx)
    res = train_gating(train_pairs, val_pairs, cfg.gating)
    return Gating(res.network, res.metrics, x, train_idx, val_idx)


def build_head(d: int, objs: Objectives, deb: Debiased, net: GatingNetwork, gcfg: GatingConfig) -> ArmoHead:
    """W, b with the standardiser folded in (rule rows stay zero: rules enter r as standardised columns), T, gating."""
    k = len(objs.specs)
    head = ArmoHead(d, k, gcfg)
    w = np.zeros((k, d))
    b = np.zeros(k)
    for i, s in enumerate(objs.specs):
        if not isinstance(s, RuleObjective):
            mean, sd = float(deb.std.mean[i]), float(deb.std.std[i])
            w[i] = s.w / sd
            b[i] = (s.b - mean) / sd
    with torch.no_grad():
        head.regression.weight.copy_(torch.tensor(w, dtype=torch.float32))
        head.bias.copy_(torch.tensor(b, dtype=torch.float32))
        head.transform.copy_(torch.tensor(deb.debias.transform, dtype=torch.float32))
        head.gating.load_state_dict(net.state_dict())
    return head.eval()


def manifest_objectives(objs: Objectives, std: Standardiser) -> list[Objective]:
    """The manifest's objective list: kind, source, one-line description, standardisation (sign, offset, scale:
    the scale actually used, floor included) and validation metrics of each objective."""
    out = []
    for i, s in enumerate(objs.specs):
        mean, sd = float(std.mean[i]), float(std.std[i])
        if isinstance(s, RuleObjective):
            rl = rules.RULES[s.rule]
            out.append(
                Objective(
                    name=s.name,
                    kind="rule",
                    source=f"armo.model_store.rules:{s.rule}",
                    rule=s.rule,
                    sign=s.sign,
                    offset=s.sign * mean,  # the column held sign · rule(x); the manifest's offset is rule(x)'s
                    scale=sd,
                    description=f"{s.description} Range [{rl.low:g}, {rl.high:g}]; standardised on the training "
                    f"responses (scale floor {rl.min_scale:g}).",
                )
            )
        else:
            out.append(
                Objective(
                    name=s.name,
                    kind=s.kind,
                    source=s.source,
                    offset=mean,
                    scale=sd,
                    metrics=s.metrics,
                    description=s.description + "; standardised on the training responses (folded into W, b)",
                )
            )
    return out


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        )
        return out.stdout.strip()
    except OSError:
        return ""
