"""RFC 9457 problem details: the body of every error response of the API and the extractor."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "https://headhub.dev/problems/{code}"


def problem_document(status: int, title: str, detail: str, code: str, **extra: Any) -> dict:
    """`type`, `title`, `status`, `detail` and the stable machine-readable `code`, then `extra`."""
    return {
        "type": PROBLEM_TYPE.format(code=code),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def problem(
    status: int,
    title: str,
    detail: str,
    code: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = problem_document(status, title, detail, code, **extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)
