"""An LRU of decoded heads bounded by their weight bytes.

Versions are immutable, so entries keyed by version id never go stale; deleting a version only
makes its entry unreachable until it ages out (``discard`` drops it eagerly).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from service.heads.headfile import HeadFile


class HeadCache:
    """Thread-safe: predict runs evaluation in worker threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, HeadFile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def current_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> HeadFile | None:
        with self._lock:
            head = self._items.get(key)
            if head is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return head

    def put(self, key: str, head: HeadFile) -> None:
        """Insert and evict least recently used; a head larger than the bound is not kept."""
        size = head.nbytes
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                return
            self._items[key] = head
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def get_or_load(self, key: str, load: Callable[[], HeadFile]) -> HeadFile:
        """Cold heads load outside the lock; two concurrent misses may both load (harmless)."""
        head = self.get(key)
        if head is None:
            head = load()
            self.put(key, head)
        return head

    def discard(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
