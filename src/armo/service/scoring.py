"""The scoring layer: protocol requests → RewardModel inputs → batcher → protocol responses.

No web framework here (routes stay thin and this stays testable on its own). Input problems are raised as
armo.model_store.errors.InputError with the field path of the *request* (e.g. `items[2].messages[0].content`);
errors.py maps them to statuses.

An item that fails alone fails alone: on the routes that take many items, an item whose content cannot be scored
gets an `error` (and a null score) in the body while the others are scored. Only when every item fails does the
request answer with that error's status: then there is nothing to return.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from armo import protocol as p
from armo.model_store.errors import ArmoError, InputError, ModelNotLoadedError, NonFiniteScoreError
from armo.model_store.heads import preference_probability
from armo.model_store.reward_model import ItemResult, Prepared, RewardModel, ScoreItem, Steer, Steering
from armo.service.batcher import MicroBatcher
from armo.service.chat_template import parse
from armo.service.errors import clean, kind_of
from armo.service.metrics import ServiceMetrics
from armo.service.reloader import LoadedModel, Reloader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """Built by `armo.service.app.limits` from the settings (the only source of defaults)."""

    max_items: int
    max_chars: int
    request_timeout_s: float  # deadline of a request that names none
    max_request_timeout_s: float  # the longest a request may ask for
    get_reward_timeout_s: float
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


def _item_error(e: ArmoError) -> p.ItemError:
    return p.ItemError(
        type=kind_of(e).type, message=clean(e.message), field=None if e.field is None else clean(e.field)
    )


class Scorer:
    def __init__(self, reloader: Reloader, batcher: MicroBatcher, metrics: ServiceMetrics, limits: Limits) -> None:
        self.reloader = reloader
        self.batcher = batcher
        self.metrics = metrics
        self.limits = limits
        # Tokenisation is CPU work: keep it off the event loop. One thread, because a Rust fast tokenizer shared
        # across threads can fail with "Already borrowed", and on a few cores parallel tokenising buys little.
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armo-prepare")
        self._seen_extra: set[str] = set()

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    # -- shared steps -------------------------------------------------------------------------------------
    def _model(self) -> LoadedModel:
        loaded = self.reloader.current  # read once: this request stays on this version to the end
        if loaded is None:
            raise ModelNotLoadedError("no model loaded")
        return loaded

    def _timeout(self, requested: float | None) -> float:
        return min(requested, self.limits.max_request_timeout_s) if requested else self.limits.request_timeout_s

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
    def _prepare_all(
        rm: RewardModel, items: Sequence[tuple[Namer, ScoreItem]], truncate: bool
    ) -> list[Prepared | ArmoError]:
        out: list[Prepared | ArmoError] = []
        for namer, item in items:
            try:
                out.append(rm.prepare(item, truncate=truncate))
            except ArmoError as e:
                out.append(type(e)(e.message, field=namer(e.field)))
        return out

    async def _run(
        self,
        loaded: LoadedModel,
        items: Sequence[tuple[Namer, ScoreItem]],
        *,
        truncate: bool,
        steer: Steer | None,
        timeout: float,
        endpoint: str,
        caller: str | None,
    ) -> list[ItemResult | p.ItemError]:
        """Results in item order; an item that could not be prepared or scored is its error."""
        rm = loaded.rm
        # Refuse at once, before any tokenising, when the queue cannot take this much work (a cheap estimate:
        # about four characters a token); under overload a 429 must cost milliseconds, not a tokenizer queue. The
        # reservation counts this request as waiting until it is submitted, so a burst is not all admitted here
        # (the queue is still empty) and then tokenised one by one only to be refused in submit().
        chars = sum(len(it.response) + sum(len(m.get("content", "")) for m in it.messages) for _, it in items)
        per_job = self.batcher.config.max_items
        loop = asyncio.get_running_loop()
        with self.batcher.reserve(chars // 4, -(-len(items) // per_job), timeout):
            prepared = await loop.run_in_executor(self._prepare_pool, self._prepare_all, rm, items, truncate)
        good = [x for x in prepared if isinstance(x, Prepared)]
        submitted = await self.batcher.submit(rm, good, timeout=timeout, steer=steer, caller=caller) if good else []
        results = iter(submitted)
        self.metrics.items.labels(endpoint).inc(len(good))
        out: list[ItemResult | ArmoError] = []
        for x, (namer, _) in zip(prepared, items, strict=True):
            if isinstance(x, ArmoError):
                out.append(x)
                continue
            res = next(results)
            if not math.isfinite(res.score):  # never sent as a number: JSON has none, and an RL loop would crash
                out.append(NonFiniteScoreError("the score is not a finite number", field=namer(None)))
                continue
            if res.truncated:
                self.metrics.truncations.inc()
            if steer is None:
                self.metrics.observe_item(res.score, x.encoded.response_tokens, res.rewards, res.weights)
            out.append(res)
        failed = [r for r in out if isinstance(r, ArmoError)]
        if failed and len(failed) == len(out):
            raise failed[0]  # nothing to return: the request carries the (first) item's error
        return [_item_error(r) if isinstance(r, ArmoError) else r for r in out]

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
        self, req: p.ScoreRequest | p.ExplainRequest, endpoint: str, caller: str | None
    ) -> tuple[LoadedModel, list[ItemResult | p.ItemError]]:
        items = self._items(req.items)
        loaded = self._model()
        steer = self._steer(loaded.rm, req.weights, req.mask)
        timeout = self._timeout(req.timeout_s)
        results = await self._run(
            loaded, items, truncate=req.truncate, steer=steer, timeout=timeout, endpoint=endpoint, caller=caller
        )
        return loaded, results

    async def score(self, req: p.ScoreRequest, caller: str | None = None) -> p.ScoreResponse:
        loaded, results = await self._run_items(req, "score", caller)
        return p.ScoreResponse(
            model=loaded.rm.name,
            version=loaded.version,
            results=[
                p.ScoreResult(score=None, error=r)
                if isinstance(r, p.ItemError)
                else p.ScoreResult(
                    score=r.score,
                    truncated=r.truncated,
                    tokens=r.tokens,
                    objectives=dict(r.rewards) if req.return_objectives else None,
                )
                for r in results
            ],
        )

    async def explain(self, req: p.ExplainRequest, caller: str | None = None) -> p.ExplainResponse:
        loaded, results = await self._run_items(req, "explain", caller)
        top = self.limits.top_contributors
        return p.ExplainResponse(
            model=loaded.rm.name,
            version=loaded.version,
            objectives=list(loaded.rm.objectives),
            results=[
                p.ExplainResult(score=None, error=r)
                if isinstance(r, p.ItemError)
                else p.ExplainResult(
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

    async def compare(self, req: p.CompareRequest, caller: str | None = None) -> p.CompareResponse:
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
        timeout = self._timeout(req.timeout_s)
        results = await self._run(
            loaded, items, truncate=req.truncate, steer=steer, timeout=timeout, endpoint="compare", caller=caller
        )
        # A ranking over some of the responses would mislead: here one failed response fails the request.
        failed = next((r for r in results if isinstance(r, p.ItemError)), None)
        if failed is not None:
            raise InputError(failed.message, field=failed.field)
        scored = [r for r in results if isinstance(r, ItemResult)]
        scores = [r.score for r in scored]
        ranking = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        # β (logit_scale) is already inside R = g · r', so the trained Bradley-Terry probability is σ(R_a − R_b).
        pairs = [
            p.PairProbability(a=a, b=b, p_a_over_b=preference_probability(scores[a] - scores[b]))
            for a in range(len(scores))
            for b in range(a + 1, len(scores))
        ]
        return p.CompareResponse(
            model=loaded.rm.name,
            version=loaded.version,
            scores=scores,
            truncated=[r.truncated for r in scored],
            ranking=ranking,
            best=ranking[0],
            pairwise=pairs,
        )

    async def get_reward(self, req: p.GetRewardRequest, caller: str | None = None) -> p.GetRewardResponse:
        self._check_count(len(req.query), "query")
        for i, text in enumerate(req.query):
            self._check_text(text, f"query[{i}]")
        if req.model_extra:
            self._note_extra_fields(sorted(req.model_extra))
        loaded = self._model()
        items, unterminated = [], []
        for i, text in enumerate(req.query):
            prompt = req.prompts[i] if req.prompts is not None else None
            parsed = parse(text, loaded.families, field=f"query[{i}]", prompt=prompt)
            # The turns were parsed from one text: every problem in them is a problem of that text.
            items.append((_fixed(f"query[{i}]"), ScoreItem(parsed.messages, parsed.response)))
            unterminated.append(parsed.unterminated)
        timeout = self.limits.get_reward_timeout_s
        results = await self._run(
            loaded, items, truncate=True, steer=None, timeout=timeout, endpoint="get_reward", caller=caller
        )
        rewards = [None if isinstance(r, p.ItemError) else r.score for r in results]
        logs: dict[str, list[float | None]] = {name: [] for name in loaded.rm.objectives}
        logs["truncated"], logs["unterminated"] = [], []
        for r, cut_off in zip(results, unterminated, strict=True):
            values = {**r.rewards, "truncated": float(r.truncated)} if isinstance(r, ItemResult) else {}
            values["unterminated"] = float(cut_off)
            for name, column in logs.items():
                column.append(values.get(name))
        errors = [r if isinstance(r, p.ItemError) else None for r in results]
        return p.GetRewardResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs=logs,
            unterminated=unterminated,
            errors=errors if any(errors) else None,
        )

    def untemplate(self, req: p.UntemplateRequest) -> p.UntemplateResponse:
        """/v1/untemplate: the turns and response `/get_reward` reads from one templated text (nothing scored)."""
        self._check_text(req.text, "text")
        parsed = parse(req.text, self._model().families, field="text", prompt=req.prompt)
        return p.UntemplateResponse(
            messages=[p.ChatMessage.model_construct(role=m["role"], content=m["content"]) for m in parsed.messages],
            response=parsed.response,
            unterminated=parsed.unterminated,
            family=parsed.family,
        )

    def _note_extra_fields(self, names: list[str]) -> None:
        """Fields a newer OpenRLHF adds are ignored; say so once per name, not once per request."""
        new = [n for n in names if n not in self._seen_extra]
        if new:
            self._seen_extra.update(new)
            log.info("/get_reward: ignoring unknown request field(s) %s", ", ".join(new))

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
            limits=p.LimitsInfo(
                max_items=self.limits.max_items,
                max_chars=self.limits.max_chars,
                max_tokens=r.current.rm.config.max_length if r.current else None,
                request_timeout_s=self.limits.request_timeout_s,
                max_request_timeout_s=self.limits.max_request_timeout_s,
                get_reward_timeout_s=self.limits.get_reward_timeout_s,
            ),
        )


def _describe(loaded: LoadedModel) -> p.LoadedModelInfo:
    m, rm = loaded.manifest, loaded.rm
    agreement = m.precision.agreement.get(rm.backbone.precision)
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
            backend=rm.backbone.backend,
            delta=rm.backbone.delta.sha256 if rm.backbone.delta else None,
            delta_layers=list(rm.backbone.delta.layers) if rm.backbone.delta else [],
            precision=rm.backbone.precision,
            precision_agreement=agreement.model_dump() if agreement else None,
            compiled=rm.backbone.compiled is not None,
        ),
        pooling=m.pooling,
        objectives=[
            p.ObjectiveInfo(name=o.name, kind=o.kind, description=o.description, source=o.source, metrics=o.metrics)
            for o in m.objectives
        ],
        gating=m.gating,
        metrics=m.metrics,
    )
