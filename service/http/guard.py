"""What stands between a socket and the app: authentication before the body, a body limit per
route, and security headers on every response (docs/threats.md).

FastAPI reads and parses a request's body *before* it resolves the route's dependencies, so a
key checked in a dependency is checked after the body has been buffered, parsed and spooled to
disk. `BodyGuardMiddleware` turns that around for every `/v1` request that carries a body: it
runs the same `get_principal` (key lookup, scope-free, and whatever limits that dependency
applies) in its own short transaction, before a byte of the body is read. An anonymous or wrong
key gets its 401 at once, whatever size the body claims; the body is then held to its route's
limit: the upload limit only on the routes that take images, small limits everywhere else. The
principal is handed on in the request state, so the endpoint does not look the key up again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from extractor.web.limits import BodySizeLimitMiddleware
from extractor.web.problems import problem
from service.errors import HeadhubError, ServiceUnavailable
from service.settings import Settings

log = logging.getLogger(__name__)

# The routes that take images: they alone get `max_body_bytes`.
UPLOAD_ROUTES = (
    ("POST", re.compile(r"/v1/datasets/[^/]+/images")),
    ("POST", re.compile(r"/v1/predict")),
)
FEATURES_ROUTES = (("POST", re.compile(r"/v1/predict/features")),)


def route_kind(method: str, path: str) -> str:
    """'upload', 'features' or 'json': which body limit a request gets."""
    for kind, routes in (("upload", UPLOAD_ROUTES), ("features", FEATURES_ROUTES)):
        if any(method == m and pattern.fullmatch(path) for m, pattern in routes):
            return kind
    return "json"


def has_body(scope: Scope) -> bool:
    """A declared non-empty body, or one of unknown length (chunked)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


def body_limits(settings: Settings) -> dict[str, int]:
    return {
        "upload": settings.max_body_bytes,
        "features": settings.max_features_body_bytes,
        "json": settings.max_json_body_bytes,
    }


def _authenticate(request: Request) -> Any:
    from service.deps import principal_before_body

    return principal_before_body(request)


def _authenticate_cached(request: Request) -> Any:
    from service.deps import cached_principal

    return cached_principal(request)


class BodyGuardMiddleware:
    """Authenticate `/v1` requests that carry a body before reading it; then apply the route's
    body limit (`BodySizeLimitMiddleware`, one per limit)."""

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        authenticate: Callable[[Request], Any] = _authenticate,
        authenticate_cached: Callable[[Request], Any] | None = _authenticate_cached,
    ) -> None:
        self.app = app
        self.authenticate = authenticate
        # A key the process's cache knows is checked on the event loop (None: not known there).
        self.authenticate_cached = authenticate_cached
        self.limited = {
            kind: BodySizeLimitMiddleware(app, max_body_bytes=limit)
            for kind, limit in body_limits(settings).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path.startswith("/v1/") and has_body(scope):
            refusal = await self._authenticate(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.limited[route_kind(method, path)](scope, receive, send)

    async def _authenticate(self, scope: Scope) -> Any:
        """None when the key is good (the principal is then in the request state), else the
        response to send instead: nothing of the body has been read, so the connection closes."""
        from sqlalchemy.exc import InterfaceError, OperationalError
        from sqlalchemy.exc import TimeoutError as PoolTimeout

        request = Request(scope)  # no `receive`: it cannot read the body
        try:
            if self.authenticate_cached is not None and self.authenticate_cached(request):
                return None
            await run_in_threadpool(self.authenticate, request)
            return None
        except HeadhubError as exc:
            return problem(
                exc.status,
                exc.title,
                exc.detail,
                exc.instance_code,
                {**exc.headers, "Connection": "close"},
                **getattr(exc, "extra", {}),
            )
        except (OperationalError, InterfaceError, PoolTimeout) as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            return problem(
                503,
                ServiceUnavailable.title,
                "The database is not answering; retry shortly.",
                "database_unavailable",
                {"Retry-After": "5", "Connection": "close"},
            )


# Sent on every response that does not set its own (the console sets a stricter CSP of its own).
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
# API answers (JSON, problem+json, files) are never documents to render: no script, no framing.
# HTML (the interactive /docs, the console) is left to its own policy.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
NO_STORE = (b"cache-control", b"no-store")


class SecurityHeadersMiddleware:
    """Adds `SECURITY_HEADERS` to every response, a no-content CSP to non-HTML ones and
    `Cache-Control: no-store` to `/v1` answers (they may hold a key), each only if the response
    did not set that header itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                content_type = next(
                    (v.lower() for n, v in headers if n.lower() == b"content-type"), b""
                )
                extra = list(SECURITY_HEADERS)
                if not content_type.startswith(b"text/html"):
                    extra.append(API_CSP)
                if api:
                    extra.append(NO_STORE)
                headers += [(n, v) for n, v in extra if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
