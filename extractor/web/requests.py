"""Request ids and one access-log line per request, as pure ASGI middleware (no
BaseHTTPMiddleware), for the API and the extractor alike.

- The id comes from an incoming `X-Request-ID` (when it is short and plain) or is generated; it
  is echoed in the response and set in `request_id_var`, so every log line written while the
  request is served carries it. The API forwards it to the extractor, so one `grep` follows a
  prediction across processes.
- Latency is handed to `observe(method, route, status, seconds)` labelled by route *template*
  (`/v1/heads/{owner}/{name}`), never by raw path, so a scan of random URLs cannot blow up a
  metric's cardinality; unmatched paths share `UNMATCHED`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

from prometheus_client import Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED = "<unmatched>"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
request_id_var: ContextVar[str | None] = ContextVar("headhub_request_id", default=None)
access_log = logging.getLogger("headhub.access")

# (method, route template, status, seconds)
Observe = Callable[[str, str, int, float], None]


def current_request_id() -> str | None:
    """The id of the request being served (pass it to the extractor client)."""
    return request_id_var.get()


def valid_request_id(value: str) -> bool:
    """Whether an incoming id is short and plain enough to echo and to log, checked whole:
    `re.match` with `$` also accepts a trailing newline, which would then be echoed in a header
    and written into log lines (docs/threats.md, "Stored text shown to other people")."""
    return _VALID_REQUEST_ID.fullmatch(value) is not None


def _route_template(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestContextMiddleware:
    """Outermost middleware: request id in and out, latency observation, access log."""

    QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})  # logged at DEBUG

    def __init__(
        self, app: ASGIApp, *, observe: Observe | None = None, in_flight: Gauge | None = None
    ) -> None:
        self.app = app
        self.observe = observe
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode())
        rid = incoming.decode("latin-1") if incoming else ""
        if not valid_request_id(rid):
            rid = uuid.uuid4().hex
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if self.in_flight is not None:
            self.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.in_flight is not None:
                self.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = _route_template(scope)
            if self.observe is not None:
                self.observe(scope["method"], route, status, elapsed)
            path = scope.get("path", "")
            access_log.log(
                logging.DEBUG if route in self.QUIET_ROUTES else logging.INFO,
                "%s %s %s",
                scope["method"],
                path,
                status,
                extra={
                    "request_id": rid,
                    "fields": {
                        "method": scope["method"],
                        "path": path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                },
            )
            request_id_var.reset(token)
