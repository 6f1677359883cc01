"""Bearer-key checks as FastAPI dependencies. Keys are compared in constant time and never logged or echoed."""

from __future__ import annotations

import hmac

from fastapi import Request

from armo.service.errors import ForbiddenError, UnauthorizedError
from armo.settings import Settings


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _which(token: str, keys: list[str]) -> int | None:
    """The index of the key `token` is, or None. Compares against every key (no early exit) so timing does not
    reveal which key prefix matched."""
    found = None
    for i, key in enumerate(keys):
        if hmac.compare_digest(token.encode(), key.encode()):
            found = i
    return found


def _matches(token: str, keys: list[str]) -> bool:
    return _which(token, keys) is not None


CALLER = "armo.caller"  # request.state attribute: which API key (its index, never the key) made the request


class Auth:
    def __init__(self, settings: Settings) -> None:
        self._keys = settings.api_key_values()
        self._admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        self._health = settings.auth_health
        self._metrics = settings.auth_metrics

    def _check_api(self, request: Request) -> None:
        if not self._keys:
            return  # no keys configured: open (local development)
        token = _bearer(request)
        if token is None:
            raise UnauthorizedError("missing bearer API key (Authorization: Bearer <key>)", field="authorization")
        index = _which(token, self._keys)
        if index is None:
            raise UnauthorizedError("invalid API key", field="authorization")
        setattr(request.state, CALLER, f"key-{index}")  # the batcher shares the worker fairly between callers

    async def api(self, request: Request) -> None:
        self._check_api(request)

    async def health(self, request: Request) -> None:
        if self._health:
            self._check_api(request)

    async def metrics(self, request: Request) -> None:
        if self._metrics:
            self._check_api(request)

    async def admin(self, request: Request) -> None:
        if self._admin is None:
            raise ForbiddenError("admin routes are disabled: set ARMO_ADMIN_KEY", field="authorization")
        token = _bearer(request)
        if token is None:
            raise UnauthorizedError("missing bearer admin key (Authorization: Bearer <key>)", field="authorization")
        if not _matches(token, [self._admin]):
            # A valid API key is authenticated but not allowed; anything else is simply wrong.
            if _matches(token, self._keys):
                raise ForbiddenError("this route needs the admin key", field="authorization")
            raise UnauthorizedError("invalid admin key", field="authorization")
