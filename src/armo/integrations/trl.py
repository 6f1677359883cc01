"""TRL: a reward function for `GRPOTrainer(reward_funcs=[ArmoReward(...)])`.

TRL calls it as `f(prompts=..., completions=..., completion_ids=..., **dataset_columns, trainer_state=...,
log_metric=...)`: prompts and completions are strings (standard datasets) or lists of `{"role", "content"}` dicts
(conversational; a completion is `[{"role": "assistant", "content": ...}]`). It returns one float per completion,
and None only for a completion the service could not score — TRL documents None as "not applicable" (NaN, left
out of the mean). With `log_objectives`, each objective's batch mean goes to TRL's `log_metric` hook.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from armo.client import RewardClient
from armo.integrations.common import client, item


class ArmoReward:
    """Scores TRL completions with the service. Its `__name__` names TRL's `rewards/<name>/mean` metric."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        weights: Mapping[str, float] | None = None,
        mask: Sequence[str] | None = None,
        log_objectives: bool = False,
        name: str = "armo",
        reward_client: RewardClient | None = None,
    ) -> None:
        self.__name__ = name
        self._client = reward_client or client(url, api_key)
        self._options: dict[str, Any] = {
            "weights": dict(weights) if weights else None,
            "mask": list(mask or []) or None,
        }
        self._log_objectives = log_objectives

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **_: Any,
    ) -> list[float | None]:
        items = [item(p, c) for p, c in zip(prompts, completions, strict=True)]
        results = self._client.score_results(items, return_objectives=self._log_objectives or None, **self._options)
        if self._log_objectives and log_metric is not None:
            scored = [r.objectives for r in results if r.objectives]
            for name in scored[0] if scored else ():
                log_metric(f"{self.__name__}/{name}", sum(o[name] for o in scored) / len(scored))
        return [None if r.score is None or not math.isfinite(r.score) else r.score for r in results]
