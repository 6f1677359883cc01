"""HTTP routes: parse (pydantic), call the scoring layer or the reloader, return. Nothing else lives here."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from armo import protocol as p
from armo.model_store.errors import ModelNotLoadedError
from armo.service.auth import CALLER
from armo.service.cancellation import unless_disconnected
from armo.service.errors import ShuttingDownError
from armo.service.state import Services, services_of

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": p.ErrorBody, "description": text}
    for code, text in [
        (400, "Malformed JSON"),
        (401, "Missing or invalid API key"),
        (413, "Body too large"),
        (422, "Invalid input; `error.field` names the field"),
        (429, "Queue full; see Retry-After"),
        (503, "No model loaded"),
        (504, "Deadline exceeded"),
    ]
}


def caller_of(request: Request) -> str | None:
    """Which API key sent the request (None without keys: then every request is its own caller)."""
    value = getattr(request.state, CALLER, None)
    return value if isinstance(value, str) else None


def build_router(services: Services) -> APIRouter:
    auth = services.auth
    router = APIRouter()
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth.api)], responses=ERRORS)

    @v1.post("/score", response_model=p.ScoreResponse, summary="Score a batch of (conversation, response) items")
    async def score(body: p.ScoreRequest, request: Request) -> p.ScoreResponse:
        s = services_of(request)
        return await unless_disconnected(request, s.scorer.score(body, caller_of(request)), s.metrics)

    @v1.post("/explain", response_model=p.ExplainResponse, summary="Per-objective decomposition of each score")
    async def explain(body: p.ExplainRequest, request: Request) -> p.ExplainResponse:
        s = services_of(request)
        return await unless_disconnected(request, s.scorer.explain(body, caller_of(request)), s.metrics)

    @v1.post("/compare", response_model=p.CompareResponse, summary="Rank responses to one conversation (Best-of-N)")
    async def compare(body: p.CompareRequest, request: Request) -> p.CompareResponse:
        s = services_of(request)
        return await unless_disconnected(request, s.scorer.compare(body, caller_of(request)), s.metrics)

    @v1.post("/untemplate", response_model=p.UntemplateResponse, summary="The turns read from a templated text")
    async def untemplate(body: p.UntemplateRequest, request: Request) -> p.UntemplateResponse:
        return services_of(request).scorer.untemplate(body)

    @v1.get("/models", response_model=p.ModelsResponse, summary="The loaded model, the store, the last reload")
    async def models(request: Request) -> p.ModelsResponse:
        return services_of(request).scorer.models()

    admin = APIRouter(prefix="/v1", dependencies=[Depends(auth.admin)], responses=ERRORS)

    @admin.post(
        "/models/reload",
        response_model=p.ReloadStatus,
        summary="Load a version (default: the configured alias) and swap it in (admin key)",
        responses={404: {"model": p.ErrorBody}, 409: {"model": p.ErrorBody, "description": "Artifact refused"}},
    )
    async def reload(request: Request, body: p.ReloadRequest | None = None) -> p.ReloadStatus:
        version = body.version if body else None
        return await services_of(request).reloader.reload(version, source="admin", wait=False)

    compat = APIRouter(dependencies=[Depends(auth.api)], responses=ERRORS)

    @compat.post("/get_reward", response_model=p.GetRewardResponse, summary="OpenRLHF remote reward model protocol")
    async def get_reward(body: p.GetRewardRequest, request: Request) -> p.GetRewardResponse:
        s = services_of(request)
        return await unless_disconnected(request, s.scorer.get_reward(body, caller_of(request)), s.metrics)

    ops = APIRouter()

    @ops.get("/health", response_model=p.HealthResponse, dependencies=[Depends(auth.health)])
    async def health() -> p.HealthResponse:
        return p.HealthResponse(status="ok")

    @ops.get(
        "/ready",
        response_model=p.ReadyResponse,
        dependencies=[Depends(auth.health)],
        responses={503: {"model": p.ErrorBody, "description": "No model loaded"}},
    )
    async def ready(request: Request) -> p.ReadyResponse:
        if services_of(request).batcher.draining:  # a load balancer stops sending before the work is refused
            raise ShuttingDownError("the service is stopping")
        loaded = services_of(request).reloader.current
        if loaded is None:
            raise ModelNotLoadedError("no model loaded")
        return p.ReadyResponse(status="ready", model=loaded.rm.name, version=loaded.version)

    @ops.get("/metrics", dependencies=[Depends(auth.metrics)], response_class=Response)
    async def metrics(request: Request) -> Response:
        s = services_of(request)
        s.metrics.queue_depth.set(s.batcher.depth)
        return Response(s.metrics.render(), media_type=s.metrics_content_type)

    for r in (v1, admin, compat, ops):
        router.include_router(r)
    return router
