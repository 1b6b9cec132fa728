"""Liveness and readiness (no auth): /healthz while the process lives, /readyz when deps answer."""

from __future__ import annotations

import asyncio

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
    body = {"status": "ready" if ok else "not_ready", "database": db_ok, "extractor": extractor_ok}
    return JSONResponse(
        body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"}
    )
