"""Python client of the scoring service: what RL loops and scripts import instead of writing their own.

    from armo.client import RewardClient
    with RewardClient("http://127.0.0.1:8000", api_key="...") as rm:
        scores = rm.score([{"prompt": "2+2?", "response": "4"}, ...])      # list[float | None], in order

- **Chunking**: a request larger than the server's advertised `max_items` (GET /v1/models → `limits`) is sent
  as several, and the results come back in order as one list.
- **Retries** with exponential backoff on 429 and 503 (overloaded, loading, shutting down) and on connection
  errors, honouring the server's `Retry-After`; other 4xx are raised at once as `RewardServiceError` with the
  server's error type, message and field.
- Typed results: the pydantic models of the server's protocol (`armo.protocol`; no FastAPI, no torch).
- `AsyncRewardClient` is the same over `httpx.AsyncClient`; its chunks are sent concurrently.

Only httpx and pydantic are needed: the client runs in a training process that has no torch of this project's.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

import httpx
from pydantic import BaseModel

from armo.protocol import (
    CompareResponse,
    ExplainResponse,
    ExplainResult,
    GetRewardResponse,
    LimitsInfo,
    ModelsResponse,
    ScoreResponse,
    ScoreResult,
)

Item = Mapping[str, Any]  # {"prompt": str} or {"messages": [...]}, plus "response": str
T = TypeVar("T", bound=BaseModel)
H = TypeVar("H", httpx.Client, httpx.AsyncClient)
RETRY_STATUSES = frozenset({429, 503})
Outcome = httpx.Response | httpx.TransportError  # what one try of a request ends with


class RewardServiceError(Exception):
    """The service refused a request (or kept refusing it through every retry)."""

    def __init__(self, status: int, type: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {type}: {message}" + (f" (field {field})" if field else ""))
        self.status, self.type, self.message, self.field = status, type, message, field


def _error(response: httpx.Response) -> RewardServiceError:
    try:
        body = response.json().get("error", {})
    except ValueError:
        body = {}
    return RewardServiceError(
        response.status_code,
        str(body.get("type", "http_error")),
        str(body.get("message", response.text[:200])),
        body.get("field"),
    )


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, max(1, size))]


class _Policy:
    """What the sync and async clients share: headers, retry timing, chunk sizes, request bodies."""

    def __init__(self, api_key: str | None, max_retries: int, backoff_s: float, max_items: int | None) -> None:
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_items = max_items  # None: ask the server once
        self.limits: LimitsInfo | None = None

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry `attempt` (1-based): the server's Retry-After when it gives one, else backoff."""
        if response is not None:
            value = response.headers.get("Retry-After", "")
            if value.replace(".", "", 1).isdigit():
                return float(value)
        return float(self.backoff_s * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))

    def retry_in(self, attempt: int, outcome: Outcome) -> float | None:
        """After try `attempt` (1-based): None when `outcome` is the answer, else the seconds to wait before the next
        try; raises (the transport error, or the service's error) when it may not be retried or no try is left."""
        if isinstance(outcome, httpx.Response):
            if outcome.is_success:
                return None
            if outcome.status_code not in RETRY_STATUSES or attempt > self.max_retries:
                raise _error(outcome)
            return self.delay(attempt, outcome)
        if attempt > self.max_retries:
            raise outcome
        return self.delay(attempt, None)

    def chunk_size(self) -> int:
        if self.max_items is not None:
            return self.max_items
        return self.limits.max_items if self.limits else 64

    def item_bodies(self, items: Sequence[Item], options: Mapping[str, Any]) -> list[dict[str, Any]]:
        extra = {k: v for k, v in options.items() if v is not None}
        return [{"items": [dict(items[i]) for i in part], **extra} for part in _chunks(len(items), self.chunk_size())]

    def reward_bodies(
        self, queries: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        bodies = []
        for part in _chunks(len(queries), self.chunk_size()):
            body: dict[str, Any] = {"query": [queries[i] for i in part]}
            if prompts is not None:
                body["prompts"] = [prompts[i] for i in part]
            if labels is not None:
                body["labels"] = [labels[i] for i in part]
            bodies.append(body)
        return bodies

    @staticmethod
    def compare_body(
        conversation: str | Sequence[Mapping[str, str]], responses: Sequence[str], options: Mapping[str, Any]
    ) -> dict[str, Any]:
        key = "prompt" if isinstance(conversation, str) else "messages"
        conv = conversation if isinstance(conversation, str) else [dict(m) for m in conversation]
        return {key: conv, "responses": list(responses), **{k: v for k, v in options.items() if v is not None}}


def _merge_rewards(parts: Sequence[GetRewardResponse]) -> GetRewardResponse:
    keys = list(parts[0].extra_logs)
    errors = [e for part in parts for e in (part.errors or [None] * len(part.rewards))]
    return GetRewardResponse(
        rewards=[r for part in parts for r in part.rewards],
        scores=[r for part in parts for r in part.scores],
        extra_logs={k: [v for part in parts for v in part.extra_logs.get(k, [None] * len(part.rewards))] for k in keys},
        unterminated=[u for part in parts for u in part.unterminated],
        errors=errors if any(errors) else None,
    )


class _Client(Generic[H]):
    """Construction shared by the two clients: the retry/chunking policy and one httpx connection pool."""

    _http_class: type[H]

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_items: int | None = None,
        http: H | None = None,
    ) -> None:
        self._policy = _Policy(api_key, max_retries, backoff_s, max_items)
        self._http: H = http or self._http_class(base_url=base_url, timeout=timeout)


