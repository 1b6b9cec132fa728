"""What one claimed job needs while it runs: a heartbeat thread that renews the lease, stores
progress and picks up cancel requests, each write in its own short transaction."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import session_scope, utcnow
from service.jobs import repository as repo
from service.training import TrainingCancelled

log = logging.getLogger(__name__)

# Fractions of the progress bar: computing missing features, then training epochs.
FEATURES_SHARE = 0.2


@dataclass(frozen=True)
class ClaimedJob:
    """A snapshot of the claimed row: the worker never touches the ORM object after the claim."""

    id: str
    attempt: int
    tenant_id: str
    dataset_id: str
    head_name: str
    head_type: str
    params: dict[str, Any]
    validation_fraction: float
    seed: int
    kind: str = "train"  # or "move" (service/jobs/moving.py)
    extractor_id: str | None = None  # None: the replicas' default extractor
    from_version: int | None = None
    promote_if_not_worse: bool = False


class LeaseLost(Exception):
    """The job was taken back (lease expired) or finished by someone else: stop, write nothing."""


class JobHeartbeat:
    """Renews the lease every `interval` seconds from a thread, whatever the trainer is doing."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        job: ClaimedJob,
        *,
        interval: float,
        lease_s: float,
        handback: threading.Event | None = None,
        max_runtime_s: float | None = None,
        on_beat: Callable[[bool], None] | None = None,
    ) -> None:
        self.factory, self.job = factory, job
        # Told after every beat whether the database took it (the worker's probes:
        # service/jobs/health.py): a beating thread is a live worker, however long the job.
        self.on_beat = on_beat
        self.interval, self.lease_s = interval, lease_s
        self.handback = handback or threading.Event()
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        # The attempt's wall clock (HEADHUB_JOB_MAX_RUNTIME_S): past it, the trainer stops at its
        # next check and the job fails `job_timeout` (docs/threats.md).
        self.max_runtime_s = max_runtime_s
        self.deadline = None if max_runtime_s is None else time.monotonic() + max_runtime_s
        self.timed_out = threading.Event()
        self._stop = threading.Event()
        self._progress = 0.0
        self._history: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{job.id[:8]}", daemon=True
        )

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ok = self.beat()
            if self.on_beat is not None:
                self.on_beat(ok)

    def beat(self) -> bool:
        """One fenced write: lease, progress, the history so far; read the cancel flag. False
        when the database did not answer."""
        with self._lock:
            progress, history = self._progress, list(self._history)
        try:
            with session_scope(self.factory) as session:
                cancel = repo.heartbeat(
                    session,
                    self.job.id,
                    self.job.attempt,
                    now=utcnow(),
                    lease_s=self.lease_s,
                    progress=progress,
                    metrics={"history": history} if history else None,
                )
        except Exception as exc:  # the database is briefly away: keep training, try again
            log.warning("heartbeat of job %s failed: %s", self.job.id, exc)
            return False
        if cancel is None:
            self.lost.set()
        elif cancel:
            self.cancel_requested.set()
        return True

    # -- hooks handed to ensure_features and train_head ----------------------------------------

    def should_stop(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out.set()
        return (
            self.lost.is_set()
            or self.cancel_requested.is_set()
            or self.handback.is_set()
            or self.timed_out.is_set()
        )

    def check(self) -> None:
        if self.should_stop():
            raise TrainingCancelled("stop requested")

    def features_progress(self, done: int, total: int) -> None:
        with self._lock:
            self._progress = FEATURES_SHARE * (done / total if total else 1.0)
        self.check()

    def training_progress(self, fraction: float, entry: dict[str, Any]) -> None:
        with self._lock:
            self._progress = FEATURES_SHARE + (1 - FEATURES_SHARE) * min(fraction, 1.0) * 0.99
            self._history.append(entry)
