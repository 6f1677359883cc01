"""Stage 2: the objective set — regression objectives (ridge on ratings), Bradley-Terry probes (on pairs) and rules,
fit on the training features — and their raw values on every training response (out of fold for the gating when
`probes.cross_fit` asks).

Objective names are `<source>-<aspect>`, lower case, so a dashboard user can tell them apart and see where each
comes from; every objective also gets a one-line description in the manifest.

- ratings: the rating's own name in the data, which already is `<judge>-<aspect>` (`justeval-clarity`,
  `ultrafeedback-overall`); description: the judge, the aspect and the label range.
- probes: `probe_name(groups)` of the '<source>/<objective>' pair groups they are fit on. The data part is the
  source's short tag (its name up to the first hyphen: hh-rlhf → `hh`), several sources' tags concatenated in
  alphabetical order (`hhrmb`); the aspect is the groups' common objective, UltraFeedback's `overall` being a
  `preference`. Groups of different aspects are `mixed-preference`; the black-box head on every pair is
  `all-preference`. So: `hhrmb-helpfulness`, `hhrmb-harmlessness`, `mixed-preference`, `ultrafeedback-preference`,
  `rmb-helpfulness`. The names are the config's keys (`probes.objectives`); the scheme is what they should be.
- rules: `rule-<rule>` with the rule function's underscores as hyphens (`rule-verbosity`, `rule-code-parses`), sign
  +1; a rule also offered the other way round (`objectives.negated_rules`) is `rule-<aspect>` with sign −1
  (`rule-compliance` = refusal · −1). The manifest's `rule` field names the rule function either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from armo.model_store import rules
from armo.training.bradley_terry import accuracy
from armo.training.config import TrainConfig
from armo.training.data import id_fraction
from armo.training.featurize import TrainingFeatures
from armo.training.objective_fits import LinearObjective, bt_weights, fit_bt_probe, fit_ridge, rule_matrix
from armo.training.prepare import pair_group, split_key

log = logging.getLogger(__name__)


BLACKBOX_NAME = "all-preference"


def probe_name(groups: Sequence[str]) -> str:
    """The `<data>-<aspect>` name of a probe fit on these '<source>/<objective>' pair groups (module docstring)."""
    sources = sorted({g.split("/", 1)[0].split("-", 1)[0] for g in groups})
    aspects = {"preference" if g.split("/", 1)[-1] == "overall" else g.split("/", 1)[-1] for g in groups}
    if len(aspects) > 1:
        return "mixed-preference"
    return f"{''.join(sources)}-{aspects.pop()}"


def rule_objective_name(name: str) -> str:
    """`rule-<name>`, underscores as hyphens: a rule function's objective, or the aspect of a negated rule."""
    return "rule-" + name.replace("_", "-")


@dataclass
class RuleObjective:
    """A rule function read with a sign: r = sign · (rule(x) − offset) / scale."""

    name: str
    rule: str  # the function in armo.model_store.rules
    sign: Literal[1, -1]
    description: str


def rule_objectives(cfg: TrainConfig) -> list[RuleObjective]:
    """`objectives.rules` with sign +1, each followed by its sign −1 twin if `objectives.negated_rules` lists it
    (the column order of artifacts up to v0.4.0: refusal, then compliance), then negated rules offered one way."""
    negated = cfg.objectives.negated_rules

    def twin(r: str) -> RuleObjective:
        desc = f"The {r} rule with sign −1 ({negated[r]}: high when {r} is low). {rules.RULES[r].description}"
        return RuleObjective(rule_objective_name(negated[r]), r, -1, desc)

    out: list[RuleObjective] = []
    for r in cfg.objectives.rules:
        out.append(RuleObjective(rule_objective_name(r), r, 1, rules.RULES[r].description))
        if r in negated:
            out.append(twin(r))
    return out + [twin(r) for r in negated if r not in cfg.objectives.rules]


