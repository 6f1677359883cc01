"""Cancel a request's work when its client leaves, so an abandoned request costs no forward pass.

The route's work runs as a task next to a listener on the request's `receive`; whichever finishes first cancels
the other (vLLM's entrypoints wrap their handlers the same way). A cancelled request's batcher job is cancelled
with it, and the batcher skips cancelled jobs, so nothing below the route needs to know about connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from armo.service.errors import ClientDisconnectedError
from armo.service.metrics import ServiceMetrics

T = TypeVar("T")


async def _disconnect(request: Request) -> None:
    """Returns once the server reports that the client went away (the body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T], metrics: ServiceMetrics) -> T:
    """`await work`, or raise ClientDisconnectedError (499, logged; nobody reads it) if the client leaves first."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:  # also when this handler itself is cancelled (server shutdown)
        for t in (task, listener):
            if not t.done():
                t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    if task.done() and not task.cancelled():
        return task.result()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    metrics.disconnected.inc()
    raise ClientDisconnectedError("the client disconnected")
