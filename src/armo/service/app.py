"""The FastAPI application: wiring only (services, middleware, the exception table, routes, lifespan)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from armo.model_store.backbone import Backbone, load_backbone
from armo.model_store.errors import ArmoError
from armo.model_store.loader import BackboneLoader
from armo.service.auth import Auth
from armo.service.batcher import BatcherConfig, MicroBatcher
from armo.service.errors import (
    ErrorResponse,
    MalformedBodyError,
    MethodNotAllowedError,
    NotFoundError,
    describe,
    describe_validation,
)
from armo.service.logs import request_id_var
from armo.service.metrics import ServiceMetrics
from armo.service.middleware import ERROR_TYPE_KEY, RequestMiddleware
from armo.service.reloader import Reloader
from armo.service.routes import build_router
from armo.service.scoring import Limits, Scorer
from armo.service.state import Services
from armo.settings import Settings

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).with_name("ui")

DESCRIPTION = """Interpretable, steerable ArmoRM-style reward model.

`/v1/score` for RLHF loops, `/v1/explain` for dashboards (per-objective rewards, debiased rewards, gating weights,
contributions), `/v1/compare` for Best-of-N, per-request steering (`weights` / `mask`), `/get_reward` for OpenRLHF
clients. Errors are JSON `{"error": {"type", "message", "field", "request_id"}}`."""


def _respond(request: Request, resp: ErrorResponse) -> JSONResponse:
    request.scope[ERROR_TYPE_KEY] = resp.type
    return JSONResponse(resp.body, status_code=resp.status, headers=resp.headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_armo_error(request: Request, exc: Exception) -> JSONResponse:
        return _respond(request, describe(exc, request_id_var.get()))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _respond(request, describe_validation(list(exc.errors()), request_id_var.get()))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return _respond(request, describe(NotFoundError(f"no route {request.url.path}"), request_id_var.get()))
        if exc.status_code == 405:
            err = MethodNotAllowedError(f"{request.method} is not allowed on {request.url.path}")
            resp = describe(err, request_id_var.get())
            resp.headers.update({k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"})
            return _respond(request, resp)
        if exc.status_code == 400:  # the body could not be decoded at all (invalid UTF-8, nesting too deep …)
            return _respond(request, describe(MalformedBodyError(str(exc.detail), field="body"), request_id_var.get()))
        body = {
            "error": {
                "type": "http_error",
                "message": str(exc.detail),
                "field": None,
                "request_id": request_id_var.get(),
            }
        }
        request.scope[ERROR_TYPE_KEY] = "http_error"
        return JSONResponse(body, status_code=exc.status_code)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return _respond(request, describe(exc, request_id_var.get()))  # a bare 500, never the trace

    app.add_exception_handler(ArmoError, on_armo_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)


def batcher_config(settings: Settings) -> BatcherConfig:
    """The micro-batcher's config from the settings (the only source of its defaults)."""
    return BatcherConfig(
        max_items=settings.max_batch_items,
        max_tokens=settings.max_batch_tokens,
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        max_queue_tokens=settings.max_queue_tokens,
        retry_after_s=settings.retry_after_s,
    )


def limits(settings: Settings) -> Limits:
    """The request limits from the settings (a request may not ask for a deadline below the default one's cap)."""
    return Limits(
        max_items=settings.max_items,
        max_chars=settings.max_chars,
        request_timeout_s=settings.request_timeout_s,
        max_request_timeout_s=max(settings.max_request_timeout_s, settings.request_timeout_s),
        get_reward_timeout_s=settings.get_reward_timeout_s,
        top_contributors=settings.top_contributors,
    )


def _frozen_after(loader: BackboneLoader) -> BackboneLoader:
    """`loader`, then gc.freeze(): what exists once a backbone is loaded (the imports, torch, the model, the
    tokenizer: ~430k objects) leaves the garbage collector's view. Measured on this 2-core VM under a burst
    (loadtests/reliability.py --mode burst): every few bursts a full collection walked all of them for 90-160 ms
    holding the GIL, and every request in flight, every 429 and /health waited for it (429 p50 ~200 ms in those
    bursts, /health max ~185 ms). A backbone is freed by reference counting alone (no cycles), so a replaced one
    is not kept; lifespan's end unfreezes (apps created one after another in one process, as tests do)."""

    def load(spec: str, **kwargs: Any) -> Backbone:
        backbone = loader(spec, **kwargs)
        gc.freeze()
        return backbone

    return load


def build_services(settings: Settings, *, backbone_loader: BackboneLoader = load_backbone) -> Services:
    metrics = ServiceMetrics()
    # ONE thread runs every torch call (loads, smoke scores, forward passes). Measured on this 2-core CPU: once a
    # second thread has run torch, the OpenMP teams of the two threads compete and forward passes lose 25-35 %
    # throughput; with a single thread they keep full speed. A backbone load therefore queues scoring for its
    # duration (requests wait, none fail); heads-only reloads take milliseconds.
    torch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armo-torch")
    reloader = Reloader(settings, metrics, backbone_loader=_frozen_after(backbone_loader), executor=torch_thread)
    batcher = MicroBatcher(batcher_config(settings), metrics, executor=torch_thread)
    scorer = Scorer(reloader, batcher, metrics, limits(settings))
    return Services(settings, metrics, Auth(settings), reloader, batcher, scorer)


def create_app(settings: Settings | None = None, *, backbone_loader: BackboneLoader = load_backbone) -> FastAPI:
    settings = settings or Settings()
    services = build_services(settings, backbone_loader=backbone_loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        services.batcher.start()
        await services.reloader.start()  # loads in the background: /health answers, /ready says 503 until done
        log.info(
            "service started",
            extra={"event": "start", "store_root": str(settings.store_root), "model": settings.model},
        )
        try:
            yield
        finally:
            await services.reloader.stop()
            await services.batcher.stop()
            services.scorer.close()
            gc.unfreeze()
            log.info("service stopped", extra={"event": "stop"})

    app = FastAPI(title="armo reward model", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.services = services
    _install_error_handlers(app)
    app.include_router(build_router(services))
    # The explain page: static files, no build step, nothing from a CDN; its API calls carry the key the user types.
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    app.add_middleware(
        RequestMiddleware,
        metrics=services.metrics,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    return app
