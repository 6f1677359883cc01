"""A loaded reward model: backbone + heads + manifest → scores and explanations. No web framework here.

The service calls `prepare` on the request path (validation and tokenisation, so bad input fails fast and the
batcher knows each item's token count) and `forward` in a worker thread on merged batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from armo.model_store import rules
from armo.model_store.backbone import Backbone
from armo.model_store.errors import ArtifactError, InputError
from armo.model_store.features import Encoded, Features, Message, PaddingSide, encode, extract_many
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


@dataclass(frozen=True)
class Prepared:
    item: ScoreItem
    encoded: Encoded
    steering: Steering | None = None

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
    max_length: int = 2048
    # Padded tokens per forward pass. On this CPU ~1024 is fastest: larger padded batches pay for masked
    # attention over [B, heads, T, T] (measured in docs/BENCHMARKS.md); on a GPU use 8k-16k.
    max_batch_tokens: int = 1024
    max_batch_size: int = 64
    padding_side: PaddingSide = "right"


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


class RewardModel:
    def __init__(
        self, backbone: Backbone, head: ArmoHead, manifest: Manifest, config: ScoringConfig | None = None
    ) -> None:
        check_compatible(manifest, backbone)
        self.backbone = backbone
        self.head = head.to(backbone.device).eval()
        self.manifest = manifest
        self.config = config or ScoringConfig(max_length=manifest.backbone.max_length)
        self.objectives = manifest.objective_names
        self._index = {name: i for i, name in enumerate(self.objectives)}
        self._rules = [
            (i, o.rule or o.name, o.offset, o.scale) for i, o in enumerate(manifest.objectives) if o.kind == "rule"
        ]
        for _, name, _, _ in self._rules:
            if name not in rules.RULES:
                raise ArtifactError(f"manifest.json: unknown rule {name!r}", field="objectives")

    @property
    def name(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    # -- request path -------------------------------------------------------------------------------------
    def validate_steering(self, steering: Steering | None) -> None:
        if steering is None:
            return
        names = list(steering.weights or {}) + list(steering.mask)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise InputError(
                f"unknown objective(s) {', '.join(sorted(set(unknown)))}; known: {', '.join(self.objectives)}",
                field="weights" if steering.weights and set(unknown) & set(steering.weights) else "mask",
            )
        if steering.weights is not None:
            bad = [n for n, w in steering.weights.items() if not w >= 0.0 or w == float("inf")]
            if bad:
                raise InputError(f"weights must be finite and non-negative: {', '.join(bad)}", field="weights")
            if not any(w > 0 for w in steering.weights.values()):
                raise InputError("at least one weight must be positive", field="weights")

    def prepare(self, item: ScoreItem, *, truncate: bool = True, steering: Steering | None = None) -> Prepared:
        self.validate_steering(steering)
        enc = encode(
            self.backbone.tokenizer, item.messages, item.response, max_length=self.config.max_length, truncate=truncate
        )
        return Prepared(item, enc, steering)

    # -- worker path --------------------------------------------------------------------------------------
    def features(self, batch: Sequence[Prepared]) -> Features:
        return extract_many(
            self.backbone,
            [p.encoded for p in batch],
            max_batch_tokens=self.config.max_batch_tokens,
            max_batch_size=self.config.max_batch_size,
            padding_side=self.config.padding_side,
        )

    def rule_values(self, batch: Sequence[Prepared]) -> Tensor | None:
        """Standardised rule objective values in their columns, zero elsewhere. [B, k]"""
        if not self._rules:
            return None
        values = torch.zeros((len(batch), len(self.objectives)))
        for row, p in enumerate(batch):
            x = rules.RuleInput(p.item.messages, p.item.response, p.encoded.response_tokens)
            for col, name, offset, scale in self._rules:
                values[row, col] = (rules.evaluate(name, x) - offset) / scale
        return values

    def _steered_weights(self, batch: Sequence[Prepared], gating: Tensor) -> Tensor:
        """Replace the gating rows of steered items. Masked objectives get weight 0 and the rest is rescaled
        so the total weight (β) is unchanged; explicit weights are used as given."""
        g = gating.clone()
        for row, p in enumerate(batch):
            s = p.steering
            if s is None:
                continue
            if s.weights is not None:
                w = torch.zeros(len(self.objectives))
                for name, value in s.weights.items():
                    w[self._index[name]] = float(value)
                g[row] = w.to(g)
            if s.mask:
                total = g[row].sum()
                for name in s.mask:
                    g[row, self._index[name]] = 0.0
                kept = g[row].sum()
                if kept > 0:
                    g[row] *= total / kept
        return g

    @torch.inference_mode()
    def forward_features(self, batch: Sequence[Prepared], feats: Features) -> Explanation:
        device = self.backbone.device
        h, p = feats.pooled(self.manifest.pooling).to(device), feats.prompt.to(device)
        rv = self.rule_values(batch)
        rv = rv.to(device) if rv is not None else None
        gating = self.head.gating(self.head.gating_input(p, h))
        weights = self._steered_weights(batch, gating) if any(x.steering for x in batch) else None
        ex = self.head.explain(h, p, rv, weights=weights)
        return Explanation(
            *(
                t.float().cpu()
                for t in (ex.rewards, ex.debiased, ex.weights, ex.contributions, ex.score, ex.verbosity_penalty)
            )
        )

    def forward(self, batch: Sequence[Prepared]) -> Explanation:
        return self.forward_features(batch, self.features(batch))

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
        batch = [self.prepare(it, truncate=truncate, steering=steering) for it in items]
        return self.results(batch, self.forward(batch), detail=detail)
