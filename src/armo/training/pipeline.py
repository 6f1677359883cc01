"""`armo train run`: every stage end to end — features → objectives → standardise → debias → gating → evaluate →
publish. Each stage lives in its own module; this one only wires them and assembles the artifact.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from armo.model_store import rules
from armo.model_store.backbone import Backbone, backbone_ref
from armo.model_store.heads import ArmoHead, GatingNetwork
from armo.model_store.manifest import Manifest, Objective
from armo.model_store.reward_model import RewardModel
from armo.model_store.store import ModelStore
from armo.training.config import TrainConfig
from armo.training.data import id_fraction
from armo.training.debias import DebiasResult, Standardiser, fit_debias, identity_debias
from armo.training.evaluate import EvalResult, evaluate_artifact, score_items
from armo.training.extract import FeatureTable
from armo.training.featurize import featurize, get_backbone
from armo.training.gating import PairTensors, equal_gating, gating_config, train_gating
from armo.training.objectives import LinearObjective, bt_weights, fit_bt_probe, fit_ridge, rule_matrix
from armo.training.prepare import Dataset, build_eval_set, build_training_set, pair_group, split_key

log = logging.getLogger(__name__)
SERVE_MAX_LENGTH = 2048  # what the service truncates to; training features used cfg.extract.max_length


@dataclass
class Features:
    """Everything the fitting stages need, computed once per run (features are cached on disk anyway)."""

    train: Dataset
    table: FeatureTable
    seconds: float
    eval: Dataset | None = None
    eval_table: FeatureTable | None = None
    eval_seconds: float = 0.0


@dataclass
class Objectives:
    """k objectives: learned ones (w, b) and rules; raw values on the training items."""

    specs: list[LinearObjective | str]  # a str is a rule name
    raw: np.ndarray  # [N_items, k]
    # What the gating trains on, if it differs from `raw`: probe columns out of fold (`probes.cross_fit`).
    gating_raw: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return [s if isinstance(s, str) else s.name for s in self.specs]


@dataclass
class RunResult:
    manifest: Manifest
    head: ArmoHead
    eval: EvalResult | None
    report: dict[str, Any] = field(default_factory=dict)


def load_features(cfg: TrainConfig, backbone: Backbone | None, with_eval: bool) -> Features:
    train = build_training_set(cfg.data)
    table, seconds = featurize(cfg, train, "train", backbone)
    feats = Features(train, table, seconds)
    if with_eval:
        feats.eval = build_eval_set(cfg.eval, cfg.fast_eval)
        feats.eval_table, feats.eval_seconds = featurize(
            cfg, feats.eval, "rewardbench-fast" if cfg.fast_eval else "rewardbench-full", backbone
        )
    return feats


def _np(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def fit_objectives(cfg: TrainConfig, f: Features) -> Objectives:
    ds, h = f.train, _np(f.table.pooled(cfg.pooling))
    specs: list[LinearObjective | str] = []
    if cfg.objectives.blackbox:
        groups = sorted({pair_group(p) for p in ds.pairs})
        specs.append(_probe(cfg, f, "preference", groups, "black-box scalar RM: one BT head on all training pairs"))
    else:
        if cfg.objectives.regression:
            for name in sorted({k for r in ds.ratings for k in r.ratings}):
                tr = [
                    (ds.rating_item[i], r.ratings[name])
                    for i, r in enumerate(ds.ratings)
                    if name in r.ratings and not ds.rating_val[i]
                ]
                va = [
                    (ds.rating_item[i], r.ratings[name])
                    for i, r in enumerate(ds.ratings)
                    if name in r.ratings and ds.rating_val[i]
                ]
                if len(tr) < cfg.regression.min_rows or len(va) < 5:
                    log.warning("skipping regression objective %s: %d train / %d val rows", name, len(tr), len(va))
                    continue
                src = ",".join(sorted({r.source for r in ds.ratings if name in r.ratings}))
                specs.append(
                    fit_ridge(
                        name,
                        h[[i for i, _ in tr]],
                        np.array([y for _, y in tr]),
                        h[[i for i, _ in va]],
                        np.array([y for _, y in va]),
                        cfg.regression,
                        src,
                    )
                )
        if cfg.objectives.pairwise:
            for name, groups in cfg.probes.objectives.items():
                specs.append(_probe(cfg, f, name, groups, ""))
        specs.extend(cfg.objectives.rules)
    probe_groups = (
        {"preference": sorted({pair_group(p) for p in ds.pairs})} if cfg.objectives.blackbox else cfg.probes.objectives
    )
    raw = np.zeros((len(ds.items), len(specs)))
    rule_names = [s for s in specs if isinstance(s, str)]
    rule_raw = rule_matrix(ds.items, f.table, rule_names) if rule_names else np.zeros((len(ds.items), 0))
    j = 0
    for i, s in enumerate(specs):
        if isinstance(s, str):
            raw[:, i] = rule_raw[:, j]
            j += 1
        else:
            raw[:, i] = s.predict(h)
    gating_raw = None
    if cfg.probes.cross_fit >= 2:
        gating_raw = raw.copy()
        for i, s in enumerate(specs):
            if isinstance(s, LinearObjective) and s.kind == "pairwise":
                gating_raw[:, i] = _out_of_fold(cfg, f, s, probe_groups[s.name])
    return Objectives(specs, raw, gating_raw)


def _probe(cfg: TrainConfig, f: Features, name: str, groups: list[str], description: str) -> LinearObjective:
    ds, h = f.train, _np(f.table.pooled(cfg.pooling))
    sel = [i for i, p in enumerate(ds.pairs) if pair_group(p) in groups and _probe_share(cfg, p.id)]
    tr = [ds.pair_items[i] for i in sel if not ds.pair_val[i]]
    va = [ds.pair_items[i] for i in sel if ds.pair_val[i]]
    obj = fit_bt_probe(name, _pair_diff(h, tr), _pair_diff(h, va), cfg.probes, "+".join(groups))
    if description:
        obj.description = description
    return obj


def _out_of_fold(cfg: TrainConfig, f: Features, probe: LinearObjective, groups: list[str]) -> np.ndarray:
    """The probe's raw values [N_items] as the gating should see them: on the items of the pairs it was fit to,
    values from probes fit (at its L2) on the other `cross_fit` folds; elsewhere its own values (out of sample)."""
    ds, h = f.train, _np(f.table.pooled(cfg.pooling))
    values = probe.predict(h)
    k = cfg.probes.cross_fit
    fitted = [
        i for i, p in enumerate(ds.pairs) if pair_group(p) in groups and _probe_share(cfg, p.id) and not ds.pair_val[i]
    ]
    # folds follow the split's key, so with split_by="prompt" no prompt is on both sides of a fold either
    fold = {
        i: int(id_fraction(split_key(cfg.data, ds.pairs[i].id, ds.pairs[i].messages), "cross-fit") * k) for i in fitted
    }
    for j in range(k):
        held = {item for i in fitted if fold[i] == j for item in ds.pair_items[i]}
        # a pair sharing a response with the held-out fold must not be fit on either
        rest = [ds.pair_items[i] for i in fitted if fold[i] != j and not held.intersection(ds.pair_items[i])]
        rows = sorted(held)
        values[rows] = h[rows] @ bt_weights(_pair_diff(h, rest), probe.metrics["l2"]) + probe.b
    pairs = [ds.pair_items[i] for i in fitted]
    margin = values[[c for c, _ in pairs]] - values[[r for _, r in pairs]]
    probe.metrics["cross_fit_accuracy"] = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    return values


def _pair_diff(h: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """h_chosen - h_rejected [P, d] for (chosen item, rejected item) pairs."""
    return h[[c for c, _ in pairs]] - h[[r for _, r in pairs]]


def _probe_share(cfg: TrainConfig, pair_id: str) -> bool:
    return cfg.probes.fit_fraction >= 1.0 or id_fraction(pair_id, "probe") < cfg.probes.fit_fraction


def _pair_tensors(f: Features, idx: list[int], x: np.ndarray, r: np.ndarray) -> PairTensors:
    c = [f.train.pair_items[i][0] for i in idx]
    j = [f.train.pair_items[i][1] for i in idx]
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return PairTensors(t(x[c]), t(x[j]), t(r[c]), t(r[j]))


def _balanced_weights(f: Features, idx: list[int]) -> torch.Tensor:
    """Per-pair weights (mean 1) that give every "<source>/<objective>" group the same total weight."""
    groups = [pair_group(f.train.pairs[i]) for i in idx]
    counts = {g: groups.count(g) for g in set(groups)}
    return torch.tensor([len(groups) / (len(counts) * counts[g]) for g in groups])


def _val_pair_accuracy(
    f: Features, val_idx: list[int], head: ArmoHead, x: np.ndarray, debiased: np.ndarray
) -> dict[str, float]:
    """Pair accuracy (ties 0.5) of R = g(x) · r' on the validation pairs: overall, per source/objective, and
    "balanced" = the mean over those groups (the selection criterion: the group mix of the sample is a budget
    choice, not the mix users score, so no group should dominate the choice)."""
    if not val_idx:
        return {}
    p = _pair_tensors(f, val_idx, x, debiased)
    with torch.no_grad():
        margin = (head.gating(p.x_chosen) * p.r_chosen).sum(1) - (head.gating(p.x_rejected) * p.r_rejected).sum(1)
    return pair_accuracy(margin, [pair_group(f.train.pairs[i]) for i in val_idx])


# Keys of `pair_accuracy` / `crossval.cross_validate` results that are not pair groups.
SUMMARY_KEYS = ("all", "balanced", "balanced_se", "vs_base", "vs_base_se")


def balanced_mean(values: np.ndarray, groups: list[str]) -> tuple[dict[str, float], float, float]:
    """Per-group means of `values` [P], their mean (every group weighs the same) and its standard error (groups
    independent: sqrt(Σ_g var_g / n_g) / G, population variance — for 0/1 wins exactly the binomial p(1-p))."""
    labels = np.array(groups)
    means: dict[str, float] = {}
    variance = 0.0
    for g in sorted(set(groups)):
        v = values[labels == g]
        means[g] = float(v.mean())
        variance += float(v.var()) / len(v)
    return means, float(np.mean(list(means.values()))), float(np.sqrt(variance)) / len(means)


def wins(margin: torch.Tensor | np.ndarray) -> np.ndarray:
    """Chosen-minus-rejected margins [P] -> 1 (right), 0.5 (tie), 0 (wrong)."""
    m = np.asarray(margin, dtype=np.float64)
    return (m > 0) + 0.5 * (m == 0)


def pair_accuracy(margin: torch.Tensor | np.ndarray, groups: list[str]) -> dict[str, float]:
    """Accuracy (ties 0.5) of chosen-minus-rejected margins [P]: "all", per group, "balanced" (group mean) and its
    standard error "balanced_se" — the promotion margin of docs/RESULTS.md."""
    win = wins(margin)
    per_group, balanced, se = balanced_mean(win, groups)
    return {"all": float(win.mean()), **per_group, "balanced": balanced, "balanced_se": se}


def validation_accuracy(cfg: TrainConfig, versions: list[str], store: Path) -> dict[str, dict[str, float]]:
    """Pair accuracy of published artifacts on this config's validation pairs (cached features; RewardBench never
    read). Splits are by hash (of the id or of the prompt), so no artifact trained with the same split settings
    has seen these pairs: artifacts trained on different samples can be compared on the larger sample's validation
    split; an artifact trained with other split settings is refused."""
    f = load_features(cfg, None, with_eval=False)
    val_idx = [i for i, v in enumerate(f.train.pair_val) if v]
    chosen = [f.train.pair_items[i][0] for i in val_idx]
    rejected = [f.train.pair_items[i][1] for i in val_idx]
    groups = [pair_group(f.train.pairs[i]) for i in val_idx]
    backbone = get_backbone(cfg.backbone)
    models = ModelStore(store)
    out = {}
    for version in versions:
        manifest, head = models.load(cfg.name, version)
        trained = manifest.training.get("data", {})
        split = (trained.get("split_by", "id"), trained.get("val_fraction"))
        if split != (cfg.data.split_by, cfg.data.val_fraction):
            raise ValueError(
                f"{version} was trained with split_by={split[0]!r}, val_fraction={split[1]}: some of this config's "
                f"validation pairs (split_by={cfg.data.split_by!r}, val_fraction={cfg.data.val_fraction}) may be "
                "its training pairs"
            )
        scores, _, _ = score_items(RewardModel(backbone, head, manifest), f.train, f.table)
        out[version] = pair_accuracy(scores[chosen] - scores[rejected], groups)
    return out


def assemble(cfg: TrainConfig, f: Features, objs: Objectives, backbone: Backbone) -> RunResult:
    """Standardise → debias → gating → ArmoHead + Manifest."""
    std = Standardiser.fit(objs.raw)  # reference distribution: every training response
    r = std(objs.raw)  # [N, k]
    names = objs.names
    vi = names.index("verbosity") if "verbosity" in names else None
    if cfg.objectives.debias and vi is not None:
        skip = [i for i, s in enumerate(objs.specs) if isinstance(s, str) and s not in cfg.debias.rules]
        deb: DebiasResult = fit_debias(r, vi, cfg.debias, skip)
    else:
        deb = identity_debias(r, vi)
    debiased = r @ deb.transform.T
    # The gating's training pairs read out-of-fold probe values when cross-fitting (same standardiser, same T);
    # validation pairs were never fit on, so their published values are already out of sample.
    gating_debiased = debiased if objs.gating_raw is None else std(objs.gating_raw) @ deb.transform.T
    gcfg = gating_config(cfg.gating)
    x = _np(f.table.prompt if cfg.gating.input == "prompt" else f.table.pooled(cfg.pooling))
    train_idx = [i for i, v in enumerate(f.train.pair_val) if not v]
    if cfg.probes.fit_fraction < 1.0 and not cfg.objectives.blackbox:
        train_idx = [i for i in train_idx if not _probe_share(cfg, f.train.pairs[i].id)]
    val_idx = [i for i, v in enumerate(f.train.pair_val) if v]
    d, k = f.table.response.shape[1], len(names)
    gating_metrics: dict[str, float] = {}
    if cfg.objectives.gating == "equal" or k == 1:
        net: GatingNetwork = equal_gating(d, k, cfg.gating)
    else:
        train_pairs = _pair_tensors(f, train_idx, x, gating_debiased)
        val_pairs = _pair_tensors(f, val_idx, x, debiased)
        if cfg.gating.balance_groups:
            train_pairs.weight = _balanced_weights(f, train_idx)
            val_pairs.weight = _balanced_weights(f, val_idx)
        res = train_gating(train_pairs, val_pairs, cfg.gating)
        net, gating_metrics = res.network, res.metrics

    head = ArmoHead(d, k, gcfg)
    w = np.zeros((k, d))
    b = np.zeros(k)
    objectives = []
    for i, s in enumerate(objs.specs):
        mean, sd = float(std.mean[i]), float(std.std[i])
        if isinstance(s, str):
            rl = rules.RULES[s]
            objectives.append(
                Objective(
                    name=s,
                    kind="rule",
                    source=f"armo.model_store.rules:{s}",
                    rule=s,
                    offset=mean,
                    scale=sd,
                    description=f"{rl.description} Range [{rl.low}, {rl.high}]; standardised on training responses.",
                )
            )
        else:
            w[i] = s.w / sd
            b[i] = (s.b - mean) / sd
            objectives.append(
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
    with torch.no_grad():
        head.regression.weight.copy_(torch.tensor(w, dtype=torch.float32))
        head.bias.copy_(torch.tensor(b, dtype=torch.float32))
        head.transform.copy_(torch.tensor(deb.transform, dtype=torch.float32))
        head.gating.load_state_dict(net.state_dict())
    head.eval()
    val_accuracy = _val_pair_accuracy(f, val_idx, head, x, debiased)

    report = {
        # One selection criterion for every variant (black box, equal weights, learned gating): balanced pair
        # accuracy of the final score on the validation split of the training pairs. RewardBench is never used.
        "val_pair_accuracy": val_accuracy,
        "objectives": {o.name: dict(o.metrics) for o in objectives if o.metrics},
        "verbosity_spearman": {
            n: {"before": float(deb.before[i]), "after": float(deb.after[i]), "lambda": float(deb.lambdas[i])}
            for i, n in enumerate(names)
        },
        "gating": gating_metrics,
        "n_train_pairs": len(train_idx),
        "n_val_pairs": len(val_idx),
        "n_rating_rows": len(f.train.ratings),
        "n_train_responses": len(f.train.items),
    }
    manifest = Manifest(
        model=cfg.name,
        version=cfg.version or dt.datetime.now(dt.UTC).strftime("v%Y%m%d-%H%M%S"),
        code_version=_git_rev(),
        backbone=backbone_ref(backbone, SERVE_MAX_LENGTH),
        objectives=tuple(objectives),
        pooling=cfg.pooling,
        gating=gcfg.to_dict(),
        verbosity_objective="verbosity" if vi is not None else None,
        debias_lambda={n: float(deb.lambdas[i]) for i, n in enumerate(names)} if cfg.objectives.debias else {},
        debias_threshold=cfg.debias.threshold if cfg.objectives.debias else None,
        training=cfg.to_dict(),
        training_data=f.train.data_hashes,
    )
    return RunResult(manifest, head, None, report)


def _git_rev() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, timeout=5
        )
        return out.stdout.strip()
    except OSError:
        return ""


def run(cfg: TrainConfig, run_name: str = "default") -> RunResult:
    started = time.perf_counter()
    backbone = get_backbone(cfg.backbone)
    f = load_features(cfg, backbone, with_eval=cfg.evaluate)
    t_fit = time.perf_counter()
    objs = fit_objectives(cfg, f)
    result = assemble(cfg, f, objs, backbone)
    fit_seconds = time.perf_counter() - t_fit
    out_dir = Path(cfg.out_dir) / run_name
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = dict(result.report)
    metrics["wall_seconds"] = {"extract_train": f.seconds, "extract_eval": f.eval_seconds, "fit": fit_seconds}
    if cfg.evaluate and f.eval is not None and f.eval_table is not None:
        result.eval = evaluate_artifact(
            result.manifest, result.head, backbone, f.eval, f.eval_table, out_dir, fast=cfg.fast_eval, plots=cfg.plots
        )
        metrics["rewardbench"] = result.eval.scores
    metrics["wall_seconds"]["total"] = time.perf_counter() - started
    manifest = result.manifest.model_copy(update={"metrics": metrics})
    result.manifest = manifest
    (out_dir / "result.json").write_text(
        json.dumps({"run": run_name, "config": cfg.to_dict(), "metrics": metrics}, indent=2)
    )
    if cfg.publish:
        ModelStore(cfg.store).publish(manifest, result.head, alias=cfg.alias)
        log.info("published %s/%s to %s (alias %s)", manifest.model, manifest.version, cfg.store, cfg.alias)
    return result


def sweep(base: TrainConfig, variants: dict[str, TrainConfig]) -> dict[str, dict[str, float]]:
    """Validation-only model selection: every variant is fitted on the same cached features and scored by its
    validation pair accuracy; nothing is evaluated on RewardBench and nothing is published. Variants may change
    objectives, probes, debiasing and gating, not the data or the extraction (those would need other features)."""
    backbone = get_backbone(base.backbone)
    f = load_features(base, backbone, with_eval=False)
    out = {}
    for name, cfg in variants.items():
        if cfg.data != base.data or cfg.extract != base.extract or cfg.backbone != base.backbone:
            raise ValueError(f"sweep variant {name!r} changes the data, extraction or backbone")
        out[name] = assemble(cfg, f, fit_objectives(cfg, f), backbone).report["val_pair_accuracy"]
    return out
