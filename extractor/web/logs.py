"""Logging of every headhub process: one handler on the root logger, one line per record.

JSON (one object per line, for log shippers) by default, text for a person at a terminal. Both
carry the id of the request being served (`extractor.web.requests.request_id_var`) and the
process id (several `headhub api --workers` processes write to one stream); fields
passed as `extra={"fields": {...}}` are merged into the line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from extractor.web.requests import request_id_var


def _request_id(record: logging.LogRecord) -> str | None:
    return getattr(record, "request_id", None) or request_id_var.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, pid and request id."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
            "pid": record.process,
        }
        rid = _request_id(record)
        if rid:
            out["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines for `headhub up` at a terminal; still carries the request id."""

    def __init__(self, service: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + service + " %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = _request_id(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{line} request_id={rid}" if rid else line


def configure_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    """Route every logger (ours, uvicorn's, sqlalchemy's) through one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
    # Per-call chatter of libraries: one line per outgoing HTTP call, one per Alembic plugin.
    for name in ("httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(name).setLevel(logging.WARNING)
