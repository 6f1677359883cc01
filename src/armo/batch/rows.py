"""What a row of an input file is, and what its scored row adds.

Three layouts, detected from the columns or named with `--layout`:
- `items`: a conversation (`messages`, or a `prompt` string) and a `response` → `score`;
- `pairs`: a conversation, `chosen` and `rejected` → both scores, the `margin` and `p_chosen` = σ(margin), the
  Bradley-Terry probability the gating was trained on;
- `best_of_n`: a conversation and `responses` → `scores`, `ranking` (best first) and `best`.
Input columns are kept. With `explain`, each scored response also gets its per-objective rewards and gating weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from armo.model_store.heads import preference_probability
from armo.model_store.reward_model import ItemResult, ScoreItem

Layout = Literal["items", "pairs", "best_of_n"]
LAYOUTS: tuple[Layout, ...] = ("items", "pairs", "best_of_n")


def detect(row: Mapping[str, Any]) -> Layout:
    if "responses" in row:
        return "best_of_n"
    if "chosen" in row and "rejected" in row:
        return "pairs"
    if "response" in row:
        return "items"
    raise ValueError(f"cannot tell the layout from the columns {sorted(row)}: use --layout")


def conversation(row: Mapping[str, Any]) -> list[dict[str, str]]:
    if row.get("messages") is not None:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
    if isinstance(row.get("prompt"), str):
        return [{"role": "user", "content": row["prompt"]}]
    raise ValueError("a row needs `messages` (chat turns) or a `prompt` string")


def responses(row: Mapping[str, Any], layout: Layout) -> list[str]:
    if layout == "items":
        return [row["response"]]
    if layout == "pairs":
        return [row["chosen"], row["rejected"]]
    values = row["responses"]
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError("`responses` must be a non-empty list of strings")
    return list(values)


def units(row: Mapping[str, Any], layout: Layout) -> list[ScoreItem]:
    """The (conversation, response) items of a row, in the order its output columns list them."""
    messages = conversation(row)
    return [ScoreItem(messages, str(r)) for r in responses(row, layout)]


def _explained(r: ItemResult) -> dict[str, Any]:
    return {"objectives": r.rewards, "weights": r.weights, "truncated": r.truncated}


def scored(row: Mapping[str, Any], layout: Layout, results: Sequence[ItemResult], *, explain: bool) -> dict[str, Any]:
    out = dict(row)
    out["error"] = None
    if layout == "items":
        [r] = results
        out.update(score=r.score, truncated=r.truncated)
        if explain:
            out.update(objectives=r.rewards, weights=r.weights)
    elif layout == "pairs":
        chosen, rejected = results
        margin = chosen.score - rejected.score
        out.update(score_chosen=chosen.score, score_rejected=rejected.score, margin=margin)
        out["p_chosen"] = preference_probability(margin)
        out.update(truncated=chosen.truncated or rejected.truncated)
        if explain:
            out.update(explain_chosen=_explained(chosen), explain_rejected=_explained(rejected))
    else:
        scores = [r.score for r in results]
        ranking = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        out.update(scores=scores, ranking=ranking, best=ranking[0], truncated=[r.truncated for r in results])
        if explain:
            out.update(explain=[_explained(r) for r in results])
    return out


def failed(row: Mapping[str, Any], message: str) -> dict[str, Any]:
    """A row that could not be scored: kept, with its reason (and no scores)."""
    return {**row, "error": message}
