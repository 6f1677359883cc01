"""verl: `custom_reward_function` entry points, one sample (`compute_score`) or a batch (`compute_score_batch`).

verl passes the decoded response only (`solution_str`, special tokens skipped) and the dataset row's `extra_info`;
the conversation the response answers must therefore be in `extra_info` — put the prompt's chat messages in
`extra_info["messages"]` (or a plain string in `extra_info["prompt"]`) when preparing the parquet files.
The server is `$ARMO_URL` (key `$ARMO_API_KEY`), or `armo_url` / `armo_api_key` in `reward_kwargs`. verl needs a
number for every sample: a sample the service could not score gets `armo_failed_reward` (or $ARMO_FAILED_REWARD),
and without one the call raises, naming the service's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from armo.client import RewardServiceError
from armo.integrations.common import client, failed_reward, item


def _conversation(extra_info: Mapping[str, Any] | None) -> Any:
    info = extra_info or {}
    conversation = info.get("messages", info.get("prompt"))
    if conversation is None:
        raise ValueError(
            "armo needs the prompt of each sample: put its chat messages in extra_info['messages'] (or a string in "
            "extra_info['prompt']) when writing the dataset"
        )
    return conversation


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Mapping[str, Any] | None],
    armo_url: str | None = None,
    armo_api_key: str | None = None,
    armo_failed_reward: float | None = None,
    **_: Any,
) -> list[float]:
    """verl's batch form (BatchRewardManager): one float per sample, in order."""
    items = [item(_conversation(info), s) for s, info in zip(solution_strs, extra_infos, strict=True)]
    results = client(armo_url, armo_api_key).score_results(items)
    fallback = failed_reward(armo_failed_reward)
    out = []
    for r in results:
        if r.score is not None:
            out.append(r.score)
        elif fallback is not None:
            out.append(fallback)
        else:
            e = r.error
            if e is None:
                raise RewardServiceError(422, "item_error", "not scored")
            raise RewardServiceError(422, e.type, e.message, e.field)
    return out


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's per-sample form (NaiveRewardManager and the reward loop)."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
