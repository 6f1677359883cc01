"""The ArmoRM heads, defined once and used by both training and serving (DESIGN.md §2).

Shapes: B = batch, d = backbone hidden size, k = number of objectives.

    r  = W h + b                 regression / pairwise probes, plus rule values    [B, k]
    r' = T r                     verbosity debiasing (row vectors: r' = r Tᵀ)      [B, k]
    g  = softmax(MLP(x) / τ) · β gating, x = prompt feature (or response feature)  [B, k]
    R  = Σ_i g_i r'_i            score                                             [B]

`b` is zero for pure ArmoRM (no bias); it exists so that training can centre objectives on a reference
distribution and so that rule-based objectives (computed from text, not from `h`) enter `r` as an additive
standardised column (their row of `W` is zero).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GatingInput = Literal["prompt", "response"]


@dataclass(frozen=True)
class GatingConfig:
    """Configuration of the gating MLP; dumped as-is into the manifest."""

    hidden_dim: int = field(default=1024, metadata={"help": "Width of each hidden layer (ArmoRM: 1024)."})
    n_hidden: int = field(default=3, metadata={"help": "Hidden layers of the MLP (ArmoRM: 3)."})
    temperature: float = field(
        default=10.0, metadata={"help": "Softmax temperature over the objectives; higher spreads the weight."}
    )
    logit_scale_init: float = field(default=1.0, metadata={"help": "Initial β, the learned scale of the weights."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout after each hidden layer (training only)."})
    bias: bool = field(default=True, metadata={"help": "Biases in the MLP's layers (ArmoRM has them)."})
    input: GatingInput = field(
        default="prompt",
        metadata={
            "help": "What the gating reads: 'prompt', the hidden state at the end-of-turn token of the last user "
            "turn (ArmoRM); 'response', the last token's, i.e. system + user prompt + response (rule-based variant)."
        },
    )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class GatingNetwork(nn.Module):
    """MLP → softmax over the k objectives (temperature τ) → scaled by a learned β (`logit_scale`).

    Parameter names match the published ArmoRM checkpoint (`layers.{i}.weight`, `logit_scale`) so that
    importing it is a plain state-dict load.
    """

    def __init__(self, in_features: int, n_objectives: int, config: GatingConfig) -> None:
        super().__init__()
        self.config = config
        dims = [in_features] + [config.hidden_dim] * config.n_hidden + [n_objectives]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=config.bias) for a, b in itertools.pairwise(dims))
        self.logit_scale = nn.Parameter(torch.full((1,), float(config.logit_scale_init)))
        self.dropout = nn.Dropout(config.dropout)

    def logits(self, x: Tensor) -> Tensor:  # [B, in] -> [B, k]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(F.relu(x))
        return x

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, k]; rows sum to β
        # Softmax over the objectives axis (dim=1) — the public reference training script's bug was dim=0.
        return F.softmax(self.logits(x) / self.config.temperature, dim=1) * self.logit_scale[0]


@dataclass
class Explanation:
    """Everything `/explain` shows, for a batch. Contributions sum to `score` (up to float rounding)."""

    rewards: Tensor  # [B, k] raw objective values r
    debiased: Tensor  # [B, k] r' = T r
    weights: Tensor  # [B, k] gating output g (or the caller's steering weights)
    contributions: Tensor  # [B, k] g ⊙ r'
    score: Tensor  # [B]
    verbosity_penalty: Tensor = field(default_factory=lambda: torch.empty(0))  # [B] Σ_i g_i (r_i - r'_i)


class ArmoHead(nn.Module):
    """Regression + debias + gating: everything after the backbone."""

    def __init__(self, hidden_size: int, n_objectives: int, gating: GatingConfig) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.n_objectives = n_objectives
        self.regression = nn.Linear(hidden_size, n_objectives, bias=False)  # W [k, d]
        self.register_buffer("bias", torch.zeros(n_objectives))  # b [k]
        self.register_buffer("transform", torch.eye(n_objectives))  # T [k, k]
        self.gating = GatingNetwork(hidden_size, n_objectives, gating)

    bias: Tensor
    transform: Tensor

    def rewards(self, response_feature: Tensor, rule_values: Tensor | None = None) -> Tensor:
        """r = W h + b (+ standardised rule values, which are zero outside rule columns). [B, d] -> [B, k]"""
        r = self.regression(response_feature) + self.bias
        if rule_values is not None:
            r = r + rule_values
        return r

    def gating_input(self, prompt_feature: Tensor, response_feature: Tensor) -> Tensor:
        return prompt_feature if self.gating.config.input == "prompt" else response_feature

    def explain(
        self,
        response_feature: Tensor,
        prompt_feature: Tensor,
        rule_values: Tensor | None = None,
        weights: Tensor | None = None,
    ) -> Explanation:
        """Full decomposition. `weights` [B, k] or [k], if given, replaces the gating output (steering)."""
        r = self.rewards(response_feature, rule_values)
        debiased = r @ self.transform.T  # r' = T r for each row
        if weights is None:
            g = self.gating(self.gating_input(prompt_feature, response_feature))
        else:
            g = weights.to(r).expand_as(r)
        contributions = g * debiased
        score = contributions.sum(dim=1)
        penalty = (g * (r - debiased)).sum(dim=1)
        return Explanation(r, debiased, g, contributions, score, penalty)

    def forward(self, response_feature: Tensor, prompt_feature: Tensor, rule_values: Tensor | None = None) -> Tensor:
        return self.explain(response_feature, prompt_feature, rule_values).score


def preference_probability(margin: float) -> float:
    """Bradley-Terry P(a ≻ b) = σ(R_a − R_b), what the gating is trained on (β is already inside R). Stable for any
    margin."""
    return 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))


def debias_matrix(lambdas: Tensor, verbosity_index: int) -> Tensor:
    """T such that r'_i = r_i − λ_i r_verbose, with the verbosity objective itself zeroed. [k] -> [k, k]"""
    k = lambdas.shape[0]
    t = torch.eye(k, dtype=lambdas.dtype)
    t[:, verbosity_index] -= lambdas
    t[verbosity_index, :] = 0.0
    return t
