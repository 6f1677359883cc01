"""What the adapters share: the client (one per process and server), conversation conversion, failed items."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from armo.client import RewardClient

URL_ENV, KEY_ENV, FAILED_ENV = "ARMO_URL", "ARMO_API_KEY", "ARMO_FAILED_REWARD"
DEFAULT_URL = "http://127.0.0.1:8000"


@lru_cache(maxsize=8)
def client(url: str | None = None, api_key: str | None = None) -> RewardClient:
    """One client (one connection pool) per server for the life of the process. Defaults: $ARMO_URL, $ARMO_API_KEY."""
    return RewardClient(url or os.environ.get(URL_ENV) or DEFAULT_URL, api_key=api_key or os.environ.get(KEY_ENV))


def _text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return "" if content is None else str(content)


def messages_of(conversation: str | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """A prompt string (one user turn) or chat messages → the service's messages (role + text content)."""
    if isinstance(conversation, str):
        return [{"role": "user", "content": conversation}]
    return [{"role": str(m["role"]), "content": _text(m.get("content"))} for m in conversation]


def response_of(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """A completion string, or conversational completion messages (the assistant's turns, joined)."""
    if isinstance(completion, str):
        return completion
    return "".join(_text(m.get("content")) for m in completion if m.get("role", "assistant") == "assistant")


def item(
    conversation: str | Sequence[Mapping[str, Any]], completion: str | Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {"messages": messages_of(conversation), "response": response_of(completion)}


def failed_reward(value: float | None = None) -> float | None:
    """What a rollout the service could not score gets where the framework needs a number: `value`, else
    $ARMO_FAILED_REWARD, else None (the caller raises: a silent default would bias training)."""
    if value is not None:
        return value
    env = os.environ.get(FAILED_ENV)
    return float(env) if env not in (None, "") else None
