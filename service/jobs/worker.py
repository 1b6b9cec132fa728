"""`headhub worker`: claim a job, make sure its features are cached, train, register, finish.

Several workers (threads of one process and/or several processes) share one database. A job is
held under a lease renewed by heartbeats; a worker that dies simply stops renewing and the job is
claimed again once the lease expires, with attempt + 1. Every final write is fenced by
(id, attempt, status='running'), so a worker that lost its lease cannot overwrite a newer attempt.
Success is one transaction: the fenced `succeeded` update plus `register_version`; a crash before
the commit leaves neither, and the retry registers the only version.

SIGTERM/SIGINT: stop claiming; a running job gets `worker_grace_s` to finish, then is handed back
to the queue (not counted as a failed attempt); the process exits 0.

Each claim loop records its progress (every poll, and every heartbeat of the job it runs) in
`self.health`, which `HEADHUB_WORKER_HEALTH_PORT` serves as /healthz and /readyz
(service/jobs/health.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service.db import make_engine, make_sessionmaker, session_scope, utcnow
from service.errors import HeadhubError
from service.http.invalidation import bind_sessionmaker
from service.jobs import repository as repo
from service.jobs.health import WorkerHealth, serve_health, stale_after_s
from service.jobs.runtime import ClaimedJob, JobHeartbeat, LeaseLost
from service.jobs.service import backoff_s
from service.jobs.tables import JobStatus
from service.settings import Settings
from service.storage.blobstore import BlobStore, make_blob_store
from service.training import (
    InvalidParams,
    InvalidTrainingData,
    TrainingCancelled,
    train_head,
)

log = logging.getLogger("headhub.worker")


class PermanentJobError(Exception):
    """Retrying cannot help (dataset gone, no usable images): the job fails at once."""

    def __init__(self, message: str, *, code: str = "job_failed") -> None:
        super().__init__(message)
        self.code = code


def _is_permanent(exc: BaseException) -> bool:
    """Bad input fails at once; outages (extractor, database, 5xx/429 errors) are retried."""
    if isinstance(exc, PermanentJobError | InvalidParams | InvalidTrainingData):
        return True
    return isinstance(exc, HeadhubError) and exc.status < 500 and exc.status != 429


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        concurrency: int = 1,
        session_factory: sessionmaker[Session] | None = None,
        extractor: Any = None,
        blobs: BlobStore | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.concurrency = max(1, concurrency)
        self.factory = session_factory or make_sessionmaker(make_engine(settings.database_url))
        # A version registered here reaches the API processes' lookup caches (Redis publishing;
        # on PostgreSQL every process NOTIFYs): service/http/invalidation.py.
        bind_sessionmaker(self.factory, settings)
        self.extractor = extractor
        self.blobs = blobs or make_blob_store(settings)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()  # no new claims
        self.handback = threading.Event()  # running jobs give their lease back now
        self.health = WorkerHealth(stale_after_s(settings))

    # -- lifecycle --------------------------------------------------------------------------

    def run(self, *, install_signals: bool = True) -> None:
        """Run `concurrency` claim loops until `stop()` (or SIGTERM/SIGINT); then return."""
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"worker-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        log.info("worker %s started with concurrency %d", self.name, self.concurrency)
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.2)
        log.info("worker %s stopped", self.name)

    def stop(self) -> None:
        """Stop claiming; hand running jobs back after the grace period."""
        if self.stopping.is_set():
            self.handback.set()  # a second signal: hand back at once
            return
        self.stopping.set()
        self.health.stopping()
        timer = threading.Timer(self.settings.worker_grace_s, self.handback.set)
        timer.daemon = True
        timer.start()

    def loop_id(self, index: int = 0) -> str:
        """The worker id of claim loop `index` (jobs' `worker_id`, the probes' loop names)."""
        return f"{self.name}:{index}"

    def _loop(self, index: int) -> None:
        worker_id = self.loop_id(index)
        self.health.loop_started(worker_id)
        try:
            while not self.stopping.is_set():
                try:
                    ran = self.run_once(worker_id)
                except Exception:  # the database is away: log, wait, try again
                    log.exception("worker %s: claim failed", worker_id)
                    ran = False
                if not ran:
                    self.stopping.wait(self.settings.worker_poll_s)
        finally:
            self.health.loop_ended(worker_id, clean=self.stopping.is_set())

    # -- one job ----------------------------------------------------------------------------

    def claim(self, worker_id: str) -> ClaimedJob | None:
        now = utcnow()
        with session_scope(self.factory) as session:
            reaped = repo.reap_expired(session, now=now)
        if reaped:
            log.warning("requeued %d job(s) whose lease expired", reaped)
        with session_scope(self.factory) as session:
            job = repo.claim(
                session, worker_id=worker_id, now=now, lease_s=self.settings.job_lease_s
            )
            if job is None:
                return None
            return ClaimedJob(
                id=job.id,
                attempt=job.attempt,
                tenant_id=job.tenant_id,
                dataset_id=job.dataset_id,
                head_name=job.head_name,
                head_type=job.head_type,
                params=dict(job.params or {}),
                validation_fraction=job.validation_fraction,
                seed=job.seed,
                kind=job.kind,
                extractor_id=job.extractor_id,
                from_version=job.from_version,
                promote_if_not_worse=job.promote_if_not_worse,
            )

    def run_once(self, worker_id: str | None = None) -> bool:
        """Claim and run one job; False when nothing was claimable."""
        worker_id = worker_id or self.loop_id()
        try:
            job = self.claim(worker_id)
        except Exception:
            self.health.progress(worker_id, database_ok=False)
            raise
        self.health.progress(worker_id, database_ok=True)
        if job is None:
            return False
        log.info("job %s attempt %d claimed", job.id, job.attempt)
        self.execute(job, worker_id)
        return True

    def execute(self, job: ClaimedJob, worker_id: str | None = None) -> None:
        s = self.settings
        loop = worker_id or self.loop_id()
        hb = JobHeartbeat(
            self.factory,
            job,
            interval=s.job_heartbeat_s,
            lease_s=s.job_lease_s,
            handback=self.handback,
            max_runtime_s=s.job_max_runtime_s,
            # the job's heartbeats are its loop's progress: a long job keeps /healthz 200
            on_beat=lambda ok: self.health.progress(loop, database_ok=ok),
        )
        try:
            with hb:
                trained, labels, extractor = self._train(job, hb)
            self._succeed(job, trained, labels, extractor)
            log.info("job %s succeeded", job.id)
        except TrainingCancelled:
            self._stopped(job, hb)
        except _FencedOut:  # success refused: a cancel arrived last-minute, or the lease is gone
            self._finish(job, status=JobStatus.cancelled.value)
        except LeaseLost:
            log.warning("job %s attempt %d lost its lease; result dropped", job.id, job.attempt)
        except Exception as exc:
            if _is_permanent(exc):
                log.warning("job %s failed permanently: %s", job.id, exc)
                self._finish(job, status=JobStatus.failed.value, error=_describe(exc))
                return
            delay = backoff_s(job.attempt, s)
            with session_scope(self.factory) as session:
                status = repo.retry_or_fail(
                    session, job.id, job.attempt, error=_describe(exc), now=utcnow(), delay_s=delay
                )
            log.warning(
                "job %s attempt %d: %s -> %s", job.id, job.attempt, exc, status, exc_info=exc
            )

    def _train(self, job: ClaimedJob, hb: JobHeartbeat) -> tuple[Any, list[str], dict[str, Any]]:
        from service.datasets.features import ensure_features, load_features

        if job.kind == "move":
            from service.jobs.moving import run_move

            return run_move(self.factory, self._extractor(), self.blobs, job, hb)
        with session_scope(self.factory) as session:
            if repo.get_dataset(session, job.dataset_id) is None:
                raise PermanentJobError(
                    f"dataset {job.dataset_id} no longer exists", code="dataset_not_found"
                )
        client = self._extractor()
        info = self._extractor_info(client, job.extractor_id)
        ensure_features(
            self.factory,
            client,
            job.dataset_id,
            blobs=self.blobs,
            progress_cb=hb.features_progress,
            extractor_id=job.extractor_id,
        )
        hb.check()
        with session_scope(self.factory) as session:
            floats, bits, image_labels, _ = load_features(session, job.dataset_id, str(info["id"]))
        if len(image_labels) == 0:
            raise PermanentJobError(
                "the dataset has no image with usable features", code="no_usable_images"
            )
        labels = sorted(set(image_labels))
        if len(labels) > self.settings.max_labels_per_dataset:  # metrics hold labels x labels
            raise PermanentJobError(
                f"the dataset has {len(labels)} labels; at most "
                f"{self.settings.max_labels_per_dataset} are allowed",
                code="too_many_labels",
            )
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[label] for label in image_labels], dtype=np.int64)
        trained = train_head(
            job.head_type,
            floats,
            bits,
            y,
            labels,
            job.params,
            seed=job.seed,
            validation_fraction=job.validation_fraction,
            progress_cb=hb.training_progress,
            should_stop=hb.should_stop,
        )
        if hb.lost.is_set():
            raise LeaseLost(job.id)
        return trained, labels, info

    def _succeed(self, job: ClaimedJob, trained: Any, labels: list[str], info: dict) -> None:
        """Fenced `succeeded` + the new head version, in one transaction."""
        from service.heads.service import register_version

        with session_scope(self.factory) as session:
            done = repo.finish(
                session,
                job.id,
                job.attempt,
                status=JobStatus.succeeded.value,
                progress=1.0,
                metrics=trained.metrics,
                error=None,
                finished_at=utcnow(),
                lease_expires_at=None,
            )
            if not done:
                raise _FencedOut()
            version = register_version(
                session,
                self.blobs,
                tenant_id=job.tenant_id,
                head_name=job.head_name,
                head_type=job.head_type,
                labels=labels,
                extractor_id=str(info["id"]),
                weights=trained.weights,
                metrics=trained.metrics,
                dataset_id=job.dataset_id,
                job_id=job.id,
                preprocessing=dict(info.get("preprocessing") or {}),
                feature_dim=int(trained.metrics["feature_dim"]),
                max_heads=self.settings.max_heads_per_tenant,
            )
            owner = repo.tenant_name(session, job.tenant_id)
            if job.kind == "move":
                from service.jobs.moving import settle_aliases

                settle_aliases(session, job, version)
            repo.set_head_version(
                session, job.id, version.id, f"{owner}/{job.head_name}:{version.version}"
            )

    def _stopped(self, job: ClaimedJob, hb: JobHeartbeat) -> None:
        if hb.timed_out.is_set() and not hb.lost.is_set():
            limit = hb.max_runtime_s
            self._finish(
                job,
                status=JobStatus.failed.value,
                error=f"job_timeout: The job ran past its limit of {limit:g} s and was stopped; "
                "lower epochs, or let early stopping (patience) end it sooner.",
            )
            log.warning("job %s attempt %d stopped after %s s", job.id, job.attempt, limit)
        elif hb.lost.is_set():
            log.warning("job %s attempt %d lost its lease; stopped", job.id, job.attempt)
        elif hb.cancel_requested.is_set():
            self._finish(job, status=JobStatus.cancelled.value, finished_at=utcnow())
            log.info("job %s cancelled while running", job.id)
        else:  # shutdown: back to the queue; the attempt does not count against max_attempts
            with session_scope(self.factory) as session:
                repo.hand_back(session, job.id, job.attempt, now=utcnow())
            log.info("job %s handed back at shutdown", job.id)

    def _finish(self, job: ClaimedJob, **values: Any) -> None:
        values.setdefault("finished_at", utcnow())
        with session_scope(self.factory) as session:
            if not repo.finish(session, job.id, job.attempt, lease_expires_at=None, **values):
                log.warning("job %s attempt %d: final write fenced out", job.id, job.attempt)

    def _extractor_info(self, client: Any, extractor_id: str | None) -> dict[str, Any]:
        """The extractor a job trains on: the one it names, else the replicas' default, which is
        registered as the registry's default if there is none yet (first start after upgrade)."""
        if extractor_id is not None:
            return dict(client.info_sync(extractor_id=extractor_id))
        info = dict(client.info_sync())
        try:
            from service.extractors.service import ensure_default

            with session_scope(self.factory) as session:
                ensure_default(session, info)
        except Exception:  # the registry is a convenience here: never fail a job over it
            log.exception("could not register the default extractor")
        return info

    def _extractor(self) -> Any:
        if self.extractor is None:
            from extractor.client import ExtractorClient

            self.extractor = ExtractorClient(
                self.settings.extractor_urls,
                timeout=self.settings.extractor_timeout_s,
                retry_max_images=self.settings.extractor_retry_max_images,
            )
        return self.extractor


