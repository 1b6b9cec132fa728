"""State shared by the API worker processes of one host (`headhub api --workers N`).

`headhub api --workers N` makes a directory before uvicorn starts its workers and names it in
`HEADHUB_API_SHARED_DIR`; every worker maps two small files from it:

- `generation`: one 64-bit counter. A worker that commits a change which invalidates lookups
  (service/http/invalidation.py) increments it after the commit; every worker compares it with
  the value it last saw on each cache read (one 8-byte read from shared memory) and drops its
  lookup cache when it moved. So a change made through one worker is seen by its siblings at
  once, as in a single process; across hosts the notifier (or the TTL) still applies.
- `ratelimit`: the token buckets (`SharedBuckets`) that the memory rate limits use when Redis is
  not configured, so N workers allow what one process allows, not N times as much.

Both are updated under an exclusive `flock` of their file (a few microseconds); the buckets'
clock is CLOCK_MONOTONIC, one clock for every process of the host.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.http.ratelimit import Refusal, Take

ENV = "HEADHUB_API_SHARED_DIR"
_U64 = struct.Struct("<Q")


def shared_dir() -> Path | None:
    """The directory of this process's sibling workers, if it runs as one of several."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _map(path: Path, size: int) -> tuple[int, mmap.mmap]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)
    return fd, mmap.mmap(fd, size)


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class SharedCounter:
    """A 64-bit counter in a file mapped by every worker of the host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd, self._map = _map(path, _U64.size)

    def value(self) -> int:
        return int(_U64.unpack_from(self._map, 0)[0])

    def increment(self) -> int:
        with _locked(self._fd):
            value = self.value() + 1
            _U64.pack_into(self._map, 0, value)
            return value


# One bucket: 16-byte digest of its name, tokens (float64), last update (float64, monotonic s).
_SLOT = struct.Struct("<16sdd")
SLOTS = 16384
PROBES = 16  # slots looked at for one name; past them the least recently updated is reused


class SharedBuckets:
    """`ratelimit.Buckets` in a file shared by the host's API workers: the same arithmetic as
    `MemoryBuckets`, all buckets of a check taken under one lock. Bounded to `SLOTS` buckets
    (a name's `PROBES` candidate slots all busy: the stalest is forgotten, as `MemoryBuckets`
    forgets its stalest; a forgotten bucket starts full again)."""

    remote = False

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._fd, self._map = _map(path, SLOTS * _SLOT.size)

    @staticmethod
    def _digest(name: str) -> bytes:
        return hashlib.blake2b(name.encode(), digest_size=16).digest()

    def _find(self, digest: bytes, claimed: set[int]) -> tuple[int, float | None, float]:
        """(slot, tokens or None for a new bucket, updated) for `digest`; a new bucket never
        takes a slot `claimed` by another bucket of the same check."""
        start = int.from_bytes(digest[:8], "little") % SLOTS
        stalest, stalest_at = -1, float("inf")
        for i in range(PROBES):
            slot = (start + i) % SLOTS
            found, tokens, updated = _SLOT.unpack_from(self._map, slot * _SLOT.size)
            if found == digest:
                return slot, tokens, updated
            if slot in claimed:
                continue
            if found == bytes(16):
                return slot, None, 0.0
            if updated < stalest_at:
                stalest, stalest_at = slot, updated
        return stalest, None, 0.0

    def take(self, takes: Sequence[Take]) -> Refusal | None:
        from service.http.ratelimit import Refusal

        with _locked(self._fd):
            now = self._clock()
            levels = []
            claimed: set[int] = set()
            for t in takes:
                digest = self._digest(t.key)
                slot, tokens, updated = self._find(digest, claimed)
                claimed.add(slot)
                level = float(t.rule.burst)
                if tokens is not None:
                    elapsed = max(0.0, now - updated)
                    level = min(t.rule.burst, tokens + elapsed * t.rule.rate)
                levels.append((slot, digest, level))
            for t, (_, _, level) in zip(takes, levels, strict=True):
                need = max(t.cost, 1)
                if level < need:
                    return Refusal(t.rule, (need - level) / t.rule.rate)
            for t, (slot, digest, level) in zip(takes, levels, strict=True):
                if t.cost > 0:
                    _SLOT.pack_into(self._map, slot * _SLOT.size, digest, level - t.cost, now)
        return None
