"""The scoring layer: protocol requests → RewardModel inputs → batcher → protocol responses.

No web framework here (routes stay thin and this stays testable on its own). Input problems are raised as
armo.model_store.errors.InputError with the field path of the *request* (e.g. `items[2].messages[0].content`);
errors.py maps them to statuses.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from armo.model_store.errors import ArmoError, InputError, ModelNotLoadedError
from armo.model_store.reward_model import ItemResult, Prepared, RewardModel, ScoreItem, Steer, Steering
from armo.service import protocol as p
from armo.service.batcher import MicroBatcher
from armo.service.chat_template import split
from armo.service.metrics import ServiceMetrics
from armo.service.reloader import LoadedModel, Reloader


@dataclass(frozen=True)
class Limits:
    """Built by `Settings.limits` (the only source of defaults)."""

    max_items: int
    max_chars: int
    request_timeout_s: float
    top_contributors: int


Namer = Callable[[str | None], str]  # a core error's field (`messages[1].role`) → the request's field


def _namer(prefix: str, *, prompt: bool, response: str | None = None) -> Namer:
    """Fields of one item as the caller wrote them: `items[3].messages[1].role`, `items[0].prompt` when the
    shorthand was used, `responses[2]` for a /v1/compare response."""

    def name(field: str | None) -> str:
        if field is None:
            return prefix or "body"
        if prompt and field.startswith("messages"):
            field = "prompt"
        if response is not None and field == "response":
            return response
        return f"{prefix}.{field}" if prefix else field

    return name


def _fixed(name: str) -> Namer:
    return lambda _: name


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class Scorer:
    def __init__(self, reloader: Reloader, batcher: MicroBatcher, metrics: ServiceMetrics, limits: Limits) -> None:
        self.reloader = reloader
        self.batcher = batcher
        self.metrics = metrics
        self.limits = limits
        # Tokenisation is CPU work: keep it off the event loop. One thread, because a Rust fast tokenizer shared
        # across threads can fail with "Already borrowed", and on a few cores parallel tokenising buys little.
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armo-prepare")

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    # -- shared steps -------------------------------------------------------------------------------------
    def _model(self) -> LoadedModel:
        loaded = self.reloader.current  # read once: this request stays on this version to the end
        if loaded is None:
            raise ModelNotLoadedError("no model loaded")
        return loaded

    def _timeout(self, requested: float | None) -> float:
        return min(requested, self.limits.request_timeout_s) if requested else self.limits.request_timeout_s

    def _check_count(self, n: int, field: str) -> None:
        if n > self.limits.max_items:
            raise InputError(f"{n} items is over the limit of {self.limits.max_items} per request", field=field)

    def _check_text(self, text: str, field: str) -> None:
        if len(text) > self.limits.max_chars:
            raise InputError(f"{len(text)} characters is over the limit of {self.limits.max_chars}", field=field)

    def _check_conversation(self, conv: p.ScoreInput | p.CompareRequest, prefix: str) -> None:
        if conv.prompt is not None:
            self._check_text(conv.prompt, f"{prefix}prompt")
        for j, m in enumerate(conv.messages or []):
            self._check_text(m.content, f"{prefix}messages[{j}].content")

    @staticmethod
    def _steer(rm: RewardModel, weights: dict[str, float] | None, mask: list[str] | None) -> Steer | None:
        if weights is None and not mask:
            return None
        # Validated once per request (422 naming unknown objectives), before any tokenisation.
        return rm.steer(Steering(weights=weights, mask=tuple(mask or ())))

    @staticmethod
    def _prepare_all(rm: RewardModel, items: Sequence[tuple[Namer, ScoreItem]], truncate: bool) -> list[Prepared]:
        out = []
        for namer, item in items:
            try:
                out.append(rm.prepare(item, truncate=truncate))
            except ArmoError as e:
                raise type(e)(e.message, field=namer(e.field)) from None
        return out

    async def _run(
        self,
        loaded: LoadedModel,
        items: Sequence[tuple[Namer, ScoreItem]],
        *,
        truncate: bool,
        steer: Steer | None,
        timeout: float | None,
        endpoint: str,
    ) -> list[ItemResult]:
        rm = loaded.rm
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._prepare_pool, self._prepare_all, rm, items, truncate)
        results = await self.batcher.submit(rm, prepared, timeout=self._timeout(timeout), steer=steer)
        self.metrics.items.labels(endpoint).inc(len(results))
        for prep, res in zip(prepared, results, strict=True):
            if res.truncated:
                self.metrics.truncations.inc()
            if steer is None:
                self.metrics.observe_item(res.score, prep.encoded.response_tokens, res.rewards, res.weights)
        return results

    # -- endpoints ----------------------------------------------------------------------------------------
    def _items(self, items: Sequence[p.ScoreInput]) -> list[tuple[Namer, ScoreItem]]:
        self._check_count(len(items), "items")
        out = []
        for i, it in enumerate(items):
            self._check_conversation(it, f"items[{i}].")
            self._check_text(it.response, f"items[{i}].response")
            out.append((_namer(f"items[{i}]", prompt=it.prompt is not None), ScoreItem(it.as_messages(), it.response)))
        return out

    async def _run_items(
        self, req: p.ScoreRequest | p.ExplainRequest, endpoint: str
    ) -> tuple[LoadedModel, list[ItemResult]]:
        items = self._items(req.items)
        loaded = self._model()
        steer = self._steer(loaded.rm, req.weights, req.mask)
        results = await self._run(
            loaded, items, truncate=req.truncate, steer=steer, timeout=req.timeout_s, endpoint=endpoint
        )
        return loaded, results

    async def score(self, req: p.ScoreRequest) -> p.ScoreResponse:
        loaded, results = await self._run_items(req, "score")
        return p.ScoreResponse(
            model=loaded.rm.name,
            version=loaded.version,
            results=[
                p.ScoreResult(
                    score=r.score,
                    truncated=r.truncated,
                    tokens=r.tokens,
                    objectives=dict(r.rewards) if req.return_objectives else None,
                )
                for r in results
            ],
        )

    async def explain(self, req: p.ExplainRequest) -> p.ExplainResponse:
        loaded, results = await self._run_items(req, "explain")
        top = self.limits.top_contributors
        return p.ExplainResponse(
            model=loaded.rm.name,
            version=loaded.version,
            objectives=list(loaded.rm.objectives),
            results=[
                p.ExplainResult(
                    score=r.score,
                    truncated=r.truncated,
                    tokens=r.tokens,
                    rewards=r.rewards,
                    debiased=r.debiased,
                    weights=r.weights,
                    contributions=r.contributions,
                    verbosity_penalty=r.verbosity_penalty,
                    top_contributors=[
                        p.Contributor(objective=name, contribution=value)
                        for name, value in sorted(r.contributions.items(), key=lambda kv: -abs(kv[1]))[:top]
                    ],
                    steered=req.weights is not None or bool(req.mask),
                )
                for r in results
            ],
        )

    async def compare(self, req: p.CompareRequest) -> p.CompareResponse:
        self._check_count(len(req.responses), "responses")
        self._check_conversation(req, "")
        for i, response in enumerate(req.responses):
            self._check_text(response, f"responses[{i}]")
        loaded = self._model()
        steer = self._steer(loaded.rm, req.weights, req.mask)
        messages = req.as_messages()
        # One request → one batch on one version; inside it, the forward path runs the shared prompt once for
        # every response (armo.model_store.forward.item_features).
        use_prompt = req.prompt is not None
        items = [
            (_namer("", prompt=use_prompt, response=f"responses[{i}]"), ScoreItem(messages, r))
            for i, r in enumerate(req.responses)
        ]
        results = await self._run(
            loaded,
            items,
            truncate=req.truncate,
            steer=steer,
            timeout=req.timeout_s,
            endpoint="compare",
        )
        scores = [r.score for r in results]
        ranking = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        # β (logit_scale) is already inside R = g · r', so the trained Bradley-Terry probability is σ(R_a − R_b).
        pairs = [
            p.PairProbability(a=a, b=b, p_a_over_b=_sigmoid(scores[a] - scores[b]))
            for a in range(len(scores))
            for b in range(a + 1, len(scores))
        ]
        return p.CompareResponse(
            model=loaded.rm.name,
            version=loaded.version,
            scores=scores,
            truncated=[r.truncated for r in results],
            ranking=ranking,
            best=ranking[0],
            pairwise=pairs,
        )

    async def get_reward(self, req: p.GetRewardRequest) -> p.GetRewardResponse:
        self._check_count(len(req.query), "query")
        for i, text in enumerate(req.query):
            self._check_text(text, f"query[{i}]")
        loaded = self._model()
        if loaded.markers is None:
            raise InputError("this model's chat template cannot be split; use /v1/score", field="query")
        tokenizer = loaded.rm.backbone.tokenizer
        items = []
        for i, text in enumerate(req.query):
            messages, response = split(tokenizer, loaded.markers, text, field=f"query[{i}]")
            # The turns were parsed from one text: every problem in them is a problem of that text.
            items.append((_fixed(f"query[{i}]"), ScoreItem(messages, response)))
        results = await self._run(loaded, items, truncate=True, steer=None, timeout=None, endpoint="get_reward")
        return p.GetRewardResponse(rewards=[r.score for r in results])

    def models(self) -> p.ModelsResponse:
        """/v1/models: the loaded model as the manifest describes it, the store's versions and the last reload."""
        r = self.reloader
        return p.ModelsResponse(
            loaded=_describe(r.current) if r.current else None,
            store=p.StoreInfo(
                model=r.settings.model,
                alias=r.settings.alias,
                versions=r.store.versions(r.settings.model),
                aliases=r.store.aliases(r.settings.model),
            ),
            last_reload=r.last,
        )


def _describe(loaded: LoadedModel) -> p.LoadedModelInfo:
    m, rm = loaded.manifest, loaded.rm
    return p.LoadedModelInfo(
        model=m.model,
        version=m.version,
        created_at=m.created_at,
        loaded_at=loaded.loaded_at,
        backbone=p.BackboneInfo(
            id=rm.backbone.id,
            revision=rm.backbone.revision,
            hidden_size=rm.backbone.hidden_size,
            max_length=rm.config.max_length,
        ),
        pooling=m.pooling,
        objectives=[
            p.ObjectiveInfo(name=o.name, kind=o.kind, description=o.description, source=o.source, metrics=o.metrics)
            for o in m.objectives
        ],
        gating=m.gating,
        metrics=m.metrics,
    )
