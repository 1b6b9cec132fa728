"""Usage metering without a database write per prediction.

A prediction adds its images to an in-memory counter per (head, consuming tenant) (`UsageMeter.add`:
a dict update under a lock, on the event loop); a thread writes every counter gathered since its
last flush in one transaction (`heads.repository.add_usage`, an atomic upsert, so API processes
and replicas add up) at least every `usage_flush_interval_s` (1 s, the most the setting allows),
and once more when the API process shuts down (SIGTERM, Ctrl-C: the lifespan's end).

What this guarantees (docs/architecture.md, "Usage metering"; tests/heads/test_metering.py):
- exact: every image scored is counted once; a flush that fails (database down) puts its counts
  back and the next flush retries them, so nothing is dropped or counted twice by a failure
  that the database reports;
- durable within the bound: a process killed without warning (SIGKILL, power loss) loses only
  the counts of the last `usage_flush_interval_s` and of a flush in flight, never older ones;
  a clean shutdown loses nothing;
- visible within the bound in every process; in the process that served the predictions at
  once, because readers of usage (the marketplace, a head's card) flush this process's meter first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope

log = logging.getLogger(__name__)


class UsageMeter:
    """Per-process usage counts, flushed by a background thread; thread-safe."""

    def __init__(self, factory: sessionmaker[Session] | Callable[[], Session], interval_s: float):
        self.factory = factory
        self.interval_s = interval_s
        self._pending: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one flush at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.flushes = 0  # transactions written (for tests and metrics)
        self.failures = 0

    def add(self, head_id: str, tenant_id: str, n: int) -> None:
        if n <= 0:
            return
        key = (head_id, tenant_id)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + n

    @property
    def pending(self) -> int:
        """Images counted and not yet written."""
        with self._lock:
            return sum(self._pending.values())

    def flush(self) -> int:
        """Write every pending count in one transaction; returns the images written. On failure
        the counts go back (added to any that arrived meanwhile) and the error is raised."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, {}
            if not batch:
                return 0
            from service.heads.repository import add_usage

            try:
                with session_scope(self.factory) as session:  # type: ignore[arg-type]
                    for (head_id, tenant_id), n in sorted(batch.items()):
                        add_usage(session, head_id, tenant_id, n)
            except BaseException:
                self.failures += 1
                with self._lock:
                    for key, n in batch.items():
                        self._pending[key] = self._pending.get(key, 0) + n
                raise
            self.flushes += 1
            return sum(batch.values())

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception as exc:  # kept for the next flush; a head deleted meanwhile: dropped
            if _foreign_key_violation(exc):
                self._drop_missing_heads()
            else:
                log.warning("usage not written yet (%s); retrying", type(exc).__name__)

    def _drop_missing_heads(self) -> None:
        """A head (or tenant) deleted since its use was counted cannot be billed any more: its
        counts are dropped, the others written."""
        from sqlalchemy import select

        from service.heads.tables import Head
        from service.tenants.tables import Tenant

        with self._lock:
            keys = list(self._pending)
        with session_scope(self.factory) as session:  # type: ignore[arg-type]
            heads = set(session.scalars(select(Head.id).where(Head.id.in_({h for h, _ in keys}))))
            tenants = set(
                session.scalars(select(Tenant.id).where(Tenant.id.in_({t for _, t in keys})))
            )
        with self._lock:
            for key in keys:
                if key[0] not in heads or key[1] not in tenants:
                    log.info("usage of a deleted head or tenant dropped: %s", key)
                    self._pending.pop(key, None)
        try:
            self.flush()
        except Exception as exc:
            log.warning("usage not written yet (%s); retrying", type(exc).__name__)

    def start(self) -> UsageMeter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="usage-meter", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write what is left (the lifespan's end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush_quietly()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush_quietly()


def _foreign_key_violation(exc: BaseException) -> bool:
    from sqlalchemy.exc import IntegrityError

    return isinstance(exc, IntegrityError)
