"""A loaded reward model: backbone + heads + manifest → scores and explanations. No web framework here.

The service calls `prepare` on the request path (validation and tokenisation, so bad input fails fast and the
batcher knows each item's token count) and `forward` in a worker thread on merged batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from armo.model_store import rules
from armo.model_store.backbone import Backbone
from armo.model_store.encoding import Encoded, Message, Truncation, encode
from armo.model_store.errors import ArtifactError, InputError
from armo.model_store.forward import Features, PaddingSide, PassBudget, item_features
from armo.model_store.heads import ArmoHead, Explanation
from armo.model_store.manifest import Manifest


@dataclass(frozen=True)
class ScoreItem:
    messages: Sequence[Message]
    response: str


@dataclass(frozen=True)
class Steering:
    """Per-request override of the learned gating: explicit `weights`, or `mask` (objectives switched off)."""

    weights: Mapping[str, float] | None = None
    mask: Sequence[str] = ()


# Steering weights replace gating weights that sum to β (order 1-100); far larger ones only overflow float32 in the
# worker (3.4e38), where they would fail the batch instead of the request that sent them.
MAX_STEERING_WEIGHT = 1e6


@dataclass(frozen=True)
class Steer:
    """A validated `Steering` as vectors over this model's objectives, made once per request."""

    weights: Tensor | None  # [k] replaces the gating output
    keep: Tensor | None  # [k] 1.0 for objectives kept, 0.0 for masked ones

    def apply(self, g: Tensor) -> Tensor:  # [k] -> [k]
        """Masked objectives get weight 0 and the rest is rescaled so the total weight (β) is unchanged."""
        if self.weights is not None:
            g = self.weights.to(g)
        if self.keep is not None:
            kept = g * self.keep.to(g)
            total = kept.sum()
            g = kept * (g.sum() / total) if total > 0 else kept
        return g


@dataclass(frozen=True)
class Prepared:
    item: ScoreItem
    encoded: Encoded

    @property
    def tokens(self) -> int:
        return self.encoded.length


@dataclass
class ItemResult:
    score: float
    truncated: bool
    tokens: int
    rewards: dict[str, float] = field(default_factory=dict)
    debiased: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    verbosity_penalty: float = 0.0


@dataclass(frozen=True)
class ScoringConfig:
    """How sequences are fitted and run. No defaults here: `Settings.scoring_config` builds it for the service and
    `armo batch`, `armo.training.extract.scoring_config` for training."""

    truncation: Truncation
    forward: PassBudget
    padding_side: PaddingSide

    @property
    def max_length(self) -> int:
        return self.truncation.max_length


def check_compatible(manifest: Manifest, backbone: Backbone) -> None:
    """Refuse an artifact made for another backbone: hidden size and chat-template hash must match."""
    ref = manifest.backbone
    if ref.hidden_size != backbone.hidden_size:
        raise ArtifactError(
            f"manifest.json: artifact {manifest.model}/{manifest.version} expects hidden size {ref.hidden_size}, "
            f"backbone {backbone.id} has {backbone.hidden_size}",
            field="backbone.hidden_size",
        )
    if ref.template_hash != backbone.template_hash:
        raise ArtifactError(
            f"manifest.json: artifact {manifest.model}/{manifest.version} was made with another tokenizer/chat "
            f"template (hash {ref.template_hash[:12]} ≠ {backbone.template_hash[:12]})",
            field="backbone.template_hash",
        )
    if backbone.engine is not None and not backbone.engine.serves(manifest.pooling, ref.max_length):
        raise ArtifactError(
            f"manifest.json: artifact {manifest.model}/{manifest.version} reads {manifest.pooling}-pooled features "
            f"of up to {ref.max_length} tokens, which the running {backbone.backend} engine was not started for",
            field="pooling",
        )


