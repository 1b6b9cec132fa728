"""Liveness and readiness (no auth): /healthz while the process lives, /readyz when deps answer."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _db_ok(request: Request) -> bool:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/readyz", responses={503: {"description": "database or extractor not answering"}})
async def readyz(request: Request) -> JSONResponse:
    """200 when the database and the extractor answer. Unauthenticated, so the answer is reused
    for `HEADHUB_PROBE_CACHE_S` and computed by one request at a time: hammering this route
    costs no more queries than one probe per period (docs/threats.md)."""
    state = request.app.state
    ttl = float(getattr(state.settings, "probe_cache_s", 0.0))
    lock = getattr(state, "readiness_lock", None)
    if lock is None:  # no await since the check: one lock per app
        lock = state.readiness_lock = asyncio.Lock()
    async with lock:
        cached = getattr(state, "_readiness", None)
        if cached is not None and time.monotonic() < cached[0]:
            body = cached[1]
        else:
            body = await _readiness(request)
            state._readiness = (time.monotonic() + ttl, body)
    ok = body["status"] == "ready"
    return JSONResponse(
        body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"}
    )


async def _readiness(request: Request) -> dict[str, object]:
    db_ok = await asyncio.to_thread(_db_ok, request)
    extractor_ok = False
    client = getattr(request.app.state, "extractor", None)
    if client is not None:
        try:
            await client.info()
            extractor_ok = True
        except Exception:
            extractor_ok = False
    ok = db_ok and extractor_ok
    return {"status": "ready" if ok else "not_ready", "database": db_ok, "extractor": extractor_ok}
