"""OpenRLHF's local reward-function mode: `--remote_rm_url /path/to/armo/integrations/openrlhf.py` (newest releases:
`--reward.remote_url`). OpenRLHF loads this file and calls `reward_func(queries, prompts, labels)`; it forwards
them to the service's `/get_reward` (`$ARMO_URL`, key `$ARMO_API_KEY`) and returns what OpenRLHF expects: `rewards`
and `scores` tensors and `extra_logs` (each objective's value, `truncated`, `unterminated`), which OpenRLHF logs.

The plain URL mode needs no file: `--remote_rm_url http://HOST:8000/get_reward`. This file adds the client's
chunking and its retries that honour Retry-After (OpenRLHF's own client retries 5 times, 1 s apart, whatever the
status). OpenRLHF needs a number per sample: a query the service could not score gets $ARMO_FAILED_REWARD, and
without it the call raises with the service's reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from armo.integrations.common import client, failed_reward


def rewards(
    queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any]
) -> tuple[list[float], dict[str, list[float]]]:
    """What `reward_func` returns, as plain lists: one reward per query and each logged value per query. Needs no
    torch, so it runs (and is checked) in a client-only install."""
    result = client().get_reward(list(queries), list(prompts) if prompts else None, list(labels) if labels else None)
    fallback = failed_reward()
    out: list[float] = []
    for i, r in enumerate(result.rewards):
        value = fallback if r is None else r
        if value is None:
            error = result.errors[i] if result.errors else None
            raise ValueError(f"armo could not score query {i}: {error.message if error else 'unknown'}")
        out.append(value)
    logs = {k: [0.0 if v is None else v for v in vs] for k, vs in result.extra_logs.items()}
    return out, logs


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **_: Any) -> dict[str, Any]:
    """OpenRLHF's entry point: `rewards` as tensors, the form OpenRLHF consumes."""
    import torch  # OpenRLHF runs on torch; importing it here keeps this module importable without it

    values, logs = rewards(queries, prompts, labels)
    tensor = torch.tensor(values, dtype=torch.float32)
    extra = {k: torch.tensor(vs) for k, vs in logs.items()}
    return {"rewards": tensor, "scores": tensor, "extra_logs": extra}