class RewardModel:
    def __init__(self, backbone: Backbone, head: ArmoHead, manifest: Manifest, config: ScoringConfig) -> None:
        check_compatible(manifest, backbone)
        self.backbone = backbone
        self.head = head.to(backbone.device).eval()
        self.manifest = manifest
        self.config = config
        self.objectives = manifest.objective_names
        self._index = {name: i for i, name in enumerate(self.objectives)}
        self._rules = [
            (i, o.rule or o.name, o.offset, o.scale, o.sign)
            for i, o in enumerate(manifest.objectives)
            if o.kind == "rule"
        ]
        for _, name, _, _, _ in self._rules:
            if name not in rules.RULES:
                raise ArtifactError(f"manifest.json: unknown rule {name!r}", field="objectives")

    @property
    def name(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    # -- request path -------------------------------------------------------------------------------------
    def steer(self, steering: Steering) -> Steer:
        """Validate a request's steering once (InputError naming `weights` or `mask`) and compile it."""
        names = list(steering.weights or {}) + list(steering.mask)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise InputError(
                f"unknown objective(s) {', '.join(sorted(set(unknown)))}; known: {', '.join(self.objectives)}",
                field="weights" if steering.weights and set(unknown) & set(steering.weights) else "mask",
            )
        weights = None
        if steering.weights is not None:
            bad = [n for n, w in steering.weights.items() if not 0.0 <= w <= MAX_STEERING_WEIGHT]
            if bad:
                raise InputError(
                    f"weights must be between 0 and {MAX_STEERING_WEIGHT:g}: {', '.join(bad)}", field="weights"
                )
            if not any(w > 0 for w in steering.weights.values()):
                raise InputError("at least one weight must be positive", field="weights")
            weights = torch.zeros(len(self.objectives))
            for name, value in steering.weights.items():
                weights[self._index[name]] = float(value)
        keep = None
        if steering.mask:
            keep = torch.ones(len(self.objectives))
            keep[[self._index[n] for n in steering.mask]] = 0.0
            left = keep if weights is None else weights * keep
            if not bool(left.any()):
                raise InputError(
                    "the mask switches off every weighted objective: nothing is left to score", field="mask"
                )
        return Steer(weights, keep)

    def prepare(self, item: ScoreItem, *, truncate: bool = True) -> Prepared:
        policy = self.config.truncation
        if not truncate:
            policy = replace(policy, enabled=False)
        return Prepared(item, encode(self.backbone.tokenizer, item.messages, item.response, policy))

    # -- worker path --------------------------------------------------------------------------------------
    def features(self, batch: Sequence[Prepared]) -> Features:
        return item_features(
            self.backbone, [p.encoded for p in batch], self.config.forward, padding_side=self.config.padding_side
        )

    def rule_values(self, batch: Sequence[Prepared]) -> Tensor | None:
        """Standardised rule objective values in their columns, zero elsewhere. [B, k]"""
        if not self._rules:
            return None
        values = torch.zeros((len(batch), len(self.objectives)))
        for row, p in enumerate(batch):
            x = rules.RuleInput(p.item.messages, p.item.response, p.encoded.response_tokens)
            for col, name, offset, scale, sign in self._rules:
                values[row, col] = sign * (rules.evaluate(name, x) - offset) / scale
        return values

    @torch.inference_mode()
    def forward_features(
        self, batch: Sequence[Prepared], feats: Features, steers: Sequence[Steer | None] = ()
    ) -> Explanation:
        """Scores and explanations of a batch. `steers`: per row (empty: none steered)."""
        device = self.backbone.device
        h, p = feats.pooled(self.manifest.pooling).to(device), feats.prompt.to(device)
        rv = self.rule_values(batch)
        rv = rv.to(device) if rv is not None else None
        g = self.head.gating(self.head.gating_input(p, h))  # [B, k], computed once
        if any(steers):
            g = torch.stack([s.apply(row) if s is not None else row for row, s in zip(g, steers, strict=True)])
        ex = self.head.explain(h, p, rv, weights=g)
        return Explanation(
            *(
                t.float().cpu()
                for t in (ex.rewards, ex.debiased, ex.weights, ex.contributions, ex.score, ex.verbosity_penalty)
            )
        )

    def forward(self, batch: Sequence[Prepared], steers: Sequence[Steer | None] = ()) -> Explanation:
        return self.forward_features(batch, self.features(batch), steers)

    def results(self, batch: Sequence[Prepared], ex: Explanation, *, detail: bool = True) -> list[ItemResult]:
        out = []
        for row, p in enumerate(batch):
            res = ItemResult(float(ex.score[row]), p.encoded.truncated, p.encoded.length)
            if detail:
                names = self.objectives
                res.rewards = dict(zip(names, ex.rewards[row].tolist(), strict=True))
                res.debiased = dict(zip(names, ex.debiased[row].tolist(), strict=True))
                res.weights = dict(zip(names, ex.weights[row].tolist(), strict=True))
                res.contributions = dict(zip(names, ex.contributions[row].tolist(), strict=True))
                res.verbosity_penalty = float(ex.verbosity_penalty[row])
            out.append(res)
        return out

    def score(
        self,
        items: Sequence[ScoreItem],
        *,
        steering: Steering | None = None,
        truncate: bool = True,
        detail: bool = False,
    ) -> list[ItemResult]:
        """Convenience for in-process callers (training, evaluation, benchmarks)."""
        batch = [self.prepare(it, truncate=truncate) for it in items]
        steers = [self.steer(steering)] * len(batch) if steering is not None else []
        return self.results(batch, self.forward(batch, steers), detail=detail)
