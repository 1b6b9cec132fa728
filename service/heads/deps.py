"""The process-wide head cache, created on first use from the app's settings."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request

from service.heads.cache import HeadCache
from service.heads.metering import UsageMeter

_lock = threading.Lock()


async def get_head_cache(request: Request) -> HeadCache:
    state = request.app.state
    cache = getattr(state, "head_cache", None)
    if cache is None:
        with _lock:
            cache = getattr(state, "head_cache", None)
            if cache is None:
                cache = HeadCache(state.settings.head_cache_bytes)
                state.head_cache = cache
    return cache


HeadCacheDep = Annotated[HeadCache, Depends(get_head_cache)]


async def get_usage_meter(request: Request) -> UsageMeter:
    """The API process's usage meter (built in the lifespan; service/heads/metering.py)."""
    return request.app.state.usage_meter  # type: ignore[no-any-return]


async def _flush_usage(request: Request) -> None:
    """Before a read of usage counts: this process's pending counts are written first, so a
    client reads back the predictions it just made through the same process."""
    meter: UsageMeter | None = getattr(request.app.state, "usage_meter", None)
    if meter is not None and meter.pending:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(meter.flush_quietly)


UsageMeterDep = Annotated[UsageMeter, Depends(get_usage_meter)]
# First parameter of an endpoint that reads usage, so it runs before the request's session.
UsageFlushedDep = Annotated[None, Depends(_flush_usage)]
