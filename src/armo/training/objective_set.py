"""Stage 2: the objective set — regression objectives (ridge on ratings), Bradley-Terry probes (on pairs) and rules,
fit on the training features — and their raw values on every training response (out of fold for the gating when
`probes.cross_fit` asks)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from armo.training.config import TrainConfig
from armo.training.data import id_fraction
from armo.training.featurize import TrainingFeatures
from armo.training.objectives import LinearObjective, bt_weights, fit_bt_probe, fit_ridge, rule_matrix
from armo.training.prepare import pair_group, split_key

log = logging.getLogger(__name__)


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


def as_float64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def fit_objectives(cfg: TrainConfig, f: TrainingFeatures) -> Objectives:
    ds, h = f.train, as_float64(f.table.pooled(cfg.pooling))
    specs: list[LinearObjective | str] = []
    if cfg.objectives.blackbox:
        groups = sorted({pair_group(p) for p in ds.pairs})
        specs.append(_probe(cfg, f, "preference", groups, "black-box scalar RM: one BT head on all training pairs"))
    else:
        if cfg.objectives.regression:
            specs.extend(_regressions(cfg, f, h))
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


def _regressions(cfg: TrainConfig, f: TrainingFeatures, h: np.ndarray) -> list[LinearObjective]:
    """One ridge objective per rating name with enough labelled rows."""
    ds = f.train
    out = []
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
        out.append(
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
    return out


def _probe(cfg: TrainConfig, f: TrainingFeatures, name: str, groups: list[str], description: str) -> LinearObjective:
    ds, h = f.train, as_float64(f.table.pooled(cfg.pooling))
    sel = [i for i, p in enumerate(ds.pairs) if pair_group(p) in groups and in_probe_share(cfg, p.id)]
    tr = [ds.pair_items[i] for i in sel if not ds.pair_val[i]]
    va = [ds.pair_items[i] for i in sel if ds.pair_val[i]]
    obj = fit_bt_probe(name, _pair_diff(h, tr), _pair_diff(h, va), cfg.probes, "+".join(groups))
    if description:
        obj.description = description
    return obj


def _out_of_fold(cfg: TrainConfig, f: TrainingFeatures, probe: LinearObjective, groups: list[str]) -> np.ndarray:
    """The probe's raw values [N_items] as the gating should see them: on the items of the pairs it was fit to,
    values from probes fit (at its L2) on the other `cross_fit` folds; elsewhere its own values (out of sample)."""
    ds, h = f.train, as_float64(f.table.pooled(cfg.pooling))
    values = probe.predict(h)
    k = cfg.probes.cross_fit
    fitted = [
        i
        for i, p in enumerate(ds.pairs)
        if pair_group(p) in groups and in_probe_share(cfg, p.id) and not ds.pair_val[i]
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


def in_probe_share(cfg: TrainConfig, pair_id: str) -> bool:
    """Whether the probes may fit this pair (`probes.fit_fraction`; the gating trains on the others)."""
    return cfg.probes.fit_fraction >= 1.0 or id_fraction(pair_id, "probe") < cfg.probes.fit_fraction
