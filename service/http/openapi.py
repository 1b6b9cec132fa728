"""The OpenAPI document, completed with what every route can answer besides its own success.

Routes declare their success response and their domain failures. The failures that come from
the shared machinery (auth, scopes, rate limits, body limits, validation, the database being
down) are the same everywhere, so they are added here, once: each as RFC 9457 problem+json,
which is what the error handlers send. Without this, a client generated from /openapi.json
would expect FastAPI's `{"detail": [...]}` for a 422 and know nothing of 401, 403 or 429.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from extractor.web.problems import PROBLEM_JSON

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is a stable machine-readable reason.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["https://headhub.dev/problems/head_not_found"]},
        "title": {"type": "string", "examples": ["Not found"]},
        "status": {"type": "integer", "examples": [404]},
        "detail": {"type": "string", "examples": ["No head 'acme/flowers'."]},
        "code": {"type": "string", "examples": ["head_not_found"]},
        "errors": {
            "type": "array",
            "description": "Validation errors (`validation_error` only).",
            "items": {"type": "object"},
        },
    },
}
_PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}

# status -> (description, applies to which operations)
_COMMON: dict[str, str] = {
    "400": "Malformed request: unparseable body or query (`http_error`, `invalid_cursor`, ...).",
    "401": "Missing, malformed, revoked or unknown API key (`unauthorized`).",
    "403": "The key's scope does not allow this operation (`insufficient_scope`).",
    "404": "Not found, or another tenant's private object (never a 403).",
    "409": "Conflicts with the current state (duplicate name, alias in use, ...).",
    "413": "Request body over the size limit (`body_too_large`).",
    "422": "Invalid request: parameters or body (`validation_error`) or a domain rule.",
    "429": "Rate limit or per-tenant quota reached; see `Retry-After` (`rate_limited`, ...).",
    "502": "The extractor answered garbage (`extractor_bad_response`); nothing was stored.",
    "503": "The database or the extractor is not answering; see `Retry-After`.",
}
# Routes that call the extractor process and so can relay its failures.
_EXTRACTOR_PATHS = ("/v1/predict", "/v1/extractor")
_WRITES = {"post", "put", "patch", "delete"}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}


def _statuses(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    """Which shared failures this operation can answer."""
    if not path.startswith("/v1/"):
        return []
    out = ["400", "401", "403", "422", "429", "503"]
    params = {p.get("name") for p in operation.get("parameters", [])}
    has_body = "requestBody" in operation
    if "{" in path or has_body or params & {"tenant", "owner", "heads"}:
        out.append("404")
    if method in _WRITES:
        out.append("409")
    if has_body:
        out.append("413")
    if path.startswith(_EXTRACTOR_PATHS):
        out.append("502")
    return out


def complete_responses(document: dict[str, Any]) -> dict[str, Any]:
    """Add the shared failures to every /v1 operation and type every failure as a Problem."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    components["schemas"].pop("HTTPValidationError", None)
    components["schemas"].pop("ValidationError", None)
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "`hh_<key_id>_<secret>` (scopes admin, owner, predict).",
    }
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            for status in _statuses(path, method, operation):
                responses.setdefault(status, {"description": _COMMON[status]})
            if path.startswith("/v1/"):
                operation.setdefault("security", [{"bearer": []}])
            for status, response in responses.items():
                if status[:1] in {"4", "5"}:
                    response["content"] = _PROBLEM_CONTENT
                    if status in {"429", "503"}:
                        response.setdefault("headers", _RETRY_AFTER)
    return document


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_responses(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
