"""JSON-lines logging with a request id on every line logged while a request is being handled.

The request id comes from the caller's `X-Request-ID` header (sanitised) or is generated; it is echoed in the
response header and in every error body. Keys and Authorization headers are never logged: nothing here reads
headers, and the access log lists method, route, status, duration and sizes only.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import sys
import uuid
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("armo_request_id", default=None)

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_STANDARD |= {"color_message"}  # uvicorn's ANSI-coloured duplicate of msg


def new_request_id(header: str | None) -> str:
    """Keep a caller's id if it is safe to log and echo, otherwise make one."""
    if header and _SAFE_ID.match(header):
        return header
    return uuid.uuid4().hex


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid is not None:
            line["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(level: str = "INFO", json_lines: bool = True) -> None:
    """Route the `armo` and `uvicorn` loggers to one stderr handler (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for name in ("armo", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # The service writes its own access log (with request ids); uvicorn's would duplicate it.
    logging.getLogger("uvicorn.access").disabled = True
    # Progress bars are not log lines: keep stderr pure JSON lines.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
