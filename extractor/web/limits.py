"""Request body size limit as pure ASGI middleware (docs/architecture.md, "Untrusted input").

Starlette and uvicorn set no total body limit. A declared Content-Length over the limit is
refused before a byte is read; a body without one (chunked) is counted while it streams and
refused at the first byte past the limit. Whatever the app does once its `receive` failed (a 400
from a form parser, a 500), the client gets the 413: the middleware swaps the response.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from extractor.web.problems import PROBLEM_JSON, problem_document


class BodyTooLarge(Exception):
    """Raised from `receive` once the body passes the limit; the app should not catch it."""


def _problem_413(limit: int) -> tuple[Message, Message]:
    detail = f"The request body is larger than the limit of {limit} bytes."
    body = json.dumps(problem_document(413, "Payload too large", detail, "body_too_large")).encode()
    start = {
        "type": "http.response.start",
        "status": 413,
        "headers": [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


class BodySizeLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` with a problem+json 413; `on_refused()` is
    called once per refused request (the extractor counts them)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, on_refused: Callable[[], None] | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._send_413(send)
            return

        received = 0
        exceeded = False
        started = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replaced
            if replaced:
                return
            if exceeded and not started:
                # The app answered after its body read failed: send the 413 instead, once.
                if message["type"] == "http.response.start":
                    started = replaced = True
                    await self._send_413(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await self._send_413(send)
        except Exception:
            # An error raised because the body read failed (e.g. wrapped by a parser).
            if not exceeded:
                raise
            if not started:
                await self._send_413(send)

    async def _send_413(self, send: Send) -> None:
        if self.on_refused is not None:
            self.on_refused()
        start, body = _problem_413(self.max_body_bytes)
        await send(start)
        await send(body)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
