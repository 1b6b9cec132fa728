"""The process-wide head cache, created on first use from the app's settings."""

from __future__ import annotations

import threading
from typing import Annotated

from fastapi import Depends, Request

from service.heads.cache import HeadCache

_lock = threading.Lock()


def get_head_cache(request: Request) -> HeadCache:
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
