"""One pure-ASGI middleware for what every request needs: request id, body-size limit, access log, metrics.

Pure ASGI (not BaseHTTPMiddleware) so that `receive` stays the server's: after the body has been replayed, the
batcher can still ask whether the client disconnected.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from armo.service.errors import BodyTimeoutError, BodyTooLargeError, describe
from armo.service.logs import new_request_id, request_id_var
from armo.service.metrics import ServiceMetrics

log = logging.getLogger("armo.access")


def _libc_trim() -> Callable[[], None]:
    """glibc keeps freed memory in its arenas; after dropping a half-read upload, hand it back to the system, so
    that abandoned uploads do not leave the process larger (a no-op where there is no glibc)."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    last = [0.0]

    def run() -> None:
        now = time.monotonic()
        if now - last[0] > 0.5:  # at most twice a second: a flood of rejections must not spend its time here
            last[0] = now
            trim(0)

    return run


release_memory = _libc_trim()

ERROR_TYPE_KEY = "armo.error_type"  # set in the scope by the exception handlers


def route_label(scope: Scope) -> str:
    """The matched route template: bounded, unlike the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"


class RequestMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics, max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def _reject(self, send: Send, request_id: str, error: BodyTooLargeError | BodyTimeoutError) -> int:
        resp = describe(error, request_id)
        body = json.dumps(resp.body).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),  # the rest of the body is never read: the connection cannot be reused
        ]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return resp.status

    async def _read_body(self, receive: Receive) -> tuple[bytes, bool]:
        """(body, too large). Stops reading as soon as the limit is passed; TimeoutError when the whole body has not
        arrived within the body timeout (a stalled or abandoned upload must not hold its memory)."""
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while True:
            message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            if message["type"] == "http.disconnect":
                return b"".join(chunks), False
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = new_request_id(headers.get("x-request-id"))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        too_large = BodyTooLargeError(f"request body is over the limit of {self.max_body_bytes} bytes", field="body")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                scope[ERROR_TYPE_KEY] = "body_too_large"
                status = await self._reject(send, request_id, too_large)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                try:
                    body, over = await self._read_body(receive)
                except TimeoutError:
                    scope[ERROR_TYPE_KEY] = "body_timeout"
                    late = BodyTimeoutError(f"the body did not arrive within {self.body_timeout_s:g} s", field="body")
                    status = await self._reject(send, request_id, late)
                    release_memory()
                    return
                if over:
                    scope[ERROR_TYPE_KEY] = "body_too_large"
                    status = await self._reject(send, request_id, too_large)
                    release_memory()
                    return
                replayed = False

                async def replay() -> Message:
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()  # after the body: the server's disconnect notification

                await self.app(scope, replay, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, status, time.perf_counter() - started, request_id)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route = route_label(scope)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(seconds)
        error_type: Any = scope.get(ERROR_TYPE_KEY)
        if status >= 400:
            self.metrics.errors.labels(route, str(error_type or "internal_error")).inc()
        log.info(
            "request",
            extra={
                "event": "access",
                "request_id": request_id,
                "method": scope.get("method"),
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "error_type": error_type,
            },
        )
