"""Rule-based objectives: pure, documented functions of (conversation, response).

Each rule has a stated range; the artifact records per rule an offset and scale that standardise it on a
reference distribution (r = (raw − offset) / scale). Adding a rule = one decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from armo.model_store.features import Message


@dataclass(frozen=True)
class RuleInput:
    messages: Sequence[Message]
    response: str
    response_tokens: int  # backbone tokens of the response, including its end-of-turn token


RuleFn = Callable[[RuleInput], float]


@dataclass(frozen=True)
class Rule:
    name: str
    fn: RuleFn
    low: float
    high: float
    description: str


RULES: dict[str, Rule] = {}


def rule(name: str, low: float, high: float) -> Callable[[RuleFn], RuleFn]:
    """Register `fn` as rule `name` with range [low, high]; its docstring is its description."""

    def register(fn: RuleFn) -> RuleFn:
        RULES[name] = Rule(name, fn, low, high, (fn.__doc__ or "").strip())
        return fn

    return register


@rule("verbosity", 0.0, float("inf"))
def verbosity(x: RuleInput) -> float:
    """Response length in backbone tokens."""
    return float(x.response_tokens)


def evaluate(name: str, x: RuleInput) -> float:
    return RULES[name].fn(x)
