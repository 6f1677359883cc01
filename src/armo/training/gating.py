"""Stage 4: the gating network, trained with the Bradley-Terry loss on the *debiased* rewards (DESIGN.md §2.6).

Backbone, regression and T are frozen: r' is precomputed per response. For each pair
    R_c = g(x_c) · r'_c,  R_r = g(x_r) · r'_r,  loss = −log σ(R_c − R_r)      (β lives inside g: softmax(·/τ)·β)
with x the prompt feature (identical for both sides: ArmoRM) or the response feature (rule-based variant).
AdamW, cosine decay, early stopping on the validation pairs' loss; seeded, single-threaded → reproducible.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from armo.model_store.heads import ArmoHead, GatingConfig, GatingNetwork
from armo.training.bradley_terry import accuracy, bt_loss, pair_accuracy
from armo.training.config import GatingTrainConfig
from armo.training.prepare import Dataset, pair_group

log = logging.getLogger(__name__)


@dataclass
class PairTensors:
    """Per pair: gating inputs and debiased rewards of both sides."""

    x_chosen: Tensor  # [P, d]
    x_rejected: Tensor  # [P, d]
    r_chosen: Tensor  # [P, k]
    r_rejected: Tensor  # [P, k]
    weight: Tensor | None = None  # [P] per-pair loss weight (mean 1), e.g. to balance data sources

    def __len__(self) -> int:
        return int(self.r_chosen.shape[0])


@dataclass
class GatingResult:
    network: GatingNetwork
    metrics: dict[str, float]


def gating_config(cfg: GatingTrainConfig) -> GatingConfig:
    """The architecture part of the training config: what the manifest records and the service builds."""
    return GatingConfig(**{f.name: getattr(cfg, f.name) for f in fields(GatingConfig)})


def pair_tensors(ds: Dataset, idx: list[int], x: np.ndarray, r: np.ndarray) -> PairTensors:
    """The pairs `idx` of `ds` as gating inputs x [N_items, d] and debiased rewards r [N_items, k] of both sides."""
    c = [ds.pair_items[i][0] for i in idx]
    j = [ds.pair_items[i][1] for i in idx]
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return PairTensors(t(x[c]), t(x[j]), t(r[c]), t(r[j]))


def balanced_weights(ds: Dataset, idx: list[int]) -> Tensor:
    """Per-pair weights (mean 1) that give every "<source>/<objective>" group the same total weight."""
    groups = [pair_group(ds.pairs[i]) for i in idx]
    counts = {g: groups.count(g) for g in set(groups)}
    return torch.tensor([len(groups) / (len(counts) * counts[g]) for g in groups])


def gated_margins(net: GatingNetwork, batch: PairTensors) -> Tensor:
    """R_chosen − R_rejected [P], R = g(x) · r'."""
    return (net(batch.x_chosen) * batch.r_chosen).sum(1) - (net(batch.x_rejected) * batch.r_rejected).sum(1)


def gating_loss(net: GatingNetwork, batch: PairTensors) -> tuple[Tensor, Tensor]:
    """(mean BT loss, weighted by the batch's pair weights, margins [P])."""
    margin = gated_margins(net, batch)
    return bt_loss(margin, batch.weight), margin


def _subset(p: PairTensors, idx: Tensor) -> PairTensors:
    w = p.weight[idx] if p.weight is not None else None
    return PairTensors(p.x_chosen[idx], p.x_rejected[idx], p.r_chosen[idx], p.r_rejected[idx], w)


def train_gating(train: PairTensors, val: PairTensors, cfg: GatingTrainConfig) -> GatingResult:
    torch.manual_seed(cfg.seed)
    d, k = train.x_chosen.shape[1], train.r_chosen.shape[1]
    net = GatingNetwork(d, k, gating_config(cfg))
    if cfg.init == "uniform":
        _start_uniform(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.max_epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_loss, best_state, best_epoch, bad = math.inf, copy.deepcopy(net.state_dict()), 0, 0
    for epoch in range(cfg.max_epochs):
        net.train()
        perm = torch.randperm(len(train), generator=gen)
        for s in range(steps_per_epoch):
            loss, _ = gating_loss(net, _subset(train, perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(gating_loss(net, val)[0]) if len(val) else float(loss)
        if val_loss < best_loss - 1e-5:
            best_loss, best_state, best_epoch, bad = val_loss, copy.deepcopy(net.state_dict()), epoch, 0
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        tl, tm = gating_loss(net, train)
        vl, vm = gating_loss(net, val) if len(val) else (tl, tm)
    metrics = {
        "best_epoch": float(best_epoch),
        "epochs_run": float(epoch + 1),
        "train_loss": float(tl),
        "train_accuracy": accuracy(tm),
        "val_loss": float(vl),
        "val_accuracy": accuracy(vm),
        "logit_scale": float(net.logit_scale.detach()[0]),
    }
    log.info("gating: %s", metrics)
    return GatingResult(net, metrics)


def _start_uniform(net: GatingNetwork) -> None:
    """Zero the last layer: softmax is uniform (equal weights) until the data moves it away."""
    with torch.no_grad():
        last = net.layers[-1]
        assert isinstance(last, torch.nn.Linear)
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()


def equal_gating(d: int, k: int, cfg: GatingTrainConfig) -> GatingNetwork:
    """Fixed equal weights 1/k (ablation): the last layer is zero, so softmax is uniform; β = 1."""
    net = GatingNetwork(d, k, gating_config(cfg))
    _start_uniform(net)
    with torch.no_grad():
        net.logit_scale.fill_(1.0)
    return net.eval()


def val_pair_accuracy(
    ds: Dataset, val_idx: list[int], head: ArmoHead, x: np.ndarray, debiased: np.ndarray
) -> dict[str, float]:
    """Pair accuracy (ties 0.5) of R = g(x) · r' on the validation pairs: overall, per source/objective, and
    "balanced" = the mean over those groups (the selection criterion: the group mix of the sample is a budget
    choice, not the mix users score, so no group should dominate the choice)."""
    if not val_idx:
        return {}
    with torch.no_grad():
        margin = gated_margins(head.gating, pair_tensors(ds, val_idx, x, debiased))
    return pair_accuracy(margin, [pair_group(ds.pairs[i]) for i in val_idx])