class _FencedOut(LeaseLost):
    """The fenced success update matched no row: cancelled meanwhile, or the lease was lost."""


def _describe(exc: BaseException) -> str:
    """A job's `error`: `<code>: <sentence>`, the sentence one of ours. An exception's own text
    (a driver's message with a host name, a path, a library's internals) goes to the worker's
    log, never to the tenant (docs/threats.md)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    from extractor.client import ExtractorBadResponse, ExtractorError, ExtractorUnavailable

    if isinstance(exc, HeadhubError):
        code, text = exc.instance_code, exc.detail
    elif isinstance(exc, InvalidParams):
        code, text = "invalid_params", str(exc)
    elif isinstance(exc, InvalidTrainingData):
        code, text = "invalid_training_data", str(exc)
    elif isinstance(exc, PermanentJobError):
        code, text = exc.code, str(exc)
    elif _is_permanent(exc):  # our own exceptions, with sentences we wrote
        code, text = "job_failed", str(exc) or "the job cannot run"
    elif isinstance(exc, ExtractorUnavailable):
        code, text = "extractor_unavailable", "The feature extractor did not answer in time."
    elif isinstance(exc, ExtractorBadResponse):
        code, text = "extractor_bad_response", "The feature extractor sent an unusable answer."
    elif isinstance(exc, ExtractorError):
        code, text = "extractor_error", "The feature extractor could not compute the features."
    elif isinstance(exc, OperationalError | InterfaceError):
        code, text = "database_unavailable", "The database did not answer."
    elif isinstance(exc, MemoryError):
        code, text = "out_of_memory", "The job ran out of memory."
    else:
        code, text = (
            "internal_error",
            "The job failed unexpectedly; the operator's worker log has the details under "
            "this job's id.",
        )
    return f"{code}: {text}"[:2000]


def main(
    settings: Settings,
    concurrency: int = 1,
    *,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",  # probes come from the kubelet, not from loopback
) -> int:
    """Entry point of `headhub worker`: returns the exit code (0 after a clean drain).

    `health_port` (default `HEADHUB_WORKER_HEALTH_PORT`; 0: none) serves /healthz and /readyz
    from a daemon thread for as long as the loops run."""
    import faulthandler

    import torch

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack
    torch.set_num_threads(max(1, settings.worker_torch_threads))
    worker = Worker(settings, concurrency=concurrency)
    port = settings.worker_health_port if health_port is None else health_port
    server = serve_health(worker.health, health_host, port) if port else None
    try:
        worker.run()
    finally:
        if server is not None:
            server.close()
    return 0