@dataclass
class Objectives:
    """k objectives: learned ones (w, b) and rules; raw values on the training items."""

    specs: list[LinearObjective | RuleObjective]
    raw: np.ndarray  # [N_items, k]; a rule column holds sign · rule(x), so the standardiser sees its direction
    # What the gating trains on, if it differs from `raw`: probe columns out of fold (`probes.cross_fit`).
    gating_raw: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def scale_floors(self) -> np.ndarray:
        """[k] the least standardisation scale of each column: a rule's `min_scale`, 0 for learned objectives."""
        return np.array([rules.RULES[s.rule].min_scale if isinstance(s, RuleObjective) else 0.0 for s in self.specs])


def as_float64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def fit_objectives(cfg: TrainConfig, f: TrainingFeatures) -> Objectives:
    ds, h = f.train, as_float64(f.table.pooled(cfg.pooling))
    specs: list[LinearObjective | RuleObjective] = []
    all_groups = sorted({pair_group(p) for p in ds.pairs})
    if cfg.objectives.blackbox:
        desc = "black-box scalar RM: one Bradley-Terry head on every training pair"
        specs.append(_probe(cfg, f, BLACKBOX_NAME, all_groups, desc))
    else:
        if cfg.objectives.regression:
            specs.extend(_regressions(cfg, f, h))
        if cfg.objectives.pairwise:
            for name, groups in cfg.probes.objectives.items():
                specs.append(_probe(cfg, f, name, groups, probe_description(groups)))
        specs.extend(rule_objectives(cfg))
    probe_groups = {BLACKBOX_NAME: all_groups} if cfg.objectives.blackbox else cfg.probes.objectives
    raw = np.zeros((len(ds.items), len(specs)))
    rule_specs = [s for s in specs if isinstance(s, RuleObjective)]
    rule_fns = sorted({s.rule for s in rule_specs})  # each function evaluated once, whatever its signs
    rule_raw = rule_matrix(ds.items, f.table, rule_fns) if rule_fns else np.zeros((len(ds.items), 0))
    for i, s in enumerate(specs):
        if isinstance(s, RuleObjective):
            raw[:, i] = s.sign * rule_raw[:, rule_fns.index(s.rule)]
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


def probe_description(groups: Sequence[str]) -> str:
    """One line: what a probe on these pair groups learns, from which data."""
    aspects = sorted({g.split("/", 1)[-1] for g in groups})
    what = " or ".join("overall" if a == "overall" else f"for {a}" for a in aspects)
    return f"Bradley-Terry probe of which response is preferred {what}, fit on {' + '.join(groups)} pairs"


def _probe(cfg: TrainConfig, f: TrainingFeatures, name: str, groups: list[str], description: str) -> LinearObjective:
    ds, h = f.train, as_float64(f.table.pooled(cfg.pooling))
    sel = [i for i, p in enumerate(ds.pairs) if pair_group(p) in groups and in_probe_share(cfg, p.id)]
    tr = [ds.pair_items[i] for i in sel if not ds.pair_val[i]]
    va = [ds.pair_items[i] for i in sel if ds.pair_val[i]]
    obj = fit_bt_probe(name, _pair_diff(h, tr), _pair_diff(h, va), cfg.probes, "+".join(groups))
    obj.description = f"{description} (L2 {obj.metrics['l2']:g}, chosen on validation accuracy)"
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
    probe.metrics["cross_fit_accuracy"] = accuracy(margin)
    return values


def _pair_diff(h: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """h_chosen - h_rejected [P, d] for (chosen item, rejected item) pairs."""
    return h[[c for c, _ in pairs]] - h[[r for _, r in pairs]]


def in_probe_share(cfg: TrainConfig, pair_id: str) -> bool:
    """Whether the probes may fit this pair (`probes.fit_fraction`; the gating trains on the others)."""
    return cfg.probes.fit_fraction >= 1.0 or id_fraction(pair_id, "probe") < cfg.probes.fit_fraction
