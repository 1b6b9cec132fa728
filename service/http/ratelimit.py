"""Per-key rate limits: a token bucket per API key, 429 + Retry-After (docs/architecture.md,
"Tenancy and keys").

The buckets live in the memory of one API process. With N API replicas a key gets up to N times
the configured rate; that is the documented trade-off for needing no shared store. A shared
limiter (Redis, PostgreSQL) would plug in behind the same `check(key)` method.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """`rate_per_minute` requests per key on average, bursts up to `burst` (default: one minute's
    worth, so a client that stays under the per-minute figure is never refused). Thread-safe:
    sync endpoints run in a thread pool."""

    def __init__(
        self,
        rate_per_minute: int,
        *,
        burst: int | None = None,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive; use no limiter to disable")
        self.rate = rate_per_minute / 60.0  # tokens per second
        self.burst = float(burst if burst is not None else rate_per_minute)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for `key` or raise `RateLimited` with the seconds until the next one."""
        wait = self.acquire(key)
        if wait > 0:
            raise RateLimited(
                f"Too many requests for this API key; retry in {math.ceil(wait)} s.",
                retry_after=math.ceil(wait),
            )

    def acquire(self, key: str) -> float:
        """-> 0.0 when a token was taken, else the seconds to wait (nothing taken)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=self.burst, updated=now)
                self._buckets[key] = bucket
                if len(self._buckets) > self.max_keys:  # bound memory: forget the stalest key
                    self._buckets.popitem(last=False)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
                bucket.updated = now
                self._buckets.move_to_end(key)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) / self.rate


def make_limiter(rate_per_minute: int, burst: int | None = None) -> TokenBucketLimiter | None:
    """The app's limiter from settings; a rate of 0 turns limiting off."""
    if rate_per_minute <= 0:
        return None
    return TokenBucketLimiter(rate_per_minute, burst=burst)
