"""The one exception → HTTP status table, and the service's own error classes.

Every error response has the same JSON shape, never a stack trace:

    {"error": {"type": "input_error", "message": "...", "field": "items[0].messages[1].role", "request_id": "..."}}

No web framework is imported here, so the scoring layer and the batcher can raise these classes freely;
app.py turns them into responses through `describe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from armo.model_store.errors import (
    ArmoError,
    ArtifactError,
    InputError,
    InputTooLongError,
    ModelNotLoadedError,
    NonFiniteScoreError,
    StoreError,
)


class ServiceError(ArmoError):
    """Base of the errors raised by the service itself (not by the scoring core)."""


class QueueFullError(ServiceError):
    """The batcher's queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceededError(ServiceError):
    """The request was not scored before its deadline."""


class ClientDisconnectedError(ServiceError):
    """The client went away before its batch ran; its items were skipped."""


class BatchFailedError(ServiceError):
    """The forward pass of a batch raised; only that batch's requests fail."""


class UnauthorizedError(ServiceError):
    """Missing or wrong API key."""


class ForbiddenError(ServiceError):
    """A valid caller without the right to this route (admin) or a disabled route."""


class BodyTooLargeError(ServiceError):
    """The request body exceeds the configured limit."""


class BodyTimeoutError(ServiceError):
    """The body did not arrive in time (a stalled upload, or a Content-Length larger than what was sent)."""


class MalformedBodyError(ServiceError):
    """The body is not valid JSON."""


class ShuttingDownError(ServiceError):
    """The service is stopping; retry on another replica."""


class ReloadInProgressError(ServiceError):
    """Another reload is running."""


class NotFoundError(ServiceError):
    """No such route."""


class MethodNotAllowedError(ServiceError):
    """The route exists but not for this method."""


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str  # stable, bounded: also a metrics label


# Order matters: the first class that matches wins, so subclasses come before their bases.
TABLE: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (MalformedBodyError, ErrorKind(400, "malformed_json")),
    (UnauthorizedError, ErrorKind(401, "unauthorized")),
    (ForbiddenError, ErrorKind(403, "forbidden")),
    (NotFoundError, ErrorKind(404, "not_found")),
    (StoreError, ErrorKind(404, "store_error")),
    (MethodNotAllowedError, ErrorKind(405, "method_not_allowed")),
    (ArtifactError, ErrorKind(409, "artifact_refused")),
    (ReloadInProgressError, ErrorKind(409, "reload_in_progress")),
    (BodyTimeoutError, ErrorKind(408, "body_timeout")),
    (BodyTooLargeError, ErrorKind(413, "body_too_large")),
    (InputTooLongError, ErrorKind(422, "input_too_long")),
    (NonFiniteScoreError, ErrorKind(422, "non_finite_score")),
    (InputError, ErrorKind(422, "input_error")),
    (QueueFullError, ErrorKind(429, "queue_full")),
    (ClientDisconnectedError, ErrorKind(499, "client_disconnected")),
    (BatchFailedError, ErrorKind(500, "batch_failed")),
    (ModelNotLoadedError, ErrorKind(503, "model_not_loaded")),
    (ShuttingDownError, ErrorKind(503, "shutting_down")),
    (DeadlineExceededError, ErrorKind(504, "deadline_exceeded")),
)
INTERNAL = ErrorKind(500, "internal_error")
VALIDATION = ErrorKind(422, "validation_error")


def kind_of(exc: BaseException) -> ErrorKind:
    for cls, kind in TABLE:
        if isinstance(exc, cls):
            return kind
    return INTERNAL


@dataclass
class ErrorResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.body["error"]["type"])


def clean(text: str) -> str:
    """Text that can always be encoded as JSON in UTF-8: messages echo request content (an unknown objective's name,
    a field path), and a lone surrogate in it would otherwise fail the response itself."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _body(kind: ErrorKind, message: str, fld: str | None, request_id: str | None, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {
        "type": kind.type,
        "message": clean(message),
        "field": None if fld is None else clean(fld),
        "request_id": request_id,
    }
    err.update(extra)
    return {"error": err}


def describe(exc: BaseException, request_id: str | None = None) -> ErrorResponse:
    """The response for any exception. Unknown exceptions become a bare 500: their text may hold internals."""
    kind = kind_of(exc)
    if kind is INTERNAL:
        return ErrorResponse(500, _body(kind, "internal error", None, request_id))
    assert isinstance(exc, ArmoError)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    return ErrorResponse(kind.status, _body(kind, exc.message, exc.field, request_id), headers)


def field_path(loc: Sequence[int | str]) -> str:
    """pydantic's ('body', 'items', 0, 'messages', 1, 'role') → 'items[0].messages[1].role'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def describe_validation(errors: Sequence[dict[str, Any]], request_id: str | None = None) -> ErrorResponse:
    """pydantic validation errors → 422 naming every bad field (400 if the body is not JSON at all)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = first.get("ctx") or {}
        message = f"malformed JSON: {ctx.get('error', 'cannot parse the body')}"
        return describe(MalformedBodyError(message, field="body"), request_id)
    details = [
        {"field": clean(field_path(e.get("loc", ()))), "message": clean(str(e.get("msg", "invalid")))} for e in errors
    ]
    first = details[0] if details else {"field": "body", "message": "invalid request"}
    message = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return ErrorResponse(
        VALIDATION.status, _body(VALIDATION, message, first["field"], request_id, details=details[:20])
    )
