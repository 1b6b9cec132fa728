"""One error family for expected failures, mapped to RFC 9457 problem details in one place."""

from __future__ import annotations

from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from extractor.web.problems import problem


class HeadhubError(Exception):
    """An expected failure. Raise anywhere; the handler renders it as problem+json."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.instance_code = code or self.code
        self.headers = headers or {}
        self.extra = extra or {}  # more members of the problem document (e.g. `heads`)


class BadRequest(HeadhubError):
    pass


class Unauthorized(HeadhubError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str = "A valid API key is required.", **kw: Any) -> None:
        kw.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kw)


class Forbidden(HeadhubError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(HeadhubError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(HeadhubError):
    status, code, title = 409, "conflict", "Conflict"


class Gone(HeadhubError):
    status, code, title = 410, "gone", "Gone"


class PayloadTooLarge(HeadhubError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(HeadhubError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class Unprocessable(HeadhubError):
    status, code, title = 422, "unprocessable", "Unprocessable content"


class _RetryAfter(HeadhubError):
    def __init__(self, detail: str, *, retry_after: int = 1, **kw: Any) -> None:
        headers = {"Retry-After": str(max(1, int(retry_after)))} | kw.pop("headers", {})
        super().__init__(detail, headers=headers, **kw)
        self.retry_after = retry_after


class RateLimited(_RetryAfter):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(_RetryAfter):
    status, code, title = 503, "unavailable", "Service unavailable"


class BadGateway(HeadhubError):
    status, code, title = 502, "bad_gateway", "Bad gateway"


# Validation error types raised by our own validators; the problem's `code` is the type itself.
OWN_VALIDATION_CODES = frozenset({"control_characters"})


def install_error_handlers(app: FastAPI) -> None:
    """Map every expected failure to problem+json; nothing expected becomes a 500."""

    @app.exception_handler(HeadhubError)
    async def _headhub(_: Request, exc: HeadhubError) -> JSONResponse:
        return problem(
            exc.status, exc.title, exc.detail, exc.instance_code, exc.headers, **exc.extra
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        # A rule of our own (e.g. `control_characters`, service/text.py) keeps its own code.
        kind = str(first.get("type", ""))
        code = kind if kind in OWN_VALIDATION_CODES else None
        return problem(
            422,
            "Unprocessable content",
            f"{where}: {first['msg']}",
            code or "validation_error",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(
            exc.status_code, str(exc.detail), str(exc.detail), code, getattr(exc, "headers", None)
        )

    # The database restarting or unreachable is an expected outage -> 503 (docs/architecture.md,
    # "Failure handling at the boundaries").
    from sqlalchemy.exc import InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("headhub.db").warning("database unavailable: %s", type(exc).__name__)
        return problem(
            503,
            ServiceUnavailable.title,
            "The database is not answering; retry shortly.",
            "database_unavailable",
            {"Retry-After": "5"},
        )

    for exc_type in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(exc_type, _database_down)

    # An object store (S3) that cannot be reached is the same kind of outage.
    from service.storage.blobstore import BlobStoreUnavailable

    async def _blobs_down(_: Request, exc: Exception) -> JSONResponse:
        import logging

        logging.getLogger("headhub.blobs").warning("blob store unavailable: %s", exc)
        return problem(
            503,
            ServiceUnavailable.title,
            "The blob store is not answering; retry shortly.",
            "blob_store_unavailable",
            {"Retry-After": "5"},
        )

    app.add_exception_handler(BlobStoreUnavailable, _blobs_down)
