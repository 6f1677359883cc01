"""verl's custom reward function, called the way verl's reward managers call it, against a real server."""

from __future__ import annotations

import pytest

from armo.client import RewardClient, RewardServiceError
from armo.integrations import verl
from tests.live import API_KEY, Server

PROMPT = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}]
SOLUTIONS = ["Paris.", "It is Lyon.", ""]


def _reference(server: Server) -> list[float | None]:
    with RewardClient(server.url, api_key=API_KEY) as rm:
        return rm.score([{"messages": PROMPT, "response": s} for s in SOLUTIONS])


def test_naive_manager_call(live: Server) -> None:
    """NaiveRewardManager: compute_score(data_source=, solution_str=, ground_truth=, extra_info=) per sample, with
    the config's reward_kwargs merged in; extra_info is the parquet row's column (plus verl's num_turns)."""
    got = [
        verl.compute_score(
            data_source="rm/chat",
            solution_str=s,
            ground_truth="Paris",
            extra_info={"messages": PROMPT, "num_turns": 2},
            armo_url=live.url,
            armo_api_key=API_KEY,
        )
        for s in SOLUTIONS
    ]
    assert got == pytest.approx(_reference(live), abs=1e-5)


def test_batch_manager_call(live: Server) -> None:
    """BatchRewardManager: compute_score(data_sources=, solution_strs=, ground_truths=, extra_infos=, **kwargs)."""
    got = verl.compute_score_batch(
        data_sources=["rm/chat"] * 3,
        solution_strs=SOLUTIONS,
        ground_truths=[None] * 3,
        extra_infos=[{"messages": PROMPT}] * 3,
    )  # server from $ARMO_URL / $ARMO_API_KEY
    assert got == pytest.approx(_reference(live), abs=1e-5)
    prompt_only = verl.compute_score_batch(["x"], ["Paris."], [None], [{"prompt": "Capital of France?"}])
    assert isinstance(prompt_only[0], float)


def test_missing_prompt_and_failed_samples_are_explicit(live: Server) -> None:
    with pytest.raises(ValueError, match="extra_info"):
        verl.compute_score("x", "Paris.", None, extra_info={})
    bad = {"messages": [*PROMPT, {"role": "assistant", "content": "no user turn last"}]}
    with pytest.raises(RewardServiceError):
        verl.compute_score_batch(["x", "x"], ["Paris.", "Paris."], [None, None], [{"messages": PROMPT}, bad])
    got = verl.compute_score_batch(
        ["x", "x"], ["Paris.", "Paris."], [None, None], [{"messages": PROMPT}, bad], armo_failed_reward=-7.0
    )
    assert got[1] == -7.0 and got[0] != -7.0