class RewardClient(_Client[httpx.Client]):
    """Blocking client. One connection pool for the client's life: use it as a context manager or `close()` it."""

    _http_class = httpx.Client

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        for attempt in itertools.count(1):  # ends by returning, or by the policy raising
            try:
                outcome: Outcome = self._http.request(method, path, json=body, headers=self._policy.headers)
            except httpx.TransportError as e:
                outcome = e
            if (wait := self._policy.retry_in(attempt, outcome)) is None:
                return cast(httpx.Response, outcome)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _post(self, path: str, body: dict[str, Any], model: type[T]) -> T:
        return model.model_validate(self._request("POST", path, body).json())

    def models(self) -> ModelsResponse:
        models = ModelsResponse.model_validate(self._request("GET", "/v1/models").json())
        self._policy.limits = models.limits
        return models

    def _policy_ready(self) -> _Policy:
        if self._policy.max_items is None and self._policy.limits is None:
            self.models()
        return self._policy

    def score_results(self, items: Sequence[Item], **options: Any) -> list[ScoreResult]:
        """Every item's result (score, truncated, tokens, objectives, error), in order."""
        bodies = self._policy_ready().item_bodies(items, options)
        return [r for b in bodies for r in self._post("/v1/score", b, ScoreResponse).results]

    def score(self, items: Sequence[Item], **options: Any) -> list[float | None]:
        """One reward per item, in order (None only for an item the server could not score: see score_results).
        Options: weights, mask, truncate, timeout_s, return_objectives."""
        return [r.score for r in self.score_results(items, **options)]

    def explain(self, items: Sequence[Item], **options: Any) -> list[ExplainResult]:
        bodies = self._policy_ready().item_bodies(items, options)
        return [r for b in bodies for r in self._post("/v1/explain", b, ExplainResponse).results]

    def compare(
        self, conversation: str | Sequence[Mapping[str, str]], responses: Sequence[str], **options: Any
    ) -> CompareResponse:
        """Rank responses to one conversation (a prompt string or messages). Not chunked: one prompt, one ranking."""
        return self._post("/v1/compare", _Policy.compare_body(conversation, responses, options), CompareResponse)

    def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None
    ) -> GetRewardResponse:
        """OpenRLHF's protocol: templated prompt + response texts (any common policy template)."""
        bodies = self._policy_ready().reward_bodies(queries, prompts, labels)
        return _merge_rewards([self._post("/get_reward", b, GetRewardResponse) for b in bodies])


class AsyncRewardClient(_Client[httpx.AsyncClient]):
    """The same over httpx.AsyncClient; the chunks of one call are sent concurrently."""

    _http_class = httpx.AsyncClient

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        for attempt in itertools.count(1):  # the same loop as RewardClient's, awaiting instead of blocking
            try:
                outcome: Outcome = await self._http.request(method, path, json=body, headers=self._policy.headers)
            except httpx.TransportError as e:
                outcome = e
            if (wait := self._policy.retry_in(attempt, outcome)) is None:
                return cast(httpx.Response, outcome)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def _post(self, path: str, body: dict[str, Any], model: type[T]) -> T:
        return model.model_validate((await self._request("POST", path, body)).json())

    async def models(self) -> ModelsResponse:
        models = ModelsResponse.model_validate((await self._request("GET", "/v1/models")).json())
        self._policy.limits = models.limits
        return models

    async def _policy_ready(self) -> _Policy:
        if self._policy.max_items is None and self._policy.limits is None:
            await self.models()
        return self._policy

    async def score_results(self, items: Sequence[Item], **options: Any) -> list[ScoreResult]:
        bodies = (await self._policy_ready()).item_bodies(items, options)
        responses = await asyncio.gather(*(self._post("/v1/score", b, ScoreResponse) for b in bodies))
        return [r for response in responses for r in response.results]

    async def score(self, items: Sequence[Item], **options: Any) -> list[float | None]:
        return [r.score for r in await self.score_results(items, **options)]

    async def explain(self, items: Sequence[Item], **options: Any) -> list[ExplainResult]:
        bodies = (await self._policy_ready()).item_bodies(items, options)
        responses = await asyncio.gather(*(self._post("/v1/explain", b, ExplainResponse) for b in bodies))
        return [r for response in responses for r in response.results]

    async def compare(
        self, conversation: str | Sequence[Mapping[str, str]], responses: Sequence[str], **options: Any
    ) -> CompareResponse:
        return await self._post("/v1/compare", _Policy.compare_body(conversation, responses, options), CompareResponse)

    async def get_reward(
        self, queries: Sequence[str], prompts: Sequence[str] | None = None, labels: Sequence[Any] | None = None
    ) -> GetRewardResponse:
        bodies = (await self._policy_ready()).reward_bodies(queries, prompts, labels)
        parts = await asyncio.gather(*(self._post("/get_reward", b, GetRewardResponse) for b in bodies))
        return _merge_rewards(parts)
