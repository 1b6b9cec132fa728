"""Serves the console's static files at `/console/` with strict security headers.

The console is plain ES modules and one stylesheet shipped inside this package
(`static/`, declared as package data); there is no build step. A request can only name a file
of the index built at the first request, by its exact relative path, so there is nothing to
traverse; a file's bytes stay in memory and are read again when the file changes. The page
talks to the public `/v1` API with a bearer key, like any other client; this module holds no
secret and no session.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from service.console.whoami import router as whoami_router

STATIC = Path(__file__).parent / "static"

# No inline script or style anywhere; data: and blob: images are the local previews of files
# the user picked; the API is same-origin ('self').
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


@cache
def servable() -> dict[str, Path]:
    """Relative posix path -> file, for every file under `static/` of a served type."""
    return {
        path.relative_to(STATIC).as_posix(): path
        for path in sorted(STATIC.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


_loaded: dict[str, tuple[int, Asset]] = {}


def asset(name: str) -> Asset | None:
    """The file's bytes, read again only when it changed (edit, reload: no restart needed)."""
    path = servable().get(name)
    if path is None:
        return None
    mtime = path.stat().st_mtime_ns
    hit = _loaded.get(name)
    if hit is None or hit[0] != mtime:
        body = path.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        hit = _loaded[name] = (mtime, Asset(body, MEDIA_TYPES[path.suffix], etag))
    return hit[1]


def _not_found() -> Response:
    return Response("Not found", status_code=404, media_type="text/plain", headers=SECURITY_HEADERS)


router = APIRouter()
router.include_router(whoami_router)


@router.get("/console", include_in_schema=False)
def console_root() -> Response:
    return RedirectResponse("/console/", status_code=308, headers=SECURITY_HEADERS)


@router.get("/console/{path:path}", include_in_schema=False)
def console_file(path: str, request: Request) -> Response:
    """A static file of the console; `/console/` itself is the single page."""
    found = asset(path or "index.html")
    if found is None:
        return _not_found()
    headers = SECURITY_HEADERS | {"ETag": found.etag, "Cache-Control": "no-cache"}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)
